"""The digest: after an index publish, each saved search's new matches, recorded and sent.

For every saved search (:mod:`litpulse.pipeline.saved_searches`), :func:`run_digest`

1. takes the articles *new* for it: live, written after its ``watermark`` (``updated_at``:
   first stored, brought back by a record after a deletion, or revised — MEDLINE adds the
   MeSH headings and publication types weeks after a citation first comes, so an article
   a MeSH-filtered search could not meet then meets it with its revision) and held by the
   published index version;
2. ranks them with the real search (:func:`ranking.search.run_search`: the search's
   query embedded with the index's own model version, its filters, the current scoring)
   over an exact index of just those articles' vectors, in semantic mode — a hybrid
   score min-max normalises BM25 over whatever candidates a query meets, so it is no
   absolute measure a fixed threshold could be set against; cosine, recency and citation
   impact are — and keeps those scoring at least
   its threshold (``--min-score``, else ``LITPULSE_DIGEST_MIN_SCORE``), best first, at
   most ``LITPULSE_DIGEST_MAX_MATCHES``; a query of authors alone (``Smith J[au]``) keeps
   each new article of theirs whatever the threshold (each meets it whole), a revised
   one too, as a topic's search does (a correction may have added the author: never a
   missed article), each once;
3. records them in ``digest_matches`` with their explanation — unique per (search, PMID),
   so an article is never sent twice for one search — and moves the watermark forward
   (never past an article not yet in the index: it is new for the next digest);
4. delivers every match not yet delivered on each configured channel — e-mail over SMTP,
   a webhook POST — and stamps ``email_sent_at`` / ``webhook_sent_at`` only on success,
   so a failed delivery is retried by the next digest and no match is lost (an e-mail
   the SMTP server took for some recipients and refused for others went out: it is
   stamped, and the refused ones are reported, never sent to the rest again). A
   receiver that is down holds the later messages back; a message it answers with a
   refusal (:attr:`DeliveryError.refused <litpulse.pipeline.digest_channels.DeliveryError>`)
   holds none back: it stays pending, reported, and goes after the others (at most
   :data:`REFUSED_IN_A_ROW` refused in a row while none is taken, then the channel waits
   for the next digest), and one refused for its size goes in smaller ones
   (:func:`_deliver_channel`). A
   search's e-mail goes to its owner's addresses (those of the owner's active API tokens,
   :func:`owner_addresses`), else to the shared ``LITPULSE_DIGEST_SMTP_TO`` list: one
   expert's searches never reach another's mailbox. The Atom
   feed (``/feeds/{id}.atom``, :func:`feed_for`) reads the matches directly.

A saved search that cannot be searched is reported (``SearchDigest.error``, a line of
``DigestReport.failures``, counted in the digest's closing log line) and skipped; its
watermark stays, so the next digest tries it again, and the others are digested and
delivered as usual. One that breaks a rule added since it was saved (its filters, its
query, a query the published model cannot embed: refused on save since) is logged as a
warning saying how to correct it in place (``litpulse alerts edit``); any other error (a
value the database refuses) with its traceback.

``litpulse nightly`` runs it after its index (and retrain) steps, the
``litpulse_index_refresh`` DAG after publishing, ``litpulse alerts run`` on demand.

Example:
    >>> report = run_digest(settings)  # doctest: +SKIP
    >>> report.matched, report.emailed  # doctest: +SKIP
    (3, 3)
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import ColumnElement, Engine, and_, desc, or_, select, update
from sqlalchemy.exc import SQLAlchemyError

from litpulse.core import db
from litpulse.core.errors import BusyError, ConfigError, LitpulseError, NotFoundError
from litpulse.core.schema import api_tokens, articles, digest_matches, saved_searches
from litpulse.core.settings import Settings
from litpulse.core.timeutil import iso, utcnow
from litpulse.core.widths import ID_MAX
from litpulse.pipeline.digest_channels import (
    DeliveryError,
    FeedPage,
    Match,
    atom_feed,
    delivery_key,
    post_webhook,
    send_email,
    shared_recipients,
)
from litpulse.pipeline.saved_searches import (
    CLI_OWNER_PREFIX,
    SavedSearch,
    get_search,
    list_searches,
    live_match,
)

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "LEASE_NAME",
    "DigestBusyError",
    "DigestReport",
    "SearchDigest",
    "digest_step",
    "feed_for",
    "matches_of",
    "owner_addresses",
    "recipients_of",
    "run_digest",
]

logger = logging.getLogger(__name__)

#: The database lease one digest holds (two digests at once would send twice).
LEASE_NAME = "digest"
#: Most matches a feed shows (the newest).
FEED_ENTRIES = 200
#: The last feed page asked for (the API and the CLI refuse a larger one).
FEED_PAGES_MAX = 1_000_000


class DigestBusyError(BusyError):
    """Another digest is running; try again later."""

    retryable = True


@dataclass(frozen=True)
class SearchDigest:
    """What one digest did for one saved search.

    Attributes:
        search_id: The saved search.
        name: Its name.
        candidates: New articles ranked.
        matched: New matches recorded (above its threshold, never recorded before).
        threshold: The score they needed.
        error: Why it could not be searched this time (its watermark stayed, so the next
            digest tries again), or ``None``.
        capped: More new articles scored above its threshold than
            ``LITPULSE_DIGEST_MAX_MATCHES``: only the best that many were recorded.
    """

    search_id: int
    name: str
    candidates: int
    matched: int
    threshold: float
    error: str | None = None
    capped: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class DigestReport:
    """What :func:`run_digest` did.

    Attributes:
        index_version: The published index version searched (``None``: none yet).
        searches: One entry per saved search.
        emailed: Matches delivered by e-mail now (earlier failures included).
        posted: Matches delivered to the webhook now.
        failures: Saved searches that could not be searched, and deliveries that
            failed (both retried by the next digest).
        warnings: What went wrong and is not retried: e-mail recipients the SMTP server
            refused while it took the message for the others, searches whose new matches
            were more than ``LITPULSE_DIGEST_MAX_MATCHES``.
        skipped: Why nothing was searched, when so.
    """

    index_version: str | None
    searches: tuple[SearchDigest, ...] = ()
    emailed: int = 0
    posted: int = 0
    failures: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    skipped: str | None = None

    @property
    def matched(self) -> int:
        """New matches recorded, over every saved search."""
        return sum(s.matched for s in self.searches)

    @property
    def nothing_delivered(self) -> bool:
        """Deliveries were due and none went out: every one tried failed, or waited
        behind a receiver that could not be reached (all retried by the next digest).
        ``litpulse alerts run`` then exits 75, so that a cron job or a task calling it
        can tell; a digest with nothing due, or that delivered anything, is not this."""
        unsearched = sum(1 for s in self.searches if s.error is not None)
        return self.emailed + self.posted == 0 and len(self.failures) > unsearched

    def to_dict(self) -> dict[str, Any]:
        return {
            "index_version": self.index_version,
            "matched": self.matched,
            "searches": [s.to_dict() for s in self.searches],
            "emailed": self.emailed,
            "posted": self.posted,
            "failures": list(self.failures),
            "warnings": list(self.warnings),
            "skipped": self.skipped,
        }


@dataclass(frozen=True)
class _SubsetIndex:
    """An exact inner-product index over some vectors of one model version: the new
    articles of a digest, searched by :func:`ranking.search.run_search`."""

    id: str
    model_version: str
    vectors: np.ndarray = field(repr=False)
    ids: np.ndarray = field(repr=False)

    @property
    def size(self) -> int:
        return len(self.ids)

    @property
    def only(self) -> np.ndarray:
        """What a query of authors alone lists (:func:`ranking.search.run_search`): these
        new articles, not every article of the version by them."""
        return self.ids

    def search(self, query_vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        import numpy as np

        sims = np.asarray(query_vectors, dtype=np.float32) @ self.vectors.T
        order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        scores = np.take_along_axis(sims, order, axis=1).astype(np.float32)
        return scores, self.ids[order]


def run_digest(
    settings: Settings,
    *,
    engine: Engine | None = None,
    embed: Callable[[str], np.ndarray] | None = None,
) -> DigestReport:
    """Record every saved search's new matches, then deliver what is pending.

    Args:
        settings: The settings (thresholds, SMTP and webhook).
        engine: The store (default :func:`litpulse.core.db.connect`).
        embed: Query text → vector (default: the published index's model version).

    Returns:
        What was found and delivered.

    Raises:
        DigestBusyError: Another digest holds the ``digest`` lease.
    """
    engine = engine or db.connect(settings)
    lease = db.take_lease(engine, LEASE_NAME, lambda who: DigestBusyError(
        f"another digest ({who}) is running"
    ))  # fmt: skip
    with lease:
        started = utcnow()  # the matches this digest records are found from now on
        searches = list_searches(settings, engine=engine)
        if not searches:
            return DigestReport(index_version=None, skipped="no saved searches")
        from ranking.index_files import open_published

        index = open_published(settings, engine)
        if index is None:
            return DigestReport(index_version=None, skipped="no index is published yet")
        done = []
        lexical = getattr(index, "lexical", None)
        current = _LexicalCurrent(lexical) if lexical is not None else None
        for search in searches:
            lease.check()
            done.append(_digest_or_report(settings, engine, search, index, embed, current))
        lease.check()
        emailed, posted, failures, warnings = _deliver(settings, engine, started)
    cap = settings.digest_max_matches
    report = DigestReport(
        index_version=str(index.id),
        searches=tuple(done),
        emailed=emailed,
        posted=posted,
        failures=tuple(f"search {d.search_id} {d.name!r}: {d.error}" for d in done if d.error)
        + tuple(failures),
        warnings=tuple(
            f"search {d.search_id} {d.name!r}: more than {cap} new articles scored at least "
            f"its threshold; the best {cap} were recorded, the others were not "
            "(LITPULSE_DIGEST_MAX_MATCHES, or a higher --min-score)"
            for d in done if d.capped
        ) + tuple(warnings),
    )
    for line in report.warnings:
        logger.warning("digest: %s", line)
    logger.info(
        "digest of index %s: %d new matches over %d saved searches; %d e-mailed, "
        "%d posted, %d failures",
        index.id,
        report.matched,
        len(done),
        emailed,
        posted,
        len(report.failures),  # the searches not searched, and the deliveries failed
    )
    return report


def digest_step(settings: Settings) -> dict[str, Any]:
    """The digest as a step of a chain (``litpulse nightly``, the index-refresh DAG).

    The index is published already when it runs, so a digest that cannot run (another
    one holds the lease, a database error) is logged and reported, never raised: the
    next digest finds the same new articles (the watermarks did not move).
    """
    try:
        return run_digest(settings).to_dict()
    except (LitpulseError, SQLAlchemyError) as exc:
        logger.warning("digest not run: %s", exc)
        return DigestReport(index_version=None, skipped=f"{type(exc).__name__}: {exc}").to_dict()


#: New articles scored per search call of a digest (all of them are, part after part).
DIGEST_PART = 20_000


def _new_articles(
    engine: Engine,
    search: SavedSearch,
    index_ids: np.ndarray,
    model_version: str,
    lexical: _LexicalCurrent | None = None,
) -> tuple[np.ndarray, dt.datetime]:
    """The PMIDs new for ``search`` (stored or revised after its watermark) that the index
    holds, and the next watermark.

    The watermark moves to the newest write time looked at, but stops just before the
    oldest new article the index does not hold yet, or holds only as an older text (a
    revision not embedded yet: its vector of the current text has not come; it will be
    new next time). For a search the lexical index decides (a quoted phrase, a word
    after NOT, an author: ``lexical``), an article is held only when the published
    lexical index holds its current content too: a revision that changed only its
    authors, MeSH headings or keywords leaves its vector current, and the lexical index
    answers for the old list until the next refresh. An article matched before is not
    matched again (``digest_matches`` is unique per search and PMID).
    """
    import numpy as np

    from litpulse.core.schema import embeddings

    a, e = articles.c, embeddings.c
    with engine.connect() as conn:
        rows = conn.execute(
            select(a.pmid, a.updated_at, (e.text_hash == a.text_hash).label("current"))
            .select_from(articles.outerjoin(
                embeddings, and_(e.pmid == a.pmid, e.model_version == model_version)
            ))
            .where(a.updated_at > search.watermark, a.is_deleted.is_(False))
            .order_by(a.updated_at)
        ).all()  # fmt: skip
    if not rows:
        return np.zeros(0, dtype=np.int64), search.watermark
    pmids = np.fromiter((int(r.pmid) for r in rows), dtype=np.int64, count=len(rows))
    current = np.fromiter((bool(r.current) for r in rows), dtype=bool, count=len(rows))
    held = np.isin(pmids, index_ids) & current
    if lexical is not None and held.any():
        held &= ~np.isin(pmids, lexical.stale(engine, pmids[held]))
    waiting = [r.updated_at for r, h in zip(rows, held, strict=True) if not h]
    if waiting:
        mark = max(search.watermark, min(waiting) - dt.timedelta(microseconds=1))
    else:
        mark = rows[-1].updated_at
    return pmids[held], mark


class _LexicalCurrent:
    """Which articles the published lexical index holds with other content than the
    store's (:func:`ranking.lexical.changed_docs`), each asked once a digest: the saved
    searches of one digest mostly share their new articles."""

    def __init__(self, lexical: Any) -> None:
        self.lexical = lexical
        self._stale: dict[int, bool] = {}

    def stale(self, engine: Engine, pmids: np.ndarray) -> np.ndarray:
        """Those of ``pmids`` (held by the vector index) whose lexical entry is older
        than the store's row, or missing."""
        import numpy as np

        from ranking.lexical import changed_docs

        ask = np.asarray([p for p in pmids.tolist() if p not in self._stale], dtype=np.int64)
        if len(ask):
            changed = set(changed_docs(engine, self.lexical, ask).tolist())  # or missing
            self._stale.update({p: p in changed for p in ask.tolist()})
        return np.asarray([p for p in pmids.tolist() if self._stale[p]], dtype=np.int64)


def _not_matched(engine: Engine, search_id: int, pmids: np.ndarray) -> np.ndarray:
    """``pmids`` less those recorded as matches of the search already."""
    import numpy as np

    if not len(pmids):
        return pmids
    with engine.connect() as conn:
        known = conn.execute(
            select(digest_matches.c.pmid).where(
                digest_matches.c.search_id == search_id,
                db.id_in_clause(conn, "pmid", pmids.tolist()),
            )
        ).scalars().all()  # fmt: skip
    if not known:
        return pmids
    return pmids[~np.isin(pmids, np.asarray(known, dtype=np.int64))]


def _digest_or_report(
    settings: Settings,
    engine: Engine,
    search: SavedSearch,
    index: Any,
    embed: Callable[[str], np.ndarray] | None,
    current: _LexicalCurrent | None = None,
) -> SearchDigest:
    """:func:`_digest_one`, or, when it fails, what went wrong: one saved search that
    cannot be searched (a rule it breaks, a value the database refuses) never stops the
    digest of the others. Nothing of it is written, so the next digest tries again."""
    try:
        return _digest_one(settings, engine, search, index, embed, current)
    except ConfigError as exc:  # a rule the stored search breaks: its remedy, no traceback
        logger.warning("saved search %d %r not digested (tried again next time): %s",
                       search.id, search.name, exc)  # fmt: skip
        failure: Exception = exc
    except Exception as exc:  # logged with its traceback, reported, tried again
        logger.exception("saved search %d %r not digested (tried again next time): %s",
                         search.id, search.name, exc)  # fmt: skip
        failure = exc
    return SearchDigest(
        search_id=search.id,
        name=search.name,
        candidates=0,
        matched=0,
        threshold=search.threshold(settings),
        error=f"{type(failure).__name__}: {failure}",
    )


def _not_searched(search: SavedSearch) -> ConfigError:
    """The error of a search with a :attr:`~SavedSearch.problem`: what it is and how to
    correct it in place (:attr:`~SavedSearch.remedy`)."""
    return ConfigError(f"not searched: {search.problem}; {search.remedy}")


def _digest_one(
    settings: Settings,
    engine: Engine,
    search: SavedSearch,
    index: Any,
    embed: Callable[[str], np.ndarray] | None,
    current: _LexicalCurrent | None = None,
) -> SearchDigest:
    from ranking.index_store import fetch_vectors
    from ranking.lexical import constrains
    from ranking.search import lists_authors, run_search

    if search.problem is not None:
        raise _not_searched(search)
    threshold = search.threshold(settings)
    # a quoted phrase is required, a word after NOT excluded, an author named: the
    # published lexical index tells which articles meet them (none there: not searched
    # this time, reported), so only those it holds as they are now are new
    phrase_filter = getattr(index, "lexical", None) if constrains(search.query) else None
    new, mark = _new_articles(engine, search, index.ids, str(index.model_version),
                              current if phrase_filter is not None else None)
    # an article matched before is never recorded again (a revision of it is new by its
    # write time): left out before ranking, it takes no place under the cap
    unmatched = _not_matched(engine, search.id, new)
    matched_before = len(new) - len(unmatched)  # looked at (candidates), not ranked
    new = unmatched
    listed = lists_authors(search.query)
    vectors, ids = fetch_vectors(engine, str(index.model_version), new)
    hits: Sequence[Any] = ()
    capped = False
    cap = settings.digest_max_matches
    passing: list[Any] = []
    # every new article is scored, a part at a time: a search's candidate pool is its
    # nearest by cosine, and a flood of revised older articles (near, but low on
    # recency) would crowd a new one that scores higher out of it. Semantic scores are
    # absolute (see the module doc), so the parts' hits compare.
    for start in range(0, len(ids), DIGEST_PART):
        part = slice(start, start + DIGEST_PART)
        part_ids, part_vectors = ids[part], vectors[part]
        subset = _SubsetIndex(
            id=str(index.id), model_version=str(index.model_version), vectors=part_vectors,
            ids=part_ids,
        )  # fmt: skip
        try:
            result = run_search(
                settings.replace(rerank_candidates=len(part_ids)),  # the whole part, exactly
                search.query,
                k=min(cap + 1, len(part_ids)),  # one more: whether the cap left any out
                filters=search.filters,
                engine=engine,
                index=subset,
                embed=embed,
                lexical=phrase_filter,
                mode="semantic",  # an absolute score for the threshold (see the module doc)
            )
        except ConfigError as exc:  # a rule of a search its query breaks, checked only by
            # searching (the model cannot embed it: saved before that was refused on save)
            problem = f"its query is refused: {exc}"
            raise _not_searched(dataclasses.replace(search, problem=problem)) from exc
        # authors alone (Smith J[au]): each new article of theirs meets the query whole
        passing += [h for h in result.hits if listed or h.score >= threshold]
    if passing:
        passing.sort(key=lambda h: (-h.score, h.pmid))
        capped = len(passing) > cap
        hits = passing[:cap]
    now = utcnow()
    rows = [
        {
            "search_id": search.id,
            "pmid": h.pmid,
            "title": h.title,
            "score": float(h.score),
            "explanation": h.explanation,
            "index_version": str(index.id),
            "model_version": str(index.model_version),
            "found_at": now,
        }
        for h in hits
    ]
    with engine.begin() as conn:
        # the search as it was read, first (on PostgreSQL this locks its row until the
        # matches are committed; a removal deletes the row, then its matches): one removed
        # while it was ranked records nothing — nor, on SQLite, which gives a freed id to
        # the next search saved, does it hand its matches to that one
        still = conn.execute(
            update(saved_searches)
            .where(saved_searches.c.id == search.id,
                   saved_searches.c.created_at == search.created_at,
                   # edited in place meanwhile: these were judged by the old search
                   saved_searches.c.edited_at.is_not_distinct_from(search.edited_at))
            .values(watermark=mark, last_digest_at=now, last_index_version=str(index.id))
        ).rowcount
        if still != 1:
            conn.rollback()
            logger.info("saved search %d %r was removed or edited while it was digested: "
                        "nothing recorded (an edited one is judged by the next digest)",
                        search.id, search.name)
            return SearchDigest(search_id=search.id, name=search.name,
                                candidates=len(ids) + matched_before, matched=0,
                                threshold=threshold)  # fmt: skip
        before = _count(conn, search.id)
        db.upsert(conn, digest_matches, rows, keys=("search_id", "pmid"), update=())
        matched = _count(conn, search.id) - before
    logger.info(
        "saved search %d %r: %d new articles, %d new matches (>= %g)",
        search.id,
        search.name,
        len(ids),
        matched,
        threshold,
    )
    return SearchDigest(
        search_id=search.id,
        name=search.name,
        candidates=len(ids) + matched_before,
        matched=matched,
        threshold=threshold,
        capped=capped,
    )


def _count(conn: Any, search_id: int) -> int:
    from sqlalchemy import func

    n = conn.execute(select(func.count()).where(digest_matches.c.search_id == search_id)).scalar()
    return int(n or 0)


def _match(row: Any) -> Match:
    return Match(
        id=int(row.id),
        search_id=int(row.search_id),
        pmid=int(row.pmid),
        title=row.title or "",
        score=float(row.score),
        index_version=row.index_version,
        model_version=row.model_version,
        found_at=row.found_at,
        explanation=dict(row.explanation or {}),
        retracted=bool(getattr(row, "retracted", False)),
        attempt=getattr(row, "attempt", None),
        refused_at=getattr(row, "refused_at", None),
        retracted_at=getattr(row, "retracted_at", None),
    )


def matches_of(
    engine: Engine,
    search_id: int,
    *,
    limit: int | None = None,
    pending: str | None = None,
    offset: int = 0,
    after: int | None = None,
) -> list[Match]:
    """A saved search's matches whose article is live, newest first (best score first
    within one digest).

    A match whose article PubMed has deleted since is left out (:func:`live_match`) —
    not sent, not in the feed, not counted — as no search shows a deleted article; it
    stays recorded (and pending where it was), so a record that brings the article back
    brings the match back too.

    Args:
        engine: The store.
        search_id: The saved search.
        limit: Most matches returned.
        pending: ``"email"`` or ``"webhook"``: only those not yet delivered there.
        offset: Matches of that order skipped first (a feed's later pages).
        after: Only the matches that come after match ``after`` (of this search) in that
            order (a feed's page after the one that ended with it: :func:`after_match`).
    """
    # whether the article is retracted now: a match found before its retraction says so,
    # and, when it is, the last write of its record (a feed entry's `updated` moves)
    of_match = articles.c.pmid == digest_matches.c.pmid
    retracted = select(articles.c.is_retracted).where(of_match).scalar_subquery()
    retracted_at = (
        select(articles.c.updated_at).where(of_match, articles.c.is_retracted.is_(True))
        .scalar_subquery()
    )
    stmt = select(
        digest_matches, retracted.label("retracted"), retracted_at.label("retracted_at")
    ).where(digest_matches.c.search_id == search_id, live_match())
    if after is not None:
        stmt = stmt.where(after_match(after))
    if pending is not None:
        stmt = stmt.add_columns(
            digest_matches.c[f"{pending}_key"].label("attempt"),
            digest_matches.c[f"{pending}_refused_at"].label("refused_at"),
        )
        stmt = stmt.where(digest_matches.c[f"{pending}_sent_at"].is_(None))
    stmt = stmt.order_by(
        desc(digest_matches.c.found_at), desc(digest_matches.c.score), digest_matches.c.pmid
    )
    if limit is not None:
        stmt = stmt.limit(limit)
    if offset:
        stmt = stmt.offset(offset)
    with engine.connect() as conn:
        return [_match(r) for r in conn.execute(stmt).all()]


def after_match(match_id: int) -> ColumnElement[bool]:
    """The matches that come after match ``match_id`` in :func:`matches_of`'s order
    (newest first, best score first within one digest, then by PMID), read from its row:
    its article may have been deleted since, its row stays."""
    dm = digest_matches.c
    at = digest_matches.alias("cursor")

    def of(col: str) -> Any:
        return select(at.c[col]).where(at.c.id == match_id).scalar_subquery()

    found, score, pmid = of("found_at"), of("score"), of("pmid")
    return and_(
        dm.found_at <= found,  # the index's bound (search_id, found_at): no earlier row read
        or_(
            dm.found_at < found,
            and_(dm.found_at == found, dm.score < score),
            and_(dm.found_at == found, dm.score == score, dm.pmid > pmid),
        ),
    )


def count_matches(engine: Engine, search_id: int, *, after: int | None = None) -> int:
    """How many matches of a saved search :func:`matches_of` gives (those whose article
    is live; ``after``: those after that match)."""
    from sqlalchemy import func

    stmt = select(func.count()).where(digest_matches.c.search_id == search_id, live_match())
    if after is not None:
        stmt = stmt.where(after_match(after))
    with engine.connect() as conn:
        return int(conn.execute(stmt).scalar() or 0)


def delivery_status(settings: Settings, engine: Engine) -> dict[str, dict[str, Any]]:
    """What waits to be delivered on each configured channel (``litpulse status``).

    Per channel (``email`` when ``LITPULSE_DIGEST_SMTP_HOST`` is set, ``webhook`` when
    ``LITPULSE_DIGEST_WEBHOOK_URL`` is): the live matches not delivered there
    (``pending``), how many of them the receiver refused (``refused``, tried again each
    digest), of how many saved searches, and when the oldest was found
    (``oldest_found_at``, ``None`` when none waits). A channel not configured is left out:
    nothing is sent there, so nothing waits.
    """
    from sqlalchemy import func

    dm = digest_matches.c
    out: dict[str, dict[str, Any]] = {}
    channels = [c for c, on in (("email", settings.digest_smtp_host),
                                ("webhook", settings.digest_webhook_url)) if on]  # fmt: skip
    with engine.connect() as conn:
        for channel in channels:
            refused_col = dm[f"{channel}_refused_at"]
            row = conn.execute(
                select(
                    func.count(),
                    func.count(refused_col),
                    func.count(func.distinct(dm.search_id)),
                    func.min(dm.found_at),
                ).where(dm[f"{channel}_sent_at"].is_(None), live_match())
            ).one()
            out[channel] = {  # min() keeps the column's type: an aware datetime
                "pending": int(row[0]),
                "refused": int(row[1]),
                "searches": int(row[2]),
                "oldest_found_at": iso(row[3]),
            }
    return out


def recipients_of(
    settings: Settings, search: SavedSearch, owners: dict[str, list[str]]
) -> list[str]:
    """Whom a search's digest is e-mailed to: the addresses of its owner's active API
    tokens (``owners``: :func:`owner_addresses`), else the shared
    ``LITPULSE_DIGEST_SMTP_TO`` list (empty: the search is not e-mailed). A search saved
    from the CLI (owner ``cli:<user>``) always goes to the shared list: no token speaks
    for the operator, whatever its expert is called."""
    if search.owner.startswith(CLI_OWNER_PREFIX):
        return shared_recipients(settings)
    return owners.get(search.owner) or shared_recipients(settings)


def owner_addresses(engine: Engine) -> dict[str, list[str]]:
    """Each expert's e-mail addresses: those of their active API tokens, oldest token
    first, each once (letter case aside). A revoked token's address gets nothing more."""
    t = api_tokens.c
    out: dict[str, list[str]] = {}
    with engine.connect() as conn:
        rows = conn.execute(
            select(t.expert, t.email)
            .where(t.revoked_at.is_(None), t.email.is_not(None))
            .order_by(t.id)
        ).all()
    for expert, email in rows:
        have = out.setdefault(expert, [])
        if email.casefold() not in {a.casefold() for a in have}:
            have.append(email)
    return out


#: A channel: ``send(settings, search, matches, key=...)`` (a partial delivery's warning).
Send = Callable[..., str | None]


def _deliver(
    settings: Settings, engine: Engine, started: dt.datetime | None = None
) -> tuple[int, int, list[str], list[str]]:
    """Send every pending match on each configured channel; stamp what went out.

    E-mail goes out when ``LITPULSE_DIGEST_SMTP_HOST`` is set, each search's to
    :func:`recipients_of` it (a search with none is not e-mailed: its matches stay
    pending); the webhook when ``LITPULSE_DIGEST_WEBHOOK_URL`` is. The messages are
    :func:`_messages`'; each one's key is recorded with its matches before it goes out.
    ``started``: when the digest began (its own matches are found after it).

    A receiver that could not be reached (:attr:`DeliveryError.unreachable`: no
    connection) is not tried again this digest: the later searches' messages on that
    channel wait for the next digest, each search's reported (tried for each, a receiver
    down would cost the digest a timeout per search). One that took the request and did
    not answer in time (:attr:`DeliveryError.unanswered`) may be stuck on that one message
    (it goes first again next digest): the next search is tried, and the channel waits only
    once :data:`UNANSWERED_IN_A_ROW` searches in a row got no answer (a receiver that
    accepts and never answers costs that many timeouts a digest, not one a search). One
    that answered, a 5xx say, is tried for the next search: the failure may be one
    message's.

    Returns:
        Matches e-mailed, matches posted, failures (retried), warnings (not retried)."""
    owners = owner_addresses(engine) if settings.digest_smtp_host else {}
    sent = {"email": 0, "webhook": 0}
    down: dict[str, str] = {}  # channel: the search it could not reach the receiver for
    unanswered: dict[str, int] = {}  # channel: searches in a row the receiver did not answer
    failures: list[str] = []
    warnings: list[str] = []
    for search in list_searches(settings, engine=engine):
        channels: list[tuple[str, Send]] = []
        to = recipients_of(settings, search, owners) if settings.digest_smtp_host else []
        if to:
            channels.append(("email", functools.partial(send_email, to=to)))
        if settings.digest_webhook_url:
            channels.append(("webhook", post_webhook))
        for channel, send in channels:
            done, failed, said, ended = _deliver_channel(
                settings, engine, search, channel, send, started, down=down.get(channel)
            )
            if ended:  # tried: an answer resets the count
                unanswered[channel] = unanswered.get(channel, 0) + 1 if ended != "answered" else 0
            if channel not in down and (
                ended == "unreachable" or unanswered.get(channel, 0) >= UNANSWERED_IN_A_ROW
            ):
                down[channel] = search.name
            sent[channel] += done
            failures += failed
            warnings += said
    return sent["email"], sent["webhook"], failures, warnings


def _deliver_channel(
    settings: Settings,
    engine: Engine,
    search: SavedSearch,
    channel: str,
    send: Send,
    started: dt.datetime | None,
    *,
    down: str | None = None,
) -> tuple[int, list[str], list[str], _Ended]:
    """Send a search's pending matches on one channel (:func:`_messages`' messages, in
    their order); stamp what went out.

    ``down``: the search this digest could not reach the channel's receiver for (no
    connection, or no answer for :data:`UNANSWERED_IN_A_ROW` searches in a row): nothing is
    sent, the pending matches wait for the next digest, reported.

    A failure (the receiver down, failing, refusing every message alike) stops the
    channel: the later messages wait, in order. A message the receiver refuses
    (:attr:`DeliveryError.refused`) is marked so, reported, and the next one goes; once
    :data:`REFUSED_IN_A_ROW` are refused in a row with none taken this digest, the
    receiver refuses every message: the channel stops. A message refused for its size
    (:attr:`DeliveryError.too_large`) on its first try never went out: its matches go now
    in two smaller messages, under new keys (halved again while refused, down to one
    match); one tried before may have gone out then (a timeout), so it stays whole under
    its key, refused, and says why. Every
    refused message still pending is reported, tried this digest or not.

    Returns:
        Matches delivered, failures (retried), warnings (not retried), and how the last
        exchange ended: ``"unreachable"`` (:attr:`DeliveryError.unreachable`), ``"timed
        out"`` (reached, no answer in time: :attr:`DeliveryError.unanswered`),
        ``"answered"``, or ``""`` (nothing tried).
    """
    dm = digest_matches.c
    key_col, sent_col = dm[f"{channel}_key"], dm[f"{channel}_sent_at"]
    refused_col = dm[f"{channel}_refused_at"]
    name = f"{channel} for {search.name!r}"
    messages = _messages(search, matches_of(engine, search.id, pending=channel), started)
    if down is not None:
        waiting = sum(len(group) for _, group in messages)
        said = [f"{name}: {_matches_word(waiting)} wait for the next digest, not tried: the "
                f"receiver could not be reached, or did not answer in time "
                f"{UNANSWERED_IN_A_ROW} searches in a row, up to {down!r} this digest"
                ] if waiting else []  # fmt: skip
        return 0, said, [], ""
    queue = list(reversed(messages))  # popped from the end: the first message first
    tried: set[str] = set()
    delivered, refused, taken = 0, 0, False
    ended: _Ended = ""
    failures: list[str] = []
    warnings: list[str] = []
    while queue:
        key, group = queue.pop()
        tried.add(key)
        ids = [m.id for m in group]
        first_try = any(m.attempt is None for m in group)
        if first_try:  # its key, before it goes out
            with engine.begin() as conn:
                conn.execute(update(digest_matches).where(db.id_in_clause(conn, "id", ids))
                             .values({key_col: key, refused_col: None}))  # fmt: skip
        try:
            partly = send(settings, search, group, key=key)
        except Exception as exc:  # noqa: BLE001 - one search's failure stops no other
            log = logger.warning if isinstance(exc, DeliveryError) else logger.exception
            log("digest %s for saved search %d failed (retried next time): %s",
                channel, search.id, exc)  # fmt: skip
            why = str(exc) if isinstance(exc, DeliveryError) else f"{type(exc).__name__}: {exc}"
            if not (isinstance(exc, DeliveryError) and exc.refused):
                failures.append(f"{name}: {why}")
                ended = ("answered" if not isinstance(exc, DeliveryError) or not exc.unanswered
                         else "unreachable" if exc.unreachable else "timed out")  # fmt: skip
                break  # unreachable or failing: the later ones wait, in order
            if exc.too_large and len(group) > 1 and first_try:  # it went nowhere: halved
                with engine.begin() as conn:
                    conn.execute(update(digest_matches)
                                 .where(db.id_in_clause(conn, "id", ids))
                                 .values({key_col: None, refused_col: None}))  # fmt: skip
                fresh = [dataclasses.replace(m, attempt=None, refused_at=None) for m in group]
                half = len(fresh) // 2
                for part in (fresh[half:], fresh[:half]):
                    queue.append((delivery_key(search, part), part))
                warnings.append(f"{name}: {why}: its {len(group)} matches go in two messages")
                continue
            if exc.too_large and not first_try:  # an earlier try may have gone out
                why += (" (tried before under its key, so it may have gone out: it goes "
                        "again whole, the receiver must take a message this size)")
            # refused: it goes after the others from now on, and the next one goes now
            with engine.begin() as conn:
                conn.execute(update(digest_matches).where(db.id_in_clause(conn, "id", ids))
                             .values({refused_col: utcnow()}))  # fmt: skip
            failures.append(
                f"{name}: {why} (refused: {_matches_word(len(group))} under key {key} stay "
                "pending and are tried again after the others each digest)"
            )
            refused, ended = refused + 1, "answered"
            if refused >= REFUSED_IN_A_ROW and not taken:
                break  # it refuses every message (a revoked token): a few tries a digest
            continue
        refused, taken, ended = 0, True, "answered"
        with engine.begin() as conn:
            conn.execute(update(digest_matches).where(db.id_in_clause(conn, "id", ids))
                         .values({sent_col: utcnow(), refused_col: None}))  # fmt: skip
            # the key went out without its matches left out meanwhile (an article deleted
            # since it was tried): they go under a new key, never this one
            conn.execute(update(digest_matches)
                         .where(dm.search_id == search.id, key_col == key, sent_col.is_(None))
                         .values({key_col: None, refused_col: None}))  # fmt: skip
        delivered += len(group)
        if partly:  # delivered, not to everyone: said, never sent again to the rest
            warnings.append(f"{name}: {partly}")
    for key, group in messages:  # refused before and not tried now: said each digest
        if key not in tried and any(m.refused_at for m in group):
            failures.append(f"{name}: {_matches_word(len(group))} under key {key}, refused "
                            "before, wait (not tried this digest)")  # fmt: skip
    return delivered, failures, warnings, ended


def _matches_word(n: int) -> str:
    return f"{n} match{'es' if n != 1 else ''}"


#: Messages a receiver may refuse in a row (:attr:`DeliveryError.refused`) before a
#: digest stops sending it that search's others: it refuses every message, not one.
REFUSED_IN_A_ROW = 3

#: Saved searches in a row whose message a receiver took and did not answer in time
#: (:attr:`DeliveryError.unanswered`, reached) before a digest stops trying it: one may be
#: stuck on one message, which goes first again each digest and must starve no other.
UNANSWERED_IN_A_ROW = 2

#: How a search's exchanges with a channel's receiver ended (:func:`_deliver_channel`).
_Ended = Literal["", "answered", "timed out", "unreachable"]

#: Most matches one message carries (an e-mail one can read, a webhook body well under a
#: receiver's usual limit of 1 MiB: ~130 KB).
MESSAGE_MATCHES = 200


def _messages(
    search: SavedSearch, pending: Sequence[Match], started: dt.datetime | None = None
) -> list[tuple[str, list[Match]]]:
    """The messages that carry ``pending`` (one channel's, as :func:`matches_of` gives
    them), each with its delivery key, in the order to send them.

    Each message handed on before (its matches' ``attempt``) and not refused goes again,
    with its key, the oldest first. Then the matches never handed on, oldest first, at
    most :data:`MESSAGE_MATCHES` a message: those found before ``started`` (left by
    earlier digests: a release before recorded keys sent all of a search's pending
    matches as one message, whose key these give again), then those this digest found.
    Last the messages the receiver refused (``refused_at``), again with their keys, the
    one refused longest ago first: one it refuses for good holds back no other, and
    those a digest did not reach (:data:`REFUSED_IN_A_ROW`) go first the next time.
    """
    tried: dict[str, list[Match]] = {}
    fresh: list[Match] = []
    for m in pending:
        if m.attempt is None:
            fresh.append(m)
        else:
            tried.setdefault(m.attempt, []).append(m)
    ordered = sorted(tried.items(), key=lambda kv: min(m.found_at for m in kv[1]))
    out = [(k, g) for k, g in ordered if not any(m.refused_at for m in g)]
    refused = [(k, g) for k, g in ordered if any(m.refused_at for m in g)]
    refused.sort(key=lambda kv: min(m.refused_at for m in kv[1] if m.refused_at))
    fresh.sort(key=lambda m: (m.found_at, -m.score, m.pmid))
    earlier = [m for m in fresh if started is not None and m.found_at < started]
    for part in (earlier, fresh[len(earlier):]):
        for at in range(0, len(part), MESSAGE_MATCHES):
            chunk = part[at : at + MESSAGE_MATCHES]
            out.append((delivery_key(search, chunk), chunk))
    return out + refused


def feed_for(
    settings: Settings,
    ref: int | str,
    *,
    self_url: str,
    engine: Engine | None = None,
    page: int = 1,
    after: int | None = None,
) -> bytes:
    """The Atom feed of a saved search: its matches, newest first, :data:`FEED_ENTRIES`
    a page (RFC 5005's paged feed: ``page`` 1 is the newest; a search with more matches
    links its next page, says so in the subtitle and counts them there).

    A page's ``next`` link reads the matches after its last one (``?page=2&after=ID``,
    :class:`~litpulse.pipeline.digest_channels.FeedPage`), so a reader following the
    links reads every match once while digests add matches or articles leave the feed;
    ``page`` alone (no ``after``) is the page by position, as a link of an older release.

    Characters XML 1.0 forbids are left out of its text (a name or query saved before
    control characters were refused, an article title): the feed stays well-formed.

    Args:
        page: The page's number (its position, when ``after`` is not given).
        after: Read the matches after this match of the search (a ``next`` link's).

    Raises:
        NotFoundError: No saved search has this id or name, or it has no match ``after``.
        ConfigError: ``page`` is below 1.
    """
    if not 1 <= page <= FEED_PAGES_MAX:
        raise ConfigError(f"a feed's pages are 1 to {FEED_PAGES_MAX:,}, got {page}")
    engine = engine or db.connect(settings)
    search = get_search(settings, ref, engine=engine)
    if after is not None:
        held = None
        if 1 <= after <= ID_MAX:  # outside, no row can hold it (nor be asked for)
            with engine.connect() as conn:
                held = conn.execute(select(digest_matches.c.id).where(
                    digest_matches.c.id == after, digest_matches.c.search_id == search.id
                )).first()  # fmt: skip
        if held is None:
            raise NotFoundError(f"saved search {search.id}'s feed holds no match {after} to "
                                "read after; its first page is the feed itself")  # fmt: skip
    search = dataclasses.replace(search, name=_xml_safe(search.name), query=_xml_safe(search.query))
    matches = [
        dataclasses.replace(
            m,
            title=_xml_safe(m.title),
            explanation={**m.explanation, "text": _xml_safe(str(m.explanation.get("text", "")))},
        )
        for m in (matches_of(engine, search.id, limit=FEED_ENTRIES + 1, after=after)
                  if after is not None else
                  matches_of(engine, search.id, limit=FEED_ENTRIES + 1,
                             offset=(page - 1) * FEED_ENTRIES))
    ]  # fmt: skip
    # one more than a page says whether a next page exists, from the same read: the counts
    # below are read after it and only number the matches (an article deleted meanwhile
    # must not make a full page look like the last)
    more = len(matches) > FEED_ENTRIES
    matches = matches[:FEED_ENTRIES]
    total = count_matches(engine, search.id)
    first = None if after is None else total - count_matches(engine, search.id, after=after) + 1
    paging = FeedPage(page, FEED_ENTRIES, total, after=after, first=first, shown=len(matches),
                      last=matches[-1].id if matches else None, more=more)  # fmt: skip
    return atom_feed(search, matches, self_url=self_url, paging=paging)


#: What XML 1.0 does not allow in a document (the complement of its ``Char``).
_NOT_XML = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _xml_safe(text: str) -> str:
    """``text`` without the characters XML 1.0 forbids."""
    return _NOT_XML.sub("", text)
