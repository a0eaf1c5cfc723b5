"""The model history: lineage, training pairs, metrics against parent and base, decisions.

Quick tests read versions registered as a retrain records them (both databases); the
history over real retrains (promoted, rejected, rolled back) is checked in
``tests/retrain/test_learning.py`` on that module's scenario.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import update

from litpulse.core.schema import model_versions
from litpulse.core.settings import Settings
from litpulse.core.states import ModelStatus
from retrain import registry
from retrain.report import history_dict, metric_table, model_history
from tests.retrain.histories import register_history


def test_history_of_registered_versions(settings: Settings) -> None:
    calls: list[str] = []

    def reindex(s: Settings) -> None:
        active = registry.active_version(s)
        calls.append(active.id if active else "base")

    a, b = register_history(settings, reindex)
    assert calls == [a, "base"]  # promoted, then rolled back to the base model
    va, vb = model_history(settings)
    # lineage
    assert (va.id, vb.id) == (a, b)
    assert va.parent_id is None and vb.parent_id == a
    assert va.children == (b,) and vb.children == ()
    assert (va.generation, vb.generation) == (1, 2)
    # pairs and training
    assert va.pairs == {"title_abstract": 90, "citation": 30, "feedback": 2, "replay": 0}
    assert va.pairs_total == 122 and va.hard_negatives == 1
    assert va.feedback_experts == {"ann": 2}
    assert (va.feedback_excluded, vb.feedback_excluded) == (1, 0)  # not a pair kind
    assert va.heldout == {"fresh": 20, "older": 20, "distractors": 30}
    assert va.training["steps"] == 8 and va.training["epochs"] == 1.0  # 8 * 16 / 128
    assert vb.training["epochs"] == round(2 * 8 / 55, 3)
    assert "output_dir" not in va.training
    assert vb.window_start == va.window_end
    # metrics against the parent and the base (the base is the parent of the first)
    assert va.metrics["fresh"] == {"recall@10": 0.6, "mrr@10": 0.3}
    assert va.comparison("parent").against == "base"  # type: ignore[union-attr]
    assert va.comparison("parent").delta["fresh"]["recall@10"] == 0.25  # type: ignore[union-attr]
    pb, bb = vb.comparison("parent"), vb.comparison("base")
    assert pb is not None and bb is not None
    assert pb.against == a and pb.theirs["fresh"]["recall@10"] == 0.65
    assert pb.delta["fresh"]["recall@10"] == -0.15
    assert bb.delta["older"]["recall@10"] == 0.1
    assert vb.comparison("active") is None
    # the gate and what became of each
    assert va.gate_passed is True and va.gate_reasons == ("fresh gained", "older held")
    assert vb.gate_passed is False and vb.gate_reasons == ("fresh lost 0.150",)
    assert [e.event for e in va.events] == ["registered", "promoted", "rolled_back"]
    assert va.events[1].by == "gate" and va.events[2].by == "tester"
    assert va.summary == "rolled back by tester" and va.status is ModelStatus.REJECTED
    assert [e.event for e in vb.events] == ["registered", "rejected"]
    assert vb.summary == "rejected by the gate"
    doc = json.loads(json.dumps(history_dict([va, vb])))
    assert doc["active"] == "base" and doc["count"] == 2
    assert doc["versions"][1]["comparisons"][0]["against"] == a
    assert doc["versions"][0]["status"] == "rejected" and doc["versions"][0]["pairs_total"] == 122
    assert doc["versions"][0]["feedback_excluded"] == 1


def test_cli_shows_the_feedback_excluded_and_never_counts_it_as_pairs(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from litpulse.app.cli import main

    monkeypatch.setenv("LITPULSE_HOME", str(settings.home))
    if settings.database_url:
        monkeypatch.setenv("LITPULSE_DATABASE_URL", settings.database_url)
    a, _ = register_history(settings)
    assert main(["models", "report"]) == 0
    assert "feedback excluded: 1 (revoked API tokens)" in capsys.readouterr().out
    assert main(["models", "list"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(a))
    assert " 122 " in row


def test_promotion_retires_and_rollback_reactivates(settings: Settings) -> None:
    a, b = register_history(settings)
    registry.promote(settings, a, by="ann", reason="looks right", reindex=lambda s: None)
    registry.promote(settings, b, by="bob", reindex=lambda s: None)
    registry.rollback(settings, by="carol", reindex=lambda s: None)
    va, vb = model_history(settings)
    assert [e.event for e in va.events] == [
        "registered",
        "promoted",
        "rolled_back",
        "promoted",
        "retired",
        "reactivated",
    ]
    assert va.summary == "active (reactivated by carol)"
    assert [e.event for e in vb.events][-2:] == ["promoted", "rolled_back"]
    assert vb.summary == "rolled back by carol"
    assert history_dict([va, vb])["active"] == a


def test_failed_reindex_restores_the_events(settings: Settings) -> None:
    a, _ = register_history(settings)

    def fail(s: Settings) -> None:
        raise RuntimeError("index build failed")

    before = model_history(settings)[0].events
    with pytest.raises(RuntimeError):
        registry.promote(settings, a, by="ann", reindex=fail)
    assert model_history(settings)[0].events == before


def test_rows_written_before_events_were_recorded(settings: Settings, engine: Any) -> None:
    a, b = register_history(settings)
    with engine.begin() as conn:
        conn.execute(update(model_versions).values(events=None, training=None))
    va, vb = model_history(settings)
    assert [e.event for e in va.events] == ["registered", "promoted", "rolled_back"]
    assert va.summary == "rolled back"
    assert [e.event for e in vb.events] == ["registered", "rejected"]
    assert vb.summary == "rejected by the gate"
    assert va.training == {}


def test_metrics_are_read_generically() -> None:
    role = {
        "fresh": {"recall@10": 0.5, "queries": 3, "flag": True, "note": "x"},
        "querylike": {"hit@5": 1, "queries": 2},
        "model": "m-1",
        "empty": {},
    }
    assert metric_table(role) == {"fresh": {"recall@10": 0.5}, "querylike": {"hit@5": 1.0}}
    assert metric_table(None) == {}
