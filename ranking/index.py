"""The FAISS index of article vectors: incremental refresh, rebuild, atomic publish.

An index version holds the vectors of one model version, with PMIDs as FAISS ids. Up
to ``settings.exact_index_max`` vectors it is exact (``IndexIDMap2(IndexFlatIP)``);
beyond, an ``IndexIVFFlat`` with about ``4 * sqrt(n)`` lists probed ``ivf_nprobe`` at a
time. Vectors are L2-normalised, so inner product is cosine.

:func:`refresh_index` embeds what is pending, then updates the newest index of the
active model in place of a rebuild: new and re-embedded PMIDs are added (a changed PMID
is removed first), deleted PMIDs are removed. It rebuilds when asked, when there is no
index for the model version, when the corpus crosses the exact/IVF threshold, or when
an IVF index has grown past twice the size its lists were trained on.

Publication is atomic: the files (``index.faiss``, ``ids.npy``, ``meta.json``) are
written into a temporary folder, fsynced and renamed to ``<home>/indexes/<id>/``;
then one transaction flips the ``index_versions`` rows (new → ``published``, previous →
``retired``). The row is the switch: readers (:func:`open_published`) load the version
the row names, and a :class:`PublishedIndex` already loaded never changes, so searches
running during a publish finish on the old version. The newest :data:`KEEP_VERSIONS`
versions stay on disk for :func:`rollback_index`. A database lease
(``index-publish``, :class:`litpulse.core.db.Lease`) keeps two processes from publishing at
once: it is checked before each write phase and verified in the transaction that flips
the rows, so a process that lost it (:class:`~litpulse.core.errors.LeaseLostError`) publishes
nothing; a killed publisher's lease is taken over at once on its host, after
:data:`LEASE_TTL_S` seconds from elsewhere.

On a host where FAISS sees a GPU (and ``use_gpu`` is not ``no``) IVF builds and all
searches run on it; the CPU index stays the master copy (GPU indexes cannot remove ids).

Example:
    >>> report = refresh_index(settings)  # doctest: +SKIP
    >>> idx = open_published(settings)  # doctest: +SKIP
    >>> scores, pmids = idx.search(encode_query(settings, idx.model_version, "sepsis"), 10)
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import shutil
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine, and_, delete, desc, func, insert, select, update

from litpulse.core import db
from litpulse.core.errors import ConsistencyError, LeaseLostError, LitpulseError, NotFoundError
from litpulse.core.schema import articles, embeddings, index_versions
from litpulse.core.settings import Settings
from ranking.embed import (
    ModelSpec,
    active_model,
    count_pending,
    embed_pending,
    load_encoder,
    vector_from_bytes,
)
from ranking.models import published_index_row

__all__ = [
    "IndexBusyError",
    "IndexReport",
    "PublishedIndex",
    "build_index",
    "check_consistency",
    "choose_kind",
    "index_status",
    "nlist_for",
    "open_published",
    "refresh_index",
    "rollback_index",
    "update_index",
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
#: An IVF index is retrained once it holds more than this times its training size.
DRIFT_FACTOR = 2.0
#: Re-embedded vectors this many seconds older than an index's watermark are re-added
#: too (idempotent), covering transactions that committed late.
WATERMARK_SLACK_S = 300.0
#: Training points per IVF list (FAISS wants at least 39).
POINTS_PER_LIST = 40
#: k-means iterations when training IVF lists (FAISS's default is 25; 10 loses little
#: recall and makes a rebuild 2.5x cheaper).
KMEANS_ITERATIONS = 10
_CHUNK = 5000


class IndexBusyError(LitpulseError):
    """Another process holds the index-publish lease; retry later."""

    retryable = True


@dataclass(frozen=True)
class IndexReport:
    """What :func:`refresh_index` did.

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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, eq=False)
class PublishedIndex:
    """One loaded, immutable index version; safe to search from many threads.

    Attributes:
        id: Index version id.
        model_version: Model version whose vectors it holds (embed queries with it).
        kind: ``flat`` or ``ivf``.
        size: Vectors in the index.
        path: Folder of its files.
        ids: The PMIDs it holds, sorted (int64).
        details: The version's ``meta.json``.
    """

    id: str
    model_version: str
    kind: str
    size: int
    path: str
    ids: np.ndarray = field(repr=False)
    details: dict[str, Any] = field(default_factory=dict, repr=False)
    index: Any = field(default=None, repr=False)
    _gpu: Any = field(default=None, repr=False)
    _gpu_ids: Any = field(default=None, repr=False)
    _gpu_res: Any = field(default=None, repr=False)

    @property
    def on_gpu(self) -> bool:
        return self._gpu is not None

    def search(self, query_vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest PMIDs of each query by inner product (cosine).

        Args:
            query_vectors: float32 ``(n, d)`` L2-normalised queries.
            k: Neighbours per query.

        Returns:
            ``(scores, pmids)``, both ``(n, k)``; empty slots have PMID ``-1``.

        Raises:
            TypeError: Queries of the wrong dtype or shape.
        """
        q = np.asarray(query_vectors)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.index.d:
            raise TypeError(f"query_vectors must be (n, {self.index.d}), got {q.shape}")
        if not np.issubdtype(q.dtype, np.floating):
            raise TypeError(f"query_vectors must be float32, got {q.dtype}")
        if k <= 0:
            raise TypeError(f"k must be positive, got {k}")
        q = np.ascontiguousarray(q, dtype=np.float32)
        if self.size == 0:
            return (np.full((len(q), k), -np.inf, dtype=np.float32),
                    np.full((len(q), k), -1, dtype=np.int64))
        if self._gpu is not None:
            scores, labels = self._gpu.search(q, k)
            if self._gpu_ids is not None:  # a flat GPU index answers positions
                labels = np.where(labels >= 0, self._gpu_ids[np.maximum(labels, 0)], -1)
        else:
            scores, labels = self.index.search(q, k)
        scores = np.where(labels >= 0, scores, -np.inf).astype(np.float32)
        return scores, labels.astype(np.int64)

    def reconstruct(self, pmid: int) -> np.ndarray:
        """The stored vector of one PMID (raises ``RuntimeError`` for an unknown PMID)."""
        return np.asarray(self.index.reconstruct(int(pmid)), dtype=np.float32)


# ----------------------------------------------------------------------- faiss helpers


def nlist_for(n: int) -> int:
    """IVF lists for ``n`` vectors: about ``4 * sqrt(n)``, with 39+ points per list."""
    return max(1, min(int(4 * math.sqrt(max(n, 1))), n // 39))


def choose_kind(n: int, settings: Settings) -> str:
    """``flat`` up to ``settings.exact_index_max`` vectors, ``ivf`` beyond."""
    return "flat" if n <= settings.exact_index_max else "ivf"


def gpu_available(settings: Settings) -> bool:
    """Whether FAISS should use a GPU (one is visible and ``use_gpu`` allows it)."""
    if settings.use_gpu == "no":
        return False
    import faiss

    n = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if n == 0 and settings.use_gpu == "yes":
        logger.warning("LITPULSE_USE_GPU=yes but FAISS sees no GPU: using the CPU")
    return n > 0


def _check_vectors(vectors: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    vectors = np.asarray(vectors)
    ids = np.asarray(ids)
    if vectors.ndim != 2:
        raise TypeError(f"vectors must be 2-d, got shape {vectors.shape}")
    if ids.shape != (len(vectors),):
        raise TypeError(f"ids must be ({len(vectors)},), got {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"ids must be integers, got {ids.dtype}")
    return (np.ascontiguousarray(vectors, dtype=np.float32),
            np.ascontiguousarray(ids, dtype=np.int64))


def _hashtable() -> int:
    """FAISS's ``DirectMap.Hashtable`` (absent from its type stubs)."""
    import faiss

    module: Any = faiss
    return int(module.DirectMap.Hashtable)


def build_index(
    vectors: np.ndarray,
    ids: np.ndarray,
    *,
    kind: str,
    d: int | None = None,
    nlist: int | None = None,
    nprobe: int = 16,
    use_gpu: bool = False,
    seed: int = 0,
) -> Any:
    """A new CPU FAISS index of ``vectors`` with FAISS ids ``ids``.

    Args:
        vectors: float32 ``(n, d)``, L2-normalised.
        ids: int64 ``(n,)`` PMIDs.
        kind: ``flat`` (exact) or ``ivf``.
        d: Dimension when ``vectors`` is empty.
        nlist: IVF lists (default :func:`nlist_for`).
        nprobe: IVF lists probed per query.
        use_gpu: Train and fill an IVF index on GPU 0, then copy it back.
        seed: Seed of the k-means training sample.
    """
    import faiss

    vectors, ids = _check_vectors(vectors, ids)
    dim = vectors.shape[1] if len(vectors) or d is None else d
    if kind == "flat":
        flat: Any = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        if len(vectors):
            flat.add_with_ids(vectors, ids)
        return flat
    if kind != "ivf":
        raise ValueError(f"kind must be flat or ivf, got {kind!r}")
    nlist = nlist or nlist_for(len(vectors))
    quantizer = faiss.IndexFlatIP(dim)
    index: Any = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = KMEANS_ITERATIONS
    index.cp.seed = seed
    rng = np.random.default_rng(seed)
    n_train = min(len(vectors), POINTS_PER_LIST * nlist)
    sample = vectors[np.sort(rng.choice(len(vectors), n_train, replace=False))]
    if use_gpu:
        try:
            res = faiss.StandardGpuResources()
            gpu = faiss.index_cpu_to_gpu(res, 0, index)
            gpu.train(sample)
            gpu.add_with_ids(vectors, ids)
            cpu: Any = faiss.index_gpu_to_cpu(gpu)
            cpu.set_direct_map_type(_hashtable())
            cpu.nprobe = nprobe
            return cpu
        except (RuntimeError, AttributeError) as exc:  # pragma: no cover - GPU hosts only
            logger.warning("GPU build failed (%s): building on the CPU", exc)
    index.train(sample)
    index.set_direct_map_type(_hashtable())  # reconstruct and remove by PMID
    index.add_with_ids(vectors, ids)
    index.nprobe = nprobe
    return index


def update_index(
    index: Any,
    *,
    add_vectors: np.ndarray | None = None,
    add_ids: np.ndarray | None = None,
    remove_ids: np.ndarray | None = None,
) -> int:
    """Remove ``remove_ids``, then add ``add_vectors`` with ``add_ids``, in place.

    Returns:
        The number of vectors removed.
    """
    import faiss

    removed = 0
    if remove_ids is not None and len(remove_ids):
        arr = np.ascontiguousarray(remove_ids, dtype=np.int64)
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None and ivf.direct_map.type == _hashtable():
            # the PMID hashtable looks each id up: no scan of the inverted lists
            sel: Any = faiss.IDSelectorArray(len(arr), faiss.swig_ptr(arr))
        else:
            sel = faiss.IDSelectorBatch(arr)
        removed = int(index.remove_ids(sel))
    if add_vectors is not None and add_ids is not None and len(add_ids):
        vectors, ids = _check_vectors(add_vectors, add_ids)
        index.add_with_ids(vectors, ids)
    return removed


def _same_vectors(index: Any, ids: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Which of ``vectors`` the index already holds unchanged under the same ids."""
    try:
        old = np.asarray(index.reconstruct_batch(np.ascontiguousarray(ids, dtype=np.int64)))
    except RuntimeError:  # no direct map: treat every candidate as changed
        return np.zeros(len(ids), dtype=bool)
    return np.asarray(np.all(np.abs(old - vectors) <= 1e-6, axis=1))


def _index_ids(index: Any) -> np.ndarray:
    """All ids of an IDMap2 or IVF index, sorted."""
    import faiss

    if hasattr(index, "id_map"):
        ids = faiss.vector_to_array(index.id_map)
    else:
        ivf = faiss.extract_index_ivf(index)
        inv: Any = ivf.invlists
        parts = []
        for lst in range(ivf.nlist):
            size = inv.list_size(lst)
            if size:
                parts.append(faiss.rev_swig_ptr(inv.get_ids(lst), size).copy())
        ids = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return np.sort(ids.astype(np.int64))


def _to_gpu(index: Any, kind: str, nprobe: int) -> tuple[Any, Any, Any]:  # pragma: no cover
    import faiss

    res = faiss.StandardGpuResources()
    if kind == "flat":
        gpu = faiss.index_cpu_to_gpu(res, 0, faiss.downcast_index(index.index))
        return gpu, faiss.vector_to_array(index.id_map).astype(np.int64), res
    gpu = faiss.index_cpu_to_gpu(res, 0, index)
    faiss.GpuParameterSpace().set_index_parameter(gpu, "nprobe", nprobe)
    return gpu, None, res


# ----------------------------------------------------------------------- files and rows


def _indexes_dir(settings: Settings) -> Path:
    return settings.home / "indexes"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_files(settings: Settings, version_id: str, index: Any, ids: np.ndarray,
                 meta: dict[str, Any]) -> Path:
    """Write the files aside, fsync them, and rename the folder into place."""
    import faiss

    root = _indexes_dir(settings)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{version_id}"
    final = root / version_id
    tmp.mkdir()
    faiss.write_index(index, str(tmp / "index.faiss"))
    np.save(tmp / "ids.npy", ids)
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str), encoding="utf-8")
    for name in ("index.faiss", "ids.npy", "meta.json"):
        with open(tmp / name, "rb") as fh:
            os.fsync(fh.fileno())
    _fsync_dir(tmp)
    os.replace(tmp, final)
    _fsync_dir(root)
    return final


def _read_files(path: str) -> tuple[Any, np.ndarray, dict[str, Any]]:
    import faiss

    folder = Path(path)
    if not (folder / "index.faiss").exists():
        raise ConsistencyError(f"index files are missing in {folder}")
    index = faiss.read_index(str(folder / "index.faiss"))
    ids = np.load(folder / "ids.npy")
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    return index, ids, meta


def _load(row: Any, settings: Settings) -> PublishedIndex:
    index, ids, meta = _read_files(row.path)
    if hasattr(index, "nprobe"):
        index.nprobe = settings.ivf_nprobe
    gpu = gpu_ids = res = None
    if gpu_available(settings) and index.ntotal:  # pragma: no cover - GPU hosts only
        try:
            gpu, gpu_ids, res = _to_gpu(index, row.kind, settings.ivf_nprobe)
        except (RuntimeError, AttributeError) as exc:
            logger.warning("cannot move index %s to the GPU (%s): searching on the CPU",
                           row.id, exc)
    return PublishedIndex(
        id=row.id, model_version=row.model_version, kind=row.kind, size=int(index.ntotal),
        path=row.path, ids=ids, details=meta, index=index, _gpu=gpu, _gpu_ids=gpu_ids,
        _gpu_res=res,
    )


_CACHE: dict[str, PublishedIndex] = {}
_CACHE_LOCK = threading.Lock()


def open_published(settings: Settings, engine: Engine | None = None) -> PublishedIndex | None:
    """The published index version, loaded once per process and version.

    Each call reads the ``index_versions`` row (cheap) and reloads only when another
    version has been published since. Returns ``None`` when none is published.
    """
    engine = engine or db.connect(settings)
    row = published_index_row(engine)
    if row is None:
        return None
    key = settings.effective_database_url
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
        if cached is not None and cached.id == row.id:
            return cached
        loaded = _load(row, settings)
        _CACHE[key] = loaded
        logger.info("opened index %s (%s, %d vectors)", loaded.id, loaded.kind, loaded.size)
        return loaded


# ------------------------------------------------------------------------- store reads


def _live_ids(engine: Engine) -> np.ndarray:
    with engine.connect() as conn:
        result = conn.execute(
            select(articles.c.pmid).where(articles.c.is_deleted.is_(False))
            .order_by(articles.c.pmid)
        )
        return np.fromiter((int(p) for p in result.scalars()), dtype=np.int64)


def _watermark(engine: Engine, model_version: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(
            select(func.max(embeddings.c.created_at))
            .where(embeddings.c.model_version == model_version)
        ).scalar()


def _changed_ids(engine: Engine, model_version: str, since: str | None) -> np.ndarray:
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


def _fetch_vectors(engine: Engine, model_version: str,
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
            result = conn.execution_options(yield_per=_CHUNK).execute(
                base.order_by(embeddings.c.pmid))
            for pmid, vec in result:
                ids.append(int(pmid))
                blobs.append(vec)
        else:
            wanted = [int(p) for p in pmids]
            for start in range(0, len(wanted), _CHUNK):
                chunk = wanted[start : start + _CHUNK]
                for pmid, vec in conn.execute(base.where(embeddings.c.pmid.in_(chunk))):
                    ids.append(int(pmid))
                    blobs.append(vec)
    if not blobs:
        return np.zeros((0, 0), dtype=np.float32), np.zeros(0, dtype=np.int64)
    dim = len(blobs[0]) // 4
    vectors = vector_from_bytes(b"".join(blobs)).reshape(len(blobs), dim)
    return vectors, np.asarray(ids, dtype=np.int64)


def _newest_date(engine: Engine) -> str | None:
    with engine.connect() as conn:
        value = conn.execute(
            select(func.max(articles.c.best_date)).where(articles.c.is_deleted.is_(False))
        ).scalar()
    return str(value) if value is not None else None


# ----------------------------------------------------------------------------- refresh


def _base_row(engine: Engine, model_version: str) -> Any:
    """The newest kept version for the model: the published one, else a retired one."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(index_versions)
            .where(index_versions.c.model_version == model_version,
                   index_versions.c.status.in_(("published", "retired")))
            .order_by(desc(index_versions.c.status == "published"),
                      desc(index_versions.c.published_at))
        ).all()
    for row in rows:
        if (Path(row.path) / "index.faiss").exists():
            return row
    return None


def _rebuild_reason(base: Any, meta: dict[str, Any] | None, n_live: int,
                    settings: Settings, published: Any, model_version: str) -> str | None:
    if base is None:
        if published is not None:
            return f"model changed ({published.model_version} -> {model_version})"
        return "no index for this model version"
    if meta is None:
        return "index files unreadable"
    if choose_kind(n_live, settings) != base.kind:
        return f"size {n_live} crosses the exact/IVF threshold ({settings.exact_index_max})"
    trained = int(meta.get("trained_size") or 0)
    if base.kind == "ivf" and trained and n_live > DRIFT_FACTOR * trained:
        return f"IVF trained on {trained} vectors, now {n_live} (> {DRIFT_FACTOR}x)"
    return None


def refresh_index(settings: Settings, *, rebuild: bool = False,
                  progress: bool = False) -> IndexReport:
    """Bring the published index up to date with the store and the active model.

    Args:
        settings: The settings.
        rebuild: Build from scratch (retrain the IVF lists) even when an update would do.
        progress: Show progress bars (embedding) on stderr.

    Returns:
        What was done; ``published`` is ``False`` when nothing had changed.

    Raises:
        IndexBusyError: Another process is publishing (the lease is held).
        LeaseLostError: Another process took the lease over meanwhile; nothing was
            published.
    """
    t0 = time.perf_counter()
    engine = db.connect(settings)
    lease = db.acquire_lease(engine, LEASE_NAME, ttl_s=LEASE_TTL_S)
    if lease is None:
        raise IndexBusyError("another process is refreshing the index (lease index-publish)")
    with lease:
        spec = active_model(settings, engine)
        lease.check()
        embedded = embed_pending(settings, spec, progress, engine=engine)
        published = published_index_row(engine)
        watermark = _watermark(engine, spec.id)
        live = _live_ids(engine)
        base = None if rebuild else _base_row(engine, spec.id)
        meta: dict[str, Any] | None = None
        index: Any = None
        base_ids = np.zeros(0, dtype=np.int64)
        if base is not None:
            try:
                index, base_ids, meta = _read_files(base.path)
            except (ConsistencyError, OSError, RuntimeError, ValueError) as exc:
                logger.warning("cannot read index %s (%s): rebuilding", base.id, exc)
        reason = "asked" if rebuild else _rebuild_reason(base, meta, len(live), settings,
                                                         published, spec.id)
        if reason is None and meta is not None:
            return _incremental(settings, engine, lease, spec, base, published, index,
                                base_ids, meta, live, watermark, embedded, t0)
        return _full(settings, engine, lease, spec, published, live, watermark, embedded,
                     reason, t0)


def _full(settings: Settings, engine: Engine, lease: db.Lease, spec: ModelSpec,
          published: Any, live: np.ndarray, watermark: Any, embedded: int,
          reason: str | None, t0: float) -> IndexReport:
    vectors, ids = _fetch_vectors(engine, spec.id)
    kind = choose_kind(len(ids), settings)
    dim = vectors.shape[1] if len(ids) else _dimension(spec, settings)
    if not len(ids):
        vectors = np.zeros((0, dim), dtype=np.float32)
    logger.info("building %s index of %d vectors for model %s (%s)", kind, len(ids), spec.id,
                reason)
    index = build_index(vectors, ids, kind=kind, d=dim, nprobe=settings.ivf_nprobe,
                        use_gpu=gpu_available(settings) and kind == "ivf", seed=settings.seed)
    meta_extra = {"trained_size": len(ids) if kind == "ivf" else 0,
                  "nlist": int(getattr(index, "nlist", 0))}
    return _publish(settings, engine, lease, spec, published, index, np.sort(ids), watermark,
                    meta_extra, added=len(ids), removed=0, rebuilt=True, reason=reason,
                    embedded=embedded, t0=t0)


def _incremental(settings: Settings, engine: Engine, lease: db.Lease, spec: ModelSpec,
                 base: Any, published: Any, index: Any, base_ids: np.ndarray,
                 meta: dict[str, Any], live: np.ndarray, watermark: Any, embedded: int,
                 t0: float) -> IndexReport:
    gone = np.setdiff1d(base_ids, live, assume_unique=True)
    new = np.setdiff1d(live, base_ids, assume_unique=True)
    changed = np.intersect1d(_changed_ids(engine, spec.id, meta.get("embedded_upto")),
                             np.intersect1d(base_ids, live, assume_unique=True))
    wanted = np.union1d(new, changed)
    vectors, add_ids = _fetch_vectors(engine, spec.id, wanted)
    if len(changed) and len(add_ids):  # candidates from the slack window: keep real changes
        cand = np.isin(add_ids, changed)
        same = np.zeros(len(add_ids), dtype=bool)
        same[cand] = _same_vectors(index, add_ids[cand], vectors[cand])
        vectors, add_ids = vectors[~same], add_ids[~same]
    changed = np.intersect1d(changed, add_ids)
    removed_ids = np.union1d(gone, changed)
    same_base = published is not None and published.id == base.id
    if not len(add_ids) and not len(removed_ids) and same_base:
        return IndexReport(
            id=base.id, model_version=spec.id, kind=base.kind, size=int(index.ntotal),
            added=0, removed=0, rebuilt=False, path=base.path,
            seconds=time.perf_counter() - t0, embedded=embedded, published=False,
        )
    removed = update_index(index, add_vectors=vectors, add_ids=add_ids, remove_ids=removed_ids)
    ids = np.union1d(np.setdiff1d(base_ids, removed_ids, assume_unique=True), add_ids)
    meta_extra = {"trained_size": int(meta.get("trained_size") or 0),
                  "nlist": int(meta.get("nlist") or 0)}
    changed_added = int(len(changed))
    logger.info("updated index %s: +%d new, %d changed, -%d deleted", base.id,
                len(add_ids) - changed_added, changed_added, len(gone))
    return _publish(settings, engine, lease, spec, published, index, ids, watermark,
                    meta_extra, added=len(add_ids), removed=removed, rebuilt=False,
                    reason=None, embedded=embedded, t0=t0, parent_id=base.id)


def _dimension(spec: ModelSpec, settings: Settings) -> int:
    encoder = load_encoder(spec, settings)
    return int(encoder.get_embedding_dimension() or 0)


def _new_id() -> str:
    return f"ix-{db.utcnow():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


def _publish(settings: Settings, engine: Engine, lease: db.Lease, spec: ModelSpec,
             published: Any, index: Any, ids: np.ndarray, watermark: Any,
             meta_extra: dict[str, Any], *, added: int, removed: int, rebuilt: bool,
             reason: str | None, embedded: int, t0: float,
             parent_id: str | None = None) -> IndexReport:
    import faiss

    version_id = _new_id()
    kind = "flat" if hasattr(index, "id_map") else "ivf"
    now = db.utcnow()
    meta = {
        "id": version_id,
        "model_version": spec.id,
        "kind": kind,
        "size": int(index.ntotal),
        "d": int(index.d),
        "embedded_upto": watermark.isoformat() if watermark is not None else None,
        "newest_article_date": _newest_date(engine),
        "parent_id": parent_id or (published.id if published is not None else None),
        "rebuilt": rebuilt,
        "reason": reason,
        "added": added,
        "removed": removed,
        "created_at": now.isoformat(),
        "faiss_version": getattr(faiss, "__version__", ""),
        **meta_extra,
    }
    lease.check()
    path = _write_files(settings, version_id, index, ids, meta)
    try:
        with engine.begin() as conn:
            lease.verify(conn)  # still ours, and no takeover until this commits
            conn.execute(
                update(index_versions).where(index_versions.c.status == "published")
                .values(status="retired")
            )
            conn.execute(insert(index_versions).values(
                id=version_id, model_version=spec.id, kind=kind, path=str(path),
                size=int(index.ntotal), status="published", parent_id=meta["parent_id"],
                details=meta, created_at=now, published_at=db.utcnow(),
            ))
    except LeaseLostError:
        shutil.rmtree(path, ignore_errors=True)  # no row names it
        raise
    if lease.renew():  # pruning is the holder's job; a lost lease leaves it to the next
        _prune(settings, engine)
    logger.info("published index %s (%s, %d vectors)", version_id, kind, index.ntotal)
    return IndexReport(
        id=version_id, model_version=spec.id, kind=kind, size=int(index.ntotal), added=added,
        removed=removed, rebuilt=rebuilt, path=str(path), seconds=time.perf_counter() - t0,
        embedded=embedded, reason=reason,
    )


def _prune(settings: Settings, engine: Engine) -> None:
    """Delete versions beyond the newest :data:`KEEP_VERSIONS` (rows and files)."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(index_versions.c.id, index_versions.c.path, index_versions.c.status)
            .order_by(desc(index_versions.c.status == "published"),
                      desc(index_versions.c.published_at), desc(index_versions.c.created_at))
        ).all()
    for row in rows[KEEP_VERSIONS:]:
        if row.status == "published":
            continue
        with engine.begin() as conn:
            conn.execute(delete(index_versions).where(index_versions.c.id == row.id))
        shutil.rmtree(row.path, ignore_errors=True)
        logger.info("pruned index version %s", row.id)
    for tmp in _indexes_dir(settings).glob(".tmp-*"):  # left by a crashed publisher
        if time.time() - tmp.stat().st_mtime > TMP_MAX_AGE_S:
            shutil.rmtree(tmp, ignore_errors=True)


def rollback_index(settings: Settings) -> dict[str, Any]:
    """Re-publish the previous index version; the current one is marked ``rolled_back``.

    Returns:
        ``{"from": <id>, "to": <id>, "model_version": ...}``.

    Raises:
        NotFoundError: No earlier version is kept on disk.
        IndexBusyError: Another process is publishing.
    """
    engine = db.connect(settings)
    lease = db.acquire_lease(engine, LEASE_NAME, ttl_s=LEASE_TTL_S)
    if lease is None:
        raise IndexBusyError("another process is refreshing the index (lease index-publish)")
    with lease:
        current = published_index_row(engine)
        with engine.connect() as conn:
            candidates = conn.execute(
                select(index_versions).where(index_versions.c.status == "retired")
                .order_by(desc(index_versions.c.published_at))
            ).all()
        target = next((r for r in candidates if (Path(r.path) / "index.faiss").exists()), None)
        if target is None:
            raise NotFoundError("no earlier index version to roll back to")
        with engine.begin() as conn:
            lease.verify(conn)
            if current is not None:
                conn.execute(update(index_versions).where(index_versions.c.id == current.id)
                             .values(status="rolled_back"))
            conn.execute(update(index_versions).where(index_versions.c.id == target.id)
                         .values(status="published", published_at=db.utcnow()))
    logger.warning("index rolled back from %s to %s", current.id if current else None,
                   target.id)
    return {"from": current.id if current is not None else None, "to": target.id,
            "model_version": target.model_version}


# ------------------------------------------------------------------------ status, check


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def index_status(settings: Settings) -> dict[str, Any]:
    """The published index version and the kept ones, for ``litpulse index status``."""
    engine = db.connect(settings)
    row = published_index_row(engine)
    spec = active_model(settings, engine)
    with engine.connect() as conn:
        versions = conn.execute(
            select(index_versions).order_by(desc(index_versions.c.created_at))
        ).all()
        live = conn.execute(
            select(func.count()).select_from(articles).where(articles.c.is_deleted.is_(False))
        ).scalar()
    out: dict[str, Any] = {
        "published": row.id if row is not None else None,
        "model_version": row.model_version if row is not None else None,
        "active_model": spec.id,
        "kind": row.kind if row is not None else None,
        "size": int(row.size) if row is not None else 0,
        "path": row.path if row is not None else None,
        "created_at": _iso(row.created_at) if row is not None else None,
        "published_at": _iso(row.published_at) if row is not None else None,
        "newest_article_date": (row.details or {}).get("newest_article_date")
        if row is not None else None,
        "live_articles": int(live or 0),
        "pending_embeddings": count_pending(settings, spec.id, engine),
        "versions": [
            {"id": v.id, "model_version": v.model_version, "kind": v.kind, "size": int(v.size),
             "status": v.status, "created_at": _iso(v.created_at),
             "published_at": _iso(v.published_at)}
            for v in versions
        ],
    }
    return out


def check_consistency(settings: Settings, *, sample: int = 10) -> dict[str, Any]:
    """Compare the published index with the store and the active model.

    Checks: an index is published and its files load; its size matches its row; its
    model version is the active one; every live article is in it (``missing``) and
    nothing else is (``extra``: deleted or unknown PMIDs); no embedded article text has
    changed since (``stale``).

    Returns:
        ``{"ok": bool, "problems": [str], "index_id", "model_version", "active_model",
        "size", "live_articles", "missing", "extra", "stale", "missing_sample",
        "extra_sample"}``.
    """
    engine = db.connect(settings)
    spec = active_model(settings, engine)
    row = published_index_row(engine)
    problems: list[str] = []
    out: dict[str, Any] = {"ok": False, "problems": problems, "index_id": None,
                           "model_version": None, "active_model": spec.id, "size": 0}
    live = _live_ids(engine)
    out["live_articles"] = len(live)
    if row is None:
        problems.append("no index is published")
        return out
    out.update(index_id=row.id, model_version=row.model_version, size=int(row.size))
    try:
        pub = open_published(settings, engine)
    except (ConsistencyError, OSError, RuntimeError, ValueError) as exc:
        problems.append(f"index {row.id} cannot be loaded: {exc}")
        return out
    if pub is None:  # unpublished between the two reads
        problems.append("no index is published")
        return out
    if pub.size != int(row.size) or len(pub.ids) != pub.size:
        problems.append(f"index holds {pub.size} vectors, its row says {row.size}, "
                        f"its id list {len(pub.ids)}")
    if row.model_version != spec.id:
        problems.append(f"index model {row.model_version} is not the active model {spec.id}")
    missing = np.setdiff1d(live, pub.ids, assume_unique=True)
    extra = np.setdiff1d(pub.ids, live, assume_unique=True)
    out.update(missing=int(len(missing)), extra=int(len(extra)),
               missing_sample=[int(p) for p in missing[:sample]],
               extra_sample=[int(p) for p in extra[:sample]])
    if len(missing):
        problems.append(f"{len(missing)} live articles are not in the index")
    if len(extra):
        problems.append(f"{len(extra)} indexed PMIDs are deleted or unknown")
    with engine.connect() as conn:
        stale = conn.execute(
            select(func.count()).select_from(embeddings.join(
                articles, and_(articles.c.pmid == embeddings.c.pmid,
                               embeddings.c.model_version == row.model_version)))
            .where(articles.c.is_deleted.is_(False),
                   embeddings.c.text_hash != articles.c.text_hash)
        ).scalar()
    out["stale"] = int(stale or 0)
    if stale:
        problems.append(f"{stale} articles changed since they were embedded")
    upto = pub.details.get("embedded_upto")
    if upto:
        with engine.connect() as conn:
            newer = conn.execute(
                select(func.count()).select_from(embeddings.join(
                    articles, articles.c.pmid == embeddings.c.pmid))
                .where(embeddings.c.model_version == row.model_version,
                       embeddings.c.created_at > dt.datetime.fromisoformat(upto),
                       articles.c.is_deleted.is_(False))
            ).scalar()
        out["newer_vectors"] = int(newer or 0)
        if newer and row.model_version == spec.id:
            problems.append(f"{newer} vectors were embedded after the index was built")
    out["ok"] = not problems
    return out
