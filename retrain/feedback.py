"""Expert relevance feedback: one judgement per (query, article, user).

A *relevant* judgement becomes a positive training pair (query → article text); a *not
relevant* one becomes a hard negative for the same query (see :mod:`retrain.pairs`).

Example:
    >>> record_feedback(settings, query="statins dementia", pmid=123,
    ...                 relevant=True, user="alice")  # doctest: +SKIP
    1
"""

from __future__ import annotations

import logging

from sqlalchemy import select

from litpulse.core.db import connect, upsert, utcnow
from litpulse.core.errors import ConfigError, NotFoundError
from litpulse.core.schema import articles, feedback
from litpulse.core.settings import Settings

__all__ = ["record_feedback", "MAX_QUERY_CHARS", "MAX_USER_CHARS"]

logger = logging.getLogger(__name__)

MAX_QUERY_CHARS = 1000
MAX_USER_CHARS = 255


def _clean(value: object, name: str, limit: int) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"`{name}` must be a string")
    text = " ".join(value.split())
    if not text:
        raise ConfigError(f"`{name}` must not be empty")
    if len(text) > limit:
        raise ConfigError(f"`{name}` must be at most {limit} characters, got {len(text)}")
    return text


def record_feedback(
    settings: Settings, *, query: str, pmid: int, relevant: bool, user: str
) -> int:
    """Record (or change) a judgement and return its feedback id.

    The query's whitespace is normalised; a second judgement by the same user on the
    same query and article replaces the first.

    Raises:
        ConfigError: An empty or too long query or user, or a bad pmid.
        NotFoundError: The article does not exist (or was deleted).
    """
    query = _clean(query, "query", MAX_QUERY_CHARS)
    user = _clean(user, "user", MAX_USER_CHARS)
    if isinstance(pmid, bool) or not isinstance(pmid, int) or pmid <= 0:
        raise ConfigError(f"`pmid` must be a positive integer, got {pmid!r}")
    if not isinstance(relevant, bool):
        raise ConfigError(f"`relevant` must be true or false, got {relevant!r}")
    engine = connect(settings)
    with engine.begin() as conn:
        found = conn.execute(
            select(articles.c.pmid).where(articles.c.pmid == pmid, articles.c.is_deleted.is_(False))
        ).first()
        if found is None:
            raise NotFoundError(f"article {pmid} does not exist")
        upsert(
            conn,
            feedback,
            [{"query": query, "pmid": pmid, "relevant": relevant, "user": user,
              "created_at": utcnow()}],
            keys=("query", "pmid", "user"),
            update=("relevant", "created_at"),
        )
        fid = conn.execute(
            select(feedback.c.id).where(
                feedback.c.query == query, feedback.c.pmid == pmid, feedback.c.user == user
            )
        ).scalar_one()
    logger.info("feedback %d: %r -> %d relevant=%s by %s", fid, query, pmid, relevant, user)
    return int(fid)
