"""Mistake identification by answer-switch (paper section 3.2): the teacher reads the
question with a prior that favours the gold answer, then the student's steps one prefix at
a time; after each prefix its probabilities over the options are read. The erroneous step
is the first where a wrong option leads the correct one by `margin` (delta) and stays ahead
for `persistence` (lambda) further steps. Outcomes other than a switch are kept, named:
`final_step` (the switch comes only at the last step), `no_switch`, `tie`."""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SwitchStatus = Literal["switch", "final_step", "no_switch", "tie"]


class SwitchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    margin: float = Field(
        default=0.1, ge=0, le=1, description="delta: how far a wrong option must lead the gold"
    )
    persistence: int = Field(
        default=1, ge=0, description="lambda: further steps the wrong option must stay ahead"
    )
    tie_tolerance: float = Field(
        default=1e-6, ge=0, description="probabilities closer than this are equal"
    )


@dataclass(frozen=True)
class SwitchResult:
    status: SwitchStatus
    step: int | None  # 1-based: the erroneous step, for switch and final_step
    wrong_option: str | None  # the option that took the lead there
    lead: float | None  # its probability minus the gold's, at that step


def choice_probabilities(scores: Mapping[str, float]) -> dict[str, float]:
    """Softmax of an engine's choice scores (summed log-probabilities) over the options."""
    if not scores:
        raise ValueError("no choice scores to normalise")
    top = max(scores.values())
    weights = {option: math.exp(score - top) for option, score in scores.items()}
    total = sum(weights.values())
    return {option: weight / total for option, weight in weights.items()}


def _leader(probabilities: Mapping[str, float], gold: str) -> tuple[str, float]:
    """The strongest wrong option (the first in sorted order among equals) and its lead."""
    wrong = sorted((o for o in probabilities if o != gold), key=lambda o: (-probabilities[o], o))
    return wrong[0], probabilities[wrong[0]] - probabilities[gold]


def find_switch(
    trace: Sequence[Mapping[str, float]], gold: str, config: SwitchConfig
) -> SwitchResult:
    """`trace[0]`: probabilities with the prior alone; `trace[k]`: after the first k steps."""
    if len(trace) < 2:
        raise ValueError("a trace needs the prior and at least one step")
    for point in trace:
        if gold not in point or len(point) < 2:
            raise ValueError(f"every point of a trace needs the gold {gold!r} and another option")
    steps = len(trace) - 1
    tolerance = config.tie_tolerance
    for step in range(1, steps + 1):
        wrong, lead = _leader(trace[step], gold)
        if lead + tolerance < config.margin or lead <= tolerance:
            continue
        later = range(step + 1, min(step + config.persistence, steps) + 1)
        if all(_leader(trace[k], gold)[1] > tolerance for k in later):
            status: SwitchStatus = "final_step" if step == steps else "switch"
            return SwitchResult(status, step, wrong, lead)
    _, final_lead = _leader(trace[steps], gold)
    if abs(final_lead) <= tolerance:
        return SwitchResult("tie", None, None, None)
    return SwitchResult("no_switch", None, None, None)
