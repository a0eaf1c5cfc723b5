"""The nightly chain's planning decisions, shared by ``litpulse nightly``, the CLI and the DAGs.

Whether a retrain is due, the watermark of the ingested windows, whether the published
index waits for a re-index, how a re-embedding is split into shards, and the re-index
step a promotion runs (now, or deferred to the ``litpulse_reindex`` DAG).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, and_, case, false, func, insert, or_, select, update

from ingest.runs import PENDING_CHECK, WINDOW_SOURCES
from litpulse.core import db
from litpulse.core.errors import ConfigError, ConsistencyError
from litpulse.core.schema import checkpoints, ingest_runs
from litpulse.core.settings import Settings
from litpulse.core.states import RunStatus
from litpulse.core.timeutil import as_utc, iso, nlm_day_start
from litpulse.core.widths import SHARDS_MAX
from ranking.models import active_model_row, published_index_row

if TYPE_CHECKING:
    from retrain.anchors import LexicalSearch
    from retrain.run import LeasedReindex

__all__ = [
    "FINISH_REINDEX",
    "PENDING_CHECK",
    "REINDEX_GRACE",
    "EmbeddingShard",
    "RetrainDecision",
    "defer_reindex",
    "embed_shard",
    "finish_reindex",
    "held_windows",
    "held_windows_past",
    "leased_reindex",
    "last_watermark",
    "plan_embedding_shards",
    "promoted_model",
    "promotion_lease",
    "rebuilt_watermark",
    "reindex_now",
    "reindex_pending",
    "refresh_waits_for_reindex",
    "release_watermark",
    "retrain_due",
    "superseded_plan",
    "withhold_watermark",
]

logger = logging.getLogger(__name__)

#: How far behind the day it is read an update-file run's content is taken to reach (NLM
#: publishes each day's update file the next day): such a run (a bootstrap's included)
#: moves the watermark to its start less this, and E-utilities go on from there.
UPDATE_FILE_LAG = dt.timedelta(days=1)
#: How long after a promotion the index-refresh DAG waits for the litpulse_reindex run
#: its model asset triggers to appear (the retrain DAG switches the model in one task and
#: emits the asset in the next) before it calls the re-index stalled.
REINDEX_GRACE = dt.timedelta(hours=1)
#: The commands that finish a pending re-index (embeddings already written are kept).
FINISH_REINDEX = (
    "`airflow dags trigger litpulse_reindex` (sharded; or clear the failed shards of its "
    "last run: `airflow tasks clear litpulse_reindex --only-failed --yes`), or "
    "`litpulse index refresh` (one process)"
)


@dataclass(frozen=True)
class RetrainDecision:
    """Whether a scheduled retrain is due.

    Attributes:
        due: Enough new articles arrived since the last training.
        new_articles: Live articles updated since the last training (its window's end).
        threshold: ``LITPULSE_RETRAIN_MIN_NEW_ARTICLES``.
        last_trained_at: End of the last training's window (``None``: nothing trained
            from the model in use).
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
            "last_trained_at": iso(self.last_trained_at),
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


# --------------------------------------------------------------------------- decisions


def _update_files_reach(details: Mapping[str, Any], started: dt.datetime) -> dt.datetime:
    """How far an update-file run that applied every file it listed reaches: the day
    before it started (:data:`UPDATE_FILE_LAG`), or, where it applied baseline files and
    no update file (a mirror holding none yet), only as far as that baseline holds
    (:func:`ingest.records.baseline_frozen_by`; the months since are the E-utilities')."""
    from ingest.records import baseline_frozen_by, nlm_file_order

    reach = started - UPDATE_FILE_LAG
    if details.get("update_files") == 0:  # recorded since this rule: 0, not absent
        years = [order[0] for order in map(nlm_file_order, details["files"]) if order]
        if years:
            reach = min(reach, baseline_frozen_by(max(years)))
    return reach


