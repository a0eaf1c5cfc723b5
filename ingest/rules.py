"""The update rules: whether an item wins over what the store holds for its PMID.

:func:`plan_batch` decides every item of one batch, in order, against the states read
for its PMIDs and returns the rows to write (:class:`BatchPlan`); the store only reads
and writes. The rules:

Ordering rules (a record *wins* over the stored state when):

* the stored state is a live record: the new record has a higher ``Version``; for the
  same version a later ``DateRevised``; for both equal, a *later item* (below). A record
  whose content (everything but its source) equals the stored one is ``unchanged``, so
  re-applying a file, or fetching an overlapping window again, changes nothing (a
  later source repeating the same content only moves the stored source forward, without
  touching ``updated_at``).
* the stored state is a tombstone: it is lifted by a *later item* than the deletion
  whose record is not older than the one that was deleted (its content the same or not:
  a tombstone is lifted as a live row is touched, so a file killed before its deletion
  and resumed after such an item ends as a clean run). A replayed or older file never
  lifts it; an EFetch made after the deleting file was first read does (PubMed serves the
  record again). A record of an older source that is newer (``Version``, then
  ``DateRevised``) than the one the tombstone holds — any record, for a *bare* tombstone
  (``version`` 0: only a deletion of the PMID was met) — *fills* it: the row takes the
  record's columns and stays deleted, with its deletion time and the deletion's source
  (counted ``unchanged``). So update files applied out of number order (``--accept-gaps``
  past a missing file) end as in number order: the withdrawn article known (410), not a
  bare tombstone (404).
* a :class:`~ingest.records.Deletion` tombstones a live row when it is a later item
  than the one that wrote that row; met by a tombstone, a later deletion moves its source
  (as a touch moves a live row's). Deleting an unknown PMID still writes a tombstone
  row (counted as ``unchanged``), so an older record arriving afterwards stays deleted.

*Later item*: every row keeps the source of the item that wrote it and that item's
position in it (``source_position``, its ordinal in the :meth:`Store.apply` call, which
carries one source from its start). Between two sources the later one wins
by its *rank* (:class:`SourceRanks`), one total order of every source:

* a numbered NLM file (``sequence`` > 0) ranks by its number, then its *as-of* time, when
  the store first read it (table ``source_times``, recorded in a transaction of its own
  before the file's first batch: a batch rolled back or a kill keeps it), however often
  and wherever it is read again (the store gives its items that time);
* any other source (an EFetch, a local file without an NLM name) ranks after every
  numbered file first read at or before its fetch time and before every file read later
  (its rank's number is the highest number of those files), then by its fetch time. So a
  later read of PubMed wins over an earlier one whatever it came through; a replayed
  baseline never undoes an EFetch made after it was read; an EFetch that repeats a record
  unchanged never lets an older file win over a newer one (it ranks after the newer one
  too). Its rank is worked out when decided, from its fetch time: the row keeps
  sequence 0.

Within one source the later position wins, and an item at or before the stored position
is a *replay* that changes nothing: a numbered file is one source whatever its location
(its number fixes its content) until NLM re-issues it under its name (a new MD5: the store
gives the new issue a later as-of time, :meth:`ingest.store.Store.reissue`, so it ranks
after the earlier issue and before the next file, and what the earlier issue wrote is an
earlier source); any other source must have the same kind, location and
fetch time. So a
file read again after a run died in the middle of it — at any batch — changes nothing
up to where that run got, and from there on every item (a deletion late in the file of
a record stored early in it, a second version further down) decides exactly as in a run
that never stopped.

Every row written keeps the ingest run that wrote it (``articles.run_id``); a touch does
not move it. An item that changes nothing is *met again*
(:attr:`~ingest.runs.IngestCounts.reseen`) when a data-quality check judged that run
(:func:`ingest.quality.check_ingest`); else this run takes the row over, so that its own
check judges it (see :func:`plan_batch`).
"""

