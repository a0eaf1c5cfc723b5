"""What building an index reads from the store: live PMIDs, vectors, watermarks, versions.

Example:
    >>> vectors, ids = fetch_vectors(engine, "base")  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
from sqlalchemy import Engine, desc, func, select

from litpulse.core.db import IN_CHUNK
from litpulse.core.schema import articles, embeddings, index_versions
from litpulse.core.states import IndexStatus
from ranking.embed import vector_from_bytes
from ranking.index_files import has_files

__all__ = [
    "WATERMARK_SLACK_S",
    "base_row",
    "changed_ids",
    "fetch_vectors",
    "live_ids",
    "newest_date",
    "watermark",
]

#: Re-embedded vectors this many seconds older than an index's watermark are re-added
#: too (idempotent), covering transactions that committed late.
WATERMARK_SLACK_S = 300.0


def live_ids(engine: Engine) -> np.ndarray:
    """PMIDs of the articles that are not deleted, sorted (int64)."""
    with engine.connect() as conn:
        result = conn.execute(
            select(articles.c.pmid).where(articles.c.is_deleted.is_(False))
            .order_by(articles.c.pmid)
        )
        return np.fromiter((int(p) for p in result.scalars()), dtype=np.int64)


def watermark(engine: Engine, model_version: str) -> dt.datetime | None:
    """When the newest vector of a model version was written."""
    with engine.connect() as conn:
        value: dt.datetime | None = conn.execute(
            select(func.max(embeddings.c.created_at))
            .where(embeddings.c.model_version == model_version)
        ).scalar()
        return value


def changed_ids(engine: Engine, model_version: str, since: str | None) -> np.ndarray:
    """PMIDs embedded after ``since`` (ISO text) less :data:`WATERMARK_SLACK_S`."""
    if not since:
        return np.zeros(0, dtype=np.int64)
    start = dt.datetime.fromisoformat(since) - dt.timedelta(seconds=WATERMARK_SLACK_S)
    with engine.connect() as conn:
        result = conn.execute(
            select(embeddings.c.pmid).where(
                embeddings.c.model_version == model_version, embeddings.c.created_at > start
            )
        )
        return np.fromiter((int(p) for p in result.scalars()), dtype=np.int64)


def fetch_vectors(engine: Engine, model_version: str,
                  pmids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Vectors of live articles for a model version (all, or of ``pmids``)."""
    base = (
        select(embeddings.c.pmid, embeddings.c.vector)
        .select_from(embeddings.join(articles, articles.c.pmid == embeddings.c.pmid))
        .where(embeddings.c.model_version == model_version, articles.c.is_deleted.is_(False))
    )
    ids: list[int] = []
    blobs: list[bytes] = []
    with engine.connect() as conn:
        if pmids is None:
            result = conn.execution_options(yield_per=IN_CHUNK).execute(
                base.order_by(embeddings.c.pmid))
            for pmid, vec in result:
                ids.append(int(pmid))
                blobs.append(vec)
        else:
            wanted = [int(p) for p in pmids]
            for start in range(0, len(wanted), IN_CHUNK):
                chunk = wanted[start : start + IN_CHUNK]
                for pmid, vec in conn.execute(base.where(embeddings.c.pmid.in_(chunk))):
                    ids.append(int(pmid))
                    blobs.append(vec)
    if not blobs:
        return np.zeros((0, 0), dtype=np.float32), np.zeros(0, dtype=np.int64)
    dim = len(blobs[0]) // 4
    vectors = vector_from_bytes(b"".join(blobs)).reshape(len(blobs), dim)
    return vectors, np.asarray(ids, dtype=np.int64)


def newest_date(engine: Engine) -> str | None:
    """The newest ``best_date`` of a live article, as ISO text."""
    with engine.connect() as conn:
        value = conn.execute(
            select(func.max(articles.c.best_date)).where(articles.c.is_deleted.is_(False))
        ).scalar()
    return str(value) if value is not None else None


def base_row(engine: Engine, model_version: str) -> Any:
    """The newest kept version for the model: the published one, else a retired one."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(index_versions)
            .where(index_versions.c.model_version == model_version,
                   index_versions.c.status.in_((IndexStatus.PUBLISHED, IndexStatus.RETIRED)))
            .order_by(desc(index_versions.c.status == IndexStatus.PUBLISHED),
                      desc(index_versions.c.published_at))
        ).all()
    for row in rows:
        if has_files(row.path):
            return row
    return None