def last_watermark(settings: Settings, engine: Engine | None = None) -> dt.datetime | None:
    """Where the next nightly window starts: the end of the succeeded E-utilities and
    update-file runs over the whole corpus that follow one another without a gap, from
    where the first of them (by start time) began (a later window past a gap — one day
    pulled by hand — does not carry the mark over days no window searched; a window that
    ends before that beginning — older history pulled by hand or backfilled — neither
    starts the chain nor cuts it; each window searches ``LITPULSE_WINDOW_OVERLAP_DAYS``
    before its start).

    An update-file run (a bootstrap's too) records no window: one that applied a file
    reaches :data:`UPDATE_FILE_LAG` before it started (one that applied baseline files
    and no update file, only as far as that baseline holds: :func:`_update_files_reach`),
    and covers everything before (one
    that applied none, NLM or the mirror having published nothing, moves nothing; nor does
    one that left listed files unapplied, ``max_files``: ``details.left``; both recorded
    by :func:`ingest.updatefiles.coverage_details`). A
    window reaches back to when the first PubMed day it searched began (midnight in
    Bethesda): one that starts later than the mark leaves a gap. A run whose
    nightly failed after it (its iCite step or its data-quality check:
    :func:`withhold_watermark`), or that still waits for its checks (killed before them:
    :data:`PENDING_CHECK`), reaches its window's start only: the next nightly ingests and
    checks that window again. A run restricted by an ESearch query (``litpulse ingest
    --eutils --query …``) fetched one topic only and does not count. A window end after
    the run's start (``--until`` in the future) counts as the start: records of later days
    could not be searched yet.

    The chain is kept (checkpoint ``watermark``/``chain``: its islands of windows that
    follow one another, the run it starts from, the runs still open): a call reads the
    runs recorded since the last one and those it left open (running, held from the mark,
    an id not committed yet), not every run ever recorded, and gives exactly what
    :func:`rebuilt_watermark` (the whole rebuild, the reference) gives. Where the kept
    chain cannot be carried on (none kept yet: an older store's first call; kept by
    another release or for another ``LITPULSE_WINDOW_OVERLAP_DAYS``; a run started
    before the chain's first, or a withheld window: :func:`withhold_watermark`), it is
    rebuilt from every run and kept again.
    """
    engine = engine or db.connect(settings)
    for _ in range(3):
        with engine.connect() as conn:
            token, kept = _kept(conn)
            chain = _Chain.load(settings, kept)
            if chain is None:
                chain = _Chain(settings)
                chain.read(conn.execute(_runs_query()))
            elif not chain.read(conn.execute(_runs_query(chain.upto, chain.reread))):
                chain = _Chain(settings)  # a run started before the chain's first one
                chain.read(conn.execute(_runs_query()))
            if _kept(conn)[0] != token:  # a window withheld meanwhile: read again
                continue
        if chain.dump() != kept:  # nothing new: nothing written (`litpulse status`)
            _keep(engine, token, chain)
        return chain.mark
    return rebuilt_watermark(settings, engine)


def rebuilt_watermark(settings: Settings, engine: Engine | None = None) -> dt.datetime | None:
    """:func:`last_watermark` worked out from every run ever recorded, keeping nothing:
    the reference the kept chain is held to (and the repair of a store that kept none)."""
    r = ingest_runs.c
    engine = engine or db.connect(settings)
    # (from, reached, started); from None: all before
    spans: list[tuple[dt.datetime | None, dt.datetime, dt.datetime]] = []
    with engine.connect() as conn:
        rows = conn.execute(
            select(r.window_start, r.window_end, r.started_at,
                   r.details["watermark"].as_string(),
                   case((r.window_end.is_(None), r.details), else_=None))
            .where(*_watermark_runs()).order_by(r.id)
        )  # fmt: skip
        for start, end, started, withheld, details in rows:  # UTCDateTime: aware UTC already
            span = _run_span(settings, start, end, started, withheld, details)
            if span is not None:
                spans.append((*span, started))
    if not spans:
        return None
    # the chain starts where the store's first ingest began (the run started first; update
    # files: all before): a window wholly before that, history pulled by hand or
    # backfilled later, neither starts the chain nor cuts it
    first = min(spans, key=lambda span: span[2])[0]
    # the end of the windows that follow one another without a gap from there: a later
    # window past a gap (one day pulled by hand) does not carry the mark over days no
    # window searched; of windows from the same day, the one reaching further first (the
    # order the store returned them in decided where one reached less than its start: a
    # window in the future, reaching its run's start only)
    spans.sort(key=lambda span: span[1], reverse=True)
    spans.sort(key=lambda span: (span[0] is not None, span[0] or dt.datetime.min))
    best: dt.datetime | None = None
    for begin, reached, _ in spans:
        if first is not None and begin is not None and reached < first:
            continue
        if best is not None and begin is not None and begin > best:
            break
        best = reached if best is None else max(best, reached)
    return best


