"""API tokens: write access to the HTTP API, each tied to a named expert.

A token is ``lp_`` + ``secrets.token_urlsafe(32)`` (256 random bits). Only its SHA-256
is stored, so the database never holds a usable token; ``litpulse tokens create``
prints the token once. A request proves it holds a token by sending it as
``Authorization: Bearer <token>``; the API looks the digest up and compares it in
constant time. A revoked token stays listed (who had access, and until when).

A token may carry an e-mail address, set by whoever issues it (``tokens create --email``):
the expert's saved-search digests are e-mailed there (:mod:`litpulse.pipeline.digest`),
while the token is active.

Revoking a token also withholds the judgements sent with it from training (they stay in
the store, for the audit; see :func:`retrain.feedback.trainable_feedback`): per token,
not per expert. :func:`revoke_token` and :func:`list_tokens` count them
(:class:`retrain.feedback.TokenFeedback`). A model already trained on them keeps what it
learnt: :func:`revoke_token` says how many were sent before the active model was made.

Example:
    >>> issued = create_token(settings, "alice", created_by="admin")  # doctest: +SKIP
    >>> verify_token(connect(settings), issued.token).expert           # doctest: +SKIP
    'alice'
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, insert, select, update

from litpulse.core.db import connect
from litpulse.core.errors import ConfigError, NotFoundError
from litpulse.core.schema import api_tokens, feedback_log
from litpulse.core.settings import Settings
from litpulse.core.text import plain_mailbox
from litpulse.core.timeutil import iso, utcnow
from litpulse.pipeline.saved_searches import CLI_OWNER_PREFIX
from retrain.feedback import TokenFeedback, clean_expert, feedback_by_token, trainable_feedback

__all__ = [
    "TOKEN_PREFIX",
    "IssuedToken",
    "Revocation",
    "TokenInfo",
    "TokenState",
    "any_active_token",
    "create_token",
    "hash_token",
    "list_tokens",
    "revoke_token",
    "verify_token",
]

logger = logging.getLogger(__name__)

#: Every token starts with this, so a leaked one is easy to recognise (and to scan for).
TOKEN_PREFIX = "lp_"

#: Longest string looked at as a token (a real one is 46 characters).
MAX_TOKEN_CHARS = 256


class TokenState(enum.StrEnum):
    ACTIVE = "active"
    REVOKED = "revoked"


@dataclass(frozen=True)
class TokenInfo:
    """A stored token, without the secret."""

    id: int
    expert: str
    prefix: str
    created_at: dt.datetime
    created_by: str | None = None
    revoked_at: dt.datetime | None = None
    #: Where the expert's saved-search digests are e-mailed while it is active.
    email: str | None = None
    #: The judgements sent with it (counted by :func:`list_tokens` and :func:`revoke_token`).
    feedback: TokenFeedback = field(default_factory=TokenFeedback)

    @property
    def state(self) -> TokenState:
        return TokenState.REVOKED if self.revoked_at is not None else TokenState.ACTIVE

    @property
    def excluded(self) -> int:
        """Its standing judgements withheld from training: all of them once revoked."""
        return self.feedback.withheld

    def to_dict(self) -> dict[str, Any]:
        fb = self.feedback
        return {
            "id": self.id,
            "expert": self.expert,
            "prefix": self.prefix,
            "state": self.state.value,
            "created_at": iso(self.created_at),
            "created_by": self.created_by,
            "revoked_at": iso(self.revoked_at),
            "email": self.email,
            "feedback": {
                "sent": fb.sent,
                "standing": fb.standing,
                "training": fb.training,
                "excluded": fb.withheld,
                "fallbacks": fb.fallbacks,
            },
        }


@dataclass(frozen=True)
class Revocation:
    """A revoked token and what its revocation withheld from training."""

    info: TokenInfo
    #: Of the withheld judgements, those sent before the active model was made, which it
    #: may have learnt from (0 with the base model).
    before_active: int = 0
    #: The active model version then (``None``: the base model).
    active_model: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**self.info.to_dict(), "excluded_before_active_model": self.before_active,
                "active_model": self.active_model}


@dataclass(frozen=True)
class IssuedToken:
    """A new token: the only time the secret itself is at hand."""

    info: TokenInfo
    token: str = field(repr=False)


def hash_token(token: str) -> str:
    """The stored form of a token: its SHA-256, in hex."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _info(row: Any, feedback: TokenFeedback | None = None) -> TokenInfo:
    return TokenInfo(id=int(row.id), expert=row.expert, prefix=row.prefix,
                     created_at=row.created_at, created_by=row.created_by,
                     revoked_at=row.revoked_at, email=row.email,
                     feedback=feedback or TokenFeedback())


