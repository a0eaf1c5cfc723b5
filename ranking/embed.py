"""Article and query embeddings with sentence-transformers, per model version.

A model version is a base sentence-transformers model plus, optionally, a LoRA adapter
(:class:`ModelSpec`). Article text is ``title + "\\n" + abstract`` (the title alone when
there is no abstract): a newline keeps the two apart without inventing punctuation, and
the tokenizer treats it as whitespace. Vectors are float32, L2-normalised, stored
little-endian in the ``embeddings`` table keyed by (PMID, model version) together with
the article's ``text_hash``, so :func:`embed_pending` only touches new or changed text.

Speed: an inference encoder (:func:`load_encoder` with ``merge=True``) is a copy of the
model in a half type where the hardware does it natively (bf16 weights and autocast on
CPUs with AVX512-BF16/AMX, fp16 on CUDA), run under ``torch.inference_mode``; the half
copy is kept only when probe texts keep cosine >= 0.99 to the fp32 vectors
(``LITPULSE_EMBED_PRECISION`` forces a choice). sentence-transformers already sorts each
call's texts by length, so batches carry little padding. Dynamic int8 quantisation of
the Linear layers was tried and rejected (min cosine 0.89). bench/embed.py measures the
speed-up against a plain fp32 ``encode`` side by side: 2.65x the docs/s (40.2 vs 15.2,
256 generated abstracts, 90% over 256 tokens, 2 cores with AMX), min cosine 0.99991.

Example:
    >>> spec = active_model(settings, engine)  # doctest: +SKIP
    >>> n = embed_pending(settings, spec)  # doctest: +SKIP
    >>> encode_query(settings, spec, "statins and dementia risk").shape  # doctest: +SKIP
    (1, 384)
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import logging
import os
import re
import sys
import threading
import unicodedata
import warnings
import weakref
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import Connection, Engine, and_, delete, func, or_, select, update

from litpulse.core import db
from litpulse.core.checksums import file_sha256
from litpulse.core.errors import (
    BudgetError,
    ConfigError,
    ConsistencyError,
    DeviceError,
    NotFoundError,
)
from litpulse.core.schema import articles, checkpoints, embeddings, model_versions
from litpulse.core.settings import DEFAULT_MODEL, Settings, default_model_path, env_name
from litpulse.core.states import Device, Precision
from ranking.models import active_model_row, newest_index_row, published_index_row

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from sentence_transformers import SentenceTransformer

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "BASE_MODEL_ID",
    "FINGERPRINT_SCOPE",
    "quiet_model_loading",
    "ModelSpec",
    "active_model",
    "adapter_problem",
    "base_missing",
    "base_model_name",
    "adapter_refusal",
    "adapters_dir",
    "relocate_adapters",
    "version_base_path",
    "article_text",
    "query_text",
    "WEIGHTS_HASH",
    "base_fingerprint",
    "base_model_changed",
    "base_record",
    "base_records",
    "precision_name",
    "profile_change",
    "profile_changed",
    "spec_record",
    "check_stored_base",
    "claim_first_embedding",
    "clear_rebuild",
    "legacy_base_record",
    "first_embedding",
    "mark_rebuild",
    "rebuild_changed",
    "rebuild_record",
    "stored_base_changed",
    "embed_pending",
    "embed_texts",
    "encode_query",
    "load_encoder",
    "device_report",
    "model_spec",
    "resolve_device",
    "vector_from_bytes",
    "vector_to_bytes",
]

logger = logging.getLogger(__name__)
#: The file peft saves a LoRA adapter's weights in (its recorded SHA-256 is of this file).
ADAPTER_WEIGHTS = "adapter_model.safetensors"
#: File name of the config peft reads beside the weights (rank, alpha, target modules).
ADAPTER_CONFIG = "adapter_config.json"

#: Model version id of the base model without an adapter.
BASE_MODEL_ID = "base"
#: Smallest cosine to fp32 a half-precision vector may have (per vector).
MIN_COSINE = 0.99
#: Articles read, embedded and written per database round trip.
CHUNK = 1024
#: ``checkpoints`` scope of an embedding rebuild under way (:func:`rebuild_record`).
REBUILD_SCOPE = "embedding-rebuild"

_PROBES = (
    "Statins and the risk of dementia.",
    "Randomised controlled trial of a CRISPR-based gene therapy for sickle cell disease\n"
    "Background: Sickle cell disease causes vaso-occlusive crises. Methods: We enrolled 45 "
    "patients and measured fetal haemoglobin (HbF) at 12 months. Results: HbF rose to 40% "
    "(p < 0.001); no serious adverse events were attributed to the therapy.",
    "SARS-CoV-2 spike protein binding to ACE2 receptor, cryo-EM structure at 2.9 Å.",
)


@dataclass(frozen=True)
class ModelSpec:
    """One model version: a base sentence-transformers model and an optional adapter.

    Attributes:
        id: Model version id (``"base"`` for the bare base model).
        base_model: Local path of the base sentence-transformers model.
        adapter_path: Folder of a peft LoRA adapter for the base model, or ``None``.
        adapter_sha256: Its weights' recorded SHA-256 (``None``: not checked).
        max_seq_length: Where its texts are cut, in tokens (``LITPULSE_MAX_SEQ_LENGTH``
            when the spec is made from settings; ``None``: not compared). Vectors cut at
            another length are other vectors: an index records it (:func:`base_record`)
            and a change is refused like a change of base model (:func:`profile_change`).
    """

    id: str
    base_model: str
    adapter_path: str | None = None
    #: The SHA-256 of the adapter's weights recorded when the version was registered:
    #: weights changed on disk since are refused when the model is loaded.
    adapter_sha256: str | None = None
    #: not part of which model version it is (equality, hash): the encoder cache keys
    #: the sequence length apart (:func:`load_encoder`)
    max_seq_length: int | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not self.id or len(self.id) > 64:
            raise ConfigError(f"`id` must be 1-64 characters, got {self.id!r}")
        if not self.base_model:
            raise ConfigError("`base_model` must be a model path")
        if self.adapter_path == "":
            object.__setattr__(self, "adapter_path", None)


#: The files of a sentence-transformers folder that say which model it is (small ones).
_IDENTITY_FILES = ("config.json", "modules.json", "sentence_bert_config.json",
                   "config_sentence_transformers.json", "tokenizer.json")
#: Weight files: their bytes (a SHA-1 of each) enter the fingerprint.
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
#: How the weights enter a fingerprint recorded in an index version's meta
#: (``base_model.weights``); a record without it hashed only their sizes (before 2026-12).
WEIGHTS_HASH = "sha1"
#: Bytes read per call while hashing a weight file.
_HASH_BLOCK = 1 << 20
#: What a fingerprint recorded now covers (``base_model.scope``): the files of the module
#: folders ``modules.json`` names too (``1_Pooling/config.json``, a ``2_Dense`` layer, a
#: transformer kept in ``0_Transformer/``), so a pooling or dense layer changed in place is
#: another model. A record without it covered the folder's top-level files only.
FINGERPRINT_SCOPE = "modules"


def base_fingerprint(base_model: str, *, legacy: bool = False, modules: bool = True) -> str:
    """Which base model a path holds: SHA-1 (12 hex) of its identity files and of the
    SHA-1 of its weight files' bytes — the same for a copy of the model elsewhere (or the
    same model saved again by another library version), different for another model of
    the same shape (a fine-tuned checkpoint, a folder replaced in place). A path that is
    not a folder is fingerprinted by its name. Each weight file is hashed once per state
    of the file (path, size, mtime, ctime, inode) in a process: the bundled MiniLM's
    whole fingerprint takes 0.14-0.21 s the first time (its 87 MiB of weights ~0.07-0.12 s
    of that, about 1 s per GiB from the page cache), 0.2 ms when asked again.

    ``legacy``: the fingerprint as recorded before the weights' bytes were hashed (their
    sizes only, top-level files only), which :func:`base_model_changed` recognises in
    records made then. ``modules=False``: as recorded before the module folders were
    hashed (:data:`FINGERPRINT_SCOPE`).
    """
    folder = Path(base_model)
    if not folder.is_dir():
        return _fingerprint(f"name:{base_model}", None, legacy=legacy)
    return _fingerprint(str(folder), _stats(folder, modules and not legacy), legacy=legacy)


def _stats(folder: Path, modules: bool) -> tuple[tuple[str, int, int, int, int], ...]:
    names = [*_IDENTITY_FILES, *_WEIGHT_FILES]
    if modules:
        names += _module_files(folder)
    return tuple(
        (name, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
        for name in names
        if (f := folder / name).is_file() and (st := f.stat())
    )


def _module_files(folder: Path) -> list[str]:
    """The files of the module folders ``modules.json`` names (their JSON and weight
    files, by path relative to ``folder``), in its order."""
    import json

    try:
        listed = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    out: list[str] = []
    for module in listed if isinstance(listed, list) else []:
        sub = str(module.get("path") or "") if isinstance(module, dict) else ""
        where = folder / sub
        if not sub or not where.is_dir() or folder.resolve() not in where.resolve().parents:
            continue
        for f in sorted(where.iterdir()):
            if f.is_file() and (f.suffix == ".json" or f.name in _WEIGHT_FILES):
                out.append(f"{sub}/{f.name}")
    return out


@functools.lru_cache(maxsize=16)
def _fingerprint(where: str, stats: tuple[tuple[str, int, int, int, int], ...] | None,
                 *, legacy: bool) -> str:
    import hashlib

    h = hashlib.sha1()
    if stats is None:  # not a folder: its name
        h.update(where.encode())
        return h.hexdigest()[:12]
    for name, size, mtime, ctime, inode in stats:
        if name.rsplit("/", 1)[-1] not in _WEIGHT_FILES:
            h.update(name.encode() + b"\0" + _identity_bytes(Path(where) / name))
        elif legacy:
            h.update(f"{name}:{size}".encode())
        else:
            real = str((Path(where) / name).resolve())
            digest = _file_sha1(real, size, mtime, ctime, inode)
            h.update(f"{name}:{size}:{digest}".encode())
    return h.hexdigest()[:12]


@functools.lru_cache(maxsize=32)
def _file_sha1(path: str, size: int, mtime_ns: int, ctime_ns: int, inode: int) -> str:
    """SHA-1 of a file's bytes, once per state of the file (the arguments after ``path``
    are only the cache key: a symlinked copy of a model shares its weights' hash)."""
    import hashlib

    h = hashlib.sha1()
    with open(path, "rb") as fh:
        while block := fh.read(_HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


def base_record(
    base_model: str, *, max_seq_length: int | None = None, precision: str | None = None
) -> dict[str, Any]:
    """What an index version's meta records of the model its vectors come from: the base
    model, and where texts were cut (``max_seq_length``) and in which precision the
    encoder ran (``precision``: ``fp32``, ``bf16``, ``fp16``), when known."""
    out: dict[str, Any] = {"path": base_model, "fingerprint": base_fingerprint(base_model),
                           "weights": WEIGHTS_HASH, "scope": FINGERPRINT_SCOPE}
    if max_seq_length is not None:
        out["max_seq_length"] = int(max_seq_length)
    if precision is not None:
        out["precision"] = precision
    return out


def spec_record(spec: ModelSpec, settings: Settings | None = None) -> dict[str, Any]:
    """:func:`base_record` of ``spec``: its base model and sequence length, and the
    precision of the encoder this process holds for it (when it holds one)."""
    precision = None
    if settings is not None and (encoder := cached_encoder(spec, settings)) is not None:
        precision = precision_name(_PRECISION.get(encoder))
    return base_record(spec.base_model, max_seq_length=spec.max_seq_length, precision=precision)


def precision_name(dtype: Any) -> str:
    """``fp32``, ``bf16`` or ``fp16`` for an encoder's autocast dtype (``None``: fp32)."""
    name = str(dtype or "float32").rsplit(".", 1)[-1]
    return {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(name, name)


def profile_change(record: dict[str, Any], spec: ModelSpec) -> tuple[str, Any, Any] | None:
    """The setting that makes ``spec``'s vectors differ from those ``record``
    (:func:`base_record`) describes, as ``(setting, recorded, now)``, or ``None``. The
    base model first (``LITPULSE_MODEL``), then the sequence length
    (``LITPULSE_MAX_SEQ_LENGTH``, where both record it). The precision is not one: a half
    type is used only when its vectors keep cosine >= ``MIN_COSINE`` to fp32's."""
    if base_model_changed({"base_model": record}, spec) is not None:
        return ("LITPULSE_MODEL", record.get("path"), spec.base_model)
    return _seq_change(record, spec)


def _seq_change(record: dict[str, Any], spec: ModelSpec) -> tuple[str, Any, Any] | None:
    """:func:`profile_change` of the sequence length alone."""
    seq = record.get("max_seq_length")
    if seq is not None and spec.max_seq_length is not None and int(seq) != spec.max_seq_length:
        return ("LITPULSE_MAX_SEQ_LENGTH", int(seq), spec.max_seq_length)
    return None


def profile_changed(details: Any, spec: ModelSpec) -> str | None:
    """Why an index version's vectors (``details``: its meta) are not what ``spec`` gives
    now, or ``None``: :func:`base_model_changed`, or a sequence length other than the one
    recorded (:func:`profile_change`)."""
    changed = base_model_changed(details, spec)
    if changed is not None:
        return changed
    change = _seq_change((details or {}).get("base_model") or {}, spec)
    if change is None:
        return None
    _, was, now = change
    return (
        f"LITPULSE_MAX_SEQ_LENGTH is {now}, but this index's vectors cut their texts at {was} "
        f"tokens: set LITPULSE_MAX_SEQ_LENGTH back to {was}, or run `litpulse index refresh "
        f"--rebuild` to embed every article at {now}"
    )


def legacy_base_record(details: Any) -> bool:
    """Whether an index version's record of its base model predates the fingerprint made
    now: :data:`WEIGHTS_HASH` (it hashed the weights' sizes only) or
    :data:`FINGERPRINT_SCOPE` (it hashed the top-level files only)."""
    record = (details or {}).get("base_model") or {}
    return bool(record.get("fingerprint")) and (
        record.get("weights") != WEIGHTS_HASH or record.get("scope") != FINGERPRINT_SCOPE
    )


def _older_fingerprint(record: dict[str, Any], base_model: str) -> str | None:
    """The fingerprint of ``base_model`` made as ``record``'s was, when that was an older
    way (:func:`legacy_base_record`), else ``None``."""
    if record.get("weights") != WEIGHTS_HASH:
        return base_fingerprint(base_model, legacy=True)
    if record.get("scope") != FINGERPRINT_SCOPE:
        return base_fingerprint(base_model, modules=False)
    return None


#: Keys of a model's JSON files that say which library saved it, not which model it is.
_VOLATILE_KEYS = frozenset({"transformers_version", "_name_or_path", "__version__"})


def _identity_bytes(path: Path) -> bytes:
    """A JSON file without its volatile keys, canonical (a model saved again by another
    library version keeps its fingerprint); other files as they are."""
    import json

    raw = path.read_bytes()
    try:
        data = json.loads(raw)
    except ValueError:
        return raw
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k not in _VOLATILE_KEYS}
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def _missing_model(was: str, recorded: str, base_model: str) -> str | None:
    """Why the base model is not there, where the index was built with a model folder
    (its fingerprint is not of a name) and ``base_model`` — the same path, or another
    absolute one — is no folder now (a disk not mounted, a cache cleaned, a typo): not a
    change of model, and not one a rebuild can cure (it needs the model). ``None`` for
    anything else (a model name, a folder holding another model)."""
    if Path(base_model).is_dir() or recorded == _fingerprint(f"name:{was}", None, legacy=False):
        return None
    if base_model != was and not Path(base_model).is_absolute():
        return None  # a model name (a hub id): another model, not a missing folder
    where = ("" if base_model == was
             else f"; this index was built with the model in {was}")
    return (
        f"the base model is missing: {base_model} (LITPULSE_MODEL) holds no model folder "
        f"now{where}; restore the model there, or point LITPULSE_MODEL at a copy of it "
        "(the index's vectors are of that model: searching needs it to embed the query)"
    )


def base_model_changed(details: Any, spec: ModelSpec) -> str | None:
    """Why an index version's vectors are not of ``spec``'s base model any more (its
    ``meta.json`` records the base model it was built with), or ``None``. Versions made
    before the record was kept are taken as they are; a record made before the weights'
    bytes were hashed (:func:`legacy_base_record`) is taken when the identity files and
    the weights' sizes match (all it can tell: a refresh then records the full fingerprint,
    :func:`ranking.refresh.refresh_index`, without embedding anything again)."""
    record = (details or {}).get("base_model") or {}
    recorded = record.get("fingerprint")
    if not recorded or recorded == base_fingerprint(spec.base_model):
        return None
    if legacy_base_record(details) and recorded == _older_fingerprint(record, spec.base_model):
        return None
    was = record.get("path")
    missing = _missing_model(str(was or ""), str(recorded), spec.base_model)
    if missing is not None:
        return missing
    return (
        f"the base model changed since this index was built ({was} -> {spec.base_model}, "
        "LITPULSE_MODEL): its vectors and the stored embeddings are of the old model; "
        "`litpulse index refresh --rebuild` re-embeds every article with the new one"
    )


def base_records(engine: Engine, spec: ModelSpec) -> list[Any]:
    """The ``index_versions`` rows that say which base model ``spec``'s stored vectors
    are of: the published one when it is ``spec``'s, and the one of ``spec`` built last
    (a kept version a rollback re-publishes, or one whose files are gone)."""
    published = published_index_row(engine)
    rows = [published] if published is not None and published.model_version == spec.id else []
    newest = newest_index_row(engine, spec.id)
    if newest is not None and all(r.id != newest.id for r in rows):
        rows.append(newest)
    return rows


def rebuild_record(bind: Engine | Connection, model_version: str) -> dict[str, Any] | None:
    """The base model (:func:`base_record`) an embedding rebuild of ``model_version``
    writes the vectors of, or ``None`` when no rebuild is under way.

    A rebuild (``litpulse index refresh --rebuild`` after ``LITPULSE_MODEL`` changed) drops
    the stored vectors of the model version and records this in the same transaction
    (:func:`mark_rebuild`); publishing an index of that base model removes the record
    (:func:`clear_rebuild`). While it stands, the stored vectors of the model version are
    of that base model, whatever its index versions record: a rebuild cut short (killed,
    OOM) is resumed by the next refresh or embedding with that model (the nightly's too),
    and refused with another (:func:`rebuild_changed`). A model version's first embedding
    is recorded the same way, with ``first`` set (:func:`claim_first_embedding`).
    """
    query = select(checkpoints.c.value).where(checkpoints.c.scope == REBUILD_SCOPE,
                                              checkpoints.c.key == model_version)
    if isinstance(bind, Connection):
        value = bind.execute(query).scalar()
    else:
        with bind.connect() as conn:
            value = conn.execute(query).scalar()
    return dict(value) if value else None


def mark_rebuild(conn: Connection, spec: ModelSpec) -> None:
    """Record, inside the transaction that drops the stored vectors of ``spec``, that
    they are rebuilt with its base model (:func:`rebuild_record`)."""
    db.upsert(conn, checkpoints, [_rebuild_row(conn, spec)], keys=("scope", "key"))


def _rebuild_row(conn: Connection, spec: ModelSpec, **extra: Any) -> dict[str, Any]:
    """The ``checkpoints`` row of :func:`rebuild_record` for ``spec``'s base model."""
    return {"scope": REBUILD_SCOPE, "key": spec.id, "status": "running",
            "value": {**spec_record(spec), **extra}, "updated_at": db.db_now(conn)}


def first_embedding(engine: Engine, spec: ModelSpec) -> bool:
    """Whether embedding for ``spec`` now is its first: no vector of it is stored, no
    index version of it was built and no rebuild is under way. Its vectors then say
    which base model they are of only through :func:`claim_first_embedding`."""
    if rebuild_record(engine, spec.id) is not None or newest_index_row(engine, spec.id):
        return False
    with engine.connect() as conn:
        return conn.execute(
            select(embeddings.c.pmid).where(embeddings.c.model_version == spec.id).limit(1)
        ).first() is None


def claim_first_embedding(conn: Connection, spec: ModelSpec) -> None:
    """Inside the transaction that stores vectors of ``spec``'s first embedding
    (:func:`first_embedding`), record that they are of its base model, as a rebuild does
    (:func:`rebuild_record`, ``first``: nothing was dropped), until an index of it is
    published (:func:`clear_rebuild`). A first embedding cut short (hours in, at full
    size) is then resumed only with that model, never finished with another beside it.

    Raises:
        ConsistencyError: Another embedding recorded another base model meanwhile (a
            worker with another ``LITPULSE_MODEL``): nothing of this one is stored.
    """
    db.upsert(conn, checkpoints, [_rebuild_row(conn, spec, first=True)], keys=("scope", "key"),
              update=())
    record = rebuild_record(conn, spec.id)
    changed = rebuild_changed(record, spec) if record is not None else None
    if changed is not None:
        raise ConsistencyError(f"not embedding for model {spec.id} with {spec.base_model}: "
                               f"{changed}")


def clear_rebuild(conn: Connection, model_version: str) -> None:
    """Remove the rebuild record of ``model_version`` (inside the transaction that
    publishes an index of its base model)."""
    conn.execute(delete(checkpoints).where(checkpoints.c.scope == REBUILD_SCOPE,
                                           checkpoints.c.key == model_version))


def rebuild_changed(record: dict[str, Any], spec: ModelSpec) -> str | None:
    """Why the vectors a rebuild cut short stored (``record``: :func:`rebuild_record`)
    are not of ``spec``'s base model as configured now, or ``None`` (resume it)."""
    change = profile_change(record, spec)
    if change is None:
        return None
    setting, was, now = change
    if setting != "LITPULSE_MODEL":
        what = ("the first embedding" if record.get("first") else "an embedding rebuild")
        return (
            f"{what} of model {spec.id} is not finished: its stored vectors cut their texts "
            f"at {was} tokens, and {setting} is {now}: set {setting} back to {was} and run "
            f"`litpulse index refresh` to finish it (the vectors embedded are kept), or run "
            f"`litpulse index refresh --rebuild` to embed every article at {now}"
        )
    if record.get("first"):
        return (
            f"the first embedding of model {spec.id} (no index of it is published yet) is "
            f"not finished: its stored vectors are of {was}, not of {spec.base_model} "
            f"(LITPULSE_MODEL): set LITPULSE_MODEL back to {was} and run `litpulse index "
            "refresh` to finish it (the vectors embedded are kept), or run `litpulse index "
            f"refresh --rebuild` to embed every article with {spec.base_model}"
        )
    return (
        f"an embedding rebuild of model {spec.id} with {was} was cut short: the stored "
        f"vectors of {spec.id} are of that model, not of {spec.base_model} (LITPULSE_MODEL): "
        f"set LITPULSE_MODEL back to {was} and run `litpulse index refresh` to finish the "
        "rebuild (the vectors embedded are kept), or run `litpulse index refresh --rebuild` "
        f"to embed every article with {spec.base_model}"
    )


def stored_base_changed(engine: Engine, spec: ModelSpec) -> str | None:
    """Why the stored vectors of ``spec`` are of another base model than ``spec``'s as
    configured now (``LITPULSE_MODEL``), or ``None``: the rebuild under way says which
    (:func:`rebuild_record`), else the index versions of ``spec``
    (:func:`base_records`) do."""
    record = rebuild_record(engine, spec.id)
    if record is not None:
        return rebuild_changed(record, spec)
    for row in base_records(engine, spec):
        changed = profile_changed(row.details, spec)
        if changed is not None:
            return f"index version {row.id} of model {spec.id}: {changed}"
    return None


def check_stored_base(engine: Engine, spec: ModelSpec) -> None:
    """Refuse to embed for ``spec`` beside vectors of another base model.

    When the index versions of ``spec`` were built with another base model
    (:func:`stored_base_changed`) and vectors of ``spec`` are stored, those vectors are of
    that model: new ones of this model would be stored beside them, under the same model
    version and with current text hashes, and a later refresh (with ``LITPULSE_MODEL``
    set back, say) would publish an index mixing the two. With no vector of ``spec``
    stored (an embedding rebuild dropped them) there is nothing to mix with.

    Raises:
        ConsistencyError: The base model changed and vectors of the old one are stored.
    """
    changed = stored_base_changed(engine, spec)
    if changed is None:
        return
    with engine.connect() as conn:
        stored = conn.execute(
            select(embeddings.c.pmid).where(embeddings.c.model_version == spec.id).limit(1)
        ).first()
    if stored is not None:
        raise ConsistencyError(
            f"not embedding for model {spec.id} with {spec.base_model}: {changed}")


def base_model_name(settings: Settings) -> str:
    """What a model version records as its ``base_model``: the configured path, or the
    bundled model's name."""
    return settings.model or DEFAULT_MODEL


def version_base_path(settings: Settings, base_model: str | None) -> str:
    """The folder of the base model a version was trained on: the bundled model for its
    name (what ``base_model`` records when no ``LITPULSE_MODEL`` was set) whatever
    ``LITPULSE_MODEL`` says now — an adapter put on another base would serve another
    model without a word — the configured one for the base model itself."""
    if not base_model or base_model == BASE_MODEL_ID:
        return settings.model_path
    if base_model == DEFAULT_MODEL or (
        base_model.startswith("sentence-transformers/") and base_model.endswith(DEFAULT_MODEL)
    ):
        return settings.model_path if not settings.model else default_model_path()
    return base_model


def _spec_from_row(settings: Settings, row: Any, engine: Engine) -> ModelSpec:
    base = version_base_path(settings, row.base_model)
    if row.adapter_path:  # its base moved, or this host holds it elsewhere (_base_here)
        base = _base_here(settings, engine, row.id, base)
    sha = getattr(row, "adapter_sha256", None) or None
    return ModelSpec(row.id, base, row.adapter_path or None, sha, settings.max_seq_length)


def active_model(settings: Settings, engine: Engine | None = None) -> ModelSpec:
    """The model version searches and the index use now.

    The newest ``model_versions`` row with status ``active``; without one, the base
    model ``ModelSpec("base", settings.model_path, None)``.
    """
    engine = engine or db.connect(settings)
    row = active_model_row(engine)
    if row is None:
        return ModelSpec(BASE_MODEL_ID, settings.model_path, None,
                         max_seq_length=settings.max_seq_length)
    return _spec_from_row(settings, row, engine)


def model_spec(settings: Settings, model_version: str, engine: Engine | None = None) -> ModelSpec:
    """The :class:`ModelSpec` of a model version id (e.g. an index's ``model_version``).

    Raises:
        NotFoundError: No such model version.
    """
    if model_version == BASE_MODEL_ID:
        return ModelSpec(BASE_MODEL_ID, settings.model_path, None,
                         max_seq_length=settings.max_seq_length)
    engine = engine or db.connect(settings)
    with engine.connect() as conn:
        row = conn.execute(
            select(model_versions).where(model_versions.c.id == model_version)
        ).first()
    if row is None:
        raise NotFoundError(f"model version {model_version!r} does not exist")
    return _spec_from_row(settings, row, engine)


# ------------------------------------------------------------------------------ encoder


def resolve_device(settings: Settings) -> str:
    """``settings.device`` with ``auto`` resolved: ``cuda`` when torch sees a GPU, else cpu.

    The one home of this rule: retraining uses it too. Returns a :class:`Device` member,
    or the text of an explicit ``cuda:N``.

    Raises:
        DeviceError: A CUDA device is asked for (``cuda``, ``cuda:N``) that torch does not
            see (a ``ConfigError``; the API answers 503): a CPU build of torch, no GPU
            visible, or ``N`` past the GPUs there are (torch would fail later, deep in
            loading the model, with a traceback).
    """
    if settings.device == Device.CPU:
        return Device.CPU
    if settings.device == Device.AUTO and _unimported_cpu_torch():
        return Device.CPU  # a CPU build never sees a GPU: no torch import (seconds)
    import torch

    if settings.device == Device.AUTO:
        return Device.CUDA if torch.cuda.is_available() else Device.CPU
    count = int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    asked = f"{env_name('device')}={settings.device}"
    if count == 0:
        raise DeviceError(f"{asked}, but {_no_cuda()}: set {env_name('device')}=cpu (or "
                          "auto: the GPU when torch sees one), or run on a GPU host with "
                          "torch's CUDA build")
    number = int(settings.device.partition(":")[2] or 0)
    if number >= count:
        seen = "1 CUDA device (cuda:0)" if count == 1 else (
            f"{count} CUDA devices (cuda:0 to cuda:{count - 1})")
        raise DeviceError(f"{asked}, but torch sees {seen}: name one of them, or set "
                          f"{env_name('device')}=cuda")
    return settings.device


def _unimported_cpu_torch() -> bool:
    """Whether torch, not imported yet, is a CPU build, read from its ``torch/version.py``
    (``cuda = None``) without importing it: importing torch takes seconds, and
    ``litpulse status`` on a CPU host asks only this. ``False`` where torch is imported
    already (it is asked), or that file says anything else or cannot be read."""
    if "torch" in sys.modules:
        return False
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.origin:
        return False
    try:
        text = (Path(spec.origin).parent / "version.py").read_text(encoding="utf-8")
    except OSError:
        return False
    found = re.search(r"^cuda\s*(?::[^=\n]*)?=\s*(\S.*?)\s*$", text, re.MULTILINE)
    return found is not None and found.group(1) == "None"


def _no_cuda() -> str:
    """Why torch has no CUDA device here."""
    if _unimported_cpu_torch():
        return "this torch is a CPU build, without CUDA"
    import torch

    if torch.version.cuda is None:
        return "this torch is a CPU build, without CUDA"
    return ("torch sees no CUDA device (no GPU visible to this process, or its driver "
            "cannot be loaded)")


def device_report(settings: Settings) -> dict[str, str | None]:
    """Which torch device embedding, queries and training use (``device``; ``None``: the
    one asked for is missing, they refuse), and ``why``: the setting and what torch sees.
    ``litpulse status`` shows it."""
    setting = f"{env_name('device')}={settings.device}"
    try:
        device = resolve_device(settings)
    except DeviceError as exc:
        return {"device": None, "why": str(exc)}
    if settings.device != Device.AUTO:
        return {"device": str(device), "why": setting}
    if device == Device.CPU:
        return {"device": str(device), "why": f"{setting}: {_no_cuda()}"}
    import torch

    n = int(torch.cuda.device_count())
    return {"device": str(device), "why": f"{setting}: torch sees {n} CUDA device"
            f"{'s' if n > 1 else ''} ({torch.cuda.get_device_name(0)})"}


#: Encoders kept per process, newest last (:func:`load_encoder`).
ENCODER_CACHE = 3
_ENCODERS: OrderedDict[tuple[Any, ...], SentenceTransformer] = OrderedDict()
_PRECISION: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
_LOCK = threading.RLock()
#: One encode at a time per process: fast tokenizers are not safe across threads.
_ENCODE_LOCK = threading.Lock()
#: Query vectors by (model version, device, sequence length, text), newest last.
_QUERIES: OrderedDict[tuple[Any, ...], np.ndarray] = OrderedDict()


def quiet_model_loading() -> None:
    """Silence what model libraries print that a user can do nothing about.

    transformers' "Loading weights" bar (on every model load) and its FutureWarning that
    ``is_gradient_checkpointing`` is deprecated (peft reads that property when it wraps
    a model). Called by the functions that load models; idempotent.
    """
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    warnings.filterwarnings(
        "ignore",
        message=r"`is_gradient_checkpointing` is deprecated",
        category=FutureWarning,
        module=r"transformers\.modeling_utils",
    )


def load_encoder(
    spec: ModelSpec, settings: Settings, *, merge: bool = True, cache: bool = True
) -> SentenceTransformer:
    """Load the encoder of a model version (cached in-process per spec and device).

    Args:
        spec: The model version.
        settings: Device, sequence length and precision come from here.
        merge: An inference encoder: the LoRA adapter merged into the base weights, and
            the weights in a verified half type (see the module docstring). With ``False``
            the encoder stays fp32 and its transformer a peft ``PeftModel`` (training).
        cache: Reuse one encoder per (spec, device) in this process. Unmerged encoders
            are never cached. The :data:`ENCODER_CACHE` most recently used are kept: a
            server that lives through a promotion a night would otherwise hold every
            model version it ever served.

    Raises:
        ConsistencyError: The base model folder does not exist, or the version's adapter
            cannot serve (:func:`adapter_problem`: its folder or weights gone, its weights
            changed): the data directory's state, not the caller's input; the message
            names what repairs it.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    key = _encoder_key(spec, settings)
    device, seq = key[1], key[2]
    cache = cache and merge
    with _LOCK:
        if cache and key in _ENCODERS:
            _ENCODERS.move_to_end(key)
            return _ENCODERS[key]
        from sentence_transformers import SentenceTransformer

        quiet_model_loading()
        missing = base_missing(spec)
        if missing is not None:
            # the data directory's state (a disk not mounted, a cache cleaned), not the
            # caller's input: a saved search's query, a request, are not at fault
            raise ConsistencyError(missing)
        encoder = SentenceTransformer(spec.base_model, device=device)
        limit = _longest_input(encoder)
        if limit is not None and seq > limit:
            raise ConfigError(
                f"LITPULSE_MAX_SEQ_LENGTH={seq} is more than model {spec.id!r} "
                f"({spec.base_model}) takes: at most {limit} tokens"
            )
        encoder.max_seq_length = seq
        if spec.adapter_path:
            _apply_adapter(encoder, spec, merge=merge)
        encoder.eval()
        if merge:  # an inference encoder: take the fast half-precision copy when it is exact
            encoder = _fast_encoder(encoder, settings)
        if cache:
            _ENCODERS[key] = encoder
            if len(_ENCODERS) > ENCODER_CACHE:
                while len(_ENCODERS) > ENCODER_CACHE:
                    _ENCODERS.popitem(last=False)
                _release_frozen()
        logger.info("loaded encoder %s on %s, %d tokens (adapter: %s)", spec.id, device, seq,
                    spec.adapter_path)
        return encoder


def base_missing(spec: ModelSpec) -> str | None:
    """Why ``spec``'s base model cannot load because its folder is missing (what repairs
    it: a fine-tuned version's moved base is found at ``LITPULSE_MODEL`` by the next
    refresh, :func:`relocate_adapters`), or ``None``."""
    if os.path.isdir(spec.base_model):
        return None
    return (f"model {spec.id!r}: base model folder {spec.base_model!r} is missing: restore "
            "the model there, or point LITPULSE_MODEL at a copy of it")


def _encoder_key(spec: ModelSpec, settings: Settings) -> tuple[Any, ...]:
    """What tells one cached encoder from another: the model version, the device, the
    sequence length and the precision the settings ask for."""
    return (spec, resolve_device(settings), settings.max_seq_length, settings.embed_precision)


def _longest_input(encoder: SentenceTransformer) -> int | None:
    """The most tokens the encoder's transformer takes (its position embeddings, and its
    tokenizer's limit where it states a real one), or ``None`` when it does not say."""
    limits: list[int] = []
    module: Any = encoder[0]
    config = getattr(getattr(module, "auto_model", None), "config", None)
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        # RoBERTa-style models count the padding offset among their positions
        offset = (getattr(config, "pad_token_id", 0) or 0) + 1 if getattr(
            config, "model_type", "") in ("roberta", "xlm-roberta", "camembert") else 0
        limits.append(positions - offset)
    tokenizer = getattr(encoder, "tokenizer", None)
    stated = getattr(tokenizer, "model_max_length", None)
    if isinstance(stated, int) and 0 < stated < 1_000_000:
        limits.append(stated)
    return min(limits) if limits else None