#: The checkpoint (scope, key) holding the watermark's chain (:func:`last_watermark`).
KEPT_CHAIN = ("watermark", "chain")
#: How long keeping the chain waits for a writer's lock before leaving it to a later call.
KEEP_WAIT_MS = 250
#: The kept chain's format: a chain kept in another is rebuilt.
_CHAIN_FORMAT = 1
#: How long an ``ingest_runs`` id missing among those read (a run whose insert had not
#: committed yet when the chain was kept; or one rolled back) is looked for again.
_UNSEEN_FOR = dt.timedelta(days=1)
#: Of the ids missing below the highest read, the highest this many are looked for again.
_UNSEEN_MAX = 1000
#: One island of windows that follow one another without a gap: (from, reached); from
#: ``None``: all before (update files).
_Island = tuple[dt.datetime | None, dt.datetime]


def _runs_query(upto: int | None = None, reread: Sequence[int] = ()) -> Any:
    """The runs the chain reads: every run (``upto`` ``None``), or those after ``upto``
    and those of ``reread``. Scalars only, but an update-file run's ``details`` (the
    files it applied): an E-utilities window needs its ``details.watermark`` and
    ``details.query`` alone, and its whole details (~1 KB, one run a night for years)
    would be read and decoded for nothing."""
    r = ingest_runs.c
    query = select(
        r.id, r.source, r.status, r.window_start, r.window_end, r.started_at,
        r.details["watermark"].as_string(), r.details["query"].as_string(),
        case((and_(r.window_end.is_(None), r.source == "updatefiles"), r.details),
             else_=None),
    ).order_by(r.id)  # fmt: skip
    if upto is not None:
        query = query.where(or_(r.id > upto, r.id.in_(sorted(reread)) if reread else false()))
    return query


def _kept(conn: Any) -> tuple[str | None, dict[str, Any] | None]:
    """The kept chain's token (changed by each write) and value, or ``(None, None)``."""
    c = checkpoints.c
    row = conn.execute(select(c.status, c.value).where(
        c.scope == KEPT_CHAIN[0], c.key == KEPT_CHAIN[1])).first()  # fmt: skip
    return (None, None) if row is None else (str(row[0]), row[1])


def _keep(engine: Engine, token: str | None, chain: _Chain) -> None:
    """Keep ``chain`` where ``token`` (read with the chain it carried on) is still the
    kept one's: a window withheld since (:func:`withhold_watermark`) wins. A store this
    role may not write (a read-only API role) keeps nothing: the next call reads again;
    nor does one that finds the store's write lock (SQLite) or the row (PostgreSQL) held
    past :data:`KEEP_WAIT_MS` (a night's writer: ``status`` never waits behind it)."""
    from sqlalchemy.exc import DBAPIError

    c = checkpoints.c
    row = {"status": uuid.uuid4().hex[:16], "value": chain.dump(), "updated_at": db.utcnow()}
    try:
        with engine.begin() as conn, db.short_lock_wait(conn, KEEP_WAIT_MS):
            if token is None:
                conn.execute(insert(checkpoints).values(
                    scope=KEPT_CHAIN[0], key=KEPT_CHAIN[1], **row))  # fmt: skip
            else:
                conn.execute(update(checkpoints).where(
                    c.scope == KEPT_CHAIN[0], c.key == KEPT_CHAIN[1], c.status == token,
                ).values(**row))  # fmt: skip
    except DBAPIError as exc:  # another writer kept one first, or a read-only role
        logger.debug("the watermark's chain is not kept: %s", exc)


def _drop_kept(conn: Any) -> None:
    """Make the kept chain be rebuilt, in the caller's transaction (a window of it is
    withheld: its reach shrinks, which a chain can only carry on growing)."""
    db.upsert(conn, checkpoints, [{
        "scope": KEPT_CHAIN[0], "key": KEPT_CHAIN[1], "status": uuid.uuid4().hex[:16],
        "value": {}, "updated_at": db.utcnow()}], keys=["scope", "key"])  # fmt: skip


def _islands(pieces: Iterable[_Island]) -> list[_Island]:
    """The islands of ``pieces`` (windows and update-file reaches): by start (all before
    first, then the longer reach first), each joined to the island before it where it
    starts at or before that island's reach (the reach of the first island is the mark:
    a later window past a gap does not carry it over days no window searched)."""
    ordered = sorted(pieces, key=lambda p: p[1], reverse=True)
    ordered.sort(key=lambda p: (p[0] is not None, p[0] or _EPOCH))
    out: list[list[Any]] = []
    for begin, reached in ordered:
        if out and (begin is None or begin <= out[-1][1]):
            out[-1][1] = max(out[-1][1], reached)
        else:
            out.append([begin, reached])
    return [(b, e) for b, e in out]


