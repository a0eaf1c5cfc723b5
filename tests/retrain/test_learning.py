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
from retrain.run import retrain

T0 = dt.datetime(2024, 7, 1, tzinfo=dt.UTC)
T1 = T0 + dt.timedelta(days=180)
T2 = T1 + dt.timedelta(days=30)

# the default adapter (top two layers; query, key, value and dense projections)
OPTIONS = LoraOptions(
    max_steps=30, epochs=10, batch_size=32, max_seq_length=64, max_seconds=1e5,
)
SHUFFLED = OPTIONS.replace(max_steps=12)
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
    assert fresh_gain >= 0.1, m
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