def adapters_dir(settings: Settings) -> Path:
    """The folder holding one adapter folder per trained model version."""
    return settings.home / "adapters"


def relocate_adapters(settings: Settings, engine: Engine) -> list[str]:
    """Point model versions whose adapter folder is gone at the folder of the same name in
    this data directory's :func:`adapters_dir`, where it holds what was registered; and
    those whose base model folder is gone at ``LITPULSE_MODEL``'s, where it holds the
    same model (:func:`_relocate_bases`).

    A data directory moved (``LITPULSE_HOME`` changed; the store moved with it, or the same
    PostgreSQL) keeps its adapters, but ``model_versions.adapter_path`` names each by the
    absolute path it was written at: the active model could not be loaded (searches refused,
    a refresh or a continued retrain too) and a model rollback would pass over every
    earlier version as "missing". A folder is taken only when this store wrote it (its
    mark, :func:`litpulse.core.db.mark_folder`, or none: written before marks) and its
    weights are the ones registered (:func:`adapter_problem`). Called before a version's
    adapter is relied on: a refresh, a promotion or rollback, a retrain.

    Returns:
        The model versions pointed at their moved folder.
    """
    mv = model_versions.c
    with engine.connect() as conn:
        rows = conn.execute(
            select(mv.id, mv.adapter_path, mv.adapter_sha256).where(mv.adapter_path.is_not(None))
        ).all()
    mine: str | None = None
    moved = []
    for row in rows:
        if not row.adapter_path or os.path.isdir(row.adapter_path):
            continue
        here = adapters_dir(settings) / Path(row.adapter_path).name
        if str(here) == row.adapter_path or not here.is_dir():
            continue
        mine = mine or db.store_id(engine)
        if db.folder_store(here) not in (mine, None) or adapter_problem(
            str(here), row.adapter_sha256
        ) is not None:
            continue
        with engine.begin() as conn:
            conn.execute(update(model_versions)
                         .where(mv.id == row.id, mv.adapter_path == row.adapter_path)
                         .values(adapter_path=str(here)))
        logger.warning("model version %s: its adapter folder %s is gone, %s (this data "
                       "directory's) holds it: using that", row.id, row.adapter_path, here)
        moved.append(str(row.id))
    return moved + [v for v in _relocate_bases(settings, engine) if v not in moved]