_EPOCH = dt.datetime.min.replace(tzinfo=dt.UTC)


class _Chain:
    """The chain of the succeeded E-utilities windows and update-file runs
    (:func:`last_watermark`), carried on run by run.

    ``first``: where the run started first begins (its key: start time, id), which no
    window wholly before cuts or starts; ``islands``: the windows read so far, joined;
    ``upto``: the highest id read; ``reread``: ids read again each time (running, held
    from the mark and not covered yet: their reach may grow; an id not seen yet).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.first: dt.datetime | None = None
        self.first_key: tuple[dt.datetime, int] | None = None
        self.islands: list[_Island] = []
        self.upto = 0
        self.open: set[int] = set()
        self.unseen: dict[int, dt.datetime] = {}

    @property
    def mark(self) -> dt.datetime | None:
        return self.islands[0][1] if self.islands else None

    @property
    def reread(self) -> list[int]:
        return sorted(self.open | set(self.unseen))

    @classmethod
    def load(cls, settings: Settings, kept: Mapping[str, Any] | None) -> _Chain | None:
        """The kept chain, or ``None`` where there is none to carry on."""
        if not kept or kept.get("format") != _CHAIN_FORMAT or kept.get(
                "overlap_days") != settings.window_overlap_days:
            return None
        when = dt.datetime.fromisoformat
        chain = cls(settings)
        chain.upto = int(kept["upto"])
        chain.open = {int(i) for i in kept["open"]}
        chain.unseen = {int(i): when(t) for i, t in kept["unseen"].items()}
        chain.islands = [(None if b is None else when(b), when(e)) for b, e in kept["islands"]]
        if kept["first_key"] is not None:
            chain.first = None if kept["first"] is None else when(kept["first"])
            chain.first_key = (when(kept["first_key"][0]), int(kept["first_key"][1]))
        return chain

    def dump(self) -> dict[str, Any]:
        return {
            "format": _CHAIN_FORMAT, "overlap_days": self.settings.window_overlap_days,
            "upto": self.upto, "open": sorted(self.open),
            "unseen": {str(i): iso(t) for i, t in self.unseen.items()},
            "islands": [[iso(b), iso(e)] for b, e in self.islands],
            "first": iso(self.first),
            "first_key": None if self.first_key is None else [iso(self.first_key[0]),
                                                              self.first_key[1]],
        }  # fmt: skip

    def read(self, rows: Iterable[Any]) -> bool:
        """Carry the chain on with ``rows`` (:func:`_runs_query`, by id); ``False``: a
        run started before the chain's first one, which only a rebuild can take in."""
        now = db.utcnow()
        seen: set[int] = set()
        spans: list[tuple[dt.datetime | None, dt.datetime, dt.datetime, int]] = []
        held: dict[int, _Island] = {}
        top = self.upto
        for run_id, source, status, start, end, started, withheld, query, details in rows:
            seen.add(run_id)
            top = max(top, run_id)
            self.open.discard(run_id)
            if source not in WINDOW_SOURCES:
                continue
            if status == RunStatus.RUNNING:
                self.open.add(run_id)
                continue
            if status != RunStatus.SUCCEEDED or query is not None or (
                    end is None and source != "updatefiles"):
                continue
            span = _run_span(self.settings, start, end, started, withheld, details)
            if span is None:
                continue
            spans.append((*span, started, run_id))
            if withheld is not None and start is not None:  # its reach may grow
                held[run_id] = (span[0], min(end, started))
        # the ids between the last read and the highest now that no row holds: a run whose
        # insert was not committed yet (read again for a while)
        for run_id in range(max(self.upto + 1, top + 1 - _UNSEEN_MAX), top + 1):
            if run_id not in seen:
                self.unseen.setdefault(run_id, now)
        for run_id in list(self.unseen):
            if run_id in seen or now - self.unseen[run_id] > _UNSEEN_FOR:
                del self.unseen[run_id]
        self.upto = top
        if spans:
            first = min(spans, key=lambda s: (s[2], s[3]))
            key = (first[2], first[3])
            if self.first_key is None:
                self.first, self.first_key = first[0], key
            elif key < self.first_key:
                return False
        fresh = [(b, e) for b, e, _, _ in spans
                 if self.first is None or b is None or e >= self.first]
        self.islands = _islands([*self.islands, *fresh])
        self.open |= {i for i, (b, e) in held.items() if not self._covers(b, e)}
        return True

    def _covers(self, begin: dt.datetime | None, reach: dt.datetime) -> bool:
        """Whether a window from ``begin`` reaching ``reach`` could change nothing: wholly
        before the first run's start, or inside an island."""
        if self.first is not None and reach < self.first:
            return True
        return any((b is None or (begin is not None and b <= begin))
                   and (begin is None or begin <= e) and reach <= e
                   for b, e in self.islands)  # fmt: skip


