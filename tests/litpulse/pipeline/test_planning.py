"""The application floor's hooks into retraining: BM25 hard negatives."""

from __future__ import annotations

import pytest

from litpulse.core.settings import Settings
from litpulse.pipeline.planning import lexical_negatives
from tests.ranking.corpus import ARTICLES, real_corpus


def test_lexical_negatives_search_the_published_bm25(
    sqlite_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # nothing published yet: retraining runs without BM25 negatives
    assert lexical_negatives(sqlite_settings) is None
    search = lexical_negatives(real_corpus(tmp_path_factory))
    assert search is not None
    hits = search("CRISPR Cas9 off-target", 3)
    assert 0 < len(hits) <= 3 and hits[0][0] == 101
    assert all(p in ARTICLES for p, _ in hits)
    assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
