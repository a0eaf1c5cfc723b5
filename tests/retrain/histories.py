"""Model versions as a retrain records them, registered without training (quick tests).

:func:`register_history` registers two versions through :mod:`retrain.registry` with
evaluations shaped like :func:`retrain.run.evaluate_versions` records them, promotes the
first (as the gate would), rejects the second and rolls the first back.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from pathlib import Path
from typing import Any

from litpulse.core.settings import Settings
from litpulse.core.states import ModelStatus
from ranking.embed import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from retrain import registry

W1 = dt.datetime(2024, 6, 1, tzinfo=dt.UTC)
W2 = dt.datetime(2024, 9, 1, tzinfo=dt.UTC)


def role(model: str, fresh: float, older: float, **extra: dict[str, float]) -> dict[str, Any]:
    """One role of a stored evaluation: per held-out set, metrics and the query count."""
    sets = {
        "fresh": {"recall@10": fresh, "mrr@10": fresh / 2, "queries": 20},
        "older": {"recall@10": older, "mrr@10": older / 2, "queries": 20},
        **{name: {**values, "queries": 5} for name, values in extra.items()},
    }
    return {**sets, "model": model}


def evaluation(
    candidate: dict[str, Any],
    active: dict[str, Any],
    base: dict[str, Any],
    passed: bool,
    reasons: list[str],
) -> dict[str, Any]:
    return {
        "candidate": candidate,
        "active": active,
        "base": base,
        "heldout": {"fresh": 20, "older": 20, "distractors": 30},
        "gate": {"passed": passed, "reasons": reasons, "fresh_gain": 0.0, "older_change": 0.0},
    }


def training(steps: int, pairs: int) -> dict[str, Any]:
    return {
        "steps": steps,
        "pairs": pairs,
        "seconds": 12.5,
        "device": "cpu",
        "first_loss": 1.5,
        "last_loss": 0.9,
        "output_dir": "/x",
        "weights_file": "/x/w",
    }


def adapter_folder(settings: Settings, version: str) -> tuple[str, str]:
    """An adapter folder for ``version`` holding a (fake) weights file and its config,
    and that file's SHA-256, as a retrain registers them (a promotion or rollback checks
    that the version can serve: its folder, its config and its weights there, unchanged)."""
    folder = settings.ensure_home() / "adapters" / version
    return str(folder), fake_adapter(folder, version.encode() * 64)


def fake_adapter(folder: Path, weights: bytes) -> str:
    """Write a fake adapter into ``folder`` (created): ``weights`` as its weights file and
    a peft config naming LoRA; returns the weights' SHA-256."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ADAPTER_CONFIG).write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    (folder / ADAPTER_WEIGHTS).write_bytes(weights)
    return hashlib.sha256(weights).hexdigest()


def register_history(settings: Settings, reindex: Any = None) -> tuple[str, str]:
    """Version ``a`` (from the base, promoted by the gate) and ``b`` (continued from
    ``a``, rejected by the gate); then ``a`` is rolled back by ``tester``.

    Returns:
        The ids of ``a`` and ``b``.
    """
    reindex = reindex or (lambda s: None)
    a = registry.new_version_id("a" * 6, dt.datetime(2024, 6, 2, tzinfo=dt.UTC))
    a_path, a_sha = adapter_folder(settings, a)
    registry.register(
        settings,
        id=a,
        adapter_path=a_path,
        adapter_sha256=a_sha,
        parent_id=None,
        window_start=None,
        window_end=W1,
        pair_counts={
            "title_abstract": 90,
            "citation": 30,
            "feedback": 2,
            "replay": 0,
            "hard_negatives": 1,
            "feedback_experts": {"ann": 2},
            "feedback_excluded": 1,
        },
        options={"batch_size": 16},
        training=training(8, 128),
        metrics=evaluation(
            role(a, 0.6, 0.95),
            role("base", 0.35, 0.85),
            role("base", 0.35, 0.85),
            True,
            ["fresh gained", "older held"],
        ),
    )
    registry.promote(settings, a, by="gate", reason="fresh gained; older held", reindex=reindex)
    time.sleep(0.01)
    b = registry.new_version_id("b" * 6, dt.datetime(2024, 9, 2, tzinfo=dt.UTC))
    b_path, b_sha = adapter_folder(settings, b)
    registry.register(
        settings,
        id=b,
        adapter_path=b_path,
        adapter_sha256=b_sha,
        parent_id=a,
        window_start=W1,
        window_end=W2,
        pair_counts={
            "title_abstract": 40,
            "citation": 5,
            "feedback": 0,
            "replay": 10,
            "hard_negatives": 0,
            "feedback_experts": {},
        },
        options={"batch_size": 8, "continued_from": a},
        training=training(2, 55),
        metrics=evaluation(
            role(b, 0.5, 0.9),
            role(a, 0.65, 0.9),
            role("base", 0.3, 0.8),
            False,
            ["fresh lost 0.150"],
        ),
    )
    registry.set_status(settings, b, ModelStatus.REJECTED, reason="fresh lost 0.150")
    registry.rollback(settings, by="tester", reindex=reindex)
    return a, b
