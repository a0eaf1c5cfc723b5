"""The README's main job learns: a retrain on the demo corpus, the way ``litpulse nightly``
runs it (BM25 hard negatives, query-like anchors, citations), finds more fresh articles
than the base model without losing older ones.

A small demo corpus (600 generated records over three years, drift on) is ingested and
indexed by the nightly chain, then retrained for a fixed number of steps (not a time
budget, so that a loaded machine trains the same). About a minute or two on two idle
cores. It catches a pair mix, loss or generator change that stops the demo's fine-tune
from helping (as BM25 negatives on topic-level anchors once did).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from litpulse.app.cli.demo import DEMO_DAYS, DEMO_START
from litpulse.app.demo.generate import generate_corpus
from litpulse.core import db
from litpulse.core.settings import Settings
from litpulse.pipeline.nightly import run_nightly
from litpulse.pipeline.planning import lexical_negatives, reindex_now
from retrain.lora import LoraOptions
from retrain.run import retrain

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

OPTIONS = LoraOptions(max_steps=15, max_seconds=1e5)
MINE = {"fresh_size": 100, "distractors": 200, "holdout_buckets": 8}


@pytest.fixture(scope="module")
def demo_retrain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root: Path = tmp_path_factory.mktemp("demo-learning")
    m = generate_corpus(root / "data", n_records=600, n_files=2, seed=0,
                        start_date=DEMO_START, days=DEMO_DAYS, drift=True)
    settings = Settings.from_env({}, home=root / "home", device="cpu")
    run_nightly(settings, source="files", files=m.files, retrain=False, citations=False)
    negatives = lexical_negatives(settings)
    assert negatives is not None  # the index refresh published a BM25 index
    report = retrain(settings, options=OPTIONS, mine_kwargs=MINE, reindex=reindex_now,
                     negatives=negatives)
    yield {"settings": settings, "report": report}
    eng = db._ENGINES.pop(settings.effective_database_url, None)
    if eng is not None:
        eng.dispose()


def test_the_demo_retrain_finds_more_fresh_articles(demo_retrain: dict[str, Any]) -> None:
    report = demo_retrain["report"]
    assert report.pairs["hard_negatives"] > 0
    counts = report.pairs["counts"]
    assert all(counts[k] > 0 for k in ("title_abstract", "citation", "mesh", "keywords"))
    m = report.metrics
    fresh = m["candidate"]["fresh"]["recall@10"] - m["base"]["fresh"]["recall@10"]
    older = m["candidate"]["older"]["recall@10"] - m["base"]["older"]["recall@10"]
    assert fresh >= 0.02, m
    assert older >= -demo_retrain["settings"].gate_older_tolerance, m
    assert report.training["last_loss"] < report.training["first_loss"]