from __future__ import annotations

import datetime as dt
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass, field
from typing import Any

from ingest.records import Deletion, QuarantineEntry, Record, SourceRef
from ingest.rows import (
    PreparedRecord,
    StoreItem,
    article_row,
    prepare,
    quarantine_row,
    tombstone_row,
    with_values,
)
from ingest.runs import IngestCounts

__all__ = [
    "BatchPlan",
    "Counter",
    "SourceRanks",
    "StoredState",
    "decide_record",
    "plan_batch",
    "source_wins",
]


class SourceRanks:
    """The rank of a source from its sequence and time (see the module docstring).

    Args:
        as_of: ``(as-of time, sequence)`` of every numbered file the store has read
            (``source_times``). Without any, every source ranks by its own
            ``(sequence, time)``.
    """

    __slots__ = ("_best", "_times")

    def __init__(self, as_of: Iterable[tuple[float, int]] = ()) -> None:
        pairs = sorted(as_of)
        self._times = [t for t, _ in pairs]
        self._best: list[int] = []
        best = 0
        for _, seq in pairs:
            best = max(best, seq)
            self._best.append(best)

    def __call__(self, sequence: int, time: float) -> tuple[int, float, int]:
        """``(sequence, time, 0)`` of a numbered file; of any other source, the highest
        number of the files first read at or before ``time`` (0 if none), then ``time``,
        then 1 (after such a file read at the same instant)."""
        if sequence > 0:
            return (sequence, time, 0)
        i = bisect_right(self._times, time)
        return (self._best[i - 1] if i else 0, time, 1)


#: Each source by its own ``(sequence, time)`` (no file read: nothing to rank after).
PLAIN = SourceRanks()


@dataclass(slots=True)
class StoredState:
    """What the store holds for one PMID (as read, then as decided within a batch).

    ``run_id`` is the ingest run that wrote the row (``articles.run_id``: ``None`` on rows
    older than the column, or written with no run), or took it over (:func:`plan_batch`);
    ``deleted_at`` when a tombstone's deletion was stored (``None`` on a live row).
    """

    version: int
    date_revised: dt.date | None
    source_sequence: int
    source_time: float
    source_kind: str
    source_location: str
    source_position: int
    content_hash: str
    is_deleted: bool
    run_id: int | None = None
    deleted_at: dt.datetime | None = None

    @classmethod
    def written(
        cls,
        src: SourceRef,
        position: int,
        version: int,
        date_revised: dt.date | None,
        chash: str,
        *,
        deleted: bool = False,
        run_id: int | None = None,
        deleted_at: dt.datetime | None = None,
    ) -> StoredState:
        """The state after the item at ``position`` of ``src`` wrote the row (in the
        ingest run ``run_id``; a deletion at ``deleted_at``)."""
        return cls(
            version, date_revised, src.sequence, src.fetched_at.timestamp(), src.kind,
            src.location, position, chash, deleted, run_id, deleted_at,
        )  # fmt: skip

    def source_key(self, rank: SourceRanks = PLAIN) -> tuple[int, float, int]:
        return rank(self.source_sequence, self.source_time)

    def same_source(self, src: SourceRef) -> bool:
        """The same file or request as read before.

        A numbered NLM file is the same source whenever and wherever it is read (another
        mirror, ``ingest --files`` or the update files): its number fixes its content, and
        the store gives it one time (its as-of time) — until NLM re-issues it under its
        name: the store gives the new issue a later as-of time, and a row an earlier issue
        wrote (an earlier time) is then another, earlier source of the same number.
        A source without a number (a local file, an E-utilities batch) must have the same
        kind, location and fetch time: readers keep a file's first fetch time while it is
        unchanged (a resumed run is the same source), and a changed file at the same path
        gets a new one, so its items are a newer source instead of a replay.
        """
        if src.sequence > 0:
            # an earlier issue of the file (NLM re-issued it under its name, and the store
            # gave the new issue a later as-of time: Store.reissue) is another source
            return src.sequence == self.source_sequence and (
                self.source_time >= src.fetched_at.timestamp()
            )
        return (src.kind, src.location, src.sequence, src.fetched_at.timestamp()) == (
            self.source_kind,
            self.source_location,
            self.source_sequence,
            self.source_time,
        )

    def move_to(self, src: SourceRef, position: int) -> None:
        """Record that the item at ``position`` of ``src`` wrote (or touched) the row."""
        self.source_sequence, self.source_time = src.sequence, src.fetched_at.timestamp()
        self.source_kind, self.source_location = src.kind, src.location
        self.source_position = position


