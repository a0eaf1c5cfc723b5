"""``litpulse bootstrap``: a new deployment from the baseline to a published index.

Three steps, each resumable on its own, so a kill anywhere and a re-run finish the job
without redoing finished work:

1. **load** (:func:`ingest.bootstrap.load_files`): every baseline file, then the update
   files since, staged ahead and applied in order by one writer; a file recorded in
   ``source_files`` is never applied again.
2. **embed** in PMID shards (:func:`litpulse.pipeline.planning.plan_embedding_shards`,
   :func:`~litpulse.pipeline.planning.embed_shard`), one after the other: a shard writes
   its vectors per chunk, and an embedded article is not pending any more, so after a
   kill the finished shards find nothing to do (their encoder is not even loaded) and
   the interrupted one embeds only the rest.
3. **publish** (:func:`ranking.refresh.refresh_index`, ``embed=False``): builds and
   publishes the index; with nothing changed it publishes nothing.

The ``litpulse_bootstrap`` DAG runs the same steps as separate tasks (fetchers mapped
over the files, the writer, one mapped task per shard, the publication).

Example:
    >>> report = bootstrap(settings, workers=8, shards=16)   # doctest: +SKIP
    >>> report.nothing_to_do                                   # doctest: +SKIP
    False
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from ingest.bootstrap import (
    LoadReport,
    file_from_dict,
    file_to_dict,
    load_files,
    pending_files,
    prefetch_file,
)
from litpulse.core import db
from litpulse.core.errors import ConfigError
from litpulse.core.settings import Settings
from litpulse.core.widths import SHARDS_MAX
from litpulse.pipeline.planning import embed_shard, plan_embedding_shards

__all__ = ["BootstrapReport", "bootstrap", "embed_shards", "fetch_file", "list_pending"]

logger = logging.getLogger(__name__)

#: PMID shards of the embed step by default (each resumable; a kill loses at most a chunk).
DEFAULT_SHARDS = 8


@dataclass(frozen=True)
class BootstrapReport:
    """What :func:`bootstrap` did.

    Attributes:
        load: The load step's report.
        shards: Shards of the embed step (0: embedding skipped).
        embedded: Articles embedded per shard, in shard order.
        index: The publication's report (``None``: skipped).
        seconds: Wall time of the whole job.
    """

    load: LoadReport
    shards: int = 0
    embedded: tuple[int, ...] = ()
    index: dict[str, Any] | None = field(default=None)
    seconds: float = 0.0

    @property
    def nothing_to_do(self) -> bool:
        """Every file was applied, every article embedded and the index current before."""
        published = bool(self.index and self.index.get("published"))
        return self.load.nothing_to_do and not any(self.embedded) and not published

    def to_dict(self) -> dict[str, Any]:
        return {
            "nothing_to_do": self.nothing_to_do,
            "load": self.load.to_dict(),
            "shards": self.shards,
            "embedded": sum(self.embedded),
            "embedded_per_shard": list(self.embedded),
            "index": self.index,
            "seconds": round(self.seconds, 3),
        }


def embed_shards(settings: Settings, shards: int, *, progress: bool = False) -> tuple[int, ...]:
    """Embed the pending live articles shard by shard; returns the count per shard.

    A shard with nothing pending costs one query (a finished shard after a kill).
    """
    engine = db.connect(settings)
    done = []
    for shard in plan_embedding_shards(settings, shards, engine=engine):
        if not shard.pending:
            done.append(0)
            continue
        n = embed_shard(settings, shard, engine=engine, progress=progress)
        logger.info("shard %d/%d: %d articles embedded", shard.shard, shards, n)
        done.append(n)
    return tuple(done)


def bootstrap(
    settings: Settings,
    *,
    workers: int | None = None,
    prefetch: int | None = None,
    shards: int = DEFAULT_SHARDS,
    embed: bool = True,
    max_files: int | None = None,
    progress: bool = False,
    accept_gaps: bool = False,
) -> BootstrapReport:
    """Load the baseline and the update files, embed in shards, publish the index.

    Args:
        settings: The settings.
        workers: Parse worker processes (default ``LITPULSE_INGEST_WORKERS``; 0: parse in
            the writer).
        prefetch: Files downloaded ahead (default ``LITPULSE_BOOTSTRAP_PREFETCH``).
        shards: PMID shards of the embed step.
        embed: Also embed and publish (``False``: the store only).
        max_files: Apply at most this many files (the embed and publish steps follow).
        progress: Progress bars on stderr (one over all files; one per embedded shard).
        accept_gaps: Apply the files after a number missing from the server's listing
            (:func:`ingest.updatefiles.plan_files`).

    Raises:
        BootstrapBusyError: Another process is applying the files.
        ChecksumError, TransientSourceError: A file could not be fetched intact.
    """
    if not 1 <= shards <= SHARDS_MAX:
        raise ConfigError(f"shards must be from 1 to {SHARDS_MAX}, got {shards!r}")
    t0 = time.perf_counter()
    ahead = settings.bootstrap_prefetch if prefetch is None else prefetch
    load = load_files(
        settings, workers=workers, prefetch=ahead, max_files=max_files, progress=progress,
        accept_gaps=accept_gaps,
    )
    if not embed:
        return BootstrapReport(load, seconds=time.perf_counter() - t0)
    embedded = embed_shards(settings, shards, progress=progress)
    from ranking.refresh import refresh_index

    index = refresh_index(settings, embed=False, progress=progress).to_dict()
    return BootstrapReport(load, shards, embedded, index, time.perf_counter() - t0)


# ------------------------------------------------------------------ the DAG's pieces


def list_pending(settings: Settings, *, accept_gaps: bool = False) -> list[dict[str, Any]]:
    """The files to apply, in order, as small dicts (the DAG maps its fetchers over them);
    ``accept_gaps``: also those after a number missing from the listing
    (:func:`ingest.updatefiles.plan_files`)."""
    plan = pending_files(settings, accept_gaps=accept_gaps)
    logger.info("bootstrap: %d of %d listed files to apply", len(plan.pending), plan.listed)
    if plan.held is not None:  # the writer applies those before the gap, then fails
        logger.warning("bootstrap: %s", plan.held)
    return [file_to_dict(f) for f in plan.pending]


def fetch_file(settings: Settings, file: dict[str, Any]) -> str:
    """Stage one file ahead of the writer (a mapped DAG task); see
    :func:`ingest.bootstrap.prefetch_file`. At most ``LITPULSE_BOOTSTRAP_PREFETCH`` files
    (at least 1) wait staged."""
    return prefetch_file(settings, file_from_dict(file), window=max(1, settings.bootstrap_prefetch))
