"""`mlcanary rollout start|watch|abort|pause|resume`: automated rollouts from the command line."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Annotated, Any

import typer

from controller.rollout.judgement import GateLimits
from controller.rollout.state import RolloutPlan
from mlcanary.admin import AsJson, ControllerUrl, Reason, admin_call
from mlcanary.options import checked_sinks
from mlcanary.output import fail, print_json, stdout

rollout_app = typer.Typer(
    help="Automated rollouts: weights raised step by step while the gates pass.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
FINISHED = ("promoted", "rolled_back", "aborted", "idle")
PLAN, LIMITS = RolloutPlan(), GateLimits()
"""The defaults the controller applies, shown in --help (stated once, in the controller)."""
STEPS = ",".join(f"{step:g}" for step in PLAN.steps)


def _seconds(text: str, option: str = "--interval") -> float:
    """Read `90`, `90s`, `2m` or `1h` as seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        if text and text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        fail(f"{option} must be like 60s, 2m or 1h, got {text!r}", code=2)


def _plan_options(
    steps: Annotated[
        str,
        typer.Option(
            help="Canary percents, in order; `pause` holds until `rollout resume`, `confirm`"
            " until `rollout confirm`, before the next step (e.g. 10,50,confirm,100)."
        ),
    ] = STEPS,
    interval: Annotated[
        str, typer.Option(help="Window judged after each step: 60s, 2m...")
    ] = f"{PLAN.interval_s:g}s",
    min_requests: Annotated[
        int, typer.Option(help="Canary requests a window needs.")
    ] = LIMITS.min_requests,
    false_alarm_rate: Annotated[
        float, typer.Option(help="Chance a canary as good as stable is rolled back.")
    ] = LIMITS.false_alarm_rate,
    max_error_rate: Annotated[
        float, typer.Option(help="Canary 5xx share at most.")
    ] = LIMITS.max_error_rate,
    min_error_ratio: Annotated[
        float, typer.Option(help="Canary 5xx share this many times stable's fails.")
    ] = LIMITS.min_error_ratio,
    max_p99_ratio: Annotated[
        float, typer.Option(help="Latency bound: this many times the p99...")
    ] = LIMITS.max_p99_ratio,
    p99_tolerance: Annotated[
        float, typer.Option(help="...or the p99 plus this many seconds, the later.")
    ] = LIMITS.p99_tolerance_s,
    max_psi: Annotated[
        float, typer.Option(help="Smallest prediction shift (PSI) that fails.")
    ] = LIMITS.max_psi,
    max_shadow_delta: Annotated[
        float | None, typer.Option(help="Mean |shadow delta| at most (when shadowing).")
    ] = None,
    max_failed_checks: Annotated[
        int, typer.Option(help="Unreadable windows that roll back.")
    ] = PLAN.max_failed_checks,
    max_insufficient: Annotated[
        int, typer.Option(help="Windows in a row without enough traffic that fail it.")
    ] = PLAN.max_insufficient_windows,
    prometheus: Annotated[
        str | None, typer.Option(help="Judge windows from this Prometheus (else the routers).")
    ] = None,
    min_labels: Annotated[
        int,
        typer.Option(help="Labelled canary rows each step needs (0: labels not judged)."),
    ] = LIMITS.min_labels,
    label_wait: Annotated[
        str, typer.Option(help="How long a step waits for them: 10m, 1h...")
    ] = f"{PLAN.label_wait_s:g}s",
    max_label_error_ratio: Annotated[
        float, typer.Option(help="Canary rows bad this many times as often as stable's fail.")
    ] = LIMITS.max_label_error_ratio,
) -> dict[str, Any]:
    """Return the options of a rollout plan (shared by `start` and `plan`) as the API body."""
    percents: list[float | str] = []
    for step in (step.strip() for step in steps.split(",") if step.strip()):
        try:
            percents.append(step if step in ("pause", "confirm") else float(step))
        except ValueError:
            message = "--steps must be percents (or pause, confirm) separated by commas"
            fail(f"{message}, got {steps!r}", code=2)
    return {
        "steps": percents, "interval_s": _seconds(interval), "min_requests": min_requests,
        "false_alarm_rate": false_alarm_rate, "max_error_rate": max_error_rate,
        "min_error_ratio": min_error_ratio, "max_p99_ratio": max_p99_ratio,
        "p99_tolerance_s": p99_tolerance, "max_psi": max_psi,
        "max_shadow_delta": max_shadow_delta, "max_failed_checks": max_failed_checks,
        "max_insufficient_windows": max_insufficient, "prometheus_url": prometheus,
        "min_labels": min_labels, "label_wait_s": _seconds(label_wait, "--label-wait"),
        "max_label_error_ratio": max_label_error_ratio,
    }  # fmt: skip


