"""Hostile review (session 37e): the GPU code paths, on a machine without a GPU.

Code under review: every CUDA/GPU branch — FAISS on the GPU (``ranking/faiss_ops.py``:
``gpu_available``, ``build_index(use_gpu=True)``, ``to_gpu``; ``ranking/index_files.py``:
the published index's GPU copy and ``GPU_MAX_K``), CUDA embedding (``ranking/embed.py``:
``resolve_device``, the half-precision copy, ``_encode``), LoRA on CUDA
(``retrain/lora.py``: device placement, autocast, the measured step and the memory
budget), the settings that pick a device (``LITPULSE_DEVICE``, ``LITPULSE_USE_GPU``) and
``bench/gpu.py``. No GPU was lent: where a branch is device-agnostic the real code runs on
the CPU; where only a GPU library behaves differently, a stand-in of the THIRD-PARTY
object (a faiss GPU index, ``torch.cuda``, a sentence-transformers encoder on CUDA) is put
around our real code, and its docstring names the documented fact it enforces and where
that fact comes from. SQLite and PostgreSQL where the store is involved.

Attacked and held (no test kept): the default install imports no CUDA package (torch's CPU
build; ``faiss.get_num_gpus`` is 0 in faiss-cpu, so ``gpu_available`` is False and no GPU
branch runs); a GPU search asks for at most ``GPU_MAX_K`` = 2048 neighbours (FAISS's
``GPU_MAX_SELECTION_K``) and longer lists go to the CPU copy; an ``ivf_nprobe`` over 2048
makes ``index_cpu_to_gpu`` throw (``GpuIndexIVF::copyFrom`` calls ``validateNProbe``),
which ``_load`` catches and logs, searching on the CPU; only CPU indexes are ever written
(``write_faiss``: the GPU build copies back with ``index_gpu_to_cpu`` before the direct map
is set), and removals go to the CPU master; a flat GPU index answers positions, mapped back
to PMIDs (``-1`` kept); autocast goes through ``torch.autocast``/``torch.amp`` (no
deprecated ``torch.cuda.amp``), training takes bf16 only (no GradScaler needed), the LoRA
weights stay fp32; every tensor of the loss (features, masks, labels) follows ``device``;
``bench/gpu.py`` without CUDA says so and exits 0, and with ``--cpu`` runs its rows.

Defects (each a strict xfail asserting the right behaviour until fixed):

X1 **Concurrent searches use the GPU index from several threads at once.** A published
   index copied to the GPU (``PublishedIndex._gpu``) is searched by whatever thread calls
   ``search``: the HTTP API's search route is a plain ``def``, run in Starlette's thread
   pool, so two requests search it at the same time. FAISS's wiki ("Threads and
   asynchronous calls"): "Faiss GPU indices are not thread-safe, even for read only
   functions. This is because StandardGpuResources for GPU Faiss is not thread-safe, as
   it manages a region of temporary memory on the GPU which can only have a single user
   at a time." The stand-in GPU index counts a second caller entering while one is
   inside. **Fixed**: ``PublishedIndex`` holds a lock for its GPU copy (``_gpu_lock``,
   shared by the copies ``dataclasses.replace`` makes when the lexical index reopens);
   GPU searches take turns, CPU searches (``k`` over 2048, no GPU) stay concurrent.

X2 **``LITPULSE_DEVICE=cuda`` where torch sees no CUDA device ends in a traceback.**
   ``litpulse search`` on this machine (torch's CPU build) prints torch's
   ``AssertionError: Torch not compiled with CUDA enabled`` with its stack, from deep in
   ``SentenceTransformer(...).to``; ``cuda:3`` on a host with one GPU would fail likewise
   later ("invalid device ordinal"). A GPU asked for and missing deserves one line
   naming the setting, what torch sees and what to do. **Fixed**:
   ``ranking.embed.resolve_device`` (the one home of the device rule: embedding, queries
   and training call it) raises ``ConfigError`` for ``cuda``/``cuda:N`` that torch does
   not see — a CPU build, no GPU visible, or ``N`` past ``torch.cuda.device_count()`` —
   naming the setting and the fix; the CLI prints it on one line and exits 2.

X3 **A CUDA out-of-memory error in an embedding batch kills the embedding.** A batch of
   ``LITPULSE_EMBED_BATCH_SIZE`` texts the card cannot hold (another process holding
   memory, long texts at a large batch) raises ``torch.OutOfMemoryError`` out of
   ``embed_texts`` (a traceback, the nightly's refresh lost), where a smaller batch fits.
   The stand-in encoder raises ``torch.OutOfMemoryError`` (torch's documented exception
   "raised when device is out of memory") for a batch over what its card holds, as
   sentence-transformers' ``encode`` on CUDA does. **Fixed**: ``ranking.embed._encode``
   (every article and query embedding goes through it) catches ``torch.OutOfMemoryError``,
   releases the cached blocks (``torch.cuda.empty_cache``) and halves the batch, keeping
   the size that fits for that encoder's later calls (``_FITS``); not even one text
   fitting is a ``BudgetError`` naming the device and what to do (the CLI: one line).

X4 **The measured training step on CUDA does not wait for the GPU.** ``_probe_step``
   times ``loss.backward()`` with ``time.perf_counter`` and no
   ``torch.cuda.synchronize``; CUDA kernels run asynchronously ("CUDA operations are
   asynchronous ... the time will be incorrect unless synchronize is called", torch's
   CUDA semantics notes), so the measured step leaves out the backward pass still
   queued on the GPU. The plan then holds far more steps than the budget runs: the
   learning rate decays over a plan the budget cuts, every run ``stopped_early``. The
   stand-in ``torch.cuda`` keeps a clock that only ``synchronize`` moves (the queued
   kernels finishing). **Fixed**: ``retrain.lora._synchronize`` (``torch.cuda.synchronize``
   on the training device, nothing on the CPU) before the measured step's clock starts
   (the warm-up's kernels done) and before it is read (its backward pass done); the
   steps after it read a loss each (``float(loss)``), which waits for the GPU already.

X5 **The memory budget on ``cuda:N`` reads device 0.** ``train_model`` and
   ``_probe_step`` call ``torch.cuda.reset_peak_memory_stats()`` and
   ``torch.cuda.max_memory_allocated()`` without a device: torch's documentation of both
   says they act on "the current device, given by current_device(), if device is None"
   — device 0 — while ``LITPULSE_DEVICE=cuda:1`` trains on device 1: the budget check
   (``max_memory_mb``) and ``peak_memory_mb`` read the wrong card. **Fixed**: the three
   calls in ``retrain/lora.py`` name the training ``device``.

X6 **Which device each stage uses, and why, is said nowhere a user looks.** ``litpulse
   status`` names neither the torch device (embedding, queries, training) nor where FAISS
   builds and searches; ``LITPULSE_USE_GPU=yes`` with the default install's faiss-cpu
   logs "FAISS sees no GPU" — blaming a GPU when the FAISS build is the cause — and falls
   back to the CPU, a fallback neither the setting's help nor the README mentions. The
   real faiss-cpu of this install is asked (no GPU entry points); the GPU host is the
   faiss stand-in above. **Fixed**: ``ranking.embed.device_report`` (beside
   ``resolve_device``, whose refusal it reports) and ``ranking.faiss_ops.faiss_device``
   (which ``gpu_available`` now decides by: a CPU build of FAISS is named as such, and
   ``yes`` without a GPU warns with that reason) give each device and why; ``litpulse
   status`` shows both (``devices``, also in ``--json``); the refresh logs whether it
   builds on the GPU, an opened index whether it searches there; the CPU fallback of
   ``LITPULSE_USE_GPU=yes`` is in its help and the README.

X7 **The HTTP API answers a missing CUDA device as the client's fault.** With X2's
   ``ConfigError`` (before it: a 500 and torch's traceback in the server log),
   ``GET /search`` on a server whose ``LITPULSE_DEVICE=cuda`` finds no CUDA device answers
   400 — the handler of ``ConfigError``, a request's bad input — for every query: the
   host's state, which no request can change (as an adapter gone answers 503, 35e).
   **Fixed**: ``resolve_device`` raises ``DeviceError`` (``litpulse.core.errors``, a
   ``ConfigError``: the CLI and callers catching that are unchanged), which the API
   answers 503 with its message.

X8 **A server that lives through a publish keeps the old version's GPU copy while it moves
   the new one there.** ``open_published`` loads the new version (``_load``, which copies
   it to the GPU) while the cache still holds the old one and its GPU copy: a card that
   holds one copy of the index (the full baseline's IVF lists: ~58 GB of 80) fails the
   second ``index_cpu_to_gpu`` with cudaMalloc's out of memory, and the new version is
   searched on the CPU for as long as it is published — every night's publish, one
   warning. The stand-in card holds one copy. **Fixed**: ``open_published`` releases the
   cached version's GPU copy (``PublishedIndex.release_gpu``, under its ``_gpu_lock``:
   a search on it finishes first) before it loads the new version; a search still
   holding the old version finds no GPU copy and answers from its CPU copy.
"""

