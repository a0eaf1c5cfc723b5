"""Pure FAISS operations: build, update and inspect indexes of L2-normalised vectors.

Functions here take and return arrays and FAISS indexes and touch neither files nor the
store. Vectors are float32 ``(n, d)`` with PMIDs (int64) as FAISS ids; wrong dtypes or
shapes raise :class:`TypeError`. Up to ``settings.exact_index_max`` vectors an index is
exact (``IndexIDMap2(IndexFlatIP)``); beyond, an IVF index with about ``4 * sqrt(n)``
lists, holding float32 vectors (``IndexIVFFlat``, codec ``flat``) or 8-bit codes of them
(``IndexIVFScalarQuantizer``, codec ``sq8``: a quarter of the bytes).

Example:
    >>> import numpy as np
    >>> v = np.eye(3, dtype=np.float32)
    >>> index = build_index(v, np.array([7, 8, 9]), kind="flat")
    >>> int(index.ntotal), index_ids(index).tolist()
    (3, [7, 8, 9])
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from litpulse.core.settings import Settings, env_name

__all__ = [
    "KMEANS_ITERATIONS",
    "POINTS_PER_LIST",
    "build_index",
    "check_vectors",
    "CODECS",
    "choose_kind",
    "faiss_device",
    "gpu_available",
    "index_codec",
    "index_ids",
    "index_kind",
    "nlist_for",
    "same_vectors",
    "to_gpu",
    "update_index",
]

logger = logging.getLogger(__name__)

#: Training points per IVF list (FAISS wants at least 39).
POINTS_PER_LIST = 40
#: k-means iterations when training IVF lists (FAISS's default is 25; 10 loses little
#: recall and makes a rebuild 2.5x cheaper).
KMEANS_ITERATIONS = 10


#: How IVF lists hold vectors (``settings.ivf_codec``).
CODECS = ("flat", "sq8")


def nlist_for(n: int) -> int:
    """IVF lists for ``n`` vectors: about ``4 * sqrt(n)``, with 39+ points per list."""
    return max(1, min(int(4 * math.sqrt(max(n, 1))), n // 39))


def choose_kind(n: int, settings: Settings) -> str:
    """``flat`` up to ``settings.exact_index_max`` vectors, ``ivf`` beyond."""
    return "flat" if n <= settings.exact_index_max else "ivf"


def index_kind(index: Any) -> str:
    """``flat`` for an ``IndexIDMap2``, else ``ivf``."""
    return "flat" if hasattr(index, "id_map") else "ivf"


def index_codec(index: Any) -> str:
    """``sq8`` for IVF lists of 8-bit codes, else ``flat`` (float32 vectors)."""
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    sq = ivf is not None and isinstance(faiss.downcast_index(ivf), faiss.IndexIVFScalarQuantizer)
    return "sq8" if sq else "flat"


def faiss_device(settings: Settings) -> dict[str, str]:
    """Where FAISS builds IVF lists and searches (``device``: ``gpu`` or ``cpu``), and
    ``why``: the setting, and what this FAISS sees (a CPU build such as the default
    install's faiss-cpu has no GPU entry points; a GPU build counts the visible GPUs).
    ``litpulse status`` shows it; :func:`gpu_available` decides by it."""
    setting = f"{env_name('use_gpu')}={settings.use_gpu}"
    if settings.use_gpu == "no":
        return {"device": "cpu", "why": setting}
    joint = ", but" if settings.use_gpu == "yes" else ":"
    cpu_build = {"device": "cpu", "why": f"{setting}{joint} this FAISS is a CPU build "
                 "(faiss-cpu): FAISS on the GPU is faiss-gpu-cu12 in its place (README)"}
    if _unimported_cpu_faiss():
        return cpu_build  # no faiss import (half a second) for `litpulse status`
    import faiss

    if not hasattr(faiss, "StandardGpuResources"):
        return cpu_build
    n = int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0
    if n == 0:
        return {"device": "cpu", "why": f"{setting}{joint} FAISS sees no GPU (none visible "
                "to this process, or its driver cannot be loaded)"}
    return {"device": "gpu", "why": f"{setting}: FAISS sees {n} GPU{'s' if n > 1 else ''} "
            "(GPU 0 used)"}


def _unimported_cpu_faiss() -> bool:
    """Whether faiss, not imported yet, is faiss-cpu's build, read from that
    distribution's metadata without importing it: the ``faiss`` package found is the one
    faiss-cpu installed, and each compiled library in it (``*.so``) is the one faiss-cpu's
    ``RECORD`` lists, by size (a GPU build installed over it, as faiss-gpu-cu12 beside
    faiss-cpu, replaces them). ``False`` where faiss is imported already (it is asked),
    is not faiss-cpu's, or anything there cannot be read."""
    if "faiss" in sys.modules:
        return False
    try:
        spec = importlib.util.find_spec("faiss")
        dist = importlib.metadata.distribution("faiss-cpu")
    except (ImportError, ValueError):  # PackageNotFoundError is an ImportError
        return False
    if spec is None or not spec.origin:
        return False
    folder = Path(spec.origin).parent
    try:
        if Path(str(dist.locate_file("faiss/__init__.py"))).resolve() != Path(
            spec.origin
        ).resolve():
            return False
        sizes = {f.name: f.size for f in dist.files or () if f.parts[:1] == ("faiss",)
                 and len(f.parts) == 2 and f.name.endswith(".so")}  # fmt: skip
        found = {f.name: f.stat().st_size for f in folder.glob("*.so")}
    except OSError:
        return False
    return bool(found) and found == sizes


def gpu_available(settings: Settings) -> bool:
    """Whether FAISS should use a GPU (:func:`faiss_device`). ``use_gpu=yes`` without
    one warns, saying why, and FAISS builds and searches on the CPU (as documented)."""
    where = faiss_device(settings)
    if where["device"] == "cpu" and settings.use_gpu == "yes":
        logger.warning("%s: FAISS builds and searches on the CPU", where["why"])
    return where["device"] == "gpu"


def check_vectors(vectors: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``vectors`` as contiguous float32 and ``ids`` as int64, checked against each other.

    Raises:
        TypeError: ``vectors`` is not 2-d, or ``ids`` is not one integer per vector.
    """
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
    codec: str = "flat",
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
        codec: What an IVF index's lists hold (:data:`CODECS`): ``flat`` float32
            vectors, or ``sq8`` 8-bit codes of each vector's residual from its list's
            centroid (trained on the same sample). A flat index is always exact.

    Raises:
        TypeError: Vectors or ids of the wrong dtype or shape.
        ValueError: An unknown ``kind`` or ``codec``.
    """
    import faiss

    vectors, ids = check_vectors(vectors, ids)
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {', '.join(CODECS)}, got {codec!r}")
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
    index: Any
    if codec == "sq8":
        index = faiss.IndexIVFScalarQuantizer(
            quantizer, dim, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
        )
    else:
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = KMEANS_ITERATIONS
    index.cp.seed = seed
    rng = np.random.default_rng(seed)
    n_train = min(len(vectors), POINTS_PER_LIST * nlist)
    sample = vectors[np.sort(rng.choice(len(vectors), n_train, replace=False))]
    if use_gpu:
        try:
            return _build_ivf_on_gpu(index, sample, vectors, ids, nprobe)
        except (RuntimeError, AttributeError) as exc:  # pragma: no cover - GPU hosts only
            logger.warning("GPU build failed (%s): building on the CPU", exc)
    index.train(sample)
    index.set_direct_map_type(_hashtable())  # reconstruct and remove by PMID
    index.add_with_ids(vectors, ids)
    index.nprobe = nprobe
    return index


def _build_ivf_on_gpu(index: Any, sample: np.ndarray, vectors: np.ndarray, ids: np.ndarray,
                      nprobe: int) -> Any:  # pragma: no cover - GPU hosts only
    """Train and fill ``index`` on GPU 0; returns the CPU copy with a PMID hashtable."""
    import faiss

    res = faiss.StandardGpuResources()
    gpu = faiss.index_cpu_to_gpu(res, 0, index)
    gpu.train(sample)
    gpu.add_with_ids(vectors, ids)
    cpu: Any = faiss.index_gpu_to_cpu(gpu)
    cpu.set_direct_map_type(_hashtable())
    cpu.nprobe = nprobe
    return cpu


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

    Raises:
        TypeError: Vectors or ids of the wrong dtype or shape.
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
        vectors, ids = check_vectors(add_vectors, add_ids)
        index.add_with_ids(vectors, ids)
    return removed


def same_vectors(index: Any, ids: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Which of ``vectors`` the index already holds unchanged under the same ids.

    Lists of codes hold an approximation: what is compared with the stored one is the
    code ``vectors`` would get (encoded and decoded as an add would), not the vector.
    """
    try:
        old = np.asarray(index.reconstruct_batch(np.ascontiguousarray(ids, dtype=np.int64)))
    except RuntimeError:  # no direct map: treat every candidate as changed
        return np.zeros(len(ids), dtype=bool)
    if index_codec(index) != "flat" and len(ids):
        coded = check_vectors(vectors, ids)[0]
        vectors = np.asarray(index.sa_decode(index.sa_encode(coded)))
    return np.asarray(np.all(np.abs(old - vectors) <= 1e-6, axis=1))


def index_ids(index: Any) -> np.ndarray:
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


def to_gpu(index: Any, kind: str, nprobe: int) -> tuple[Any, Any, Any]:  # pragma: no cover
    """A GPU copy of a CPU index: ``(gpu_index, positions_to_ids or None, resources)``.

    A flat GPU index answers positions, hence the id array; an IVF one answers ids.
    """
    import faiss

    res = faiss.StandardGpuResources()
    if kind == "flat":
        gpu = faiss.index_cpu_to_gpu(res, 0, faiss.downcast_index(index.index))
        return gpu, faiss.vector_to_array(index.id_map).astype(np.int64), res
    gpu = faiss.index_cpu_to_gpu(res, 0, index)
    faiss.GpuParameterSpace().set_index_parameter(gpu, "nprobe", nprobe)
    return gpu, None, res
