"""The states that rows and reports move through, as enums (values are what the store holds).

Each is a :class:`enum.StrEnum`, so a member compares equal to the text stored in the
database and serialises to JSON as that text.
"""

from __future__ import annotations

import enum

__all__ = [
    "RETRACTED_TYPE",
    "RunStatus",
    "IndexStatus",
    "ModelStatus",
    "ModelEvent",
    "RetrainOutcome",
    "Device",
    "Precision",
    "SearchMode",
    "SearchSort",
    "Fusion",
]


#: The publication type PubMed gives every retracted article (what ``is_retracted`` reads).
RETRACTED_TYPE = "Retracted Publication"


class RunStatus(enum.StrEnum):
    """An ingest run (``ingest_runs.status``)."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    #: left ``running`` by a process that died; closed by the next run
    ABANDONED = "abandoned"


class IndexStatus(enum.StrEnum):
    """An index version (``index_versions.status``)."""

    BUILDING = "building"
    PUBLISHED = "published"
    RETIRED = "retired"
    #: replaced by the version it rolled back to (kept on disk, never re-published by refresh)
    ROLLED_BACK = "rolled_back"


class ModelStatus(enum.StrEnum):
    """A model version (``model_versions.status``)."""

    CANDIDATE = "candidate"
    ACTIVE = "active"
    REJECTED = "rejected"
    RETIRED = "retired"


class ModelEvent(enum.StrEnum):
    """A step in a model version's life (``model_versions.events``)."""

    REGISTERED = "registered"
    PROMOTED = "promoted"
    #: replaced as the active version by a newer promotion
    RETIRED = "retired"
    #: failed the gate, or was rejected by a person
    REJECTED = "rejected"
    #: was active and was rolled back (its status is ``rejected`` then)
    ROLLED_BACK = "rolled_back"
    #: active again after the rollback of a newer version
    REACTIVATED = "reactivated"
    #: set back to ``candidate`` by a person
    REOPENED = "reopened"
    #: passed the gate, but the index was busy: a candidate until a person promotes it
    NOT_PROMOTED = "not_promoted"
    #: rejected and old: its adapter and report folders were removed (the row stays)
    PRUNED = "pruned"


class RetrainOutcome(enum.StrEnum):
    """How one retraining round ended (``RetrainReport.status``)."""

    DRY_RUN = "dry_run"
    SKIPPED = "skipped"
    PROMOTED = "promoted"
    REJECTED = "rejected"


class Device(enum.StrEnum):
    """Where torch runs (``LITPULSE_DEVICE``; ``cuda:N`` names one GPU)."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class Precision(enum.StrEnum):
    """Arithmetic of the encoder at inference (``LITPULSE_EMBED_PRECISION``)."""

    AUTO = "auto"
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"


class SearchMode(enum.StrEnum):
    """Which indexes a search asks (``mode=``)."""

    #: both, fused (:class:`Fusion`)
    HYBRID = "hybrid"
    #: the vector index only (cosine similarity)
    SEMANTIC = "semantic"
    #: the lexical index only (BM25)
    LEXICAL = "lexical"


class SearchSort(enum.StrEnum):
    """The order of a search's results (``sort=``)."""

    #: best score first (ties: higher similarity, then lower PMID)
    SCORE = "score"
    #: the same results, newest first (ties and undated last: higher PMID first)
    DATE = "date"


class Fusion(enum.StrEnum):
    """How hybrid search fuses the semantic and lexical parts (``LITPULSE_FUSION``)."""

    #: reciprocal-rank fusion: each part is (k+1)/(k+rank) within the candidates
    RRF = "rrf"
    #: each part min-max normalised over the candidates (cosine, BM25)
    MIX = "mix"