def _run_span(
    settings: Settings,
    start: dt.datetime | None,
    end: dt.datetime | None,
    started: dt.datetime,
    withheld: str | None,
    details: Mapping[str, Any] | None,
) -> tuple[dt.datetime | None, dt.datetime] | None:
    """Where a succeeded run of the watermark (:func:`_watermark_runs`) reaches from
    (``None``: all before) and to, or ``None`` where it moves nothing
    (:func:`last_watermark`)."""
    from ingest.dates import searched_days

    if end is None:  # update files (a bootstrap's too) hold what NLM published by the
        # day before; a run that applied none, or left listed files unapplied
        # (max_files), holds nothing of the kind: it moves nothing
        done = details or {}
        if done.get("files") and not done.get("left"):
            return None, _update_files_reach(done, started)
        if done.get("completes"):  # a bootstrap's call that completed a killed one
            # (ingest.bootstrap._completes): as far as that one reaches
            killed = done["completes"]
            began = as_utc(dt.datetime.fromisoformat(killed["started_at"]))
            return None, _update_files_reach(killed, began)
        return None
    # a withheld window is not through: what came before it is
    reached = start if withheld is not None and start is not None else end
    # a window searches PubMed's days from `overlap` before its start
    # (ingest.dates.searched_days), which begin at midnight in Bethesda
    begin = None if start is None else nlm_day_start(searched_days(settings, start, end)[0])
    return begin, min(reached, started)


def _watermark_runs() -> tuple[Any, ...]:
    """Which ``ingest_runs`` rows make the watermark (:func:`last_watermark`): succeeded
    E-utilities windows and update-file runs over the whole corpus."""
    r = ingest_runs.c
    return (
        r.source.in_(WINDOW_SOURCES),
        r.status == RunStatus.SUCCEEDED,
        or_(r.window_end.is_not(None), r.source == "updatefiles"),
        r.details["query"].as_string().is_(None),  # absent or null: all of PubMed
    )


def held_windows(settings: Settings, engine: Engine | None = None) -> list[dict[str, Any]]:
    """The E-utilities windows ingested but held from the watermark and not covered by it
    yet (``litpulse status``), by window start: waiting for their data-quality check
    (:data:`PENDING_CHECK`: not judged yet, or the run was killed before it) or withheld by
    a step that failed after the ingest (:func:`withhold_watermark`). Each: ``run`` (its
    id), ``window_start``, ``window_end``, ``started_at`` and ``why`` (the run's
    ``details.watermark``). A window that a later run got through (the watermark reached
    its end) is not listed. The watermark is read here (:func:`last_watermark`); a caller
    that worked it out already hands it to :func:`held_windows_past`."""
    engine = engine or db.connect(settings)
    return held_windows_past(last_watermark(settings, engine), engine)


def held_windows_past(mark: dt.datetime | None, engine: Engine) -> list[dict[str, Any]]:
    """:func:`held_windows` for a watermark the caller read already (``litpulse status``
    works it out once): the held windows ending after ``mark``; every held window where
    there is no watermark yet (``None``)."""
    r = ingest_runs.c
    why = r.details["watermark"].as_string()
    query = (
        select(r.id, r.window_start, r.window_end, r.started_at, why)
        .where(*_watermark_runs(), r.window_end.is_not(None), why.is_not(None))
        .order_by(r.window_start, r.id)
    )
    if mark is not None:
        query = query.where(r.window_end > mark)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return [{"run": run_id, "window_start": iso(start), "window_end": iso(end),
             "started_at": iso(started), "why": reason}
            for run_id, start, end, started, reason in rows]  # fmt: skip


def withhold_watermark(
    engine: Engine, window: tuple[dt.datetime, dt.datetime], since: dt.datetime, why: str
) -> int:
    """Keep the E-utilities run of ``window`` (started at ``since`` or later) from moving
    the watermark (:func:`last_watermark`): a step after the ingest failed, so the window
    is not through and the next nightly ingests and checks it again. Returns how many
    runs it marked (``details.watermark`` holds ``why``)."""
    r = ingest_runs.c
    with engine.begin() as conn:
        rows = conn.execute(
            select(r.id, r.details).where(
                r.source == "eutils", r.window_start == window[0], r.window_end == window[1],
                r.started_at >= since,
            )
        ).all()
        for run_id, details in rows:
            conn.execute(update(ingest_runs).where(r.id == run_id)
                         .values(details={**(details or {}), "watermark": f"withheld: {why}"}))
        if rows:  # the kept chain took their windows whole: rebuilt by the next call
            _drop_kept(conn)
    if rows:
        logger.warning("window %s..%s withheld from the watermark: %s", *window, why)
    return len(rows)


