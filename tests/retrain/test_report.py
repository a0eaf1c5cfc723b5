"""The model history: lineage, training pairs, metrics against parent and base, decisions.

Quick tests read versions registered as a retrain records them (both databases); the
scenario at the end runs real retrains of the bundled model on a tiny drifted corpus
(promoted by the gate, a continued version rejected by it, then a rollback).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from bench.drift import insert_batch, make_drugs
from litpulse.core import db
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


# ------------------------------------------------------------- real retrains (a scenario)

T0 = dt.datetime(2024, 7, 1, tzinfo=dt.UTC)
T1 = T0 + dt.timedelta(days=180)
T2 = T1 + dt.timedelta(days=30)
MINE = {"fresh_size": 20, "older_size": 20, "distractors": 30, "holdout_buckets": 4}


def _shuffle(ps: Any) -> Any:
    positives = [p.positive for p in ps.pairs]
    random.Random(5).shuffle(positives)
    return ps.replace(
        pairs=tuple(
            dataclasses.replace(p, positive=q) for p, q in zip(ps.pairs, positives, strict=True)
        )
    )


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Two real retrains and a rollback: about 1-4 minutes on two (shared) cores."""
    from litpulse.pipeline.planning import reindex_now
    from retrain.lora import LoraOptions
    from retrain.run import retrain

    home: Path = tmp_path_factory.mktemp("history")
    settings = Settings.from_env(
        {},
        home=home,
        max_seq_length=32,
        embed_batch_size=64,
        device="cpu",
        gate_fresh_margin=0.02,
        gate_older_tolerance=0.1,
    )
    engine = db.connect(settings)
    drugs = make_drugs(8)
    insert_batch(
        engine,
        start_pmid=1000,
        n=60,
        start=dt.date(2024, 1, 1),
        days=180,
        ingested=T0,
        drugs=drugs,
        seed=1,
    )
    insert_batch(
        engine,
        start_pmid=5000,
        n=100,
        start=dt.date(2024, 7, 1),
        days=180,
        ingested=T1,
        new_share_from=0.6,
        new_share_to=0.9,
        drugs=drugs,
        seed=2,
    )
    options = LoraOptions(
        max_steps=6, batch_size=16, max_seq_length=32, warmup_steps=0, epochs=20, max_seconds=1e5
    )
    out: dict[str, Any] = {"settings": settings}
    out["first"] = retrain(settings, options=options, mine_kwargs=MINE, reindex=reindex_now)
    insert_batch(
        engine,
        start_pmid=9000,
        n=40,
        start=dt.date(2025, 1, 1),
        days=30,
        ingested=T2,
        new_share_from=0.6,
        new_share_to=0.6,
        drugs=drugs,
        seed=3,
    )
    out["second"] = retrain(  # titles matched to random abstracts: the gate rejects it
        settings,
        options=options.replace(max_steps=2),
        mine_kwargs=MINE,
        pair_filter=_shuffle,
        reindex=reindex_now,
    )
    out["rollback"] = registry.rollback(settings, by="tester", reindex=reindex_now)
    out["history"] = model_history(settings)
    yield out
    eng = db._ENGINES.pop(settings.effective_database_url, None)
    if eng is not None:
        eng.dispose()


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_history_over_real_retrains(scenario: dict[str, Any]) -> None:
    first, second = scenario["first"], scenario["second"]
    assert first.status == "promoted", first.reasons
    assert second.status == "rejected", second.reasons
    a, b = scenario["history"]
    assert (a.id, b.id) == (first.version_id, second.version_id)
    # lineage: base -> a -> b
    assert a.parent_id is None and b.parent_id == a.id and a.children == (b.id,)
    # the pairs and the training each run reported
    assert a.pairs == first.pairs["counts"] and b.pairs == second.pairs["counts"]
    assert a.window_end is not None and b.window_start == a.window_end
    assert a.training["steps"] == first.training["steps"]
    assert a.training["seconds"] == first.training["seconds"]
    assert a.training["epochs"] == round(first.training["steps"] * 16 / first.training["pairs"], 3)
    assert a.training["new_articles"] == first.pairs["new_articles"]
    # metrics against the parent and the base, as the runs measured them
    for v, run in ((a, first), (b, second)):
        m = run.metrics
        for s in ("fresh", "older"):
            assert v.metrics[s]["recall@10"] == m["candidate"][s]["recall@10"]
            base = v.comparison("base")
            parent = v.comparison("parent")
            assert base is not None and parent is not None
            assert base.delta[s]["recall@10"] == pytest.approx(
                m["candidate"][s]["recall@10"] - m["base"][s]["recall@10"]
            )
            assert parent.delta[s]["recall@10"] == pytest.approx(
                m["candidate"][s]["recall@10"] - m["active"][s]["recall@10"]
            )
    assert a.comparison("parent").against == "base"  # type: ignore[union-attr]
    assert b.comparison("parent").against == a.id  # type: ignore[union-attr]
    # the gate's reasons and what became of each version
    assert a.gate_passed is True and a.gate_reasons == tuple(first.gate["reasons"])
    assert b.gate_passed is False and b.gate_reasons == tuple(second.gate["reasons"])
    assert [e.event for e in a.events] == ["registered", "promoted", "rolled_back"]
    assert a.events[1].by == "gate" and a.summary == "rolled back by tester"
    assert [e.event for e in b.events] == ["registered", "rejected"]
    assert b.summary == "rejected by the gate"


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_report_and_plot_of_real_retrains(
    scenario: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    from PIL import Image

    from litpulse.app.cli import main
    from litpulse.app.models_plot import metric_series, plot_size

    history = scenario["history"]
    series = metric_series(history)
    own = [s for s in series if s.role == "version"]
    assert {(s.heldout, s.metric) for s in own} >= {("fresh", "recall@10"), ("older", "recall@10")}
    for s in series:  # one point per version, the values recorded
        assert s.versions == tuple(v.id for v in history)
        assert len(s.values) == len(history)
    fresh = next(s for s in own if (s.heldout, s.metric) == ("fresh", "recall@10"))
    assert fresh.values == tuple(v.metrics["fresh"]["recall@10"] for v in history)

    monkeypatch.setenv("LITPULSE_HOME", str(scenario["settings"].home))
    png = tmp_path / "plot.png"
    assert main(["models", "report", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    a, b = history
    assert f"└─ {a.id}  rolled back by tester" in out
    assert f"   └─ {b.id}  rejected by the gate" in out
    assert "vs parent" in out and "vs base" in out and "gate: failed" in out
    with Image.open(png) as img:
        img.load()
        assert img.format == "PNG"
        assert img.size == plot_size(2, len({s.metric for s in series}))
    assert main(["models", "report", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [v["id"] for v in doc["versions"]] == [a.id, b.id]