def create_token(
    settings: Settings, expert: str, *, created_by: str | None = None,
    email: str | None = None, engine: Engine | None = None,
) -> IssuedToken:
    """Create a token for ``expert``; the returned object is the only copy of the secret.

    Args:
        email: Where the expert's saved-search digests are e-mailed while this token is
            active (:func:`litpulse.core.text.plain_mailbox`); ``None``: to the shared
            ``LITPULSE_DIGEST_SMTP_TO`` list, unless another of the expert's tokens has one.

    Raises:
        ConfigError: The expert's name is empty, too long or starts with ``cli:`` (the
            owner of searches saved from the CLI), or ``email`` is not one plain mailbox
            (nothing is stored).
    """
    expert = clean_expert(expert)
    if expert.startswith(CLI_OWNER_PREFIX):  # the CLI's own saved searches are owned so
        raise ConfigError(f"an expert's name must not start with {CLI_OWNER_PREFIX!r} (the "
                          f"owner of searches saved from the CLI), got {expert!r}")
    email = None if email is None else plain_mailbox(email)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    engine = engine or connect(settings)
    with engine.begin() as conn:
        key = conn.execute(
            insert(api_tokens).values(
                expert=expert, token_sha256=hash_token(token), prefix=token[:10],
                created_by=created_by, created_at=utcnow(), email=email,
            )
        ).inserted_primary_key
        tid = int(key[0]) if key is not None else 0
        row = conn.execute(select(api_tokens).where(api_tokens.c.id == tid)).one()
    logger.info("created API token %d (%s…) for expert %s", tid, token[:10], expert)
    return IssuedToken(_info(row), token)


def list_tokens(settings: Settings, *, engine: Engine | None = None) -> list[TokenInfo]:
    """Every token, active and revoked, oldest first, with its judgements counted."""
    engine = engine or connect(settings)
    with engine.connect() as conn:
        rows = conn.execute(select(api_tokens).order_by(api_tokens.c.id)).all()
    counts = feedback_by_token(engine)
    return [_info(r, counts.get(int(r.id))) for r in rows]


def revoke_token(
    settings: Settings, token_id: int, *, engine: Engine | None = None
) -> Revocation:
    """Revoke a token (idempotent): it can no longer write, and no judgement sent with it
    trains any more (each stays in the store). Returns the token, with its judgements
    counted, and how many of those withheld the active model may have learnt from.

    Raises:
        NotFoundError: No token has this id.
    """
    from retrain.registry import active_version

    engine = engine or connect(settings)
    with engine.begin() as conn:
        conn.execute(
            update(api_tokens)
            .where(api_tokens.c.id == token_id, api_tokens.c.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        )
        row = conn.execute(select(api_tokens).where(api_tokens.c.id == token_id)).first()
    if row is None:
        raise NotFoundError(f"no API token has id {token_id}")
    info = _info(row, feedback_by_token(engine).get(token_id))
    active = active_version(settings, engine=engine)
    before = 0
    if active is not None:
        withheld = {w.judgement.id for w in trainable_feedback(engine).withheld
                    if w.judgement.token_id == token_id}  # fmt: skip
        # sent with this token before the active model was made: it may have trained on
        # it, however often the token re-sent or overturned the judgement since (each
        # sending rewrites the standing judgement's time; the log keeps the first)
        log = feedback_log.c
        with engine.connect() as conn:
            sent = conn.execute(
                select(log.feedback_id).distinct()
                .where(log.token_id == token_id, log.created_at < active.created_at)
            ).scalars()  # fmt: skip
            before = len(withheld & {int(f) for f in sent})
    logger.info("revoked API token %d of expert %s: %d standing judgements withheld from "
                "training", token_id, row.expert, info.excluded)
    return Revocation(info, before, active.id if active is not None else None)


def any_active_token(engine: Engine) -> bool:
    """Whether any token can write: without one the API is read-only."""
    with engine.connect() as conn:
        return conn.execute(
            select(api_tokens.c.id).where(api_tokens.c.revoked_at.is_(None)).limit(1)
        ).first() is not None


def verify_token(engine: Engine, token: str) -> TokenInfo | None:
    """The stored token matching ``token`` (active or revoked), or ``None``."""
    if not token or len(token) > MAX_TOKEN_CHARS:
        return None
    digest = hash_token(token)
    with engine.connect() as conn:
        row = conn.execute(select(api_tokens).where(api_tokens.c.token_sha256 == digest)).first()
    if row is None or not hmac.compare_digest(row.token_sha256, digest):
        return None
    return _info(row)
