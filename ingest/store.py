"""The article store: bulk upserts by PMID, versions, tombstones, quarantine, runs.

One PMID is one row of ``articles`` holding its newest record. Items are applied in
batches, one transaction per batch: the current state of the batch's PMIDs is read
with one ``SELECT``, every item is decided in Python in order, and the changed rows
are written set-based, a few statements per batch whatever its size
(:func:`litpulse.core.db.bulk_upsert`: PostgreSQL ``COPY`` into a staging table and one
``INSERT … SELECT … ON CONFLICT``; SQLite one ``executemany`` in the batch's
transaction, tuned by :func:`litpulse.core.db.bulk_load`). Records arrive prepared
(:func:`ingest.rows.prepare`, often in a parse worker process: :mod:`ingest.parallel`)
or are prepared here. ``Store(engine, bulk=False)`` writes through SQLAlchemy's generic
upsert and one count ``UPDATE`` per PMID instead: the reference the tests hold the bulk
path to.

The decisions (which item wins over the stored state, replays, tombstones) are the
update rules of :mod:`ingest.rules`; the rows written are built in :mod:`ingest.rows`;
links and in-corpus citation counts are kept by :mod:`ingest.links`. :class:`Store` also
carries the run ledger (:class:`ingest.runs.RunLedger`) and the checkpoints
(:class:`ingest.checkpoints.Checkpoints`), and the read models (an article, the store's
counts, quarantine) that the CLI and the API show.

Writers hold the store's writer lease (:func:`ingest.runs.store_writer`, taken by every
ingest run that writes articles, and by the bootstrap for its whole call): two concurrent
writers of the same PMIDs would each decide against the state they read. Each batch's
transaction verifies the lease before it commits (:func:`ingest.runs.verify_store_writer`):
a writer that lost it (its heartbeat stalled past the TTL, another writer took it over)
rolls the batch back and stops.

**Deferred counts** (``Store(engine, defer_counts=True)``, the bootstrap's store): the
in-corpus citation counts are left alone while the rows, terms and references are written,
and :meth:`Store.finish_counts` recounts every article once, a PMID range per transaction.
Kept batch by batch, an article cited from many later files is rewritten once per file
(at the baseline's scale, hundreds of millions of row versions); deferred, once. A
checkpoint marks the counts as waiting before the first deferred batch commits and is
cleared by the recount, so a run killed anywhere in between leaves the mark for the
resumed run (and ``litpulse status``) to see.

Within one :meth:`Store.apply` call items are applied in order, so for two items of one
PMID from one file the later one wins (a record followed by its deletion ends deleted),
whether or not they fall in the same batch or the same run.

Example:
    >>> from litpulse.core import db
    >>> from litpulse.core.settings import Settings
    >>> store = Store(db.connect(Settings.from_env({}, database_url="sqlite:///:memory:")))
    >>> store.apply([]).to_dict()["inserted"]
    0
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import gc
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import Any

from sqlalchemy import JSON, Engine, bindparam, func, or_, select, type_coerce, update
from sqlalchemy.engine import Connection

from ingest import missing as owing
from ingest.checkpoints import Checkpoints, files_first_read
from ingest.dates import PERIOD_MARKS, parse_medline_date, period_end
from ingest.links import (
    add_term_forms,
    chunks,
    new_cited_by,
    recompute_cited_by,
    recount_range,
    replace_links,
)
from ingest.records import (
    ICITE_REASON,
    NLM_YEAR_FACTOR,
    Deletion,
    PartialDate,
    QuarantineEntry,
    Record,
    SourceRef,
    nlm_file_name,
    nlm_file_order,
    nlm_sequence,
)
from ingest.rows import (
    ARTICLE_COLUMNS,
    COLUMN_INDEX,
    JSON_COLUMNS,
    PreparedRecord,
    StoreItem,
    abstract_sections,
    other_languages,
    with_values,
)
from ingest.rules import Counter, SourceRanks, StoredState, plan_batch
from ingest.runs import (
    ARTICLE_SOURCES,
    CHECK_FAILED,
    STORE_LEASE,
    WINDOW_SOURCES,
    IngestCounts,
    RunLedger,
    add_run_counts,
    holds_store_writer,
    judge_runs_in,
    verify_store_writer,
)
from litpulse.core.db import (
    TERM_FORMS_CHECKPOINT,
    bulk_insert,
    bulk_load,
    bulk_update,
    bulk_upsert,
    catch_up_mark,
    count_whole,
    counts_kept,
    db_now,
    fill_term_forms,
    fold_counts,
    id_in,
    id_in_clause,
    live_lease,
    mark_written,
    retry_conflicts,
    set_catch_up_mark,
    upsert,
)
from litpulse.core.errors import ConfigError, NotFoundError
from litpulse.core.schema import (
    article_terms,
    articles,
    ingest_runs,
    quarantine,
    source_files,
    source_times,
)
from litpulse.core.settings import Settings
from litpulse.core.states import RunStatus
from litpulse.core.text import clean_doi, doi_forms, doi_key
from litpulse.core.timeutil import as_date, as_utc, iso, nlm_day_start, utcnow

__all__ = [
    "COUNTS_CHECKPOINT", "IngestCounts", "RECOUNT_STEP", "Store", "UNKNOWN_ISSUE", "store_counts",
]  # fmt: skip

logger = logging.getLogger(__name__)

#: The checkpoint ``(scope, key)`` whose status ``deferred`` says the in-corpus citation
#: counts wait for :meth:`Store.finish_counts`.
COUNTS_CHECKPOINT = ("store", "cited_by_in_corpus")
#: Set once the rows of NLM files carry their file's year in ``source_sequence``
#: (:func:`ingest.records.nlm_sequence`); stores made before hold the number alone.
SEQUENCE_CHECKPOINT = ("store", "nlm_sequence")
#: Stores (engine URLs) this process found upgraded: the check is one query a process.
_SEQUENCES_CURRENT: set[str] = set()
#: Set once the rows a file whose name only began like an NLM file's wrote carry the
#: plain file's source (:meth:`Store.upgrade_plain_names`).
PLAIN_NAMES_CHECKPOINT = ("store", "plain_names")
#: Stores this process found with those rows upgraded.
_PLAIN_NAMES_CURRENT: set[str] = set()
#: What :meth:`Store.reissue` says an issue replaced was where its MD5 was never recorded
#: (a local copy read by a release before MD5s were: ``source_times.md5`` NULL).
UNKNOWN_ISSUE = "unknown"
#: Set once ``source_times`` holds the as-of time of every NLM file whose records a store
#: made before that table holds (:meth:`Store.upgrade_source_times`).
SOURCE_TIMES_CHECKPOINT = ("store", "source_times")
#: Stores this process found with ``source_times`` filled.
_SOURCE_TIMES_CURRENT: set[str] = set()
#: Set once the bilingual articles stored before their other languages were ``lang``
#: terms (:func:`ingest.rows.other_languages`) have them.
LANG_TERMS_CHECKPOINT = ("store", "lang_terms")
#: Stores this process found with their ``lang`` terms complete.
_LANG_TERMS_CURRENT: set[str] = set()
#: Set once the rows an older release stored for window runs killed (or failed) before
#: their data-quality check carry those runs in ``articles.run_id``
#: (:meth:`Store.upgrade_run_ids`).
RUN_IDS_CHECKPOINT = ("store", "run_ids")
#: Stores this process found with ``articles.run_id`` filled.
_RUN_IDS_CURRENT: set[str] = set()
#: How far the period ends (a date filter meets the whole of an issue's period, "2019
#: Nov-Dec", "2000 Spring") are caught up with the rows written (:func:`catch_up_mark`),
#: read as this release reads them (:data:`PERIOD_DATES_CHECKPOINT`). A key of this
#: reading's own: releases before it move ``("store", "pub_period_end")`` to the end of
#: the rows they write with their own reading (a numeric month ending on 31 December);
#: during a rolling upgrade that mark would hide those rows from this release's catch-up.
PERIOD_END_CHECKPOINT = ("store", "pub_period_end:period_dates")
#: Set once every stored row's period is read as this release reads its date text
#: (:meth:`Store.upgrade_period_ends`): earlier releases ended a numeric ``<Month>03``
#: issue on 31 December, gave ``2019 Dec-Jan`` no end and ``<Season>Sep-Dec</Season>`` no
#: month.
PERIOD_DATES_CHECKPOINT = ("store", "period_dates")
#: Stores this process found with their periods re-read.
_PERIOD_DATES_CURRENT: set[str] = set()
#: Rows a pass over the articles' periods reads at a time (memory stays flat).
PERIOD_PAGE = 10_000
#: Longest text a quarantine listing filters source locations by (a path, a request).
MAX_LOCATION_FILTER = 4096
#: PMIDs per transaction of a full recount (PubMed's ~40 M PMIDs: ~160 statements).
RECOUNT_STEP = 250_000

#: Columns rewritten when a record replaces the stored one (not ingested_at, not iCite;
#: never ``first_ingested_at``: no update list names it, an insert alone writes it).
_RECORD_COLUMNS = (
    "version date_revised source_sequence source_time source_kind source_location "
    "source_position title "
    "vernacular_title abstract journal pub_year pub_month pub_day pub_date_raw pub_period_end "
    "article_date "
    "entrez_date best_date language doi pmcid is_retracted is_book is_deleted deleted_at "
    "has_abstract text_hash content_hash authors mesh publication_types record updated_at "
    "run_id"
).split()
#: Columns rewritten when a record lifts a stored tombstone: the article enters the live
#: corpus again, so the time it did moves too (``ingested_at``: when the article last
#: became live; a digest's "new since" compares it). ``first_ingested_at`` stays (retrain:
#: an article an earlier round trained on is no new literature when it comes back); a
#: bare tombstone's, NULL, becomes the lift's time (:meth:`Store._apply_batch`).
_LIFT_COLUMNS = [*_RECORD_COLUMNS, "ingested_at"]
#: Columns rewritten when a deletion tombstones a stored row.
_TOMBSTONE_COLUMNS = (
    "is_deleted deleted_at source_sequence source_time source_kind source_location "
    "source_position updated_at run_id"
).split()

#: Columns a touch moves (:data:`_TOUCH_SOURCE`), after the PMID.
_TOUCH_COLUMNS = ("source_sequence", "source_time", "source_kind", "source_location",
                  "source_position")  # fmt: skip
#: Moves the source of a stored record forward when a later source repeats it unchanged.
_TOUCH_SOURCE = (
    update(articles)
    .where(articles.c.pmid == bindparam("b_pmid"))
    .values(
        source_sequence=bindparam("b_seq"),
        source_time=bindparam("b_time"),
        source_kind=bindparam("b_kind"),
        source_location=bindparam("b_loc"),
        source_position=bindparam("b_pos"),
    )
)


#: How many of the rows written last :meth:`Store.entered_live` reads at most (a week or
#: more of nightly windows, new records and revisions together).
RECENT_ROWS = 200_000


class Store(RunLedger, Checkpoints):
    """Reads and writes articles and quarantine; runs and checkpoints come from its bases.

    Args:
        engine: An engine from :func:`litpulse.core.db.connect` (tables exist).
    """

    def __init__(self, engine: Engine, *, bulk: bool = True, defer_counts: bool = False) -> None:
        self.engine = engine
        self.bulk = bulk
        self.defer_counts = defer_counts
        self._marked = False
        #: term spellings known to be in ``term_forms`` (committed ones only)
        self._term_forms: set[tuple[str, str]] = set()

    @classmethod
    def from_settings(cls, settings: Settings) -> Store:
        """The store of the configured database."""
        from litpulse.core.db import connect

        return cls(connect(settings))

    # ------------------------------------------------------------------------- apply

    def apply(
        self,
        items: Iterable[StoreItem],
        *,
        run_id: int | None = None,
        batch_size: int = 1000,
        on_batch: Callable[[IngestCounts], None] | None = None,
        start: int = 0,
        in_batch: Callable[[Connection, IngestCounts, int], None] | None = None,
    ) -> IngestCounts:
        """Apply records, deletions and quarantine entries in order.

        Args:
            items: Parsed items of one source, in source order from its item ``start``
                (an item's ordinal here plus ``start`` is its position in the source: see
                the module docstring).
            run_id: The ingest run they belong to (stamped on the article rows it writes
                or takes over, :func:`ingest.rules.plan_batch`, and on quarantine rows).
            batch_size: Items per transaction.
            on_batch: Called with the counts of each batch once it is committed (so a
                caller can record what was stored before a later batch fails).
            start: The position in the source of the first of ``items`` (a caller that
                knows which items a killed call committed goes on after them).
            in_batch: Called inside each batch's transaction, before it commits, with
                the connection, this call's counts so far and the position the source is
                applied to (a progress mark that commits with the batch, or not at all).

        Returns:
            The counts of this call.
        """
        if batch_size <= 0:
            raise ConfigError(f"batch_size must be positive, got {batch_size!r}")
        self.upgrade_sequences()
        self.upgrade_plain_names()  # before source_times: a plain file has no as-of time
        self.upgrade_source_times()
        self.upgrade_lang_terms()
        self.upgrade_run_ids()
        self.upgrade_checkless_runs()
        self.catch_up_period_ends()  # rows a previous release wrote (or a store before it)
        fill_term_forms(self.engine)  # their spellings likewise
        counter = Counter()
        touched: set[int] = set()
        # each source with the time the store gives it (ingest.rules), and the ranks
        order: dict[SourceRef, SourceRef] = {}
        ordered: dict[SourceRef, SourceRef] = {}
        rank: SourceRanks | None = None
        first = start
        written: set[int] = set()  # PMIDs whose rows this call wrote (new, replaced, deleted)
        take_over, judged = self._run_state(run_id)
        with bulk_load(self.engine), _gc_paused():
            for batch in _batches(items, batch_size):
                if self.defer_counts and not self._marked:  # before the batch commits
                    self.set_checkpoint(*COUNTS_CHECKPOINT, "deferred", {"since": iso(utcnow())})
                    self._marked = True
                before = counter.freeze()
                new = _new_sources(batch, order)
                if new or rank is None:  # a first read is committed before its batch
                    order.update({s: s for s in new} | self.record_sources(new))
                    ordered = {s: o for s, o in order.items() if o is not s}
                    rank = self.source_ranks()
                # PostgreSQL may roll the batch back to break a deadlock with a writer
                # outside the lease (an iCite load): it runs again from the same state
                fresh = _item_pmids(batch) - touched
                forms, changed = retry_conflicts(
                    functools.partial(self._commit_batch, batch, first, run_id, counter, touched,
                                      ordered, rank, take_over, judged, before, in_batch),
                    f"a batch of {len(batch)} items",
                    undo=functools.partial(_undo_batch, counter, before, touched, fresh),
                )  # fmt: skip
                self._term_forms |= forms  # committed: a batch rolled back adds nothing
                written |= changed
                first += len(batch)
                if on_batch is not None:
                    on_batch(counter.freeze() - before)
        if written:  # the rows whose updated_at this call moved, each once
            self._mark_caught_up(len(written))
            fold_counts(self.engine)  # PostgreSQL's rows of deltas this call appended, in one
        counts = counter.freeze()
        logger.info("applied %d items: %s", counts.total, counts.to_dict())
        return counts

    def _commit_batch(
        self,
        batch: list[StoreItem],
        first: int,
        run_id: int | None,
        counter: Counter,
        touched: set[int],
        ordered: dict[SourceRef, SourceRef],
        rank: SourceRanks,
        take_over: bool,
        judged: bool,
        before: IngestCounts,
        in_batch: Callable[[Connection, IngestCounts, int], None] | None = None,
    ) -> tuple[set[tuple[str, str]], set[int]]:
        """One batch in a transaction of its own (:meth:`_apply_batch`), with the run's
        counts and the caller's ``in_batch`` mark; the lease verified last, before the
        commit (a writer that lost it rolls the batch back: nothing of it is written; its
        lease row is locked only from there to the commit, so the heartbeat never waits
        out a long batch)."""
        with self.engine.begin() as conn:
            out = self._apply_batch(conn, batch, first, run_id, counter, touched, ordered, rank,
                                    take_over, judged)  # fmt: skip
            if run_id is not None:  # what a killed run stored stays counted
                add_run_counts(conn, run_id, counter.freeze() - before)
            if in_batch is not None:
                in_batch(conn, counter.freeze(), first + len(batch))
            verify_store_writer(conn)
        return out

    def _run_state(self, run_id: int | None) -> tuple[bool, bool]:
        """Whether run ``run_id`` takes over what no check judged, and whether it is
        judged already.

        Only a run covering a window (:data:`ingest.runs.WINDOW_SOURCES`) that a
        data-quality check is still to judge takes over the rows and entries it meets
        that no check judged (its check judges them). A run judged already (files, update
        files, a bootstrap: no check is to come) leaves them to the run that stored them,
        so a check meeting them later judges rows and entries alike; the entries it
        stores are judged as they are stored."""
        if run_id is None:
            return False, False
        r = ingest_runs.c
        with self.engine.connect() as conn:
            row = conn.execute(select(r.source, r.judged_at).where(r.id == run_id)).first()
        if row is None:
            return False, False
        judged = row.judged_at is not None
        return row.source in WINDOW_SOURCES and not judged, judged

    def _upgrade_once(
        self,
        checkpoint: tuple[str, str],
        current: set[str],
        work: Callable[[Any], int],  # a Connection; None with own_transactions
        what: str,
        *,
        own_transactions: bool = False,
    ) -> int:
        """Run the store upgrade ``work`` once per store (then ``checkpoint`` holds its
        count) and once per process (``current`` remembers the stores found current):
        in the checkpoint's transaction, or (``own_transactions``: ``work`` is given
        ``None``) in the transactions it opens itself, before the checkpoint's (never one
        inside another:
        a SQLite connection whose transaction is open meanwhile keeps the schema and
        rows it read first)."""
        url = self.engine.url.render_as_string(hide_password=True)
        if url in current:
            return 0
        done = 0
        if self.get_checkpoint(*checkpoint) is None:
            done = work(None) if own_transactions else 0
            with self.engine.begin() as conn:
                if not own_transactions:
                    done = work(conn)
                self.set_checkpoint(*checkpoint, "done", {"rows": done}, conn=conn)
            if done:
                logger.warning("store upgraded: %d %s", done, what)
        current.add(url)
        return done

    def upgrade_sequences(self) -> int:
        """Give rows written by an NLM file before sequences carried the year their
        file's year (:func:`ingest.records.nlm_sequence`), once per store.

        Without it a row of last year's ``pubmed25n1500`` (sequence 1,500) would beat
        this year's ``pubmed26n1335`` only until the upgrade, then any file of any year.
        One scan of the articles on the first write after the upgrade; then a checkpoint.

        Returns:
            The rows rewritten (0 when the store was current).
        """

        def work(conn: Connection) -> int:
            seq = articles.c.source_sequence
            legacy = (seq > 0) & (seq < NLM_YEAR_FACTOR)
            by_year: dict[int, list[str]] = {}
            for location in conn.execute(
                select(articles.c.source_location).where(legacy).distinct()
            ).scalars():
                order = nlm_file_order(location)
                if order is not None:
                    by_year.setdefault(order[0], []).append(location)
            done = 0
            for year, locations in sorted(by_year.items()):
                for part in chunks(locations, 500):
                    done += conn.execute(
                        update(articles)
                        .where(legacy, articles.c.source_location.in_(part))
                        .values(source_sequence=seq + year * NLM_YEAR_FACTOR)
                    ).rowcount
            return done

        what = "rows of NLM files now order by the file's year, then number"
        return self._upgrade_once(SEQUENCE_CHECKPOINT, _SEQUENCES_CURRENT, work, what)

    def upgrade_plain_names(self) -> int:
        """Give the rows a file whose name only began like an NLM file's wrote under that
        file's number the source this release gives the file, once per store.

        Earlier releases read any name beginning ``pubmedYYnNNNN`` (the parts of a split
        ``pubmed26n1320_part1.xml``, an excerpt, a fixed copy) as that NLM file: their
        rows carry its number and the time the store gave the number. This release reads
        such a file as a plain one (:func:`ingest.records.nlm_file_order`: sequence 0, its
        own fetch time), which ranks after a numbered row of its number: left alone, an
        earlier part read again would win over the rows of the later parts, bringing
        back what they revised or deleted (and, read after them, undoing it again). The
        rows get sequence 0 and their file's fetch time (:func:`ingest.checkpoints.
        files_first_read`; a file with none keeps the row's time), so reading a file
        again is a replay of its own rows, as it was, and a later part a later source.
        One scan of the numbered rows' locations on the first write after the upgrade;
        then a checkpoint.

        Returns:
            The rows rewritten (0 when the store was current).
        """

        def work(conn: Connection) -> int:
            a = articles.c
            numbered = a.source_sequence > 0
            plain = sorted(
                location
                for location in conn.execute(
                    select(a.source_location).where(numbered).distinct()
                ).scalars()
                if nlm_file_order(location) is None
            )
            read_at = files_first_read(conn, plain)
            done = 0
            for location in plain:
                values: dict[str, Any] = {"source_sequence": 0}
                if location in read_at:
                    values["source_time"] = read_at[location].timestamp()
                done += conn.execute(
                    update(articles)
                    .where(numbered, a.source_location == location)
                    .values(**values)
                ).rowcount
            return done

        what = "rows of files named like NLM files given the source of a plain file"
        return self._upgrade_once(PLAIN_NAMES_CHECKPOINT, _PLAIN_NAMES_CURRENT, work, what)

    def upgrade_source_times(self) -> int:
        """Record the as-of time of every NLM file a store made before ``source_times``
        holds records of, or applied (once per store).

        A file's as-of time is when the store first read it (:mod:`ingest.rules`); for
        those read before, the earliest fetch time among the rows it wrote, else the time
        it was recorded applied. Without them an EFetch would rank below those files.

        Returns:
            The files recorded (0 when the store was current).
        """
        a, f = articles.c, source_files.c

        def work(conn: Connection) -> int:
            first: dict[int, tuple[float, str]] = {
                seq: (at, loc)
                for seq, loc, at in conn.execute(
                    select(a.source_sequence, func.min(a.source_location),
                           func.min(a.source_time))
                    .where(a.source_sequence > 0)
                    .group_by(a.source_sequence)
                )
            }  # fmt: skip
            for seq, name, applied in conn.execute(select(f.sequence, f.name, f.applied_at)):
                order = nlm_file_order(name)
                seq = nlm_sequence(*order) if order else seq
                if seq > 0 and seq not in first:
                    first[seq] = (as_utc(applied).timestamp(), name)
            rows = [{"sequence": seq, "as_of": at, "location": loc}
                    for seq, (at, loc) in sorted(first.items())]  # fmt: skip
            for part in chunks(rows, 1000):
                upsert(conn, source_times, part, keys=["sequence"], update=[])
            return len(rows)

        what = "NLM files given the time the store first read them"
        return self._upgrade_once(SOURCE_TIMES_CHECKPOINT, _SOURCE_TIMES_CURRENT, work, what)

    def record_sources(self, sources: Iterable[SourceRef]) -> dict[SourceRef, SourceRef]:
        """Record the first read of each numbered NLM file of ``sources`` (its as-of time,
        ``source_times``: :mod:`ingest.rules`) in a transaction of its own, and return
        each with the time the store gives it (the first read's, however often and
        wherever it is read again).

        :meth:`apply` records a file's source before its first batch (a batch rolled back,
        or a kill, keeps the first read); a reader that keeps a fetch time of its own
        (``ingest --files``) records its files as it fixes those times.
        """
        sources = list(sources)
        numbered: dict[int, SourceRef] = {}
        for src in sources:
            if src.numbered:
                numbered.setdefault(src.sequence, src)
        if not numbered:
            return {}
        t = source_times.c
        rows = [{"sequence": seq, "as_of": src.fetched_at.timestamp(), "location": src.location}
                for seq, src in sorted(numbered.items())]  # fmt: skip
        with self.engine.begin() as conn:
            as_of: dict[int, float] = {}
            for part in chunks(rows, 1000):
                upsert(conn, source_times, part, keys=["sequence"], update=[])
                seqs = [r["sequence"] for r in part]
                as_of.update(conn.execute(
                    select(t.sequence, t.as_of).where(t.sequence.in_(seqs))
                ).all())  # fmt: skip
        out: dict[SourceRef, SourceRef] = {}
        for src in sources:
            if src.numbered:
                at = as_of[src.sequence]
                if at == src.fetched_at.timestamp():
                    out[src] = src
                else:
                    out[src] = replace(src, fetched_at=dt.datetime.fromtimestamp(at, dt.UTC))
        return out

    def reissue(
        self,
        src: SourceRef,
        md5: str,
        was: str = "",
        *,
        unknown: bool = False,
        content: Callable[[], str] | None = None,
        conn: Connection | None = None,
    ) -> str:
        """Give a re-issue of the numbered NLM file ``src`` (NLM published it again under
        its name, with the MD5 ``md5``) an as-of time of its own, later than every earlier
        issue's, before its first batch (:mod:`ingest.rules`:
        it then ranks after the earlier issue and before the next file; what the earlier
        issue wrote is an earlier source, not a replay). Reading the same re-issue again (a
        run killed in it, resumed) keeps the time its first read was given. ``was``, the
        MD5 of the issue it replaces, is kept among the earlier issues'
        (``source_times.earlier``: :meth:`file_issues`). Called for every file applied
        from NLM's server: one whose first read was a local copy of another issue
        (:meth:`note_first_issue`) is a re-issue too, though no run applied that copy.

        Where neither ``was`` nor the MD5 of the issue the as-of time is of is known
        (``source_times.md5`` NULL) and that time is of another read than this one (its
        ``location`` another, as a local copy's path read by a release before MD5s were
        recorded; or ``unknown``: the caller knows this read is not that one), that issue
        is unknown (:data:`UNKNOWN_ISSUE`): this one replaces it whole, as a re-issue,
        never as that copy read again (half of it replays of the positions it stored).

        ``content``: the MD5 of this issue's unpacked content
        (:func:`~litpulse.core.checksums.content_md5`), asked only where the issue
        recorded is another MD5: an unpacked ``.xml`` copy's MD5 is its content's, so the
        server's ``.xml.gz`` of the same content is that issue, not a re-issue of it.

        ``conn``: do it inside that open transaction (with what records the re-issue
        for a run that resumes it), else in a transaction of its own.

        Returns:
            The MD5 of the issue replaced where the as-of time moved (:data:`UNKNOWN_ISSUE`
            where not recorded); ``""`` where it did not (this issue had it already, or
            the file was never read: its first read records it).
        """
        if conn is None:
            with self.engine.begin() as own:
                return self.reissue(src, md5, was, unknown=unknown, content=content, conn=own)
        t = source_times.c
        row = conn.execute(
            select(t.as_of, t.md5, t.earlier, t.location).where(t.sequence == src.sequence)
        ).first()  # fmt: skip
        if row is None or row.md5 == md5 or (
            row.md5 is not None and content is not None and row.md5 == content()
        ):  # this issue (its unpacked content's MD5, as an unpacked copy's recorded)
            return ""
        # the issue the as-of time is of: the one applied (``was``), else the one its
        # first read recorded (a local copy: note_first_issue); neither known: the
        # first read is this issue's own, unless it was another read (unknown issue)
        was = was or row.md5 or ""
        if not was and (unknown or row.location.lower() != src.location.lower()):
            was = UNKNOWN_ISSUE
        if not was:
            return ""
        at = max(src.fetched_at.timestamp(), row.as_of + 0.001)
        earlier = list(row.earlier or [])
        for old in (row.md5, was):  # the issue a copy was read as, and the one replaced
            if old and old not in (md5, UNKNOWN_ISSUE) and old not in earlier:
                earlier.append(old)
        conn.execute(
            update(source_times)
            .where(t.sequence == src.sequence)
            .values(as_of=at, md5=md5, location=src.location, earlier=earlier or None)
        )  # fmt: skip
        return was

    def issues_read(self, sequences: Iterable[int]) -> dict[int, str | None]:
        """The issue (``source_times.md5``; ``None``: not recorded) this store read of each
        numbered NLM file of ``sequences`` it read at all: one read for a run's files, so
        that :meth:`reissue` is asked only of a file read before as another issue."""
        t = source_times.c
        wanted = sorted(set(sequences))
        out: dict[int, str | None] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(wanted), 500):
                part = wanted[start : start + 500]
                for sequence, md5 in conn.execute(
                    select(t.sequence, t.md5).where(t.sequence.in_(part))
                ):
                    out[int(sequence)] = md5
        return out

    def note_first_issue(self, src: SourceRef, md5: str) -> None:
        """Record ``md5`` as the issue of the numbered file ``src`` whose first read gave
        the file its as-of time (``src.fetched_at``; a local copy ``ingest --files``
        read), where no issue is recorded: an update-file run that then applies another
        issue applies it as a re-issue (:meth:`reissue`), not as that copy read again."""
        t = source_times.c
        with self.engine.begin() as conn:
            conn.execute(
                update(source_times)
                .where(t.sequence == src.sequence, t.md5.is_(None),
                       t.as_of == src.fetched_at.timestamp())
                .values(md5=md5)
            )  # fmt: skip

    def file_issues(self, year: int, number: int) -> tuple[str | None, list[str], bool]:
        """The issues of NLM file ``pubmed{year}n{number}`` this store read: the MD5 of
        the one read last (``None``: none recorded), those of the earlier issues re-issues
        replaced (:meth:`reissue`), oldest first, and whether the last was applied from
        NLM's server (``source_files``, however the listing spelled its name) rather than
        read from a local copy only (``source_times.md5``: :meth:`note_first_issue`, or a
        copy read as a re-issue of it)."""
        f, t = source_files.c, source_times.c
        with self.engine.connect() as conn:
            applied = conn.execute(
                select(f.md5).where(func.lower(f.name) == nlm_file_name(year, number))
            ).scalar()  # fmt: skip
            row = conn.execute(
                select(t.md5, t.earlier).where(t.sequence == nlm_sequence(year, number))
            ).first()  # fmt: skip
        earlier = list(row.earlier or []) if row is not None else []
        if applied is not None:
            return applied, earlier, True
        return (row.md5 if row is not None else None), earlier, False

    def earlier_issue_rows(self, src: SourceRef) -> int:
        """The live rows an earlier issue of the numbered file ``src`` wrote that its
        current issue (the as-of time ``source_times`` holds) did not write or touch:
        records only the earlier issue held (kept: no issue deleted them)."""
        a, t = articles.c, source_times.c
        with self.engine.connect() as conn:
            as_of = conn.execute(
                select(t.as_of).where(t.sequence == src.sequence)
            ).scalar_one_or_none()  # fmt: skip
            if as_of is None:
                return 0
            return int(conn.execute(
                select(func.count()).select_from(articles).where(
                    a.source_sequence == src.sequence, a.source_time < as_of,
                    a.is_deleted.is_(False),
                )
            ).scalar_one())  # fmt: skip

    def source_ranks(self) -> SourceRanks:
        """The ranks of sources (:class:`ingest.rules.SourceRanks`) from the as-of times of
        every numbered file this store has read (a few thousand rows for all of PubMed)."""
        t = source_times.c
        with self.engine.connect() as conn:
            return SourceRanks(conn.execute(select(t.as_of, t.sequence)).all())

    def upgrade_lang_terms(self) -> int:
        """Give the bilingual articles stored before their other languages were ``lang``
        terms those terms (a language filter finds them by any of their languages), once
        per store: one pass over the articles whose record lists several languages, on
        the first write after the upgrade; then a checkpoint.

        Returns:
            The terms added (0 when the store was current).
        """
        a = articles.c
        languages = a.record["languages"]

        def work(conn: Connection) -> int:
            added, last = 0, 0
            while True:  # by PMID, a page at a time: memory stays flat
                page = conn.execute(
                    select(a.pmid, a.language, type_coerce(languages, JSON))
                    .where(a.pmid > last, func.json_array_length(languages) > 1)
                    .order_by(a.pmid)
                    .limit(10_000)
                ).all()
                if not page:
                    return added
                last = page[-1][0]
                rows = [{"pmid": pmid, "kind": "lang", "term": term, "major": False}
                        for pmid, first, codes in page
                        for term in other_languages(first, codes or [])]  # fmt: skip
                if rows:
                    upsert(conn, article_terms, rows, keys=["pmid", "kind", "term"], update=[])
                added += len(rows)

        what = "language terms of bilingual articles added"
        return self._upgrade_once(LANG_TERMS_CHECKPOINT, _LANG_TERMS_CURRENT, work, what)

    def upgrade_run_ids(self) -> int:
        """Give the rows an older release stored for the window runs whose check never
        came those runs (``articles.run_id``), once per store.

        That release kept no run on a row; this one reads a row without one as judged
        by a check (met again on a later window's overlap day: ``reseen``, not new).
        Right for every row but those of a window killed (or failed) between its ingest
        and its check: its rerun after the upgrade must take those rows over and judge
        them, as the rerun does under either release alone, or its check reads the
        window's bad records alone (5 of 5 where a clean run reads 5 of 1,005) and fails
        once. A window run's rows are left as judged when a check judged the run
        (:func:`_judged_by_a_check`) or a later run of a window overlapping its own did
        (an E-utilities run of all PubMed: an update-file run, or one with a query, meets
        only some of its records). The others' rows are those written between the
        previous run that wrote articles and the next one (one writer at a time; a touch
        does not move ``updated_at``), read through the index on ``updated_at``; no other
        row is read. Rows are stamped by the database's clock and runs by the writer's,
        so a run is bounded by its neighbours' times, not its own. Reading every old row
        as unjudged instead would dilute the first night after every upgrade, silently.

        Returns:
            The rows given their run (0 when the store was current).
        """
        r, a, q = ingest_runs.c, articles.c, quarantine.c

        def work(conn: Connection) -> int:
            judged_entries = set(conn.execute(
                select(q.run_id).where(q.judged_at.is_not(None)).distinct()
            ).scalars())  # fmt: skip
            runs = conn.execute(
                select(r.id, r.source, r.status, r.started_at, r.finished_at, r.judged_at,
                       r.window_start, r.window_end,
                       r.details["watermark"].as_string().label("watermark"),
                       r.details["query"].as_string().label("query"))
                .where(r.source.in_(ARTICLE_SOURCES))
                .order_by(r.started_at, r.id)
            ).all()  # fmt: skip
            through = [_judged_by_a_check(run, judged_entries) for run in runs]
            done, kept = 0, []
            for i, run in enumerate(runs):
                if run.source != "eutils":  # files, update files: no check was to come
                    continue
                if through[i] or any(
                    through[j] and _covers(runs[j], run) for j in range(i + 1, len(runs))
                ):
                    kept.append(run.id)
                    continue
                # after the last run before it that had ended when it began (one closed
                # as abandoned later, by another run's start, ended long before that)
                ended = [as_utc(p.finished_at) for p in runs[:i]
                         if p.finished_at is not None and p.finished_at <= run.started_at]
                within = [a.run_id.is_(None),
                          a.updated_at > max(ended, default=as_utc(run.started_at))]
                if i + 1 < len(runs):
                    within.append(a.updated_at < as_utc(runs[i + 1].started_at))
                done += conn.execute(update(articles).where(*within).values(run_id=run.id)).rowcount
            # what a check judged is judged whole: the entries of a run a later window's
            # check covered (its release judged the entries of its own window only)
            judge_runs_in(conn, kept)
            return done

        what = "rows of window runs killed before their check given their run"
        return self._upgrade_once(RUN_IDS_CHECKPOINT, _RUN_IDS_CURRENT, work, what)

    def upgrade_checkless_runs(self) -> int:
        """Judge the runs of local files and update files (a bootstrap's too) an older
        release left unjudged, and their quarantine entries: before every write, not once
        per store (an older release's writer goes on during a rolling upgrade, and the run
        it was running at the upgrade ends after it).

        This release judges such a run as it opens and its entries as it closes
        (``recorded_run(judged=True)``): no window's check is to come for them. Releases
        before that judged none, and :meth:`upgrade_run_ids` takes only E-utilities runs:
        left so, their rows and entries count as never judged, so the same records met
        again are counted new (not ``reseen``, ``requarantined``) and the next window
        meeting them takes them over, diluting its data-quality check with records
        stored long ago. A run still ``running`` is left to the write after it ends
        (this release's are judged already; a dead one of this host is closed
        ``abandoned`` before the write that upgrades:
        :meth:`ingest.runs.RunLedger.start_run`). One query of the small ledger; an
        UPDATE of it and of the quarantine only when it finds such a run.

        Returns:
            The quarantine entries judged (0 when there was no such run).
        """
        r = ingest_runs.c
        with self.engine.connect() as conn:
            runs = conn.execute(
                select(r.id).where(r.source.in_(sorted(ARTICLE_SOURCES - {"eutils"})),
                                   r.judged_at.is_(None), r.status != RunStatus.RUNNING)
            ).scalars().all()  # fmt: skip
        if not runs:
            return 0
        with self.engine.begin() as conn:
            done = judge_runs_in(conn, runs)
        logger.warning("store upgraded: %d runs of files and update files an older "
                       "release left unjudged judged, with %d quarantine entries",
                       len(runs), done)  # fmt: skip
        return done

    def _mark_caught_up(self, written: int) -> None:
        # ``written``: how many rows this call wrote, each counted once however many of
        # its items wrote it (a record and its revision, a record and its deletion)
        """After this writer's batches: its rows carry their period ends and spellings, so
        the catch-ups' marks move exactly to its newest row (the next catch-up reads only
        rows written after it). Only when the rows written since the marks are this
        call's own: a previous release's writer, which knows no lease, may have written
        meanwhile (a rolling upgrade); then the catch-ups run first (they read the rows
        since the marks once). Without the store-writer lease (a test's bare store) the
        marks stay where they were."""
        if not holds_store_writer(self.engine):
            return
        a = articles.c
        marks = [catch_up_mark(self.engine, key) for key in
                 (PERIOD_END_CHECKPOINT, TERM_FORMS_CHECKPOINT)]  # fmt: skip
        starts = [s for ran, s in marks if ran]  # None: every row (an empty store's pass)
        known = [s for s in starts if s is not None]
        since = min(known) if known and len(known) == len(starts) else None
        with self.engine.connect() as conn:
            query = select(func.count()).select_from(articles)
            if since is not None:
                query = query.where(a.updated_at > since)
            others = conn.execute(query).scalar_one() > written
        # marks that ran with no ``through`` (the store was empty) count every row: a
        # first ingest's end counts its rows instead of reading them all again
        if others or not all(ran for ran, _ in marks):
            self.catch_up_period_ends()
            fill_term_forms(self.engine)
        with self.engine.begin() as conn:
            through = conn.execute(select(func.max(a.updated_at))).scalar()
            for key in (PERIOD_END_CHECKPOINT, TERM_FORMS_CHECKPOINT):
                set_catch_up_mark(conn, key, through, 0, exact=True)
            verify_store_writer(conn)  # the marks are exact only while no other writer is

    def upgrade_period_ends(self) -> int:
        """Read the publication period of every stored row again as this release reads
        its date text (:func:`reread_periods`), once per store: earlier releases stored
        ``pub_period_end`` 31 December for an issue of a numeric month (``<Month>03</Month>``:
        every later range of its year took it in), no end for a period running into the
        next year (``2019 Dec-Jan``, ``2001 Fall-Winter``), and no month for EFetch's
        ``<Year>1994</Year><Season>Sep-Dec</Season>`` (dated 1 January). One pass by PMID
        over the rows with an end or a date text naming a period, on the first write (or
        API start) after the upgrade; then a checkpoint.

        Returns:
            The rows whose dates changed (0 when the store was current).
        """
        what = "articles' publication periods read again (date filters, recency)"
        # the pages commit in transactions of their own (a writer gets in between them)
        return self._upgrade_once(PERIOD_DATES_CHECKPOINT, _PERIOD_DATES_CURRENT,
                                  lambda _none: reread_periods(self.engine), what,
                                  own_transactions=True)  # fmt: skip

    def catch_up_period_ends(self) -> int:
        """Give the rows their period's end (:func:`reread_periods`): once per store every
        row (:meth:`upgrade_period_ends`), and the first time every row (a store made
        before the column: one pass by PMID); then, before each write and when the API
        starts, the rows written since the last pass (a previous release's writer during
        a rolling upgrade leaves the column empty, or writes an end it read wrong).

        Returns:
            The rows whose dates changed.
        """
        done = self.upgrade_period_ends()
        a = articles.c
        ran, since = catch_up_mark(self.engine, PERIOD_END_CHECKPOINT)
        with self.engine.connect() as conn:
            through = conn.execute(select(func.max(a.updated_at))).scalar()
        if ran and (through is None or (since is not None and through <= since)):
            return done  # nothing written since
        caught = reread_periods(self.engine, since=since)  # a page per transaction
        with self.engine.begin() as conn:
            set_catch_up_mark(conn, PERIOD_END_CHECKPOINT, through, caught)
        if caught:
            logger.warning("%d articles given the end of their issue's period (date filters)",
                           caught)
        return done + caught

    def _apply_batch(
        self,
        conn: Connection,
        batch: list[StoreItem],
        first: int,
        run_id: int | None,
        counter: Counter,
        touched: set[int],
        ordered: dict[SourceRef, SourceRef],
        rank: SourceRanks,
        take_over: bool = True,
        judged: bool = False,
    ) -> tuple[set[tuple[str, str]], set[int]]:
        """Decide (:func:`ingest.rules.plan_batch`) and write one batch at ``first``;
        returns the term spellings it added to ``term_forms`` and the PMIDs whose rows it
        wrote (their ``updated_at`` moved). ``take_over``: rows met again that no check
        judged become this run's (a window run, whose check judges them); ``judged``: the
        run is judged already (:meth:`_run_state`)."""
        now = db_now(conn)  # the database's clock: watermarks compare one clock's stamps
        pmids = _item_pmids(batch)
        states = self._read_states(conn, pmids)
        stored = set(states)
        was_live = {p for p, st in states.items() if not st.is_deleted}
        plan = plan_batch(
            batch, first, states, touched, counter, run_id=run_id, now=now, ordered=ordered,
            rank=rank, judged=_judged_runs(conn, states, run_id),
        )  # fmt: skip
        if plan.taken and take_over:  # met again, judged by no check: this run's check will
            conn.execute(update(articles).where(id_in_clause(conn, "pmid", plan.taken))
                         .values(run_id=run_id))  # fmt: skip
        if plan.touches:
            if self.bulk:
                bulk_update(conn, articles, "pmid", _TOUCH_COLUMNS,
                            [tuple(t.values()) for t in plan.touches.values()])  # fmt: skip
            else:
                conn.execute(_TOUCH_SOURCE, list(plan.touches.values()))
        changed = set(plan.full) | set(plan.tomb)
        deleted = COLUMN_INDEX["is_deleted"]
        live = {p: plan.records[p] for p, row in plan.full.items() if not row[deleted]}
        new = changed - stored
        counted: set[int] = set()
        # new rows go in with their in-corpus count (no UPDATE after), unless deferred
        if self.bulk and new and not self.defer_counts:
            counts = new_cited_by(conn, new, changed & stored, live)
            for rows in (plan.full, plan.tomb):
                for pmid in counts.keys() & rows.keys():
                    rows[pmid] = with_values(rows[pmid], {"cited_by_in_corpus": counts[pmid]})
            counted = new
        # a record that lifts a stored tombstone enters the live corpus now: its
        # ingested_at moves, so whatever follows new articles (a saved search's digest)
        # meets it, as it meets an article stored for the first time
        lifted = {p: row for p, row in plan.full.items()
                  if p in stored and p not in was_live and not row[deleted]}  # fmt: skip
        kept = {p: row for p, row in plan.full.items() if p not in lifted}
        self._write_articles(conn, kept, _RECORD_COLUMNS, stored)
        self._write_articles(conn, lifted, _LIFT_COLUMNS, stored)
        if lifted:  # a bare tombstone (no record stored before): its first record is this
            conn.execute(update(articles)
                         .where(id_in_clause(conn, "pmid", lifted),
                                articles.c.first_ingested_at.is_(None))
                         .values(first_ingested_at=articles.c.ingested_at))  # fmt: skip
        self._write_articles(conn, plan.tomb, _TOMBSTONE_COLUMNS, stored)
        if plan.written:  # the open entries stored before the batch of the PMIDs written
            # (a later record or deletion is stored); the batch's own come resolved or
            # not (ingest.rules.plan_batch). One statement, one parameter (a batch
            # resolves thousands of PMIDs). Not iCite's entries (ICITE_REASON): the
            # record says nothing of iCite's damaged data
            conn.execute(update(quarantine)
                         .where(id_in_clause(conn, "pmid", plan.written),
                                quarantine.c.resolved_at.is_(None),
                                ~quarantine.c.reason.startswith(ICITE_REASON,
                                                                autoescape=True))
                         .values(resolved_at=now))  # fmt: skip
        if plan.quarantined:
            entries = list(plan.quarantined.values())
            _count_met_again(conn, batch, plan.quarantined.keys(), run_id, counter,
                             take=take_over)
            if judged:  # a run no check is to come for: judged as they are stored
                entries = [{**e, "judged_at": now} for e in entries]
            upsert(conn, quarantine, entries, keys=["digest"], update=[])
            # an entry stored without a PMID, now known to be a PMID's (EFetch asked for
            # it alone: ingest.eutils._attribute), is named: else the PMID, settled as
            # found, would be neither owed nor quarantined under its number
            # (resolved as the entry placed here is)
            named = [{"d": r["digest"], "p": r["pmid"], "r": r["resolved_at"]}
                     for r in entries if r.get("pmid")]  # fmt: skip
            if named:
                q = quarantine.c
                conn.execute(
                    update(quarantine)
                    .where(q.digest == bindparam("d"), q.pmid.is_(None))
                    .values(pmid=bindparam("p"),
                            resolved_at=func.coalesce(q.resolved_at,
                                                      bindparam("r", type_=q.resolved_at.type))),
                    named,
                )  # fmt: skip
        if not changed:
            return set(), changed
        replace_links(
            conn, changed & stored, live, was_live, bulk=self.bulk, new=new, counted=counted,
            counts=not self.defer_counts,
        )  # fmt: skip
        return add_term_forms(conn, live, self._term_forms), changed

    def _write_articles(
        self,
        conn: Connection,
        rows: dict[int, tuple[Any, ...]],
        update: list[str],
        stored: set[int],
    ) -> None:
        """Write article rows (values of :data:`ARTICLE_COLUMNS`, JSON columns as text) by
        PMID: insert the PMIDs without a
        row (``stored``: those read before the batch), upsert the others, updating
        ``update`` of them."""
        if not rows:
            return
        if self.bulk:
            new = [r for p, r in rows.items() if p not in stored]
            old = [r for p, r in rows.items() if p in stored] if len(new) < len(rows) else []
            bulk_insert(conn, articles, new, columns=ARTICLE_COLUMNS, json_text=JSON_COLUMNS)
            bulk_upsert(conn, articles, old, keys=["pmid"], update=update,
                        columns=ARTICLE_COLUMNS, json_text=JSON_COLUMNS)  # fmt: skip
            return
        decoded = [
            {
                k: json.loads(v) if k in JSON_COLUMNS else v
                for k, v in zip(ARTICLE_COLUMNS, r, strict=True)
            }
            for r in rows.values()
        ]
        for r in decoded:  # the reference path: one statement per row
            upsert(conn, articles, [r], keys=["pmid"], update=update)

    def _read_states(self, conn: Connection, pmids: set[int]) -> dict[int, StoredState]:
        if not pmids:
            return {}
        where, param = id_in(conn, "pmid", pmids)
        rows = conn.exec_driver_sql(
            "SELECT pmid, version, date_revised, source_sequence, source_time, source_kind, "
            "source_location, source_position, content_hash, is_deleted, run_id, deleted_at "
            f"FROM articles WHERE {where}",
            (param,),
        ).all()
        date = articles.c.date_revised.type.dialect_impl(conn.dialect).result_processor(
            conn.dialect, None
        )
        stamp = articles.c.deleted_at.type.dialect_impl(conn.dialect).result_processor(
            conn.dialect, None
        )
        return {
            row[0]: StoredState(
                row[1],
                date(row[2]) if date is not None else row[2],
                row[3],
                row[4],
                row[5],
                row[6],
                row[7],
                row[8],
                bool(row[9]),
                row[10],
                # a tombstone's deletion time (a record that fills it keeps it)
                (stamp(row[11]) if stamp is not None else row[11]) if row[9] else None,
            )  # fmt: skip
            for row in rows
        }

    def recompute_cited_by(self, pmids: Iterable[int] | None = None) -> None:
        """Set ``cited_by_in_corpus`` from the references of live articles.

        Args:
            pmids: The cited articles to refresh; ``None`` refreshes every article
                (:meth:`recount_all`).
        """
        if pmids is None:
            self.recount_all()
            return
        wanted = set(pmids)

        def once() -> None:
            with self.engine.begin() as conn:
                if recompute_cited_by(conn, wanted):  # counts a search ranks by changed
                    mark_written(conn, "counts")

        # PostgreSQL may roll it back to break a deadlock with a citation load (no lease)
        retry_conflicts(once, f"the in-corpus counts of {len(wanted)} articles")

    def recount_all(self, *, step: int = RECOUNT_STEP) -> int:
        """Recount ``cited_by_in_corpus`` of every article, ``step`` PMIDs per transaction
        (:func:`ingest.links.recount_range`); returns how many rows changed. Each range is
        exact on its own, so an interrupted recount is finished by running it again."""
        if step <= 0:
            raise ConfigError(f"step must be positive, got {step!r}")
        with self.engine.connect() as conn:
            a = articles.c
            lo, hi = conn.execute(select(func.min(a.pmid), func.max(a.pmid))).one()
        changed = 0
        if lo is None:
            return 0
        for start in range(int(lo), int(hi) + 1, step):
            # PostgreSQL may roll a range back to break a deadlock with a citation load
            # (no lease), which locks the same rows in another order: it runs again
            work = functools.partial(self._recount, start, start + step)
            changed += retry_conflicts(work, f"the recount of PMIDs {start}..{start + step - 1}")
        logger.info("recounted in-corpus citations of PMIDs %d..%d: %d changed", lo, hi, changed)
        return changed

    def _recount(self, lo: int, hi: int) -> int:
        """:func:`ingest.links.recount_range` in a transaction of its own, the lease
        verified last (a writer that lost it rolls the range back)."""
        with self.engine.begin() as conn:
            changed = recount_range(conn, lo, hi)
            verify_store_writer(conn)
        return changed

    def counts_deferred(self) -> bool:
        """Whether in-corpus citation counts wait for :meth:`finish_counts` (a deferred
        load, perhaps killed, has not recounted them yet)."""
        mark = self.get_checkpoint(*COUNTS_CHECKPOINT)
        return mark is not None and mark["status"] == "deferred"

    def finish_counts(
        self, *, step: int = RECOUNT_STEP, deferred: bool | None = None
    ) -> int | None:
        """Recount every article's in-corpus citations if counts were deferred, then clear
        the mark; returns how many rows changed (``None`` when nothing was deferred).

        Args:
            step: PMIDs per transaction (:meth:`recount_all`).
            deferred: What :meth:`counts_deferred` has just answered the caller (``None``:
                read the mark here).
        """
        if not (self.counts_deferred() if deferred is None else deferred):
            return None
        changed = self.recount_all(step=step)
        self.set_checkpoint(*COUNTS_CHECKPOINT, "current", {"recounted": iso(utcnow())})
        self._marked = False
        return changed

    # ------------------------------------------------------------------------ reads

    def get_article(self, pmid: int) -> dict[str, Any]:
        """Everything stored about one PMID (the ``litpulse article --json`` shape).

        Raises:
            NotFoundError: The store has never seen the PMID.
        """
        with self.engine.connect() as conn:
            row = conn.execute(select(articles).where(articles.c.pmid == int(pmid))).first()
        # open entries of the PMID: a newer revision of it (or the record itself) that
        # could not be parsed
        bad = self.quarantined(100, pmid=int(pmid), raw=False)
        if row is None or _bare_tombstone(row._mapping):
            hint = (f"; {len(bad)} quarantined element(s) name it: `litpulse quarantine "
                    f"--pmid {int(pmid)}`" if bad else "")
            met = " (only a deletion of it was met)" if row is not None else ""
            raise NotFoundError(f"PMID {pmid} is not in the store{met}{hint}")
        return {**_article_dict(row._mapping), "quarantined": bad}

    def pmids_by_doi(self, doi: str) -> list[int]:
        """The PMIDs of the live articles with DOI ``doi`` (its case, ``doi:`` or a
        ``doi.org`` link aside: :func:`litpulse.core.text.doi_key`), in order; usually one,
        more where PubMed gave two records one DOI (an erratum, a duplicate).

        Raises:
            ConfigError: ``doi`` is not one DOI.
        """
        return self._by_doi(doi, deleted=False)

    def _by_doi(self, doi: str, *, deleted: bool) -> list[int]:
        typed = clean_doi(doi, typed=True)
        if typed is None:
            raise ConfigError(f"not a DOI: {doi!r} (a DOI reads 10.NNNN/suffix)")
        a = articles.c
        key = typed.lower()  # doi_key's: one rule on every store
        with self.engine.connect() as conn:
            found = conn.execute(
                # what either store's lower() makes of a DOI with this key (SQLite's
                # folds ASCII only: a stored É stays É), through ix_articles_doi; the
                # deleted flag wrapped, so the planner reads that index (SQLite has no
                # statistics to tell the two indexes apart)
                select(a.pmid, a.doi).where(func.lower(a.doi).in_(doi_forms(typed)),
                                            func.coalesce(a.is_deleted, True).is_(deleted))
                .order_by(a.pmid)
            ).all()  # fmt: skip
        return [int(r.pmid) for r in found if r.doi is not None and r.doi.lower() == key]

    def article_by_doi(self, doi: str) -> dict[str, Any]:
        """:meth:`get_article` of the article with DOI ``doi`` (the first PMID of
        :meth:`pmids_by_doi`), with ``same_doi``: the other PMIDs with that DOI; when no
        live article has it, a withdrawn one that had it (``is_deleted``: the API answers
        410 for it, as for its PMID).

        Raises:
            ConfigError: ``doi`` is not one DOI.
            NotFoundError: No live article has it.
        """
        pmids = self.pmids_by_doi(doi) or self._by_doi(doi, deleted=True)
        if not pmids:
            raise NotFoundError(f"no article in the store has DOI {doi_key(doi)}")
        return {**self.get_article(pmids[0]), "same_doi": pmids[1:]}

    def existing_pmids(self, pmids: Iterable[int], *, live: bool = True) -> set[int]:
        """Those of ``pmids`` the store holds as live (not deleted) articles; with
        ``live=False``, those it holds a row of, tombstones included."""
        out: set[int] = set()
        a = articles.c
        with self.engine.connect() as conn:
            for chunk in chunks(sorted({int(p) for p in pmids})):
                query = select(a.pmid).where(a.pmid.in_(chunk))
                if live:
                    query = query.where(a.is_deleted.is_(False))
                out.update(conn.execute(query).scalars())
        return out

    def judged_among(self, pmids: Iterable[int]) -> tuple[int, set[int]]:
        """Of the stored rows of ``pmids``: how many a data-quality check judged (written
        by a run a check judged, or older than ``articles.run_id``: none, after
        :meth:`upgrade_run_ids`) — those a run meeting them unchanged counts as met again
        (:attr:`IngestCounts.reseen`, :func:`ingest.rules.plan_batch`) — and the runs no
        check judged that wrote the others (a run meeting them takes them over)."""
        self.upgrade_run_ids()
        self.upgrade_checkless_runs()
        a, r = articles.c, ingest_runs.c
        by_run: dict[int | None, int] = {}
        with self.engine.connect() as conn:
            for chunk in chunks(sorted({int(p) for p in pmids})):
                for run_id, count in conn.execute(
                    select(a.run_id, func.count()).where(a.pmid.in_(chunk)).group_by(a.run_id)
                ):
                    by_run[run_id] = by_run.get(run_id, 0) + int(count)
            runs = sorted(i for i in by_run if i is not None)
            judged = set(conn.execute(
                select(r.id).where(id_in_clause(conn, "id", runs), r.judged_at.is_not(None))
            ).scalars()) if runs else set()  # fmt: skip
        met = by_run.get(None, 0) + sum(by_run[i] for i in judged)
        return met, {int(i) for i in runs if i not in judged}

    def unlisted_entered(
        self, listed: Iterable[int], start: dt.date, end: dt.date
    ) -> list[int]:
        """Live articles entered (``entrez_date``) in ``[start, end]`` that ``listed`` (a
        window's ESearch) lacks, within the PMID span of the listed ones entered then.

        PubMed numbers records as it creates them, so the PMIDs a window created lie in a
        narrow span: a key range read, not a scan of every article's date.
        """
        a = articles.c
        entered = a.entrez_date.between(start, end)
        wanted = sorted({int(p) for p in listed})
        lo: int | None = None
        hi: int | None = None
        with self.engine.connect() as conn:
            for chunk in chunks(wanted):
                low, high = conn.execute(
                    select(func.min(a.pmid), func.max(a.pmid)).where(a.pmid.in_(chunk), entered)
                ).one()
                if low is not None:
                    lo = low if lo is None else min(lo, low)
                    hi = high if hi is None else max(hi, high)
            if lo is None or hi is None:
                return []
            found = conn.execute(
                select(a.pmid).where(a.pmid.between(lo, hi), entered, a.is_deleted.is_(False))
            ).scalars()
            return sorted(set(found) - set(wanted))

    def entered_by_day(
        self, listed: Iterable[int], first: dt.date, last: dt.date
    ) -> dict[dt.date, int]:
        """How many of ``listed`` (a window's ESearch) the store holds entered
        (``entrez_date``) on each day of ``first``..``last``; days with none are left out.
        Read by primary key, in chunks."""
        a = articles.c
        out: dict[dt.date, int] = {}
        with self.engine.connect() as conn:
            for chunk in chunks(sorted({int(p) for p in listed})):
                rows = conn.execute(
                    select(a.entrez_date, func.count())
                    .where(a.pmid.in_(chunk), a.entrez_date.between(first, last))
                    .group_by(a.entrez_date)
                ).all()
                for day, n in rows:
                    key = as_date(day)
                    if key is not None:
                        out[key] = out.get(key, 0) + int(n)
        return out

    def entered_live(self, day: dt.date, limit: int) -> list[int]:
        """Up to ``limit`` live articles entered on PubMed's ``day`` (``entrez_date``), among
        the :data:`RECENT_ROWS` rows written last since that day began.

        Read through the index on ``updated_at``, newest first: a record entered on ``day``
        can only have been written once the day had begun in Bethesda
        (:func:`litpulse.core.timeutil.nlm_day_start`), and the window that searches it
        again comes within days, so its records are among the rows written last. A bulk
        load since then is read no further than that bound, never in whole.
        """
        a = articles.c
        recent = (
            select(a.pmid, a.entrez_date, a.is_deleted)
            .where(a.updated_at >= nlm_day_start(day))
            .order_by(a.updated_at.desc())
            .limit(RECENT_ROWS)
            .subquery()
        )
        r = recent.c
        with self.engine.connect() as conn:
            found = conn.execute(
                select(r.pmid)
                .where(r.entrez_date == day, r.is_deleted.is_(False))
                .order_by(r.pmid)
                .limit(limit)
            ).scalars()
            return list(found)

    def status(self, *, runs: int = 5) -> dict[str, Any]:
        """Counts of the store and the latest runs."""
        with self.engine.connect() as conn:
            counts = store_counts(conn)
            missing_counts = owing.counts(conn)
            alerts_owed = owing.untold_count(conn)
        return {
            "articles": counts["live"],
            **{k: counts[k] for k in ("deleted", "retracted", "quarantined", "references")},
            "newest_best_date": counts["newest_best_date"],
            "citation_counts": (
                "waiting for the recount at the end of the bootstrap"
                if self.counts_deferred()
                else "current"
            ),
            "missing": missing_counts,
            # given-up PMIDs whose alert is owed: the next ingest of the application,
            # whatever its source, posts it (litpulse.pipeline.alerts.tell_given_up)
            "alerts_owed": alerts_owed,
            "writer": self._writer(),
            "last_runs": self.runs(runs),
        }

    def _writer(self) -> str | None:
        """Who holds the store's writer lease (:data:`ingest.runs.STORE_LEASE`) and until
        when unless renewed; ``None`` when no live process writes articles (a killed
        writer's lease, not yet expired, names nobody: :func:`~litpulse.core.db.live_lease`)."""
        held = live_lease(self.engine, STORE_LEASE)
        return None if held is None else f"{held.holder}, until {iso(held.until)}"

    def missing_pmids(self, limit: int = 1000) -> list[dict[str, Any]]:
        """The PMIDs E-utilities windows listed and EFetch has not returned yet (owed, or
        given up), oldest first (:mod:`ingest.missing`)."""
        return owing.listing(self.engine, limit)

    def quarantined(
        self,
        limit: int = 50,
        *,
        resolved: bool = False,
        pmid: int | None = None,
        run_id: int | None = None,
        location: str | None = None,
        before: int | None = None,
        raw: bool = True,
    ) -> list[dict[str, Any]]:
        """The latest quarantined elements still open (``resolved``: those a later record
        or deletion of their PMID resolved as well): what, why, from where; newest first.

        Args:
            limit: Entries at most.
            resolved: Resolved entries too.
            pmid: Only the entries of this PMID.
            run_id: Only those the run stored (or, met again before a check judged them,
                took over).
            location: Only those whose source location holds this text (a file's name).
            before: Only entries older than this id (the next page: the last id shown).
            raw: With each entry's raw XML.
        """
        q = quarantine.c
        query = select(quarantine).order_by(q.id.desc()).limit(limit)
        if not resolved:
            query = query.where(q.resolved_at.is_(None))
        if pmid is not None:
            query = query.where(q.pmid == int(pmid))
        if run_id is not None:
            query = query.where(q.run_id == int(run_id))
        if location:
            if len(location) > MAX_LOCATION_FILTER:  # SQLite refuses longer LIKE patterns
                raise ConfigError(f"a source filter is at most {MAX_LOCATION_FILTER} "
                                  f"characters, got {len(location)}")
            query = query.where(q.source_location.contains(location, autoescape=True))
        if before is not None:
            query = query.where(q.id < int(before))
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [_quarantine_dict(r._mapping, raw=raw) for r in rows]

    def quarantine_entry(self, entry_id: int) -> dict[str, Any]:
        """One quarantine entry, with its raw XML.

        Raises:
            NotFoundError: No entry has this id.
        """
        with self.engine.connect() as conn:
            row = conn.execute(select(quarantine).where(quarantine.c.id == int(entry_id))).first()
        if row is None:
            raise NotFoundError(f"no quarantine entry {entry_id} (`litpulse quarantine --all` "
                                "lists them)")
        return _quarantine_dict(row._mapping, raw=True)