def _with_plan_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give `command` the plan's options before its own; it receives them as one body.

    Typer reads a command's options from its signature: this one signature is what `start`
    and `plan` both show, so the two cannot drift.
    """
    shared = inspect.signature(_plan_options, eval_str=True).parameters
    own = list(inspect.signature(command, eval_str=True).parameters.values())[1:]

    def with_options(**given: Any) -> None:
        body = _plan_options(**{name: given.pop(name) for name in shared})
        command(body, **given)

    with_options.__signature__ = inspect.Signature([*shared.values(), *own])  # type: ignore[attr-defined]
    with_options.__doc__ = command.__doc__
    return with_options


def rollout_start(
    body: dict[str, Any],
    detach: Annotated[bool, typer.Option(help="Start it and return at once.")] = False,
    notify: Annotated[
        list[str] | None,
        typer.Option(
            "--notify",
            help="Also send this rollout's events here: a webhook URL or slack+https://…"
            " (repeatable; besides the controller's own).",
        ),
    ] = None,
    confirm_promotion: Annotated[
        bool,
        typer.Option(
            help="Hold before 100% until `mlcanary rollout confirm` or the page's button."
        ),
    ] = False,
    hook: Annotated[
        list[str] | None,
        typer.Option(
            "--hook",
            help="A gate webhook, NAME=URL: pre-rollout, step, confirm-promotion or rollback"
            " (repeatable).",
        ),
    ] = None,
    reason: Reason = "",
    controller_url: ControllerUrl = None,
    as_json: AsJson = False,
) -> None:
    """Roll the canary out: exits 0 once promoted, 1 if rolled back."""
    hooks = {}
    for given in hook or []:
        name, equals, url = given.partition("=")
        if not equals or not url:
            fail(f"--hook takes NAME=URL, got {given!r}", code=2)
        hooks[name] = url
    asked = {
        **body, "reason": reason, "notify": list(checked_sinks(notify)),
        "confirm_promotion": confirm_promotion, "hooks": hooks,
    }  # fmt: skip
    state = admin_call("POST", "/api/rollout", asked, controller_url)
    if detach:
        print_json(state) if as_json else stdout().print("rollout started", highlight=False)
        return
    _follow(controller_url, as_json)


def rollout_plan(
    body: dict[str, Any],
    measure: Annotated[
        str, typer.Option(help="Traffic measured before planning: 10s, 1m...")
    ] = "10s",
    controller_url: ControllerUrl = None,
    as_json: AsJson = False,
) -> None:
    """Measure the traffic, then show what this plan would catch, and how long each step takes.

    Takes every option of `rollout start`. Exits 1 if the plan cannot reach its power.
    """
    report = admin_call(
        "POST", "/api/rollout/plan", {**body, "measure_s": _seconds(measure)}, controller_url
    )
    if as_json:
        print_json(report)
    else:
        stdout().print(_plan_view(report))
    raise typer.Exit(1 if report["warnings"] else 0)


rollout_app.command("start")(_with_plan_options(rollout_start))
rollout_app.command("plan")(_with_plan_options(rollout_plan))


def _plan_view(report: dict[str, Any]) -> Any:
    """Build the plan's tables: traffic, steps, faults and warnings."""
    from rich.console import Group
    from rich.table import Table

    p99 = report["stable_p99_s"]
    title = (
        f"traffic: {report['requests_per_s']:.1f} requests/s ({report['canary_share']:.0%} to"
        f" the canary), stable 5xx {report['stable_error_rate']:.2%}"
        + (f", p99 {p99 * 1000:.1f} ms" if p99 else "")
    )
    steps = Table(title=title, title_justify="left")
    for column in ("step", "canary requests / window", "time to --min-requests"):
        steps.add_column(column)
    for step in report["steps"]:
        took = step["seconds_to_min_requests"]
        steps.add_row(f"{step['weight']:g}%", f"{step['canary_requests_per_window']:.0f}",
                      "never (no traffic)" if took is None else f"{took:.0f} s")  # fmt: skip
    faults = Table(
        title=f"simulated (predictions: {report['prediction_shape']}): identical twins rolled"
        f" back {report['false_rollbacks']:.1%}",
        title_justify="left",
    )
    for column in ("fault", "caught before 50%", "median canary requests", "interval needed"):
        faults.add_column(column)
    for found in report["detections"]:
        requests = found["median_canary_requests"]
        needed = found["interval_needed_s"]
        faults.add_row(
            found["fault"], f"{found['before_half']:.0%}",
            "-" if requests is None else f"{requests:.0f}",
            "as planned" if found["before_half"] >= 0.9 else
            (f"{needed:g} s" if needed else "over an hour"),
        )  # fmt: skip
    warnings = [f"[yellow]warning:[/yellow] {warning}" for warning in report["warnings"]]
    return Group(steps, faults, *warnings)