from __future__ import annotations

import datetime as dt
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ingest.records import Record, SourceRef
from ingest.store import Store
from litpulse.core import db
from litpulse.core.errors import ConfigError, LitpulseError
from litpulse.core.settings import Settings
from tests.tiny_encoder import build_tiny_encoder

SRC = SourceRef("generated", "review37e")
#: FAISS's GPU_MAX_SELECTION_K (faiss/gpu/utils/DeviceDefs.cuh; 2048 since CUDA 9).
GPU_MAX_SELECTION_K = 2048


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_tiny_encoder(tmp_path_factory.mktemp("tiny-37e"), max_seq_length=32)


@pytest.fixture
def s(settings: Settings, tiny: str) -> Iterator[Settings]:
    from ranking import index_files
    from ranking.embed import clear_cache

    clear_cache()
    index_files._CACHE.clear()
    yield settings.replace(model=tiny, max_seq_length=32, search_server_url="")
    clear_cache()
    index_files._CACHE.clear()


def _seed(settings: Settings, n: int = 12) -> None:
    Store(db.connect(settings)).apply([
        Record(pmid=100 + i, version=1, title=f"Sepsis and interleukin {i} in adults",
               source=SRC, entrez_date=dt.date(2024, 1, 1 + i))
        for i in range(n)
    ])  # fmt: skip