def reread_periods(engine: Engine, *, since: dt.datetime | None = None) -> int:
    """Bring the stored dates of the rows (written after ``since``, or all) that hold a
    period end or whose date text names a period (:data:`ingest.dates.PERIOD_MARKS`) to
    what this release reads from that text: the end (:func:`ingest.dates.period_end`),
    and where the row has no month though its text gives one (EFetch's ``<Season>Sep-Dec
    </Season>``, stored by earlier releases as the year alone), that month and day
    (:func:`ingest.dates.parse_medline_date`, as the parser reads it now) with the best
    date (recency's, and a date filter's) they make. By PMID, :data:`PERIOD_PAGE` rows at
    a time, each page its own transaction (a writer waiting for SQLite's write lock gets
    it between pages); marks the store version when a row changed (a search ranks by
    these).

    No lease is held (the API server runs it at start-up): a row is written only if it
    still holds the dates it was read with, so a version an ingest committed after the
    page was read keeps its own dates (this release's writer stores them right).

    Returns:
        The rows changed.
    """
    a = articles.c
    raw = func.lower(a.pub_date_raw)
    periodic = or_(*(raw.like(f"%{mark}%") for mark in PERIOD_MARKS))
    read = (a.pub_year, a.pub_month, a.pub_day, a.pub_date_raw, a.pub_period_end,
            a.article_date, a.entrez_date, a.best_date)  # fmt: skip
    write = (
        update(articles)
        .where(a.pmid == bindparam("b_pmid"),
               *(col.is_not_distinct_from(bindparam(f"o_{col.key}")) for col in read))
        .values(pub_month=bindparam("b_month"), pub_day=bindparam("b_day"),
                pub_period_end=bindparam("b_end"), best_date=bindparam("b_best"))
    )  # fmt: skip

    def page_after(last: int) -> tuple[int | None, int]:
        """One page after PMID ``last``: (its last PMID, or ``None`` past the end; rows
        changed), in one transaction."""
        query = (
            select(a.pmid, *read)
            .where(a.pmid > last, a.pub_year.is_not(None),
                   or_(a.pub_period_end.is_not(None), periodic))
            .order_by(a.pmid)
            .limit(PERIOD_PAGE)
        )  # fmt: skip
        if since is not None:
            query = query.where(a.updated_at > since)
        with engine.begin() as conn:
            page = conn.execute(query).all()
            if not page:
                return None, 0
            changed = []
            for pmid, *old in page:
                year, month, day, text, end, article_date, entrez_date, best = old
                new_month, new_day, new_best = month, day, best
                if month is None and text:  # a month the text gives and the row lacks
                    again = parse_medline_date(text)
                    if again.year == year and again.month is not None:
                        new_month, new_day = again.month, again.day
                        start = PartialDate(year, new_month, new_day).as_date()
                        new_best = article_date or start or entrez_date
                new_end = period_end(PartialDate(year, new_month, new_day, text or ""))
                if (new_month, new_day, new_end, new_best) != (month, day, end, best):
                    row = {f"o_{col.key}": value for col, value in zip(read, old, strict=True)}
                    changed.append(row | {"b_pmid": pmid, "b_month": new_month,
                                          "b_day": new_day, "b_end": new_end,
                                          "b_best": new_best})  # fmt: skip
            written = 0
            if changed:
                result = conn.execute(write, changed)
                written = result.rowcount if result.rowcount >= 0 else len(changed)
                if written:
                    mark_written(conn, "dates")
            return int(page[-1][0]), written

    done, last = 0, 0
    while True:  # by PMID, a page at a time: memory stays flat
        after, written = retry_conflicts(functools.partial(page_after, last),
                                         "period ends' catch-up")  # fmt: skip
        if after is None:
            break
        last, done = after, done + written
    return done