def _relocate_bases(settings: Settings, engine: Engine) -> list[str]:
    """Point fine-tuned versions whose base model folder is gone (the model moved to
    another disk; ``base_model`` records the absolute path it was trained from) at the
    configured ``LITPULSE_MODEL``, when that folder holds the model their vectors were
    embedded with: the fingerprint an index of the version recorded
    (:func:`base_records`, :func:`base_model_changed`). Another model there is never
    taken for it; a version without an index (a candidate) keeps its path.

    Returns:
        The model versions pointed at the configured base model.
    """
    configured = settings.model_path
    if not os.path.isdir(configured):
        return []
    mv = model_versions.c
    with engine.connect() as conn:
        rows = conn.execute(
            select(mv.id, mv.base_model).where(mv.adapter_path.is_not(None))
        ).all()
    moved = []
    for row in rows:
        was = version_base_path(settings, row.base_model)
        if _base_here(settings, engine, row.id, was) == was:
            continue
        with engine.begin() as conn:
            conn.execute(update(model_versions)
                         .where(mv.id == row.id, mv.base_model == row.base_model)
                         .values(base_model=base_model_name(settings)))
        logger.warning("model version %s: its base model folder %s is gone, %s "
                       "(LITPULSE_MODEL) holds the same model: using that", row.id, was,
                       configured)
        moved.append(str(row.id))
    return moved


