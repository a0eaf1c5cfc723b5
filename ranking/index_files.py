"""Index version files and the loaded, published index.

A version's files — the vector index (``index.faiss``, ``ids.npy``), the lexical index
(``lexical/``, ``lexical_ids.npy``, see :mod:`ranking.lexical`) and ``meta.json`` — are
written into one temporary folder, fsynced and renamed to ``<home>/indexes/<id>/``
(:func:`write_files`): one rename publishes both, and a crash before it publishes neither;
a write that fails (the disk full) raises :class:`~litpulse.core.errors.StorageError`.
The SHA-256 of the vector index's files and of the lexical id list are recorded in
``meta.json`` (``files``, and so in the version's row): :func:`verify_files` tells whether a
kept version still holds what was written and loads, before a rollback re-publishes it.
Readers (:func:`open_published`) load the version the ``index_versions`` row names, once
per process and version; a :class:`PublishedIndex` already loaded never changes, so
searches running during a publish finish on the old version.

On a host where FAISS sees a GPU (and ``use_gpu`` is not ``no``) searches run on it, but
for more than :data:`GPU_MAX_K` neighbours (FAISS-GPU's limit), which run on the CPU; the
CPU index stays the master copy (GPU indexes cannot remove ids). A newer version loaded
by :func:`open_published` takes the GPU in place of the one it replaces, whose GPU copy is
released first (:meth:`PublishedIndex.release_gpu`; the card may hold one copy).

Example:
    >>> idx = open_published(settings)  # doctest: +SKIP
    >>> scores, pmids = idx.search(encode_query(settings, idx.model_version, "sepsis"), 10)
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine

from litpulse.core import db
from litpulse.core.checksums import durable_rename, file_sha256
from litpulse.core.errors import ConsistencyError, LitpulseError, StorageError
from litpulse.core.settings import Settings
from ranking import faiss_ops
from ranking.lexical import (
    IDS_FILE,
    LEXICAL_DIR,
    Bm25,
    LexicalIndex,
    LexicalPlan,
    has_lexical,
    open_lexical_at,
    read_ids,
)
from ranking.models import published_index_row

__all__ = [
    "CHECKSUMMED",
    "FILES",
    "REPUBLISH",
    "PublishedIndex",
    "has_files",
    "indexes_dir",
    "open_published",
    "read_files",
    "read_vector_ids",
    "relocate_versions",
    "verify_files",
    "write_faiss",
    "write_files",
]

logger = logging.getLogger(__name__)

#: The files of one index version.
FILES = ("index.faiss", "ids.npy", "meta.json")
#: The files of a version whose SHA-256 :func:`write_files` records in ``meta.json``
#: (``files``): the vector index, its id list and the lexical index's id list. The lexical
#: index's own files are left out: most are hard links of the previous version's
#: (:func:`ranking.lexical.link_copy`), and hashing them all would make each refresh cost
#: the size of the corpus; :func:`verify_files` opens it instead.
CHECKSUMMED = ("index.faiss", "ids.npy", IDS_FILE)
#: Most neighbours one FAISS-GPU search returns (its k-selection limit); longer lists
#: are searched on the CPU copy.
GPU_MAX_K = 2048


@dataclass(frozen=True, eq=False)
class PublishedIndex:
    """One loaded, immutable index version; safe to search from many threads (searches
    on its GPU copy take turns, as FAISS requires of a GPU index).

    Attributes:
        id: Index version id.
        model_version: Model version whose vectors it holds (embed queries with it).
        kind: ``flat`` or ``ivf``.
        size: Vectors in the index.
        path: Folder of its files.
        ids: The PMIDs it holds, sorted (int64).
        details: The version's ``meta.json``.
        lexical: Its lexical index, or ``None`` (a version made before lexical indexes, or
            one whose lexical index could not be opened: ``lexical_error``).
        lexical_error: Why its lexical index could not be opened (search is semantic only
            meanwhile), or ``None``. Not kept: :func:`open_published` tries again.
    """

    id: str
    model_version: str
    kind: str
    size: int
    path: str
    ids: np.ndarray = field(repr=False)
    details: dict[str, Any] = field(default_factory=dict, repr=False)
    index: Any = field(default=None, repr=False)
    lexical: LexicalIndex | None = field(default=None, repr=False)
    lexical_error: str | None = field(default=None, repr=False)
    _gpu: Any = field(default=None, repr=False)
    _gpu_ids: Any = field(default=None, repr=False)
    _gpu_res: Any = field(default=None, repr=False)
    #: Held while the GPU copy searches: FAISS GPU indexes are not thread-safe, even to
    #: search (their ``StandardGpuResources`` scratch memory has one user at a time), and
    #: the API searches from its thread pool. Shared by the copies ``replace`` makes.
    _gpu_lock: Any = field(default_factory=threading.Lock, repr=False)

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
        answer = self._search_gpu(q, k) if self._gpu is not None and k <= GPU_MAX_K else None
        scores, labels = answer if answer is not None else self.index.search(q, k)
        scores = np.where(labels >= 0, scores, -np.inf).astype(np.float32)
        return scores, labels.astype(np.int64)

    def _search_gpu(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The GPU copy's answer, or ``None`` when it was released meanwhile."""
        with self._gpu_lock:  # one search at a time on the GPU (FAISS's rule)
            gpu, positions = self._gpu, self._gpu_ids
            if gpu is None:
                return None
            scores, labels = gpu.search(q, k)
        if positions is not None:  # a flat GPU index answers positions
            labels = np.where(labels >= 0, positions[np.maximum(labels, 0)], -1)
        return scores, labels

    def release_gpu(self) -> None:
        """Give the GPU copy's memory back (a newer version replaces this one): a search
        on it finishes first; searches still holding this version go on, on the CPU copy.
        """
        with self._gpu_lock:
            for name in ("_gpu", "_gpu_ids", "_gpu_res"):
                object.__setattr__(self, name, None)  # frozen: only this lifts the copy

    def reconstruct(self, pmid: int) -> np.ndarray:
        """The stored vector of one PMID (raises ``RuntimeError`` for an unknown PMID)."""
        return np.asarray(self.index.reconstruct(int(pmid)), dtype=np.float32)

    def vectors_of(self, pmids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """The stored vectors of the given PMIDs it holds, in one call where all are held:
        ``(found PMIDs in the given order, their vectors)``; unknown PMIDs are left out."""
        ids = np.ascontiguousarray(np.asarray(pmids, dtype=np.int64).reshape(-1))
        if not ids.size:
            return ids, np.zeros((0, self.index.d), dtype=np.float32)
        try:
            return ids, np.asarray(self.index.reconstruct_batch(ids), dtype=np.float32)
        except RuntimeError:  # some are not held: one at a time
            pass
        found, vectors = [], []
        for pmid in ids.tolist():
            try:
                vectors.append(self.reconstruct(pmid))
            except RuntimeError:
                continue
            found.append(pmid)
        if not found:
            return np.zeros(0, dtype=np.int64), np.zeros((0, self.index.d), dtype=np.float32)
        return np.asarray(found, dtype=np.int64), np.stack(vectors)


def indexes_dir(settings: Settings) -> Path:
    """The folder holding one sub-folder per kept index version."""
    return settings.home / "indexes"


def write_files(settings: Settings, version_id: str, index: Any, ids: np.ndarray,
                meta: dict[str, Any], lexical: LexicalPlan | None = None, *,
                store: str | None = None) -> Path:
    """Write the files aside, fsync them, and rename the folder into place.

    Args:
        settings: The settings (where the versions live).
        version_id: The new version.
        index: The FAISS index.
        ids: Its PMIDs, sorted.
        meta: ``meta.json``; the lexical index's entry is added as ``lexical``, the
            SHA-256 of the files of :data:`CHECKSUMMED` as ``files``.
        lexical: The lexical index to build into the same folder first.
        store: The :func:`litpulse.core.db.store_id` the folder is marked for, before it
            is renamed into place (its orphan is pruned by that store only).

    Raises:
        StorageError: A file could not be written (the disk full, an I/O error); the
            folder was not renamed into place (the caller removes it).
    """
    root = indexes_dir(settings)
    tmp = root / f".tmp-{version_id}"
    final = root / version_id
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        if store is not None:
            db.mark_folder(tmp, store)
        if lexical is not None:
            meta = {**meta, "lexical": lexical.write(tmp)}
        write_faiss(index, tmp / "index.faiss")
        np.save(tmp / "ids.npy", ids)
        meta = {**meta, "files": {name: file_sha256(tmp / name) for name in CHECKSUMMED
                                  if (tmp / name).exists()}}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str),
                                       encoding="utf-8")
        durable_rename(tmp, final)  # every file, the lexical index's too, then the name
    except LitpulseError:  # a rule of ours (a ConfigError is a ValueError too): as it is
        raise
    # the writers' own errors: OSError (ours, numpy's, FAISS's through write_faiss),
    # tantivy's ValueError ("An IO error occurred"), a FAISS RuntimeError
    except (OSError, RuntimeError, ValueError) as exc:
        raise StorageError(
            f"index version {version_id} could not be written in {root} ({exc}): nothing "
            "was published, the published version stays served; free space, then refresh "
            "again"
        ) from exc
    return final