def _bare_tombstone(m: Any) -> bool:
    """A row a deletion of a PMID never stored made (version 0): no record ever held it."""
    return bool(m["is_deleted"]) and not m["version"]


def _quarantine_dict(m: Any, *, raw: bool) -> dict[str, Any]:
    out = {
        "id": m["id"],
        "pmid": m["pmid"],
        "reason": m["reason"],
        "source_kind": m["source_kind"],
        "source_location": m["source_location"],
        "line": m["line"],
        "run_id": m["run_id"],
        "digest": m["digest"],
        "created_at": iso(m["created_at"]),
        "resolved_at": iso(m["resolved_at"]),
    }
    if raw:
        out["raw_xml"] = m["raw_xml"]
    return out


def store_counts(conn: Connection) -> dict[str, Any]:
    """The store's counts: the one query behind ``litpulse status`` and ``GET /status``.

    Read from the counts the database keeps (:func:`litpulse.core.db.keep_counts`: no
    scan of ``articles`` or ``references``), exact as a ``count(*)``; the two dates by
    index. A store whose counts are not kept yet is counted whole.

    Returns:
        ``live``, ``deleted``, ``retracted``, ``with_abstract``, ``with_citations``,
        ``quarantined``, ``references`` (ints) and ``newest_best_date``,
        ``last_updated_at`` (ISO text or ``None``).
    """
    a = articles.c
    kept = counts_kept(conn)
    whole = kept or count_whole(conn)  # a store whose counts are not kept (yet): counted
    # the newest date that is not ahead of today (an issue dated next year): a walk down
    # ix_articles_best_date from today to the first live row
    newest = conn.execute(
        select(a.best_date)
        .where(a.best_date <= utcnow().date(), a.is_deleted.is_(False))
        .order_by(a.best_date.desc())
        .limit(1)
    ).scalar()
    last = conn.execute(select(func.max(a.updated_at))).scalar()  # ix_articles_updated_at
    n_quarantined = conn.execute(
        select(func.count()).select_from(quarantine).where(quarantine.c.resolved_at.is_(None))
    ).scalar()
    names = ("live", "deleted", "retracted", "with_abstract", "with_citations")
    out: dict[str, Any] = {n: whole[n] for n in names}
    out.update(
        quarantined=int(n_quarantined or 0),
        references=whole["refs"],
        newest_best_date=iso(newest),
        last_updated_at=iso(last),
    )
    return out


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while the block runs (as it was, after it): around
    :meth:`Store.apply`.

    Storing allocates a few hundred thousand container objects per batch (unpickled
    items, rows, link rows, bind conversions), nearly all freed by reference counting;
    with the collector on, its passes scan them first: ~a fifth of the writer's CPU
    (measured 69-74 -> 49-58 µs a record on PostgreSQL). Items, rows and statements
    make no cycles (a 20k-record file, parsed here or in a worker, leaves ~10
    unreachable objects), and whatever cycle there is is collected after the call.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _count_met_again(
    conn: Connection,
    batch: list[StoreItem],
    digests: Iterable[str],
    run_id: int | None,
    counter: Counter,
    *,
    take: bool = True,
) -> None:
    """Count the quarantine entries of ``batch`` met again
    (:attr:`IngestCounts.requarantined`): in quarantine already and judged by a
    data-quality check (``judged_at``: :func:`ingest.quality.check_ingest`).

    An entry no check has judged yet (its run was killed, failed, or stopped before its
    check) is still new, and this run takes it over (``take``: a run whose check is to
    come, as it takes the rows over), so that this run's check judges it.
    """
    q = quarantine.c
    known: set[str] = set()
    taken: list[str] = []
    for part in chunks(sorted(digests)):
        rows = conn.execute(
            select(q.digest, q.run_id, q.judged_at).where(q.digest.in_(part))
        ).all()
        for digest, stored_by, judged in rows:
            if judged is not None:
                known.add(digest)
            elif stored_by != run_id:
                taken.append(digest)
    counter.requarantined += sum(
        1 for it in batch if isinstance(it, QuarantineEntry) and it.digest in known
    )
    if taken and take and run_id is not None:
        for part in chunks(taken):
            conn.execute(update(quarantine).where(q.digest.in_(part)).values(run_id=run_id))


