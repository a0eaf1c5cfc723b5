"""Publishing index versions atomically, rolling back, and pruning old versions.

An index version is the vector index and the lexical index together. Publication is
atomic: both are written into one folder aside and renamed into place
(:func:`ranking.index_files.write_files`); then one transaction flips the
``index_versions`` rows (new → ``published``, previous → ``retired``). The row is the
switch: readers load the version the row names. The newest :data:`KEEP_VERSIONS` versions
stay on disk for :func:`rollback_index`.

A database lease (``index-publish``, :class:`litpulse.core.db.Lease`) keeps two processes
from publishing at once: it is checked before each write phase and verified in the
transaction that flips the rows, so a process that lost it
(:class:`~litpulse.core.errors.LeaseLostError`) publishes nothing; a killed publisher's
lease is taken over at once on its host, after :data:`LEASE_TTL_S` seconds from elsewhere.

Example:
    >>> rollback_index(settings)  # doctest: +SKIP
    {'from': 'ix-...', 'to': 'ix-...', 'model_version': 'base'}
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Connection, Engine, delete, desc, exists, insert, select, text, update

from litpulse.core import db
from litpulse.core.errors import (
    BusyError,
    ConsistencyError,
    LeaseLostError,
    NotFoundError,
)
from litpulse.core.schema import embeddings, index_versions, model_versions
from litpulse.core.settings import Settings
from litpulse.core.states import IndexStatus, ModelStatus
from litpulse.core.timeutil import iso
from ranking import index_files
from ranking.embed import (
    BASE_MODEL_ID,
    ModelSpec,
    active_model,
    clear_rebuild,
    profile_changed,
    spec_record,
)
from ranking.faiss_ops import index_kind
from ranking.index_store import newest_date
from ranking.lexical import LexicalPlan
from ranking.models import active_model_row, published_index_row

__all__ = [
    "KEEP_VERSIONS",
    "LEASE_NAME",
    "LEASE_TTL_S",
    "TMP_MAX_AGE_S",
    "IndexBusyError",
    "IndexReport",
    "PublishContext",
    "acquire_publish_lease",
    "check_model_active",
    "publish",
    "rollback_index",
]

logger = logging.getLogger(__name__)

#: Name of the database lease held while an index version is built and published.
LEASE_NAME = "index-publish"
#: Seconds the lease lives without its heartbeat (a publisher killed on another host
#: blocks the others this long; on this host it is taken over at once).
LEASE_TTL_S = db.LEASE_TTL_S
#: Seconds after which a ``.tmp-*`` folder left by a crashed publisher is removed.
TMP_MAX_AGE_S = 3600.0
#: Index versions kept on disk (the published one and the newest retired ones).
KEEP_VERSIONS = 3


class IndexBusyError(BusyError):
    """Another process holds the index-publish lease; retry later."""

    retryable = True


@dataclass(frozen=True)
class IndexReport:
    """What :func:`ranking.refresh.refresh_index` did.

    Attributes:
        id: The published index version (new, or the unchanged current one).
        model_version: The model version its vectors come from.
        kind: ``flat`` or ``ivf``.
        size: Vectors in the index.
        added: Vectors added (new and changed PMIDs).
        removed: Vectors removed (deleted and changed PMIDs).
        rebuilt: Whether the index was built from scratch.
        path: Folder of the index files.
        seconds: Wall time of the refresh, embedding included.
        embedded: Articles embedded first.
        reason: Why it was rebuilt, or ``None``.
        published: Whether a new version was published (``False``: nothing changed).
        lexical_size: Documents in the lexical index.
        lexical_added: Documents (re)indexed in it (new and changed articles).
        lexical_removed: Documents removed from it (deleted and changed articles).
        lexical_rebuilt: Whether the lexical index was built from scratch.
    """

    id: str
    model_version: str
    kind: str
    size: int
    added: int
    removed: int
    rebuilt: bool
    path: str
    seconds: float
    embedded: int = 0
    reason: str | None = None
    published: bool = True
    lexical_size: int = 0
    lexical_added: int = 0
    lexical_removed: int = 0
    lexical_rebuilt: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PublishContext:
    """What one refresh knows before it builds: shared by the build and the publish.

    Attributes:
        settings: The settings.
        engine: The store.
        lease: The held ``index-publish`` lease.
        spec: The active model version.
        published: The ``index_versions`` row published now, or ``None``.
        watermark: When the newest vector of ``spec`` was written (``None``: none yet).
        embedded: Articles embedded by this refresh.
        t0: ``time.perf_counter()`` at the start of the refresh.
    """

    settings: Settings
    engine: Engine
    lease: db.Lease
    spec: ModelSpec
    published: Any
    watermark: dt.datetime | None
    embedded: int
    t0: float


def acquire_publish_lease(engine: Engine) -> db.Lease:
    """The ``index-publish`` lease.

    Raises:
        IndexBusyError: Another process holds it.
    """
    return db.take_lease(engine, LEASE_NAME, lambda who: IndexBusyError(
        f"another process ({who}) is refreshing the index"
    ), ttl_s=LEASE_TTL_S)  # fmt: skip


def check_model_active(conn: Connection, spec: ModelSpec) -> None:
    """Make sure ``spec`` is still the active model version.

    A promotion or rollback switches the model in a transaction of its own and holds no
    index lease while it does (a deferred promotion, the Airflow retrain DAG's, holds
    none at all): a refresh that read the active model before the switch (a re-run
    ``litpulse models promote`` finishing a re-index, ``litpulse index refresh``) must
    not publish the index it built for the model switched out, as if it were current.
    :func:`publish` asks inside the transaction that flips the rows, the table locked
    against switches until it commits (PostgreSQL; on SQLite the lease's renewal holds
    the database's write lock already).

    Raises:
        ConsistencyError: Another model version is active now; the caller publishes
            nothing (the newly active model's own re-index publishes its index).
    """
    if conn.dialect.name == "postgresql":
        conn.execute(text(f"LOCK TABLE {model_versions.name} IN SHARE MODE"))
    row = active_model_row(conn)
    active = row.id if row is not None else BASE_MODEL_ID
    if active != spec.id:
        raise ConsistencyError(
            f"model {active} became active while an index was built for model {spec.id}: "
            f"nothing published (the re-index for {active} publishes its index: the "
            "litpulse_reindex DAG after a deferred promotion, else `litpulse index refresh`)"
        )


def _new_id() -> str:
    return f"ix-{db.utcnow():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


def publish(ctx: PublishContext, index: Any, ids: np.ndarray, meta_extra: dict[str, Any], *,
            added: int, removed: int, rebuilt: bool, reason: str | None,
            lexical: LexicalPlan, parent_id: str | None = None) -> IndexReport:
    """Write ``index`` and the lexical index of ``lexical`` as a new version and flip the
    rows to publish it.

    Raises:
        LeaseLostError: The lease was taken over; nothing was published and the written
            files are removed.
        ConsistencyError: Another model version than ``ctx.spec`` is active now
            (:func:`check_model_active`); the same.
        StorageError: The files could not be written (the disk full): nothing was
            published, the folder written aside is removed.
    """
    import faiss

    version_id = _new_id()
    kind = index_kind(index)
    now = db.utcnow()
    meta = {
        "id": version_id,
        "model_version": ctx.spec.id,
        "kind": kind,
        "size": int(index.ntotal),
        "d": int(index.d),
        "embedded_upto": iso(ctx.watermark),
        "newest_article_date": newest_date(ctx.engine),
        "parent_id": parent_id or (ctx.published.id if ctx.published is not None else None),
        "rebuilt": rebuilt,
        "reason": reason,
        "added": added,
        "removed": removed,
        "created_at": iso(now),
        "faiss_version": getattr(faiss, "__version__", ""),
        # which base model its vectors come from ("base" names whatever LITPULSE_MODEL is)
        # and where its texts were cut, in which precision (ranking.embed.profile_changed)
        "base_model": spec_record(ctx.spec, ctx.settings),
        **meta_extra,
    }
    ctx.lease.check()
    try:
        # marked for this store: another store using this data directory never prunes it
        path = index_files.write_files(ctx.settings, version_id, index, ids, meta, lexical,
                                       store=db.store_id(ctx.engine))  # fmt: skip
    except BaseException:
        shutil.rmtree(index_files.indexes_dir(ctx.settings) / f".tmp-{version_id}",
                      ignore_errors=True)  # never renamed: nothing was published
        raise
    written = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    lex = written["lexical"]
    meta["lexical"] = lex
    meta["files"] = written.get("files") or {}  # their SHA-256: a rollback checks them
    try:
        with ctx.engine.begin() as conn:
            ctx.lease.verify(conn)  # still ours, and no takeover until this commits
            check_model_active(conn, ctx.spec)  # and no model switch either
            clear_rebuild(conn, ctx.spec.id)  # its vectors are of the base this records
            conn.execute(
                update(index_versions).where(index_versions.c.status == IndexStatus.PUBLISHED)
                .values(status=IndexStatus.RETIRED)
            )
            conn.execute(insert(index_versions).values(
                id=version_id, model_version=ctx.spec.id, kind=kind, path=str(path),
                size=int(index.ntotal), status=IndexStatus.PUBLISHED,
                parent_id=meta["parent_id"], details=meta, created_at=now,
                published_at=db.utcnow(),
            ))
    except (LeaseLostError, ConsistencyError):
        shutil.rmtree(path, ignore_errors=True)  # no row names it
        raise
    if ctx.lease.renew():  # pruning is the holder's job; a lost lease leaves it to the next
        _prune(ctx.settings, ctx.engine)
    logger.info("published index %s (%s, %d vectors; lexical %d documents, +%d -%d)",
                version_id, kind, index.ntotal, lex["size"], lex["added"], lex["removed"])
    return IndexReport(
        id=version_id, model_version=ctx.spec.id, kind=kind, size=int(index.ntotal),
        added=added, removed=removed, rebuilt=rebuilt, path=str(path),
        seconds=time.perf_counter() - ctx.t0, embedded=ctx.embedded, reason=reason,
        lexical_size=int(lex["size"]), lexical_added=int(lex["added"]),
        lexical_removed=int(lex["removed"]), lexical_rebuilt=bool(lex["rebuilt"]),
    )


#: Vectors deleted per transaction when a retired model's are dropped.
DROP_STEP = 50_000


def drop_unused_vectors(engine: Engine) -> int:
    """Delete the stored vectors of model versions that are retired or rejected and that
    no kept index version holds: nothing serves them, nor can roll back to them without
    re-embedding (a rollback to such a model re-embeds the corpus anyway), and each is a
    corpus of vectors (~58 GB at PubMed's size). :data:`DROP_STEP` rows a transaction;
    a model promoted again meanwhile keeps the rest.

    Returns:
        The vectors deleted.
    """
    mv, ix, e = model_versions.c, index_versions.c, embeddings.c
    unused = (
        mv.status.in_((ModelStatus.RETIRED, ModelStatus.REJECTED))
        & ~exists().where(ix.model_version == mv.id)
    )
    with engine.connect() as conn:
        models = conn.execute(select(mv.id).where(unused)).scalars().all()
    dropped = 0
    for model in models:
        still = exists().where(mv.id == model, unused)
        while True:
            step = select(e.pmid).where(e.model_version == model).limit(DROP_STEP)
            with engine.begin() as conn:
                n = conn.execute(
                    delete(embeddings).where(
                        e.model_version == model, e.pmid.in_(step.scalar_subquery()), still
                    )
                ).rowcount
            dropped += n
            if n < DROP_STEP:
                break
        logger.info("dropped the vectors of model version %s: no kept index holds them", model)
    return dropped


def _prune(settings: Settings, engine: Engine) -> None:
    """Delete versions beyond the newest :data:`KEEP_VERSIONS` (rows and files), then the
    vectors no kept version or model can use (:func:`drop_unused_vectors`)."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(index_versions.c.id, index_versions.c.path, index_versions.c.status)
            .order_by(desc(index_versions.c.status == IndexStatus.PUBLISHED),
                      desc(index_versions.c.published_at), desc(index_versions.c.created_at))
        ).all()
    for row in rows[KEEP_VERSIONS:]:
        if row.status == IndexStatus.PUBLISHED:
            continue
        with engine.begin() as conn:
            conn.execute(delete(index_versions).where(index_versions.c.id == row.id))
        shutil.rmtree(row.path, ignore_errors=True)
        logger.info("pruned index version %s", row.id)
    mine = db.store_id(engine)
    for tmp in index_files.indexes_dir(settings).glob(".tmp-*"):  # a crashed publisher's
        if (time.time() - tmp.stat().st_mtime > TMP_MAX_AGE_S
                and db.folder_store(tmp) in (mine, None)):  # not another store's build
            shutil.rmtree(tmp, ignore_errors=True)
    # a whole version no row names: a publisher killed between renaming its folder into
    # place and committing the row, or a prune killed between the row and the files (the
    # age spares a publisher about to commit its row)
    with engine.connect() as conn:
        named = {Path(p).name for p in conn.execute(select(index_versions.c.path)).scalars()}
    for folder in index_files.indexes_dir(settings).iterdir():
        if (folder.is_dir() and not folder.name.startswith(".") and folder.name not in named
                and time.time() - folder.stat().st_mtime > TMP_MAX_AGE_S
                and db.folder_store(folder) == mine):  # not another store's
            shutil.rmtree(folder, ignore_errors=True)
            logger.warning("removed index folder %s: no index version names it", folder)
    drop_unused_vectors(engine)


def rollback_index(settings: Settings) -> dict[str, Any]:
    """Re-publish the previous index version of the active model; the current one is
    marked ``rolled_back``.

    Versions of other models are never re-published here: queries would be embedded with
    the index's model while the active one is another, and the next refresh would either
    wait for a re-index nobody started or rebuild for the active model, undoing the
    rollback. Going back to another model is ``litpulse models rollback``, which
    re-publishes its index. Versions built with another base model (``LITPULSE_MODEL``
    changed since: :func:`ranking.embed.profile_changed`, the rule a refresh refuses
    by) are passed over alike: queries are embedded with the base model configured now.

    The version is re-published only once its files are checked (their recorded SHA-256,
    and that they load: :func:`ranking.index_files.verify_files`), and, as
    :func:`publish` does, only if the model is still the active one in the transaction
    that flips the rows (:func:`check_model_active`: a promotion switches it under no
    index lease). Whatever fails, nothing is changed.

    Returns:
        ``{"from": <id>, "to": <id>, "model_version": ...}``.

    Raises:
        NotFoundError: No earlier version of the active model is kept on disk.
        ConsistencyError: The earlier versions of the active model kept were built with
            another base model; or the one to re-publish cannot be loaded (a file missing,
            damaged, or not the one written); or another model version became active
            meanwhile. Nothing was changed.
        IndexBusyError: Another process is publishing.
        LeaseLostError: Another process took the lease over meanwhile; nothing changed.
    """
    engine = db.connect(settings)
    with acquire_publish_lease(engine) as lease:
        current = published_index_row(engine)
        spec = active_model(settings, engine)
        model = spec.id
        index_files.relocate_versions(settings, engine)  # a data directory moved
        with engine.connect() as conn:
            candidates = conn.execute(
                select(index_versions).where(index_versions.c.status == IndexStatus.RETIRED)
                .order_by(desc(index_versions.c.published_at))
            ).all()
        kept = [r for r in candidates if index_files.has_files(r.path)]
        ours = [r for r in kept if r.model_version == model]
        if not ours:
            others = sorted({r.model_version for r in kept})
            raise NotFoundError(
                f"no earlier index version of the active model {model} to roll back to"
                + (f" (versions of model {', '.join(others)} are kept: to go back to one, "
                   "roll back the model with `litpulse models rollback`, which re-publishes "
                   "its index)" if others else "")
            )
        target = next((r for r in ours if profile_changed(r.details, spec) is None), None)
        if target is None:
            raise ConsistencyError(
                f"no earlier index version of model {model} built with its base model as "
                f"configured now ({spec.base_model}) to roll back to: index version "
                f"{ours[0].id}: {profile_changed(ours[0].details, spec)}; nothing changed"
            )
        try:
            index_files.verify_files(target.path, target.details)
        except ConsistencyError as exc:
            raise ConsistencyError(
                f"index version {target.id} cannot be re-published: {exc}; nothing changed "
                f"(the published version {current.id if current is not None else None} stays)"
            ) from exc
        with engine.begin() as conn:
            lease.verify(conn)  # still ours, and no takeover until this commits
            try:
                check_model_active(conn, spec)  # and no model switch either
            except ConsistencyError as exc:
                raise ConsistencyError(
                    f"index rollback to {target.id} not done, nothing changed: {exc}"
                ) from exc
            if current is not None:
                conn.execute(update(index_versions).where(index_versions.c.id == current.id)
                             .values(status=IndexStatus.ROLLED_BACK))
            conn.execute(update(index_versions).where(index_versions.c.id == target.id)
                         .values(status=IndexStatus.PUBLISHED, published_at=db.utcnow()))
    logger.warning("index rolled back from %s to %s", current.id if current else None,
                   target.id)
    return {"from": current.id if current is not None else None, "to": target.id,
            "model_version": target.model_version}
