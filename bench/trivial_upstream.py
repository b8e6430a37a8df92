"""A trivial model-server stand-in: answers every scoring request with a fixed prediction.

`POST /invocations` in MLflow's shape, `POST /v2/models/{name}/infer` in the Open Inference
Protocol's (as our model server answers one row), so the router's cost per protocol can be
told apart from the model server's.

Run: python bench/trivial_upstream.py PORT VERSION. Fast enough not to hide the proxy in front.
"""

from __future__ import annotations

import sys

from aiohttp import web

ANSWER = b'{"predictions": [42.0]}'
V2_ANSWER = (
    b'{"model_name": "exam", "model_version": "1", "id": "0", "parameters": {"content_type": '
    b'"np"}, "outputs": [{"name": "output-1", "shape": [1, 1], "datatype": "FP64", '
    b'"parameters": {"content_type": "np"}, "data": [42.0]}]}'
)


async def invocations(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=ANSWER, headers={"Content-Type": "application/json"})


async def infer(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=V2_ANSWER, headers={"Content-Type": "application/json"})


async def ping(_request: web.Request) -> web.Response:
    return web.Response(body=b"\n")


def main() -> None:
    port = int(sys.argv[1])
    app = web.Application()
    app.router.add_post("/invocations", invocations)
    app.router.add_post("/v2/models/{name}/infer", infer)
    app.router.add_get("/ping", ping)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
