"""The article store: bulk upserts by PMID, versions, tombstones, quarantine, runs.

One PMID is one row of ``articles`` holding its newest record. Items are applied in
batches, one transaction per batch: the current state of the batch's PMIDs is read
with one ``SELECT``, every item is decided in Python in order, and the changed rows
are written with bulk ``INSERT … ON CONFLICT`` statements (:func:`litpulse.core.db.upsert`),
so SQLite and PostgreSQL run the same code.

Ordering rules (a record *wins* over the stored state when):

* the stored state is a live record: the new record has a higher ``Version``; for the
  same version a later ``DateRevised``; for both equal, a *later item* (below). A record
  whose content (everything but its source) equals the stored one is ``unchanged``, so
  re-applying a file, or fetching an overlapping window again, changes nothing (a
  later source repeating the same content only moves the stored source forward, without
  touching ``updated_at``).
* the stored state is a tombstone: ``DeleteCitation`` is final in PubMed, so a
  tombstone is only lifted by a *later item* than the deletion whose content differs
  from, and is not older than, the record that was deleted.
* a :class:`~ingest.records.Deletion` tombstones a live row when it is a later item
  than the one that wrote that row. Deleting an unknown PMID still writes a tombstone
  row (counted as ``unchanged``), so an older record arriving afterwards stays deleted.

*Later item*: every row keeps the source of the item that wrote it and that item's
position in it (``source_position``, its ordinal in the :meth:`Store.apply` call, which
carries one source from its start). Between two sources the later one wins
(:meth:`SourceRef.order_key`: update-file number, then fetch time). Within one source
(same kind, location and file number, whatever the fetch time) the later position wins,
and an item at or before the stored position is a *replay* that changes nothing. So a
file read again after a run died in the middle of it — at any batch — changes nothing
up to where that run got, and from there on every item (a deletion late in the file of
a record stored early in it, a second version further down) decides exactly as in a run
that never stopped.

Links: ``article_terms`` (MeSH descriptors with their major flag, publication types) and
``references`` (citing → cited) are replaced for every changed article and kept only for
live ones. ``cited_by_in_corpus`` (live articles of the corpus citing a PMID) moves by
deltas in the same transaction; an article that becomes live is recounted, and
:meth:`Store.recompute_cited_by` recounts from scratch. Writers should hold the ingest
lease (:func:`litpulse.core.db.acquire_lease`): two concurrent writers of the same PMIDs would
each decide against the state they read.

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

import dataclasses
import datetime as dt
import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, Table, bindparam, delete, func, insert, select, update
from sqlalchemy.engine import Connection

from ingest.records import Deletion, Item, QuarantineEntry, Record, SourceRef
from litpulse.core.db import default_holder, holder_alive, upsert, utcnow
from litpulse.core.errors import ConfigError, NotFoundError
from litpulse.core.schema import (
    article_terms,
    articles,
    checkpoints,
    ingest_runs,
    quarantine,
    references,
)
from litpulse.core.settings import Settings

__all__ = ["IngestCounts", "Store"]

logger = logging.getLogger(__name__)

#: Largest IN (...) list per statement (SQLite allows 32766 bound parameters).
_IN_CHUNK = 5000
_TERM_MAX = 255

#: Columns rewritten when a record replaces the stored one (not ingested_at, not iCite).
_RECORD_COLUMNS = (
    "version date_revised source_sequence source_time source_kind source_location "
    "source_position title "
    "vernacular_title abstract journal pub_year pub_month pub_day pub_date_raw article_date "
    "entrez_date best_date language doi pmcid is_retracted is_book is_deleted deleted_at "
    "has_abstract text_hash content_hash authors mesh publication_types record updated_at"
).split()
#: Columns rewritten when a deletion tombstones a stored row.
_TOMBSTONE_COLUMNS = (
    "is_deleted deleted_at source_sequence source_time source_kind source_location "
    "source_position updated_at"
).split()

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

_SET_CITED_BY = (
    update(articles)
    .where(articles.c.pmid == bindparam("b_pmid"))
    .values(cited_by_in_corpus=bindparam("b_n"))
)

_ADD_CITED_BY = (
    update(articles)
    .where(articles.c.pmid == bindparam("b_pmid"))
    .values(cited_by_in_corpus=articles.c.cited_by_in_corpus + bindparam("b_n"))
)


@dataclass(frozen=True)
class IngestCounts:
    """What one ingest did, item by item.

    Attributes:
        inserted: Records of PMIDs the store did not hold.
        updated: Records that replaced an older stored record (or lifted a tombstone).
        unchanged: Items that changed nothing: older or identical records, replays,
            deletions of PMIDs already deleted or unknown.
        deleted: Deletions that tombstoned a live article.
        quarantined: Elements that could not be parsed (each one met in this run, even
            when the same element was quarantined before).
        missing: PMIDs a source listed but did not deliver (E-utilities).
    """

    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    quarantined: int = 0
    missing: int = 0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"IngestCounts.{f.name} must be a count >= 0, got {value!r}")

    def __add__(self, other: IngestCounts) -> IngestCounts:
        if not isinstance(other, IngestCounts):
            return NotImplemented
        names = [f.name for f in dataclasses.fields(self)]
        return IngestCounts(**{n: getattr(self, n) + getattr(other, n) for n in names})

    def __sub__(self, other: IngestCounts) -> IngestCounts:
        if not isinstance(other, IngestCounts):
            return NotImplemented
        names = [f.name for f in dataclasses.fields(self)]
        return IngestCounts(**{n: getattr(self, n) - getattr(other, n) for n in names})

    @property
    def total(self) -> int:
        """Items seen (``missing`` excluded: those never arrived)."""
        return self.inserted + self.updated + self.unchanged + self.deleted + self.quarantined

    def to_dict(self) -> dict[str, int]:
        """The counts as a plain dict."""
        return dataclasses.asdict(self)


@dataclass(slots=True)
class _State:
    """What the store holds for one PMID (as read, then as decided within a batch)."""

    version: int
    date_revised: dt.date | None
    source_sequence: int
    source_time: float
    source_kind: str
    source_location: str
    source_position: int
    content_hash: str
    is_deleted: bool

    def source_key(self) -> tuple[int, float]:
        return (self.source_sequence, self.source_time)

    def same_source(self, src: SourceRef) -> bool:
        return (src.kind, src.location, src.sequence) == (
            self.source_kind,
            self.source_location,
            self.source_sequence,
        )

    def move_to(self, src: SourceRef, position: int) -> None:
        """Record that the item at ``position`` of ``src`` wrote (or touched) the row."""
        self.source_sequence, self.source_time = src.sequence, src.fetched_at.timestamp()
        self.source_kind, self.source_location = src.kind, src.location
        self.source_position = position


class _Counter:
    __slots__ = ("inserted", "updated", "unchanged", "deleted", "quarantined")

    def __init__(self) -> None:
        self.inserted = self.updated = self.unchanged = self.deleted = self.quarantined = 0

    def freeze(self) -> IngestCounts:
        return IngestCounts(
            inserted=self.inserted,
            updated=self.updated,
            unchanged=self.unchanged,
            deleted=self.deleted,
            quarantined=self.quarantined,
        )


class Store:
    """Reads and writes articles, quarantine, runs and checkpoints.

    Args:
        engine: An engine from :func:`litpulse.core.db.connect` (tables exist).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def from_settings(cls, settings: Settings) -> Store:
        """The store of the configured database."""
        from litpulse.core.db import connect

        return cls(connect(settings))

    # ------------------------------------------------------------------------- apply

    def apply(
        self,
        items: Iterable[Item],
        *,
        run_id: int | None = None,
        batch_size: int = 1000,
        on_batch: Callable[[IngestCounts], None] | None = None,
    ) -> IngestCounts:
        """Apply records, deletions and quarantine entries in order.

        Args:
            items: Parsed items of one source, in source order from its start (an item's
                ordinal here is its position in the source: see the module docstring).
            run_id: The ingest run they belong to (stamped on quarantine rows).
            batch_size: Items per transaction.
            on_batch: Called with the counts of each batch once it is committed (so a
                caller can record what was stored before a later batch fails).

        Returns:
            The counts of this call.
        """
        if batch_size <= 0:
            raise ConfigError(f"batch_size must be positive, got {batch_size!r}")
        counter = _Counter()
        touched: set[int] = set()
        first = 0
        for batch in _batches(items, batch_size):
            before = counter.freeze()
            with self.engine.begin() as conn:
                self._apply_batch(conn, batch, first, run_id, counter, touched)
            first += len(batch)
            if on_batch is not None:
                on_batch(counter.freeze() - before)
        counts = counter.freeze()
        logger.info("applied %d items: %s", counts.total, counts.to_dict())
        return counts

    def _apply_batch(
        self,
        conn: Connection,
        batch: Sequence[Item],
        first: int,
        run_id: int | None,
        counter: _Counter,
        touched: set[int],
    ) -> None:
        """Decide and write one batch whose first item is at position ``first``."""
        now = utcnow()
        pmids = {it.pmid for it in batch if isinstance(it, Record | Deletion)}
        states = self._read_states(conn, pmids)
        stored = set(states)
        was_live = {p for p, st in states.items() if not st.is_deleted}
        # pmid -> full row (a record was applied) or tombstone row (a deletion only)
        full: dict[int, dict[str, Any]] = {}
        tomb: dict[int, dict[str, Any]] = {}
        records: dict[int, Record] = {}
        quarantined: dict[str, dict[str, Any]] = {}
        touches: dict[int, dict[str, Any]] = {}

        for pos, item in enumerate(batch, first):
            if isinstance(item, Record):
                pmid = item.pmid
                record_dict = _record_dict(item)
                chash = _content_hash(record_dict)
                cur = states.get(pmid)
                verdict = _decide_record(item, pos, chash, cur, pmid in touched)
                if verdict == "touch" and cur is not None:
                    # same content from a later source: remember the source, no update
                    cur.move_to(item.source, pos)
                    touches[pmid] = {
                        "b_pmid": pmid,
                        "b_seq": cur.source_sequence,
                        "b_time": cur.source_time,
                        "b_kind": cur.source_kind,
                        "b_loc": cur.source_location,
                        "b_pos": pos,
                    }
                    counter.unchanged += 1
                    continue
                if verdict == "unchanged":
                    counter.unchanged += 1
                    continue
                if verdict == "inserted":
                    counter.inserted += 1
                else:
                    counter.updated += 1
                full[pmid] = _article_row(item, pos, record_dict, chash, now)
                tomb.pop(pmid, None)
                records[pmid] = item
                states[pmid] = _State(
                    item.version,
                    item.date_revised,
                    item.source.sequence,
                    item.source.fetched_at.timestamp(),
                    item.source.kind,
                    item.source.location,
                    pos,
                    chash,
                    False,
                )
                touched.add(pmid)
            elif isinstance(item, Deletion):
                pmid = item.pmid
                cur = states.get(pmid)
                src = item.source
                if cur is None:
                    # unknown PMID: remember the deletion so an older record stays out
                    tomb[pmid] = _tombstone_row(pmid, src, pos, now)
                    states[pmid] = _State(
                        0, None, src.sequence, src.fetched_at.timestamp(), src.kind,
                        src.location, pos, "", True,
                    )  # fmt: skip
                    counter.unchanged += 1
                    touched.add(pmid)
                    continue
                if cur.is_deleted or not _source_wins(src, pos, cur, pmid in touched):
                    counter.unchanged += 1
                    continue
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
                }
                if pmid in full:
                    full[pmid].update(changes)
                else:
                    tomb[pmid] = _tombstone_row(pmid, src, pos, now)
                cur.is_deleted = True
                cur.move_to(src, pos)
                touched.add(pmid)
            elif isinstance(item, QuarantineEntry):
                counter.quarantined += 1
                quarantined.setdefault(item.digest, _quarantine_row(item, run_id, now))
            else:  # pragma: no cover - typing guards this
                raise TypeError(f"cannot apply {type(item).__name__}")

        for pmid in set(touches) & (set(full) | set(tomb)):
            del touches[pmid]
        if touches:
            conn.execute(_TOUCH_SOURCE, list(touches.values()))
        if full:
            upsert(conn, articles, list(full.values()), keys=["pmid"], update=_RECORD_COLUMNS)
        if tomb:
            upsert(conn, articles, list(tomb.values()), keys=["pmid"], update=_TOMBSTONE_COLUMNS)
        if quarantined:
            upsert(conn, quarantine, list(quarantined.values()), keys=["digest"], update=[])
        changed = set(full) | set(tomb)
        if changed:
            live = {p: records[p] for p, row in full.items() if not row["is_deleted"]}
            self._replace_links(conn, changed & stored, live, was_live)

    def _read_states(self, conn: Connection, pmids: set[int]) -> dict[int, _State]:
        a = articles.c
        cols = (
            a.pmid, a.version, a.date_revised, a.source_sequence, a.source_time,
            a.source_kind, a.source_location, a.source_position, a.content_hash, a.is_deleted,
        )  # fmt: skip
        out: dict[int, _State] = {}
        for chunk in _chunks(sorted(pmids), _IN_CHUNK):
            for row in conn.execute(select(*cols).where(a.pmid.in_(chunk))):
                out[row[0]] = _State(*row[1:9], bool(row[9]))
        return out

    def _replace_links(
        self,
        conn: Connection,
        stored_changed: set[int],
        live: dict[int, Record],
        was_live: set[int],
    ) -> None:
        """Replace terms and references of changed articles; keep ``cited_by_in_corpus``.

        Args:
            conn: The batch's connection.
            stored_changed: Changed PMIDs that had a row before the batch (their old
                links are removed; new PMIDs have none).
            live: The changed PMIDs that end the batch live, with their record.
            was_live: PMIDs that were live before the batch.

        The in-corpus counts move by deltas: -1 for each reference of an article that
        was live before, +1 for each reference of an article live now. An article that
        becomes live in this batch gets its own count recounted from ``references``.
        """
        delta: dict[int, int] = {}
        for chunk in _chunks(sorted(stored_changed), _IN_CHUNK):
            old = conn.execute(
                select(references.c.citing_pmid, references.c.cited_pmid).where(
                    references.c.citing_pmid.in_(chunk)
                )
            ).all()
            for citing, cited in old:
                if citing in was_live:
                    delta[cited] = delta.get(cited, 0) - 1
            conn.execute(delete(references).where(references.c.citing_pmid.in_(chunk)))
            conn.execute(delete(article_terms).where(article_terms.c.pmid.in_(chunk)))
        term_rows: list[tuple[Any, ...]] = []
        ref_rows: list[tuple[Any, ...]] = []
        for pmid, rec in live.items():
            terms: dict[tuple[str, str], bool] = {}
            for m in rec.mesh:
                key = ("mesh", m.descriptor[:_TERM_MAX])
                terms[key] = terms.get(key, False) or m.major
            for pt in rec.publication_types:
                terms.setdefault(("ptype", pt[:_TERM_MAX]), False)
            term_rows.extend((pmid, k, t, major) for (k, t), major in terms.items())
            for cited in sorted({c for c in rec.references if c != pmid}):
                ref_rows.append((pmid, cited))
                delta[cited] = delta.get(cited, 0) + 1
        _insert_tuples(conn, article_terms, ("pmid", "kind", "term", "major"), term_rows)
        _insert_tuples(conn, references, ("citing_pmid", "cited_pmid"), ref_rows)
        # articles live now but not before: count every live citer (delta would miss old ones)
        recount = set(live) - was_live
        _add_cited_by(conn, [(p, n) for p, n in sorted(delta.items()) if n and p not in recount])
        if recount:
            _recompute_cited_by(conn, recount)

    def recompute_cited_by(self, pmids: Iterable[int] | None = None) -> None:
        """Set ``cited_by_in_corpus`` from the references of live articles.

        Args:
            pmids: The cited articles to refresh; ``None`` refreshes every article.
        """
        with self.engine.begin() as conn:
            if pmids is None:
                pmids = conn.execute(select(articles.c.pmid)).scalars().all()
            _recompute_cited_by(conn, set(pmids))

    # -------------------------------------------------------------------------- runs

    def start_run(
        self,
        source: str,
        *,
        target: str | None = None,
        window_start: dt.datetime | None = None,
        window_end: dt.datetime | None = None,
    ) -> int:
        """Open an ingest run (status ``running``) and return its id.

        Runs left ``running`` by a process of this host that no longer exists (killed)
        are closed first as ``abandoned``, so ``litpulse status`` tells the truth.
        """
        self.close_abandoned_runs()
        with self.engine.begin() as conn:
            result = conn.execute(
                insert(ingest_runs).values(
                    source=source,
                    target=target,
                    window_start=window_start,
                    window_end=window_end,
                    status="running",
                    details={"holder": default_holder()},
                    started_at=utcnow(),
                )
            )
            run_id = result.inserted_primary_key[0]  # type: ignore[index]
        logger.info("ingest run %s started: %s %s", run_id, source, target or "")
        return int(run_id)

    def close_abandoned_runs(self) -> list[int]:
        """Mark ``running`` runs whose process on this host is gone as ``abandoned``.

        Returns:
            The ids of the runs closed. Runs of other hosts, or without a recorded
            holder, are left alone: their liveness cannot be told from here.
        """
        with self.engine.begin() as conn:
            rows = conn.execute(
                select(ingest_runs.c.id, ingest_runs.c.details).where(
                    ingest_runs.c.status == "running"
                )
            ).all()
            dead = [
                (r.id, str((r.details or {}).get("holder")))
                for r in rows
                if (r.details or {}).get("holder")
                and not holder_alive(str(r.details["holder"]))
            ]
            for run_id, holder in dead:
                conn.execute(
                    update(ingest_runs)
                    .where(ingest_runs.c.id == run_id, ingest_runs.c.status == "running")
                    .values(
                        status="abandoned",
                        error=f"process {holder} ended without finishing the run (killed?)",
                        finished_at=utcnow(),
                    )
                )
        for run_id, holder in dead:
            logger.warning("ingest run %s abandoned by %s", run_id, holder)
        return [run_id for run_id, _ in dead]

    def finish_run(
        self,
        run_id: int,
        counts: IngestCounts,
        *,
        status: str = "succeeded",
        error: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Close a run with its counts, status (``succeeded``/``failed``) and error."""
        if status not in ("succeeded", "failed"):
            raise ConfigError(f"status must be 'succeeded' or 'failed', got {status!r}")
        values: dict[str, Any] = {
            **counts.to_dict(),
            "status": status,
            "error": error,
            "finished_at": utcnow(),
        }
        if details is not None:
            values["details"] = details
        with self.engine.begin() as conn:
            n = conn.execute(
                update(ingest_runs).where(ingest_runs.c.id == run_id).values(**values)
            ).rowcount
        if not n:
            raise NotFoundError(f"no ingest run {run_id}")
        logger.info("ingest run %s %s: %s", run_id, status, counts.to_dict())

    def get_run(self, run_id: int) -> dict[str, Any]:
        """One ingest run as a dict; :class:`NotFoundError` if there is none."""
        with self.engine.connect() as conn:
            row = conn.execute(select(ingest_runs).where(ingest_runs.c.id == run_id)).first()
        if row is None:
            raise NotFoundError(f"no ingest run {run_id}")
        return _run_dict(row._mapping)

    def runs(self, limit: int = 10) -> list[dict[str, Any]]:
        """The latest ingest runs, newest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(ingest_runs).order_by(ingest_runs.c.id.desc()).limit(limit)
            ).all()
        return [_run_dict(r._mapping) for r in rows]

    # ------------------------------------------------------------------- checkpoints

    def get_checkpoint(self, scope: str, key: str) -> dict[str, Any] | None:
        """The checkpoint ``(scope, key)`` as ``{scope, key, status, value, updated_at}``."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(checkpoints).where(checkpoints.c.scope == scope, checkpoints.c.key == key)
            ).first()
        if row is None:
            return None
        m = row._mapping
        return {
            "scope": m["scope"],
            "key": m["key"],
            "status": m["status"],
            "value": dict(m["value"] or {}),
            "updated_at": m["updated_at"],
        }

    def set_checkpoint(self, scope: str, key: str, status: str, value: dict[str, Any]) -> None:
        """Create or overwrite the checkpoint ``(scope, key)``."""
        row = {"scope": scope, "key": key, "status": status, "value": value, "updated_at": utcnow()}
        with self.engine.begin() as conn:
            upsert(conn, checkpoints, [row], keys=["scope", "key"])

    # ------------------------------------------------------------------------ reads

    def get_article(self, pmid: int) -> dict[str, Any]:
        """Everything stored about one PMID (the ``litpulse article --json`` shape).

        Raises:
            NotFoundError: The store has never seen the PMID.
        """
        with self.engine.connect() as conn:
            row = conn.execute(select(articles).where(articles.c.pmid == int(pmid))).first()
        if row is None:
            raise NotFoundError(f"PMID {pmid} is not in the store")
        return _article_dict(row._mapping)

    def existing_pmids(self, pmids: Iterable[int]) -> set[int]:
        """Those of ``pmids`` the store holds as live (not deleted) articles."""
        out: set[int] = set()
        with self.engine.connect() as conn:
            for chunk in _chunks(sorted({int(p) for p in pmids}), _IN_CHUNK):
                out.update(
                    conn.execute(
                        select(articles.c.pmid).where(
                            articles.c.pmid.in_(chunk), articles.c.is_deleted.is_(False)
                        )
                    ).scalars()
                )
        return out

    def status(self, *, runs: int = 5) -> dict[str, Any]:
        """Counts of the store and the latest runs."""
        a = articles.c
        with self.engine.connect() as conn:
            live, deleted, retracted, newest = conn.execute(
                select(
                    func.count().filter(a.is_deleted.is_(False)),
                    func.count().filter(a.is_deleted.is_(True)),
                    func.count().filter(a.is_deleted.is_(False), a.is_retracted.is_(True)),
                    func.max(a.best_date).filter(a.is_deleted.is_(False)),
                )
            ).one()
            n_quarantined = conn.execute(select(func.count()).select_from(quarantine)).scalar()
            n_refs = conn.execute(select(func.count()).select_from(references)).scalar()
        return {
            "articles": int(live or 0),
            "deleted": int(deleted or 0),
            "retracted": int(retracted or 0),
            "quarantined": int(n_quarantined or 0),
            "references": int(n_refs or 0),
            "newest_best_date": _iso(newest),
            "last_runs": self.runs(runs),
        }

    def quarantined(self, limit: int = 50) -> list[dict[str, Any]]:
        """The latest quarantined elements: what, why, from where."""
        q = quarantine.c
        with self.engine.connect() as conn:
            rows = conn.execute(select(quarantine).order_by(q.id.desc()).limit(limit)).all()
        return [
            {
                "id": m["id"],
                "pmid": m["pmid"],
                "reason": m["reason"],
                "source_kind": m["source_kind"],
                "source_location": m["source_location"],
                "line": m["line"],
                "run_id": m["run_id"],
                "digest": m["digest"],
                "created_at": _iso(m["created_at"]),
                "raw_xml": m["raw_xml"],
            }
            for m in (r._mapping for r in rows)
        ]


# ----------------------------------------------------------------------------- decisions


def _source_wins(src: SourceRef, position: int, cur: _State, touched: bool) -> bool:
    """Whether the item at ``position`` of ``src`` comes after the one that wrote ``cur``.

    Within one source the position decides, whatever the fetch times: the same file or
    request read again is a replay up to the stored position and goes on after it.
    """
    if cur.same_source(src):
        return position > cur.source_position
    if touched:
        # written earlier in this call from another source: later items win ties
        return src.order_key() >= cur.source_key()
    return src.order_key() > cur.source_key()


def _decide_record(
    rec: Record, position: int, chash: str, cur: _State | None, touched: bool
) -> str:
    """``inserted``, ``updated``, ``touch`` or ``unchanged`` against the stored state."""
    if cur is None:
        return "inserted"
    src = rec.source
    if chash == cur.content_hash:
        # the same content again: only another, later source is remembered (a repeat
        # inside one source changes nothing, so a resumed file does exactly the same)
        if (
            not cur.is_deleted
            and not touched
            and not cur.same_source(src)
            and _source_wins(src, position, cur, touched)
        ):
            return "touch"
        return "unchanged"
    mine = (rec.version, rec.date_revised or dt.date.min)
    theirs = (cur.version, cur.date_revised or dt.date.min)
    if cur.is_deleted:
        # DeleteCitation is final unless a later item brings a record at least as new
        if mine < theirs or not _source_wins(src, position, cur, touched):
            return "unchanged"
        return "updated"
    if mine != theirs:
        return "updated" if mine > theirs else "unchanged"
    return "updated" if _source_wins(src, position, cur, touched) else "unchanged"


# ---------------------------------------------------------------------------------- rows


_PRIMITIVES = (str, int, float, bool, type(None))
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _record_dict(rec: Record) -> dict[str, Any]:
    """``rec.to_dict()``, five times faster (no deep copies); the tests check equality."""
    out: dict[str, Any] = _plain(rec)
    return out


def _plain(value: Any) -> Any:
    kind = type(value)
    if kind in _PRIMITIVES:
        return value
    if kind is tuple or kind is list:
        return [_plain(v) for v in value]
    if kind is dt.date or kind is dt.datetime:
        return value.isoformat()
    names = _FIELD_NAMES.get(kind)
    if names is None:
        if dataclasses.is_dataclass(value):
            names = _FIELD_NAMES[kind] = tuple(f.name for f in dataclasses.fields(value))
        elif isinstance(value, dict):
            return {k: _plain(v) for k, v in value.items()}
        elif isinstance(value, dt.date):
            return value.isoformat()
        elif isinstance(value, list | tuple):
            return [_plain(v) for v in value]
        else:
            return value
    return {n: _plain(getattr(value, n)) for n in names}


def _content_hash(record_dict: dict[str, Any]) -> str:
    """SHA-1 of the record without its source (field order is fixed by the dataclass)."""
    body = {k: v for k, v in record_dict.items() if k != "source"}
    return hashlib.sha1(
        json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    ).hexdigest()


def _article_row(
    rec: Record, position: int, record_dict: dict[str, Any], chash: str, now: dt.datetime
) -> dict[str, Any]:
    abstract = rec.abstract
    return {
        "pmid": rec.pmid,
        "version": rec.version,
        "date_revised": rec.date_revised,
        "source_sequence": rec.source.sequence,
        "source_time": rec.source.fetched_at.timestamp(),
        "source_kind": rec.source.kind,
        "source_location": rec.source.location,
        "source_position": position,
        "title": rec.title,
        "vernacular_title": rec.vernacular_title,
        "abstract": abstract,
        "journal": rec.journal,
        "pub_year": rec.pub_date.year,
        "pub_month": rec.pub_date.month,
        "pub_day": rec.pub_date.day,
        "pub_date_raw": rec.pub_date.raw or None,
        "article_date": rec.article_date,
        "entrez_date": rec.entrez_date,
        "best_date": rec.best_date,
        "language": rec.language[:8] if rec.language else None,
        "doi": rec.doi,
        "pmcid": rec.pmcid,
        "is_retracted": bool(rec.is_retracted),
        "is_book": bool(rec.is_book),
        "is_deleted": False,
        "deleted_at": None,
        "has_abstract": bool(abstract.strip()),
        "text_hash": rec.text_hash(),
        "content_hash": chash,
        "authors": [_author_dict(a) for a in record_dict["authors"]],
        "mesh": [
            {
                "descriptor": m["descriptor"],
                "ui": m["ui"],
                "major": bool(m["major"]),
                "qualifiers": list(m["qualifiers"]),
            }
            for m in record_dict["mesh"]
        ],
        "publication_types": list(rec.publication_types),
        "record": record_dict,
        "cited_by_in_corpus": 0,
        "ingested_at": now,
        "updated_at": now,
    }


def _author_dict(a: dict[str, Any]) -> dict[str, Any]:
    if a.get("collective_name"):
        name = a["collective_name"]
    else:
        name = " ".join(
            p for p in (a.get("last_name"), a.get("initials") or a.get("fore_name")) if p
        )
    return {**a, "name": name}


def _tombstone_row(pmid: int, src: SourceRef, position: int, now: dt.datetime) -> dict[str, Any]:
    """A full row for a deleted PMID (only the deletion columns overwrite a stored row)."""
    return {
        "pmid": pmid,
        "version": 0,
        "date_revised": None,
        "source_sequence": src.sequence,
        "source_time": src.fetched_at.timestamp(),
        "source_kind": src.kind,
        "source_location": src.location,
        "source_position": position,
        "title": "",
        "abstract": "",
        "is_retracted": False,
        "is_book": False,
        "is_deleted": True,
        "deleted_at": now,
        "has_abstract": False,
        "text_hash": "",
        "content_hash": "",
        "authors": [],
        "mesh": [],
        "publication_types": [],
        "record": {},
        "cited_by_in_corpus": 0,
        "ingested_at": now,
        "updated_at": now,
    }


def _quarantine_row(item: QuarantineEntry, run_id: int | None, now: dt.datetime) -> dict[str, Any]:
    return {
        "digest": item.digest,
        "pmid": item.pmid,
        "reason": item.reason,
        "source_kind": item.source.kind,
        "source_location": item.source.location,
        "line": item.line,
        "raw_xml": item.raw_xml,
        "run_id": run_id,
        "created_at": now,
    }


def _recompute_cited_by(conn: Connection, pmids: set[int]) -> None:
    """Count live citing articles for the stored ones among ``pmids``; write the changes.

    Done as a grouped count driven by ``ix_references_cited`` and an update of the rows
    that differ (a correlated ``UPDATE`` lets SQLite's planner scan every live article).
    """
    a, r = articles.c, references.c
    citer = articles.alias("citer")
    changes: list[dict[str, Any]] = []
    for chunk in _chunks(sorted(pmids), _IN_CHUNK):
        stored: dict[int, int] = dict(
            conn.execute(select(a.pmid, a.cited_by_in_corpus).where(a.pmid.in_(chunk))).all()
        )
        if not stored:
            continue
        counts: dict[int, int] = dict(
            conn.execute(
                select(r.cited_pmid, func.count())
                .select_from(references.join(citer, citer.c.pmid == r.citing_pmid))
                .where(
                    r.cited_pmid.in_(sorted(stored)),
                    # an expression, not the bare column: keeps the planner off ix_is_deleted
                    func.coalesce(citer.c.is_deleted, True).is_(False),
                )
                .group_by(r.cited_pmid)
            ).all()
        )
        changes.extend(
            {"b_pmid": pmid, "b_n": counts.get(pmid, 0)}
            for pmid, old in stored.items()
            if counts.get(pmid, 0) != old
        )
    if changes:
        conn.execute(_SET_CITED_BY, changes)


# ------------------------------------------------------------------------------- helpers


_PG_ARRAY_TYPES = {"BigInteger": "bigint", "Integer": "integer", "String": "text",
                   "Text": "text", "Boolean": "boolean"}  # fmt: skip


def _add_cited_by(conn: Connection, deltas: list[tuple[int, int]]) -> None:
    """Add ``n`` to ``cited_by_in_corpus`` of each stored ``pmid`` (others are ignored)."""
    if not deltas:
        return
    if conn.dialect.name == "postgresql":
        pmids, ns = (list(col) for col in zip(*deltas, strict=True))
        conn.exec_driver_sql(
            "UPDATE articles AS a SET cited_by_in_corpus = a.cited_by_in_corpus + d.n "
            "FROM unnest(%s::bigint[], %s::integer[]) AS d(pmid, n) WHERE a.pmid = d.pmid",
            (pmids, ns),
        )
        return
    conn.execute(_ADD_CITED_BY, [{"b_pmid": p, "b_n": n} for p, n in deltas])


def _insert_tuples(
    conn: Connection, table: Table, columns: Sequence[str], rows: list[tuple[Any, ...]]
) -> None:
    """Plain ``INSERT`` of many tuples through the driver (no per-row SQLAlchemy work).

    Used for the narrow link tables, where SQLAlchemy's parameter processing would cost
    more than the database itself.
    """
    if not rows:
        return
    quote = conn.dialect.identifier_preparer
    if conn.dialect.name == "postgresql":
        # one statement per chunk: column arrays, unnested server-side
        types = [_PG_ARRAY_TYPES[type(table.c[c].type).__name__] for c in columns]
        sql = (
            f"INSERT INTO {quote.format_table(table)} "
            f"({', '.join(quote.quote(c) for c in columns)}) "
            f"SELECT * FROM unnest({', '.join(f'%s::{t}[]' for t in types)})"
        )
        for start in range(0, len(rows), 50_000):
            chunk = rows[start : start + 50_000]
            conn.exec_driver_sql(sql, tuple(list(col) for col in zip(*chunk, strict=True)))
        return
    mark = "?" if conn.dialect.paramstyle in ("qmark", "numeric") else "%s"
    sql = (
        f"INSERT INTO {quote.format_table(table)} "
        f"({', '.join(quote.quote(c) for c in columns)}) "
        f"VALUES ({', '.join([mark] * len(columns))})"
    )
    conn.exec_driver_sql(sql, rows)


def _batches(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    batch: list[Item] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _chunks(seq: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    for start in range(0, len(seq), size):
        yield seq[start : start + size]


def _iso(value: Any) -> Any:
    """ISO text of a date or datetime (SQLite's naive datetimes are UTC)."""
    if isinstance(value, dt.datetime):
        return _aware(value).isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def _run_dict(m: Any) -> dict[str, Any]:
    started, finished = m["started_at"], m["finished_at"]
    seconds = None
    if started is not None and finished is not None:
        seconds = round((_aware(finished) - _aware(started)).total_seconds(), 3)
    return {
        "id": m["id"],
        "source": m["source"],
        "target": m["target"],
        "window_start": _iso(m["window_start"]),
        "window_end": _iso(m["window_end"]),
        "status": m["status"],
        "inserted": m["inserted"],
        "updated": m["updated"],
        "unchanged": m["unchanged"],
        "deleted": m["deleted"],
        "quarantined": m["quarantined"],
        "missing": m["missing"],
        "details": dict(m["details"] or {}),
        "error": m["error"],
        "started_at": _iso(started),
        "finished_at": _iso(finished),
        "seconds": seconds,
    }


def _aware(value: dt.datetime) -> dt.datetime:
    """SQLite returns naive datetimes (stored as UTC)."""
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _article_dict(m: Any) -> dict[str, Any]:
    rec: dict[str, Any] = dict(m["record"] or {})
    source = rec.get("source") or {}
    return {
        "pmid": m["pmid"],
        "version": m["version"],
        "title": m["title"],
        "vernacular_title": m["vernacular_title"],
        "abstract": m["abstract"],
        "abstract_sections": rec.get("abstract_sections", []),
        "journal": m["journal"],
        "journal_iso": rec.get("journal_iso"),
        "volume": rec.get("volume"),
        "issue": rec.get("issue"),
        "pages": rec.get("pages"),
        "pub_year": m["pub_year"],
        "pub_month": m["pub_month"],
        "pub_day": m["pub_day"],
        "pub_date_raw": m["pub_date_raw"],
        "article_date": _iso(m["article_date"]),
        "entrez_date": _iso(m["entrez_date"]),
        "pubmed_date": rec.get("pubmed_date"),
        "date_completed": rec.get("date_completed"),
        "date_revised": _iso(m["date_revised"]),
        "best_date": _iso(m["best_date"]),
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
        "deleted_at": _iso(m["deleted_at"]),
        "has_abstract": bool(m["has_abstract"]),
        "text_hash": m["text_hash"],
        "cited_by_in_corpus": m["cited_by_in_corpus"],
        "citation_count": m["citation_count"],
        "relative_citation_ratio": m["relative_citation_ratio"],
        "citations_per_year": m["citations_per_year"],
        "icite_year": m["icite_year"],
        "icite_provisional": m["icite_provisional"],
        "icite_fetched_at": _iso(m["icite_fetched_at"]),
        "source": {
            "kind": m["source_kind"],
            "location": m["source_location"],
            "sequence": m["source_sequence"],
            "position": m["source_position"],
            "fetched_at": source.get("fetched_at"),
        },
        "ingested_at": _iso(m["ingested_at"]),
        "updated_at": _iso(m["updated_at"]),
    }
