"""The nightly pipeline in one process, and the small planning helpers the DAGs share.

``litpulse nightly`` (:func:`run_nightly`) runs the same chain as the Airflow DAGs —
ingest → citations → data quality → embed → index → retrain when due — for sites without
Airflow (a cron line) and for tests. Each step is resumable on its own (ingest
checkpoints, per-chunk embedding transactions, write-aside index publishing), so a killed
run is simply started again.

Concurrency: a run holds the database lease ``nightly`` (:func:`litpulse.db.acquire_lease`)
for its whole duration, renewed by its heartbeat thread. A second run that finds the lease
held waits up to ``wait_s`` seconds (default 0) and then raises :class:`NightlyBusyError`
(the CLI exits 75, ``EX_TEMPFAIL``) naming the holder. A holder on this host whose process
no longer exists is taken over at once; elsewhere a dead holder's lease expires after
:data:`LEASE_TTL_S` seconds. A run whose lease was taken over meanwhile (its heartbeat
stalled that long) raises :class:`~litpulse.errors.LeaseLostError` before its next step.

Example:
    >>> files = ["pubmed26n0001.xml.gz"]
    >>> report = run_nightly(settings, source="files", files=files)  # doctest: +SKIP
    >>> report.ingest["inserted"]  # doctest: +SKIP
    1000
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, func, select

from litpulse import db
from litpulse.errors import ConfigError, ConsistencyError, LitpulseError
from litpulse.schema import (
    articles,
    embeddings,
    index_versions,
    ingest_runs,
    model_versions,
)
from litpulse.settings import Settings

__all__ = [
    "LEASE_NAME",
    "LEASE_TTL_S",
    "SOURCES",
    "EmbeddingShard",
    "NightlyBusyError",
    "NightlyReport",
    "RetrainDecision",
    "embed_shard",
    "last_watermark",
    "plan_embedding_shards",
    "defer_reindex",
    "promoted_model",
    "reindex_pending",
    "retrain_due",
    "run_nightly",
]

logger = logging.getLogger(__name__)

#: Name of the database lease a nightly run holds.
LEASE_NAME = "nightly"
#: Seconds a lease lives without renewal (a dead holder on another host blocks this long).
LEASE_TTL_S = db.LEASE_TTL_S
#: Ingest sources of :func:`run_nightly`.
SOURCES = ("eutils", "updatefiles", "files")
#: Sources whose succeeded runs move the watermark forward.
_WINDOW_SOURCES = ("eutils", "updatefiles")

T = TypeVar("T")


class NightlyBusyError(LitpulseError):
    """Another nightly run holds the ``nightly`` lease; try again later."""

    retryable = True


# ------------------------------------------------------------------------------- reports


@dataclass(frozen=True)
class RetrainDecision:
    """Whether a scheduled retrain is due.

    Attributes:
        due: Enough new articles arrived since the last training.
        new_articles: Live articles updated since the active model's training window.
        threshold: ``LITPULSE_RETRAIN_MIN_NEW_ARTICLES``.
        last_trained_at: End of the active model's training window (``None``: base model).
        reason: One sentence for the log.
    """

    due: bool
    new_articles: int
    threshold: int
    last_trained_at: dt.datetime | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "due": self.due,
            "new_articles": self.new_articles,
            "threshold": self.threshold,
            "last_trained_at": _iso(self.last_trained_at),
            "reason": self.reason,
        }


@dataclass(frozen=True)
class EmbeddingShard:
    """One PMID shard of a re-embedding: the articles with ``pmid % shards == shard``.

    Attributes:
        shard: Shard number, ``0 <= shard < shards``.
        shards: Number of shards.
        model_version: The model version the shard is embedded with.
        pending: Articles of the shard lacking a current vector when planned.
    """

    shard: int
    shards: int
    model_version: str
    pending: int = 0

    def __post_init__(self) -> None:
        if self.shards < 1:
            raise ConfigError(f"`shards` must be >= 1, got {self.shards}")
        if not 0 <= self.shard < self.shards:
            raise ConfigError(f"`shard` must be within [0, {self.shards}), got {self.shard}")
        if not self.model_version:
            raise ConfigError("`model_version` must not be empty")
        if self.pending < 0:
            raise ConfigError(f"`pending` must be >= 0, got {self.pending}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "shard": self.shard,
            "shards": self.shards,
            "model_version": self.model_version,
            "pending": self.pending,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EmbeddingShard:
        return cls(
            shard=int(data["shard"]),
            shards=int(data["shards"]),
            model_version=str(data["model_version"]),
            pending=int(data.get("pending", 0)),
        )


@dataclass(frozen=True)
class NightlyReport:
    """What one :func:`run_nightly` did, step by step.

    Attributes:
        source: ``eutils``, ``updatefiles`` or ``files``.
        window_start: Start of the ingested E-utilities window (``None`` otherwise).
        window_end: End of that window.
        ingest: The ingest counts.
        quality: The data-quality report.
        citations: The citation counts (``None`` when skipped).
        embedded: Articles embedded.
        index: The index report (``None`` when nothing changed and no index was built).
        retrain: The retrain report (``None`` when not run).
        retrain_decision: Why retraining ran or not.
        steps: Seconds spent per step, in order.
        started_at: When the run began (UTC).
        finished_at: When it ended (UTC).
    """

    source: str
    window_start: dt.datetime | None
    window_end: dt.datetime | None
    ingest: dict[str, int]
    quality: dict[str, Any]
    citations: dict[str, Any] | None
    embedded: int
    index: dict[str, Any] | None
    retrain: dict[str, Any] | None
    retrain_decision: dict[str, Any] | None
    steps: tuple[tuple[str, float], ...] = field(default=())
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ConfigError(f"`source` must be one of {', '.join(SOURCES)}, got {self.source!r}")
        if self.embedded < 0:
            raise ConfigError(f"`embedded` must be >= 0, got {self.embedded}")

    @property
    def promoted(self) -> str | None:
        """The model version promoted by this run, if any."""
        return promoted_model(self.retrain) if self.retrain else None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "source": self.source,
            "window_start": _iso(self.window_start),
            "window_end": _iso(self.window_end),
            "ingest": dict(self.ingest),
            "quality": self.quality,
            "citations": self.citations,
            "embedded": self.embedded,
            "index": self.index,
            "retrain": self.retrain,
            "retrain_decision": self.retrain_decision,
            "promoted": self.promoted,
            "steps": [{"step": n, "seconds": round(s, 3)} for n, s in self.steps],
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
        }


# --------------------------------------------------------------------------- decisions


def last_watermark(settings: Settings, engine: Engine | None = None) -> dt.datetime | None:
    """End of the newest window of a succeeded E-utilities or update-file run."""
    engine = engine or db.connect(settings)
    with engine.connect() as conn:
        value = conn.execute(
            select(func.max(ingest_runs.c.window_end)).where(
                ingest_runs.c.source.in_(_WINDOW_SOURCES),
                ingest_runs.c.status == "succeeded",
                ingest_runs.c.window_end.is_not(None),
            )
        ).scalar()
    return _aware(value) if value is not None else None


def retrain_due(settings: Settings, engine: Engine | None = None) -> RetrainDecision:
    """Whether enough new articles arrived since the last training for a retrain.

    "New" follows :func:`retrain.run.retrain`: live articles updated after the end of
    the active model version's training window (every live article while the base
    model is active). This is a cheap upper bound of the count ``retrain`` computes
    itself (it also holds some articles out), so a due decision can still end with
    ``retrain`` reporting ``skipped``.
    """
    engine = engine or db.connect(settings)
    threshold = settings.retrain_min_new_articles
    with engine.connect() as conn:
        last = conn.execute(
            select(model_versions.c.window_end)
            .where(model_versions.c.status == "active")
            .order_by(model_versions.c.promoted_at.desc(), model_versions.c.created_at.desc())
            .limit(1)
        ).scalar()
        last = _aware(last) if last is not None else None
        query = select(func.count()).select_from(articles).where(articles.c.is_deleted.is_(False))
        if last is not None:
            query = query.where(articles.c.updated_at > last)
        new = int(conn.execute(query).scalar() or 0)
    since = f"since the last training window ({last:%Y-%m-%d %H:%M} UTC)" if last else "in total"
    due = new >= threshold
    if due:
        reason = f"{new} new articles {since} >= LITPULSE_RETRAIN_MIN_NEW_ARTICLES={threshold}"
    else:
        reason = (
            f"only {new} new articles {since}, fewer than "
            f"LITPULSE_RETRAIN_MIN_NEW_ARTICLES={threshold}: retraining skipped"
        )
    return RetrainDecision(due, new, threshold, last, reason)


def promoted_model(report: dict[str, Any] | None) -> str | None:
    """The model version a ``RetrainReport.to_dict()`` promoted, or ``None``."""
    if not report or report.get("status") != "promoted":
        return None
    value = report.get("version_id")
    return str(value) if value else None


def reindex_pending(settings: Settings, engine: Engine | None = None) -> str | None:
    """Why the published index is waiting for a full re-index, or ``None``.

    After a promotion whose re-index was deferred (:func:`defer_reindex`), the active
    model is newer than the published index's: the ``litpulse_reindex`` DAG re-embeds
    the corpus in shards. An incremental refresh meanwhile would re-embed the whole
    corpus in one task, so the index-refresh DAG skips itself while this says so.
    """
    from ranking.embed import active_model

    engine = engine or db.connect(settings)
    with engine.connect() as conn:
        published = conn.execute(
            select(index_versions.c.id, index_versions.c.model_version)
            .where(index_versions.c.status == "published")
            .order_by(index_versions.c.published_at.desc())
            .limit(1)
        ).first()
    if published is None:
        return None
    active = active_model(settings, engine).id
    if published.model_version == active:
        return None
    return (
        f"the published index {published.id} is for model {published.model_version} but "
        f"the active model is {active}: litpulse_reindex re-embeds the corpus for it"
    )


def defer_reindex(settings: Settings) -> dict[str, Any]:
    """A ``reindex`` step for :func:`retrain.registry.promote` that only defers the work.

    The Airflow retrain DAG passes it so the corpus is re-embedded by the sharded
    ``litpulse_reindex`` DAG (triggered by the model asset) instead of inside the
    training task. Until that publishes, searches keep using the previous index
    version, which is consistent: each index embeds queries with its own model version.
    """
    logger.info("re-index deferred to the litpulse_reindex DAG")
    return {"deferred_to": "litpulse_reindex"}


# ------------------------------------------------------------------------- embed shards


def plan_embedding_shards(
    settings: Settings, n: int, *, engine: Engine | None = None
) -> list[EmbeddingShard]:
    """Split the re-embedding for the active model version into ``n`` PMID shards.

    Args:
        settings: The settings.
        n: Number of shards (``pmid % n``), at least 1.
        engine: The store (default: ``db.connect(settings)``).

    Returns:
        ``n`` shards with their pending counts (shards with nothing pending included, so
        the mapped task count is stable).
    """
    if n < 1:
        raise ConfigError(f"the shard count must be >= 1, got {n}")
    from ranking.embed import active_model, pending_query

    engine = engine or db.connect(settings)
    spec = active_model(settings, engine)
    shards = []
    with engine.connect() as conn:
        for i in range(n):
            sub = pending_query(spec.id, shard=i, shards=n).order_by(None).subquery()
            pending = int(conn.execute(select(func.count()).select_from(sub)).scalar() or 0)
            shards.append(EmbeddingShard(i, n, spec.id, pending))
    logger.info(
        "planned %d shards for model %s: %d articles pending",
        n,
        spec.id,
        sum(s.pending for s in shards),
    )
    return shards


def embed_shard(
    settings: Settings,
    shard: EmbeddingShard,
    *,
    engine: Engine | None = None,
    progress: bool = False,
) -> int:
    """Embed the live articles of one shard that lack a current vector.

    Resumable: rows are written per chunk, and what is done is not pending any more.

    Raises:
        ConsistencyError: The active model version is no longer ``shard.model_version``
            (a newer promotion happened; its own reindex takes over).

    Returns:
        Articles embedded.
    """
    from ranking import embed as rembed

    engine = engine or db.connect(settings)
    spec = rembed.active_model(settings, engine)
    if spec.id != shard.model_version:
        raise ConsistencyError(
            f"shard {shard.shard}/{shard.shards} was planned for model {shard.model_version} "
            f"but the active model is now {spec.id}"
        )
    with engine.connect() as conn:
        pending = [
            int(p)
            for p in conn.execute(
                rembed.pending_query(spec.id, shard=shard.shard, shards=shard.shards)
            ).scalars()
        ]
    if not pending:
        return 0
    logger.info("shard %d/%d: embedding %d articles", shard.shard, shard.shards, len(pending))
    encoder = rembed.load_encoder(spec, settings)
    chunk = getattr(rembed, "CHUNK", 1024)
    done = 0
    for start in range(0, len(pending), chunk):
        ids = pending[start : start + chunk]
        with engine.connect() as conn:
            rows = conn.execute(
                select(
                    articles.c.pmid, articles.c.title, articles.c.abstract, articles.c.text_hash
                ).where(articles.c.pmid.in_(ids), articles.c.is_deleted.is_(False))
            ).all()
        if not rows:
            continue
        vectors = rembed.embed_texts(
            encoder, [rembed.article_text(r.title, r.abstract) for r in rows], settings
        )
        now = db.utcnow()
        out = [
            {
                "pmid": int(r.pmid),
                "model_version": spec.id,
                "text_hash": r.text_hash,
                "vector": rembed.vector_to_bytes(v),
                "created_at": now,
            }
            for r, v in zip(rows, vectors, strict=True)
        ]
        with engine.begin() as conn:
            db.upsert(conn, embeddings, out, keys=("pmid", "model_version"))
        done += len(out)
        if progress:
            logger.info("shard %d: %d/%d embedded", shard.shard, done, len(pending))
    return done


# -------------------------------------------------------------------------------- lease


def _acquire(engine: Engine, ttl_s: float, wait_s: float) -> db.Lease:
    deadline = time.monotonic() + max(0.0, wait_s)
    while True:
        lease = db.acquire_lease(engine, LEASE_NAME, ttl_s=ttl_s)  # takes a dead one over
        if lease is not None:
            return lease
        if time.monotonic() >= deadline:
            held = db.lease_holder(engine, LEASE_NAME)
            holder, until = (held[0], _iso(held[1])) if held is not None else ("?", "?")
            raise NightlyBusyError(
                f"another nightly run is in progress (lease {LEASE_NAME!r} held by {holder}, "
                f"expires {until} unless renewed); not starting a second one"
            )
        time.sleep(min(5.0, max(0.1, deadline - time.monotonic())))


# -------------------------------------------------------------------------------- run


def run_nightly(
    settings: Settings,
    *,
    source: str = "eutils",
    files: Sequence[str | os.PathLike[str]] | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    retrain: bool = True,
    citations: bool = True,
    quality: bool = True,
    progress: bool = False,
    wait_s: float = 0.0,
    lease_ttl_s: float = LEASE_TTL_S,
) -> NightlyReport:
    """Run the nightly chain once, holding the ``nightly`` lease.

    Steps: ingest (``eutils``: the window from the last watermark — or ``since`` — to
    ``until`` (default now); ``updatefiles``: every update file not applied yet;
    ``files``: the given local files) → iCite citations → data-quality check → embed
    pending articles → refresh the index → retrain when due (:func:`retrain_due`); a
    promotion re-embeds the corpus with the new model version and publishes its index
    (inside :func:`retrain.registry.promote`).

    Args:
        settings: The settings.
        source: ``eutils``, ``updatefiles`` or ``files``.
        files: Local PubMed XML files (``source="files"``; required there).
        since: Start of the half-open E-utilities window ``[since, until)`` (default:
            the end of the last succeeded window, the watermark; with none, one day
            before ``until``).
        until: End of the window, excluded (default: now, UTC).
        retrain: Retrain when due.
        citations: Refresh iCite citations.
        quality: Run the data-quality check (raises ``DataQualityError``).
        progress: Progress bars on stderr.
        wait_s: Seconds to wait for a running nightly to finish before giving up.
        lease_ttl_s: Lease lifetime without renewal, in seconds.

    Returns:
        The report of every step.

    Raises:
        NightlyBusyError: Another run holds the lease (after ``wait_s``).
        LeaseLostError: Another run took the lease over meanwhile (this one stopped
            before its next step).
        DataQualityError: The ingest failed a quality check (nothing after it ran).
        ConfigError: Bad arguments (unknown source, files missing, end not after start).
    """
    if source not in SOURCES:
        raise ConfigError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    paths = [Path(p) for p in files or ()]
    if source == "files":
        if not paths:
            raise ConfigError("source 'files' needs --files PATH ...")
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise ConfigError(f"files not found: {', '.join(missing)}")
    elif paths:
        raise ConfigError(f"--files only applies to source 'files', not {source!r}")
    if lease_ttl_s <= 0:
        raise ConfigError(f"lease_ttl_s must be positive, got {lease_ttl_s}")

    engine = db.connect(settings)
    started = db.utcnow()
    lease = _acquire(engine, lease_ttl_s, wait_s)
    logger.info("nightly run started (lease holder %s)", lease.holder)
    steps: list[tuple[str, float]] = []

    def step(name: str, fn: Callable[[], T]) -> T:
        lease.check()  # a run whose lease was taken over writes nothing more
        t0 = time.perf_counter()
        logger.info("nightly: %s", name)
        try:
            return fn()
        finally:
            steps.append((name, time.perf_counter() - t0))

    try:
        with lease:
            window: tuple[dt.datetime, dt.datetime] | None = None
            if source == "eutils":
                window = _window(settings, engine, since, until)
            counts = step("ingest", lambda: _ingest(settings, source, paths, window, progress))
            cites = None
            if citations:
                cites = step("citations", lambda: _citations(settings, progress))
            report_q: dict[str, Any] = {"ok": True, "checks": [], "problems": []}
            if quality:
                from litpulse.quality import check_ingest

                report_q = step(
                    "quality", lambda: check_ingest(settings, counts, window).to_dict()
                )
            embedded, index = step("index", lambda: _index(settings, progress))
            decision = None
            retrained = None
            if retrain:
                d = retrain_due(settings, engine)
                decision = d.to_dict()
                logger.info("retrain: %s", d.reason)
                if d.due:
                    # a promotion re-embeds the corpus and publishes its index inline
                    retrained = step("retrain", lambda: _retrain(settings, progress))
                    promoted_index = (retrained.get("promotion") or {}).get("index")
                    if isinstance(promoted_index, dict):
                        index = promoted_index
    finally:
        logger.info("nightly run ended; lease released")

    return NightlyReport(
        source=source,
        window_start=window[0] if window else None,
        window_end=window[1] if window else None,
        ingest=counts,
        quality=report_q,
        citations=cites,
        embedded=embedded,
        index=index,
        retrain=retrained,
        retrain_decision=decision,
        steps=tuple(steps),
        started_at=started,
        finished_at=db.utcnow(),
    )


def _window(
    settings: Settings,
    engine: Engine,
    since: dt.datetime | None,
    until: dt.datetime | None,
) -> tuple[dt.datetime, dt.datetime]:
    """The half-open E-utilities window ``[since, until)``."""
    end = _aware(until) if until is not None else db.utcnow()
    if since is not None:
        start = _aware(since)
        if start >= end:
            raise ConfigError(
                f"the window end {end.isoformat()} is not after its start {start.isoformat()}"
            )
        return start, end
    mark = last_watermark(settings, engine)
    if mark is None:
        start = end - dt.timedelta(days=1)
        logger.info("no earlier window: ingesting the last day (%s..%s)", start, end)
    elif mark >= end:
        # the last window already reached `until`: repeat its last day (idempotent)
        start = end - dt.timedelta(days=1)
    else:
        start = mark
    return start, end


def _ingest(
    settings: Settings,
    source: str,
    paths: list[Path],
    window: tuple[dt.datetime, dt.datetime] | None,
    progress: bool,
) -> dict[str, int]:
    if source == "eutils":
        from ingest.eutils import ingest_window

        if window is None:
            raise ConfigError("the eutils source needs a window")
        counts: Any = ingest_window(settings, window[0], window[1], progress=progress)
    elif source == "updatefiles":
        from ingest.updatefiles import apply_updates

        counts = apply_updates(settings, progress=progress)
    else:
        from ingest.files import ingest_files

        counts = ingest_files(settings, [str(p) for p in paths], progress=progress)
    from litpulse.quality import counts_as_dict

    return counts_as_dict(counts)


def _citations(settings: Settings, progress: bool) -> dict[str, Any]:
    from ingest.citations import refresh_citations

    return dict(refresh_citations(settings, progress=progress).to_dict())


def _index(
    settings: Settings, progress: bool, *, rebuild: bool = False
) -> tuple[int, dict[str, Any]]:
    from ranking.embed import embed_pending
    from ranking.index import refresh_index

    embedded = int(embed_pending(settings, progress=progress))
    report = refresh_index(settings, rebuild=rebuild, progress=progress)
    return embedded, dict(report.to_dict())


def _retrain(settings: Settings, progress: bool) -> dict[str, Any]:
    from retrain.run import retrain

    report = retrain(
        settings, progress=progress, min_new_articles=settings.retrain_min_new_articles
    )
    return dict(report.to_dict())


def _aware(value: Any) -> dt.datetime:
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
