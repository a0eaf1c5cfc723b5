"""bench.quality's retrain options: ``--steps`` alone trains that many steps."""

from __future__ import annotations

from bench.quality import STEPS_BUDGET_S, retrain_limits
from litpulse.app.cli import build_parser
from litpulse.core.settings import Settings


def test_steps_alone_lift_the_budget() -> None:
    """With the default 60 s budget a loaded machine trained 2 of 16 steps (and the gate
    rejected the candidate); the bench's ``--steps`` now reach the CLI with a budget
    they fit in."""
    args = build_parser().parse_args(["retrain", "--json", *retrain_limits(16, None)])
    assert args.steps == 16
    assert args.max_seconds == STEPS_BUDGET_S > Settings.from_env({}).retrain_budget_s
    kept = build_parser().parse_args(["retrain", *retrain_limits(16, 90.0)])
    assert (kept.steps, kept.max_seconds) == (16, 90.0)
    default = build_parser().parse_args(["retrain", *retrain_limits(None, None)])
    assert default.steps is None and default.max_seconds is None
