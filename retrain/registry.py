"""The model registry: versions, lineage, promotion and rollback.

Each ``model_versions`` row is a base model plus a LoRA adapter (path and SHA-256), the
version it was continued from (``parent_id``), the data window and pair counts it was
trained on, its options, its evaluation on fresh and older held-out sets, and its status:

* ``candidate`` — trained and evaluated, waiting for the gate or a person;
* ``active`` — the version new indexes are built for (at most one);
* ``rejected`` — failed the gate, or was rolled back;
* ``retired`` — was active before a newer promotion.

Every change of status is also appended to the row's ``events`` (when, what, by whom,
why: :class:`~litpulse.core.states.ModelEvent`), so a version's history survives later
changes (:mod:`retrain.report` reads it); ``training`` keeps what its training did.

:func:`promote` switches the status and then builds and publishes a new index for the
promoted version (:func:`ranking.refresh.refresh_index`: a full build for a model without
an index; a kept index of that model, as after a rollback, is updated and republished). The index
carries its model version and searches embed queries with the index's own model, so
until the new index is published searches keep the old model with the old index; if the
rebuild fails the statuses are switched back (as read under the switch's lock) — unless
another switch landed meanwhile (the retrain DAG's deferred promotion takes no index
lease): that one stands, and only the version this one switched in goes back to what it
was, so never two versions are active (:func:`_restore`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, desc, func, insert, select, text, update

from litpulse.core.db import connect, folder_store, store_id
from litpulse.core.errors import ConfigError, ConsistencyError, LitpulseError, NotFoundError
from litpulse.core.schema import articles, model_versions
from litpulse.core.settings import Settings
from litpulse.core.states import ModelEvent, ModelStatus
from litpulse.core.timeutil import iso, utcnow
from ranking.embed import (
    BASE_MODEL_ID,
    adapter_problem,
    adapters_dir,
    base_model_name,
    relocate_adapters,
)

__all__ = [
    "ADAPTER_MAX_AGE_S",
    "ANY_ACTIVE",
    "ActiveChangedError",
    "STATUSES",
    "BASE_ID",
    "ModelVersion",
    "new_version_id",
    "free_version_id",
    "finite",
    "register",
    "list_models",
    "get_model",
    "active_version",
    "set_status",
    "record_event",
    "promote",
    "prune_adapters",
    "prune_rejected",
    "last_training_end",
    "articles_since_training",
    "rollback",
]

logger = logging.getLogger(__name__)

#: Every status of a version, in lifecycle order (:class:`~litpulse.core.states.ModelStatus`).
STATUSES: tuple[ModelStatus, ...] = tuple(ModelStatus)
#: Id of the base model (no adapter); never a row. The one home is
#: :data:`ranking.embed.BASE_MODEL_ID`; this is the name retraining code uses.
BASE_ID = BASE_MODEL_ID

Reindex = Callable[[Settings], Any]
#: Seconds after which an adapter folder no version names is removed by
#: :func:`prune_adapters`: longer than any training (the retrain DAG's task times out
#: after 10 h), so a folder being written is never taken.
ADAPTER_MAX_AGE_S = 24 * 3600.0


@dataclass(frozen=True)
class ModelVersion:
    """One row of ``model_versions``."""

    id: str
    base_model: str
    adapter_path: str | None
    adapter_sha256: str | None
    parent_id: str | None
    window_start: dt.datetime | None
    window_end: dt.datetime | None
    pair_counts: dict[str, Any]
    options: dict[str, Any]
    metrics: dict[str, Any]
    status: ModelStatus
    promoted_by: str | None
    reason: str | None
    created_at: dt.datetime
    promoted_at: dt.datetime | None
    #: what the training did (:class:`retrain.lora.TrainResult` as a dict); None if unknown
    training: dict[str, Any] | None = None
    #: ``{"at", "event", "by", "reason"}`` per change of status, oldest first
    events: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @classmethod
    def from_row(cls, row: Any) -> ModelVersion:
        m = row._mapping
        values = {f.name: m[f.name] for f in dataclasses.fields(cls)}
        return cls(**{**values, "status": ModelStatus(values["status"]),
                      "events": list(values["events"] or [])})

    def to_dict(self) -> dict[str, Any]:
        d = {k: iso(v) for k, v in dataclasses.asdict(self).items()}
        d["status"] = str(self.status)  # plain text for JSON and the API
        return d


#: :func:`promote`'s ``expected_active`` default: whichever version is active.
ANY_ACTIVE: object = object()


class ActiveChangedError(ConsistencyError):
    """:func:`promote` found another version active than the one it was to replace
    (a person promoted or rolled back meanwhile); nothing was switched."""

    def __init__(self, expected: str | None, active: str | None) -> None:
        super().__init__(f"the active model is {active or BASE_ID}, not "
                         f"{expected or BASE_ID}: nothing was switched")
        self.expected = expected
        self.active = active


def new_version_id(digest: str, when: dt.datetime | None = None) -> str:
    """``m-YYYYMMDDHHMMSS-<first 6 hex of digest>``."""
    when = when or utcnow()
    return f"m-{when.strftime('%Y%m%d%H%M%S')}-{digest[:6]}"


def free_version_id(
    settings: Settings, digest: str, when: dt.datetime | None = None, *,
    engine: Engine | None = None,
) -> str:
    """:func:`new_version_id`, with ``-2``, ``-3``… added while a version or an adapter
    folder has it already (the same weights trained twice within one second: a rerun on
    the same data)."""
    base = new_version_id(digest, when)
    taken = {m.id for m in list_models(settings, engine=engine)}
    adapters = adapters_dir(settings)
    version_id, n = base, 1
    while version_id in taken or (adapters / version_id).exists():
        n += 1
        version_id = f"{base}-{n}"
    return version_id


def register(
    settings: Settings,
    *,
    id: str,
    adapter_path: str,
    adapter_sha256: str,
    parent_id: str | None,
    window_start: dt.datetime | None,
    window_end: dt.datetime | None,
    pair_counts: Mapping[str, Any],
    options: Mapping[str, Any],
    metrics: Mapping[str, Any],
    status: ModelStatus | str = ModelStatus.CANDIDATE,
    reason: str | None = None,
    training: Mapping[str, Any] | None = None,
    engine: Engine | None = None,
) -> ModelVersion:
    """Insert a new version (a candidate by default) and return it.

    ``training`` is what the training did (steps, seconds, losses), shown by
    :func:`retrain.report.model_history`.
    """
    status = _inactive_status(
        status, f"`status` of a new version must be candidate or rejected, got {status!r}"
    )
    engine = engine or connect(settings)
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(
            insert(model_versions).values(
                id=id,
                base_model=base_model_name(settings),
                adapter_path=adapter_path,
                adapter_sha256=adapter_sha256,
                parent_id=parent_id,
                window_start=window_start,
                window_end=window_end,
                # a diverged training's NaN loss, a metric of an empty set: null (JSON)
                pair_counts=finite(pair_counts),
                options=finite(options),
                metrics=finite(metrics),
                status=status,
                reason=reason,
                created_at=now,
                training=finite(training) if training is not None else None,
                # rejected at once (the gate's outcome): the same events as rejected after
                events=[_event(ModelEvent.REGISTERED, now, None, None),
                        _event(ModelEvent.REJECTED, now, None, reason)]
                if status is ModelStatus.REJECTED
                else [_event(ModelEvent.REGISTERED, now, None, reason)],
            )
        )
    return get_model(settings, id, engine=engine)


def finite(value: Any) -> Any:
    """``value`` with every float that is NaN or infinite, at any depth, as ``None`` (JSON
    has no NaN: PostgreSQL's ``json`` refuses it, and so do strict readers of a report)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def list_models(settings: Settings, *, engine: Engine | None = None) -> list[ModelVersion]:
    """Every version, oldest first."""
    engine = engine or connect(settings)
    with engine.connect() as conn:
        rows = conn.execute(
            select(model_versions).order_by(model_versions.c.created_at, model_versions.c.id)
        ).all()
    return [ModelVersion.from_row(r) for r in rows]


def get_model(settings: Settings, id: str, *, engine: Engine | None = None) -> ModelVersion:
    """One version by id.

    Raises:
        NotFoundError: No such version.
    """
    engine = engine or connect(settings)
    with engine.connect() as conn:
        row = conn.execute(select(model_versions).where(model_versions.c.id == id)).first()
    if row is None:
        raise NotFoundError(f"model version {id!r} does not exist")
    return ModelVersion.from_row(row)


def active_version(settings: Settings, *, engine: Engine | None = None) -> ModelVersion | None:
    """The active version, or ``None`` when the base model is in use."""
    from ranking.models import active_model_row

    row = active_model_row(engine or connect(settings))
    return ModelVersion.from_row(row) if row is not None else None


def set_status(
    settings: Settings, id: str, status: ModelStatus | str, *, reason: str | None = None,
    engine: Engine | None = None,
) -> ModelVersion:
    """Set a non-active status (use :func:`promote` to activate)."""
    status = _inactive_status(
        status, f"`status` must be candidate, rejected or retired, got {status!r}"
    )
    engine = engine or connect(settings)
    get_model(settings, id, engine=engine)
    values: dict[str, Any] = {"status": status}
    if reason is not None:
        values["reason"] = reason
    event = {ModelStatus.REJECTED: ModelEvent.REJECTED, ModelStatus.RETIRED: ModelEvent.RETIRED,
             ModelStatus.CANDIDATE: ModelEvent.REOPENED}[status]
    with engine.begin() as conn:
        conn.execute(update(model_versions).where(model_versions.c.id == id).values(**values))
        _append_event(conn, id, event, by=None, reason=reason)
    return get_model(settings, id, engine=engine)


def record_event(
    settings: Settings, id: str, event: ModelEvent, *, by: str | None = None,
    reason: str | None = None, engine: Engine | None = None,
) -> None:
    """Append ``event`` to the history of version ``id`` without changing its status."""
    with (engine or connect(settings)).begin() as conn:
        _append_event(conn, id, event, by=by, reason=reason)


def _event(
    event: ModelEvent, at: dt.datetime, by: str | None, reason: str | None
) -> dict[str, Any]:
    return {"at": iso(at), "event": str(event), "by": by, "reason": reason}


def _append_event(
    conn: Any, id: str, event: ModelEvent, *, by: str | None, reason: str | None,
    at: dt.datetime | None = None,
) -> None:
    """Append one event to the ``events`` of version ``id`` (inside ``conn``'s transaction)."""
    old = conn.execute(
        select(model_versions.c.events).where(model_versions.c.id == id)
    ).scalar_one_or_none()
    events = [*(old or []), _event(event, at or utcnow(), by, reason)]
    conn.execute(update(model_versions).where(model_versions.c.id == id).values(events=events))


def _inactive_status(status: ModelStatus | str, message: str) -> ModelStatus:
    """``status`` as a :class:`ModelStatus` other than active.

    Raises:
        ConfigError: ``status`` is no model status, or it is ``active``.
    """
    try:
        value = ModelStatus(status)
    except ValueError:
        raise ConfigError(message) from None
    if value is ModelStatus.ACTIVE:
        raise ConfigError(message)
    return value


def _lock_models(conn: Connection) -> None:
    """PostgreSQL: take ``model_versions`` in SHARE ROW EXCLUSIVE mode for the rest of the
    transaction. It conflicts with itself, so two switches (a promotion by the retrain's
    gate and a ``models promote``, say) run one after the other and the second retires
    what the first activated: never two active versions (under READ COMMITTED each would
    miss the other's uncommitted row). It also waits for a publication's SHARE lock
    (:func:`ranking.publish.check_model_active`). SQLite writes one at a time already."""
    if conn.dialect.name == "postgresql":
        conn.execute(text(f"LOCK TABLE {model_versions.name} IN SHARE ROW EXCLUSIVE MODE"))


def _switch(
    conn: Connection,
    *,
    activate: str | None,
    previous: ModelVersion | None,
    previous_status: ModelStatus,
    by: str,
    reason: str | None,
    event: ModelEvent = ModelEvent.PROMOTED,
    why: str | None = None,
) -> None:
    """Activate ``activate`` (``reason`` kept on the row, ``why`` on its event), inside
    the caller's transaction."""
    _lock_models(conn)
    now = utcnow()
    replaced = f"replaced by {activate or BASE_ID}"
    if previous is not None and previous.id != activate:
        conn.execute(
            update(model_versions)
            .where(model_versions.c.id == previous.id)
            .values(status=previous_status)
        )
        _append_event(conn, previous.id, ModelEvent(str(previous_status)), by=by,
                      reason=replaced, at=now)
    # any other stray active row (never expected) is retired too
    mv = model_versions.c
    stray = select(mv.id).where(mv.status == ModelStatus.ACTIVE)
    if activate is not None:
        stray = stray.where(mv.id != activate)
    for stray_id in conn.execute(stray).scalars().all():
        conn.execute(
            update(model_versions).where(mv.id == stray_id)
            .values(status=ModelStatus.RETIRED)
        )
        _append_event(conn, stray_id, ModelEvent.RETIRED, by=by, reason=replaced, at=now)
    if activate is not None:
        conn.execute(
            update(model_versions)
            .where(model_versions.c.id == activate)
            .values(status=ModelStatus.ACTIVE, promoted_by=by, promoted_at=now, reason=reason)
        )
        _append_event(conn, activate, event, by=by, reason=why, at=now)


def _rows(conn: Connection, ids: Iterable[str]) -> list[ModelVersion]:
    """The rows of these versions and of any active one, read in ``conn``'s transaction
    (under :func:`_lock_models`: what a failed re-index puts back, :func:`_restore`)."""
    mv = model_versions.c
    stmt = select(model_versions).where(mv.id.in_(list(ids)) | (mv.status == ModelStatus.ACTIVE))
    return [ModelVersion.from_row(r) for r in conn.execute(stmt.order_by(mv.id))]


def _restore(engine: Engine, rows: list[ModelVersion], switched_in: str | None) -> None:
    """Undo a switch whose re-index failed: ``rows`` (read as the switch began) go back
    as they were, in one transaction under :func:`_lock_models`.

    Unless another switch has happened since (a deferred promotion of the retrain DAG
    takes no index lease, so it can land during the hours of an inline re-index): when
    ``switched_in`` (the version this switch made active; ``None``: the base model) is no
    longer what is active, the newer switch stands, and only ``switched_in``'s own row
    goes back to what it was before this switch (its status, and who promoted it when:
    never active again beside the newer one), with an event saying why. Putting every row
    back then would re-activate the version this switch replaced beside the newer one.
    """
    mv = model_versions.c
    with engine.begin() as conn:
        _lock_models(conn)
        active = conn.execute(select(mv.id).where(mv.status == ModelStatus.ACTIVE)).scalars()
        if sorted(active) == ([switched_in] if switched_in is not None else []):
            for row in rows:
                conn.execute(
                    update(model_versions)
                    .where(mv.id == row.id)
                    .values(
                        status=row.status, promoted_by=row.promoted_by,
                        promoted_at=row.promoted_at, reason=row.reason, events=row.events,
                    )
                )
            return
        for row in rows:
            if row.id != switched_in or row.status is ModelStatus.ACTIVE:
                continue
            conn.execute(
                update(model_versions)
                .where(mv.id == row.id)
                .values(status=row.status, promoted_by=row.promoted_by,
                        promoted_at=row.promoted_at, reason=row.reason)  # fmt: skip
            )
            event = (ModelEvent.REOPENED if row.status is ModelStatus.CANDIDATE
                     else ModelEvent(str(row.status)))  # fmt: skip
            _append_event(conn, row.id, event, by=None,
                          reason="its re-index failed after another switch had replaced it")
        logger.warning("another model switch happened during the re-index: it stands; only "
                       "%s is put back as it was", switched_in or BASE_ID)


def _reindex(
    settings: Settings,
    engine: Engine,
    before: list[ModelVersion],
    switched_in: str | None,
    reindex: Reindex,
) -> Any:
    try:
        return reindex(settings)
    except BaseException as exc:
        if isinstance(exc, LitpulseError):  # it names its reason (the disk full, say)
            logger.warning("re-index failed (%s): restoring the previous model statuses", exc)
        else:
            logger.exception("re-index failed: restoring the previous model statuses")
        _restore(engine, before, switched_in)
        raise


def promote(
    settings: Settings,
    id: str,
    *,
    by: str,
    reason: str | None = None,
    reindex: Reindex,
    expected_active: str | None | object = ANY_ACTIVE,
    engine: Engine | None = None,
) -> dict[str, Any]:
    """Make ``id`` the active version and publish an index built for it.

    The previous active version becomes ``retired``. The corpus is re-embedded with the
    promoted model and a new index version is published atomically; a failure there
    restores the previous statuses and re-raises.

    Args:
        settings: The settings.
        id: Version to promote (candidate, retired or rejected: a person may override
            the gate).
        by: Who or what promoted it (a user name, ``gate``, ``rollback``).
        reason: Free text kept on the row.
        reindex: Publishes an index for the newly active model (the application's
            :func:`litpulse.pipeline.planning.reindex_now`, or a deferring step); the
            registry itself never imports the index (floors: retrain sits beside ranking).
        expected_active: The version that must be active for the switch (``None``: the
            base model), checked under the switch's lock (the gate's promotion passes the
            version its candidate was compared with); default: whichever is.

    Returns:
        ``{"model": ModelVersion dict, "previous": id or "base", "index": report,
        "changed": False when it was active already}``.

    Raises:
        NotFoundError: No such version.
        ConfigError: Its adapter cannot serve (the folder is gone: pruned as an old
            rejected version, deleted by hand; its weights or its weights file changed or
            are gone): nothing is switched.
        ActiveChangedError: Another version than ``expected_active`` is active: nothing
            is switched.
    """
    if not by:
        raise ConfigError("`by` must name who promotes the version")
    engine = engine or connect(settings)
    relocate_adapters(settings, engine)  # a data directory moved: its adapters found there
    target = get_model(settings, id, engine=engine)
    problem = target.adapter_path and adapter_problem(target.adapter_path, target.adapter_sha256)
    if problem:
        pruned = any(e.get("event") == ModelEvent.PRUNED for e in target.events)
        raise ConfigError(f"model version {id} cannot be promoted: {problem}"
                          + (" (pruned as an old rejected version)" if pruned else ""))
    with engine.begin() as conn:
        _lock_models(conn)
        # read under the switch's lock: what a failure restores, and the version this one
        # replaces (read before the lock, a rollback committed meanwhile would be undone)
        before = _rows(conn, [id])
        now = next((r for r in before if r.id == id), target)
        if any(e.get("event") == ModelEvent.PRUNED for e in now.events):  # since the check
            raise ConfigError(f"model version {id} cannot be promoted: its adapter was "
                              "pruned as an old rejected version (`litpulse models prune`)")
        previous = next((r for r in before if r.status is ModelStatus.ACTIVE), None)
        if previous is not None and previous.id == target.id:
            logger.info("model %s is already active", id)
            return {"model": target.to_dict(), "previous": id, "index": None,
                    "changed": False}
        now_id = previous.id if previous is not None else None
        if expected_active is not ANY_ACTIVE and now_id != expected_active:
            raise ActiveChangedError(None if expected_active is None else str(expected_active),
                                     now_id)
        _switch(conn, activate=id, previous=previous, previous_status=ModelStatus.RETIRED,
                by=by, reason=reason or target.reason, why=reason)
    logger.info("promoted %s (previous: %s) by %s; re-indexing", id,
                previous.id if previous else BASE_ID, by)
    report = _reindex(settings, engine, before, id, reindex)
    return {
        "model": get_model(settings, id, engine=engine).to_dict(),
        "previous": previous.id if previous else BASE_ID,
        "index": _as_dict(report),
        "changed": True,
    }


def rollback(
    settings: Settings,
    *,
    by: str,
    reason: str | None = None,
    reindex: Reindex,
    engine: Engine | None = None,
) -> dict[str, Any]:
    """Re-activate the version that was active before the current one (or the base model).

    The current version becomes ``rejected`` (so a second rollback goes one step further
    back), the previous one ``active`` again, and an index for it is published. A previous
    version that cannot serve (its adapter folder deleted, its weights changed since it was
    registered: :func:`ranking.embed.adapter_problem`) is passed over to the one before it
    (or the base model) and marked ``rejected`` with the reason, in the same transaction.

    Returns:
        ``{"model": re-activated id or "base", "rolled_back": id, "skipped": [{"id", "problem"}],
        "index": report}``.

    Raises:
        NotFoundError: Nothing is active (the base model is already in use).
    """
    if not by:
        raise ConfigError("`by` must name who rolls back")
    engine = engine or connect(settings)
    relocate_adapters(settings, engine)  # moved adapters are not passed over as missing
    current = active_version(settings, engine=engine)
    if current is None:
        raise NotFoundError("no active model version to roll back: the base model is in use")
    skipped: list[tuple[ModelVersion, str]] = []
    target = _previous_active(engine, current)
    while target is not None:
        problem = target.adapter_path and adapter_problem(
            target.adapter_path, target.adapter_sha256
        )
        if not problem:
            break
        skipped.append((target, problem))
        target = _previous_active(engine, target, passed={v.id for v, _ in skipped})
    why = reason or f"rolled back by {by}"
    with engine.begin() as conn:  # one transaction: a crash leaves the current one active
        _lock_models(conn)
        # read under the switch's lock: what a failed re-index restores
        before = _rows(conn, [current.id, *(v.id for v, _ in skipped)]
                       + ([target.id] if target is not None else []))  # fmt: skip
        conn.execute(
            update(model_versions)
            .where(model_versions.c.id == current.id)
            .values(status=ModelStatus.REJECTED, reason=why)
        )
        for version, problem in skipped:  # never a rollback's target again
            note = f"passed over by the rollback of {current.id}: {problem}"
            conn.execute(update(model_versions).where(model_versions.c.id == version.id)
                         .values(status=ModelStatus.REJECTED, reason=note))  # fmt: skip
            _append_event(conn, version.id, ModelEvent.REJECTED, by=by, reason=note)
            logger.warning("rollback passes over %s: %s", version.id, problem)
        _append_event(conn, current.id, ModelEvent.ROLLED_BACK, by=by,
                      reason=f"{why}; active again: {target.id if target else BASE_ID}")
        if target is not None:
            _switch(conn, activate=target.id, previous=None,
                       previous_status=ModelStatus.RETIRED, by=by,
                       reason=f"re-activated by rollback of {current.id}",
                       event=ModelEvent.REACTIVATED,
                       why=f"re-activated by rollback of {current.id}")
    logger.info("rolled back %s to %s by %s; re-indexing", current.id,
                target.id if target else BASE_ID, by)
    report = _reindex(settings, engine, before, target.id if target else None, reindex)
    return {
        "model": target.id if target else BASE_ID,
        "rolled_back": current.id,
        "skipped": [{"id": v.id, "problem": problem} for v, problem in skipped],
        "index": _as_dict(report),
    }


def prune_adapters(
    settings: Settings, *, max_age_s: float = ADAPTER_MAX_AGE_S, engine: Engine | None = None
) -> list[str]:
    """Remove the adapter folders under ``home/adapters`` that no version names.

    A retrain killed while training leaves its ``.tmp-*`` folder; one killed after the
    folder was renamed to its version id, while evaluating, leaves a folder no row names
    (it registers only afterwards). Nothing reads them again. A folder is kept when a
    row's ``adapter_path`` or id names it (by folder name: the data directory may have
    moved), when it was written less than ``max_age_s`` seconds ago, and when this store
    did not write it (no mark of this store: :func:`litpulse.core.db.mark_folder`; the
    same data directory used with another store must keep that store's adapters).
    :func:`retrain.run.retrain` calls this under its lease.

    Returns:
        The removed folders.
    """
    folder = adapters_dir(settings)
    if not folder.is_dir():
        return []
    engine = engine or connect(settings)
    with engine.connect() as conn:
        rows = conn.execute(select(model_versions.c.id, model_versions.c.adapter_path)).all()
    named = {r.id for r in rows} | {Path(r.adapter_path).name for r in rows if r.adapter_path}
    mine = store_id(engine)
    removed = []
    for path in sorted(folder.iterdir()):
        if not path.is_dir() or path.is_symlink() or path.name in named:
            continue
        if time.time() - path.stat().st_mtime <= max_age_s:
            continue
        if folder_store(path) != mine:  # another store's, or written before the marks
            continue
        shutil.rmtree(path, ignore_errors=True)
        logger.warning("removed adapter folder %s: no model version names it", path)
        removed.append(str(path))
    return removed


def last_training_end(engine: Engine) -> dt.datetime | None:
    """Where the newest training from the model in use ended its data window: the active
    version's window, or a later round continued from it (from the base model while it
    serves) that never served — one the gate rejected, or a candidate waiting — when its
    window ends later. ``None``: nothing was trained from the model in use."""
    from ranking.models import active_model_row

    mv = model_versions.c
    active = active_model_row(engine)
    since = select(func.max(mv.window_end)).where(
        mv.promoted_at.is_(None),
        mv.status.in_([ModelStatus.REJECTED, ModelStatus.CANDIDATE]),
        mv.parent_id == active.id if active is not None else mv.parent_id.is_(None),
    )
    with engine.connect() as conn:
        later = conn.execute(since).scalar()
    ends = [t for t in (active.window_end if active is not None else None, later) if t]
    return max(ends) if ends else None


def articles_since_training(engine: Engine) -> tuple[int, dt.datetime | None]:
    """Live articles updated after :func:`last_training_end` (every live article when
    nothing was trained from the model in use), and that end."""
    last = last_training_end(engine)
    query = select(func.count()).select_from(articles).where(articles.c.is_deleted.is_(False))
    if last is not None:
        query = query.where(articles.c.updated_at > last)
    with engine.connect() as conn:
        return int(conn.execute(query).scalar() or 0), last


def prune_rejected(
    settings: Settings,
    *,
    older_than_days: float | None = None,
    dry_run: bool = False,
    engine: Engine | None = None,
) -> list[str]:
    """Remove the adapter and report folders of versions the gate rejected that never
    served, registered more than ``older_than_days`` days ago (default
    ``LITPULSE_KEEP_REJECTED_DAYS``). Their rows stay (the history, ``models report``),
    with a ``pruned`` event; a version that was ever active (rolled back, retired) keeps
    its adapter: a rollback or a promotion may need it.

    Returns:
        The ids whose folders were (``dry_run``: would be) removed.
    """
    days = settings.keep_rejected_days if older_than_days is None else older_than_days
    if not isinstance(days, int | float) or not math.isfinite(days) or not 0 <= days <= 36_500:
        raise ConfigError(f"older_than_days must be a number of days from 0 to 36500, "
                          f"got {days!r}")
    engine = engine or connect(settings)
    mv = model_versions.c
    cutoff = utcnow() - dt.timedelta(days=days)
    with engine.connect() as conn:
        rows = conn.execute(
            select(model_versions).where(
                mv.status == ModelStatus.REJECTED, mv.promoted_at.is_(None),
                mv.created_at < cutoff,
            ).order_by(mv.created_at)
        ).all()
    pruned = []
    for version in map(ModelVersion.from_row, rows):
        if any(e.get("event") == ModelEvent.PRUNED for e in version.events):
            continue
        if dry_run:
            pruned.append(version.id)
            continue
        with engine.begin() as conn:
            _lock_models(conn)  # a switch (promote, rollback) waits, as it waits for another
            # still rejected and never served, as of now: a person's `models promote` that
            # committed since the read above keeps its adapter (the write takes SQLite's
            # lock; on PostgreSQL the row waits for a switch in flight, then is read again)
            still = conn.execute(
                update(model_versions)
                .where(mv.id == version.id, mv.status == ModelStatus.REJECTED,
                       mv.promoted_at.is_(None))
                .values(status=mv.status)
            ).rowcount  # fmt: skip
            if not still:
                logger.info("kept model version %s: promoted since the prune read it",
                            version.id)
                continue
            for folder in (Path(version.adapter_path) if version.adapter_path else None,
                           settings.home / "reports" / version.id):  # fmt: skip
                if folder is not None and folder.is_dir() and not folder.is_symlink():
                    shutil.rmtree(folder, ignore_errors=True)
            _append_event(conn, version.id, ModelEvent.PRUNED, by=None,
                          reason=f"rejected and older than {days:g} days: folders removed")
        pruned.append(version.id)
        logger.info("pruned rejected model version %s (adapter and report removed)", version.id)
    return pruned


def _previous_active(
    engine: Engine, current: ModelVersion, passed: Iterable[str] = ()
) -> ModelVersion | None:
    """The retired version promoted most recently before ``current`` (not one ``passed``)."""
    mv = model_versions.c
    stmt = select(model_versions).where(
        mv.status == ModelStatus.RETIRED, mv.promoted_at.is_not(None),
        mv.id.not_in([current.id, *passed]),
    )
    if current.promoted_at is not None:
        stmt = stmt.where(mv.promoted_at <= current.promoted_at)
    with engine.connect() as conn:
        row = conn.execute(stmt.order_by(desc(mv.promoted_at)).limit(1)).first()
    return ModelVersion.from_row(row) if row is not None else None


def _as_dict(report: Any) -> Any:
    if report is None:
        return None
    to_dict = getattr(report, "to_dict", None)
    return to_dict() if callable(to_dict) else report