def _base_here(settings: Settings, engine: Engine, version_id: str, was: str) -> str:
    """The folder of a fine-tuned version's base model on this host: ``was`` (the path
    recorded), or where it is gone here, ``LITPULSE_MODEL``'s folder when that holds the
    model the version's vectors were embedded with (the fingerprint an index of it
    recorded, :func:`base_model_changed`; another model there is never taken).

    Hosts of one store (a worker, an API host) may hold the same model at paths of their
    own: the one a refresh recorded last (:func:`_relocate_bases`) need not be here.
    """
    configured = settings.model_path
    if was == configured or os.path.isdir(was) or not os.path.isdir(configured):
        return was
    here = ModelSpec(version_id, configured)
    records = [r.details for r in base_records(engine, here)]
    records = [d for d in records if ((d or {}).get("base_model") or {}).get("fingerprint")]
    if not records or any(base_model_changed(d, here) for d in records):
        return was
    return configured


def adapter_problem(path: str | None, sha256: str | None) -> str | None:
    """Why the adapter in ``path`` cannot serve the version that recorded ``sha256`` for
    its weights (the folder is missing, its weights file is gone, its weights changed
    since, or its ``adapter_config.json`` is gone or cut short), or ``None``.

    Example:
        >>> adapter_problem("/nowhere", None)
        "adapter folder '/nowhere' is missing"
    """
    if not path or not os.path.isdir(path):
        return f"adapter folder {path!r} is missing"
    weights = os.path.join(path, ADAPTER_WEIGHTS)
    if sha256 and not os.path.isfile(weights):  # a prune or restore cut half-way through
        return f"the adapter's weights {weights!r} are missing"
    if sha256:
        found = file_sha256(weights)
        if found != sha256:
            return (
                f"the adapter's weights {weights!r} changed since the version was registered "
                f"(SHA-256 {found[:12]}…, recorded {sha256[:12]}…)"
            )
        return _config_problem(os.path.join(path, ADAPTER_CONFIG))
    return None