class Counter:
    """Running counts of one :meth:`ingest.store.Store.apply` call."""

    __slots__ = ("inserted", "updated", "unchanged", "deleted", "quarantined", "requarantined",
                 "reseen")  # fmt: skip

    def __init__(self) -> None:
        self.inserted = self.updated = self.unchanged = self.deleted = self.quarantined = 0
        self.requarantined = self.reseen = 0

    def restore(self, counts: IngestCounts) -> None:
        """Put the counts back to ``counts`` (a :meth:`freeze` taken before a batch whose
        transaction was rolled back and is run again)."""
        for name in self.__slots__:
            setattr(self, name, getattr(counts, name))

    def freeze(self) -> IngestCounts:
        return IngestCounts(
            inserted=self.inserted,
            updated=self.updated,
            unchanged=self.unchanged,
            deleted=self.deleted,
            quarantined=self.quarantined,
            requarantined=self.requarantined,
            reseen=self.reseen,
        )


def source_wins(
    src: SourceRef, position: int, cur: StoredState, touched: bool, rank: SourceRanks = PLAIN
) -> bool:
    """Whether the item at ``position`` of ``src`` comes after the one that wrote ``cur``.

    Within one source (:meth:`StoredState.same_source`) the position decides: the same
    file or request read again is a replay up to the stored position and goes on after it.
    Between two sources their ranks decide (``rank``: :class:`SourceRanks`).
    """
    if cur.same_source(src):
        return position > cur.source_position
    mine = rank(src.sequence, src.fetched_at.timestamp())
    if touched:
        # written earlier in this call from another source: later items win ties
        return mine >= cur.source_key(rank)
    return mine > cur.source_key(rank)


def decide_record(
    rec: Record | PreparedRecord,
    position: int,
    chash: str,
    cur: StoredState | None,
    touched: bool,
    src: SourceRef | None = None,
    rank: SourceRanks = PLAIN,
) -> str:
    """``inserted``, ``updated``, ``touch`` or ``unchanged`` against the stored state.

    ``src`` is the record's source with the time the store gives it (default: its own);
    ``rank`` ranks sources (:class:`SourceRanks`).
    """
    if cur is None:
        return "inserted"
    if src is None:
        src = rec.source
    if chash == cur.content_hash:
        # the same content again: only another, later source is remembered (a repeat
        # inside one source changes nothing, so a resumed file does exactly the same);
        # a later source lifts a tombstone of this very record, as it touches a live row
        later = source_wins(src, position, cur, touched, rank)
        if cur.is_deleted:
            return "updated" if later else "unchanged"
        if not touched and not cur.same_source(src) and later:
            return "touch"
        return "unchanged"
    mine = (rec.version, rec.date_revised or dt.date.min)
    theirs = (cur.version, cur.date_revised or dt.date.min)
    if cur.is_deleted:
        # a deletion stands unless a later item brings a record at least as new
        if mine < theirs or not source_wins(src, position, cur, touched, rank):
            return "unchanged"
        return "updated"
    if mine != theirs:
        return "updated" if mine > theirs else "unchanged"
    return "updated" if source_wins(src, position, cur, touched, rank) else "unchanged"


