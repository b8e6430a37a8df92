"""Cutting the prediction buckets from the stable version's own predictions.

The prediction gate compares how both versions' predictions fall into buckets (numbers) or
classes (labels). Those come from the model, not from any dataset: each router profiles stable's
recent predictions per output (`GET /predictions-profile`), and the controller cuts buckets at
their deciles (ten equally likely buckets: each shift shows in some of them, whatever the
model's scale), or lists the labels of an output that answers labels or a few whole numbers.
They are cut once per stable version, before a rollout judges its first window, and written to
the routing file so that every router, and Prometheus behind them, counts in the same buckets.
"""

from __future__ import annotations

import asyncio
import math

import aiohttp

from contracts.payloads import OutputProfile, PredictionsProfile
from contracts.routing import MAX_BUCKETS, PredictionOutput, Predictions
from controller.errors import ControllerError

MIN_ROWS = 50
"""Stable predictions an output needs before its buckets are cut (deciles of fewer are noise)."""
MAX_WHOLE_NUMBER_CLASSES = 20
"""An output of at most this many distinct whole numbers is a classifier's labels."""
SIGNIFICANT_DIGITS = 6


async def read_profiles(
    session: aiohttp.ClientSession, routers: list[str]
) -> list[PredictionsProfile]:
    """Read every router's profile of stable's predictions; ControllerError if one cannot be."""

    async def one(router: str) -> PredictionsProfile:
        try:
            async with session.get(
                f"{router}/predictions-profile", timeout=aiohttp.ClientTimeout(total=5)
            ) as answer:
                if answer.status != 200:
                    raise ControllerError(f"{router}/predictions-profile answered {answer.status}")
                return PredictionsProfile.model_validate_json(await answer.read())
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            reason = str(error) or type(error).__name__
            raise ControllerError(f"{router}/predictions-profile: {reason}") from None

    return list(await asyncio.gather(*(one(router) for router in routers)))


def cut(profiles: list[PredictionsProfile], stable_version: str) -> Predictions | None:
    """Return the buckets for stable's outputs, or None while no output has enough rows.

    With several routers, each output is cut from the router that saw most of it.
    """
    best: dict[str, OutputProfile] = {}
    for profile in profiles:
        if profile.stable_version != stable_version:
            continue
        for name, output in profile.outputs.items():
            if name not in best or output.rows > best[name].rows:
                best[name] = output
    outputs = {}
    for name, output in sorted(best.items())[:MAX_BUCKETS]:
        counting = counting_of(output)
        if counting is not None:
            outputs[name] = counting
    return Predictions(version=stable_version, outputs=outputs) if outputs else None


def counting_of(output: OutputProfile) -> PredictionOutput | None:
    """Decide how one output is counted from its profile; None if it cannot be yet."""
    if output.rows < MIN_ROWS:
        return None
    labels = output.labels
    if output.numeric:
        if (
            labels is not None
            and len(labels) <= MAX_WHOLE_NUMBER_CLASSES
            and all(_whole(label) for label in labels)
        ):
            return PredictionOutput(classes=sorted(labels, key=float))
        edges = sorted({_rounded(edge) for edge in output.deciles})
        return PredictionOutput(edges=edges) if edges else None
    if labels is None:
        return None  # more distinct labels than can be counted one by one: not judged
    return PredictionOutput(classes=sorted(labels)[:MAX_BUCKETS])


def _whole(label: str) -> bool:
    try:
        return float(label).is_integer()
    except ValueError:
        return False


def _rounded(value: float) -> float:
    """Round to a few significant digits (readable bucket bounds; deciles are estimates)."""
    if value == 0 or not math.isfinite(value):
        return value
    digits = SIGNIFICANT_DIGITS - 1 - math.floor(math.log10(abs(value)))
    return round(value, digits)