def _config_problem(config: str) -> str | None:
    """Why peft cannot read the adapter config ``config`` (gone, cut short, no peft
    adapter's), or ``None``: the weights alone do not load."""
    import json

    try:
        with open(config, encoding="utf-8") as fh:
            doc = json.load(fh)
    except FileNotFoundError:
        return f"the adapter's config {config!r} is missing"
    except (OSError, ValueError) as exc:  # cut short, not UTF-8, unreadable
        return f"the adapter's config {config!r} cannot be read ({exc})"
    if not isinstance(doc, dict) or not doc.get("peft_type"):
        return f"the adapter's config {config!r} is no peft adapter config"
    return None


def adapter_refusal(spec: ModelSpec) -> str | None:
    """Why ``spec`` cannot serve for its adapter (:func:`adapter_problem`), with what
    repairs it; ``None`` when it can (or has no adapter)."""
    if not spec.adapter_path:
        return None
    problem = adapter_problem(spec.adapter_path, spec.adapter_sha256)
    if problem is None:
        return None
    return (f"model {spec.id!r}: {problem}: restore the adapter as it was registered, or "
            "serve the version before it with `litpulse models rollback`")


def _apply_adapter(encoder: SentenceTransformer, spec: ModelSpec, *, merge: bool) -> None:
    from peft import PeftModel

    path = spec.adapter_path or ""
    refusal = adapter_refusal(spec)
    if refusal is not None:  # the data directory's state (restored, lost), not bad input
        raise ConsistencyError(refusal)
    transformer: Any = encoder[0]
    wrapped = PeftModel.from_pretrained(transformer.auto_model, path)
    transformer.model = wrapped.merge_and_unload() if merge else wrapped