@dataclass
class BatchPlan:
    """What one batch writes, keyed by PMID (filled by :func:`plan_batch`).

    Attributes:
        full: Full article rows, values of :data:`ingest.rows.ARTICLE_COLUMNS` (a
            record won; a later deletion in the batch marks it).
        tomb: Tombstone rows, the same shape (a deletion won, or an unknown PMID was
            deleted).
        records: The winning (prepared) record of each PMID in ``full``.
        quarantined: Quarantine rows by digest, each ``resolved_at`` set (``now``) when
            an item of the batch after the entry's first placement wrote its PMID's row,
            else ``None`` (:func:`plan_batch`).
        written: The position of the last item of the batch that wrote each PMID's row
            (the PMIDs of ``full`` and ``tomb``): its quarantine entries stored before
            the batch are resolved, and the batch's own placed before it.
        touches: Source moves of records repeated unchanged by a later source.
        taken: PMIDs met again unchanged whose stored row a run no check has judged
            wrote: this run takes them over (``run_id``), so that its check judges them.
    """

    full: dict[int, tuple[Any, ...]] = field(default_factory=dict)
    tomb: dict[int, tuple[Any, ...]] = field(default_factory=dict)
    records: dict[int, PreparedRecord] = field(default_factory=dict)
    quarantined: dict[str, dict[str, Any]] = field(default_factory=dict)
    written: dict[int, int] = field(default_factory=dict)
    touches: dict[int, dict[str, Any]] = field(default_factory=dict)
    taken: set[int] = field(default_factory=set)


def plan_batch(
    batch: list[StoreItem],
    first: int,
    states: dict[int, StoredState],
    touched: set[int],
    counter: Counter,
    *,
    run_id: int | None,
    now: dt.datetime,
    ordered: Mapping[SourceRef, SourceRef] | None = None,
    rank: SourceRanks = PLAIN,
    judged: Set[int] = frozenset(),
) -> BatchPlan:
    """Decide the items of one batch (the first at position ``first``) in order.

    ``states`` and ``touched`` (PMIDs written earlier in this apply call) are updated as
    items win, so a later item of the same PMID decides against the earlier one.
    ``ordered`` maps a numbered file's source to the same with the time the store gives
    it (its as-of time; a source it lacks is its own); ``rank`` ranks sources.

    Rows written get ``run_id``. An item that changes nothing (``unchanged``) is *met
    again* (:attr:`~ingest.runs.IngestCounts.reseen`) when the run that wrote its stored
    row is in ``judged`` (runs a data-quality check judged), or the row has no run (older
    than ``articles.run_id``); a row of another run no check judged yet (a run killed or
    failed before its check) is taken over instead (:attr:`BatchPlan.taken`), as
    :func:`ingest.store._count_met_again` takes over its quarantine entries.

    A quarantine entry is resolved by a later record or deletion of its PMID that is
    stored: one of the batch is resolved (``resolved_at``) when an item placed after it
    wrote the row (:attr:`BatchPlan.written`), never by an item that wrote nothing or one
    placed before it, so a batch ends as its items applied one by one would, whatever the
    batch size.
    """
    planner = _Planner(states, touched, counter, now, ordered or {}, rank, run_id, judged)
    plan = planner.plan
    placed: dict[str, int] = {}  # each entry's first position in the batch
    for pos, item in enumerate(batch, first):
        if isinstance(item, PreparedRecord):
            planner.record(item, pos)
        elif isinstance(item, Record):
            planner.record(prepare(item), pos)
        elif isinstance(item, Deletion):
            planner.deletion(item, pos)
        elif isinstance(item, QuarantineEntry):
            counter.quarantined += 1
            entry = plan.quarantined.get(item.digest)
            if entry is None:
                plan.quarantined[item.digest] = quarantine_row(item, run_id, now)
                placed[item.digest] = pos
            elif entry["pmid"] is None and item.pmid is not None:
                # named here (as the store names one stored without a PMID): a PMID's
                # entry from this position on
                entry["pmid"] = item.pmid
                placed[item.digest] = pos
        else:  # pragma: no cover - typing guards this
            raise TypeError(f"cannot apply {type(item).__name__}")
    for digest, row in plan.quarantined.items():
        wrote = plan.written.get(row["pmid"], -1) if row["pmid"] is not None else -1
        row["resolved_at"] = now if placed[digest] < wrote else None
    for pmid in set(plan.touches) & (set(plan.full) | set(plan.tomb)):
        del plan.touches[pmid]
    if plan.taken:
        plan.taken -= plan.full.keys() | plan.tomb.keys()
    return plan


