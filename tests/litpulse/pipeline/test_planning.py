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


def test_an_index_rollback_across_models_leaves_the_refresh_running(settings: Settings) -> None:
    """Index v1 built for model 'base', v2 for the promoted 'm2'. `litpulse index rollback`
    re-publishes v1 and leaves m2 active. `reindex_pending` (the index-refresh DAG's first
    task) takes that for a deferred promotion and skips every night, though no
    litpulse_reindex run is coming: new articles never reach search and deleted ones stay
    in it. `litpulse nightly` (no such check) rebuilds for m2 instead, silently undoing
    the rollback. Either way the rollback restores only half: the index, not the model."""
    from sqlalchemy import insert

    from litpulse.core import db
    from litpulse.core.errors import LitpulseError
    from litpulse.core.schema import model_versions
    from litpulse.pipeline.planning import reindex_pending
    from ranking import publish, refresh
    from ranking.embed import active_model
    from ranking.models import published_index_row
    from tests.ranking.test_index import add_articles

    engine = db.connect(settings)
    add_articles(engine, list(range(1, 11)), models=("base", "m2"))
    refresh.refresh_index(settings, embed=False)
    with engine.begin() as conn:
        conn.execute(insert(model_versions).values(
            id="m2", base_model=settings.model_path, adapter_path=None, status="active",
            created_at=db.utcnow(), promoted_at=db.utcnow()))
    assert refresh.refresh_index(settings, embed=False).model_version == "m2"
    assert reindex_pending(settings) is None
    before = published_index_row(engine).id
    with pytest.raises(LitpulseError, match="models rollback"):
        publish.rollback_index(settings)  # review finding: it crossed models
    published = published_index_row(engine)
    assert published.id == before and published.model_version == active_model(settings, engine).id
    assert reindex_pending(settings) is None
    # within one model a rollback goes back one version
    add_articles(engine, [11], models=("base", "m2"))
    newer = refresh.refresh_index(settings, embed=False)
    assert newer.published and newer.model_version == "m2"
    assert publish.rollback_index(settings)["to"] == before
