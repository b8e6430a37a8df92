"""The operator's commands against the admin API: status, deploy, weight, promote, rollback.

Also `predict`, which sends sample rows through the router. Registered on the main app by
`register`; the HTTP work is in orchestration/client.py.
"""

from __future__ import annotations

from dataclasses import asdict
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from mlcanary.output import fail, print_fields, print_json, stderr, stdout
from training.dataset import DEFAULT_PATH

ControllerUrl = Annotated[
    str | None, typer.Option("--controller", help="Admin API URL (MLCANARY_CONTROLLER_URL).")
]
Reason = Annotated[str, typer.Option(help="Why: recorded in the audit log.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
Detach = Annotated[
    bool,
    typer.Option(
        "--detach",
        help="Return once the change is recorded; `status` shows it pending until it is made.",
    ),
]


def admin_call(method: str, path: str, body: Any, url: str | None) -> Any:
    """Call the admin API; a failure is one clear line and exit code 1."""
    from common.settings import state_dir
    from controller.errors import ControllerError
    from orchestration.client import AdminClient

    try:
        return AdminClient.from_env(state_dir(), url).call(method, path, body)
    except ControllerError as error:
        fail(str(error))


def show_change(record: dict[str, Any], as_json: bool) -> None:
    """Print what a change did: before and after, side by side (or that it was recorded)."""
    if as_json:
        print_json(record)
        return
    if "accepted" in record:
        change = record["accepted"]
        stdout().print(
            f"change {change['number']} ({change['action']}) recorded; "
            "`status` shows it pending until it is made",
            highlight=False,
        )
        return

    def split(config: dict[str, Any]) -> str:
        canary = config.get("canary")
        tail = f", canary v{canary['version']} at {canary['weight']}%" if canary else ", no canary"
        return f"stable v{config['stable']['version']}{tail}"

    print_fields(
        f"{record['action']} done",
        {
            "before": split(record["before"]),
            "after": split(record["after"]),
            "reason": record.get("reason") or "-",
            **({"superseded": "; ".join(record["superseded"])} if "superseded" in record else {}),
            "routing file version": record.get("config_version"),
            "at": record.get("time"),
        },
    )


def status(controller_url: ControllerUrl = None, as_json: AsJson = False) -> None:
    """Show the split, each router's view of it, the registry aliases and the last changes."""
    found = admin_call("GET", "/api/status", None, controller_url)
    if as_json:
        print_json(found)
        return
    canary = found["canary"]

    def spoken(upstream: dict[str, Any]) -> str:
        return " + ".join(upstream.get("protocols") or ["mlflow"])

    stable = found["stable"]
    print_fields(
        f"{found['model']}",
        {
            "stable": f"v{stable['version']} at {stable['url']} ({spoken(stable)})",
            "canary": f"v{canary['version']} at {canary['url']} ({spoken(canary)}), "
            f"{canary['weight']}% of traffic"
            if canary
            else "none",
            "routing file version": found["config_version"],
            "notifications": _notifications(found.get("notifications") or {}),
            "aliases": ", ".join(f"{k}={v}" for k, v in found["aliases"].items()),
            **{
                f"router {url}": "in step" if seen["in_step"] else f"at {seen['config_version']}"
                for url, seen in found["routers"].items()
            },
        },
    )
    for variant, versions in found.get("quality", {}).items():
        for version, figures in versions.items():
            shown = ", ".join(
                f"{name} {value:.4g}" for name, value in figures.items() if value is not None
            )
            stdout().print(f"quality  {variant} v{version}: {shown}", highlight=False)
    for change in found.get("pending", []):
        stdout().print(
            f"pending  {change['number']} {change['action']}: {change['stage']}", highlight=False
        )
    for change in found["recent_changes"]:
        stdout().print(
            f"{change['time']}  {change['action']}: {change.get('reason') or '-'}", highlight=False
        )


def deploy(
    version: Annotated[str, typer.Argument(help="Registry version to deploy as canary.")],
    url: Annotated[
        str | None, typer.Option(help="Adopt this running server instead of starting one.")
    ] = None,
    weight: Annotated[float, typer.Option(help="Canary percent once it passes its checks.")] = 0.0,
    reason: Reason = "",
    controller_url: ControllerUrl = None,
    as_json: AsJson = False,
    detach: Detach = False,
) -> None:
    """Deploy a version as the canary: start (or adopt) its server, check it, weight it."""
    body: dict[str, Any] = {
        "version": version, "weight": weight, "reason": reason, "detach": detach,
    }  # fmt: skip
    if url:
        body["url"] = url
    show_change(admin_call("POST", "/api/deploy", body, controller_url), as_json)


def weight(
    percent: Annotated[float, typer.Argument(help="Canary share of traffic, 0-100.")],
    reason: Reason = "",
    controller_url: ControllerUrl = None,
    as_json: AsJson = False,
    detach: Detach = False,
) -> None:
    """Set the canary's share of traffic (after the changes asked before it are made)."""
    body = {"weight": percent, "reason": reason, "detach": detach}
    show_change(admin_call("POST", "/api/weight", body, controller_url), as_json)


def promote(
    reason: Reason = "",
    controller_url: ControllerUrl = None,
    as_json: AsJson = False,
    detach: Detach = False,
) -> None:
    """Make the canary stable; the old stable's server is drained and stopped."""
    body = {"reason": reason, "detach": detach}
    show_change(admin_call("POST", "/api/promote", body, controller_url), as_json)


def rollback(
    reason: Reason = "", controller_url: ControllerUrl = None, as_json: AsJson = False
) -> None:
    """Send the canary no traffic, at once, superseding changes still waiting (a deploy)."""
    show_change(admin_call("POST", "/api/rollback", {"reason": reason}, controller_url), as_json)


def feedback(
    labels: Annotated[
        Path, typer.Argument(help="CSV with request_id and label columns (a label per row).")
    ],
    controller_url: ControllerUrl = None,
    as_json: AsJson = False,
) -> None:
    """Send labels for logged requests (late ground truth): all kept, or none, per batch."""
    import csv

    try:
        with labels.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as error:
        fail(f"cannot read {labels}: {error.strerror or error}")
    if not rows or not {"request_id", "label"} <= set(rows[0]):
        fail(f"{labels} needs a header with request_id and label columns", code=2)
    items = [{"request_id": row["request_id"], "label": _label(row["label"])} for row in rows]
    taken = 0
    for start in range(0, len(items), FEEDBACK_BATCH):
        batch = items[start : start + FEEDBACK_BATCH]
        answer = admin_call("POST", "/api/feedback", batch, controller_url)
        taken += answer["accepted"]
    if as_json:
        print_json({"accepted": taken, "quality": answer["quality"]})
        return
    stdout().print(f"{taken} labels taken", highlight=False)


FEEDBACK_BATCH = 5000


def _label(text: str) -> float | str:
    """Read a CSV cell as a label: a number when it reads as one, else the text (a class)."""
    try:
        return float(text)
    except ValueError:
        return text


class ScoringProtocol(StrEnum):
    """The protocol `predict` asks the router in."""

    mlflow = "mlflow"
    v2 = "v2"


def _notifications(state: dict[str, Any]) -> str:
    """One line: where events go, and how the last deliveries went."""
    sinks = state.get("sinks") or []
    if not sinks:
        return "none configured (--notify)"
    counts: dict[str, int] = {}
    for delivery in state.get("recent") or []:
        counts[delivery["state"]] = counts.get(delivery["state"], 0) + 1
    last = ", ".join(f"{count} {name}" for name, count in sorted(counts.items())) or "none yet"
    signed = " (signed)" if state.get("signed") else ""
    return f"{', '.join(sinks)}{signed}; last deliveries: {last}"


def predict(
    count: Annotated[int, typer.Option(min=1, help="Rows to send.")] = 20,
    user: Annotated[
        str | None, typer.Option(help="Sticky key sent as X-User-Id (same key, same variant).")
    ] = None,
    router_url: Annotated[str, typer.Option("--router", help="Router URL.")] = (
        "http://127.0.0.1:8000"
    ),
    labels: Annotated[
        bool,
        typer.Option(
            "--labels",
            help="Then send the rows' true exam scores to /feedback, as ground truth arriving"
            " late (needs the admin token).",
        ),
    ] = False,
    label_delay: Annotated[
        float, typer.Option(min=0, help="Seconds to wait before sending the labels.")
    ] = 2.0,
    protocol: Annotated[
        ScoringProtocol,
        typer.Option(help="mlflow: POST /invocations; v2: the Open Inference Protocol."),
    ] = ScoringProtocol.mlflow,
    model: Annotated[
        str | None,
        typer.Option(help="The model's name on the router (v2 paths); default: the registry's."),
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Send sample rows through the router; show the answers and who served them."""
    from mlcanary.sampling import send_labels, send_samples

    v2_model = None
    if protocol is ScoringProtocol.v2:
        from common.settings import RegistrySettings

        v2_model = model or RegistrySettings.from_env().model_name
    try:
        answers = send_samples(router_url.rstrip("/"), DEFAULT_PATH, count, user, v2_model)
    except OSError as error:
        fail(f"the router at {router_url} cannot be reached: {error}")
    if labels:
        import time
        import urllib.error

        from common.settings import state_dir
        from controller.errors import ControllerError
        from orchestration.client import AdminClient, error_message

        try:
            token = AdminClient.from_env(state_dir()).token
        except ControllerError as error:
            fail(str(error))
        time.sleep(label_delay)  # the exam is marked after the prediction: labels come late
        try:
            sent = send_labels(router_url.rstrip("/"), token, answers)
        except urllib.error.HTTPError as error:
            fail(f"the labels were not taken: {error_message(error.read(), error.code)}")
        except OSError as error:
            fail(f"the labels were not taken: {error}")
        stderr().print(f"{sent} labels sent to {router_url}/feedback", highlight=False)
    if as_json:
        print_json([asdict(answer) for answer in answers])
        return
    from rich.table import Table

    table = Table(title=f"{count} predictions through {router_url}", title_justify="left")
    for column in ("student", "prediction", "variant", "version", "status"):
        table.add_column(column)
    for answer in answers:
        table.add_row(
            answer.student, answer.prediction, answer.variant, answer.version, str(answer.status)
        )
    stdout().print(table)
    served: dict[str, int] = {}
    for answer in answers:
        key = f"{answer.variant} v{answer.version}"
        served[key] = served.get(key, 0) + 1
    print_fields("served by", served)


def register(app: typer.Typer) -> None:
    """Add these commands to the main command line."""
    for command in (status, deploy, weight, promote, rollback, feedback, predict):
        app.command()(command)