def _judged_by_a_check(run: Any, judged_entries: set[int]) -> bool:
    """Whether a check judged what run ``run`` (an ``ingest_runs`` row) stored, as an
    older release's ledger says it (:meth:`Store.upgrade_run_ids`): its ``judged_at``;
    a quarantine entry of it judged (the check marks them whatever its verdict); a window
    released (no ``watermark`` left: its check passed) or never held (a run by hand, an
    update-file run: taken as it came); or withheld by the check's own failure. A run
    still :data:`~ingest.runs.PENDING_CHECK`, withheld by a step before its check (the
    citations), or not succeeded, was judged by nothing."""
    if run.judged_at is not None or run.id in judged_entries:
        return True
    if run.status != RunStatus.SUCCEEDED:
        return False
    return run.watermark is None or run.watermark == CHECK_FAILED


def _covers(later: Any, run: Any) -> bool:
    """Whether run ``later`` searched all PubMed over days of ``run``'s window: what its
    check judged includes the records of ``run`` it met again."""
    return (
        later.source == "eutils" and later.query is None
        and None not in (later.window_start, later.window_end, run.window_start, run.window_end)
        and later.window_start < run.window_end and run.window_start < later.window_end
    )  # fmt: skip


def _judged_runs(
    conn: Connection, states: dict[int, StoredState], run_id: int | None
) -> set[int]:
    """The runs, of those that wrote the stored rows ``states``, a data-quality check has
    judged (``ingest_runs.judged_at``): one query over their distinct ids, none when no
    row was stored by another run (a first ingest, the rows this run wrote)."""
    ids = {st.run_id for st in states.values() if st.run_id is not None} - {run_id}
    if not ids:
        return set()
    r = ingest_runs.c
    return set(
        conn.execute(
            select(r.id).where(id_in_clause(conn, "id", ids), r.judged_at.is_not(None))
        ).scalars()
    )


