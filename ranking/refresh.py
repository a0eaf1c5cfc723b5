"""Bringing the published index up to date: incremental update or full rebuild.

:func:`refresh_index` embeds what is pending (unless the caller already did), then
updates the newest index of the active model in place of a rebuild: new and re-embedded
PMIDs are added (a changed PMID is removed first), deleted PMIDs are removed. The lexical
index of the same version is updated alike (:func:`ranking.lexical.plan_lexical`: new
articles and articles whose indexed text, MeSH headings or keywords changed are
re-indexed, deleted ones removed), starting from the same base version — or from the
published one when the vectors are rebuilt for a new model, never from a base whose files
cannot be read — so its cost is proportional to the change too. It rebuilds
when asked, when there is no index for the model version, when the corpus crosses the
exact/IVF threshold, or when an IVF index has grown past :data:`DRIFT_FACTOR` times the
size its lists were trained on. Either way, a new version that would leave out live
articles the published version serves (their vectors of a newly active model not written
yet) is not published (:func:`_would_drop`). The new version is published by
:func:`ranking.publish.publish` under the ``index-publish`` lease.

Example:
    >>> report = refresh_index(settings)  # doctest: +SKIP
    >>> report.published, report.added  # doctest: +SKIP
    (True, 12)
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from typing import Any

import numpy as np
from sqlalchemy import Engine, delete, update

from litpulse.core import db
from litpulse.core.errors import ConsistencyError
from litpulse.core.schema import embeddings, index_versions
from litpulse.core.settings import Settings
from ranking import index_files, index_store
from ranking.embed import (
    ModelSpec,
    active_model,
    base_missing,
    base_record,
    base_records,
    embed_pending,
    legacy_base_record,
    load_encoder,
    mark_rebuild,
    profile_changed,
    rebuild_changed,
    rebuild_record,
    relocate_adapters,
)
from ranking.faiss_ops import (
    build_index,
    choose_kind,
    gpu_available,
    index_codec,
    same_vectors,
    update_index,
)
from ranking.lexical import LexicalPlan, has_lexical, plan_lexical
from ranking.models import published_index_row
from ranking.publish import (
    IndexReport,
    PublishContext,
    acquire_publish_lease,
    check_model_active,
    publish,
)

__all__ = ["DRIFT_FACTOR", "refresh_index"]

logger = logging.getLogger(__name__)

#: An IVF index is retrained once it holds more than this times its training size.
DRIFT_FACTOR = 2.0


def refresh_index(settings: Settings, *, rebuild: bool = False, progress: bool = False,
                  embed: bool = True, lease: db.Lease | None = None) -> IndexReport:
    """Bring the published index up to date with the store and the active model.

    Args:
        settings: The settings.
        rebuild: Build from scratch (retrain the IVF lists) even when an update would do.
        progress: Show progress bars (embedding) on stderr.
        embed: Embed pending articles first, under the publish lease (the one embedding
            step of a refresh). ``False`` for callers that ran
            :func:`ranking.embed.embed_pending` as their own step just before (the
            index-refresh DAG, sharded reindexing).
        lease: The ``index-publish`` lease when the caller holds it already (a promotion
            takes it before it switches the model); else it is taken here and released.

    Returns:
        What was done; ``published`` is ``False`` when nothing had changed.

    Raises:
        ConsistencyError: The base model changed since the published index of the active
            model version, or the kept version an update would start from, was built
            (``LITPULSE_MODEL``): only ``rebuild`` (embedding) goes on, embedding every
            article again. Or another model version became active while this refresh
            embedded or built (:func:`ranking.publish.check_model_active`): nothing
            was published.
        IndexBusyError: Another process is publishing (the lease is held; only when
            ``lease`` is not given).
        LeaseLostError: Another process took the lease over meanwhile; nothing was
            published.
    """
    t0 = time.perf_counter()
    engine = db.connect(settings)
    with nullcontext(lease) if lease is not None else acquire_publish_lease(engine) as lease:
        # a data directory moved: its versions and adapters where this one keeps them
        index_files.relocate_versions(settings, engine)
        relocate_adapters(settings, engine)
        spec = active_model(settings, engine)
        lease.check()
        published = published_index_row(engine)
        resuming = _base_current(engine, spec, rebuild=rebuild and embed)
        embedded = embed_pending(settings, spec, progress, engine=engine) if embed else 0
        with engine.connect() as conn:  # switched out while embedding: build nothing
            check_model_active(conn, spec)
        ctx = PublishContext(
            settings=settings, engine=engine, lease=lease, spec=spec, published=published,
            watermark=index_store.watermark(engine, spec.id), embedded=embedded, t0=t0,
        )
        live = index_store.live_ids(engine)
        base = None if rebuild or resuming else index_store.base_row(engine, spec.id)
        loaded: tuple[Any, np.ndarray, dict[str, Any]] | None = None
        if base is not None:
            try:
                loaded = index_files.read_files(base.path)
            except (ConsistencyError, OSError, RuntimeError, ValueError) as exc:
                logger.warning("cannot read index %s (%s): rebuilding", base.id, exc)
        meta = loaded[2] if loaded is not None else None
        # a base whose files cannot be read is rebuilt, its lexical half too: never read
        damaged = base.id if base is not None and loaded is None else None
        lex_base = next((r.path for r in (base, ctx.published)
                         if r is not None and r.id != damaged and has_lexical(r.path)), None)
        lexical = plan_lexical(engine, lex_base, live, rebuild=rebuild)
        lease.check()
        reason = ("asked" if rebuild else "an embedding rebuild cut short, resumed" if resuming
                  else _rebuild_reason(ctx, base, meta, len(live)))
        if reason is None and loaded is not None:
            return _incremental(ctx, base, loaded, live, lexical)
        return _full(ctx, live, reason, lexical)


def _base_current(engine: Engine, spec: ModelSpec, *, rebuild: bool) -> bool:
    """Make sure the stored vectors of ``spec`` are of its base model as configured now.

    When an index version of this model version that the refresh builds on or that says
    what its stored vectors are (the published one, the one built last:
    :func:`ranking.embed.base_records`; the kept one an update starts from:
    :func:`ranking.index_store.base_row`, e.g. after a model rollback) was built with
    another base model (``LITPULSE_MODEL`` changed; :func:`ranking.embed.base_model_changed`),
    its vectors and the stored embeddings would be ranked against queries of the new one:
    a rebuild (that embeds) drops those embeddings so every article is embedded again;
    anything else refuses. The drop is recorded (:func:`ranking.embed.mark_rebuild`) until
    an index of the new base model is published: a rebuild cut short is resumed by the
    next refresh, ``--rebuild`` or not, keeping what it embedded (and refused under another
    base model: :func:`ranking.embed.rebuild_changed`). A model version's first embedding
    is recorded the same way (:func:`ranking.embed.claim_first_embedding`): under another
    base model it is refused, or dropped and embedded again by a rebuild. Matching records
    made before the weights' bytes were hashed get the full fingerprint
    (:func:`_record_fingerprint`).

    Returns:
        Whether the index is built anew from the vectors of a rebuild (begun now or cut
        short before), never updated from a version of the old base model.

    Raises:
        ConsistencyError: The base model changed and this is not an embedding rebuild.
    """
    record = rebuild_record(engine, spec.id)
    if record is not None:
        changed = rebuild_changed(record, spec)
        if changed is None:
            if record.get("first"):  # a first embedding of this model: nothing to rebuild
                return False
            logger.warning("resuming the embedding rebuild of model %s with %s cut short: "
                           "the vectors it embedded are kept", spec.id, spec.base_model)
            return True
    else:
        rows = base_records(engine, spec)
        kept = index_store.base_row(engine, spec.id)
        if kept is not None and all(r.id != kept.id for r in rows):
            rows.append(kept)
        changed = next((f"index version {r.id} of model {spec.id}: {why}" for r in rows
                        if (why := profile_changed(r.details, spec)) is not None), None)
        if changed is None:
            for row in rows:
                _record_fingerprint(engine, row, spec)
            return False
    if not rebuild:
        raise ConsistencyError(changed)
    missing = base_missing(spec)
    if missing is not None:  # its vectors are kept: nothing could embed them again
        raise ConsistencyError(f"{missing} (nothing was dropped)")
    with engine.begin() as conn:
        n = conn.execute(delete(embeddings).where(embeddings.c.model_version == spec.id)).rowcount
        mark_rebuild(conn, spec)
    logger.warning("%s: dropped %d stored embeddings of %s to embed again", changed, n, spec.id)
    return True


def _record_fingerprint(engine: Engine, row: Any, spec: ModelSpec) -> None:
    """Record the full fingerprint of ``spec``'s base model on an index version whose
    record predates it (:func:`ranking.embed.legacy_base_record`: it hashed the weights'
    sizes only) and matched. An upgraded deployment embeds nothing again; its first
    refresh makes the record one that notices a model of the same shape. The row is
    the record (``meta.json`` on disk keeps the old one: nothing reads it for this)."""
    if not legacy_base_record(row.details):
        return
    old = (row.details or {}).get("base_model") or {}
    details = {**(row.details or {}), "base_model": {**old, **base_record(spec.base_model)}}
    with engine.begin() as conn:
        conn.execute(update(index_versions).where(index_versions.c.id == row.id)
                     .values(details=details))
    logger.info("index %s: recorded the full fingerprint of its base model %s (its sizes "
                "matched the record)", row.id, spec.base_model)


def _rebuild_reason(ctx: PublishContext, base: Any, meta: dict[str, Any] | None,
                    n_live: int) -> str | None:
    """Why the index must be built from scratch, or ``None`` when an update will do."""
    if base is None:
        if ctx.published is None:
            return "no index for this model version"
        if ctx.published.model_version == ctx.spec.id:  # no kept version of it has files
            return (f"the files of the published index {ctx.published.id} are missing "
                    f"({ctx.published.path})")
        return f"model changed ({ctx.published.model_version} -> {ctx.spec.id})"
    if meta is None:
        return "index files unreadable"
    if choose_kind(n_live, ctx.settings) != base.kind:
        return (f"size {n_live} crosses the exact/IVF threshold "
                f"({ctx.settings.exact_index_max})")
    codec = str(meta.get("codec") or "flat")
    if base.kind == "ivf" and codec != ctx.settings.ivf_codec:
        return f"IVF codec {codec} -> {ctx.settings.ivf_codec} (LITPULSE_IVF_CODEC)"
    trained = int(meta.get("trained_size") or 0)
    if base.kind == "ivf" and trained and n_live > DRIFT_FACTOR * trained:
        return f"IVF trained on {trained} vectors, now {n_live} (> {DRIFT_FACTOR}x)"
    return None


def _full(ctx: PublishContext, live: np.ndarray, reason: str | None,
          lexical: LexicalPlan) -> IndexReport:
    """Build a new index of every live vector of the model and publish it — unless it would
    drop live articles the published index serves (their vectors of this model are not
    written yet: a refresh that does not embed, racing the shards of a re-index after a
    promotion); the published version stays then, and the report says why."""
    settings = ctx.settings
    vectors, ids = index_store.fetch_vectors(ctx.engine, ctx.spec.id)
    kept = _would_drop(ctx, live, ids)
    if kept is not None:
        return kept
    kind = choose_kind(len(ids), settings)
    dim = vectors.shape[1] if len(ids) else _dimension(ctx.spec, settings)
    if not len(ids):
        vectors = np.zeros((0, dim), dtype=np.float32)
    on_gpu = gpu_available(settings) and kind == "ivf"  # a flat index is built on the CPU
    logger.info("building %s index of %d vectors for model %s (%s) on the %s", kind, len(ids),
                ctx.spec.id, reason, "GPU" if on_gpu else "CPU")
    index = build_index(vectors, ids, kind=kind, d=dim, nprobe=settings.ivf_nprobe,
                        use_gpu=on_gpu, seed=settings.seed,
                        codec=settings.ivf_codec if kind == "ivf" else "flat")
    meta_extra = {"trained_size": len(ids) if kind == "ivf" else 0,
                  "nlist": int(getattr(index, "nlist", 0)), "codec": index_codec(index)}
    return publish(ctx, index, np.sort(ids), meta_extra, added=len(ids), removed=0,
                   rebuilt=True, reason=reason, lexical=lexical)


def _would_drop(ctx: PublishContext, live: np.ndarray, ids: np.ndarray) -> IndexReport | None:
    """The unchanged published version's report when a new version holding ``ids`` would
    leave out live articles it serves; ``None`` when nothing would be lost.

    The one rule of both ways to a new version (:func:`_full`, :func:`_incremental`): a
    refresh that does not embed, racing the shards of a re-index after a promotion, meets
    the active model with only some of its vectors written, whether it builds from them
    all or updates a kept version of that model. A published version whose files are gone,
    or whose id list cannot be read (searches load it: such a version serves nothing),
    loses nothing: it never blocks its own repair."""
    pub = ctx.published
    if pub is None or not index_files.has_files(pub.path):
        return None
    try:
        held = index_files.read_vector_ids(pub.path)
    except (OSError, EOFError, ValueError) as exc:
        logger.warning("cannot read the id list of the published index %s (%s): it serves "
                       "nothing, replacing it", pub.id, exc)
        return None
    served = np.intersect1d(held, live, assume_unique=True)
    missing = np.setdiff1d(served, ids, assume_unique=True)
    if not len(missing):
        return None
    why = (f"kept {pub.id}: {len(missing)} live articles it serves have no vector of model "
           f"{ctx.spec.id} yet (embed them first: `litpulse index refresh`, or the "
           "litpulse_reindex DAG's shards)")
    logger.warning("not publishing a partial index: %s", why)
    return IndexReport(
        id=pub.id, model_version=pub.model_version, kind=pub.kind, size=int(pub.size),
        added=0, removed=0, rebuilt=False, path=pub.path,
        seconds=time.perf_counter() - ctx.t0, embedded=ctx.embedded, published=False,
        reason=why,
    )


def _incremental(ctx: PublishContext, base: Any,
                 loaded: tuple[Any, np.ndarray, dict[str, Any]],
                 live: np.ndarray, lexical: LexicalPlan) -> IndexReport:
    """Update the base version in place (add new and changed, remove gone) and publish.

    Returns the base version unchanged (``published=False``) when nothing differs, in the
    vectors or in the lexical index; the published version unchanged when the update would
    leave out live articles it serves (:func:`_would_drop`: the base is a kept version of
    a model made active again, whose re-index has not written all its vectors yet).
    """
    index, base_ids, meta = loaded
    gone = np.setdiff1d(base_ids, live, assume_unique=True)
    new = np.setdiff1d(live, base_ids, assume_unique=True)
    changed = np.intersect1d(
        index_store.changed_ids(ctx.engine, ctx.spec.id, meta.get("embedded_upto")),
        np.intersect1d(base_ids, live, assume_unique=True))
    vectors, add_ids = index_store.fetch_vectors(ctx.engine, ctx.spec.id,
                                                 np.union1d(new, changed))
    if len(changed) and len(add_ids):  # candidates from the slack window: keep real changes
        cand = np.isin(add_ids, changed)
        same = np.zeros(len(add_ids), dtype=bool)
        same[cand] = same_vectors(index, add_ids[cand], vectors[cand])
        vectors, add_ids = vectors[~same], add_ids[~same]
    changed = np.intersect1d(changed, add_ids)
    removed_ids = np.union1d(gone, changed)
    same_base = ctx.published is not None and ctx.published.id == base.id
    if not len(add_ids) and not len(removed_ids) and same_base and lexical.unchanged:
        return IndexReport(
            id=base.id, model_version=ctx.spec.id, kind=base.kind, size=int(index.ntotal),
            added=0, removed=0, rebuilt=False, path=base.path,
            seconds=time.perf_counter() - ctx.t0, embedded=ctx.embedded, published=False,
            lexical_size=len(lexical.base_ids),
        )
    ids = np.union1d(np.setdiff1d(base_ids, removed_ids, assume_unique=True), add_ids)
    kept = _would_drop(ctx, live, ids)  # a kept version of a newly active model, say
    if kept is not None:
        return kept
    removed = update_index(index, add_vectors=vectors, add_ids=add_ids, remove_ids=removed_ids)
    meta_extra = {"trained_size": int(meta.get("trained_size") or 0),
                  "nlist": int(meta.get("nlist") or 0), "codec": index_codec(index)}
    logger.info("updated index %s: +%d new, %d changed, -%d deleted", base.id,
                len(add_ids) - len(changed), len(changed), len(gone))
    return publish(ctx, index, ids, meta_extra, added=len(add_ids), removed=removed,
                   rebuilt=False, reason=None, lexical=lexical, parent_id=base.id)


def _dimension(spec: ModelSpec, settings: Settings) -> int:
    """The vector size of a model (for an empty index)."""
    encoder = load_encoder(spec, settings)
    return int(encoder.get_embedding_dimension() or 0)