def _release_frozen() -> None:
    """Let the collector free evicted encoders also where a server froze its heap.

    A model holds reference cycles, so it is freed by the cycle collector, which skips what
    ``gc.freeze()`` moved aside (``litpulse serve`` does so once the first model is loaded):
    unfreeze, collect, freeze again (~0.4 s, once per model version a server loads).
    """
    import gc

    if gc.get_freeze_count():
        gc.unfreeze()
        gc.collect()
        gc.freeze()


def cached_encoder(spec: ModelSpec, settings: Settings) -> SentenceTransformer | None:
    """The encoder :func:`load_encoder` holds for ``spec`` now, if any (loads nothing)."""
    with _LOCK:
        return _ENCODERS.get(_encoder_key(spec, settings))


def clear_cache() -> None:
    """Forget every cached encoder and query vector (tests, after a model is retired)."""
    with _LOCK:
        _ENCODERS.clear()
        _QUERIES.clear()


def _wanted_half(encoder: SentenceTransformer, settings: Settings) -> Any:
    """The half dtype the settings and hardware ask for, or ``None`` for fp32."""
    import torch

    wanted = Precision(settings.embed_precision)
    if wanted == Precision.FP32:
        return None
    if wanted == Precision.AUTO:
        if str(encoder.device).startswith(Device.CUDA):
            wanted = Precision.FP16
        else:
            try:
                native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
            except (AttributeError, RuntimeError):
                native = False
            if not native:
                return None
            wanted = Precision.BF16
    return torch.bfloat16 if wanted == Precision.BF16 else torch.float16


def _probe_cosine(reference: SentenceTransformer, candidate: SentenceTransformer,
                  dtype: Any) -> float:
    ref = _encode(reference, list(_PROBES), None, len(_PROBES))
    half = _encode(candidate, list(_PROBES), dtype, len(_PROBES))
    return float(np.min(np.sum(ref * half, axis=1)))


def _fast_encoder(encoder: SentenceTransformer, settings: Settings) -> SentenceTransformer:
    """A half-precision copy of an inference encoder, if it keeps cosine >= MIN_COSINE.

    Weights in the half type *and* autocast: measured ~2-3x the docs/s of fp32 on a CPU
    with AMX/AVX512-BF16 (autocast over fp32 weights alone gave ~1.2-1.9x).
    """
    dtype = _wanted_half(encoder, settings)
    if dtype is not None:
        fast = copy.deepcopy(encoder).to(dtype)
        cos = _probe_cosine(encoder, fast, dtype)
        if cos >= MIN_COSINE:
            logger.info("embedding with %s weights (probe cosine %.5f)", dtype, cos)
            _PRECISION[fast] = dtype
            return fast
        logger.warning("%s keeps cosine %.4f < %.2f to fp32: embedding in fp32", dtype, cos,
                       MIN_COSINE)
    _PRECISION[encoder] = None
    return encoder


def _half_dtype(encoder: SentenceTransformer, settings: Settings) -> Any:
    """The autocast dtype for an encoder we did not load (its weights stay as they are)."""
    dtype = _wanted_half(encoder, settings)
    if dtype is None:
        return None
    cos = _probe_cosine(encoder, encoder, dtype)
    if cos < MIN_COSINE:
        logger.warning("%s keeps cosine %.4f < %.2f to fp32: embedding in fp32", dtype, cos,
                       MIN_COSINE)
        return None
    return dtype


@contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op threads set to ``threads`` (0: left as they are) for the block."""
    import torch

    before = torch.get_num_threads()
    if not threads or threads == before:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _encode(
    encoder: SentenceTransformer, texts: list[str], dtype: Any, batch: int, threads: int = 0,
    *, query: bool = False,
) -> np.ndarray:
    """The texts' vectors, L2-normalised. A vector holding NaN or inf (an encoder that
    overflows on some input: a half-precision autocast, a damaged adapter) is no vector:
    an article's is kept as the zero vector, similar to nothing, and logged (stored as
    such, it would rank first or last at random and make every search score the corpus
    exactly); a query's (``query``) is refused."""
    import torch

    device_type = Device.CUDA if str(encoder.device).startswith(Device.CUDA) else Device.CPU
    most = batch  # the setting: a batch halved after running out of memory grows back to it
    fit = _FITS.get(encoder)
    batch = min(most, fit.batch) if fit is not None else most
    while True:
        try:
            with _ENCODE_LOCK, _torch_threads(threads), torch.inference_mode(), torch.autocast(
                device_type, dtype=dtype or torch.float32, enabled=dtype is not None
            ):
                out = encoder.encode(
                    texts, batch_size=batch, convert_to_numpy=True, show_progress_bar=False
                )
            break
        except torch.OutOfMemoryError as exc:  # the card cannot hold this batch
            batch = _smaller_batch(encoder, batch, len(texts), exc)
    if fit is not None or encoder in _FITS:
        _went_through(encoder, batch, len(texts), most)
    vecs = np.asarray(out, dtype=np.float32)
    bad = ~np.isfinite(vecs).all(axis=1)
    if bad.any():
        if query:
            raise ConfigError(
                "the model cannot embed this query (its vector holds NaN or inf): search "
                "with other words, or mode=lexical"
            )
        shown = "; ".join(repr(texts[i][:60]) for i in np.flatnonzero(bad)[:3])
        logger.warning("%d of %d texts were encoded to a vector holding NaN or inf (kept as "
                       "the zero vector, similar to nothing), e.g. %s", int(bad.sum()),
                       len(texts), shown)  # fmt: skip
        vecs[bad] = 0.0
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return np.ascontiguousarray(vecs / norms, dtype=np.float32)


#: Batches that go through in a row at a batch size halved after running out of memory
#: before the size doubles again (never above ``LITPULSE_EMBED_BATCH_SIZE``): the card may
#: have been held by another process for a while. Each doubling that runs out of memory
#: again before this many batches went through at it doubles this wait for that encoder
#: (a card that stays small is not retried often); one that held them is forgiven.
REGROW_AFTER = 64


@dataclass
class _Fit:
    """The batch an encoder's device holds, learnt from running out of memory."""

    #: texts a batch now
    batch: int
    #: batches that went through at ``batch`` since it was set
    good: int = 0
    #: batches to go through before doubling ``batch``
    wait: int = REGROW_AFTER
    #: ``batch`` was reached by doubling (not by halving)
    grown: bool = False


#: The batch each encoder's device holds after one ran out of memory (per encoder).
_FITS: weakref.WeakKeyDictionary[Any, _Fit] = weakref.WeakKeyDictionary()