@rollout_app.command("watch")
def rollout_watch(
    once: Annotated[bool, typer.Option(help="Show the state once and return.")] = False,
    controller_url: ControllerUrl = None,
    as_json: AsJson = False,
) -> None:
    """Show the rollout live: step, weight, next judgement, each gate against its limit."""
    if once:
        state = admin_call("GET", "/api/rollout", None, controller_url)
        print_json(state) if as_json else stdout().print(_rollout_view(state))
        raise typer.Exit(0 if state["status"] != "rolled_back" else 1)
    _follow(controller_url, as_json)


def _follow(controller_url: str | None, as_json: bool) -> None:
    """Refresh the rollout view until it ends; exit 1 unless it promoted."""
    import time

    from rich.live import Live

    state = admin_call("GET", "/api/rollout", None, controller_url)
    with Live(_rollout_view(state), console=stdout(), refresh_per_second=2) as live:
        while state["status"] not in FINISHED:
            time.sleep(0.5)
            state = admin_call("GET", "/api/rollout", None, controller_url)
            live.update(_rollout_view(state))
    if as_json:
        print_json(state)
    raise typer.Exit(0 if state["status"] == "promoted" else 1)


def _rollout_view(state: dict[str, Any]) -> Any:
    """Build a table of the rollout: where it is, and each window's gates."""
    import time

    from rich.table import Table

    if state.get("status") == "idle":
        return "no rollout"
    steps = state["plan"]["steps"]
    wait = max(0.0, state.get("next_judgement_at", 0) - time.time())
    title = (
        f"rollout of v{state['canary_version']}: {state['status']}, step {state['step'] + 1}/"
        f"{len(steps)} at {state['weight']:g}%"
        + (f", next judgement in {wait:.0f} s" if state["status"] == "running" else "")
        + (f" ({state['message']})" if state.get("message") else "")
    )
    table = Table(title=title, title_justify="left")
    for column in ("step", "weight", "outcome", "canary req",
                   "gates (size / floor, evidence / needed)"):  # fmt: skip
        table.add_column(column)
    for entry in state["history"][-12:]:
        gates = (
            ", ".join(
                f"{'ok' if g['passed'] else 'FAIL'} {g['gate']} "
                f"{'-' if g['value'] is None else format(g['value'], '.3g')}/{g['limit']:g}"
                + (f" e={g['evidence']:.3g}/{g['needed']:.0f}" if g.get("evidence") else "")
                for g in entry["gates"]
            )
            or entry.get("problem")
            or "-"
        )
        requests = entry.get("canary_requests")
        table.add_row(str(entry["step"]), f"{entry['weight']:g}%", entry["outcome"],
                      "-" if requests is None else f"{requests:.0f}", gates)  # fmt: skip
    return table


@rollout_app.command("abort")
def rollout_abort(reason: Reason = "", controller_url: ControllerUrl = None) -> None:
    """Stop the rollout and send the canary no traffic, at once."""
    state = admin_call("POST", "/api/rollout/abort", {"reason": reason}, controller_url)
    stdout().print(f"rollout {state['status']}: {state['message']}", highlight=False)


@rollout_app.command("pause")
def rollout_pause(reason: Reason = "", controller_url: ControllerUrl = None) -> None:
    """Hold the rollout's weight."""
    admin_call("POST", "/api/rollout/pause", {"reason": reason}, controller_url)
    stdout().print("rollout paused", highlight=False)


@rollout_app.command("resume")
def rollout_resume(reason: Reason = "", controller_url: ControllerUrl = None) -> None:
    """Go on with a paused rollout."""
    admin_call("POST", "/api/rollout/resume", {"reason": reason}, controller_url)
    stdout().print("rollout resumed", highlight=False)


@rollout_app.command("confirm")
def rollout_confirm(
    reason: Reason = "",
    by: Annotated[str | None, typer.Option(help="Who confirms (default: your login name).")] = None,
    controller_url: ControllerUrl = None,
) -> None:
    """Confirm the promotion a rollout holds for (`rollout start --confirm-promotion`)."""
    import getpass

    who = by or getpass.getuser()
    state = admin_call(
        "POST", "/api/rollout/confirm", {"reason": reason, "by": who}, controller_url
    )
    stdout().print(f"rollout confirmed: {state['message']}", highlight=False)