def _new_sources(batch: list[StoreItem], known: dict[SourceRef, SourceRef]) -> list[SourceRef]:
    """The sources of ``batch`` not in ``known`` (one source object serves many items:
    told apart by identity first)."""
    objects: dict[int, SourceRef] = {}
    for item in batch:
        src = item.source
        if id(src) not in objects:
            objects[id(src)] = src
    return [s for s in set(objects.values()) if s not in known]


def _item_pmids(batch: list[StoreItem]) -> set[int]:
    """The PMIDs of a batch's records and deletions."""
    return {it.pmid for it in batch if isinstance(it, PreparedRecord | Record | Deletion)}


def _undo_batch(counter: Counter, before: IngestCounts, touched: set[int], fresh: set[int]) -> None:
    """Put back what a batch rolled back by the database had counted and touched
    (``fresh``: its PMIDs no earlier batch had touched)."""
    counter.restore(before)
    touched.difference_update(fresh)


def _batches(items: Iterable[StoreItem], size: int) -> Iterator[list[StoreItem]]:
    batch: list[StoreItem] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _article_dict(m: Any) -> dict[str, Any]:
    rec: dict[str, Any] = dict(m["record"] or {})
    source = rec.get("source") or {}
    return {
        "pmid": m["pmid"],
        "version": m["version"],
        "title": m["title"],
        "vernacular_title": m["vernacular_title"],
        "abstract": m["abstract"],
        "abstract_sections": abstract_sections(rec.get("abstract_sections", []),
                                               m["abstract"] or ""),
        "journal": m["journal"],
        "journal_iso": rec.get("journal_iso"),
        "volume": rec.get("volume"),
        "issue": rec.get("issue"),
        "pages": rec.get("pages"),
        "pub_year": m["pub_year"],
        "pub_month": m["pub_month"],
        "pub_day": m["pub_day"],
        "pub_date_raw": m["pub_date_raw"],
        "article_date": iso(m["article_date"]),
        "entrez_date": iso(m["entrez_date"]),
        "pubmed_date": rec.get("pubmed_date"),
        "date_completed": rec.get("date_completed"),
        "date_revised": iso(m["date_revised"]),
        "best_date": iso(m["best_date"]),
        "authors": list(m["authors"] or []),
        "mesh": list(m["mesh"] or []),
        "keywords": rec.get("keywords", []),
        "publication_types": list(m["publication_types"] or []),
        "language": m["language"],
        "languages": rec.get("languages", []),
        "doi": m["doi"],
        "pmcid": m["pmcid"],
        "references": rec.get("references", []),
        "is_retracted": bool(m["is_retracted"]),
        "retraction_in": rec.get("retraction_in", []),
        "is_book": bool(m["is_book"]),
        "status": rec.get("status"),
        "is_deleted": bool(m["is_deleted"]),
        "deleted_at": iso(m["deleted_at"]),
        "has_abstract": bool(m["has_abstract"]),
        "text_hash": m["text_hash"],
        "cited_by_in_corpus": m["cited_by_in_corpus"],
        "citation_count": m["citation_count"],
        "relative_citation_ratio": m["relative_citation_ratio"],
        "citations_per_year": m["citations_per_year"],
        "icite_year": m["icite_year"],
        "icite_provisional": m["icite_provisional"],
        "icite_fetched_at": iso(m["icite_fetched_at"]),  # when iCite was last asked
        "icite_values_at": iso(m["icite_values_at"]),  # what the values held are as of
        "source": {
            "kind": m["source_kind"],
            "location": m["source_location"],
            "sequence": m["source_sequence"],
            "position": m["source_position"],
            "fetched_at": source.get("fetched_at"),
        },
        "ingested_at": iso(m["ingested_at"]),
        "updated_at": iso(m["updated_at"]),
    }