def _went_through(encoder: SentenceTransformer, batch: int, texts: int, most: int) -> None:
    """Count the batches of ``texts`` texts that went through at ``batch``; once
    :class:`_Fit` ``wait`` did, the encoder's batch doubles (at most ``most``). A doubled
    batch that held :data:`REGROW_AFTER` batches fits the card: the wait goes back to
    that, so an out-of-memory hours later (another process took the card) halves it
    without lengthening the wait, which only a doubling that failed at once does."""
    with _LOCK:
        fit = _FITS.get(encoder)
        if fit is None or fit.batch != batch:
            return
        fit.good += -(-texts // batch)
        if fit.grown and fit.good >= REGROW_AFTER:  # the doubling held: the card holds it
            fit.wait, fit.grown = REGROW_AFTER, False  # a later shortage is no failed try
        if batch < most and fit.good >= fit.wait:
            fit.batch, fit.good, fit.grown = min(most, 2 * batch), 0, True
            logger.info("the device %s held %d batches of %d texts: trying %d a batch",
                        encoder.device, fit.wait, batch, fit.batch)  # fmt: skip


def _smaller_batch(encoder: SentenceTransformer, batch: int, texts: int,
                   exc: BaseException) -> int:
    """The batch to try after ``batch`` ran the encoder's device out of memory: half of
    it (kept for the encoder's later calls, until :data:`REGROW_AFTER` batches went through
    at it), once the cached blocks the failed batch left are released.

    Raises:
        BudgetError: Not even one text fits (the card is held by something else, or the
            texts are too long for it).
    """
    import torch

    if str(encoder.device).startswith(Device.CUDA):
        torch.cuda.empty_cache()  # the failed batch's blocks, back to the card
    smaller = min(batch, texts) // 2
    if smaller < 1:
        raise BudgetError(
            f"the device {encoder.device} is out of memory even for one text ({exc}): "
            "free the card (another process may hold it), lower LITPULSE_MAX_SEQ_LENGTH, "
            "or set LITPULSE_DEVICE=cpu"
        ) from exc
    logger.warning("the device %s is out of memory at %d texts a batch: embedding %d a "
                   "batch", encoder.device, min(batch, texts), smaller)
    with _LOCK:
        fit = _FITS.get(encoder)
        if fit is None:
            _FITS[encoder] = _Fit(smaller)
        else:  # a doubling that did not fit: wait twice as long before the next one
            fit.wait *= 2 if fit.grown else 1
            fit.batch, fit.good, fit.grown = smaller, 0, False
    return smaller


def _precision(encoder: SentenceTransformer, settings: Settings) -> Any:
    """The autocast dtype of an encoder (``None``: fp32), decided once per encoder."""
    with _LOCK:
        if encoder not in _PRECISION:
            _PRECISION[encoder] = _half_dtype(encoder, settings)
        return _PRECISION[encoder]


def embed_texts(
    encoder: SentenceTransformer, texts: Sequence[str], settings: Settings, *, bar: Any = None
) -> np.ndarray:
    """Embed texts: float32 ``(n, d)``, every row L2-normalised (a blank text: zeros).

    Runs the fast path (see the module docstring): inference mode, autocast to a
    verified half type where native, length-sorted batches of ``settings.embed_batch_size``
    (halved for this encoder while a batch runs its device out of memory, doubled again
    after :data:`REGROW_AFTER` batches went through:
    :class:`~litpulse.core.errors.BudgetError` when not even one text fits).
    With a tqdm ``bar``, the texts go in slices of a few batches and the bar moves after
    each (documents/s and an ETA while a long call runs).
    """
    texts = list(texts)
    blank = [i for i, t in enumerate(texts) if not t.strip()]
    if blank:
        # a text of nothing (an article with neither title nor abstract) is the zero
        # vector: similar to nothing. Encoded, the empty string is one shared vector that
        # scores above real articles for short generic queries
        dim = encoder.get_embedding_dimension() or 0
        out = np.zeros((len(texts), dim), dtype=np.float32)
        if bar is not None:
            bar.update(len(blank))
        rest = [i for i in range(len(texts)) if texts[i].strip()]
        if rest:
            out[rest] = embed_texts(encoder, [texts[i] for i in rest], settings, bar=bar)
        return out
    if not texts:
        dim = encoder.get_embedding_dimension() or 0
        return np.zeros((0, dim), dtype=np.float32)
    dtype = _precision(encoder, settings)
    if bar is None:
        return _encode(encoder, texts, dtype, settings.embed_batch_size)
    step = 4 * settings.embed_batch_size
    parts = []
    for start in range(0, len(texts), step):
        part = texts[start : start + step]
        parts.append(_encode(encoder, part, dtype, settings.embed_batch_size))
        bar.update(len(parts[-1]))
    return np.vstack(parts)


def encode_query(settings: Settings, spec: ModelSpec | str, text: str) -> np.ndarray:
    """Embed one search query with a model version's cached encoder: float32 ``(1, d)``.

    The vector comes from a per-process LRU cache when the same text was embedded under
    the same model version before (``LITPULSE_QUERY_CACHE_SIZE``; the array is read-only),
    else from the encoder run with ``LITPULSE_QUERY_THREADS`` torch threads.

    Args:
        settings: The settings.
        spec: The model version, or its id (e.g. ``PublishedIndex.model_version``).
        text: The query (embedded as :func:`query_text` gives it).
    """
    if isinstance(spec, str):
        spec = model_spec(settings, spec)
    text = query_text(text)
    size = settings.query_cache_size
    key = (*_encoder_key(spec, settings), text)
    if size:
        with _LOCK:
            hit = _QUERIES.get(key)
            if hit is not None:
                _QUERIES.move_to_end(key)
                return hit
    encoder = load_encoder(spec, settings)
    vector = _encode(encoder, [text], _precision(encoder, settings), 1, settings.query_threads,
                     query=True)
    vector.flags.writeable = False  # shared by every caller of the cache
    if size:
        with _LOCK:
            _QUERIES[key] = vector
            while len(_QUERIES) > size:
                _QUERIES.popitem(last=False)
    return vector


#: The marks that close a question or a sentence typed as a query.
_CLOSING_MARKS = frozenset("?.!？。！")


def query_text(text: str) -> str:
    """The text embedded for a query: ``text`` without the marks that close it.

    A question is typed with its ``?`` (a sentence with its ``.``), which says how it
    is asked, not what about; documents hardly ever end in one, and the encoder gives
    the mark a weight of its own (on BioASQ's 300 expert questions, with the base
    model: dense recall@10 0.870 with the marks, 0.895 without, both halves of the set
    higher). Searches, the training anchors and the gate's queries all go through here,
    so a model learns on queries embedded as searches embed them. Every closing mark
    goes, spaced or not (``Is X used ? .`` → ``Is X used``: the rule gives its own result
    back); nothing else changes (case, inner punctuation); a query of marks alone stays as
    it is. The text is taken in its compatibility form first (NFKC): a full-width
    ``ＣＯＶＩＤ－１９`` typed on a CJK keyboard is ``COVID-19``, which the encoder's
    vocabulary knows (it read the full-width form as unknown tokens).
    """
    stripped = unicodedata.normalize("NFKC", text).strip()
    end = len(stripped)  # back over the closing marks and the blanks between them
    while end and (stripped[end - 1] in _CLOSING_MARKS or stripped[end - 1].isspace()):
        end -= 1
    return stripped[:end] or stripped


# --------------------------------------------------------------------------- articles


def article_text(title: str | None, abstract: str | None) -> str:
    """The text embedded for an article: ``title + "\\n" + abstract``."""
    title = (title or "").strip()
    abstract = (abstract or "").strip()
    if title and abstract:
        return f"{title}\n{abstract}"
    return title or abstract


def vector_to_bytes(vector: np.ndarray) -> bytes:
    """A vector as little-endian float32 bytes (the ``embeddings.vector`` column)."""
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def vector_from_bytes(data: bytes) -> np.ndarray:
    """The inverse of :func:`vector_to_bytes`."""
    return np.frombuffer(data, dtype="<f4").astype(np.float32)


def pending_query(model_version: str, *, shard: int = 0, shards: int = 1) -> Any:
    """SELECT of the live PMIDs with no vector, or a stale one, for ``model_version``.

    Args:
        model_version: The model version whose vectors are checked.
        shard: With ``shards`` > 1, only PMIDs with ``pmid % shards == shard``.
        shards: Number of shards the corpus is split into (1: all of it).
    """
    e = embeddings.alias("e")
    query = (
        select(articles.c.pmid)
        .select_from(
            articles.outerjoin(
                e, and_(e.c.pmid == articles.c.pmid, e.c.model_version == model_version)
            )
        )
        .where(
            articles.c.is_deleted.is_(False),
            or_(e.c.pmid.is_(None), e.c.text_hash != articles.c.text_hash),
        )
        .order_by(articles.c.pmid)
    )
    if shards > 1:
        query = query.where((articles.c.pmid % shards) == shard)
    return query


def count_pending(settings: Settings, model_version: str, engine: Engine | None = None) -> int:
    """Live articles without an up-to-date embedding for ``model_version``: from the
    counts the database keeps (:func:`litpulse.core.db.pending_kept`), or where it keeps
    none yet (an older store not upgraded), the anti-join of :func:`pending_query`."""
    engine = engine or db.connect(settings)
    with engine.connect() as conn:
        kept = db.pending_kept(conn, model_version)
        if kept is not None:
            return kept
        sub = pending_query(model_version).order_by(None).subquery()
        return int(conn.execute(select(func.count()).select_from(sub)).scalar() or 0)


#: The columns :func:`embed_pending` writes, in its rows' order
_VECTOR_COLUMNS = ("pmid", "model_version", "text_hash", "vector", "created_at")


def _write_chunk(
    engine: Engine, spec: ModelSpec, rows: Sequence[Any], vectors: Any, *, first: bool
) -> int:
    """Store one chunk's vectors in a transaction of its own; returns how many."""
    with engine.begin() as conn:
        if first:  # the vectors say which base model they are of
            claim_first_embedding(conn, spec)
        now = db.db_now(conn)  # the database's clock, as the store's rows
        out = [
            (int(r.pmid), spec.id, r.text_hash, vector_to_bytes(v), now)
            for r, v in zip(rows, vectors, strict=True)
        ]
        # one set-based statement a chunk: the counts' statement triggers
        # (db.keep_counts) run once for it, not once a row of an executemany
        db.bulk_upsert(
            conn,
            embeddings,
            out,
            columns=_VECTOR_COLUMNS,
            keys=("pmid", "model_version"),
            update=_VECTOR_COLUMNS[2:],
        )
    return len(out)


def _chunks(items: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def embed_pending(
    settings: Settings,
    spec: ModelSpec | None = None,
    progress: bool = False,
    *,
    engine: Engine | None = None,
    shard: int = 0,
    shards: int = 1,
) -> int:
    """Embed live articles that have no embedding for ``spec`` or whose text changed.

    An article's embedding is current when its ``text_hash`` equals the article's. Rows
    are written in chunks of :data:`CHUNK` articles, each chunk its own transaction, so
    an interrupted run resumes where it stopped. Vectors of deleted articles stay (the
    index leaves them out). The encoder is loaded only when something is pending.

    Args:
        settings: The settings.
        spec: The model version (default: :func:`active_model`).
        progress: Show a tqdm bar on stderr.
        engine: The store (default: ``db.connect(settings)``).
        shard: With ``shards`` > 1, only the articles with ``pmid % shards == shard``
            (one mapped task of a sharded re-embedding).
        shards: Number of shards the corpus is split into (1: all of it).

    Returns:
        The number of articles embedded.

    Raises:
        ConsistencyError: The index versions of ``spec`` were built with another base
            model and its vectors of that model are stored (:func:`check_stored_base`):
            ``litpulse index refresh --rebuild`` embeds every article again.
    """
    engine = engine or db.connect(settings)
    spec = spec or active_model(settings, engine)
    check_stored_base(engine, spec)
    query = pending_query(spec.id, shard=shard, shards=shards)
    with engine.connect() as conn:
        pending = [int(p) for p in conn.execute(query).scalars()]
    if not pending:
        return 0
    part = f" (shard {shard}/{shards})" if shards > 1 else ""
    logger.info("embedding %d articles with model %s%s", len(pending), spec.id, part)
    first = first_embedding(engine, spec)
    encoder = load_encoder(spec, settings)
    from tqdm.auto import tqdm

    bar = tqdm(total=len(pending), unit="doc", desc=f"embed {spec.id}", disable=not progress)
    done = 0
    try:
        for chunk in _chunks(pending, CHUNK):
            with engine.connect() as conn:
                rows = conn.execute(
                    select(
                        articles.c.pmid, articles.c.title, articles.c.abstract,
                        articles.c.text_hash,
                    ).where(articles.c.pmid.in_(list(chunk)), articles.c.is_deleted.is_(False))
                ).all()
            if not rows:
                bar.update(len(chunk))
                continue
            texts = [article_text(r.title, r.abstract) for r in rows]
            vectors = embed_texts(encoder, texts, settings, bar=bar)
            # checked again before each chunk is stored, not only at the start: a rebuild
            # with another base model (LITPULSE_MODEL changed) published while this chunk
            # was encoded would get vectors of the old model beside its own
            if not first:
                check_stored_base(engine, spec)
            # PostgreSQL may roll the chunk back to break a deadlock with a rebuild's delete
            # of the same vectors (stale ones updated here): it is written again
            written = db.retry_conflicts(
                functools.partial(_write_chunk, engine, spec, rows, vectors, first=first),
                f"{len(rows)} vectors of {spec.id}",
            )
            done += written
            bar.update(len(chunk) - written)  # the chunk's deleted meanwhile
    finally:
        bar.close()
        db.fold_counts(engine)  # PostgreSQL's rows of deltas its chunks appended, in one
    return done
