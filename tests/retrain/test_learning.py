"""Evidence that retraining learns: the real all-MiniLM-L6-v2 on a drifted corpus.

One scenario, run once per module (it trains twice, about two minutes on two CPU
cores), then checked by several tests:

1. older literature, then later literature with an emerging topic (invented drugs named
   one way in titles and another way in abstracts) → ``retrain`` trains a LoRA adapter
   that beats the base model on the fresh held-out set while the older set holds, the
   gate promotes it and a new index is published for it;
2. more literature arrives → a candidate trained on *shuffled* pairs (titles matched to
   random abstracts) is rejected by the gate, and the active model and index stay;
3. ``rollback`` restores the base model together with an index built for it.
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

from bench.drift import insert_batch, make_drugs
from litpulse.core import db
from litpulse.core.settings import Settings
from litpulse.pipeline.planning import reindex_now
from retrain import registry
from retrain.lora import LoraOptions
from retrain.pairs import PairSet
from retrain.report import model_history
from retrain.run import retrain

T0 = dt.datetime(2024, 7, 1, tzinfo=dt.UTC)
T1 = T0 + dt.timedelta(days=180)
T2 = T1 + dt.timedelta(days=30)

# the default adapter (top two layers; query, key, value and dense projections)
OPTIONS = LoraOptions(
    max_steps=30, epochs=10, batch_size=32, max_seq_length=64, max_seconds=1e5,
)
# the rejected round: 4 steps make the candidate worse than its parent on the fresh set
# already (38g, seeds 13 and 1-4, OMP_NUM_THREADS=1: fresh gain -0.04 to -0.09 at 4
# steps, -0.04 to -0.13 at 12, the margin is +0.02); 12 took about 4 s more a run
SHUFFLED = OPTIONS.replace(max_steps=4)
# about 2-4 minutes on two idle cores; a loaded machine can take several times that
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

MINE = {"fresh_size": 60, "distractors": 150, "holdout_buckets": 8}


def _shuffle(ps: PairSet) -> PairSet:
    positives = [p.positive for p in ps.pairs]
    random.Random(5).shuffle(positives)
    pairs = tuple(dataclasses.replace(p, positive=q) for p, q in zip(ps.pairs, positives,
                                                                     strict=True))
    return ps.replace(pairs=pairs)


def _published(settings: Settings) -> Any:
    from ranking.index_files import open_published

    return open_published(settings)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    home: Path = tmp_path_factory.mktemp("learning")
    settings = Settings.from_env(
        {}, home=home, max_seq_length=64, embed_batch_size=64, device="cpu",
        gate_fresh_margin=0.02, gate_older_tolerance=0.05,
    )
    engine = db.connect(settings)
    drugs = make_drugs(24)
    insert_batch(engine, start_pmid=1000, n=300, start=dt.date(2024, 1, 1), days=180,
                 ingested=T0, drugs=drugs, seed=1)
    insert_batch(engine, start_pmid=5000, n=300, start=dt.date(2024, 7, 1), days=180,
                 ingested=T1, new_share_from=0.2, new_share_to=0.8, drugs=drugs, seed=2)
    out: dict[str, Any] = {"settings": settings}
    out["first"] = retrain(settings, options=OPTIONS, mine_kwargs=MINE, reindex=reindex_now)
    out["index_after_first"] = _published(settings)
    insert_batch(engine, start_pmid=9000, n=120, start=dt.date(2025, 1, 1), days=30,
                 ingested=T2, new_share_from=0.6, new_share_to=0.6, drugs=drugs, seed=3)
    out["second"] = retrain(
        settings, options=SHUFFLED, mine_kwargs=MINE, pair_filter=_shuffle, reindex=reindex_now
    )
    out["index_after_second"] = _published(settings)
    out["rollback"] = registry.rollback(settings, by="tester", reindex=reindex_now)
    out["index_after_rollback"] = _published(settings)
    out["models"] = {m.id: m for m in registry.list_models(settings)}
    out["history"] = model_history(settings)
    yield out
    eng = db._ENGINES.pop(settings.effective_database_url, None)
    if eng is not None:
        eng.dispose()


def test_promoted_adapter_learns_the_new_literature(scenario: dict[str, Any]) -> None:
    first = scenario["first"]
    assert first.status == "promoted", first.reasons
    m = first.metrics
    fresh_gain = m["candidate"]["fresh"]["recall@10"] - m["base"]["fresh"]["recall@10"]
    older_change = m["candidate"]["older"]["recall@10"] - m["base"]["older"]["recall@10"]
    # recall@10 over the 60 fresh questions moves in steps of 1/60: a gain of exactly six
    # questions (0.1) can come out a hair under 0.1 in floating point (0.7 - 0.6), so the
    # bound allows rounding error, never a question less (seed 13 gains exactly 0.100)
    assert fresh_gain >= 0.1 - 1e-9, m
    assert older_change >= -scenario["settings"].gate_older_tolerance, m
    assert first.training["last_loss"] < first.training["first_loss"]
    assert first.pairs["counts"]["title_abstract"] > 0 and first.pairs["counts"]["citation"] > 0
    # the published index is built for the promoted model
    assert scenario["index_after_first"].model_version == first.version_id
    assert Path(first.report_paths["png"]).exists()


def test_shuffled_pairs_are_rejected(scenario: dict[str, Any]) -> None:
    first, second = scenario["first"], scenario["second"]
    assert second.status == "rejected", second.reasons
    assert second.parent_id == first.version_id
    assert second.pairs["counts"]["replay"] > 0
    assert not second.gate["passed"]
    assert second.gate["fresh_gain"] < 0, second.gate  # worse, not merely no better
    # nothing changed for searches: same model, same index
    assert scenario["index_after_second"].id == scenario["index_after_first"].id


def test_rollback_restores_model_and_index_together(scenario: dict[str, Any]) -> None:
    first = scenario["first"]
    assert scenario["rollback"]["model"] == "base"
    assert scenario["rollback"]["rolled_back"] == first.version_id
    after = scenario["index_after_rollback"]
    assert after.model_version == "base"
    assert after.id != scenario["index_after_first"].id


def test_registry_lineage(scenario: dict[str, Any]) -> None:
    first, second = scenario["first"], scenario["second"]
    models = scenario["models"]
    a, b = models[first.version_id], models[second.version_id]
    assert a.parent_id is None and b.parent_id == a.id
    assert a.window_start is None and a.window_end is not None
    assert b.window_start is not None and b.window_end is not None
    assert b.window_start == a.window_end and b.window_end > a.window_end
    assert a.status == "rejected" and "rolled back" in (a.reason or "")
    assert b.status == "rejected"
    assert a.promoted_by == "gate"
    assert a.adapter_sha256 and len(a.adapter_sha256) == 64
    assert Path(a.adapter_path or "").name == a.id
    assert a.metrics["candidate"]["fresh"]["queries"] == 60
    assert b.options["continued_from"] == a.id


# the model history (`litpulse models report`, /models) over the same real retrains
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
    steps, pairs = first.training["steps"], first.training["pairs"]
    assert a.training["epochs"] == round(steps * OPTIONS.batch_size / pairs, 3)
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