def write_faiss(index: Any, path: Path) -> None:
    """Write a FAISS index to ``path`` and fsync it, every failure raised.

    Through a Python file, never ``faiss.write_index(index, path)``: FAISS writes a path
    with C stdio, and a file smaller than stdio's buffer is written at ``fclose``, whose
    failure (the disk full) FAISS only prints: the truncated file would be published.

    Raises:
        OSError: The file could not be written whole.
    """
    import faiss

    with open(path, "wb") as fh:
        writer = faiss.PyCallbackIOWriter(fh.write)  # type: ignore[attr-defined] # no stub
        faiss.write_index(index, writer)
        fh.flush()
        os.fsync(fh.fileno())


def relocate_versions(settings: Settings, engine: Engine) -> list[str]:
    """Point index versions whose folder is gone at the folder of the same name in this
    data directory's :func:`indexes_dir`, where it holds that version.

    A data directory moved (``LITPULSE_HOME`` changed; the store moved with it, or the same
    PostgreSQL) keeps its index versions, but ``index_versions.path`` names each by the
    absolute path it was written at: searches would fail, the next refresh rebuild the
    whole index from scratch, and ``litpulse index rollback`` find nothing to go back to.
    A folder is taken only when this store wrote it (its mark,
    :func:`litpulse.core.db.mark_folder`, or none: written before marks) and its
    ``meta.json`` names the version. A version whose folder is still where its row says
    (another deployment's data directory on a shared disk) is left as it is. Called under
    the ``index-publish`` lease (a refresh, an index rollback).

    Returns:
        The index versions pointed at their moved folder.
    """
    from sqlalchemy import select, update

    from litpulse.core.schema import index_versions

    ix = index_versions.c
    with engine.connect() as conn:
        rows = conn.execute(select(ix.id, ix.path)).all()
    mine: str | None = None
    moved = []
    for row in rows:
        here = indexes_dir(settings) / Path(row.path).name
        if has_files(row.path) or str(here) == row.path or not has_files(str(here)):
            continue
        mine = mine or db.store_id(engine)
        try:
            named = json.loads((here / "meta.json").read_text(encoding="utf-8")).get("id")
        except (OSError, ValueError, AttributeError):
            continue
        if named != row.id or db.folder_store(here) not in (mine, None):
            continue
        with engine.begin() as conn:
            conn.execute(update(index_versions).where(ix.id == row.id, ix.path == row.path)
                         .values(path=str(here)))
        logger.warning("index version %s: its folder %s is gone, %s (this data directory's) "
                       "holds it: using that", row.id, row.path, here)
        moved.append(str(row.id))
    return moved


