"""Expert relevance feedback: one judgement per (query, article, expert), every one logged.

A *relevant* judgement becomes a positive training pair (query → article text); a *not
relevant* one becomes a hard negative for the same query (see :mod:`retrain.pairs`).

``feedback`` keeps each expert's latest judgement (a change of mind replaces it);
``feedback_log`` keeps every judgement as sent, with its expert, its source (``api``:
an API token, whose id is kept; ``cli``: ``litpulse feedback``, a local admin with
database access) and its time. API judgements are limited per expert and hour.

A judgement sent with an API token that has since been revoked (it leaked, or its
expert's judgement is no longer trusted) stays in both tables, for the audit, but no
longer trains (:func:`trainable_feedback`): per token, not per expert, since an expert may
hold several. Where the expert judged the same article for the same query earlier without
that token (another token, or the CLI), that earlier judgement trains in its place.
Judgements older than API tokens carry none and keep training, like the CLI's.

Example:
    >>> record_feedback(settings, query="statins dementia", pmid=123,
    ...                 relevant=True, user="alice")  # doctest: +SKIP
    1
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
import unicodedata
from collections import Counter
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, func, insert, select

from litpulse.core.db import connect, take_turn, upsert
from litpulse.core.errors import ConfigError, LitpulseError, NotFoundError
from litpulse.core.schema import api_tokens, articles, feedback, feedback_log
from litpulse.core.settings import Settings
from litpulse.core.text import checked_text, visible_name
from litpulse.core.timeutil import utcnow

__all__ = [
    "FeedbackLimitError",
    "FeedbackSource",
    "Judgement",
    "TokenFeedback",
    "TrainableFeedback",
    "Withheld",
    "MAX_QUERY_CHARS",
    "MAX_USER_CHARS",
    "clean_expert",
    "feedback_by_token",
    "record_feedback",
    "trainable_feedback",
]

logger = logging.getLogger(__name__)

MAX_QUERY_CHARS = 1000
MAX_USER_CHARS = 255
#: The most UTF-8 bytes of a query and of an expert's name: both are keys of the unique
#: index ``uq_feedback_query_pmid_user``, whose entry PostgreSQL caps at ~2,700 bytes
#: (1,000 CJK characters are 3,000 bytes: the judgement could not be stored at all).
MAX_QUERY_BYTES = 1800
MAX_USER_BYTES = 800

#: The window of the per-expert limit.
LIMIT_WINDOW = dt.timedelta(hours=1)


class FeedbackSource(enum.StrEnum):
    """How a judgement arrived."""

    API = "api"
    CLI = "cli"


class FeedbackLimitError(LitpulseError):
    """An expert sent more judgements in the last hour than the limit allows."""

    retryable = True

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        #: Seconds until the expert may send again.
        self.retry_after = retry_after


def _clean(value: object, name: str, limit: int, limit_bytes: int) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"`{name}` must be a string")
    text = " ".join(checked_text(value, f"`{name}`").split())
    if not text:
        raise ConfigError(f"`{name}` must not be empty")
    if len(text) > limit:
        raise ConfigError(f"`{name}` must be at most {limit} characters, got {len(text)}")
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > limit_bytes:
        raise ConfigError(f"`{name}` must be at most {limit_bytes} bytes in UTF-8 (about "
                          f"{limit_bytes // 3} characters of Chinese or Japanese), got {size}")
    return text


def clean_expert(name: object, *, new: bool = True) -> str:
    """An expert's name with its whitespace normalised, composed (NFC), so that a name
    typed on macOS and on Linux is one expert (one per-hour limit, one share of a round's
    pairs); the store's names are composed too (:func:`litpulse.core.db.compose_expert_names`).

    Args:
        name: The name.
        new: A name typed now (a token's, ``litpulse feedback --user``, a request's
            ``user``): it may hold no invisible character either
            (:func:`litpulse.core.text.visible_name`). ``False``: a name stored already (an
            API token's), which an older release may have taken with one: it keeps judging.

    Raises:
        ConfigError: Not a string, empty, longer than :data:`MAX_USER_CHARS`, or holding a
            control character (:func:`litpulse.core.text.checked_text`), or (``new``) an
            invisible one.
    """
    text = _clean(name, "user", MAX_USER_CHARS, MAX_USER_BYTES)
    return visible_name(text, "`user`") if new else unicodedata.normalize("NFC", text)


def _check_limit(conn: Connection, expert: str, per_hour: int, now: dt.datetime) -> None:
    take_turn(conn, expert)  # concurrent judgements of one expert: count, then insert
    log = feedback_log.c
    since = now - LIMIT_WINDOW
    count, oldest = conn.execute(
        select(func.count(), func.min(log.created_at)).where(
            log.expert == expert, log.source == FeedbackSource.API.value, log.created_at > since
        )
    ).one()
    if int(count or 0) < per_hour:
        return
    wait = ((oldest + LIMIT_WINDOW) - now).total_seconds() if oldest is not None else 1.0
    raise FeedbackLimitError(
        f"expert {expert!r} sent {per_hour} judgements in the last hour, the most allowed",
        retry_after=max(1.0, wait),
    )


def record_feedback(
    settings: Settings,
    *,
    query: str,
    pmid: int,
    relevant: bool,
    user: str,
    source: FeedbackSource = FeedbackSource.CLI,
    token_id: int | None = None,
    max_per_hour: int | None = None,
    engine: Engine | None = None,
) -> int:
    """Record (or change) a judgement, log it, and return its feedback id.

    The query's whitespace is normalised; a second judgement by the same expert on the
    same query and article replaces the first in ``feedback`` (both stay in the log).

    Args:
        settings: The store.
        query: The query searched.
        pmid: The judged article.
        relevant: Whether the article answers the query.
        user: The expert: from the API token, or the admin's ``--user`` on the CLI.
        source: How the judgement arrived.
        token_id: The API token it came with, if any.
        max_per_hour: Most ``api`` judgements this expert may have sent in the last hour
            (``None``: no limit).
        engine: Database engine (default :func:`litpulse.core.db.connect`).

    Raises:
        ConfigError: An empty or too long query or user (in characters, or in UTF-8
            bytes: :data:`MAX_QUERY_BYTES`, :data:`MAX_USER_BYTES`), one holding a control
            character, a query without a letter or digit (invisible characters or
            punctuation alone: nothing a search finds), or a bad pmid.
        NotFoundError: The article does not exist (or was deleted).
        FeedbackLimitError: The expert is over ``max_per_hour``.
    """
    query = _clean(query, "query", MAX_QUERY_CHARS, MAX_QUERY_BYTES)
    if not any(ch.isalnum() for ch in query):  # no search finds anything for it to judge
        raise ConfigError(f"`query` must hold a letter or digit, got {query!r}")
    user = clean_expert(user, new=token_id is None)  # a token's name is stored already
    source = FeedbackSource(source)
    if isinstance(pmid, bool) or not isinstance(pmid, int) or pmid <= 0:
        raise ConfigError(f"`pmid` must be a positive integer, got {pmid!r}")
    if not isinstance(relevant, bool):
        raise ConfigError(f"`relevant` must be true or false, got {relevant!r}")
    engine = engine or connect(settings)
    now = utcnow()
    with engine.begin() as conn:
        if max_per_hour is not None:
            _check_limit(conn, user, max_per_hour, now)
        found = conn.execute(
            select(articles.c.pmid).where(articles.c.pmid == pmid, articles.c.is_deleted.is_(False))
        ).first()
        if found is None:
            raise NotFoundError(f"article {pmid} does not exist")
        upsert(
            conn,
            feedback,
            [{"query": query, "pmid": pmid, "relevant": relevant, "user": user,
              "created_at": now, "token_id": token_id}],
            keys=("query", "pmid", "user"),
            update=("relevant", "created_at", "token_id"),
        )
        fid = conn.execute(
            select(feedback.c.id).where(
                feedback.c.query == query, feedback.c.pmid == pmid, feedback.c.user == user
            )
        ).scalar_one()
        conn.execute(
            insert(feedback_log).values(
                feedback_id=fid, query=query, pmid=pmid, relevant=relevant, expert=user,
                source=source.value, token_id=token_id, created_at=now,
            )
        )
    logger.info("feedback %d: %r -> %d relevant=%s by %s (%s)", fid, query, pmid, relevant,
                user, source.value)
    return int(fid)


# ------------------------------------------------------------------ what may train


@dataclass(frozen=True)
class Judgement:
    """An expert's judgement of an article for a query, as training reads it."""

    #: The ``feedback`` row (one per query, article and expert).
    id: int
    query: str
    pmid: int
    relevant: bool
    expert: str
    created_at: dt.datetime
    #: The API token it was sent with (``None``: the CLI, or older than API tokens).
    token_id: int | None = None


@dataclass(frozen=True)
class Withheld:
    """An expert's standing judgement sent with a revoked token: kept, never trained on."""

    judgement: Judgement
    #: The expert's latest earlier judgement of the same article for the same query that
    #: was not sent with a revoked token, which trains in its place (``None``: none).
    fallback: Judgement | None = None


@dataclass(frozen=True)
class TrainableFeedback:
    """Every expert's standing judgements, split into those that may train and not."""

    #: What may train, oldest first: standing judgements and the fallbacks of withheld ones.
    judgements: tuple[Judgement, ...]
    #: Standing judgements sent with a revoked token, oldest first.
    withheld: tuple[Withheld, ...]


def trainable_feedback(engine: Engine) -> TrainableFeedback:
    """The judgements training may use: none sent with a revoked API token.

    Each expert's standing judgement (``feedback``) counts, unless it was sent with a
    token revoked since; then the expert's latest earlier judgement of the same article
    for the same query (``feedback_log``) not sent with a revoked token counts instead,
    if there is one.
    """
    f, t = feedback.c, api_tokens.c
    stmt = (
        select(f.id, f.query, f.pmid, f.relevant, f.user, f.created_at, f.token_id,
               t.revoked_at)
        .select_from(feedback.outerjoin(api_tokens, t.id == f.token_id))
        .order_by(f.created_at, f.id)
    )
    usable: list[Judgement] = []
    revoked: list[Judgement] = []
    with engine.connect() as conn:
        for row in conn.execute(stmt):
            j = Judgement(int(row.id), row.query, int(row.pmid), bool(row.relevant), row.user,
                          row.created_at, row.token_id)
            (usable if row.revoked_at is None else revoked).append(j)
        fallbacks = _fallbacks(conn, revoked)
    withheld = tuple(Withheld(j, fallbacks.get(j.id)) for j in revoked)
    judgements = usable + [w.fallback for w in withheld if w.fallback is not None]
    judgements.sort(key=lambda j: (j.created_at, j.id))
    return TrainableFeedback(tuple(judgements), withheld)


def _fallbacks(conn: Connection, revoked: list[Judgement]) -> dict[int, Judgement]:
    """Feedback id → the latest logged judgement of it not sent with a revoked token."""
    log, t = feedback_log.c, api_tokens.c
    by_id = {j.id: j for j in revoked}
    out: dict[int, Judgement] = {}
    ids = sorted(by_id)
    for start in range(0, len(ids), 500):
        stmt = (
            select(log.feedback_id, log.relevant, log.created_at, log.token_id)
            .select_from(feedback_log.outerjoin(api_tokens, t.id == log.token_id))
            .where(log.feedback_id.in_(ids[start : start + 500]), t.revoked_at.is_(None))
            .order_by(log.id)
        )
        for fid, relevant, created_at, token_id in conn.execute(stmt):
            j = by_id[int(fid)]
            out[j.id] = Judgement(j.id, j.query, j.pmid, bool(relevant), j.expert, created_at,
                                  token_id)
    return out


@dataclass(frozen=True)
class TokenFeedback:
    """What one API token's judgements amount to."""

    #: Judgements sent with it (``feedback_log``, changes of mind included).
    sent: int = 0
    #: Of them, those still standing (each expert's latest per query and article).
    standing: int = 0
    #: Of them, those training uses now (a standing one, or a fallback of a withheld one).
    training: int = 0
    #: Standing ones withheld from training, the token being revoked (kept in the store).
    withheld: int = 0
    #: Withheld ones whose expert's earlier judgement (not sent with a revoked token)
    #: trains in their place.
    fallbacks: int = 0


def feedback_by_token(engine: Engine) -> dict[int, TokenFeedback]:
    """Token id → :class:`TokenFeedback`, for every token that sent a judgement."""
    log, f = feedback_log.c, feedback.c
    with engine.connect() as conn:
        sent: dict[int, int] = dict(conn.execute(
            select(log.token_id, func.count()).where(log.token_id.is_not(None))
            .group_by(log.token_id)
        ).all())  # fmt: skip
        standing: dict[int, int] = dict(conn.execute(
            select(f.token_id, func.count()).where(f.token_id.is_not(None))
            .group_by(f.token_id)
        ).all())  # fmt: skip
    found = trainable_feedback(engine)
    training = Counter(j.token_id for j in found.judgements)
    withheld = Counter(w.judgement.token_id for w in found.withheld)
    fallbacks = Counter(w.judgement.token_id for w in found.withheld if w.fallback is not None)
    return {
        int(tid): TokenFeedback(int(sent.get(tid, 0)), int(standing.get(tid, 0)),
                                training[tid], withheld[tid], fallbacks[tid])
        for tid in set(sent) | set(standing)
    }