@dataclass
class _Planner:
    """Decides records and deletions of one batch into :attr:`plan`."""

    states: dict[int, StoredState]
    touched: set[int]
    counter: Counter
    now: dt.datetime
    ordered: Mapping[SourceRef, SourceRef]
    rank: SourceRanks
    run_id: int | None
    judged: Set[int]
    plan: BatchPlan = field(default_factory=BatchPlan)

    def _unchanged(self, pmid: int, cur: StoredState) -> None:
        """Count an item that leaves the stored row ``cur`` of ``pmid`` as it is: met
        again when a check judged the run that wrote the row (or it has none), else taken
        over by this run (unless this run wrote it)."""
        self.counter.unchanged += 1
        stored_by = cur.run_id
        if stored_by == self.run_id:
            return
        if stored_by is None or stored_by in self.judged:
            self.counter.reseen += 1
        elif self.run_id is not None:
            self.plan.taken.add(pmid)
            cur.run_id = self.run_id

    def record(self, item: PreparedRecord, pos: int) -> None:
        plan, states, touched, counter, now = (
            self.plan, self.states, self.touched, self.counter, self.now
        )  # fmt: skip
        pmid = item.pmid
        chash = item.content_hash
        cur = states.get(pmid)
        src = self.ordered.get(item.source, item.source) if self.ordered else item.source
        if cur is None:  # nothing stored: an insert whatever the rules (bootstrap's case)
            counter.inserted += 1
            plan.full[pmid] = article_row(item, pos, now, src, self.run_id)
            plan.records[pmid] = item
            states[pmid] = StoredState(
                item.version, item.date_revised, src.sequence, src.fetched_at.timestamp(),
                src.kind, src.location, pos, chash, False, self.run_id,
            )  # fmt: skip
            touched.add(pmid)
            plan.written[pmid] = pos
            return
        verdict = decide_record(item, pos, chash, cur, pmid in touched, src, self.rank)
        if verdict == "touch" and cur is not None:
            # same content from a later source: remember the source, no update
            self._touch(pmid, cur, src, pos)
            self._unchanged(pmid, cur)
            return
        if verdict == "unchanged":
            if cur.is_deleted and _newer(item, cur):
                self._fill(item, pos, cur, src)
                return
            self._unchanged(pmid, cur)
            return
        if verdict == "inserted":
            counter.inserted += 1
        else:
            counter.updated += 1
        plan.full[pmid] = article_row(item, pos, now, src, self.run_id)
        plan.tomb.pop(pmid, None)
        plan.records[pmid] = item
        states[pmid] = StoredState.written(
            src, pos, item.version, item.date_revised, chash, run_id=self.run_id
        )
        touched.add(pmid)
        plan.written[pmid] = pos

    def _fill(self, item: PreparedRecord, pos: int, cur: StoredState, src: SourceRef) -> None:
        """Fill the tombstone ``cur`` with the record ``item`` of an older source (at
        ``pos``), newer than the record it holds: the record's columns, still deleted, with
        the tombstone's deletion time and source (see the module docstring)."""
        pmid = item.pmid
        self.counter.unchanged += 1
        row = article_row(item, pos, self.now, src, self.run_id)
        self.plan.full[pmid] = with_values(row, {
            "is_deleted": True,
            "deleted_at": cur.deleted_at if cur.deleted_at is not None else self.now,
            **_source_values(cur),
        })  # fmt: skip
        self.plan.tomb.pop(pmid, None)
        self.plan.records[pmid] = item
        self.plan.written[pmid] = pos
        cur.version, cur.date_revised = item.version, item.date_revised
        cur.content_hash, cur.run_id = item.content_hash, self.run_id

    def _touch(self, pmid: int, cur: StoredState, src: SourceRef, pos: int) -> None:
        """Move the stored source of ``pmid`` to the item at ``pos`` of ``src`` (no update;
        a row this batch writes of it, a filled tombstone, moves with it)."""
        cur.move_to(src, pos)
        self.plan.touches[pmid] = {
            "b_pmid": pmid,
            "b_seq": cur.source_sequence,
            "b_time": cur.source_time,
            "b_kind": cur.source_kind,
            "b_loc": cur.source_location,
            "b_pos": pos,
        }
        if pmid in self.plan.full:
            self.plan.full[pmid] = with_values(self.plan.full[pmid], _source_values(cur))

    def deletion(self, item: Deletion, pos: int) -> None:
        plan, states, touched, counter, now = (
            self.plan, self.states, self.touched, self.counter, self.now
        )  # fmt: skip
        pmid = item.pmid
        cur = states.get(pmid)
        src = self.ordered.get(item.source, item.source) if self.ordered else item.source
        if cur is None:
            # unknown PMID: remember the deletion so an older record stays out
            plan.tomb[pmid] = tombstone_row(pmid, src, pos, now, self.run_id)
            states[pmid] = StoredState.written(
                src, pos, 0, None, "", deleted=True, run_id=self.run_id, deleted_at=now
            )
            counter.unchanged += 1
            touched.add(pmid)
            plan.written[pmid] = pos
            return
        if cur.is_deleted:
            # deleted again by a later source: the tombstone ranks from it, as a live row's
            # source moves to a later source that repeats it (a source ranked between the
            # two deletions never lifts it)
            if (
                pmid not in touched
                and not cur.same_source(src)
                and source_wins(src, pos, cur, False, self.rank)
            ):
                self._touch(pmid, cur, src, pos)
            self._unchanged(pmid, cur)
            return
        if not source_wins(src, pos, cur, pmid in touched, self.rank):
            self._unchanged(pmid, cur)
            return
        counter.deleted += 1
        changes = {
            "is_deleted": True,
            "deleted_at": now,
            "source_sequence": src.sequence,
            "source_time": src.fetched_at.timestamp(),
            "source_kind": src.kind,
            "source_location": src.location,
            "source_position": pos,
            "updated_at": now,
            "run_id": self.run_id,
        }
        if pmid in plan.full:
            plan.full[pmid] = with_values(plan.full[pmid], changes)
        else:
            plan.tomb[pmid] = tombstone_row(pmid, src, pos, now, self.run_id)
        cur.is_deleted, cur.deleted_at = True, now
        cur.move_to(src, pos)
        cur.run_id = self.run_id
        touched.add(pmid)
        plan.written[pmid] = pos


def _newer(rec: PreparedRecord, cur: StoredState) -> bool:
    """Whether ``rec`` is newer (``Version``, then ``DateRevised``) than the record the
    stored row holds; any record is newer than a bare tombstone's none (version 0)."""
    if cur.version == 0:
        return True
    mine = (rec.version, rec.date_revised or dt.date.min)
    return mine > (cur.version, cur.date_revised or dt.date.min)


def _source_values(cur: StoredState) -> dict[str, Any]:
    """The source columns of a row in state ``cur``."""
    return {
        "source_sequence": cur.source_sequence,
        "source_time": cur.source_time,
        "source_kind": cur.source_kind,
        "source_location": cur.source_location,
        "source_position": cur.source_position,
    }
