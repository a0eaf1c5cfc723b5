"""Ingest one date window from NCBI E-utilities: ESearch (split under the cap), EFetch, store.

:func:`ingest_window` runs two ESearch passes over the window — ``datetype=edat``
(records created in it) and ``datetype=mdat`` (records revised in it) — fetches the
union of the PMIDs with EFetch POSTs of ``settings.efetch_batch`` ids, and applies the
parsed items through :class:`ingest.store.Store`.

**The 10,000 cap.** PubMed's ESearch lets a client page through only the first 9,999
matches of a query (``retstart + retmax`` must stay below that). A window whose Count is
above ``min(settings.esearch_cap, 9999)`` is split by date into about ``Count / cap``
equal pieces (at least halves), recursively; a single day still over the cap is split
by PMID range (``AND lo:hi[uid]``): first just below the lowest PMID of the page it
returned (PubMed lists the newest first, so that page is then a piece of its own),
then at medians, until every piece fits. Nothing is skipped: the pieces partition the
window.

**Reconciliation.** Every PMID ESearch returned ends up stored, deleted, quarantined or
listed as *missing* (EFetch did not return it even after a second, targeted request —
typically a record withdrawn between the two calls). An ESearch answer listing fewer
distinct ids than its Count says, or an id that is not a PMID, is retried, never saved; an
EFetch answer counts only for the PMIDs asked: its records of others and any
``DeleteCitation`` are dropped and listed in the run's ``details["strays"]``. Missing PMIDs
are counted in ``IngestCounts.missing`` and listed in the run's
``details["missing_pmids"]``, and they are *owed* (:mod:`ingest.missing`): every later run,
whatever its window, asks EFetch for the PMIDs still owed and stores what comes
(``details["owed"]``, its counts apart from the window's own, which the data-quality checks
judge), until ``settings.missing_retries`` runs asked in vain; then they are given up and
reported (``litpulse status``, ``litpulse missing``). A record of an EFetch answer that is not
well-formed (an unescaped ``&``, an unclosed tag) is quarantined like one of a file,
under its PMID, and the rest of the answer is stored; only an answer that is empty, cut
short (no closing ``</PubmedArticleSet>``) or an error document is retried, unless its
``<ERROR>`` names a fault of the request (well-formed or not: NCBI echoes the request
into it), which fails at once; NCBI's own faults are retried whatever they say
(:func:`classify_eutils_error`).

**Withdrawals.** ESearch and EFetch simply stop returning a PMID PubMed withdrew. A window
of all PubMed (no query) checks the live records the store holds entered in its days that
its ESearch no longer lists: EFetch's record is stored as any; one EFetch does not serve
(asked twice) and ESearch does not list alone is deleted (``details["unlisted"]``; more
unlisted than a batch and a twentieth of the window are taken for a short search, and
none is deleted). The run also records what its answer held of each day
(``details["days"]``: the listed records entered on each, and the days it lists none of
while the store holds records entered then), which the window's data-quality check
judges (:func:`ingest.quality.check_ingest`: a short answer fails the window, so it is
searched again).

**Resuming.** Progress is checkpointed in ``checkpoints`` (scope ``eutils``): the PMID
list of the window (key ``<window>[|q=<hash>]#search``, status ``searched`` while the
window is being fetched, ``done`` once a run finished it) and each EFetch batch
(``…#batch<N>``, tagged with the search's generation: ``applying`` with the items its
committed store transactions applied, each transaction's mark committing with it, then
``done``). A killed or failed run, called again with the same window and query, reuses
the PMID list, fetches only the batches not done and goes on after the items a killed run
applied of its cut batch, so the window counts each record once. A repeated run of a
finished window searches and fetches again (catching late additions and revisions) and
changes nothing else: its records come back ``unchanged``. ``restart=True`` discards an
unfinished run's progress. The run that finishes a window deletes its batch marks and the
marks of its owed PMIDs' ask (``…#gen<N>#owed…``) in the transaction that marks the search
``done``: a finished window keeps one row, its search mark, night after night.

Example:
    >>> import datetime as dt
    >>> since, until = dt.datetime(2024, 1, 1), dt.datetime(2024, 1, 2)
    >>> ingest_window(settings, since, until).inserted  # doctest: +SKIP
    5312
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from lxml import etree
from sqlalchemy import Connection

from ingest import missing as owing
from ingest.checkpoints import EUTILS_SCOPE, forget_listed, window_key
from ingest.dates import each_day, searched_days
from ingest.fields import MAX_PMID, id_value
from ingest.http import HttpClient, eutils_client
from ingest.parse import ParseLimits, answer_entry, parse_bytes
from ingest.records import Deletion, Item, QuarantineEntry, Record, SourceRef
from ingest.runs import IngestCounts, OpenRun, judge_runs, recorded_run
from ingest.store import Store
from litpulse.core import db
from litpulse.core.errors import (
    AnswerTooLargeError,
    ConfigError,
    ConsistencyError,
    InvalidRequestError,
    LitpulseError,
    TransientSourceError,
)
from litpulse.core.settings import Settings
from litpulse.core.timeutil import as_utc, day_start, utcnow

__all__ = [
    "PUBMED_RETRIEVABLE",
    "SearchResult",
    "SearchOutcome",
    "classify_eutils_error",
    "efetch",
    "esearch",
    "ingest_window",
    "parse_esearch",
    "search_pmids",
]

logger = logging.getLogger(__name__)

#: PubMed ESearch serves at most the first 9,999 matches of one query.
PUBMED_RETRIEVABLE = 9999
#: Upper end of the PMID range used when a single day must be split.
UID_MAX = 999_999_999
#: ESearch's earliest date: a PMID searched alone (``<pmid>[uid]``) over every date.
_EARLIEST = dt.date(1800, 1, 1)

_XML = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=True, load_dtd=False)

_INVALID_HINTS = (
    "cannot be larger than",
    "invalid",
    "empty term",
    "empty id list",
    "not supported",
    "unsupported",
    "illegal",
    "syntax error",
    "too long",
    "unknown database",
)
#: How NCBI's own faults begin: transient whatever words follow (the request echoed, or
#: "Database is not supported" while a backend is down, as in July 2025), except the
#: paging limit, which comes as a "Search Backend failed" too.
_OUTAGE_STARTS = ("search backend failed", "ncbi c++ exception", "unable to obtain query")
_PAGING_LIMIT = "'retstart' cannot be larger than"

#: The start of an error document (declaration, DOCTYPE, the result element, then its
#: ``<ERROR>`` first): only such a body is classified by its error when it is not
#: well-formed; anything else that lxml refuses (an answer cut short, whatever its text
#: holds) is transient.
_ERROR_DOC_RE = re.compile(
    rb"\s*(?:<\?xml[^>]*\?>\s*)?(?:<!DOCTYPE[^>\[]*>\s*)?"
    rb"(?:<(?:eSearchResult|eFetchResult)(?:\s[^>]*)?>\s*)?<ERROR>"
)
_ERROR_SCAN = 1 << 16


def _unparseable(body: bytes, where: str, exc: etree.XMLSyntaxError, what: str) -> LitpulseError:
    """The exception for a body that is not well-formed: an error document (NCBI echoes
    the request into ``<ERROR>``: an unescaped ``&`` breaks the XML) classified by its
    error with :func:`classify_eutils_error` (``echoed``: only an error that begins as a
    bad request's does is one), anything else transient."""
    m = _ERROR_DOC_RE.match(body, 0, _ERROR_SCAN)
    if m is not None:
        end = body.find(b"</ERROR>", m.end(), _ERROR_SCAN)
        if end >= 0:
            message = body[m.end() : end].decode("utf-8", "replace")
            return classify_eutils_error(where, message, echoed=True)
    return TransientSourceError(f"{where}: {what} ({exc.msg})")


def classify_eutils_error(where: str, message: str, *, echoed: bool = False) -> LitpulseError:
    """The exception for an ``<ERROR>`` found in an HTTP 200 E-utilities body.

    "Invalid db", "Empty term", the 9,999 paging limit and syntax errors are the
    caller's fault (:class:`InvalidRequestError`, never retried); NCBI's own faults
    ("Search Backend failed", "NCBI C++ Exception", "Unable to obtain query") are
    transient whatever else they say, and so is anything else — timeouts and the like.
    ``echoed``: the message may carry the request's own text (a body broken by it): then
    only a message that *begins* as a bad request's does is one.
    """
    text = " ".join(message.split())
    low = text.lower()
    if _PAGING_LIMIT in low:
        return InvalidRequestError(f"{where}: {text}")
    if low.startswith(_OUTAGE_STARTS):
        return TransientSourceError(f"{where}: error in body: {text}")
    if low.startswith(_INVALID_HINTS) if echoed else any(h in low for h in _INVALID_HINTS):
        return InvalidRequestError(f"{where}: {text}")
    return TransientSourceError(f"{where}: error in body: {text}")


# ------------------------------------------------------------------------------ ESearch


@dataclass(frozen=True)
class SearchResult:
    """One parsed ``eSearchResult``."""

    count: int
    ids: tuple[int, ...]
    retstart: int = 0
    webenv: str | None = None
    query_key: str | None = None
    warnings: tuple[str, ...] = ()


def parse_esearch(body: bytes, *, where: str = "esearch") -> SearchResult:
    """Parse an ``eSearchResult`` document.

    Raises:
        TransientSourceError: The body is not XML or not an ``eSearchResult``, or it
            carries a transient ``<ERROR>`` ("Search Backend failed").
        InvalidRequestError: The query itself is wrong: an invalid ``<ERROR>``, or an
            ``ErrorList`` naming phrases or fields PubMed does not know (PubMed would
            silently drop them from the query, so the answer would not mean what
            was asked).
    """
    try:
        root = etree.fromstring(body, _XML)
    except etree.XMLSyntaxError as exc:
        raise _unparseable(body, where, exc, "unparseable body") from None
    if root.tag != "eSearchResult":
        raise TransientSourceError(f"{where}: unexpected document <{root.tag}>")
    error = root.findtext("ERROR")
    if error is not None:
        raise classify_eutils_error(where, error)
    problems = [
        f"{el.tag}: {el.text or ''}".strip()
        for el in root.iterfind("ErrorList/*")
        if isinstance(el.tag, str)
    ]
    if problems:
        raise InvalidRequestError(f"{where}: query not understood ({'; '.join(problems)})")
    count = _number(root.findtext("Count"))
    if count is None:
        raise TransientSourceError(f"{where}: no Count in body")
    retstart = _number(root.findtext("RetStart") or "0")
    if retstart is None:
        raise TransientSourceError(f"{where}: RetStart is not a number")
    ids: list[int] = []
    for el in root.iterfind("IdList/Id"):
        text = (el.text or "").strip()
        if not text:
            continue
        pmid = id_value(text, MAX_PMID)
        if pmid is None:  # never saved: a later answer is asked for instead
            shown = text if len(text) <= 40 else text[:40] + "..."
            raise TransientSourceError(f"{where}: Id {shown!r} in the answer is not a PMID")
        ids.append(pmid)
    warnings = tuple(
        (el.text or "").strip() for el in root.iterfind("WarningList/*") if isinstance(el.tag, str)
    )
    return SearchResult(
        count=count,
        ids=tuple(ids),
        retstart=retstart,
        webenv=root.findtext("WebEnv"),
        query_key=root.findtext("QueryKey"),
        warnings=warnings,
    )


def _number(text: str | None) -> int | None:
    """A count of an ESearch answer: ASCII digits (surrounding blanks allowed), else None
    (``str.isdigit`` alone would take ``²``, which ``int`` refuses)."""
    text = (text or "").strip()
    return int(text) if text.isdigit() and text.isascii() else None


def esearch(
    client: HttpClient,
    *,
    term: str,
    datetype: str,
    mindate: dt.date,
    maxdate: dt.date,
    retmax: int,
    retstart: int = 0,
) -> SearchResult:
    """One ESearch request (POST) on PubMed; incomplete ID lists are retried."""
    where = f"esearch {datetype} {mindate:%Y/%m/%d}-{maxdate:%Y/%m/%d}"
    data = {
        "db": "pubmed",
        "term": term,
        "datetype": datetype,
        "mindate": f"{mindate:%Y/%m/%d}",
        "maxdate": f"{maxdate:%Y/%m/%d}",
        "retmax": str(retmax),
        "retstart": str(retstart),
        "usehistory": "y",
    }

    def parse(response: Any) -> SearchResult:
        result = parse_esearch(response.content, where=where)
        expected = max(0, min(retmax, result.count - retstart))
        distinct = len(set(result.ids))  # a repeated id must not stand for one left out
        if distinct < expected:
            raise TransientSourceError(
                f"{where}: body lists {distinct} distinct ids, expected {expected}"
            )
        return result

    result: SearchResult = client.post("esearch.fcgi", data=data, parse=parse)
    return result


@dataclass
class SearchOutcome:
    """The PMIDs of one pass over a window and how they were found."""

    pmids: set[int] = field(default_factory=set)
    requests: int = 0
    splits: int = 0


@dataclass(frozen=True)
class _Piece:
    """One ESearch piece of a window: days, optional PMID range, how to split it."""

    lo_day: dt.date
    hi_day: dt.date
    uids: tuple[int, int] | None = None
    median: bool = False
    #: (Count of the whole day, the page it returned, the PMID range of that page):
    #: set on the piece below a kept page, to check that the counts add up.
    rest_of: tuple[int, tuple[int, ...], tuple[int, int]] | None = None


def search_pmids(
    client: HttpClient,
    *,
    term: str,
    datetype: str,
    start: dt.date,
    end: dt.date,
    cap: int,
) -> SearchOutcome:
    """Every PMID matching ``term`` with ``datetype`` in ``[start, end]``, split under the cap.

    Args:
        client: An E-utilities client.
        term: The ESearch term (``all[sb]`` for everything).
        datetype: ``edat`` or ``mdat``.
        start: First day (inclusive).
        end: Last day (inclusive).
        cap: Largest Count fetched in one piece (at most 9,999).

    Raises:
        ConsistencyError: One PMID range of a single day still over the cap (impossible
            unless the server misbehaves).
    """
    limit = max(1, min(cap, PUBMED_RETRIEVABLE))
    out = SearchOutcome()
    stack: list[_Piece] = [_Piece(start, end)]
    while stack:
        p = stack.pop()
        piece = term if p.uids is None else f"({term}) AND {p.uids[0]}:{p.uids[1]}[uid]"
        res = esearch(
            client, term=piece, datetype=datetype, mindate=p.lo_day, maxdate=p.hi_day,
            retmax=limit,
        )
        out.requests += 1
        if p.rest_of is not None:
            total, page, upper = p.rest_of
            if res.count + len(page) == total:
                out.pmids.update(page)  # the page seen was exactly the upper piece
            else:  # the order was not newest-first, or the day changed: fetch it properly
                stack.append(_Piece(p.lo_day, p.hi_day, upper, median=True))
        if res.count <= limit:
            out.pmids.update(res.ids)
            continue
        out.splits += 1
        days = (p.hi_day - p.lo_day).days + 1
        if days > 1:
            # as many equal pieces as the count suggests (at least halves)
            parts = min(days, max(2, -(-res.count // limit)))
            bounds = [p.lo_day + dt.timedelta(days=days * i // parts) for i in range(parts + 1)]
            logger.debug(
                "%s %s..%s: %d > %d, split into %d date ranges",
                datetype, p.lo_day, p.hi_day, res.count, limit, parts,
            )
            for a, b in reversed(list(zip(bounds, bounds[1:], strict=False))):
                stack.append(_Piece(a, b - dt.timedelta(days=1), p.uids))
            continue
        lo, hi = p.uids or (1, UID_MAX)
        if lo >= hi:
            raise ConsistencyError(
                f"esearch {datetype} {p.lo_day}: PMID {lo} alone counts {res.count} > {limit}"
            )
        inside = sorted(set(i for i in res.ids if lo <= i <= hi))
        if not p.median and inside and inside[0] > lo and len(inside) == len(res.ids):
            # PubMed lists the newest (highest) PMIDs first, so the page seen is likely all
            # of [lowest seen, hi]: fetch only the rest, and keep the page if the counts
            # add up (else the upper piece is fetched too, see above).
            cut = inside[0] - 1
            logger.debug("%s %s: %d > %d, page kept, rest below %d",
                         datetype, p.lo_day, res.count, limit, inside[0])
            kept = (res.count, tuple(inside), (cut + 1, hi))
            stack.append(_Piece(p.lo_day, p.hi_day, (lo, cut), rest_of=kept))
            continue
        cut = inside[len(inside) // 2 - 1] if len(inside) >= 2 else (lo + hi) // 2
        if not lo <= cut < hi:
            cut = (lo + hi) // 2
        logger.debug(
            "%s %s: %d > %d, split PMIDs %d..%d at %d",
            datetype, p.lo_day, res.count, limit, lo, hi, cut,
        )
        stack.append(_Piece(p.lo_day, p.hi_day, (cut + 1, hi), median=True))
        stack.append(_Piece(p.lo_day, p.hi_day, (lo, cut), median=True))
    return out


# ------------------------------------------------------------------------------- EFetch


#: The start of a ``PubmedArticleSet`` document: optional BOM, XML declaration, DOCTYPE
#: (with an internal subset), comments and processing instructions, then the root tag.
_ARTICLE_SET_START = re.compile(
    rb"\A(?:\xef\xbb\xbf)?"
    rb"(?:\s|<\?[^>]*\?>|<!DOCTYPE[^>\[]*(?:\[[^\]]*\])?\s*>|<!--.*?-->)*"
    rb"<PubmedArticleSet(?:\s[^>]*)?>",
    re.DOTALL,
)
_ARTICLE_SET_END = b"</PubmedArticleSet>"
_RECORD_STARTS = ("<PubmedArticle", "<PubmedBookArticle")


def _whole_article_set(body: bytes) -> bool:
    """Whether ``body`` opens with a ``PubmedArticleSet`` root and ends with its end tag."""
    return (
        body.rstrip().endswith(_ARTICLE_SET_END)
        and _ARTICLE_SET_START.match(body) is not None
    )


def _check_efetch_body(body: bytes, where: str) -> None:
    """Raise unless ``body`` is a whole ``PubmedArticleSet`` answer.

    An empty body, one cut short (it does not end with ``</PubmedArticleSet>``) and
    anything else that is not XML is transient; an error document (``<ERROR>``, in an
    ``eFetchResult`` or not, well-formed or not) is classified by
    :func:`classify_eutils_error`. A whole
    ``PubmedArticleSet`` whose records are not all well-formed passes: the parser
    quarantines each bad record and keeps the others (one record must not fail the
    window).

    Raises:
        TransientSourceError: Empty, truncated, not XML, not a ``PubmedArticleSet``, or
            a transient ``<ERROR>``.
        InvalidRequestError: An ``<ERROR>`` naming a fault of the request.
    """
    if not body.strip():
        raise TransientSourceError(f"{where}: empty body")
    try:
        root = etree.fromstring(body, _XML)
    except etree.XMLSyntaxError as exc:
        if _whole_article_set(body):
            logger.warning(
                "%s: the answer is not well-formed (%s); its bad records are quarantined",
                where, exc.msg,
            )  # fmt: skip
            return
        raise _unparseable(body, where, exc, "unparseable or truncated body") from None
    error = root.findtext("ERROR")
    if error is not None:
        raise classify_eutils_error(where, error)
    if root.tag != "PubmedArticleSet":
        raise TransientSourceError(f"{where}: unexpected document <{root.tag}>")


#: Bytes an EFetch answer may hold besides its records: declaration, DOCTYPE, root tags,
#: blanks between records.
_EFETCH_ENVELOPE = 1 << 20


def efetch(
    client: HttpClient,
    pmids: Sequence[int],
    *,
    location: str,
    limits: ParseLimits | None = None,
    strays: list[int] | None = None,
) -> list[Item]:
    """Fetch and parse the records of ``pmids`` with one EFetch POST (retried as needed).

    ``limits`` caps one record's bytes and one text field (default: the settings' defaults),
    and so the answer: at most ``len(pmids) * max_record_bytes`` decoded bytes plus an
    envelope (more cannot be records the parser reads: a larger answer, a gzip bomb, is
    transient and never held whole).

    Only what the answer holds of ``pmids`` is returned: a record or quarantine entry of a
    PMID not asked for is dropped, and so is every ``DeleteCitation`` (EFetch serves none;
    a withdrawal is found by the window's check of unlisted records): each is logged, its
    PMID added to ``strays`` when given. An entry naming no PMID is kept (it may be one
    asked for: :func:`fetch_reconciled`).
    """
    limits = limits or ParseLimits()
    where = f"efetch {len(pmids)} ids ({location})"
    data = {"db": "pubmed", "id": ",".join(str(p) for p in pmids), "retmode": "xml"}
    asked = set(pmids)

    def parse(response: Any) -> list[Item]:
        body = response.content
        _check_efetch_body(body, where)
        ref = SourceRef("eutils", location, fetched_at=utcnow())
        return _asked_only(parse_bytes(body, source_ref=ref, limits=limits), asked, where,
                           strays)  # fmt: skip

    most = len(pmids) * limits.max_record_bytes + _EFETCH_ENVELOPE
    items: list[Item] = client.post("efetch.fcgi", data=data, parse=parse, max_bytes=most)
    return items


def _asked_only(
    items: list[Item], asked: set[int], where: str, strays: list[int] | None
) -> list[Item]:
    """``items`` less deletions and what names a PMID not in ``asked`` (see :func:`efetch`)."""
    kept: list[Item] = []
    dropped: list[int] = []
    for item in items:
        if isinstance(item, Deletion):
            dropped.append(item.pmid)
        elif item.pmid is not None and item.pmid not in asked:
            dropped.append(item.pmid)
        else:
            kept.append(item)
    if dropped:
        logger.warning(
            "%s: %d items of the answer dropped (deletions, or PMIDs not asked for): %s",
            where, len(dropped), sorted(set(dropped))[:20],
        )  # fmt: skip
        if strays is not None:
            strays += dropped
    return kept


def _pmids_of(items: Iterable[Item]) -> set[int]:
    """The PMIDs ``items`` name: records, deletions and quarantine entries."""
    out = _stored(items)
    out.update(i.pmid for i in items if isinstance(i, QuarantineEntry) and i.pmid is not None)
    return out


def _stored(items: Iterable[Item]) -> set[int]:
    """The PMIDs ``items`` give the store something for: a record or a deletion."""
    return {i.pmid for i in items if isinstance(i, Record | Deletion)}


def fetch_reconciled(
    client: HttpClient,
    pmids: Sequence[int],
    *,
    location: str,
    limits: ParseLimits | None = None,
    strays: list[int] | None = None,
) -> tuple[list[Item], list[int]]:
    """EFetch ``pmids``; ask again, once, for any the answer gave no record or deletion.

    A PMID left out, or whose record was quarantined (damaged in transit, or by NCBI), is
    asked for again: an intact record in the second answer replaces the damaged one (whose
    entry is dropped: it never reaches the store), and the same bad bytes met again are
    one entry, not two. A record quarantined without a readable PMID names none: when the
    second request was for that one PMID and its answer is one unreadable record, the
    entry is that PMID's. A PMID with no record or deletion after the second request is
    returned as missing (owed: later runs ask for it again, up to the give-up), quarantined
    or not. What either answer holds of other PMIDs, and its deletions, are dropped
    (``strays``: :func:`efetch`).

    Returns:
        The items, and the PMIDs still without a record or deletion.
    """
    items = _efetch_bounded(client, pmids, location=location, limits=limits, strays=strays)
    missing = sorted(set(pmids) - _stored(items))
    if missing:
        logger.info("%s: %d PMIDs absent or unreadable in EFetch's answer, asking again",
                    location, len(missing))  # fmt: skip
        known = {i.pmid for i in items if isinstance(i, QuarantineEntry) and i.pmid is not None}
        again = _efetch_bounded(client, missing, location=location, limits=limits,
                                strays=strays, quarantined=known)  # fmt: skip
        if len(missing) == 1 and not _pmids_of(again):
            items = _attribute(items, again, missing[0])
        else:
            items = _merged(items, again)
        missing = sorted(set(missing) - _stored(items))
    return items, missing


def _efetch_bounded(
    client: HttpClient,
    pmids: Sequence[int],
    *,
    location: str,
    limits: ParseLimits | None,
    strays: list[int] | None,
    quarantined: Collection[int] = (),
) -> list[Item]:
    """:func:`efetch`, whose answer over its cap is no failure of the window: the request
    is split in two, each half asked alone, down to one PMID, whose answer over the cap
    (a record over ``max_record_bytes`` and the envelope: what the parser would quarantine
    unread, or a gzip bomb) is that PMID's quarantine entry, its first bytes kept
    (:func:`ingest.parse.answer_entry`), unless it is in ``quarantined`` already (the
    entry the parser made of the record in an earlier answer stands): counted missing and
    owed either way, asked again by later runs like any record quarantined."""
    try:
        return efetch(client, pmids, location=location, limits=limits, strays=strays)
    except AnswerTooLargeError as exc:
        if len(pmids) > 1:
            half = len(pmids) // 2
            logger.warning("%s; asking its %d PMIDs in two halves", exc, len(pmids))
            return [
                *_efetch_bounded(client, pmids[:half], location=location, limits=limits,
                                 strays=strays, quarantined=quarantined),
                *_efetch_bounded(client, pmids[half:], location=location, limits=limits,
                                 strays=strays, quarantined=quarantined),
            ]  # fmt: skip
        pmid = pmids[0]
        cap = (limits or ParseLimits()).max_record_bytes
        reason = (
            f"the answer for PMID {pmid} alone is over {cap + _EFETCH_ENVELOPE} bytes: its "
            f"record is over the limit of {cap} bytes (LITPULSE_MAX_RECORD_BYTES), or the "
            "answer is damaged; not read further"
        )
        logger.warning("%s: %s", location, reason)
        if pmid in quarantined:
            return []
        ref = SourceRef("eutils", location, fetched_at=utcnow())
        return [answer_entry(reason, exc.head, ref, pmids[0])]


def _merged(items: list[Item], again: list[Item]) -> list[Item]:
    """``items`` + ``again`` (the answer to the second request): entries of records the
    second answer holds intact are dropped, and so are entries met again."""
    intact = _stored(again)
    kept = [i for i in items if not (isinstance(i, QuarantineEntry) and i.pmid in intact)]
    seen = {i.digest for i in kept if isinstance(i, QuarantineEntry)}
    return kept + [i for i in again if not (isinstance(i, QuarantineEntry) and i.digest in seen)]


def _attribute(items: list[Item], again: list[Item], pmid: int) -> list[Item]:
    """``items`` + ``again``, the answer to a request for ``pmid`` alone, which named no
    PMID: if it holds exactly one record quarantined without a PMID, that record is
    ``pmid``'s (and the same entry in ``items``, found by its digest, is dropped)."""
    unnamed = [
        i for i in again
        if isinstance(i, QuarantineEntry) and i.pmid is None
        and i.raw_xml.lstrip().startswith(_RECORD_STARTS)
    ]  # fmt: skip
    if len(unnamed) != 1:
        return _merged(items, again)
    entry = unnamed[0]
    digest = entry.digest
    kept = [i for i in items if not (isinstance(i, QuarantineEntry) and i.digest == digest)]
    return kept + [replace(entry, pmid=pmid) if i is entry else i for i in again]


# ------------------------------------------------------------------------------ windows


def _progress(items: Sequence[Any], enabled: bool, desc: str) -> Iterator[Any]:
    if enabled:
        try:
            from tqdm import tqdm
        except ImportError:
            pass
        else:
            yield from tqdm(items, desc=desc, unit="batch")
            return
    for n, item in enumerate(items, 1):
        if enabled:
            logger.info("%s: batch %d/%d", desc, n, len(items))
        yield item


def ingest_window(
    settings: Settings,
    since: dt.datetime | dt.date,
    until: dt.datetime | dt.date,
    *,
    query: str | None = None,
    progress: bool = False,
    restart: bool = False,
    on_given_up: Callable[[list[int], str], None] | None = None,
    whole_window: bool = False,
    run_details: Mapping[str, Any] | None = None,
    check_follows: bool = False,
) -> IngestCounts:
    """Fetch and store every PubMed record created or revised in a date window.

    The window is half-open, ``[since, until)`` (an Airflow data interval); since
    ESearch dates are whole days, every day it touches is searched, plus
    ``settings.window_overlap_days`` days before ``since`` for late-indexed records.
    A naive datetime is taken as UTC.

    Args:
        settings: E-utilities URL, etiquette, batch sizes, overlap, database.
        since: Window start (inclusive).
        until: Window end (exclusive): ``2024-01-03T00:00`` ends with 2024-01-02.
        query: An ESearch term to restrict the window (default: all of PubMed).
        progress: Show a progress bar (or log each batch).
        restart: Discard the progress of an unfinished run of this window; search again.
        on_given_up: Called once the run has succeeded, if it gave PMIDs up
            (:mod:`ingest.missing`), with the first 1,000 of them and the window: how the
            application alerts (this stage knows no alerting). A run that fails after
            giving PMIDs up (committed as each owed batch settles) calls it with those as
            it fails: they stay given up, and no later run gives them up again.
        run_details: Added to the run's details (the application marks a window whose
            check is still to come; the mark is in the row once the run succeeded).
        check_follows: A data-quality check of this window follows and judges the run
            (:func:`ingest.quality.check_ingest`); without one the run, and those whose
            batches it resumed, are judged once it succeeded
            (:func:`ingest.runs.judge_runs`), so the next window's overlap day meets its
            records as judged, not new (one that failed is not: the check of a window
            meeting its records judges them).

    Returns:
        The :class:`ingest.store.IngestCounts` of this call (``missing`` included); with
        ``whole_window``, plus those of the batches an earlier try of the same window
        stored, which a resumed or retried run skips (what the window's data-quality check
        judges; the run's row counts its own work only).

    Raises:
        ConfigError: ``until`` is not after ``since``.
        TransientSourceError: E-utilities kept failing; the run is marked failed and
            a later call resumes from the last finished batch.
        InvalidRequestError: The query was rejected.
    """
    since_dt, until_dt = (
        as_utc(v) if isinstance(v, dt.datetime) else day_start(v) for v in (since, until)
    )
    if until_dt <= since_dt:
        raise ConfigError(
            f"window end {until_dt:%Y-%m-%d %H:%M} is not after its start "
            f"{since_dt:%Y-%m-%d %H:%M}"
        )
    # ESearch dates are whole days: every day the half-open window touches is searched
    start, end = searched_days(settings, since_dt, until_dt)
    query = (query or "").strip() or None
    term = query or "all[sb]"
    wkey = window_key(start, end, query)
    store = Store(db.connect(settings))
    target = f"{start}..{end}" + (f" {query}" if query else "")
    limits = ParseLimits.from_settings(settings)
    given_up_here: list[int] = []  # committed by this call, whatever becomes of the run
    with (
        _told_on_failure(on_given_up, given_up_here, target),
        eutils_client(settings) as client,
        recorded_run(
            store, "eutils", target=target, window_start=since_dt, window_end=until_dt,
            redact=client.redact,
        ) as run,
    ):  # fmt: skip
        run.details = {**(run_details or {}), "window": f"{start}..{end}", "query": query,
                       "term": term}
        run.on_failure = lambda: {"requests": client.requests_sent, "retries": client.retries,
                                  **_strays_seen(run)}  # fmt: skip
        value = _searched(store, client, settings, wkey, term, start, end, restart, run.details)
        generation = int(value.get("generation", 1))
        all_pmids: list[int] = [int(p) for p in value["pmids"]]
        size = int(value["batch"])
        batches = [all_pmids[i : i + size] for i in range(0, len(all_pmids), size)]
        run.details.update(
            edat_count=value["datetypes"].get("edat", 0),
            mdat_count=value["datetypes"].get("mdat", 0),
            pmids=len(all_pmids),
            esearch_requests=value["requests"],
            esearch_splits=value["splits"],
            batches=len(batches),
            batches_skipped=0,
        )
        missing_all: list[int] = []
        for n, batch in enumerate(_progress(batches, progress, f"efetch {target}")):
            missing_all += _fetch_batch(
                store, client, settings, run, f"{wkey}#batch{n}", batch, generation, limits
            )
        run.details.update(missing_pmids=missing_all[:1000], missing_total=len(missing_all))
        # the listed records the store holds, by entrez day (the withdrawal check below
        # writes unlisted PMIDs only, so this stands after it)
        entered = store.entered_by_day(all_pmids, start, end)
        if query is None:  # a window of all PubMed: what it no longer lists, withdrawn?
            run.details["unlisted"] = _check_unlisted(
                store, client, settings, run, wkey, start, end, all_pmids, entered, limits
            )
        # what the answer holds of each day, for the window's data-quality check
        run.details["days"] = _day_evidence(
            store, start, end, all_pmids, entered, whole=query is None
        )
        if missing_all:
            logger.warning(
                "window %s: %d PMIDs listed by ESearch were not returned readable by EFetch "
                "(owed: later runs ask for them again): %s", target, len(missing_all),
                missing_all[:20],
            )  # fmt: skip
        # what this window owes and settles, then what earlier windows still owe
        owed_key = f"{wkey}#gen{generation}"
        owing.drop_stored(store.engine)  # stored (or deleted) by another path meanwhile
        given_up = owing.note_window(
            store.engine, listed=all_pmids, missing=missing_all, where=f"{target} (run {run.id})",
            key=owed_key, retries=settings.missing_retries,
        )  # fmt: skip
        given_up_here += given_up
        owed = run.details["owed"] = _ask_owed(
            store, client, settings, run, owed_key, limits, given_up, given_up_here
        )
        run.details.update(requests=client.requests_sent, retries=client.retries,
                           **_strays_seen(run))  # fmt: skip
        # done: no run reads the window's batch and owed marks again (a rerun starts a new
        # generation, fetched anew); its search mark stays, one row a window (the
        # generation a rerun numbers on from, which the owed PMIDs' tries are keyed by)
        with store.engine.begin() as conn:
            store.set_checkpoint(EUTILS_SCOPE, f"{wkey}#search", "done", value, conn=conn)
            store.delete_checkpoints(EUTILS_SCOPE, (f"{wkey}#batch", f"{wkey}#gen"), conn=conn)
    if not check_follows:  # taken unchecked (a window by hand, --no-quality): accepted
        # once it succeeded, with the earlier tries it resumed; one that fails is not (a
        # checked window meeting its records judges them)
        judge_runs(store.engine, [run.id, *run.details.get("resumed_runs", ())])
        forget_listed(store, settings, since_dt, until_dt, query)  # no check reads it
    if on_given_up is not None and owed["given_up"]:
        on_given_up(list(owed["given_up"]), target)
    if whole_window:  # batches an earlier try stored included: a retry is judged whole
        return run.counts + IngestCounts(**run.details.get("resumed_counts", {}))
    return run.counts


@contextlib.contextmanager
def _told_on_failure(
    on_given_up: Callable[[list[int], str], None] | None, given_up: list[int], target: str
) -> Iterator[None]:
    """Call ``on_given_up`` with ``given_up`` (as it is then) when the block fails: PMIDs
    given up before the failure stay given up, and no later run gives them up again (the
    next window has other days: another key), so the alert is now or never."""
    try:
        yield
    except BaseException:
        if on_given_up is not None and given_up:
            on_given_up(sorted(set(given_up))[:1000], target)
        raise


def _strays(run: OpenRun) -> list[int]:
    """Where the EFetch answers of ``run`` add the PMIDs of the items they drop
    (:func:`efetch`); :func:`_strays_seen` sums them up for the run's details."""
    strays: list[int] = run.details.setdefault("strays", [])
    return strays


def _strays_seen(run: OpenRun) -> dict[str, Any]:
    """The run's details of the items its EFetch answers held that were dropped: their
    distinct PMIDs (the first 1,000) and how many items."""
    every = run.details.get("strays", [])
    return {"strays": sorted(set(every))[:1000], "strays_total": len(every)}


def _fetch_batch(
    store: Store,
    client: HttpClient,
    settings: Settings,
    run: OpenRun,
    key: str,
    batch: list[int],
    generation: int,
    limits: ParseLimits,
) -> list[int]:
    """Fetch and store one batch of a window (unless this generation already did); its missing.

    The batch's checkpoint ``key`` is written once its items are stored, so a run cut
    short resumes after the last stored batch. Each store transaction commits with a
    progress mark in ``key`` (status ``applying``: the items applied, their PMIDs and
    counts, the runs that applied them), so a run resuming a batch a killed run began goes
    on after the items that run committed (when the new answer begins with the same
    PMIDs; else it is applied whole, which changes nothing stored), and the batch counts
    each item once: the killed run's row holds what it committed, the window's whole
    counts too (``resumed_counts``).
    """
    done = store.get_checkpoint(EUTILS_SCOPE, key)
    value = done["value"] if done is not None else {}
    if value.get("generation") != generation:
        value = {}
    if value and done is not None and done["status"] == "done":
        run.details["batches_skipped"] += 1  # fetched by the run that was cut short
        earlier = IngestCounts(**_earlier_counts(store, run, batch, value))
        _resumed(run, value, earlier)
        return [int(p) for p in value.get("missing", [])]
    items, missing = fetch_reconciled(
        client, batch, location=f"efetch run {run.id} {key}", limits=limits, strays=_strays(run)
    )
    skip, before = 0, IngestCounts()
    runs = [run.id]
    applied = [int(p) for p in value.get("pmids", [])]
    if applied and [getattr(i, "pmid", None) for i in items[: len(applied)]] == applied:
        # a killed run committed these items: go on after them, its counts the window's
        skip, before = len(applied), IngestCounts(**value.get("counts", {}))
        runs = sorted({*(int(r) for r in value.get("runs", ())), run.id})
        _resumed(run, value, before)
        logger.info("%s: going on after the %d items a killed run applied", key, skip)
    pmids = [getattr(i, "pmid", None) for i in items]

    def on_batch(counts: IngestCounts) -> None:
        run.counts += counts  # committed: counted even if a later store batch fails

    def in_batch(conn: Connection, counts: IngestCounts, position: int) -> None:
        mark = {"generation": generation, "runs": runs, "pmids": pmids[:position],
                "counts": (before + counts).to_dict()}
        store.set_checkpoint(EUTILS_SCOPE, key, "applying", mark, conn=conn)

    stored = before + store.apply(
        items[skip:], run_id=run.id, batch_size=settings.store_batch, on_batch=on_batch,
        start=skip, in_batch=in_batch,
    )  # fmt: skip
    batch_counts = stored + IngestCounts(missing=len(missing))
    store.set_checkpoint(
        EUTILS_SCOPE,
        key,
        "done",
        {"generation": generation, "size": len(batch), "run_id": run.id, "runs": runs,
         "counts": batch_counts.to_dict(), "missing": missing},
    )  # fmt: skip
    run.counts += IngestCounts(missing=len(missing))
    return missing


def _earlier_counts(
    store: Store, run: OpenRun, batch: list[int], value: dict[str, Any]
) -> dict[str, Any]:
    """What the runs that stored a done batch counted of it (``reseen`` as this release
    counts it, for a mark of a release that counted no records met again: the batch's
    records a check had judged; the runs that wrote the others are judged with ``run``)."""
    saved = dict(value.get("counts") or {})
    if "reseen" not in saved:
        met, unjudged = store.judged_among(batch)
        saved["reseen"] = min(int(saved.get("unchanged", 0)), met)
        run.details["resumed_runs"] = sorted(
            {*run.details.get("resumed_runs", ()), *(unjudged - {run.id})})
    return saved


def _resumed(run: OpenRun, value: dict[str, Any], earlier: IngestCounts) -> None:
    """Note in ``run``'s details the counts ``earlier`` that other runs stored of a batch
    (``value``: its checkpoint), and those runs, judged with ``run``."""
    others = {int(r) for r in value.get("runs", ())}
    if value.get("run_id") is not None:
        others.add(int(value["run_id"]))
    resumed_runs = set(run.details.get("resumed_runs", ())) | (others - {run.id})
    if resumed_runs:
        run.details["resumed_runs"] = sorted(resumed_runs)
    resumed = IngestCounts(**run.details.get("resumed_counts", {})) + earlier
    run.details["resumed_counts"] = resumed.to_dict()


def _check_unlisted(
    store: Store,
    client: HttpClient,
    settings: Settings,
    run: OpenRun,
    wkey: str,
    start: dt.date,
    end: dt.date,
    listed: Sequence[int],
    entered: Mapping[dt.date, int],
    limits: ParseLimits,
) -> dict[str, Any]:
    """Delete the stored records PubMed withdrew: entered in the window, no longer listed.

    ESearch and EFetch simply stop returning a withdrawn PMID, so a window run again (a
    rerun, a backfill, the next night's overlap) finds the live records the store holds
    entered in its days (:meth:`ingest.store.Store.unlisted_entered`: within the span of
    the listed PMIDs) that its ESearch no longer lists, and, among the rows written last
    (:meth:`ingest.store.Store.entered_live`), those of its days outside that span (a day
    it lists no record of, a day's first record). Each is asked of EFetch (twice,
    :func:`fetch_reconciled`): a record that comes is stored as any; one that does not
    come, and that ESearch does not list when asked for it alone, is withdrawn: a
    :class:`Deletion` from this EFetch (ranked as one, :mod:`ingest.rules`: it outranks
    the files read before it, and a record PubMed serves again later lifts it). Only a
    search of all PubMed can tell: a window with a query never checks. More unlisted
    records than ``settings.efetch_batch`` and a twentieth of the window's are not taken
    for withdrawals (a search that came back short), nor is any record when ESearch
    listed nothing at all: none is deleted, the run's details and the log say so.

    Returns:
        ``checked``, ``found`` (EFetch still served them), ``missed`` (of those, the ones
        still entered in the window's days once stored: records ESearch should have
        listed, proof of a short answer), ``withdrawn`` (the first 1,000),
        ``withdrawn_total``, ``kept`` (not served, yet listed alone or nothing listed),
        ``skipped`` (the reason, when none was checked) and ``counts`` (of what the check
        stored), for the run's details; stored counts are apart from the window's own, as
        the owed ask's.
    """
    most = max(settings.efetch_batch, len(listed) // 20)
    unlisted = set(store.unlisted_entered(listed, start, end))
    known = set(listed)
    for day in each_day(start, end):
        if len(unlisted) > most:
            break
        # the day's stored records outside the span of those listed (a day listing none,
        # a day's first record): among its rows written last, past the listed ones
        found = store.entered_live(day, entered.get(day, 0) + most + 1 - len(unlisted))
        unlisted.update(p for p in found if p not in known)
    out: dict[str, Any] = {"checked": 0, "found": 0, "missed": 0, "withdrawn": [],
                           "withdrawn_total": 0, "kept": [],
                           "counts": IngestCounts().to_dict()}  # fmt: skip
    if not unlisted:
        return out
    if len(unlisted) > most:
        logger.warning(
            "window %s: %d or more stored records entered in it are not listed by its "
            "ESearch (%d listed): too many to be withdrawals, none deleted", wkey,
            len(unlisted), len(listed),
        )  # fmt: skip
        return {**out, "skipped": f"{len(unlisted)} unlisted, {len(listed)} listed"}
    counts = IngestCounts()
    withdrawn: list[int] = []
    served: list[int] = []
    size = settings.efetch_batch
    ordered = sorted(unlisted)
    for batch in (ordered[i : i + size] for i in range(0, len(ordered), size)):
        items, gone = fetch_reconciled(
            client, batch, location=f"efetch run {run.id} {wkey} unlisted", limits=limits,
            strays=_strays(run),
        )
        counts += store.apply(items, run_id=run.id, batch_size=settings.store_batch)
        served += [p for p in batch if p not in gone]
        # an answer that listed nothing proves no withdrawal (a degraded ESearch says
        # Count 0 of every day, and of every PMID asked alone)
        absent = [p for p in gone if listed and not _listed_alone(client, p)]
        out["kept"] += [p for p in gone if p not in absent]
        if absent:
            ref = SourceRef("eutils", f"withdrawn run {run.id} {wkey}", fetched_at=utcnow())
            counts += store.apply([Deletion(p, ref) for p in absent], run_id=run.id)
            withdrawn += absent
    if withdrawn:
        logger.warning("window %s: %d records PubMed withdrew are deleted: %s",
                       wkey, len(withdrawn), withdrawn[:20])  # fmt: skip
    missed = sum(store.entered_by_day(served, start, end).values())
    if missed:
        logger.warning(
            "window %s: ESearch did not list %d stored records entered in its days that "
            "EFetch still serves: a short answer", wkey, missed,
        )  # fmt: skip
    return {**out, "checked": len(unlisted), "found": len(served), "missed": missed,
            "withdrawn": withdrawn[:1000], "withdrawn_total": len(withdrawn),
            "counts": counts.to_dict()}  # fmt: skip


def _day_evidence(
    store: Store,
    start: dt.date,
    end: dt.date,
    listed: Sequence[int],
    entered: Mapping[dt.date, int],
    *,
    whole: bool,
) -> dict[str, Any]:
    """What a window's answer holds of each of its PubMed days ``start``..``end``, for its
    data-quality check (:func:`ingest.quality.check_ingest`).

    Returns:
        ``entered``: ISO day → how many of the listed records the store holds entered
        that day (``entered``, :meth:`ingest.store.Store.entered_by_day`; days with none
        left out); ``short``: with a search of all PubMed (``whole``), the days of which
        the answer lists no record while the store holds a live one entered then (checked
        after the withdrawals were taken), proof that the answer came back short: a
        degraded ESearch answers Count 0 without an error, and a day it left out is never
        searched again once the window has passed.
    """
    short = [day.isoformat() for day in each_day(start, end)
             if whole and not entered.get(day) and store.entered_live(day, 1)]  # fmt: skip
    # listed PMIDs the store holds no row of (quarantined, owed): their days are unknown
    unplaced = len(listed) - len(store.existing_pmids(listed, live=False))
    return {"entered": {d.isoformat(): n for d, n in sorted(entered.items())}, "short": short,
            "unplaced": unplaced}  # fmt: skip


def _listed_alone(client: HttpClient, pmid: int) -> bool:
    """Whether ESearch lists ``pmid`` searched alone, over every date.

    Asked as a PMID range of one (``pmid:pmid[uid]``, as a window's split asks): an
    empty range is a Count of 0, where a PMID PubMed does not know, searched as a term,
    may come back as a phrase not found. An answer that says the query was not understood
    proves nothing: the PMID is taken as listed (kept, never deleted on it).
    """
    try:
        found = esearch(client, term=f"{pmid}:{pmid}[uid]", datetype="edat",
                        mindate=_EARLIEST, maxdate=utcnow().date() + dt.timedelta(days=1),
                        retmax=1)  # fmt: skip
    except InvalidRequestError as exc:
        logger.warning("PMID %d searched alone: %s; kept", pmid, exc)
        return True
    return pmid in found.ids or found.count > 0


def _ask_owed(
    store: Store,
    client: HttpClient,
    settings: Settings,
    run: OpenRun,
    key: str,
    limits: ParseLimits,
    given_up: list[int],
    gave_up: list[int],
) -> dict[str, Any]:
    """Ask EFetch again for the PMIDs earlier windows listed and did not get
    (:mod:`ingest.missing`), store what comes, settle or count a try for each; the PMIDs
    each batch gives up are added to ``gave_up`` as it commits them.

    The list asked is fixed when this window generation (``key``) first gets here
    (checkpoint ``<key>#owed-list``), and each EFetch batch is marked done with its settle
    (``<key>#owed``, small: rewritten per batch):
    a resumed run asks only the batches not done. What the ask stores is counted apart
    (``counts``), not as the window's: the window's own counts are what the data-quality
    checks judge (a window that found nothing is not hidden by an owed record).

    Returns:
        ``asked``, ``found``, ``still_missing``, ``given_up`` (PMIDs given up by this
        window generation, its own misses' included; the first 1,000),
        ``given_up_total`` and ``counts`` (of what the ask stored), for the run's details.
    """
    listed, mark = f"{key}#owed-list", f"{key}#owed"  # the list (once), the progress
    seen = store.get_checkpoint(EUTILS_SCOPE, mark)
    fixed = store.get_checkpoint(EUTILS_SCOPE, listed)
    if seen is not None and fixed is not None:
        state, pmids = seen["value"], [int(p) for p in fixed["value"]["pmids"]]
    else:
        pmids = owing.owed(store.engine, key)
        state = {"done": 0, "found": 0, "still_missing": 0, "given_up": given_up,
                 "counts": IngestCounts().to_dict()}
        store.set_checkpoint(EUTILS_SCOPE, listed, "asking", {"pmids": pmids})
        store.set_checkpoint(EUTILS_SCOPE, mark, "asking", state)
    size = settings.efetch_batch
    batches = [pmids[i : i + size] for i in range(0, len(pmids), size)]
    if len(batches) > state["done"]:
        logger.info("asking EFetch again for %d PMIDs earlier windows did not get", len(pmids))
    for n, batch in enumerate(batches):
        if n < state["done"]:
            continue  # asked and settled by the run this one resumes
        items, lost = fetch_reconciled(
            client, batch, location=f"efetch run {run.id} owed", limits=limits,
            strays=_strays(run),
        )
        stored = store.apply(items, run_id=run.id, batch_size=settings.store_batch)
        counts = IngestCounts(**state["counts"]) + stored
        state = {**state, "done": n + 1, "found": state["found"] + len(batch) - len(lost),
                 "still_missing": state["still_missing"] + len(lost),
                 "counts": counts.to_dict()}  # fmt: skip

        def progress(up: list[int], st: dict[str, Any] = state) -> tuple[str, dict[str, Any]]:
            return mark, {**st, "given_up": [*st["given_up"], *up]}

        up = owing.settle(store.engine, asked=batch, missing=lost, key=key,
                          retries=settings.missing_retries, progress=progress)  # fmt: skip
        gave_up += up
        state["given_up"] = [*state["given_up"], *up]
    every = sorted(state["given_up"])
    return {"asked": len(pmids), "found": state["found"], "still_missing": state["still_missing"],
            "given_up": every[:1000], "given_up_total": len(every), "counts": state["counts"]}


def _searched(
    store: Store,
    client: HttpClient,
    settings: Settings,
    wkey: str,
    term: str,
    start: dt.date,
    end: dt.date,
    restart: bool,
    details: dict[str, Any],
) -> dict[str, Any]:
    """The PMIDs of a window: those an unfinished run searched, or a new search's.

    A new search (none unfinished, or ``restart``) starts a new generation, so the
    batches an older run fetched are fetched again; it is saved as the ``#search``
    checkpoint before any batch is fetched.
    """
    search = store.get_checkpoint(EUTILS_SCOPE, f"{wkey}#search")
    previous = int(search["value"].get("generation", 0)) if search else 0
    if search is not None and search["status"] == "searched" and not restart:
        details["resumed"] = True  # an unfinished run of this window: resume it
        return search["value"]
    value: dict[str, Any] = {
        "generation": previous + 1,
        "batch": settings.efetch_batch,
        "datetypes": {},
        "requests": 0,
        "splits": 0,
    }
    pmids: set[int] = set()
    for datetype in ("edat", "mdat"):
        found = search_pmids(
            client, term=term, datetype=datetype, start=start, end=end, cap=settings.esearch_cap
        )
        value["datetypes"][datetype] = len(found.pmids)
        value["requests"] += found.requests
        value["splits"] += found.splits
        pmids |= found.pmids
    value["pmids"] = sorted(pmids)
    store.set_checkpoint(EUTILS_SCOPE, f"{wkey}#search", "searched", value)
    return value
