"""The one home of "which model is active" and "which index is published".

Every reader of those two facts (the embedder, the index manager, search, the model
registry, the nightly planning, the API's status) asks here, so they cannot disagree.

Example:
    >>> row = published_index_row(engine)  # doctest: +SKIP
    >>> row.model_version  # doctest: +SKIP
    'base'
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Engine, desc, select

from litpulse.core.schema import index_versions, model_versions
from litpulse.core.states import IndexStatus, ModelStatus

__all__ = ["active_model_row", "newest_index_row", "published_index_row"]


def active_model_row(bind: Engine | Connection) -> Any:
    """The newest ``model_versions`` row with status ``active``, or ``None`` (base model).

    ``bind``: the store, or a connection whose transaction the read belongs to."""
    query = (
        select(model_versions)
        .where(model_versions.c.status == ModelStatus.ACTIVE)
        .order_by(desc(model_versions.c.promoted_at), desc(model_versions.c.created_at))
        .limit(1)
    )
    if isinstance(bind, Connection):
        return bind.execute(query).first()
    with bind.connect() as conn:
        return conn.execute(query).first()


def published_index_row(engine: Engine) -> Any:
    """The ``index_versions`` row searches use now (the newest published), or ``None``."""
    with engine.connect() as conn:
        return conn.execute(
            select(index_versions)
            .where(index_versions.c.status == IndexStatus.PUBLISHED)
            .order_by(desc(index_versions.c.published_at))
            .limit(1)
        ).first()


def newest_index_row(engine: Engine, model_version: str) -> Any:
    """The ``index_versions`` row of a model version built last (any status, files kept
    or not), or ``None``: it records the base model its stored vectors were built with."""
    with engine.connect() as conn:
        return conn.execute(
            select(index_versions)
            .where(index_versions.c.model_version == model_version)
            .order_by(desc(index_versions.c.created_at))
            .limit(1)
        ).first()
