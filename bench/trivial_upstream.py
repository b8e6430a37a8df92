"""A trivial model-server stand-in: answers every POST /invocations with a fixed prediction.

Run: python bench/trivial_upstream.py PORT VERSION. Fast enough not to hide the proxy in front.
"""

from __future__ import annotations

import sys

from aiohttp import web

ANSWER = b'{"predictions": [42.0]}'


async def invocations(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=ANSWER, headers={"Content-Type": "application/json"})


async def ping(_request: web.Request) -> web.Response:
    return web.Response(body=b"\n")


def main() -> None:
    port = int(sys.argv[1])
    app = web.Application()
    app.router.add_post("/invocations", invocations)
    app.router.add_get("/ping", ping)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