def has_files(path: str) -> bool:
    """Whether a version folder still holds its index file."""
    return (Path(path) / "index.faiss").exists()


def read_vector_ids(path: str) -> np.ndarray:
    """The PMIDs a version's vector index holds (``ids.npy``, without loading the index)."""
    return np.asarray(np.load(Path(path) / "ids.npy"), dtype=np.int64)


def read_files(path: str) -> tuple[Any, np.ndarray, dict[str, Any]]:
    """``(index, ids, meta)`` of a version folder.

    Raises:
        ConsistencyError: The index file is missing.
    """
    import faiss

    folder = Path(path)
    if not has_files(path):
        raise ConsistencyError(f"index files are missing in {folder}")
    index = faiss.read_index(str(folder / "index.faiss"))
    ids = read_vector_ids(path)
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    return index, ids, meta


def verify_files(path: str, details: dict[str, Any] | None) -> None:
    """Make sure a kept version can be served as it was written: its files hold the bytes
    recorded when they were written (the SHA-256 in ``details["files"]``, the version's
    row; versions written before they were recorded are not compared), its vector index,
    id list and ``meta.json`` load and agree (as searches load them: :func:`read_files`),
    and its lexical index, when it has one, opens and agrees with its id list.

    Args:
        path: The version folder.
        details: The version's ``index_versions.details`` (its ``meta.json`` as written).

    Raises:
        ConsistencyError: What is wrong (a file missing, changed, or unreadable).
    """
    folder = Path(path)
    recorded = (details or {}).get("files") or {}
    try:
        for name, digest in sorted(recorded.items()):
            if not (folder / name).exists():
                raise ConsistencyError(f"{name} is missing in {folder}")
            if file_sha256(folder / name) != digest:
                raise ConsistencyError(f"{name} in {folder} is not the file written (its "
                                       "SHA-256 differs from the one recorded)")
        index, ids, _ = read_files(path)
        if len(ids) != int(index.ntotal):
            raise ConsistencyError(f"index in {folder} holds {index.ntotal} vectors, its id "
                                   f"list {len(ids)}")
        if has_lexical(folder):
            lexical = LexicalIndex.open(folder / LEXICAL_DIR)
            listed = len(read_ids(folder))
            if lexical.size != listed:
                raise ConsistencyError(f"lexical index in {folder} holds {lexical.size} "
                                       f"documents, its id list {listed}")
        elif (folder / LEXICAL_DIR).exists():
            raise ConsistencyError(f"lexical index in {folder} is incomplete")
    except ConsistencyError:
        raise
    except (OSError, EOFError, RuntimeError, ValueError) as exc:  # faiss, numpy, json, tantivy
        raise ConsistencyError(f"index files in {folder} cannot be loaded: {exc}") from exc


