"""Streaming parser of PubMed XML (``PubmedArticleSet``) into typed records.

:func:`iter_items` reads plain or gzip-compressed XML (told apart by the gzip magic
bytes, not the file name) and yields, in file order, one :class:`~ingest.records.Record`
per ``PubmedArticle``/``PubmedBookArticle``, one :class:`~ingest.records.Deletion` per
PMID of a ``DeleteCitation`` block and one :class:`~ingest.records.QuarantineEntry` per
element it could not read (its raw XML and the reason). The DTD named in the
``DOCTYPE`` line is never loaded and nothing is fetched from the network.

How it stays fast and flat: the decompressed stream is cut at record boundaries at the
byte level (start tag ``<PubmedArticle>``/``<PubmedBookArticle>``/``<DeleteCitation>``
to its end tag, found with ``bytes.find``) and the records are parsed in batches of
about :data:`BATCH_BYTES` as small documents; a helper thread runs libxml2 (without
the GIL) while this thread reads the fields of the previous batch with plain child
loops. At most a few batches are alive at once, so memory does not grow with the file.
Documents that are not a ``PubmedArticleSet`` go through an incremental pull parser
(``XMLPullParser`` with ``tag=`` filtering, elements cleared as it goes) instead.

Hostile or broken input costs one record, never the file: a batch that is not
well-formed is parsed again record by record, so a bad byte, a mismatched tag or a
missing end tag quarantines that record (its raw bytes, the reason and its line) and
every other one is read. Identifiers are checked: a PMID must be ASCII digits within
1..2^31-1 and a ``Version`` within 1..999, else the record is quarantined; an odd
referenced PMID is dropped. :class:`ParseLimits` caps one record's bytes and one text
field's characters: a longer record is quarantined by its first :data:`MAX_RAW_TAIL`
bytes and skipped unread; runs of blanks or junk between records are counted, not
held. Entities are never expanded (a record using one is quarantined, the DOCTYPE's
internal subset is ignored), no DTD is loaded, nothing is fetched, and libxml2 keeps its
own depth and size limits. A truncated file yields every whole record and one entry
for the cut; only a file that cannot be opened at all raises
:class:`~litpulse.core.errors.ParseError` (on first iteration).

Field rules worth knowing: inline markup is flattened (``H<sub>2</sub>O`` → ``H2O``; a
space is put back where italic/bold markup glued two words, see :func:`flatten_text`);
``references`` are the ``pubmed`` ids of ``ReferenceList`` then of ``CommentsCorrections
RefType="Cites"`` (older records), deduplicated in order; authors with ``ValidYN="N"``
and book editors are left out; ORCIDs are bare (``0000-0001-5186-3453``); a DOI is
cut at its first space (``"10.31857/S00268984, EDN: HUNTKB"``); dates that do not
exist (30 February) become ``None``.

Example:
    >>> from ingest.parse import parse_bytes
    >>> from ingest.records import SourceRef
    >>> xml = (b"<PubmedArticleSet><PubmedArticle><MedlineCitation Status='MEDLINE'>"
    ...        b"<PMID Version='1'>1</PMID><Article><ArticleTitle>H<sub>2</sub>O"
    ...        b"</ArticleTitle></Article></MedlineCitation></PubmedArticle>"
    ...        b"</PubmedArticleSet>")
    >>> [r.title for r in parse_bytes(xml, source_ref=SourceRef("eutils", "test"))]
    ['H2O']
"""

from __future__ import annotations

import calendar
import dataclasses
import datetime as dt
import io
import logging
import os
import queue
import re
import threading
import zlib
from collections.abc import Iterable, Iterator
from typing import IO, TYPE_CHECKING, Any, BinaryIO

from lxml import etree

from ingest.records import (
    AbstractSection,
    Author,
    Deletion,
    Item,
    MeshHeading,
    PartialDate,
    QuarantineEntry,
    Record,
    SourceRef,
)
from litpulse.core.errors import ParseError

if TYPE_CHECKING:
    from litpulse.core.settings import Settings

__all__ = [
    "ParseLimits",
    "flatten_text",
    "iter_items",
    "parse_bytes",
    "parse_medline_date",
    "source_ref_for",
]

logger = logging.getLogger(__name__)


#: Bytes read from the (compressed) input per block.
READ_BLOCK = 1 << 14
#: Largest decompressed block handed on at once.
MAX_FEED = 1 << 20

#: Decompressed bytes parsed as one document by the fast path.
BATCH_BYTES = 1 << 17
#: Bytes searched for the ``<PubmedArticleSet>`` start tag before using the slow path.
PROLOG_LIMIT = 1 << 20

#: Most bytes of a broken, oversize or unexpected element kept in its quarantine entry.
MAX_RAW_TAIL = 1 << 16
#: Longest run of bytes between two records kept as it is; a longer run is counted and
#: dropped (whitespace) or quarantined by its first :data:`MAX_RAW_TAIL` bytes.
MAX_GAP = 1 << 16

#: Default of ``LITPULSE_MAX_RECORD_BYTES``: well above the largest real PubMed records
#: (several thousand authors with affiliations, or thousands of references, come to a
#: few MB), while one parsed record of ordinary markup stays near a hundred MB of tree.
DEFAULT_MAX_RECORD_BYTES = 16 << 20
#: Default of ``LITPULSE_MAX_TEXT_CHARS``: real abstracts stay under ~100k characters.
DEFAULT_MAX_TEXT_CHARS = 1 << 20
#: Largest PMID accepted: NCBI issues them as positive 32-bit integers.
MAX_PMID = 2**31 - 1
#: Largest ``Version`` of a PMID accepted (real ones are single digits).
MAX_VERSION = 999

_INT32_MAX = 2**31 - 1
_GZIP_MAGIC = b"\x1f\x8b"
_LXML_POSITION_RE = re.compile(r",? line \d+, column \d+$")
_LINE_IN_MSG_RE = re.compile(r"\bline ([0-9]{1,9})\b")
_ROOT_OPEN_RE = re.compile(rb"<PubmedArticleSet(?:\s[^>]*)?>")
_SUFFIX = b"</PubmedArticleSet>"
_XML_DECL_RE = re.compile(rb"<\?xml[^>]*\?>")
_INTERNAL_SUBSET_RE = re.compile(rb"<!DOCTYPE[^>\[]*\[")
_PMID_BYTES_RE = re.compile(rb"<PMID\b[^>]*>\s*([0-9]{1,10})\s*</PMID>")
#: libxml2 keeps its own limits (nesting depth 256, 10 MB text nodes, entity
#: amplification) because ``huge_tree`` is off; entities are never expanded, nothing is
#: fetched and no DTD is loaded.
_PARSER_OPTIONS: dict[str, Any] = {
    "huge_tree": False,
    "resolve_entities": False,
    "no_network": True,
    "load_dtd": False,
    "remove_comments": True,
    "remove_pis": True,
}