def release_watermark(engine: Engine, window: tuple[dt.datetime, dt.datetime]) -> int:
    """Let the succeeded E-utilities runs of ``window`` held by :data:`PENDING_CHECK` move
    the watermark: the window passed its checks. Runs withheld by a failed step stay
    withheld (the run that passed moves the mark). Returns how many runs it released."""
    r = ingest_runs.c
    with engine.begin() as conn:
        rows = conn.execute(
            select(r.id, r.details).where(
                r.source == "eutils", r.window_start == window[0], r.window_end == window[1],
                r.status == RunStatus.SUCCEEDED,
                r.details["watermark"].as_string() == PENDING_CHECK,
            )
        ).all()
        for run_id, details in rows:
            kept = {k: v for k, v in (details or {}).items() if k != "watermark"}
            conn.execute(update(ingest_runs).where(r.id == run_id).values(details=kept))
    return len(rows)


def retrain_due(settings: Settings, engine: Engine | None = None) -> RetrainDecision:
    """Whether enough new articles arrived since the last training for a retrain.

    "New" follows :func:`retrain.run.retrain`: live articles updated after the last
    training from the model in use (:func:`retrain.registry.last_training_end`: the
    active version's window, or a later round the gate rejected; every live article
    while nothing was trained from the base model). This is a cheap upper bound of the
    count ``retrain`` computes itself (it also holds some articles out), so a due
    decision can still end with ``retrain`` reporting ``skipped``.
    """
    from retrain.registry import articles_since_training

    engine = engine or db.connect(settings)
    threshold = settings.retrain_min_new_articles
    new, last = articles_since_training(engine)
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
    corpus in one task, so the index-refresh DAG skips itself while a litpulse_reindex run
    is coming (:func:`refresh_waits_for_reindex`). The same state is left by a promotion
    or rollback whose inline re-index was killed; the reason names the commands that
    finish it.
    """
    from ranking.embed import active_model

    engine = engine or db.connect(settings)
    published = published_index_row(engine)
    if published is None:
        return None
    active = active_model(settings, engine).id
    if published.model_version == active:
        return None
    return (
        f"the published index {published.id} is for model {published.model_version} but "
        f"the active model is {active}: a re-index for it is pending; unless a "
        f"litpulse_reindex run or a promotion is re-indexing now, finish it with "
        f"{FINISH_REINDEX}"
    )


def refresh_waits_for_reindex(
    settings: Settings,
    *,
    reindex_runs: Callable[[], int],
    reindex_paused: Callable[[], bool | None] = lambda: False,
    engine: Engine | None = None,
    now: dt.datetime | None = None,
) -> str | None:
    """Whether the index-refresh DAG skips this run for a pending re-index, or fails.

    While a re-index is pending (:func:`reindex_pending`) the refresh would re-embed the
    whole corpus in one task; it skips when a ``litpulse_reindex`` run is coming: one is
    queued or running, or the model was promoted less than :data:`REINDEX_GRACE` ago
    (its run is about to appear), or a live process holds the publish lease (an inline
    re-index: ``litpulse models promote``, ``litpulse index refresh``). Otherwise nothing
    will ever publish an index for the active model (a promotion whose inline re-index
    was killed, a failed litpulse_reindex run, a model asset never emitted, a paused
    litpulse_reindex DAG — whose queued runs never start and which an asset gives no
    run): skipping would hide that every night.

    Args:
        settings: The settings.
        reindex_runs: Counts the queued and running ``litpulse_reindex`` runs (asked only
            while a re-index is pending).
        reindex_paused: Whether the ``litpulse_reindex`` DAG is paused; ``None``: Airflow
            does not know it (asked only while a re-index is pending and no process of
            its own re-indexes under the publish lease).
        engine: The store (default: ``db.connect(settings)``).
        now: The current time (default: the clock).

    Returns:
        ``None``: the refresh goes on; else why it is skipped.

    Raises:
        ConsistencyError: A re-index is pending and no run is coming (not retryable);
            the message names the commands that finish it.
    """
    engine = engine or db.connect(settings)
    pending = reindex_pending(settings, engine)
    if pending is None:
        return None
    from ranking.publish import LEASE_NAME

    holder = db.live_holder(engine, LEASE_NAME)
    if holder is not None:
        # an inline re-index (`litpulse models promote`/`rollback`, `litpulse index
        # refresh`) embeds under the publish lease, renewed while it lives: whatever
        # Airflow says of the litpulse_reindex DAG
        return f"{pending} (a re-index is running in {holder}, which holds {LEASE_NAME})"
    runs = reindex_runs()
    paused = reindex_paused()
    if runs and paused is False:
        return f"{pending} ({runs} litpulse_reindex run(s) queued or running)"
    row = active_model_row(engine)
    promoted = row.promoted_at if row is not None else None
    now = now or db.utcnow()
    if promoted is not None and now - promoted < REINDEX_GRACE and paused is False:
        return (
            f"{pending} (model promoted at {iso(promoted)}: waiting for its litpulse_reindex run)"
        )
    inline = "or finish the re-index in a process of its own (`litpulse index refresh`)"
    if paused is None:
        why = ("Airflow does not know the litpulse_reindex DAG (not deployed, or its file "
               "fails to import)")
        fix = f"deploy it and trigger it, {inline}"
    elif paused and runs:
        why = (f"The litpulse_reindex DAG is paused: its {runs} litpulse_reindex run(s) "
               "queued or running never go on")
        fix = f"unpause it (`airflow dags unpause litpulse_reindex`), {inline}"
    elif paused:
        why = ("The litpulse_reindex DAG is paused and no run of it is queued (a promotion "
               "queues none for a paused DAG)")
        fix = ("unpause it, then trigger it (`airflow dags unpause litpulse_reindex`, then "
               f"`airflow dags trigger litpulse_reindex`), {inline}")
    else:
        why, fix = "No litpulse_reindex run is queued or running", "finish the re-index"
    raise ConsistencyError(
        f"{pending}. {why}, so no index for the active model is coming and new articles do "
        f"not reach search: {fix} (or roll the model back: `litpulse models rollback`)"
    )


def finish_reindex(
    settings: Settings, *, progress: bool = False, lease: db.Lease | None = None
) -> Any | None:
    """Finish a pending re-index in this process (:func:`reindex_now`), or ``None`` when
    the published index is the active model's already.

    A promotion whose inline re-index was killed left the model switched; running the
    promotion again lands here (the registry finds the model active already). The
    vectors the killed run wrote are kept: only the rest is embedded. ``lease``: the
    ``index-publish`` lease the caller took before it read the registry.
    """
    pending = reindex_pending(settings)
    if pending is None:
        return None
    logger.warning("finishing the pending re-index: %s", pending)
    return reindex_now(settings, progress=progress, lease=lease)


def promotion_lease(settings: Settings) -> db.Lease:
    """The ``index-publish`` lease a promotion or rollback run in this process takes
    before it switches the model, and holds through its re-index (:func:`reindex_now`).

    Taken after the switch (by the re-index itself), a lease held by a re-index already
    running (a re-run promotion finishing one, ``litpulse index refresh``: hours at full
    size) failed the promotion only once the model was switched, and the switch was undone:
    meanwhile a retrain ending its round saw another model active and rejected its
    candidate, and the running re-index found its model switched out.

    Raises:
        IndexBusyError: Another process re-indexes or publishes; nothing was switched.
    """
    from ranking.publish import LEASE_NAME, IndexBusyError, acquire_publish_lease

    engine = db.connect(settings)
    try:
        return acquire_publish_lease(engine)
    except IndexBusyError:
        holder = db.live_holder(engine, LEASE_NAME)
        raise IndexBusyError(
            f"another process is re-indexing or publishing the index (lease {LEASE_NAME} "
            f"held by {holder or 'a process of another host'}): nothing was switched; run "
            "this again once it has ended"
        ) from None


@contextlib.contextmanager
def _held_reindex(settings: Settings, *, progress: bool) -> Iterator[Callable[[Settings], Any]]:
    with promotion_lease(settings) as lease:
        yield functools.partial(reindex_now, progress=progress, lease=lease)


def leased_reindex(*, progress: bool = False) -> LeasedReindex:
    """The ``reindex`` of a retraining round run in this process (`litpulse nightly`,
    `litpulse retrain`): when the gate passes, :func:`promotion_lease` is taken before the
    model is switched (another process re-indexing: nothing is switched, the candidate
    stays one) and :func:`reindex_now` runs under it."""
    from retrain.run import LeasedReindex

    return LeasedReindex(functools.partial(_held_reindex, progress=progress))


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

    Raises:
        ConsistencyError: The stored vectors of the active model version are of another
            base model than ``LITPULSE_MODEL`` now (:func:`ranking.embed.check_stored_base`;
            each shard would refuse too): ``litpulse index refresh --rebuild``.
    """
    if not 1 <= n <= SHARDS_MAX:
        raise ConfigError(f"the shard count must be from 1 to {SHARDS_MAX}, got {n}")
    from ranking.embed import active_model, check_stored_base, pending_query

    engine = engine or db.connect(settings)
    spec = active_model(settings, engine)
    check_stored_base(engine, spec)
    # one pass over the corpus: every shard's count from one GROUP BY (``pmid % n`` can
    # use no index, so a count per shard would read the corpus n times)
    sub = pending_query(spec.id).order_by(None).subquery()
    shard_of = (sub.c.pmid % n).label("shard")
    with engine.connect() as conn:
        rows = conn.execute(select(shard_of, func.count()).group_by(shard_of)).all()
    counts: dict[int, int] = {int(i): int(c) for i, c in rows}
    shards = [EmbeddingShard(i, n, spec.id, counts.get(i, 0)) for i in range(n)]
    logger.info(
        "planned %d shards for model %s: %d articles pending",
        n,
        spec.id,
        sum(s.pending for s in shards),
    )
    return shards