#: What repairs a published version whose files cannot be served.
REPUBLISH = ("`litpulse index refresh` publishes the store's articles again (from their "
             "stored vectors)")


def _load(row: Any, settings: Settings) -> PublishedIndex:
    try:
        index, ids, meta = read_files(row.path)
    except (ConsistencyError, OSError, EOFError, RuntimeError, ValueError) as exc:
        # the store restored from a backup older than the files, the data directory
        # restored older than the store or moved: every search fails until it is repaired
        raise ConsistencyError(
            f"the published index {row.id} cannot be served: {exc}; {REPUBLISH}"
        ) from exc
    if hasattr(index, "nprobe"):
        index.nprobe = settings.ivf_nprobe
    lexical, lexical_error = _open_lexical(row.id, row.path, meta, settings)
    gpu = gpu_ids = res = None
    if faiss_ops.gpu_available(settings) and index.ntotal:  # pragma: no cover - GPU hosts
        try:
            gpu, gpu_ids, res = faiss_ops.to_gpu(index, row.kind, settings.ivf_nprobe)
        except (RuntimeError, AttributeError) as exc:
            logger.warning("cannot move index %s to the GPU (%s): searching on the CPU",
                           row.id, exc)
    return PublishedIndex(
        id=row.id, model_version=row.model_version, kind=row.kind, size=int(index.ntotal),
        path=row.path, ids=ids, details=meta, index=index, lexical=lexical,
        lexical_error=lexical_error, _gpu=gpu, _gpu_ids=gpu_ids, _gpu_res=res,
    )


def _open_lexical(
    index_id: str, path: str, meta: dict[str, Any], settings: Settings,
    said: str | None = None,
) -> tuple[LexicalIndex | None, str | None]:
    """A version's lexical index (``None``: it has none, made before lexical indexes), and
    why it could not be opened (``None``: it was, or it has none). A failure is logged,
    unless it is ``said`` (the last try's: one line while it fails alike, not one a
    search)."""
    error = None
    try:
        lexical = open_lexical_at(path, Bm25.from_settings(settings))
    except (ConsistencyError, OSError, ValueError) as exc:  # unreadable, being replaced
        lexical, error = None, str(exc)
    if lexical is None and error is None and "lexical" in meta:  # written, gone for now
        error = f"lexical index files are missing in {Path(path) / LEXICAL_DIR}"
    if error is not None and error != said:
        logger.warning("lexical index of %s cannot be opened (%s): semantic search only, "
                       "until it opens (tried again at the next search)", index_id, error)
    elif lexical is None and error is None:
        logger.warning("index %s has no lexical index: run `litpulse index refresh`", index_id)
    return lexical, error


def _lexical_again(loaded: PublishedIndex, settings: Settings) -> PublishedIndex:
    """``loaded``, whose lexical index could not be opened, with it opened now if it opens
    (its vectors kept as loaded)."""
    lexical, error = _open_lexical(loaded.id, loaded.path, loaded.details, settings,
                                   said=loaded.lexical_error)  # fmt: skip
    if error is not None:
        return loaded if error == loaded.lexical_error else replace(loaded, lexical_error=error)
    logger.info("lexical index of %s opened", loaded.id)
    return replace(loaded, lexical=lexical, lexical_error=None)


_CACHE: dict[str, PublishedIndex] = {}
_CACHE_LOCK = threading.Lock()


def open_published(settings: Settings, engine: Engine | None = None) -> PublishedIndex | None:
    """The published index version, loaded once per process and version.

    Each call reads the ``index_versions`` row (cheap) and reloads only when another
    version has been published since. Returns ``None`` when none is published. A lexical
    index that could not be opened (its files unreadable or being replaced for a moment)
    is not kept so: each call tries to open it again, until it opens.

    Raises:
        ConsistencyError: The published version's files are missing or cannot be loaded;
            the message names the command that publishes the store's articles again.
    """
    engine = engine or db.connect(settings)
    row = published_index_row(engine)
    if row is None:
        return None
    key = settings.effective_database_url
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
        if cached is not None and cached.id == row.id:
            if cached.lexical_error is not None:  # a failure is not kept: tried again
                cached = _CACHE[key] = _lexical_again(cached, settings)
            return cached
        if cached is not None:  # its GPU copy first: the card may hold one copy only
            cached.release_gpu()
        loaded = _load(row, settings)
        _CACHE[key] = loaded
        logger.info("opened index %s (%s, %d vectors, searched on the %s)", loaded.id,
                    loaded.kind, loaded.size, "GPU" if loaded.on_gpu else "CPU")
        return loaded
