"""A loopback emulator of the NCBI services litpulse talks to, with switchable faults.

A real :class:`http.server.ThreadingHTTPServer` on ``127.0.0.1`` (port 0) serves:

* ``/eutils/esearch.fcgi`` (GET or POST): ``db``, ``term`` (``all[sb]``, words, field
  tags, ``lo:hi[uid]`` ranges, ``AND``), ``datetype`` (``edat``/``mdat``/``pdat``),
  ``mindate``/``maxdate`` (``YYYY/MM/DD``), ``retmax``, ``retstart``, ``usehistory``
  (``WebEnv``/``QueryKey``). Like PubMed, at most the first 9,999 matches can be paged
  through: ``retstart + retmax > 9999`` answers an ``<ERROR>`` inside HTTP 200.
* ``/eutils/efetch.fcgi`` (POST ``id=…`` or ``WebEnv``+``query_key``): a
  ``PubmedArticleSet`` with the live records asked for; deleted or unknown PMIDs are
  simply absent, as in EFetch.
* ``/pubmed/updatefiles/`` and ``/pubmed/baseline/``: Apache-style HTML listings (each
  file with its "Last modified" time, a minute later for each file published or
  re-published, and its size in bytes, as NCBI's index lists them), the
  ``.xml.gz`` files (HTTP Range supported) and their ``.md5`` files in NLM's format
  (:meth:`Emulator.update_file_after_md5`: a mirror mid-update, the file and its ``.md5``
  changing together right after a ``.md5`` was answered).
* ``/icite/api/pubs?pmids=…&format=json``: iCite's ``{"meta", "links", "data"}`` JSON.

Faults are queued on :attr:`Emulator.faults` (a thread-safe :class:`FaultPlan`):
``429`` (with ``Retry-After``), ``500``/``502``/``503``, ``slow``, ``trickle`` (the body
sent ``piece`` bytes at a time, ``delay`` seconds apart), ``reset`` (socket
closed with RST before any answer), ``truncate`` (half the promised body, then
close), ``error200`` (``<ERROR>`` inside HTTP 200), ``backend`` ("Search Backend
failed"), ``garbage`` (an HTML page with status 200), ``drop`` (EFetch leaves out
records), ``badmd5`` (a file's bytes corrupted in transit). Every request is logged
with its arrival time so tests can check the request rate.

Example:
    >>> emu = Emulator().start()                                  # doctest: +SKIP
    >>> emu.add_article(101, edat=date(2024, 1, 2))               # doctest: +SKIP
    >>> emu.faults.add("503", path="esearch", times=2)            # doctest: +SKIP
    >>> settings = emu.configure(Settings.from_env({}))           # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import html
import json
import re
import socket
import struct
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from lxml import etree

from litpulse.app.demo.pubmed_xml import DOCTYPE as PUBMED_DOCTYPE
from litpulse.app.demo.pubmed_xml import article_xml, default_title, gz, pubmed_set
from litpulse.core.settings import Settings

__all__ = [
    "EmuArticle",
    "Emulator",
    "Fault",
    "FaultPlan",
    "LoggedRequest",
    "PUBMED_DOCTYPE",
    "article_xml",
    "gz",
    "pubmed_set",
    "max_requests_in_window",
    "running_emulator",
]

ESEARCH_LIMIT = 9999
ESEARCH_LIMIT_ERROR = (
    "Search Backend failed: Exception:\n'retstart' cannot be larger than {m}. For PubMed, "
    "ESearch can only retrieve the first {n:,} records matching the query. To obtain more "
    "than {n:,} PubMed records, consider using EDirect that contains additional logic to "
    "batch PubMed search results automatically so that an arbitrary number can be "
    "retrieved. For details see https://www.ncbi.nlm.nih.gov/books/NBK25499/"
)
ESEARCH_DOCTYPE = (
    '<!DOCTYPE eSearchResult PUBLIC "-//NLM//DTD esearch 20060628//EN" '
    '"https://eutils.ncbi.nlm.nih.gov/eutils/dtd/20060628/esearch.dtd">'
)
FAULT_KINDS = frozenset(
    "429 500 502 503 slow trickle reset truncate error200 backend garbage drop badmd5".split()
)
_WORD_RE = re.compile(r"[a-z0-9]+")


# ----------------------------------------------------------------------------- records


@dataclass
class EmuArticle:
    """One record the emulator serves.

    Attributes:
        pmid: The PMID.
        edat: Entrez (create) date — ``datetype=edat``.
        mdat: Modification date — ``datetype=mdat``.
        xml: The serialized ``PubmedArticle``/``PubmedBookArticle``; ``None`` renders a
            synthetic one on demand.
        words: Lower-case words of title and abstract, for term search.
        deleted: Withdrawn: absent from ESearch and EFetch.
    """

    pmid: int
    edat: dt.date
    mdat: dt.date
    xml: bytes | None = None
    words: frozenset[str] = frozenset()
    deleted: bool = False

    def render(self) -> bytes:
        return self.xml if self.xml is not None else article_xml(
            self.pmid, edat=self.edat, mdat=self.mdat
        )


# ------------------------------------------------------------------------------ faults


@dataclass
class Fault:
    """One queued fault: ``kind`` applied to ``times`` requests matching ``path``.

    The first ``after`` matching requests pass untouched.
    """

    kind: str
    path: str = ""
    times: int = 1
    retry_after: str = "1"
    delay: float = 0.5
    piece: int = 1024
    message: str | None = None
    drop: int = 1
    after: int = 0
    hits: int = 0


class FaultPlan:
    """A thread-safe queue of faults, consumed in order by matching requests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self.applied: list[tuple[str, str]] = []

    def add(self, kind: str, *, path: str = "", times: int = 1, **opts: Any) -> Fault:
        """Queue ``kind`` for the next ``times`` requests whose path contains ``path``.

        A ``path`` starting with ``=`` must match the request path exactly (``=/a/b``).
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; one of {sorted(FAULT_KINDS)}")
        fault = Fault(kind=kind, path=path, times=times, **opts)
        with self._lock:
            self._faults.append(fault)
        return fault

    def take(self, path: str) -> Fault | None:
        """The first pending fault matching ``path`` (one use of it is consumed)."""
        with self._lock:
            for fault in self._faults:
                exact = fault.path.startswith("=")
                hit = fault.path[1:] == path if exact else fault.path in path
                if hit and fault.times > 0 and fault.after > 0:
                    fault.after -= 1  # let this request through untouched
                    return None
                if fault.times > 0 and hit:
                    fault.times -= 1
                    fault.hits += 1
                    self.applied.append((fault.kind, path))
                    return fault
        return None

    def pending(self) -> int:
        """Uses not yet consumed."""
        with self._lock:
            return sum(f.times for f in self._faults)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()


@dataclass(frozen=True)
class LoggedRequest:
    """One request as the server saw it (``t`` from :func:`time.monotonic`)."""

    t: float
    method: str
    path: str
    params: dict[str, str]
    fault: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


def max_requests_in_window(times: Iterable[float], window: float = 1.0) -> int:
    """The most request arrivals inside any half-open window ``[t, t + window)``."""
    ts = sorted(times)
    best = 0
    j = 0
    for i, t in enumerate(ts):
        while j < len(ts) and ts[j] < t + window:
            j += 1
        best = max(best, j - i)
    return best


# ----------------------------------------------------------------------------- emulator


@dataclass
class _File:
    data: bytes
    md5: str
    #: The listing's "Last modified" column (each publication a minute after the last).
    modified: str = "2025-12-11 14:07"
    #: The ``.md5``'s, where it was published after the file (:meth:`Emulator.publish_md5`).
    md5_modified: str | None = None


@dataclass
class Emulator:
    """State of the emulated services plus the server that exposes them."""

    esearch_limit: int = ESEARCH_LIMIT
    articles: dict[int, EmuArticle] = field(default_factory=dict)
    files: dict[str, dict[str, _File]] = field(
        default_factory=lambda: {"updatefiles": {}, "baseline": {}}
    )
    icite: dict[int, dict[str, Any]] = field(default_factory=dict)
    faults: FaultPlan = field(default_factory=FaultPlan)
    log: list[LoggedRequest] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._history: dict[str, list[int]] = {}
        self._vocab: set[str] = set()
        self._vocab_size = -1
        self._server: ThreadingHTTPServer | None = None
        #: ``kind/name`` -> the file it becomes right after its next ``.md5`` answer
        self._updates: dict[str, _File] = {}
        #: Files published so far: each one's listed modification time is a minute later.
        self._published = 0
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> Emulator:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.daemon_threads = True
        server.block_on_close = False  # keep-alive handler threads must not delay stop()
        server.emu = self  # type: ignore[attr-defined]
        server.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("emulator not started")
        port = self._server.server_address[1]
        return f"http://127.0.0.1:{port}"

    def configure(self, settings: Settings, **overrides: Any) -> Settings:
        """``settings`` pointed at this emulator, with fast backoff unless overridden."""
        values: dict[str, Any] = {
            "eutils_url": f"{self.url}/eutils/",
            "icite_url": f"{self.url}/icite/api/",
            "pubmed_files_url": f"{self.url}/pubmed/",
            "backoff_base": 0.01,
            "backoff_max": 0.05,
            "http_timeout": 10.0,
        }
        values.update(overrides)
        return settings.replace(**values)

    def env(self, settings: Settings) -> dict[str, str]:
        """``LITPULSE_*`` variables reproducing ``settings`` (for subprocesses)."""
        out = {}
        for row in settings.describe():
            value = getattr(settings, row["name"])
            if value not in ("", None):
                out[row["env"]] = str(value)
        return out

    # -- content -------------------------------------------------------------------
    def add_article(
        self,
        pmid: int,
        *,
        edat: dt.date,
        mdat: dt.date | None = None,
        xml: bytes | None = None,
        title: str | None = None,
        **kwargs: Any,
    ) -> EmuArticle:
        """Serve one record; without ``xml`` a synthetic one is rendered."""
        mdat = mdat or edat
        if xml is None and (title is not None or kwargs):
            xml = article_xml(pmid, edat=edat, mdat=mdat, title=title, **kwargs)
        text = title or default_title(pmid)
        words = frozenset(_WORD_RE.findall(text.lower()))
        art = EmuArticle(pmid, edat, mdat, xml, words)
        with self._lock:
            self.articles[pmid] = art
        return art

    def delete(self, pmid: int) -> None:
        """Withdraw a PMID (ESearch and EFetch stop returning it)."""
        with self._lock:
            self.articles[pmid].deleted = True

    def load_pubmed_xml(self, source: bytes | str | Path) -> list[int]:
        """Serve the records of a PubMed XML document (plain or gzip); apply its deletions.

        Returns:
            The PMIDs loaded (records only).
        """
        data = Path(source).read_bytes() if isinstance(source, str | Path) else source
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        root = etree.fromstring(data, etree.XMLParser(resolve_entities=False, huge_tree=True))
        loaded = []
        for el in root:
            tag = el.tag if isinstance(el.tag, str) else ""
            if tag in ("PubmedArticle", "PubmedBookArticle"):
                pmid_text = el.findtext(".//PMID")
                if not pmid_text or not pmid_text.strip().isdigit():
                    continue
                pmid = int(pmid_text)
                edat = _date_of(el, ".//History/PubMedPubDate[@PubStatus='entrez']") or _date_of(
                    el, ".//History/PubMedPubDate[@PubStatus='pubmed']"
                )
                mdat = _date_of(el, "MedlineCitation/DateRevised") or edat
                if edat is None:
                    edat = mdat or dt.date(2000, 1, 1)
                words = " ".join(
                    "".join(str(t) for t in x.itertext())
                    for x in el.iter("ArticleTitle", "AbstractText")
                )
                art = EmuArticle(
                    pmid,
                    edat,
                    mdat or edat,
                    etree.tostring(el),
                    frozenset(_WORD_RE.findall(words.lower())),
                )
                with self._lock:
                    self.articles[pmid] = art
                loaded.append(pmid)
            elif tag == "DeleteCitation":
                for p in el.iter("PMID"):
                    if p.text and int(p.text) in self.articles:
                        self.delete(int(p.text))
        return loaded

    def load_files(self, paths: Iterable[str | Path]) -> None:
        """Serve the records of PubMed XML files applied in order (a generated corpus)."""
        for path in paths:
            self.load_pubmed_xml(path)

    def expected(self, start: dt.date, end: dt.date) -> set[int]:
        """Live PMIDs an ingest of ``[start, end]`` must store (edat or mdat inside)."""
        with self._lock:
            return {
                a.pmid
                for a in self.articles.values()
                if not a.deleted and (start <= a.edat <= end or start <= a.mdat <= end)
            }

    def add_file(
        self, kind: str, name: str, data: bytes, *, md5: str | None = None
    ) -> None:
        """Publish ``name`` under ``/pubmed/<kind>/`` (``updatefiles`` or ``baseline``)."""
        digest = md5 or hashlib.md5(data, usedforsecurity=False).hexdigest()
        with self._lock:
            self.files[kind][name] = _File(data, digest, self._next_modified())

    def update_file_after_md5(
        self, kind: str, name: str, data: bytes, *, md5: str | None = None
    ) -> None:
        """A mirror mid-update: the next ``.md5`` of ``name`` still answers the old digest,
        and right after it the file and its ``.md5`` both become ``data`` (and its MD5)."""
        digest = md5 or hashlib.md5(data, usedforsecurity=False).hexdigest()
        with self._lock:
            self._updates[f"{kind}/{name}"] = _File(data, digest, self._next_modified())

    def publish_md5(self, kind: str, name: str) -> None:
        """A mirror that copies a file, then (later) its ``.md5``: the ``.md5`` of ``name``
        becomes its bytes' MD5, listed a minute later; the file's own entry is unchanged."""
        with self._lock:
            f = self.files[kind][name]
            f.md5 = hashlib.md5(f.data, usedforsecurity=False).hexdigest()
            f.md5_modified = self._next_modified()

    def _next_modified(self) -> str:
        """A later "Last modified" than every file published before (under the lock)."""
        at = dt.datetime(2025, 12, 11, 14, 7) + dt.timedelta(minutes=self._published)
        self._published += 1
        return f"{at:%Y-%m-%d %H:%M}"

    def _md5_answer(self, kind: str, name: str) -> str:
        """The ``.md5`` of ``name`` as served now; a pending update lands right after it."""
        with self._lock:
            f = self.files[kind][name]
            update = self._updates.pop(f"{kind}/{name}", None)
            if update is not None:
                self.files[kind][name] = update
        return f.md5

    def set_icite(self, pmid: int, **fields: Any) -> None:
        """The iCite answer for ``pmid`` (defaults filled in)."""
        row = {
            "pmid": pmid,
            "year": 2024,
            "title": f"Emulated finding number {pmid}",
            "is_research_article": "Yes",
            "relative_citation_ratio": 1.0,
            "citation_count": 0,
            "citations_per_year": 0.0,
            "provisional": "No",
        }
        row.update(fields)
        self.icite[pmid] = row

    # -- log -------------------------------------------------------------------------
    def requests(self, path: str = "") -> list[LoggedRequest]:
        """Logged requests whose path contains ``path``."""
        with self._lock:
            return [r for r in self.log if path in r.path]

    def max_rate(self, path: str = "", window: float = 1.0) -> int:
        """The most requests that arrived in any ``window`` seconds."""
        return max_requests_in_window((r.t for r in self.requests(path)), window)

    def _log(self, req: LoggedRequest) -> None:
        with self._lock:
            self.log.append(req)

    # -- services ------------------------------------------------------------------
    def esearch(self, params: dict[str, str]) -> bytes:
        db = params.get("db", "")
        if db != "pubmed":
            return _esearch_error(f"Invalid db name specified: {db}")
        term = params.get("term", "").strip()
        if not term:
            return _esearch_error("Empty term and query_key - nothing todo")
        retmax = int(params.get("retmax", "20") or 20)
        retstart = int(params.get("retstart", "0") or 0)
        if retstart > self.esearch_limit - 1 or retstart + retmax > self.esearch_limit:
            return _esearch_error(
                ESEARCH_LIMIT_ERROR.format(m=self.esearch_limit - 1, n=self.esearch_limit)
            )
        datetype = params.get("datetype", "pdat")
        mindate = _parse_date(params.get("mindate"), start=True)
        maxdate = _parse_date(params.get("maxdate"), start=False)
        try:
            matcher, errors = self._compile_term(term)
        except ValueError as exc:
            return _esearch_error(str(exc))
        with self._lock:
            pool = list(self.articles.values())
        hits = []
        for art in pool:
            if art.deleted:
                continue
            when = art.mdat if datetype == "mdat" else art.edat
            if mindate and maxdate and not (mindate <= when <= maxdate):
                continue
            if matcher(art):
                hits.append(art.pmid)
        hits.sort(reverse=True)  # PubMed's default order: newest first
        page = hits[retstart : retstart + retmax]
        out = [f"<Count>{len(hits)}</Count><RetMax>{len(page)}</RetMax>"]
        out.append(f"<RetStart>{retstart}</RetStart>")
        if params.get("usehistory", "").lower() == "y":
            with self._lock:
                webenv = f"MCID_{len(self._history) + 1:08d}"
                self._history[webenv] = hits
            out.append(f"<QueryKey>1</QueryKey><WebEnv>{webenv}</WebEnv>")
        out.append("<IdList>" + "".join(f"<Id>{p}</Id>" for p in page) + "</IdList>")
        out.append(f"<TranslationSet/><QueryTranslation>{html.escape(term)}</QueryTranslation>")
        if errors:
            out.append("<ErrorList>" + "".join(errors) + "</ErrorList>")
        if not hits:
            out.append("<WarningList><OutputMessage>No items found.</OutputMessage></WarningList>")
        return _esearch_doc("".join(out))

    def _compile_term(self, term: str) -> tuple[Any, list[str]]:
        clauses = [c.strip().strip("()").strip() for c in re.split(r"\s+AND\s+", term)]
        tests: list[Any] = []
        errors: list[str] = []
        with self._lock:
            if self._vocab_size != len(self.articles):
                self._vocab = set().union(*(a.words for a in self.articles.values()))
                self._vocab_size = len(self.articles)
            vocabulary = self._vocab
        for clause in clauses:
            m = re.fullmatch(r"(\d+)\s*:\s*(\d+)\s*\[(uid|pmid)\]", clause, re.IGNORECASE)
            if m:
                lo, hi = int(m.group(1)), int(m.group(2))
                tests.append(lambda a, lo=lo, hi=hi: lo <= a.pmid <= hi)
                continue
            m = re.fullmatch(r"(\d+)\s*\[(uid|pmid)\]", clause, re.IGNORECASE)
            if m:
                one = int(m.group(1))
                tests.append(lambda a, p=one: a.pmid == p)
                continue
            if clause.lower() == "all[sb]":
                continue
            m = re.fullmatch(r"([^\[\]]+?)\s*(?:\[(\w+)\])?", clause)
            if not m:
                raise ValueError(f"Invalid query: {clause}")
            words, field_tag = m.group(1).lower(), (m.group(2) or "all").lower()
            if field_tag not in ("all", "tiab", "ti", "title", "tw"):
                errors.append(f"<FieldNotFound>{html.escape(field_tag)}</FieldNotFound>")
                continue
            wanted = _WORD_RE.findall(words)
            if not all(w in vocabulary for w in wanted):
                # PubMed ignores a phrase it does not know and says so in ErrorList
                errors.append(f"<PhraseNotFound>{html.escape(words)}</PhraseNotFound>")
                continue
            tests.append(lambda a, ws=tuple(wanted): all(w in a.words for w in ws))
        return (lambda a: all(t(a) for t in tests)), errors

    def efetch(self, params: dict[str, str], fault: Fault | None) -> bytes:
        if params.get("db", "") != "pubmed":
            return _efetch_error(f"Invalid db name specified: {params.get('db', '')}")
        ids: list[int] = []
        if params.get("id"):
            for part in re.split(r"[,\s]+", params["id"].strip()):
                if part.isdigit():
                    ids.append(int(part))
        elif params.get("WebEnv"):
            with self._lock:
                hits = self._history.get(params["WebEnv"])
            if hits is None:
                return _efetch_error("Unable to obtain query #1")
            start = int(params.get("retstart", "0") or 0)
            ids = hits[start : start + int(params.get("retmax", "20") or 20)]
        else:
            return _efetch_error("Empty id list - nothing todo")
        with self._lock:
            found = [self.articles[p] for p in ids if p in self.articles]
        live = [a for a in found if not a.deleted]
        if fault is not None and fault.kind == "drop":
            live = live[: max(0, len(live) - fault.drop)]
        body = b"".join(a.render() + b"\n" for a in live)
        return (
            b'<?xml version="1.0" ?>\n'
            + PUBMED_DOCTYPE.encode()
            + b"\n<PubmedArticleSet>\n"
            + body
            + b"</PubmedArticleSet>\n"
        )

    def listing(self, kind: str) -> bytes:
        with self._lock:
            names = sorted(self.files[kind])
        rows = ['<a href="../">Parent Directory</a>                        -']
        for name in names:
            f = self.files[kind][name]
            rows.append(
                f'<a href="{name}">{name}</a>     {f.modified}   {len(f.data)}'
            )
            when = f.md5_modified or f.modified
            rows.append(f'<a href="{name}.md5">{name}.md5</a> {when}   60')
        rows.append('<a href="README.txt">README.txt</a>   2025-01-01 00:00  2.1K')
        return (
            f"<html><head><title>Index of /pubmed/{kind}</title></head><body>"
            f"<h1>Index of /pubmed/{kind}</h1><pre>Name  Last modified  Size<hr>"
            + "\n".join(rows)
            + "<hr></pre></body></html>\n"
        ).encode()

    def icite_json(self, params: dict[str, str]) -> bytes:
        pmids = [int(p) for p in re.split(r"[,\s]+", params.get("pmids", "")) if p.isdigit()]
        if len(pmids) > 1000:
            raise _HttpError(400, b'{"error": "too many pmids"}')
        data = [self.icite[p] for p in pmids if p in self.icite]
        doc = {"meta": {"pmids": params.get("pmids", "")}, "links": {}, "data": data}
        return json.dumps(doc).encode()


class _HttpError(Exception):
    def __init__(self, status: int, body: bytes = b"") -> None:
        super().__init__(status)
        self.status, self.body = status, body


def _date_of(el: Any, path: str) -> dt.date | None:
    node = el.find(path)
    if node is None:
        return None
    try:
        return dt.date(
            int(node.findtext("Year")), int(node.findtext("Month")), int(node.findtext("Day"))
        )
    except (TypeError, ValueError):
        return None


def _parse_date(text: str | None, *, start: bool) -> dt.date | None:
    if not text:
        return None
    parts = [int(p) for p in re.split(r"[/.-]", text.strip()) if p]
    if len(parts) == 1:
        return dt.date(parts[0], 1, 1) if start else dt.date(parts[0], 12, 31)
    if len(parts) == 2:
        if start:
            return dt.date(parts[0], parts[1], 1)
        nxt = dt.date(parts[0] + parts[1] // 12, parts[1] % 12 + 1, 1)
        return nxt - dt.timedelta(days=1)
    return dt.date(parts[0], parts[1], parts[2])


def _esearch_doc(inner: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8" ?>\n{ESEARCH_DOCTYPE}\n'
        f"<eSearchResult>{inner}</eSearchResult>\n"
    ).encode()


def _esearch_error(message: str) -> bytes:
    return _esearch_doc(f"<ERROR>{html.escape(message)}</ERROR>")


def _efetch_error(message: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8" ?>\n'
        f"<eFetchResult><ERROR>{html.escape(message)}</ERROR></eFetchResult>\n"
    ).encode()


# ------------------------------------------------------------------------------ server


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "EmulatedNCBI/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        pass

    @property
    def emu(self) -> Emulator:
        emu: Emulator = self.server.emu  # type: ignore[attr-defined]
        return emu

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        self._handle("POST")

    def _handle(self, method: str) -> None:
        t = time.monotonic()
        parts = urlsplit(self.path)
        params = {k: ",".join(v) for k, v in parse_qs(parts.query).items()}
        if method == "POST":
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length).decode()
            for k, v in parse_qs(raw).items():
                params[k] = ",".join(v)
        fault = self.emu.faults.take(parts.path)
        headers = {k: v for k, v in self.headers.items() if k.lower() in ("range", "user-agent")}
        self.emu._log(
            LoggedRequest(t, method, parts.path, params, fault.kind if fault else None, headers)
        )
        if fault is not None:
            if fault.kind == "slow":
                time.sleep(fault.delay)
            elif fault.kind == "reset":
                self._reset()
                return
            elif fault.kind == "429":
                headers = {"Retry-After": fault.retry_after}
                self._send(429, b"Too Many Requests", "text/plain", headers)
                return
            elif fault.kind in ("500", "502", "503"):
                self._send(int(fault.kind), b"<html>Server error</html>", "text/html")
                return
            elif fault.kind == "garbage":  # ``message``: the page instead (may be empty)
                page = "<html><body>Temporarily unavailable</body></html>"
                self._send(200, (page if fault.message is None else fault.message).encode(),
                           "text/html")  # fmt: skip
                return
        try:
            status, body, ctype, headers = self._route(parts.path, params, fault)
        except _HttpError as exc:
            self._send(exc.status, exc.body, "text/plain")
            return
        if fault is not None and fault.kind in ("truncate", "trickle"):
            self._send(status, body, ctype, headers, truncate=fault.kind == "truncate",
                       trickle=fault if fault.kind == "trickle" else None)  # fmt: skip
            return
        self._send(status, body, ctype, headers)

    def _route(
        self, path: str, params: dict[str, str], fault: Fault | None
    ) -> tuple[int, bytes, str, dict[str, str]]:
        emu = self.emu
        kind = fault.kind if fault else None
        message = fault.message if fault else None
        if path == "/eutils/esearch.fcgi":
            if kind == "error200":
                body = _esearch_error(message or "Unable to obtain query #1")
                return 200, body, "text/xml", {}
            if kind == "backend":
                msg = message or "Search Backend failed: Exception: Database is not ready"
                return 200, _esearch_error(msg), "text/xml", {}
            return 200, emu.esearch(params), "text/xml; charset=UTF-8", {}
        if path == "/eutils/efetch.fcgi":
            if kind in ("error200", "backend"):
                body = _efetch_error(message or "Unable to obtain query #1")
                return 200, body, "text/xml", {}
            return 200, emu.efetch(params, fault), "text/xml; charset=UTF-8", {}
        if path.startswith("/icite/api/pubs"):
            return 200, emu.icite_json(params), "application/json", {}
        m = re.fullmatch(r"/pubmed/(updatefiles|baseline)/(.*)", path)
        if m:
            folder, name = m.group(1), m.group(2)
            if name in ("", "index.html"):
                return 200, emu.listing(folder), "text/html", {}
            files = emu.files[folder]
            if name.endswith(".md5") and name[:-4] in files:
                digest = emu._md5_answer(folder, name[:-4])
                return 200, f"MD5({name[:-4]})= {digest}\n".encode(), "text/plain", {}
            if name in files:
                data = files[name].data
                if kind == "badmd5":
                    data = data[:-1] + bytes([data[-1] ^ 0xFF])
                return self._ranged(data)
        raise _HttpError(404, b"Not Found")

    def _ranged(self, data: bytes) -> tuple[int, bytes, str, dict[str, str]]:
        rng = self.headers.get("Range")
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng or "")
        if not m:
            return 200, data, "application/octet-stream", {"Accept-Ranges": "bytes"}
        start = int(m.group(1))
        end = int(m.group(2)) if m.group(2) else len(data) - 1
        if start >= len(data):
            raise _HttpError(416, b"")
        part = data[start : end + 1]
        return (
            206,
            part,
            "application/octet-stream",
            {"Content-Range": f"bytes {start}-{end}/{len(data)}", "Accept-Ranges": "bytes"},
        )

    def _send(
        self,
        status: int,
        body: bytes,
        ctype: str,
        headers: dict[str, str] | None = None,
        *,
        truncate: bool = False,
        trickle: Fault | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if truncate:
            self.wfile.write(body[: max(1, len(body) // 2)])
            self.wfile.flush()
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        if trickle is not None:
            try:
                for at in range(0, len(body), trickle.piece):
                    self.wfile.write(body[at : at + trickle.piece])
                    time.sleep(trickle.delay)
            except OSError:  # the client went away
                self.close_connection = True
            return
        self.wfile.write(body)

    def _reset(self) -> None:
        self.close_connection = True
        try:
            self.connection.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
            self.connection.close()
        except OSError:
            pass


def running_emulator(**kwargs: Any) -> Iterator[Emulator]:
    """Start an emulator, yield it, stop it (the body of a pytest fixture)."""
    emu = Emulator(**kwargs).start()
    try:
        yield emu
    finally:
        emu.stop()