@dataclasses.dataclass(frozen=True, slots=True)
class ParseLimits:
    """Caps on what one record may cost; the defaults are those of the settings.

    Attributes:
        max_record_bytes: Largest record (start tag to end tag) that is parsed, in
            bytes of XML; a larger one is quarantined with its first
            :data:`MAX_RAW_TAIL` bytes and the rest is skipped unread.
        max_text_chars: Longest text field (title, one abstract section, an
            affiliation...) a record may hold, in characters; a record with a longer
            one is quarantined.
    """

    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS

    def __post_init__(self) -> None:
        for name in ("max_record_bytes", "max_text_chars"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

    @classmethod
    def from_settings(cls, settings: Settings) -> ParseLimits:
        """The limits configured by ``LITPULSE_MAX_RECORD_BYTES``/``_MAX_TEXT_CHARS``."""
        return cls(settings.max_record_bytes, settings.max_text_chars)


_DEFAULT_LIMITS = ParseLimits()
_ITEM_TAGS = ("PubmedArticle", "PubmedBookArticle", "DeleteCitation")
_FILE_SEQ_RE = re.compile(r"pubmed[0-9]{2}n([0-9]{4,9})(?![0-9])")

_MONTHS: dict[str, int] = {}
for _i, _name in enumerate(calendar.month_name):
    if _i:
        _MONTHS[_name.lower()] = _i
        _MONTHS[_name[:3].lower()] = _i
_MONTHS["sept"] = 9
#: Season → the first month it can mean within its year.
_SEASONS = {"spring": 3, "summer": 6, "fall": 9, "autumn": 9, "winter": 1}
_TOKEN_RE = re.compile(r"[A-Za-z]+|[0-9]+")

#: Inline formatting elements whose boundaries may stand between two words.
_WORD_MARKUP = frozenset({"i", "b", "u", "em", "strong", "italic", "bold"})


# --------------------------------------------------------------------------- public API


def source_ref_for(path: str | os.PathLike[str], kind: str = "file") -> SourceRef:
    """The default :class:`SourceRef` of a file: its number from ``pubmedYYnNNNN``, else 0.

    Args:
        path: The file path.
        kind: The source kind (``file``, ``updatefile``, ``baseline``...).

    Returns:
        A SourceRef whose ``sequence`` is the update/baseline file number.
    """
    name = os.path.basename(os.fspath(path))
    m = _FILE_SEQ_RE.search(name)
    return SourceRef(kind, os.fspath(path), sequence=int(m.group(1)) if m else 0)  # type: ignore[arg-type]


def iter_items(
    source: str | os.PathLike[str] | BinaryIO | IO[bytes],
    *,
    source_ref: SourceRef | None = None,
    limits: ParseLimits | None = None,
) -> Iterator[Item]:
    """Stream the items of one PubMed XML document in file order, in constant memory.

    Args:
        source: A path (plain XML or gzip, detected by magic bytes) or a binary file
            object positioned at the start of the document.
        source_ref: Where the items come from; default: ``SourceRef("file", path,
            sequence=<N of pubmedYYnNNNN>)`` (for a file object, its ``name``).
        limits: Size caps of one record and one text field (default:
            :class:`ParseLimits` defaults, those of the settings).

    Yields:
        Record, Deletion and QuarantineEntry items in document order.

    Raises:
        ParseError: The path cannot be opened or read at all.
    """
    if isinstance(source, str | os.PathLike):
        ref = source_ref or source_ref_for(source)
        try:
            fh: IO[bytes] = open(source, "rb")  # noqa: SIM115 - closed in finally
        except OSError as exc:
            raise ParseError(f"cannot open {os.fspath(source)}: {exc}") from exc
        try:
            yield from _iter_stream(fh, ref, limits=limits or _DEFAULT_LIMITS)
        finally:
            fh.close()
    else:
        name = getattr(source, "name", None)
        ref = source_ref or (
            source_ref_for(name) if isinstance(name, str) else SourceRef("file", "<stream>")
        )
        yield from _iter_stream(source, ref, limits=limits or _DEFAULT_LIMITS)


def parse_bytes(
    data: bytes, *, source_ref: SourceRef, limits: ParseLimits | None = None
) -> list[Item]:
    """Parse a whole PubMed XML document held in memory (an EFetch body).

    Args:
        data: The document bytes (plain or gzip).
        source_ref: Where the bytes came from.
        limits: Size caps (see :func:`iter_items`).

    Returns:
        The items in document order (see :func:`iter_items`).
    """
    stream = io.BytesIO(data)
    return list(_iter_stream(stream, source_ref, threaded=False, limits=limits or _DEFAULT_LIMITS))


def flatten_text(elem: Any) -> str:
    """The plain text of an element with inline markup removed and whitespace normalised.

    ``H<sub>2</sub>O`` → ``H2O``; ``<i>in vivo</i> study`` → ``in vivo study``. Where
    italic/bold/underline markup sits between two letters with no space (``the<i>TERT</i>
    gene``, as some records have it), a space is put back so words are not glued;
    sub/superscripts and MathML are joined as they are (``x<sup>2</sup>`` → ``x2``).

    Args:
        elem: An lxml element.

    Returns:
        The text, whitespace runs collapsed to one space, stripped.
    """
    if len(elem):
        text = _flatten_children(elem)
    else:
        text = elem.text
        if not text:
            return ""
    return _squeeze(text)


def parse_medline_date(raw: str) -> PartialDate:
    """Read a free-text ``MedlineDate`` into a :class:`PartialDate` (start of the period).

    ``"1998 Dec-1999 Jan"`` → 1998-12, ``"2024 Sep-Oct"`` → 2024-09, ``"2000 Spring"`` →
    2000-03 (season kept), ``"1975-1976"`` → 1975, ``"2001 Jul 15-31"`` → 2001-07-15.

    Args:
        raw: The MedlineDate text.

    Returns:
        The date; ``raw`` always holds the original text.
    """
    raw = " ".join(raw.split())
    tokens = _TOKEN_RE.findall(raw)
    yi = next(
        (i for i, t in enumerate(tokens) if len(t) == 4 and t.isdigit() and t != "0000"), None
    )
    if yi is None:
        return PartialDate(raw=raw)
    year = int(tokens[yi])
    month = day = None
    season = None
    nxt = tokens[yi + 1] if yi + 1 < len(tokens) else None
    if nxt is not None and nxt.isalpha():
        month, season = _month_or_season(nxt)
        if month is not None and season is None and yi + 2 < len(tokens):
            d = tokens[yi + 2]
            if d.isdigit() and len(d) <= 2:
                day = int(d)
    elif nxt is not None and len(nxt) == 4 and nxt.isdigit():
        # "1998-1999 Winter": a season spanning two years starts in the first.
        after = tokens[yi + 2] if yi + 2 < len(tokens) else None
        if after is not None and after.isalpha():
            month, season = _month_or_season(after)
            if season == "Winter":
                month = 12
    if month is None and yi > 0 and tokens[yi - 1].isalpha():
        month, season = _month_or_season(tokens[yi - 1])  # "Spring 2001"
    return PartialDate(year, month, _valid_day(year, month, day), raw, season)


# --------------------------------------------------------------------------- streaming


def _iter_stream(
    fh: IO[bytes],
    ref: SourceRef,
    *,
    threaded: bool = True,
    limits: ParseLimits = _DEFAULT_LIMITS,
) -> Iterator[Item]:
    """Fast path: cut the byte stream into records (:func:`_pieces`), parse batches of
    about :data:`BATCH_BYTES` as small documents (in a helper thread, where libxml2 runs
    without the GIL; a batch that fails is parsed again record by record) and read the
    records in this thread. Anything that is not a ``PubmedArticleSet`` goes through the
    incremental pull parser instead."""
    chunks = _chunks(fh)
    head = bytearray()
    read_error: BaseException | None = None
    m = None
    try:
        for chunk in chunks:
            head += chunk
            m = _ROOT_OPEN_RE.search(head, 0, PROLOG_LIMIT)
            if m is not None or len(head) >= PROLOG_LIMIT:
                break
    except (OSError, EOFError, zlib.error) as exc:
        if isinstance(exc, OSError) and not head:
            raise ParseError(f"cannot read {ref.location}: {exc}") from exc
        read_error = exc
    if m is None or read_error is not None:
        # Not a PubmedArticleSet (or its start tag is beyond PROLOG_LIMIT), or unreadable
        # at once: read it all with the incremental parser.
        yield from _pull_items(_chain_chunks(bytes(head), chunks, read_error), ref, 0)
        return
    if _INTERNAL_SUBSET_RE.search(head, 0, m.start()):
        logger.warning(
            "%s: the DOCTYPE's internal subset is ignored; a record using one of its "
            "entities is quarantined",
            ref.location,
        )
    decl_match = _XML_DECL_RE.match(head)
    decl = bytes(decl_match.group(0)) if decl_match else b""
    root = bytes(m.group(0)).replace(b"\n", b" ").replace(b"\r", b" ")  # as written
    line = head.count(b"\n", 0, m.end()) + 1
    pieces = _pieces(bytes(head[m.end() :]), chunks, line, limits.max_record_bytes)
    batches: Iterator[tuple[str, Any, int, bool]] = _batches(pieces, decl, root, ref, limits)
    if threaded:
        batches = _prefetch(batches, depth=2)
    max_text = limits.max_text_chars
    try:
        for kind, payload, offset, check_text in batches:
            if kind != "elems":
                yield payload
                continue
            for elem in payload:
                tag = elem.tag
                if tag == "PubmedArticle":
                    item = _record_or_quarantine(elem, ref, False, offset)
                elif tag == "PubmedBookArticle":
                    item = _record_or_quarantine(elem, ref, True, offset)
                elif tag == "DeleteCitation":
                    yield from _deletions(elem, ref, offset)
                    continue
                else:
                    continue
                if check_text and type(item) is Record:
                    item = _cap_text(item, elem, offset, max_text)
                yield item
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()


def _chain_chunks(
    head: bytes, rest: Iterator[bytes], error: BaseException | None
) -> Iterator[bytes]:
    if head:
        yield head
    if error is not None:
        raise error
    yield from rest


# A piece of the stream, as cut by _pieces (kind, data, line of its first byte):
#   ("item", bytes, line)   one record from its start tag to its end tag (or to the next
#                           record's start tag, or to the end of the input)
#   ("gap", bytes, line)    up to MAX_GAP bytes between two records, kept as they are
#   ("junk", (kept, size), line)  a longer run between two records: only its first
#                           MAX_RAW_TAIL bytes from the first non-blank one are kept
#                           (none when it is all whitespace)
#   ("oversize", (kept, size, how), line)  a record over the size cap: its first bytes
#   ("end", (tail, size, error, inside), line)  the end of the input: what follows the
#                           last record (bounded), the read error if any, and whether
#                           the input ended inside a record
_Piece = tuple[str, Any, int]


def _pieces(first: bytes, chunks: Iterator[bytes], line: int, max_record: int) -> Iterator[_Piece]:
    """Cut the decompressed stream at record boundaries, in bounded memory.

    Start tags are found with ``bytes.find`` (no regex over the records' bytes); a record
    is ``<Tag ...>`` to ``</Tag>``, or to the next record's start tag when its end tag is
    missing. At most ``max_record`` bytes of one record and :data:`MAX_GAP` bytes between
    two records are ever held: past that, only a bounded prefix is kept while the rest is
    counted and dropped.
    """
    buf = bytearray(first)
    pos = 0
    state: dict[str, Any] = {"eof": False, "error": None}

    def read() -> bool:
        """Append the next block to ``buf``; False at the end of the input."""
        if state["eof"]:
            return False
        try:
            buf.extend(next(chunks))
            return True
        except StopIteration:
            pass
        except (OSError, EOFError, zlib.error) as exc:
            state["error"] = f"unreadable input: {type(exc).__name__}: {exc}"
        state["eof"] = True
        return False

    while True:
        # -- between records: look for the next start tag
        gap_line = line
        run: _Run | None = None
        scan = pos
        while True:
            start = _next_start(buf, scan, len(buf))
            if start >= 0 or state["eof"]:
                break
            if len(buf) - pos > MAX_GAP:  # a long run: count it, keep a bounded prefix
                cut = len(buf) - _KEEP
                if run is None:
                    run = _Run(gap_line)
                run.add(buf, pos, cut)
                pos = cut
            if pos:
                del buf[:pos]
                pos = 0
            scan = max(0, len(buf) - _KEEP)
            read()
        end = start if start >= 0 else len(buf)
        if run is not None:
            run.add(buf, pos, end)
            line = gap_line + run.lines
        else:
            line += buf.count(b"\n", pos, end)
        if start < 0:  # the end of the input
            if run is not None:
                tail, size = run.kept, run.size
                tail_line = run.kept_line
            else:
                tail, size, tail_line = bytes(buf[pos:end]), end - pos, gap_line
            yield ("end", (tail, size, state["error"], False), tail_line)
            return
        if run is not None:
            yield ("junk", (run.kept, run.size), run.kept_line)
        elif end > pos:
            yield ("gap", bytes(buf[pos:end]), gap_line)
        pos = start

        # -- inside a record: look for its end tag (or the next record's start tag)
        if pos > MAX_GAP:
            del buf[:pos]
            pos = 0
        s = pos
        closer = _END_TAGS[buf[s + 7]]
        search = open_from = s + 1
        ended = "closed"
        while True:
            c = buf.find(closer, search)
            if c >= 0:
                end = c + len(closer)
                break
            end = _next_start(buf, open_from, len(buf))
            if end >= 0:
                ended = "next"
                break
            if len(buf) - s > max_record:
                break
            if state["eof"]:
                end = len(buf)
                ended = "eof"
                break
            search = max(s + 1, len(buf) - len(closer) + 1)
            open_from = max(s + 1, len(buf) - _KEEP)
            if s:
                del buf[:s]
                search, open_from, s = search - s, open_from - s, 0
            read()
        if end < 0 or end - s > max_record:
            # -- over the cap: keep the start, drop the rest up to its end
            kept = bytes(buf[s : min(len(buf) if end < 0 else end, s + MAX_RAW_TAIL)])
            lines = size = 0
            how = _HOW_ENDED[ended]
            while end < 0:
                cut = max(s, len(buf) - _KEEP)
                lines += buf.count(b"\n", s, cut)
                size += cut - s
                del buf[:cut]
                s = 0
                if not read():
                    end = len(buf)
                    how = _HOW_ENDED["eof"]
                    break
                c = buf.find(closer)
                o = _next_start(buf, 1, len(buf))
                if c >= 0 and (o < 0 or c < o):
                    end = c + len(closer)
                    how = ""
                elif o >= 0:
                    end = o
                    how = _HOW_ENDED["next"]
            lines += buf.count(b"\n", s, end)
            size += end - s
            yield ("oversize", (kept, size, how), line)
            line += lines
            pos = end
            if how == _HOW_ENDED["eof"]:
                yield ("end", (b"", 0, state["error"], True), line)
                return
            continue
        piece = bytes(buf[s:end])
        if ended == "eof" and state["error"] is not None:
            yield ("end", (piece, len(piece), state["error"], True), line)
            return
        yield ("item", piece, line)
        line += piece.count(b"\n")
        pos = end
        if ended == "eof":
            yield ("end", (b"", 0, None, True), line)
            return


_HOW_ENDED = {
    "closed": "",
    "next": "without its end tag",
    "eof": "cut short by the end of the input",
}
#: Bytes kept from one read to the next so that a tag cut in two is still found.
_KEEP = 24
_START_TAGS = (b"<PubmedArticle", b"<PubmedBookArticle", b"<DeleteCitation")
#: End tag of a record by the 8th byte of its start tag (``<PubmedA``, ``<PubmedB``...).
_END_TAGS = {
    ord("A"): b"</PubmedArticle>",
    ord("B"): b"</PubmedBookArticle>",
    ord("C"): b"</DeleteCitation>",
}
_AFTER_NAME = frozenset(b" \t\r\n/>")


def _next_start(buf: bytes | bytearray, start: int, end: int) -> int:
    """Index of the first record start tag within ``buf[start:end]``, else -1.

    A tag whose name runs up to ``end`` is not counted yet (more bytes may follow). The
    next record usually starts within a few bytes, so a short window is tried first.
    """
    if end - start > _WINDOW:
        found = _find_start(buf, start, start + _WINDOW)
        if found >= 0:
            return found
    return _find_start(buf, start, end)


def _find_start(buf: bytes | bytearray, start: int, end: int) -> int:
    best = -1
    for tag in _START_TAGS:
        stop = end if best < 0 else best
        i = buf.find(tag, start, stop)
        while i >= 0:
            j = i + len(tag)
            if j >= end:
                i = -1
            elif buf[j] in _AFTER_NAME:
                break
            else:
                i = buf.find(tag, j, stop)
        if i >= 0:
            best = i
    return best


_WINDOW = 256


class _Run:
    """A long run of bytes between two records: counted, with a bounded prefix kept."""

    __slots__ = ("first_line", "lines", "size", "kept", "kept_line")

    def __init__(self, first_line: int) -> None:
        self.first_line = first_line
        self.lines = 0
        self.size = 0
        self.kept = b""
        self.kept_line = first_line

    def add(self, buf: bytearray, start: int, end: int) -> None:
        if end <= start:
            return
        if len(self.kept) < MAX_RAW_TAIL:
            data = bytes(buf[start:end])
            text = data.lstrip() if not self.kept else data
            if text:
                if not self.kept:
                    skipped = len(data) - len(text)
                    self.kept_line = self.first_line + self.lines + data.count(b"\n", 0, skipped)
                self.kept += text[: MAX_RAW_TAIL - len(self.kept)]
        self.lines += buf.count(b"\n", start, end)
        self.size += end - start


def _batches(
    pieces: Iterator[_Piece], decl: bytes, root: bytes, ref: SourceRef, limits: ParseLimits
) -> Iterator[tuple[str, Any, int, bool]]:
    """Parse the pieces in batches: ``("elems", elements, line offset, check_text)`` or
    ``("entry", QuarantineEntry, 0, False)``, in document order."""
    parser = etree.XMLParser(**_PARSER_OPTIONS)
    parts: list[_Piece] = []
    size = 0
    for piece in pieces:
        kind = piece[0]
        if kind == "item" or kind == "gap":
            parts.append(piece)
            size += len(piece[1])
            if size >= BATCH_BYTES:
                yield from _parse_batch(parts, size, decl, root, parser, ref, limits)
                parts, size = [], 0
            continue
        if parts:
            yield from _parse_batch(parts, size, decl, root, parser, ref, limits)
            parts, size = [], 0
        entry = _piece_entry(piece, decl, root, parser, ref, limits)
        if entry is not None:
            yield ("entry", entry, 0, False)
    if parts:  # pragma: no cover - the pieces always end with an "end" piece
        yield from _parse_batch(parts, size, decl, root, parser, ref, limits)


def _parse_batch(
    parts: list[_Piece],
    size: int,
    decl: bytes,
    root: bytes,
    parser: Any,
    ref: SourceRef,
    limits: ParseLimits,
) -> Iterator[tuple[str, Any, int, bool]]:
    """One batch as one document; where that fails, each record on its own."""
    max_text = limits.max_text_chars
    try:
        tree = etree.fromstring(b"".join([decl, root, *(p[1] for p in parts), _SUFFIX]), parser)
    except etree.XMLSyntaxError:
        pass
    else:
        yield ("elems", tree, parts[0][2] - 1, size > max_text)
        return
    for kind, data, line in parts:
        if kind == "gap":
            if data.strip():
                try:
                    etree.fromstring(decl + root + data + _SUFFIX, parser)
                except etree.XMLSyntaxError as exc:
                    entry = _syntax_entry(data, line, exc, ref, "between records")
                    yield ("entry", entry, 0, False)
            continue
        for sub, sub_line in _split_records(data, line):
            try:
                elem = etree.fromstring(decl + sub, parser)
            except etree.XMLSyntaxError as exc:
                yield ("entry", _syntax_entry(sub, sub_line, exc, ref), 0, False)
            else:
                yield ("elems", (elem,), sub_line - 1, len(sub) > max_text)


def _split_records(data: bytes, line: int) -> Iterator[tuple[bytes, int]]:
    """``data`` cut before every record start tag after its first byte (a record whose
    end tag is missing runs into the next one)."""
    start = 0
    while True:
        nxt = _next_start(data, start + 1, len(data))
        if nxt < 0:
            yield (data[start:] if start else data), line
            return
        sub = data[start:nxt]
        yield sub, line
        line += sub.count(b"\n")
        start = nxt


def _piece_entry(
    piece: _Piece, decl: bytes, root: bytes, parser: Any, ref: SourceRef, limits: ParseLimits
) -> QuarantineEntry | None:
    """The quarantine entry of a piece that is not a record, if it needs one."""
    kind, data, line = piece
    if kind == "junk":
        kept, size = data
        if not kept:  # only whitespace
            return None
        reason = f"{size} bytes of unexpected content between records"
        return _entry(reason, kept, size, ref, line)
    if kind == "oversize":
        kept, size, how = data
        reason = (
            f"record of {size} bytes{', ' + how if how else ''} is over the limit of "
            f"{limits.max_record_bytes} bytes (LITPULSE_MAX_RECORD_BYTES)"
        )
        return _entry(reason, kept, size, ref, line)
    tail, size, error, inside = data  # "end"
    if error is not None:
        where = line + tail.count(b"\n")
        logger.warning(
            "%s: %s at line %d; the records before it were kept", ref.location, error, where
        )
        return _entry(error, tail, size, ref, where if not inside else line)
    if inside or tail.strip() == _SUFFIX:
        return None
    try:  # what follows the last record must close the document (comments may follow)
        etree.fromstring(decl + root + tail, parser)
    except etree.XMLSyntaxError as exc:
        entry = _syntax_entry(tail, line, exc, ref, "after the last record")
        logger.warning("%s: %s", ref.location, entry.reason)
        return entry
    return None


def _syntax_entry(
    raw: bytes, line: int, exc: etree.XMLSyntaxError, ref: SourceRef, where: str = ""
) -> QuarantineEntry:
    at = line - 1 + (exc.lineno or 1)
    msg = _LXML_POSITION_RE.sub("", exc.msg or "XML syntax error")
    # libxml2 names lines of the record's own document: make them lines of the file
    msg = _LINE_IN_MSG_RE.sub(lambda m: f"line {int(m.group(1)) + line - 1}", msg)
    reason = f"XML syntax error at line {at}{' ' + where if where else ''}: {msg}"
    return QuarantineEntry(
        reason=reason,
        raw_xml=_raw_text(raw),
        source=ref,
        pmid=_pmid_in_bytes(raw),
        line=_line(at),
    )


def _entry(reason: str, kept: bytes, size: int, ref: SourceRef, line: int) -> QuarantineEntry:
    """A quarantine entry holding at most the first :data:`MAX_RAW_TAIL` bytes."""
    head = kept[:MAX_RAW_TAIL]
    raw = _raw_text(head)
    if size > len(head):
        raw = f"<!-- first {len(head)} of {size} bytes -->\n{raw}"
    return QuarantineEntry(
        reason=reason, raw_xml=raw, source=ref, pmid=_pmid_in_bytes(kept), line=_line(line)
    )


def _raw_text(raw: bytes) -> str:
    """Raw bytes as storable text: invalid UTF-8 and NUL written as ``\\xNN`` escapes."""
    text = raw.decode("utf-8", "backslashreplace")
    return text.replace("\x00", "\\x00") if "\x00" in text else text


def _line(line: int | None) -> int | None:
    """A line number that fits the quarantine table's integer column, else None."""
    return line if line is not None and 0 < line <= _INT32_MAX else None


def _pmid_in_bytes(raw: bytes) -> int | None:
    """The first valid ``<PMID>`` of a record's raw bytes, if any."""
    m = _PMID_BYTES_RE.search(raw, 0, MAX_RAW_TAIL)
    return _id_value(m.group(1).decode("ascii"), MAX_PMID) if m else None


def _cap_text(rec: Record, elem: Any, offset: int, max_text: int) -> Item:
    """The record, or a quarantine entry when one of its text fields is over the cap."""
    found = _overlong(rec, max_text, "")
    if found is None:
        return rec
    name, length = found
    raw = etree.tostring(elem, encoding="utf-8", with_tail=False)
    return _entry(
        f"text field {name} of {length} characters is over the limit of {max_text} "
        "characters (LITPULSE_MAX_TEXT_CHARS)",
        raw[:MAX_RAW_TAIL],
        len(raw),
        rec.source,
        (elem.sourceline or 1) + offset,
    )


def _overlong(value: Any, cap: int, name: str) -> tuple[str, int] | None:
    """The first string field (dotted name, length) longer than ``cap`` within ``value``."""
    if isinstance(value, str):
        return (name, len(value)) if len(value) > cap else None
    if isinstance(value, tuple):
        for v in value:
            found = _overlong(v, cap, name)
            if found is not None:
                return found
        return None
    if dataclasses.is_dataclass(value) and not isinstance(value, SourceRef | type):
        for f in dataclasses.fields(value):
            found = _overlong(getattr(value, f.name), cap, f"{name}.{f.name}" if name else f.name)
            if found is not None:
                return found
    return None


def _prefetch(items: Iterator[Any], depth: int) -> Iterator[Any]:
    """Run ``items`` in a helper thread, ``depth`` results ahead of the consumer."""
    q: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                q.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for x in items:
                if not put(("item", x)):
                    return
            put(("end", None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            put(("error", exc))

    worker = threading.Thread(target=run, name="pubmed-parse", daemon=True)
    worker.start()
    try:
        while True:
            kind, x = q.get()
            if kind == "item":
                yield x
            elif kind == "end":
                return
            else:
                raise x
    finally:
        stop.set()
        worker.join()


def _pull_items(
    chunks: Iterator[bytes],
    ref: SourceRef,
    offset: int,
) -> Iterator[Item]:
    """Slow, general path: an incremental pull parser over ``chunks`` (documents whose
    root is not ``PubmedArticleSet``). It stops at the first syntax error."""
    parser = etree.XMLPullParser(events=("end",), tag=_ITEM_TAGS, **_PARSER_OPTIONS)
    state: dict[str, Any] = {"last": None}
    syntax_error: etree.XMLSyntaxError | None = None
    feed_error: str | None = None
    try:
        for chunk in chunks:
            try:
                parser.feed(chunk)
            except etree.XMLSyntaxError as exc:
                syntax_error = exc
                break
            yield from _drain(parser, ref, state, offset)
        else:
            try:
                parser.close()
            except etree.XMLSyntaxError as exc:
                syntax_error = exc
    except (OSError, EOFError, zlib.error) as exc:
        if state["last"] is None and isinstance(exc, OSError):
            raise ParseError(f"cannot read {ref.location}: {exc}") from exc
        feed_error = f"unreadable input: {type(exc).__name__}: {exc}"
    yield from _drain(parser, ref, state, offset)
    if syntax_error is not None or feed_error is not None:
        yield _broken_document(ref, state, syntax_error, feed_error, offset)


def _broken_document(
    ref: SourceRef,
    state: dict[str, Any],
    syntax_error: etree.XMLSyntaxError | None,
    feed_error: str | None,
    offset: int,
) -> QuarantineEntry:
    line: int | None = None
    if syntax_error is not None:
        line = (syntax_error.lineno or 1) + offset
        msg = _LXML_POSITION_RE.sub("", syntax_error.msg or "XML syntax error")
        reason = f"XML syntax error at line {line}: {msg}"
    else:
        reason = feed_error or "unreadable input"
    partial = ""
    last = state["last"]
    parent = last.getparent() if last is not None else None
    if parent is not None and len(parent) and parent[-1] is not last:
        partial = etree.tostring(parent[-1], encoding="unicode", with_tail=False)
        partial = partial[:MAX_RAW_TAIL]
    marker = f"<!-- {ref.location}: {reason} -->"
    logger.warning("%s: %s; items before it were kept", ref.location, reason)
    return QuarantineEntry(
        reason=reason,
        raw_xml=f"{marker}\n{partial}" if partial else marker,
        source=ref,
        line=_line(line),
    )


def _drain(parser: Any, ref: SourceRef, state: dict[str, Any], offset: int) -> Iterator[Item]:
    for _event, elem in parser.read_events():
        tag = elem.tag
        entity = next(elem.iter(etree.Entity), None)
        if entity is not None:  # declared in the DTD, but never expanded
            yield QuarantineEntry(
                reason=f"entity reference {entity.text} in the record (entities are not expanded)",
                raw_xml=etree.tostring(elem, encoding="unicode", with_tail=False),
                source=ref,
                pmid=_pmid_guess(elem),
                line=_line((elem.sourceline or 1) + offset),
            )
        elif tag == "DeleteCitation":
            yield from _deletions(elem, ref, offset)
        else:
            yield _record_or_quarantine(elem, ref, tag == "PubmedBookArticle", offset)
        # Free the element and everything before it: memory stays flat.
        elem.clear(keep_tail=False)
        parent = elem.getparent()
        if parent is not None:
            while elem.getprevious() is not None:
                del parent[0]
        state["last"] = elem


def _chunks(fh: IO[bytes]) -> Iterator[bytes]:
    first = fh.read(READ_BLOCK)
    if not isinstance(first, bytes | bytearray):
        raise ParseError("a PubMed document must be read from a binary file object")
    first = bytes(first)
    if first[:2] != _GZIP_MAGIC:
        if first:
            yield first
        while True:
            block = fh.read(READ_BLOCK)
            if not block:
                return
            yield block
    d = zlib.decompressobj(31)
    pending = False  # the current gzip member has input but no end yet
    buf = first
    while True:
        while buf:
            pending = True
            out = d.decompress(buf, MAX_FEED)
            if out:
                yield out
            while d.unconsumed_tail:
                out = d.decompress(d.unconsumed_tail, MAX_FEED)
                if out:
                    yield out
            if d.eof:  # next gzip member (multi-member files), if any
                buf = d.unused_data
                d = zlib.decompressobj(31)
                pending = False
            else:
                buf = b""
        buf = fh.read(READ_BLOCK)
        if not buf:
            break
    if pending:
        raise EOFError("gzip stream ended before its end-of-stream marker (truncated file)")


# --------------------------------------------------------------------------- records


def _deletions(elem: Any, ref: SourceRef, offset: int = 0) -> Iterator[Item]:
    for child in elem.iterchildren("PMID"):
        pmid = _id_value(child.text, MAX_PMID)
        if pmid is not None:
            yield Deletion(pmid, ref)
        else:
            yield QuarantineEntry(
                reason=f"DeleteCitation with {_id_problem(child.text, 'PMID', MAX_PMID)}",
                raw_xml=etree.tostring(child, encoding="unicode", with_tail=False),
                source=ref,
                line=_line((child.sourceline or 1) + offset),
            )


def _id_value(text: str | None, high: int) -> int | None:
    """The identifier in ``text`` (ASCII digits, surrounding blanks allowed) if within
    ``1..high``, else None. ``str.isdigit`` alone would take ``²`` or ``١٢٣``."""
    if not text:
        return None
    if not (text.isdigit() and text.isascii()):
        text = text.strip()
        if not (text.isdigit() and text.isascii()):
            return None
    if len(text) > 10:
        return None
    value = int(text)
    return value if 1 <= value <= high else None


def _id_problem(text: str | None, what: str, high: int) -> str:
    """What is wrong with an identifier :func:`_id_value` refused, for a reason."""
    t = (text or "").strip()
    shown = repr(t if len(t) <= 40 else t[:40] + "...")
    if t.isdigit() and t.isascii():
        return f"{what} {shown} out of range 1..{high}"
    return f"non-integer {what} {shown}"


def _record_or_quarantine(elem: Any, ref: SourceRef, is_book: bool, offset: int = 0) -> Item:
    pmid: int | None = None
    try:
        return _book(elem, ref) if is_book else _article(elem, ref)
    except _BadRecord as exc:
        reason, pmid = exc.reason, exc.pmid
    except Exception as exc:  # noqa: BLE001 - a bad record must not stop the file
        reason = f"{type(exc).__name__} while reading the record: {exc}"
        pmid = _pmid_guess(elem)
    return QuarantineEntry(
        reason=reason,
        raw_xml=etree.tostring(elem, encoding="unicode", with_tail=False),
        source=ref,
        pmid=pmid,
        line=_line((elem.sourceline or 1) + offset),
    )


class _BadRecord(Exception):
    def __init__(self, reason: str, pmid: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.pmid = pmid


def _pmid_guess(elem: Any) -> int | None:
    """Best-effort PMID of a broken record (first PMID, else ArticleId IdType=pubmed)."""
    for p in elem.iter("PMID", "ArticleId"):
        if p.tag == "ArticleId" and p.get("IdType") != "pubmed":
            continue
        return _id_value(p.text, MAX_PMID)
    return None


def _read_pmid(pmid_el: Any, where: str) -> tuple[int, int]:
    if pmid_el is None:
        raise _BadRecord(f"{where} without PMID")
    pmid = _id_value(pmid_el.text, MAX_PMID)
    if pmid is None:
        raise _BadRecord(f"{where} with {_id_problem(pmid_el.text, 'PMID', MAX_PMID)}")
    ver = pmid_el.get("Version")
    if ver is None:
        return pmid, 1
    version = _id_value(ver, MAX_VERSION)
    if version is None:
        problem = _id_problem(ver, "Version", MAX_VERSION)
        raise _BadRecord(f"{where} of PMID {pmid} with {problem}", pmid)
    return pmid, version


def _article(elem: Any, ref: SourceRef) -> Record:
    # The hot path: one pass over each level with local variables (no helper objects).
    mc = pd_el = None
    for child in elem:
        tag = child.tag
        if tag == "MedlineCitation":
            mc = child
        elif tag == "PubmedData":
            pd_el = child
    if mc is None:
        raise _BadRecord("PubmedArticle without MedlineCitation", _pmid_guess(elem))

    pmid_el = article = None
    date_completed = date_revised = None
    mesh: tuple[MeshHeading, ...] = ()
    keywords: list[str] = []
    retraction_in: list[int] = []
    cites: list[int] = []
    for child in mc:
        tag = child.tag
        if tag == "PMID":
            if pmid_el is None:
                pmid_el = child
        elif tag == "Article":
            article = child
        elif tag == "MeshHeadingList":
            mesh = _mesh(child)
        elif tag == "DateRevised":
            date_revised = _ymd(child)
        elif tag == "DateCompleted":
            date_completed = _ymd(child)
        elif tag == "KeywordList":
            for kw in child:
                t = flatten_text(kw)
                if t:
                    keywords.append(t)
        elif tag == "CommentsCorrectionsList":
            for cc in child:
                rt = cc.get("RefType")
                if rt == "RetractionIn":
                    _append_pmid(cc, retraction_in)
                elif rt == "Cites":
                    _append_pmid(cc, cites)
    pmid, version = _read_pmid(pmid_el, "MedlineCitation")
    if article is None:
        raise _BadRecord("MedlineCitation without Article", pmid)

    title = ""
    vernacular_title = journal = journal_iso = volume = issue = pages = doi = None
    abstract: tuple[AbstractSection, ...] = ()
    authors: tuple[Author, ...] = ()
    pub_date = _NO_DATE
    article_date = None
    publication_types: list[str] = []
    languages: list[str] = []
    for child in article:
        tag = child.tag
        if tag == "Journal":
            for jc in child:
                jt = jc.tag
                if jt == "JournalIssue":
                    for ji in jc:
                        jit = ji.tag
                        if jit == "PubDate":
                            pub_date = _pub_date(ji)
                        elif jit == "Volume":
                            volume = ji.text
                        elif jit == "Issue":
                            issue = ji.text
                elif jt == "Title":
                    journal = jc.text
                elif jt == "ISOAbbreviation":
                    journal_iso = jc.text
        elif tag == "ArticleTitle":
            title = flatten_text(child)
        elif tag == "Abstract":
            abstract = _abstract(child)
        elif tag == "AuthorList":
            authors = _authors(child)
        elif tag == "Pagination":
            for pg in child:
                if pg.tag == "MedlinePgn":
                    pages = pg.text
        elif tag == "ELocationID":
            if doi is None and child.get("EIdType") == "doi" and child.get("ValidYN") != "N":
                doi = _clean_doi(child.text)
        elif tag == "Language":
            t = child.text
            if t:
                languages.append(t.strip())
        elif tag == "PublicationTypeList":
            for pt in child:
                t = pt.text
                if t:
                    publication_types.append(t.strip())
        elif tag == "ArticleDate":
            if article_date is None and child.get("DateType", "Electronic") == "Electronic":
                article_date = _ymd(child)
        elif tag == "VernacularTitle":
            vernacular_title = flatten_text(child) or None

    entrez_date = pubmed_date = None
    pmcid = id_doi = None
    references: list[int] = []
    if pd_el is not None:
        for child in pd_el:
            tag = child.tag
            if tag == "ReferenceList":
                _reference_pmids(child, references)
            elif tag == "History":
                for h in child:
                    status = h.get("PubStatus")
                    if status == "entrez":
                        if entrez_date is None:
                            entrez_date = _ymd(h)
                    elif status == "pubmed":
                        if pubmed_date is None:
                            pubmed_date = _ymd(h)
            elif tag == "ArticleIdList":
                for aid in child:
                    id_type = aid.get("IdType")
                    if id_type == "doi":
                        if id_doi is None:
                            id_doi = _clean_doi(aid.text)
                    elif id_type == "pmc":
                        if pmcid is None and aid.text:
                            pmcid = aid.text.strip() or None
    if cites:
        references.extend(cites)
    return Record(
        pmid=pmid,
        version=version,
        title=title,
        source=ref,
        abstract_sections=abstract,
        vernacular_title=vernacular_title,
        journal=journal,
        journal_iso=journal_iso,
        volume=volume,
        issue=issue,
        pages=pages,
        pub_date=pub_date,
        article_date=article_date,
        entrez_date=entrez_date,
        pubmed_date=pubmed_date,
        date_completed=date_completed,
        date_revised=date_revised,
        authors=authors,
        mesh=mesh,
        keywords=tuple(keywords),
        publication_types=tuple(publication_types),
        languages=tuple(languages),
        doi=doi or id_doi,
        pmcid=pmcid,
        references=tuple(dict.fromkeys(references)) if references else (),
        is_retracted=bool(retraction_in) or "Retracted Publication" in publication_types,
        retraction_in=tuple(dict.fromkeys(retraction_in)) if retraction_in else (),
        is_book=False,
        status=mc.get("Status"),
    )


def _reference_pmids(reference_list: Any, out: list[int]) -> None:
    for aid in reference_list.iter("ArticleId"):
        if aid.get("IdType") == "pubmed":
            pmid = _id_value(aid.text, MAX_PMID)
            if pmid is not None:  # an odd reference is dropped, the record kept
                out.append(pmid)


def _book(elem: Any, ref: SourceRef) -> Record:
    doc = data = None
    for child in elem:
        tag = child.tag
        if tag == "BookDocument":
            doc = child
        elif tag == "PubmedBookData":
            data = child
    if doc is None:
        raise _BadRecord("PubmedBookArticle without BookDocument", _pmid_guess(elem))
    pmid_el = None
    f = _ArticleFields()
    book_title = None
    date_revised = None
    keywords: list[str] = []
    references: list[int] = []
    for child in doc:
        tag = child.tag
        if tag == "PMID":
            if pmid_el is None:
                pmid_el = child
        elif tag == "Book":
            for b in child:
                btag = b.tag
                if btag == "BookTitle":
                    book_title = flatten_text(b)
                elif btag == "PubDate":
                    f.pub_date = _pub_date(b)
                elif btag == "ELocationID" and b.get("EIdType") == "doi" and f.doi is None:
                    f.doi = _clean_doi(b.text)
        elif tag == "DateRevised":
            date_revised = _ymd(child)
        elif tag == "KeywordList":
            keywords.extend(t for t in map(flatten_text, child) if t)
        elif tag == "PublicationType":
            if child.text:
                f.publication_types.append(child.text.strip())
        elif tag == "AuthorList":
            if child.get("Type", "authors") == "authors":
                f.authors = _authors(child)
        elif tag == "ReferenceList":  # books keep theirs in the BookDocument
            _reference_pmids(child, references)
        else:
            f.dispatch(tag, child)
    pmid, version = _read_pmid(pmid_el, "BookDocument")
    history: dict[str, dt.date | None] = {}
    own_ids: dict[str, str] = {}
    if data is not None:
        _pubmed_data(data, history, own_ids, references)
    title = f.title or book_title or ""
    return Record(
        pmid=pmid,
        version=version,
        title=title,
        source=ref,
        abstract_sections=f.abstract,
        vernacular_title=f.vernacular_title,
        journal=book_title,
        pub_date=f.pub_date,
        article_date=f.article_date,
        entrez_date=history.get("entrez"),
        pubmed_date=history.get("pubmed"),
        date_revised=date_revised,
        authors=f.authors,
        keywords=tuple(keywords),
        publication_types=tuple(f.publication_types),
        languages=tuple(f.languages),
        doi=f.doi or own_ids.get("doi"),
        pmcid=own_ids.get("pmc"),
        references=_dedup(references),
        is_retracted="Retracted Publication" in f.publication_types,
        is_book=True,
    )


class _ArticleFields:
    """Mutable scratch space filled from the children of ``Article``/``BookDocument``."""

    __slots__ = (
        "title",
        "vernacular_title",
        "abstract",
        "journal",
        "journal_iso",
        "volume",
        "issue",
        "pages",
        "pub_date",
        "article_date",
        "authors",
        "publication_types",
        "languages",
        "doi",
    )

    def __init__(self) -> None:
        self.title = ""
        self.vernacular_title: str | None = None
        self.abstract: tuple[AbstractSection, ...] = ()
        self.journal: str | None = None
        self.journal_iso: str | None = None
        self.volume: str | None = None
        self.issue: str | None = None
        self.pages: str | None = None
        self.pub_date = _NO_DATE
        self.article_date: dt.date | None = None
        self.authors: tuple[Author, ...] = ()
        self.publication_types: list[str] = []
        self.languages: list[str] = []
        self.doi: str | None = None

    def dispatch(self, tag: str, child: Any) -> None:
        if tag == "ArticleTitle":
            self.title = flatten_text(child)
        elif tag == "Abstract":
            self.abstract = _abstract(child)
        elif tag == "AuthorList":
            self.authors = _authors(child)
        elif tag == "Journal":
            self._journal(child)
        elif tag == "Language":
            if child.text:
                self.languages.append(child.text.strip())
        elif tag == "PublicationTypeList":
            self.publication_types.extend(p.text.strip() for p in child if p.text)
        elif tag == "Pagination":
            for p in child.iterchildren("MedlinePgn"):
                self.pages = _text(p)
        elif tag == "ELocationID":
            if self.doi is None and child.get("EIdType") == "doi" and child.get("ValidYN") != "N":
                self.doi = _clean_doi(child.text)
        elif tag == "ArticleDate":
            if self.article_date is None and child.get("DateType", "Electronic") == "Electronic":
                self.article_date = _ymd(child)
        elif tag == "VernacularTitle":
            self.vernacular_title = flatten_text(child) or None

    def _journal(self, journal: Any) -> None:
        for child in journal:
            tag = child.tag
            if tag == "JournalIssue":
                for ji in child:
                    jt = ji.tag
                    if jt == "PubDate":
                        self.pub_date = _pub_date(ji)
                    elif jt == "Volume":
                        self.volume = ji.text
                    elif jt == "Issue":
                        self.issue = ji.text
            elif tag == "Title":
                self.journal = child.text
            elif tag == "ISOAbbreviation":
                self.journal_iso = child.text


_NO_DATE = PartialDate()


def _pubmed_data(
    pd_el: Any,
    history: dict[str, dt.date | None],
    own_ids: dict[str, str],
    references: list[int],
) -> None:
    for child in pd_el:
        tag = child.tag
        if tag == "History":
            for h in child:
                status = h.get("PubStatus")
                if (status == "entrez" or status == "pubmed") and status not in history:
                    history[status] = _ymd(h)
        elif tag == "ArticleIdList":
            for aid in child:
                id_type = aid.get("IdType")
                if id_type in ("doi", "pmc") and id_type not in own_ids and aid.text:
                    value = _clean_doi(aid.text) if id_type == "doi" else aid.text.strip()
                    if value:
                        own_ids[id_type] = value
        elif tag == "ReferenceList":
            _reference_pmids(child, references)


def _abstract(abstract: Any) -> tuple[AbstractSection, ...]:
    sections = []
    for at in abstract.iterchildren("AbstractText"):
        text = flatten_text(at)
        label = at.get("Label")
        if text or label:
            sections.append(AbstractSection(text, label or None, at.get("NlmCategory")))
    return tuple(sections)


def _authors(author_list: Any) -> tuple[Author, ...]:
    out = []
    for a in author_list:
        if a.tag != "Author" or a.get("ValidYN") == "N":
            continue
        last = fore = initials = collective = orcid = None
        affs: list[str] = []
        for c in a:
            tag = c.tag
            if tag == "LastName":
                last = c.text
            elif tag == "ForeName":
                fore = c.text
            elif tag == "Initials":
                initials = c.text
            elif tag == "AffiliationInfo":
                for af in c:
                    if af.tag == "Affiliation":
                        t = af.text if not len(af) else flatten_text(af)
                        if t:
                            affs.append(t.strip())
            elif tag == "CollectiveName":
                collective = flatten_text(c) or None
            elif tag == "Identifier":
                if orcid is None and c.get("Source") == "ORCID" and c.text:
                    orcid = _clean_orcid(c.text)
        out.append(Author(last, fore, initials, collective, tuple(affs), orcid))
    return tuple(out)


def _mesh(mesh_list: Any) -> tuple[MeshHeading, ...]:
    out = []
    cache = _MESH_CACHE
    for mh in mesh_list:
        descriptor = ui = None
        major = False
        quals: list[str] = []
        for c in mh:
            if c.tag == "DescriptorName":
                descriptor = c.text
                ui = c.get("UI")
                if c.get("MajorTopicYN") == "Y":
                    major = True
            else:  # QualifierName
                q = c.text
                if q:
                    quals.append(q)
                if c.get("MajorTopicYN") == "Y":
                    major = True
        if descriptor:
            # Headings repeat across records (Humans, Male...): share the frozen objects.
            key = (descriptor, ui, major, *quals)
            heading = cache.get(key)
            if heading is None:
                if len(cache) >= _MESH_CACHE_SIZE:
                    cache.clear()
                heading = cache[key] = MeshHeading(descriptor, ui, major, tuple(quals))
            out.append(heading)
    return tuple(out)


_MESH_CACHE: dict[tuple[Any, ...], MeshHeading] = {}
_MESH_CACHE_SIZE = 50_000


# --------------------------------------------------------------------------- dates


def _pub_date(pd: Any) -> PartialDate:
    year_t = month_t = day_t = season_t = medline = None
    for c in pd:
        tag = c.tag
        if tag == "Year":
            year_t = c.text
        elif tag == "Month":
            month_t = c.text
        elif tag == "Day":
            day_t = c.text
        elif tag == "Season":
            season_t = c.text
        elif tag == "MedlineDate":
            medline = c.text or ""
    key = (year_t, month_t, day_t, season_t, medline)
    cached = _DATE_CACHE.get(key)
    if cached is None:
        if medline is not None:
            cached = parse_medline_date(medline)
        else:
            cached = _partial_date(*(t.strip() if t else None for t in key[:4]))
        if len(_DATE_CACHE) >= _DATE_CACHE_SIZE:
            _DATE_CACHE.clear()
        _DATE_CACHE[key] = cached
    return cached


def _partial_date(
    year_t: str | None, month_t: str | None, day_t: str | None, season_t: str | None
) -> PartialDate:
    raw = " ".join(t for t in (year_t, month_t or season_t, day_t) if t)
    year = _small_int(year_t) or None  # 1..9999, what a date can hold
    month = season = None
    if month_t:
        month = _small_int(month_t)
        if month is None:
            month = _MONTHS.get(month_t.lower())
        elif not 1 <= month <= 12:
            month = None
    elif season_t:
        month, season = _month_or_season(season_t)
    day = _small_int(day_t) if month else None
    return PartialDate(year, month, _valid_day(year, month, day), raw, season)


def _small_int(text: str | None) -> int | None:
    """The value of one to four ASCII digits, else None."""
    if text and len(text) <= 4 and text.isdigit() and text.isascii():
        return int(text)
    return None


#: PubDate elements and DateRevised-style dates repeat a lot within a file.
_DATE_CACHE: dict[tuple[str | None, ...], PartialDate] = {}
_YMD_CACHE: dict[tuple[str | None, ...], dt.date | None] = {}
_DATE_CACHE_SIZE = 20_000


def _month_or_season(word: str) -> tuple[int | None, str | None]:
    w = word.lower()
    month = _MONTHS.get(w)
    if month is not None:
        return month, None
    if w in _SEASONS:
        return _SEASONS[w], word.capitalize()
    return None, None


def _valid_day(year: int | None, month: int | None, day: int | None) -> int | None:
    if day is None or year is None or month is None:
        return None
    if 1 <= day <= calendar.monthrange(year, month)[1]:
        return day
    return None


def _ymd(el: Any) -> dt.date | None:
    y = m = d = None
    for c in el:
        tag = c.tag
        if tag == "Year":
            y = c.text
        elif tag == "Month":
            m = c.text
        elif tag == "Day":
            d = c.text
            break
    key = (y, m, d)
    try:
        return _YMD_CACHE[key]
    except KeyError:
        pass
    value = _to_date(y, m, d)
    if len(_YMD_CACHE) >= _DATE_CACHE_SIZE:
        _YMD_CACHE.clear()
    _YMD_CACHE[key] = value
    return value


def _to_date(y: str | None, m: str | None, d: str | None) -> dt.date | None:
    if not y:
        return None
    try:
        month = 1
        if m:
            m = m.strip()
            month = int(m) if m.isdigit() else _MONTHS[m.lower()]
        return dt.date(int(y), month, int(d) if d else 1)
    except (ValueError, KeyError, OverflowError):
        return None


# --------------------------------------------------------------------------- text helpers


def _text(el: Any) -> str | None:
    t = el.text if not len(el) else flatten_text(el)
    if t:
        t = t.strip()
    return t or None


def _squeeze(text: str) -> str:
    # Substring tests are much cheaper than split/join on long non-ASCII text, and most
    # PubMed text has no whitespace runs at all.
    if "  " in text or "\n" in text or "\t" in text or "\r" in text:
        return " ".join(text.split())
    return text.strip()


def _flatten_children(elem: Any) -> str:
    head = elem.text
    parts: list[str] = [head] if head else []
    for child in elem:
        inner = child.text if not len(child) else "".join(child.itertext())
        tail = child.tail
        if child.tag in _WORD_MARKUP and inner:
            # Put back a space lost between a word and italic/bold markup.
            if parts and parts[-1][-1:].isalpha() and inner[:1].isalpha():
                parts.append(" ")
            parts.append(inner)
            if tail and tail[:1].isalpha() and inner[-1:].isalpha():
                parts.append(" ")
        elif inner:
            parts.append(inner)
        if tail:
            parts.append(tail)
    return "".join(parts)


def _clean_doi(text: str | None) -> str | None:
    if not text:
        return None
    words = text.split()
    if not words:
        return None
    doi = words[0].rstrip(",.")
    low = doi.lower()
    for prefix in ("https://doi.org/", "http://dx.doi.org/", "doi:"):
        if low.startswith(prefix):
            doi = doi[len(prefix) :]
            break
    return doi or None


def _clean_orcid(text: str) -> str | None:
    t = text.strip().rstrip("/")
    t = t.rpartition("/")[2]
    return t or None


def _append_pmid(cc: Any, out: list[int]) -> None:
    for p in cc.iterchildren("PMID"):
        pmid = _id_value(p.text, MAX_PMID)
        if pmid is not None:
            out.append(pmid)


def _dedup(values: Iterable[int]) -> tuple[int, ...]:
    return tuple(dict.fromkeys(values))
