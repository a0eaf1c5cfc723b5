"""Sharded embedding and re-indexing (found by a hostile review): vectors of retired
models dropped, a text of nothing similar to nothing, one scan to plan the shards, the
base model checked before each chunk is stored; the reindex DAG's publish for a model
promoted meanwhile (strict xfail until fixed).

Fast: synthetic vectors where the model does not matter, the bundled all-MiniLM-L6-v2 on a
handful of short texts where it does, and the litpulse_reindex DAG's own task callable
loaded in this process with ``AIRFLOW_HOME`` in a temporary folder.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import inspect
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine, event, func, insert, select

from litpulse.core import db
from litpulse.core.errors import LitpulseError
from litpulse.core.schema import articles, embeddings, index_versions
from litpulse.core.settings import Settings
from litpulse.pipeline import planning
from ranking import embed as em
from ranking import refresh
from ranking.models import published_index_row
from tests.ranking.test_index import _activate, add_articles

DAGS = Path(__file__).resolve().parents[3] / "dags"


def _count(engine: Engine, model: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(
            select(func.count()).select_from(embeddings)
            .where(embeddings.c.model_version == model)
        ).scalar_one())


def _add_text(engine: Engine, pmid: int, title: str, abstract: str = "") -> None:
    now = db.utcnow()
    with engine.begin() as conn:
        conn.execute(insert(articles).values(
            pmid=pmid, version=1, source_kind="test", source_location="t", title=title,
            abstract=abstract, text_hash=f"h{pmid}", is_deleted=False,
            best_date=dt.date(2024, 5, 1), ingested_at=now, updated_at=now,
        ))


# ------------------------------------------------------------------ retired vectors


def test_vectors_of_a_retired_model_without_any_kept_index_are_dropped(
    sqlite_settings: Settings,
) -> None:
    """m1 → m2 → m3 → m4, each promoted and published. ``publish._prune`` keeps the newest
    KEEP_VERSIONS (3) index versions: m1's index is deleted (rows and files), m1 is
    retired, nothing can serve or roll back to its vectors without re-embedding — yet
    every one of them stays in ``embeddings``. Nothing in the code base ever deletes
    embeddings except a ``--rebuild`` of the *active* model version."""
    settings = sqlite_settings
    engine = db.connect(settings)
    models = ("m1", "m2", "m3", "m4")
    add_articles(engine, list(range(1, 21)), models=models)
    for model in models:
        _activate(engine, model, settings)
        report = refresh.refresh_index(settings, embed=False)
        assert report.published and report.model_version == model
    with engine.connect() as conn:
        kept = set(conn.execute(select(index_versions.c.model_version)).scalars())
    assert "m1" not in kept  # its last index version was pruned
    assert published_index_row(engine).model_version == "m4"
    assert _count(engine, "m1") == 0, (
        f"{_count(engine, 'm1')} vectors of retired m1 kept with no index version of it left"
    )
    assert all(_count(engine, m) == 20 for m in ("m2", "m3", "m4"))  # kept indexes' vectors


# ------------------------------------------------------------------ empty text


def test_an_article_without_text_does_not_top_dense_search(sqlite_settings: Settings) -> None:
    """``article_text("", "")`` is ``""`` and ``embed_pending`` embeds it anyway (PubMed
    has records with an empty ``ArticleTitle`` — the title only in ``VernacularTitle``,
    which ``article_text`` ignores — and no abstract). The vector of nothing has a higher
    cosine to short generic queries than the articles that contain the words: the query
    ``patients`` ranks the textless article (0.29) above the trial of hospitalised adults
    (0.22) and the one that treated 45 patients (0.04); ``study`` above the cohort study."""
    from tests.ranking.test_embed import TEXTS

    settings = sqlite_settings
    engine = db.connect(settings)
    for pmid, text in enumerate(TEXTS, start=1):
        _add_text(engine, pmid, text)
    _add_text(engine, 99, "", "")
    assert em.embed_pending(settings) == len(TEXTS) + 1
    with engine.connect() as conn:
        rows = conn.execute(select(embeddings.c.pmid, embeddings.c.vector)).all()
    ids = np.array([int(p) for p, _ in rows])
    vectors = np.stack([em.vector_from_bytes(v) for _, v in rows])
    assert not vectors[ids == 99].any(), "a text of nothing is similar to nothing"
    for query in ("patients", "study"):
        scores = vectors @ em.encode_query(settings, "base", query)[0]
        top = int(ids[int(np.argmax(scores))])
        shown = dict(zip(ids.tolist(), np.round(scores, 3).tolist(), strict=True))
        assert top != 99, (query, shown)


# ------------------------------------------------------------------ plan cost


def test_planning_shards_scans_the_corpus_once(sqlite_settings: Settings) -> None:
    """``pmid % n == i`` can use no index: each of the ``n`` count queries reads every
    article and joins its embedding. One ``GROUP BY pmid % n`` gives every shard's count."""
    settings = sqlite_settings
    engine = db.connect(settings)
    add_articles(engine, list(range(1, 41)), models=())
    counts: list[str] = []

    def _seen(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if "count(" in statement.lower():
            counts.append(statement)

    event.listen(engine, "before_cursor_execute", _seen)
    try:
        shards = planning.plan_embedding_shards(settings, 64, engine=engine)
    finally:
        event.remove(engine, "before_cursor_execute", _seen)
    assert sum(s.pending for s in shards) == 40  # the plan itself is right
    assert [s.pending for s in shards] == [
        sum(1 for p in range(1, 41) if p % 64 == i) for i in range(64)
    ]
    assert len(counts) <= 2, f"{len(counts)} count queries over the corpus for 64 shards"


# ------------------------------------------------------------------ the reindex DAG


@pytest.fixture
def reindex_dag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[ModuleType, Any]]:
    """``dags/litpulse_reindex.py`` executed here (throw-away AIRFLOW_HOME) and its DAG."""
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow_home"))
    monkeypatch.setenv("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    spec = importlib.util.spec_from_file_location("review_shards_reindex",
                                                  DAGS / "litpulse_reindex.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module, module.litpulse_reindex()


def test_reindex_publish_does_not_embed_the_corpus_for_a_model_promoted_meanwhile(
    sqlite_settings: Settings, reindex_dag: tuple[ModuleType, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Run R1 of litpulse_reindex re-embeds for m2 in shards; every shard has started (so
    none fails on ``embed_shard``'s model check) when the retrain DAG promotes m3. R1's
    ``publish_index`` then runs ``refresh_index(rebuild=True)`` for the *active* model:
    it embeds every article for m3 unsharded inside that one task (6 h timeout, 2
    retries: at full size it times out and is retried for up to 18 h), while m3's own
    sharded run R2 waits behind it (``max_active_runs=1``). The DAG's doc says the newer
    promotion's own run takes over: publish_index is skipped (no asset event)."""
    from airflow.sdk.exceptions import AirflowSkipException

    settings = sqlite_settings
    engine = db.connect(settings)
    module, dag = reindex_dag
    monkeypatch.setattr(module, "settings", lambda: settings)
    live = list(range(1, 9))
    add_articles(engine, live, models=("base", "m2"))  # m2's shards are done
    refresh.refresh_index(settings, embed=False)
    _activate(engine, "m2", settings)
    shards = planning.plan_embedding_shards(settings, 2, engine=engine)
    assert [planning.embed_shard(settings, s, engine=engine) for s in shards] == [0, 0]

    _activate(engine, "m3", settings)  # the retrain DAG promotes again meanwhile
    assert _count(engine, "m3") == 0
    call = dag.task_dict["publish_index"].python_callable
    refused: AirflowSkipException | None = None
    try:
        out = call([0, 0], [s.to_dict() for s in shards])
        if inspect.isgenerator(out):
            list(out)
    except AirflowSkipException as exc:
        refused = exc
    embedded = _count(engine, "m3")
    published = published_index_row(engine).model_version
    assert refused is not None and embedded == 0, (
        f"R1's publish_index (shards planned for m2) embedded {embedded} articles for m3 "
        f"in one task and published an index of {published}")


# ------------------------------------------------------------------ a rebuild mid-shard


def test_a_shard_of_the_old_model_never_writes_after_a_rebuild_with_the_new_one(
    sqlite_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LITPULSE_MODEL changes. While a shard (litpulse_reindex, the bootstrap, or the
    index-refresh DAG's embed task: none takes the publish lease) of a worker still on the
    old model encodes its chunk, ``litpulse index refresh --rebuild`` with the new model
    drops every vector of the model version, embeds all articles and publishes. The
    shard's chunk then lands (``check_stored_base`` ran once, before; the per-chunk claim
    guards first embeddings only): its vectors of the *old* model carry current text
    hashes, nothing is pending, the records say the new model — they are served beside
    the new model's vectors and never re-embedded. (The old model's vectors are simulated
    as the negated ones: the test's second model shares the bundled weights.)"""
    from litpulse.pipeline.planning import EmbeddingShard, embed_shard
    from tests.ranking.test_base_model import _another_model

    old = sqlite_settings
    engine = db.connect(old)
    add_articles(engine, list(range(1, 7)))  # 'base' vectors of the old model
    refresh.refresh_index(old, embed=False)  # its index records the old model
    add_articles(engine, [7, 8], models=())  # pending: the shard's chunk
    new = _another_model(old, tmp_path / "new")

    real = em.embed_texts
    after_rebuild: dict[int, np.ndarray] = {}

    def shard_encodes(encoder: Any, texts: Any, settings: Settings, **kw: Any) -> np.ndarray:
        if after_rebuild or settings is not old:  # the rebuild's own embedding
            return real(encoder, texts, settings, **kw)
        vectors = -real(encoder, texts, settings, **kw)  # "the old model's" vectors
        report = refresh.refresh_index(new, rebuild=True)  # meanwhile, on another host
        assert report.published and report.embedded == 8
        with engine.connect() as conn:
            after_rebuild.update((int(p), em.vector_from_bytes(v)) for p, v in conn.execute(
                select(embeddings.c.pmid, embeddings.c.vector)
                .where(embeddings.c.pmid.in_([7, 8]))))
        return vectors

    monkeypatch.setattr(em, "embed_texts", shard_encodes)
    try:
        embed_shard(old, EmbeddingShard(0, 1, "base", 2), engine=engine)
    except LitpulseError:
        pass  # refusing the chunk is the fix
    monkeypatch.setattr(em, "embed_texts", real)
    assert sorted(after_rebuild) == [7, 8]
    with engine.connect() as conn:
        stored = {int(p): em.vector_from_bytes(v) for p, v in conn.execute(
            select(embeddings.c.pmid, embeddings.c.vector).where(embeddings.c.pmid.in_([7, 8])))}
    assert em.count_pending(new, "base", engine) == 0  # nothing will re-embed them
    mixed = [p for p in (7, 8) if not np.allclose(stored[p], after_rebuild[p], atol=1e-5)]
    assert not mixed, f"PMIDs {mixed}: vectors of the old model stored after the rebuild"