# ------------------------------------------------------------------ faiss GPU stand-ins


class GpuIndexStandIn:
    """A faiss GPU index (what ``faiss.index_cpu_to_gpu`` returns), answering as the CPU
    index it was copied from, and enforcing what FAISS documents of GPU indexes:

    * ``k`` at most ``GPU_MAX_SELECTION_K`` (2048): ``GpuIndex::search`` calls
      ``validateKSelect`` (faiss/gpu/GpuIndex.cu), which throws above it;
    * one calling thread at a time: "Faiss GPU indices are not thread-safe, even for
      read only functions ... StandardGpuResources ... manages a region of temporary
      memory on the GPU which can only have a single user at a time" (FAISS wiki,
      Threads and asynchronous calls). A second caller entering while one is inside is
      counted in ``overlaps`` (on a GPU: corrupted scratch memory or a crash).

    ``hold`` makes the first caller stay inside until another caller arrives (or
    ``hold`` seconds pass): two threads that may overlap then do.
    """

    def __init__(self, cpu: Any) -> None:
        self.cpu = cpu
        self.d = cpu.d
        self.ntotal = cpu.ntotal
        self.nprobe = getattr(cpu, "nprobe", 1)
        self.overlaps = 0
        self.calls = 0
        self.hold = 0.0
        self._inside = threading.Lock()
        self._arrived = threading.Event()

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if k > GPU_MAX_SELECTION_K:
            raise RuntimeError(f"Error: 'k > 0 && k <= {GPU_MAX_SELECTION_K}' failed")
        if not self._inside.acquire(blocking=False):
            self.overlaps += 1
            self._arrived.set()
            return self._answer(q, k)
        try:
            self.calls += 1
            if self.hold and self.calls == 1:
                self._arrived.wait(self.hold)
            return self._answer(q, k)
        finally:
            self._inside.release()

    def _answer(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, labels = self.cpu.search(q, k)
        return scores, labels


class FakeGpuFaiss:
    """faiss's GPU entry points on a host with one GPU: ``get_num_gpus`` 1,
    ``StandardGpuResources``, ``index_cpu_to_gpu`` (a :class:`GpuIndexStandIn`; it throws
    for an IVF ``nprobe`` over 2048, as ``GpuIndexIVF::copyFrom``'s ``validateNProbe``
    does) and ``GpuParameterSpace``. A card holds ``capacity`` index copies: one more
    throws as FAISS's allocator does when ``cudaMalloc`` fails ("out of memory"); a copy
    holds its memory while a Python object refers to it (``made`` refers weakly)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, capacity: int = 1_000) -> None:
        import faiss

        self.made: list[weakref.ref[GpuIndexStandIn]] = []
        fake = self

        class Resources:
            pass

        class ParameterSpace:
            def set_index_parameter(self, index: Any, name: str, value: Any) -> None:
                if name == "nprobe" and value > GPU_MAX_SELECTION_K:
                    raise RuntimeError("nprobe over GPU_MAX_SELECTION_K")
                setattr(index, name, value)

        def to_gpu(_res: Any, _device: int, index: Any) -> GpuIndexStandIn:
            if getattr(index, "nprobe", 1) > GPU_MAX_SELECTION_K:
                raise RuntimeError("nprobe over GPU_MAX_SELECTION_K")
            if len(fake.live()) >= capacity:
                raise RuntimeError("Error in virtual void* faiss::gpu::StandardGpuResourcesImpl"
                                   "::allocMemory: cudaMalloc error 2 [out of memory]")
            gpu = GpuIndexStandIn(index)
            fake.made.append(weakref.ref(gpu))
            return gpu

        monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1, raising=False)
        monkeypatch.setattr(faiss, "StandardGpuResources", Resources, raising=False)
        monkeypatch.setattr(faiss, "GpuParameterSpace", ParameterSpace, raising=False)
        monkeypatch.setattr(faiss, "index_cpu_to_gpu", to_gpu, raising=False)

    def live(self) -> list[GpuIndexStandIn]:
        """The GPU copies still held (their memory on the card)."""
        return [gpu for ref in self.made if (gpu := ref()) is not None]


def test_x1_concurrent_searches_take_turns_on_the_gpu_index(
    s: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ranking.index_files import open_published
    from ranking.refresh import refresh_index

    _seed(s)
    assert refresh_index(s).published
    fake = FakeGpuFaiss(monkeypatch)
    index = open_published(s)
    assert index is not None and index.on_gpu and len(fake.live()) == 1
    gpu = fake.live()[0]
    gpu.hold = 3.0  # the first search stays on the GPU until a second one arrives
    q = np.asarray(index.reconstruct(100), dtype=np.float32)[None, :]
    results: list[Any] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            results.append(index.search(q, 5))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and len(results) == 2
    assert all(int(pmids[0, 0]) == 100 for _, pmids in results)
    assert gpu.overlaps == 0, "two threads were inside the GPU index at once"


def test_x8_a_publish_moves_the_new_version_to_the_gpu_in_place_of_the_old(
    s: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ranking.index_files import open_published
    from ranking.refresh import refresh_index

    _seed(s)
    assert refresh_index(s).published
    fake = FakeGpuFaiss(monkeypatch, capacity=1)
    old = open_published(s)
    assert old is not None and old.on_gpu
    q = np.asarray(old.reconstruct(100), dtype=np.float32)[None, :]
    Store(db.connect(s)).apply([
        Record(pmid=500 + i, version=1, title=f"Septic shock and lactate {i}", source=SRC,
               entrez_date=dt.date(2024, 2, 1 + i))
        for i in range(3)
    ])  # fmt: skip
    assert refresh_index(s).published
    new = open_published(s)
    assert new is not None and new.id != old.id
    assert new.on_gpu, "the new version is searched on the CPU"
    assert len(fake.live()) == 1
    # a search still holding the old version finishes, on the CPU copy it keeps
    assert int(old.search(q, 3)[1][0, 0]) == 100


# ----------------------------------------------------------------- a GPU asked for, none


def test_x2_cuda_asked_for_and_missing_is_one_clear_line(
    s: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    from litpulse.app.cli import main
    from ranking.refresh import refresh_index

    if torch.cuda.is_available():
        pytest.skip("torch sees a CUDA device here")
    _seed(s)
    assert refresh_index(s).published
    monkeypatch.setenv("LITPULSE_HOME", str(s.home))
    if s.database_url:
        monkeypatch.setenv("LITPULSE_DATABASE_URL", s.database_url)
    monkeypatch.setenv("LITPULSE_MODEL", s.model)
    monkeypatch.setenv("LITPULSE_MAX_SEQ_LENGTH", "32")
    monkeypatch.setenv("LITPULSE_DEVICE", "cuda")
    try:
        code = main(["search", "sepsis"])
    except AssertionError as exc:  # torch's "Torch not compiled with CUDA enabled"
        pytest.fail(f"a traceback: {exc!r}")
    err = capsys.readouterr().err
    assert code == 2, err
    assert "LITPULSE_DEVICE" in err and "CUDA" in err, err
    assert "Traceback" not in err


class CudaStandIn:
    """``torch.cuda`` of a host with ``count`` GPUs (``is_available``,
    ``device_count``): what a CUDA build of torch reports there."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, count: int = 1) -> None:
        import torch

        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_x2_a_gpu_number_past_the_gpus_is_refused(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    from ranking.embed import resolve_device

    CudaStandIn(monkeypatch, count=1)
    base = Settings.from_env({}, home=tmp_path / "home")
    assert resolve_device(base.replace(device="cuda:0")) == "cuda:0"
    assert resolve_device(base.replace(device="auto")) == "cuda"
    with pytest.raises(ConfigError, match=r"LITPULSE_DEVICE.*cuda:3.*1 CUDA device"):
        resolve_device(base.replace(device="cuda:3"))


def test_x7_the_api_answers_a_missing_cuda_device_as_the_servers_state(
    s: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch
    from fastapi.testclient import TestClient

    from litpulse.app.api import create_app
    from ranking.refresh import refresh_index

    if torch.cuda.is_available():
        pytest.skip("torch sees a CUDA device here")
    _seed(s)
    assert refresh_index(s).published
    with TestClient(create_app(s.replace(device="cuda")), raise_server_exceptions=False) as c:
        r = c.get("/search", params={"q": "sepsis"})
    assert r.status_code == 503, r.text
    assert "LITPULSE_DEVICE" in r.json()["detail"]


# ------------------------------------------------------------------- CUDA out of memory


class CudaEncoderStandIn:
    """A sentence-transformers encoder on ``cuda:0`` whose card holds ``fits`` texts a
    batch: ``encode`` raises ``torch.OutOfMemoryError`` (torch: "Exception raised when
    device is out of memory") for a larger batch, as the CUDA caching allocator does when
    a batch's activations do not fit; smaller batches encode (a vector per text)."""

    def __init__(self, fits: int) -> None:
        import torch

        self.device = torch.device("cuda", 0)
        self.fits = fits
        self.batches: list[int] = []

    def get_embedding_dimension(self) -> int:
        return 4

    def encode(self, texts: list[str], batch_size: int, **_: Any) -> np.ndarray:
        import torch

        self.batches.append(batch_size)
        if min(batch_size, len(texts)) > self.fits:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return np.asarray([[1.0, len(t), 0.5, 0.0] for t in texts], dtype=np.float32)


def test_x3_an_embedding_batch_the_card_cannot_hold_is_split(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import torch

    from ranking.embed import embed_texts

    freed: list[int] = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: freed.append(1))
    settings = Settings.from_env({}, home=tmp_path / "home").replace(
        embed_precision="fp32", embed_batch_size=64)
    encoder = CudaEncoderStandIn(fits=10)
    texts = [f"text number {i}" for i in range(100)]
    vectors = embed_texts(encoder, texts, settings)  # type: ignore[arg-type]
    assert vectors.shape == (100, 4)
    want = np.asarray([[1.0, len(t), 0.5, 0.0] for t in texts], dtype=np.float32)
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    assert np.allclose(vectors, want)
    assert encoder.batches[0] == 64 and encoder.batches[-1] <= 10
    assert freed, "the cached blocks of the failed batch were not released"
    # a card that holds not even one text: one clear error, not torch's
    with pytest.raises(LitpulseError, match="out of memory"):
        embed_texts(CudaEncoderStandIn(fits=0), texts[:3], settings)  # type: ignore[arg-type]


# ------------------------------------------------------------------- LoRA on CUDA


class TrainingCudaStandIn:
    """A CUDA device for the training loop, the kernels run on the CPU underneath:

    * ``Tensor.to("cuda…")`` keeps the tensor where it is (the model is on the CPU);
    * ``torch.cuda.synchronize`` waits for the queued kernels: the clock
      (``time.perf_counter``) moves by ``kernel_s`` there and nowhere else — CUDA calls
      return before their kernels finish ("By default, GPU operations are asynchronous
      ... the time will be incorrect unless synchronize is called", torch's CUDA
      semantics notes);
    * ``reset_peak_memory_stats`` / ``max_memory_allocated`` record the device they are
      asked about: torch documents that ``device=None`` means "the current device, given
      by current_device()", which is device 0 here.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, kernel_s: float = 1.0) -> None:
        import time

        import torch

        self.now = 1000.0
        self.kernel_s = kernel_s
        self.syncs = 0
        self.memory_devices: list[Any] = []
        real_to = torch.Tensor.to

        def to(tensor: Any, *args: Any, **kwargs: Any) -> Any:
            where = args[0] if args else kwargs.get("device")
            if isinstance(where, (str, torch.device)) and str(where).startswith("cuda"):
                return tensor
            return real_to(tensor, *args, **kwargs)

        def synchronize(device: Any = None) -> None:
            self.syncs += 1
            self.now += self.kernel_s

        def reset(device: Any = None) -> None:
            self.memory_devices.append(device)

        def peak(device: Any = None) -> int:
            self.memory_devices.append(device)
            return 64 * 1024 * 1024

        monkeypatch.setattr(torch.Tensor, "to", to)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
        monkeypatch.setattr(torch.cuda, "synchronize", synchronize)
        monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", reset)
        monkeypatch.setattr(torch.cuda, "max_memory_allocated", peak)
        monkeypatch.setattr(time, "perf_counter", lambda: self.now)


def _training(tiny: str, tmp_path: Path) -> tuple[Any, Any, list[Any], Any]:
    from retrain.lora import LoraOptions, build_model
    from retrain.pairs import Pair

    settings = Settings.from_env({}, home=tmp_path / "home").replace(
        model=tiny, device="cpu", seed=1)
    options = LoraOptions(batch_size=2, max_seq_length=16, warmup_steps=0, max_seconds=3.0,
                          precision="fp32", false_negative_ratio=0.0)
    pairs = [Pair(f"anchor {i}", f"positive text {i} about sepsis", "title_abstract", i)
             for i in range(16)]
    model, trainable = build_model(settings, options)
    return model, trainable, pairs, options


def test_x4_the_measured_step_waits_for_the_gpu(
    tiny: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from retrain.lora import train_model

    model, trainable, pairs, options = _training(tiny, tmp_path)
    cuda = TrainingCudaStandIn(monkeypatch, kernel_s=1.0)
    stats = train_model(model, trainable, pairs, options, device="cuda", seed=1)
    # 8 batches of 2 fit the cap; a step takes 1 s on the GPU and the budget is 3 s: the
    # warm-up and the measured step spend 2 s of it, so the plan is 1-2 steps, not 8
    assert cuda.syncs >= 2
    assert stats["first_planned_steps"] <= 2, stats


def test_x5_the_memory_budget_reads_the_training_card(
    tiny: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from retrain.lora import train_model

    model, trainable, pairs, options = _training(tiny, tmp_path)
    cuda = TrainingCudaStandIn(monkeypatch, kernel_s=0.01)
    train_model(model, trainable, pairs, options.replace(max_seconds=600.0, max_steps=2),
                device="cuda:1", seed=1)
    assert cuda.memory_devices, "no memory statistic was read"
    assert all(d is not None and torch.device(d) == torch.device("cuda", 1)
               for d in cuda.memory_devices), cuda.memory_devices


# ------------------------------------------------------------------- devices, said


def _status(s: Settings, monkeypatch: pytest.MonkeyPatch,
            capsys: pytest.CaptureFixture[str], **env: str) -> dict[str, Any]:
    import json

    from litpulse.app.cli import main

    monkeypatch.setenv("LITPULSE_HOME", str(s.home))
    if s.database_url:
        monkeypatch.setenv("LITPULSE_DATABASE_URL", s.database_url)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    capsys.readouterr()
    assert main(["status", "--json"]) == 0
    return dict(json.loads(capsys.readouterr().out))


def test_x6_status_says_which_device_each_stage_uses_and_why(
    s: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    import faiss
    import torch

    from ranking.faiss_ops import gpu_available

    if torch.cuda.is_available() or hasattr(faiss, "StandardGpuResources"):
        pytest.skip("a CUDA torch or a GPU FAISS is installed here")
    devices = _status(s, monkeypatch, capsys)["devices"]
    assert devices["torch"]["device"] == "cpu"
    assert "LITPULSE_DEVICE=auto" in devices["torch"]["why"]
    assert "CUDA" in devices["torch"]["why"]
    assert devices["faiss"]["device"] == "cpu"
    assert "CPU build" in devices["faiss"]["why"] and "gpu" in devices["faiss"]["why"]
    # a CUDA device asked for and missing: the status says so instead of failing
    devices = _status(s, monkeypatch, capsys, LITPULSE_DEVICE="cuda")["devices"]
    assert devices["torch"]["device"] is None and "CPU build" in devices["torch"]["why"]
    # LITPULSE_USE_GPU=yes with faiss-cpu: the warning names the build, not a missing GPU
    with caplog.at_level("WARNING", logger="ranking.faiss_ops"):
        assert not gpu_available(s.replace(use_gpu="yes"))
    assert "CPU build" in caplog.text and "sees no GPU" not in caplog.text
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    row = next(line for line in readme.splitlines() if line.startswith("| `LITPULSE_USE_GPU`"))
    assert "CPU" in row, row  # the fallback documented
    # a GPU host (the faiss stand-in): FAISS on the GPU, and why
    FakeGpuFaiss(monkeypatch)
    monkeypatch.setattr(faiss, "StandardGpuResources", object, raising=False)
    devices = _status(s, monkeypatch, capsys)["devices"]
    assert devices["faiss"]["device"] == "gpu" and "1 GPU" in devices["faiss"]["why"]