def superseded_plan(settings: Settings, shards: Sequence[Mapping[str, Any]]) -> str | None:
    """Why a sharded re-index planned as ``shards`` must not publish: another model version
    was promoted after the plan (its own re-index run embeds and publishes for it), or
    ``None``. Publishing now would embed the whole corpus for that model in one task."""
    from ranking.embed import active_model

    planned = {str(EmbeddingShard.from_dict(dict(s)).model_version) for s in shards}
    if not planned:
        return None
    active = active_model(settings).id
    if planned != {active}:
        return (
            f"the shards were planned for model {', '.join(sorted(planned))}, and {active} "
            "was promoted since: its own litpulse_reindex run embeds and publishes for it"
        )
    return None


def embed_shard(
    settings: Settings,
    shard: EmbeddingShard,
    *,
    engine: Engine | None = None,
    progress: bool = False,
) -> int:
    """Embed the live articles of one shard that lack a current vector.

    The work is :func:`ranking.embed.embed_pending` restricted to the shard; resumable,
    since rows are written per chunk and what is done is not pending any more.

    Raises:
        ConsistencyError: The active model version is no longer ``shard.model_version``
            (a newer promotion happened; its own reindex takes over), or its stored
            vectors are of another base model (:func:`ranking.embed.embed_pending`).

    Returns:
        Articles embedded.
    """
    from ranking.embed import active_model, embed_pending

    engine = engine or db.connect(settings)
    spec = active_model(settings, engine)
    if spec.id != shard.model_version:
        raise ConsistencyError(
            f"shard {shard.shard}/{shard.shards} was planned for model {shard.model_version} "
            f"but the active model is now {spec.id}"
        )
    return embed_pending(
        settings, spec, progress, engine=engine, shard=shard.shard, shards=shard.shards
    )


def lexical_negatives(settings: Settings) -> LexicalSearch | None:
    """The ranker retraining mines hard negatives from: the published lexical (BM25) index's
    search, or ``None`` when none is published yet (the first index refresh builds one).

    Retraining takes it as an argument instead of importing the index (the stage contract:
    retrain reads the store and the models, never the index's files or versions).
    """
    from ranking.lexical import open_lexical

    index = open_lexical(settings)
    if index is None:
        logger.info("no published lexical index: retraining without BM25 hard negatives")
        return None
    return index.search


def reindex_now(
    settings: Settings, *, progress: bool = False, lease: db.Lease | None = None
) -> Any:
    """The ``reindex`` step of a promotion or rollback run in this process.

    A model without a kept index gets a full build; one whose index files are still kept
    (a rollback, a re-promotion) has that index brought up to date and republished. The
    cached encoders are dropped so that searches load the newly active model.
    ``progress`` shows the embedding's bar on stderr. ``lease``: the ``index-publish``
    lease when the caller took it before switching the model (:func:`promotion_lease`).
    """
    from ranking.embed import clear_cache
    from ranking.refresh import refresh_index

    report = refresh_index(settings, progress=progress, lease=lease)
    clear_cache()
    return report
