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
Where ``pip install -e .`` built it, a compiled reader (``ingest/_cfields.pyx``) reads
each ``PubmedArticle`` by walking libxml2's nodes in C, with the same rules and results
as the Python code, which takes every record the compiled one is unsure of.
A UTF-16 or UTF-32 document is transcoded to UTF-8 first and its root start tag is found
past the prolog's comments, PIs and DOCTYPE (however long), so it is cut the same way.
Documents that are not a ``PubmedArticleSet`` go through an incremental pull parser
(``XMLPullParser`` with ``tag=`` filtering, elements cleared as it goes) instead; one of
them that holds no record at all (an HTML error page saved under a PubMed file's name)
is quarantined as a whole, never passed off as an empty file.
:func:`iter_units` lets several processes share one file: each cuts the whole stream
(cheap) but parses and reads only its stripe of the batches ("units"); read in unit
order, the stripes are exactly the items of :func:`iter_items`
(:mod:`ingest.parallel` does that with its parse workers).

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
own depth limit (its text-node cap is lifted for ``PubmedArticleSet`` batches, which hold
no DOCTYPE: the record-bytes cap bounds them). A truncated file yields every whole record
and one entry for the cut; only a file that cannot be opened at all raises
:class:`~litpulse.core.errors.ParseError` (on first iteration).

Modules: this one cuts the stream into records, enforces the limits and quarantines what
it cannot read; :mod:`ingest.fields` reads one parsed element into a record and
:mod:`ingest.dates` reads its dates.

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

import codecs
import dataclasses
import hashlib
import io
import logging
import os
import queue
import re
import threading
import types
import zlib
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Any, BinaryIO

from lxml import etree

from ingest.boundaries import (
    MAX_GAP,
    MAX_RAW_TAIL,
    Piece,
    open_markup,
    pieces,
    split_records,
)
from ingest.dates import parse_medline_date
from ingest.fields import (
    MAX_PMID,
    MAX_VERSION,
    deletions,
    element_entry,
    flatten_text,
    id_value,
    pmid_guess,
    quarantine_line,
    record_or_quarantine,
)
from ingest.records import (
    Item,
    QuarantineEntry,
    Record,
    SourceRef,
    nlm_file_order,
    nlm_sequence,
)
from litpulse.core.errors import ParseError

_inflate_lib: types.ModuleType
try:  # zlib-ng's inflate: zlib's API and stream rules, ~3.5× faster on x86-64 (SIMD)
    from zlib_ng import zlib_ng as _inflate_lib
except ImportError:  # pragma: no cover - a platform without its wheel: zlib itself
    _inflate_lib = zlib

if TYPE_CHECKING:
    from litpulse.core.settings import Settings

__all__ = [
    "MAX_GAP",
    "MAX_RAW_TAIL",
    "MAX_PMID",
    "MAX_VERSION",
    "ContentDigest",
    "ParseLimits",
    "answer_entry",
    "document_damage",
    "flatten_text",
    "iter_items",
    "iter_units",
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
#: Largest batch kept open because it ends inside a comment, CDATA section or PI.
MAX_BATCH_BYTES = 64 * BATCH_BYTES
#: Bytes of prolog (comments, DOCTYPE) held before the ``<PubmedArticleSet>`` start
#: tag; past that the prolog is read on without being held.
PROLOG_LIMIT = 1 << 20
#: Longest single prolog construct (a comment, the DOCTYPE) held while looking for its
#: end; a document with a longer one goes to the pull parser.
PROLOG_MARKUP_LIMIT = 16 << 20

#: Default of ``LITPULSE_MAX_RECORD_BYTES``: well above the largest real PubMed records
#: (several thousand authors with affiliations, or thousands of references, come to a
#: few MB), while one parsed record of ordinary markup stays near a hundred MB of tree.
DEFAULT_MAX_RECORD_BYTES = 16 << 20
#: Default of ``LITPULSE_MAX_TEXT_CHARS``: real abstracts stay under ~100k characters.
DEFAULT_MAX_TEXT_CHARS = 1 << 20

_GZIP_MAGIC = b"\x1f\x8b"
_LXML_POSITION_RE = re.compile(r",? line \d+, column \d+$")
_LINE_IN_MSG_RE = re.compile(r"\bline ([0-9]{1,9})\b")
#: The root start tag as written: a ``>`` inside a quoted attribute value is the value's.
_ROOT_OPEN_RE = re.compile(rb"""<PubmedArticleSet(?:\s(?:[^>"']|"[^"]*"|'[^']*')*)?>""")
#: The root start tag read up to inside a quoted attribute value (its end not read yet).
_ROOT_OPEN_QUOTE_RE = re.compile(rb"""<PubmedArticleSet\s(?:[^>"']|"[^"]*"|'[^']*')*["'][^"']*""")
_SUFFIX = b"</PubmedArticleSet>"
_XML_DECL_RE = re.compile(rb"<\?xml[^>]*\?>")
_INTERNAL_SUBSET_RE = re.compile(rb"<!DOCTYPE[^>\[]*\[")
_PMID_BYTES_RE = re.compile(rb"<PMID\b[^>]*>\s*([0-9]{1,10})\s*</PMID>")
#: A record's own PMID: the first child of its ``MedlineCitation`` or ``BookDocument``
#: (other ``<PMID>`` elements of a record are PMIDs it cites or comments on).
_OWN_PMID_RE = re.compile(
    rb"<(?:MedlineCitation|BookDocument)\b[^>]*>\s*<PMID\b[^>]*>\s*([0-9]{1,10})\s*</PMID>"
)
_DELETE_CITATION = b"<DeleteCitation"
#: The pull parser's options (documents that are not a ``PubmedArticleSet``, DOCTYPE
#: and all): libxml2 keeps its own limits (nesting depth 256, 10 MB text nodes, entity
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
#: The batch parser's: ``huge_tree`` on, so a text field of up to
#: ``LITPULSE_MAX_TEXT_CHARS`` (268 M at most, over libxml2's 10 MB text-node cap) is
#: read and :func:`_cap_text` judges it. A batch holds no DOCTYPE, so no entity is ever
#: declared (a record using one does not parse and is quarantined), and
#: ``LITPULSE_MAX_RECORD_BYTES`` bounds what one record costs.
_BATCH_PARSER_OPTIONS: dict[str, Any] = {**_PARSER_OPTIONS, "huge_tree": True}


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
#: The pull parser's filter: the item tags in any namespace or none (one in a namespace
#: is quarantined, never skipped unseen).
_ITEM_TAGS_ANY_NS = tuple(f"{{*}}{tag}" for tag in _ITEM_TAGS)


class ContentDigest:
    """The MD5 of a document's content (a gzip file's unpacked bytes, any other file's
    bytes: :func:`litpulse.core.checksums.content_md5`), taken by :func:`iter_items` or
    :func:`iter_units` (``content=``) from the bytes it reads anyway, so a file is not
    unpacked a second time to learn it.

    :attr:`hexdigest` is ``None`` unless the stream was read once, whole, from its start
    to its end: a damaged gzip stream, a read that stopped early or one that failed is no
    content MD5 (the caller computes it itself, or leaves it unknown).
    """

    __slots__ = ("_h", "_whole")

    def __init__(self) -> None:
        self._h = hashlib.md5(usedforsecurity=False)
        self._whole = False

    def restart(self) -> None:
        """The stream is read again from its start (the pull parser's second read)."""
        self._h = hashlib.md5(usedforsecurity=False)
        self._whole = False

    def update(self, block: bytes) -> None:
        self._h.update(block)

    def ended(self) -> None:
        """The stream was read to its end without an error."""
        self._whole = True

    @property
    def hexdigest(self) -> str | None:
        """The hex MD5 of the content, or ``None`` where it was not read whole once."""
        return self._h.hexdigest() if self._whole else None


# --------------------------------------------------------------------------- public API


def source_ref_for(path: str | os.PathLike[str], kind: str = "file") -> SourceRef:
    """The default :class:`SourceRef` of a file: the order of an NLM file's name (exactly
    ``pubmedYYnNNNN.xml`` or ``.xml.gz``: :func:`ingest.records.nlm_file_order`,
    :func:`ingest.records.nlm_sequence`), else 0.

    Args:
        path: The file path.
        kind: The source kind (``file``, ``updatefile``, ``baseline``...).

    Returns:
        A SourceRef whose ``sequence`` orders the update/baseline file (year, number).
    """
    order = nlm_file_order(path)
    sequence = nlm_sequence(*order) if order else 0
    return SourceRef(kind, os.fspath(path), sequence=sequence)  # type: ignore[arg-type]


def iter_items(
    source: str | os.PathLike[str] | BinaryIO | IO[bytes],
    *,
    source_ref: SourceRef | None = None,
    limits: ParseLimits | None = None,
    threaded: bool = False,
    content: ContentDigest | None = None,
) -> Iterator[Item]:
    """Stream the items of one PubMed XML document in file order, in constant memory.

    Args:
        source: A path (plain XML or gzip, detected by magic bytes) or a binary file
            object positioned at the start of the document.
        source_ref: Where the items come from; default: ``SourceRef("file", path,
            sequence=<N of pubmedYYnNNNN>)`` (for a file object, its ``name``).
        limits: Size caps of one record and one text field (default:
            :class:`ParseLimits` defaults, those of the settings).
        threaded: Decompress and run libxml2 in a helper thread while this thread
            reads the fields (the same items). Off by default: measured on the 2-core
            machine with the other core idle, the helper thread costs ~40 % more CPU and
            ~35 % more wall time than one thread (2.1 → 2.9 s for 21,000 records; trees
            built in one thread and read in another, and GIL hand-offs); ``bench.parse``
            shows both.
        content: Takes the MD5 of the bytes read (unpacked), read from the start of the
            file: its content MD5 once the items are read to the end
            (:class:`ContentDigest`).

    Yields:
        Record, Deletion and QuarantineEntry items in document order.

    Raises:
        ParseError: The path cannot be opened or read at all.
    """
    fh, ref, owned = _open(source, source_ref)
    try:
        yield from _iter_stream(
            fh, ref, threaded=threaded, limits=limits or _DEFAULT_LIMITS, content=content
        )
    finally:
        if owned:
            fh.close()


def iter_units(
    source: str | os.PathLike[str] | BinaryIO | IO[bytes],
    *,
    part: int,
    parts: int,
    source_ref: SourceRef | None = None,
    limits: ParseLimits | None = None,
    content: ContentDigest | None = None,
) -> Iterator[tuple[int, Iterator[Item] | None]]:
    """One stripe of a document: the units ``u`` with ``u % parts == part``, in order.

    The document is decompressed and cut into records whole (cheap), and the records are
    grouped into units exactly as :func:`iter_items` groups them into batches (a batch
    of about :data:`BATCH_BYTES`, or one stretch that is not a record: junk, an
    oversize record, the end of the input; a batch that fails to parse stays one unit
    when it is parsed again record by record). Only this stripe's units are parsed and
    read, so ``parts`` processes calling this with ``part`` = 0 … ``parts - 1`` share the
    parse, and reading unit 0, 1, 2… from process ``u % parts`` gives exactly the items
    of :func:`iter_items`, in order. A document that is not a ``PubmedArticleSet`` is one
    unit (read by part 0).

    Args:
        source: As for :func:`iter_items`.
        part: This stripe, ``0 <= part < parts``.
        parts: The number of stripes.
        source_ref: As for :func:`iter_items`.
        limits: As for :func:`iter_items`.
        content: As for :func:`iter_items` (one stripe's is enough: each reads it all);
            known once ``(total, None)`` is yielded.

    Yields:
        ``(u, items)`` for each unit of this stripe (read ``items`` to the end before the
        next), then ``(total, None)``: ``total`` is the number of units of the document.

    Raises:
        ParseError: The path cannot be opened or read at all.
        ValueError: ``part`` is not within ``0 .. parts - 1``.
    """
    if not 0 <= part < parts:
        raise ValueError(f"need 0 <= part < parts, got part={part}, parts={parts}")
    fh, ref, owned = _open(source, source_ref)
    try:
        yield from _stream_units(fh, ref, limits or _DEFAULT_LIMITS, part, parts, content)
    finally:
        if owned:
            fh.close()


def _open(
    source: str | os.PathLike[str] | BinaryIO | IO[bytes], source_ref: SourceRef | None
) -> tuple[IO[bytes], SourceRef, bool]:
    """The file object to read, its source and whether it was opened here (to close)."""
    if isinstance(source, str | os.PathLike):
        ref = source_ref or source_ref_for(source)
        try:
            return open(source, "rb"), ref, True  # noqa: SIM115 - the caller closes it
        except OSError as exc:
            raise ParseError(f"cannot open {os.fspath(source)}: {exc}") from exc
    name = getattr(source, "name", None)
    ref = source_ref or (
        source_ref_for(name) if isinstance(name, str) else SourceRef("file", "<stream>")
    )
    return source, ref, False


#: How a whole PubMed document ends (white space may follow).
_DOCUMENT_END_RE = re.compile(rb"</PubmedArticleSet\s*>\s*\Z")


def document_damage(path: str | os.PathLike[str]) -> str | None:
    """Why the PubMed document at ``path`` is not whole, or ``None``: its gzip stream ends
    inside a member or is corrupt, or its text does not end with the
    ``</PubmedArticleSet>`` end tag (a file cut at a record boundary). Reads (and
    decompresses) the file once, in constant memory.

    :func:`iter_items` reads such a file up to the damage and quarantines the cut, which is
    right for a local file; a file NLM publishes is always whole, so one that is not came
    damaged from a mirror and must not be applied (:mod:`ingest.updatefiles`).

    Raises:
        ParseError: The file cannot be opened.
    """
    tail = b""
    try:
        with open(path, "rb") as fh:
            for block in _chunks(fh):
                tail = (tail + block)[-256:] if len(block) < 256 else block[-256:]
    except OSError as exc:
        raise ParseError(f"cannot read {os.fspath(path)}: {exc}") from exc
    except (EOFError, zlib.error) as exc:
        return f"its gzip stream is damaged: {exc}"
    if not _DOCUMENT_END_RE.search(tail):
        return "it does not end with the </PubmedArticleSet> end tag (cut short)"
    return None


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


# --------------------------------------------------------------------------- streaming


def _iter_stream(
    fh: IO[bytes],
    ref: SourceRef,
    *,
    threaded: bool = False,
    limits: ParseLimits = _DEFAULT_LIMITS,
    content: ContentDigest | None = None,
) -> Iterator[Item]:
    """Fast path: cut the byte stream into records (:func:`ingest.boundaries.pieces`),
    parse batches of about :data:`BATCH_BYTES` as small documents (``threaded``: in a
    helper thread, where libxml2 runs without the GIL; a batch that fails is parsed again
    record by record) and read the records in this thread. Anything that is not a
    ``PubmedArticleSet`` goes through the incremental pull parser instead."""
    started = _start(fh, ref, limits, warn=True, content=content)
    if not isinstance(started, _Cut):
        yield from started
        return
    batches: Iterator[tuple[str, Any, int, bool]] = _batches(started, ref, limits)
    if threaded:
        batches = _prefetch(batches, depth=2)
    try:
        yield from _read(batches, ref, limits.max_text_chars)
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()


def _stream_units(
    fh: IO[bytes],
    ref: SourceRef,
    limits: ParseLimits,
    part: int,
    parts: int,
    content: ContentDigest | None = None,
) -> Iterator[tuple[int, Iterator[Item] | None]]:
    """:func:`iter_units` on an open stream."""
    started = _start(fh, ref, limits, warn=part == 0, content=content)
    if not isinstance(started, _Cut):  # the pull parser: one unit
        if part == 0:
            yield 0, started
        yield 1, None
        return
    parser = etree.XMLParser(**_BATCH_PARSER_OPTIONS)
    max_text = limits.max_text_chars
    total = 0
    for u, unit in enumerate(_units(started.pieces)):
        total = u + 1
        if u % parts == part:
            yield u, _read(_unit_batches(unit, started, parser, ref, limits), ref, max_text)
    yield total, None


@dataclasses.dataclass(frozen=True, slots=True)
class _Cut:
    """A ``PubmedArticleSet`` being cut into pieces: the pieces, XML declaration, root tag."""

    pieces: Iterator[Piece]
    decl: bytes
    root: bytes


def _start(
    fh: IO[bytes],
    ref: SourceRef,
    limits: ParseLimits,
    *,
    warn: bool,
    content: ContentDigest | None = None,
) -> _Cut | Iterator[Item]:
    """Read up to the ``<PubmedArticleSet>`` start tag: the stream cut into pieces, or,
    for anything else (or a stream unreadable at once), the pull parser's items.

    A UTF-16 or UTF-32 document is read as UTF-8 (:func:`_as_utf8`), so it is cut like
    any other.
    The root start tag is found after the prolog's declaration, comments, PIs and DOCTYPE
    (:func:`_prolog`: a ``<PubmedArticleSet>`` written in one of them is text); a prolog
    longer than :data:`PROLOG_LIMIT` is not held past that, only its declaration and lines.
    ``content`` takes the MD5 of the bytes read (:func:`_chunks`), again from the start
    where they are read again.
    """
    origin = fh.tell() if _seekable(fh) else None
    chunks = _as_utf8(_chunks(fh, content))
    head = bytearray()
    read_error: BaseException | None = None
    pos, root_at, subset = 0, -1, False
    decl: bytes | None = None
    dropped_lines = 0
    scanned = 0
    try:
        for chunk in chunks:
            head += chunk
            if len(head) < 2 * scanned:  # inside one long construct: read on (linear time)
                continue
            pos, root_at, in_subset = _prolog(head, pos)
            subset = subset or in_subset
            if (
                root_at >= 0
                and head.find(b">", root_at) >= 0
                and (
                    _ROOT_OPEN_QUOTE_RE.fullmatch(head, root_at) is None  # no '>' of a value
                )
            ):
                break
            if len(head) - pos > PROLOG_MARKUP_LIMIT:  # one construct too long to hold
                root_at = -1
                break
            if root_at < 0 and pos > PROLOG_LIMIT:  # a long prolog: not held any longer
                if decl is None:
                    decl = _decl(head)
                dropped_lines += head.count(b"\n", 0, pos)
                del head[:pos]
                pos = 0
            scanned = len(head)
        else:
            pos, root_at, in_subset = _prolog(head, pos)  # the end: what was read last
            subset = subset or in_subset
    except (OSError, EOFError, zlib.error) as exc:
        if isinstance(exc, OSError) and not head and decl is None:
            raise ParseError(f"cannot read {ref.location}: {exc}") from exc
        read_error = exc
    m = _ROOT_OPEN_RE.match(head, root_at) if root_at >= 0 else None
    if m is None or read_error is not None:
        # Not a PubmedArticleSet, or unreadable at once: read it all with the incremental
        # parser (from the start again where the prolog was not held whole).
        if decl is None:
            return _pull_items(_chain_chunks(bytes(head), chunks, read_error), ref, 0)
        if origin is not None and read_error is None:
            fh.seek(origin)
            return _pull_items(_as_utf8(_chunks(fh, content)), ref, 0)
        reason = (
            f"not a PubmedArticleSet document (its prolog is over {PROLOG_LIMIT} bytes and "
            "the stream cannot be read again)"
        )
        return iter([_entry(reason, bytes(head), len(head), ref, dropped_lines + 1, placed=True)])
    if warn and subset:
        logger.warning(
            "%s: the DOCTYPE's internal subset is ignored; a record using one of its "
            "entities is quarantined",
            ref.location,
        )
    if decl is None:
        decl = _decl(head)
    root = bytes(m.group(0)).replace(b"\n", b" ").replace(b"\r", b" ")  # as written
    line = dropped_lines + head.count(b"\n", 0, m.end()) + 1
    return _Cut(pieces(bytes(head[m.end() :]), chunks, line, limits.max_record_bytes), decl, root)


def _seekable(fh: IO[bytes]) -> bool:
    try:
        return bool(fh.seekable())
    except (AttributeError, OSError, ValueError):
        return False


def _decl(head: bytes | bytearray) -> bytes:
    """The document's XML declaration (after a UTF-8 BOM, if any), else nothing."""
    m = _XML_DECL_RE.match(head, 3 if head.startswith(_UTF8_BOM) else 0)
    return bytes(m.group(0)) if m else b""


_UTF8_BOM = b"\xef\xbb\xbf"
_BLANK_BYTES = frozenset(b" \t\r\n")
_DOCTYPE_TOKEN_RE = re.compile(rb"[\"'\[>]")
_SUBSET_TOKEN_RE = re.compile(rb"[\"'\]]|<!--|<\?")
_TERMINATORS = {b"<?": b"?>", b"<!--": b"-->", b'"': b'"', b"'": b"'"}


def _prolog(head: bytes | bytearray, pos: int) -> tuple[int, int, bool]:
    """The prolog skipped from ``pos`` (blanks, the XML declaration, comments, PIs, the
    DOCTYPE with its internal subset): ``(where the prolog's whole constructs end, the
    index of the root element's '<' or of anything else that is no prolog, else -1 while
    the prolog is not read to its end, whether a DOCTYPE with an internal subset was
    passed)``."""
    n = len(head)
    subset = False
    while True:
        if pos == 0 and head.startswith(_UTF8_BOM):
            pos = 3
        while pos < n and head[pos] in _BLANK_BYTES:
            pos += 1
        if n - pos < 9:  # too short to tell a comment or DOCTYPE from the root
            return pos, -1, subset
        if head[pos] != 0x3C:  # text: not a prolog, the parser will say what it is
            return pos, pos, subset
        if head.startswith(b"<?", pos) or head.startswith(b"<!--", pos):
            opener = b"<?" if head[pos + 1] == 0x3F else b"<!--"
            term = _TERMINATORS[opener]
            end = head.find(term, pos + len(opener))
            end = end + len(term) if end >= 0 else -1
        elif head.startswith(b"<!DOCTYPE", pos):
            end = _doctype_end(head, pos + 9)
            subset = subset or (end >= 0 and _INTERNAL_SUBSET_RE.match(head, pos) is not None)
        else:
            return pos, pos, subset
        if end < 0:
            return pos, -1, subset
        pos = end


def _doctype_end(head: bytes | bytearray, pos: int) -> int:
    """The index after the ``>`` ending a DOCTYPE whose body starts at ``pos`` (quoted
    strings, the internal subset's comments, PIs and quoted strings skipped), else -1."""
    in_subset = False
    while True:
        m = (_SUBSET_TOKEN_RE if in_subset else _DOCTYPE_TOKEN_RE).search(head, pos)
        if m is None:
            return -1
        tok = m.group(0)
        if tok == b">":
            return m.end()
        if tok in (b"[", b"]"):
            in_subset = tok == b"["
            pos = m.end()
            continue
        term = _TERMINATORS[tok]
        end = head.find(term, m.end())
        if end < 0:
            return -1
        pos = end + len(term)


#: ``(encoding="...")`` of a decoded XML declaration, rewritten as UTF-8.
_DECL_ENCODING_RE = re.compile(r"""\A(<\?xml\b[^>]*?\bencoding\s*=\s*)(["'])[^"']*\2""")


def _wide_codec(first: bytes) -> str | None:
    """The UTF-16 or UTF-32 codec of a document by its first bytes (a BOM, or ``<`` in
    UTF-32, ``<?`` in UTF-16): libxml2 reads them, but the root start tag, the record tags
    and the caps are looked for in UTF-8 bytes."""
    if first[:4] in (b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff"):  # before UTF-16's BOM
        return "utf-32"
    if first[:4] == b"<\x00\x00\x00":
        return "utf-32-le"
    if first[:4] == b"\x00\x00\x00<":
        return "utf-32-be"
    if first[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return "utf-16"
    if first[:4] == b"<\x00?\x00":
        return "utf-16-le"
    if first[:4] == b"\x00<\x00?":
        return "utf-16-be"
    return None


def _as_utf8(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """The decompressed stream, a UTF-16 or UTF-32 document transcoded to UTF-8 (its
    declaration saying so), so that it is cut into records and its caps hold as for any
    other; text that is not valid in its encoding is an :class:`OSError` (unreadable
    input) where it starts."""
    first = b""
    for block in chunks:
        first += block
        if len(first) >= 256:
            break
    codec = _wide_codec(first)
    if codec is None:
        if first:
            yield first
        yield from chunks
        return
    decoder = codecs.getincrementaldecoder(codec)("strict")
    try:
        text = _DECL_ENCODING_RE.sub(r'\g<1>"UTF-8"', decoder.decode(first), count=1)
        yield text.encode("utf-8")
        for block in chunks:
            yield decoder.decode(block).encode("utf-8")
        yield decoder.decode(b"", final=True).encode("utf-8")
    except UnicodeError as exc:
        raise OSError(f"not valid {codec.upper()}: {exc}") from exc


def _read(
    batches: Iterator[tuple[str, Any, int, bool]], ref: SourceRef, max_text: int
) -> Iterator[Item]:
    """The items of parsed batches (see :func:`_batches`), in order."""
    for kind, payload, offset, check_text in batches:
        if kind != "elems":
            yield payload
            continue
        for elem in payload:
            tag = elem.tag
            if tag == "PubmedArticle":
                item = record_or_quarantine(elem, ref, False, offset)
            elif tag == "PubmedBookArticle":
                item = record_or_quarantine(elem, ref, True, offset)
            elif tag == "DeleteCitation":
                yield from deletions(elem, ref, offset)
                continue
            elif isinstance(tag, str) and _local(elem) in _ITEM_TAGS:
                yield from _namespaced_entries(elem, ref, offset)
                continue
            else:
                continue
            if check_text and type(item) is Record:
                item = _cap_text(item, elem, offset, max_text)
            yield item


def _chain_chunks(
    head: bytes, rest: Iterator[bytes], error: BaseException | None
) -> Iterator[bytes]:
    if head:
        yield head
    if error is not None:
        raise error
    yield from rest


#: A unit of parsing work: ``("batch", pieces, size)`` (records and the gaps between
#: them, about :data:`BATCH_BYTES`, parsed as one document) or ``("piece", piece)``
#: (a stretch that is not a record: junk, an oversize record, the end of the input).
_Unit = tuple[str, Any, int]


def _units(pieces: Iterator[Piece]) -> Iterator[_Unit]:
    """Group the pieces into units of parsing work, in document order (nothing parsed).

    A batch is not closed inside a comment, CDATA section or PI (the cutter may end a
    piece at a record tag written there: the batch would not be well-formed, and the
    record cut in two quarantined), unless it is already :data:`MAX_BATCH_BYTES` long.
    """
    parts: list[Piece] = []
    size = 0
    inside: bytes | None = None
    for piece in pieces:
        kind = piece[0]
        if kind == "item" or kind == "gap":
            parts.append(piece)
            size += len(piece[1])
            inside = open_markup(piece[1], inside)
            if size >= BATCH_BYTES and (inside is None or size >= MAX_BATCH_BYTES):
                yield ("batch", parts, size)
                parts, size, inside = [], 0, None
            continue
        if parts:
            yield ("batch", parts, size)
            parts, size, inside = [], 0, None
        yield ("piece", piece, 0)
    if parts:  # pragma: no cover - the pieces always end with an "end" piece
        yield ("batch", parts, size)


def _unit_batches(
    unit: _Unit, cut: _Cut, parser: Any, ref: SourceRef, limits: ParseLimits
) -> Iterator[tuple[str, Any, int, bool]]:
    """Parse one unit: what :func:`_batches` yields for it."""
    kind, data, size = unit
    if kind == "batch":
        yield from _parse_batch(data, size, cut.decl, cut.root, parser, ref, limits)
        return
    entry = _piece_entry(data, cut.decl, cut.root, parser, ref, limits)
    if entry is not None:
        for one in _per_deletion(entry, data[1][0]):  # the piece's bytes (kept or tail)
            yield ("entry", one, 0, False)


def _batches(
    cut: _Cut, ref: SourceRef, limits: ParseLimits
) -> Iterator[tuple[str, Any, int, bool]]:
    """Parse the pieces in batches: ``("elems", elements, line offset, check_text)`` or
    ``("entry", QuarantineEntry, 0, False)``, in document order."""
    parser = etree.XMLParser(**_BATCH_PARSER_OPTIONS)
    for unit in _units(cut.pieces):
        yield from _unit_batches(unit, cut, parser, ref, limits)


def _parse_batch(
    parts: list[Piece],
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
    # cut again, seeing comments, CDATA sections and PIs (the cutter's pieces do not); a
    # record is parsed under the root where the root declares namespaces (as in the batch)
    under = (decl + root, _SUFFIX) if b"xmlns" in root else (decl, b"")
    for kind, data, line in split_records(b"".join(p[1] for p in parts), parts[0][2]):
        if kind == "gap":
            if data.strip():
                try:
                    etree.fromstring(decl + root + data + _SUFFIX, parser)
                except etree.XMLSyntaxError as exc:
                    entry = _syntax_entry(data, line, exc, ref, "between records", placed=True)
                    for one in _per_deletion(entry, data):
                        yield ("entry", one, 0, False)
            continue
        try:
            elem = etree.fromstring(under[0] + data + under[1], parser)
            if under[1]:
                elem = elem[0]
        except etree.XMLSyntaxError as exc:
            for one in _per_deletion(_syntax_entry(data, line, exc, ref), data):
                yield ("entry", one, 0, False)
        else:
            yield ("elems", (elem,), line - 1, len(data) > max_text)


def _piece_entry(
    piece: Piece, decl: bytes, root: bytes, parser: Any, ref: SourceRef, limits: ParseLimits
) -> QuarantineEntry | None:
    """The quarantine entry of a piece that is not a record, if it needs one."""
    kind, data, line = piece
    if kind == "junk":
        kept, size = data
        if not kept:  # only whitespace
            return None
        reason = f"{size} bytes of unexpected content between records"
        return _entry(reason, kept, size, ref, line, placed=True)
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
        return _entry(error, tail, size, ref, where if not inside else line, placed=True)
    if inside or tail.strip() == _SUFFIX:
        return None
    try:  # what follows the last record must close the document (comments may follow)
        etree.fromstring(decl + root + tail, parser)
    except etree.XMLSyntaxError as exc:
        entry = _syntax_entry(tail, line, exc, ref, "after the last record", placed=True)
        logger.warning("%s: %s", ref.location, entry.reason)
        return entry
    return None


def _syntax_entry(
    raw: bytes,
    line: int,
    exc: etree.XMLSyntaxError,
    ref: SourceRef,
    where: str = "",
    *,
    placed: bool = False,
) -> QuarantineEntry:
    """The entry of bytes that are not well-formed (``placed``: not a record, see
    :func:`_entry`)."""
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
        line=quarantine_line(at),
        key=_place(ref, at) if placed else "",
    )


def _entry(
    reason: str, kept: bytes, size: int, ref: SourceRef, line: int, *, placed: bool = False
) -> QuarantineEntry:
    """A quarantine entry holding at most the first :data:`MAX_RAW_TAIL` bytes.

    ``placed``: the bytes are not a record (a file cut short, junk between records, what
    follows the last record), so the entry is told apart by its file and line as well as
    by its bytes: two files cut short alike are two entries (a bad record met again in
    another file stays one).
    """
    head = kept[:MAX_RAW_TAIL]
    raw = _raw_text(head)
    if size > len(head):
        raw = f"<!-- first {len(head)} of {size} bytes -->\n{raw}"
    return QuarantineEntry(
        reason=reason,
        raw_xml=raw,
        source=ref,
        pmid=_pmid_in_bytes(kept),
        line=quarantine_line(line),
        key=_place(ref, line) if placed else "",
    )


def _place(ref: SourceRef, line: int) -> str:
    """The key of an entry that is not a record: where it is."""
    return f"{ref.location}:{line}"


def _per_deletion(entry: QuarantineEntry, raw: bytes) -> list[QuarantineEntry]:
    """A ``DeleteCitation`` block that is not well-formed: one entry per PMID it names
    (none of its deletions is applied from damaged bytes, and none is lost unseen);
    anything else: the entry itself."""
    head = raw[:MAX_RAW_TAIL]
    if _DELETE_CITATION not in head:
        return [entry]
    pmids = list(dict.fromkeys(
        p for m in _PMID_BYTES_RE.finditer(head)
        if (p := id_value(m.group(1).decode("ascii"), MAX_PMID)) is not None
    ))  # fmt: skip
    if not pmids:
        return [entry]
    return [
        dataclasses.replace(
            entry,
            pmid=p,
            key=f"{entry.key} deletion {p}",
            reason=f"{entry.reason}; the deletion of PMID {p} it holds is not applied",
        )  # fmt: skip
        for p in pmids
    ]


def answer_entry(reason: str, head: bytes, ref: SourceRef, pmid: int) -> QuarantineEntry:
    """The entry of ``pmid`` whose answer (to a request for it alone) was not read whole:
    its first :data:`MAX_RAW_TAIL` bytes, told apart from another PMID's by the PMID
    (two damaged answers may begin alike), the same answer met again one entry."""
    kept = head[:MAX_RAW_TAIL]
    return QuarantineEntry(
        reason=reason,
        raw_xml=f"<!-- the answer's first {len(kept)} bytes -->\n{_raw_text(kept)}",
        source=ref,
        pmid=pmid,
        key=f"answer for PMID {pmid}",
    )


def _raw_text(raw: bytes) -> str:
    """Raw bytes as text: invalid UTF-8 written as ``\\xNN`` escapes (NUL is escaped by
    :class:`ingest.records.QuarantineEntry` itself)."""
    return raw.decode("utf-8", "backslashreplace")


def _pmid_in_bytes(raw: bytes) -> int | None:
    """A record's own PMID in its raw bytes (its ``MedlineCitation``'s or
    ``BookDocument``'s first child), if readable: never a PMID it cites."""
    m = _OWN_PMID_RE.search(raw, 0, MAX_RAW_TAIL)
    return id_value(m.group(1).decode("ascii"), MAX_PMID) if m else None


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
    parser = etree.XMLPullParser(events=("end",), tag=_ITEM_TAGS_ANY_NS, **_PARSER_OPTIONS)
    state: dict[str, Any] = {"last": None}
    syntax_error: etree.XMLSyntaxError | None = None
    feed_error: str | None = None
    root: Any = None
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
                root = parser.close()
            except etree.XMLSyntaxError as exc:
                syntax_error = exc
    except (OSError, EOFError, zlib.error) as exc:
        if state["last"] is None and isinstance(exc, OSError):
            raise ParseError(f"cannot read {ref.location}: {exc}") from exc
        feed_error = f"unreadable input: {type(exc).__name__}: {exc}"
    yield from _drain(parser, ref, state, offset)
    if syntax_error is not None or feed_error is not None:
        yield _broken_document(ref, state, syntax_error, feed_error, offset)
    elif state["last"] is None and root is not None and _local(root) != "PubmedArticleSet":
        yield _foreign_document(ref, root)


def _local(elem: Any) -> str:
    """An element's tag without its namespace."""
    tag = elem.tag
    return str(etree.QName(tag).localname) if isinstance(tag, str) else str(tag)


def _namespaced_entries(elem: Any, ref: SourceRef, offset: int) -> list[QuarantineEntry]:
    """The entries of a record of a known kind in an XML namespace (``xmlns`` on it or on
    the document): PubMed's records have none, so its fields are not read (a namespace
    may mean another vocabulary); quarantined, never dropped unseen. A ``DeleteCitation``
    gives one entry per PMID it names (none applied)."""
    reason = (
        f"record <{_local(elem)}> in XML namespace {etree.QName(elem).namespace!r} "
        "(PubMed records have none): not read"
    )
    pmid = next((id_value(p.text, MAX_PMID) for p in elem.iter("{*}PMID")), None)
    entry = element_entry(elem, ref, reason, offset, pmid=pmid)
    return _per_deletion(entry, etree.tostring(elem, encoding="utf-8", with_tail=False))


def _foreign_document(ref: SourceRef, root: Any) -> QuarantineEntry:
    """The entry of a well-formed document that is not PubMed XML and holds no record (an
    HTML error page saved under a PubMed file's name, another service's answer): read as
    nothing, it would pass for an empty file."""
    reason = f"not a PubMed document: its root element is <{_local(root)}>, and it holds no record"
    head = etree.tostring(root, encoding="unicode", with_tail=False)[:MAX_RAW_TAIL]
    logger.warning("%s: %s", ref.location, reason)
    return QuarantineEntry(reason=reason, raw_xml=f"<!-- {ref.location}: {reason} -->\n{head}",
                           source=ref, line=1)  # fmt: skip


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
        line=quarantine_line(line),
    )


def _drain(parser: Any, ref: SourceRef, state: dict[str, Any], offset: int) -> Iterator[Item]:
    for _event, elem in parser.read_events():
        tag = elem.tag
        entity = next(elem.iter(etree.Entity), None)
        if tag not in _ITEM_TAGS:  # a known kind in a namespace (the filter is "{*}Tag")
            yield from _namespaced_entries(elem, ref, offset)
        elif entity is not None:  # declared in the DTD, but never expanded
            reason = f"entity reference {entity.text} in the record (entities are not expanded)"
            yield element_entry(elem, ref, reason, offset, pmid=pmid_guess(elem))
        elif tag == "DeleteCitation":
            yield from deletions(elem, ref, offset)
        else:
            yield record_or_quarantine(elem, ref, tag == "PubmedBookArticle", offset)
        # Free the element and everything before it: memory stays flat.
        elem.clear(keep_tail=False)
        parent = elem.getparent()
        if parent is not None:
            while elem.getprevious() is not None:
                del parent[0]
        state["last"] = elem


def _chunks(fh: IO[bytes], content: ContentDigest | None = None) -> Iterator[bytes]:
    """The blocks of the document read from ``fh``: a gzip stream's unpacked, any other
    stream's as they are; ``content`` (from its start) takes their MD5, whole once the
    last block is read."""
    if content is None:
        yield from _blocks(fh)
        return
    content.restart()
    for block in _blocks(fh):
        content.update(block)
        yield block
    content.ended()


def _blocks(fh: IO[bytes]) -> Iterator[bytes]:
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
    error: type[Exception] = _inflate_lib.error
    try:
        yield from _inflate(first, fh)
    except error as exc:  # zlib-ng's own class: raised as zlib's
        raise zlib.error(str(exc)) from exc


def _inflate(first: bytes, fh: IO[bytes]) -> Iterator[bytes]:
    """The decompressed blocks of the gzip stream that starts with ``first`` (every
    member in turn, NUL bytes between or after members skipped as padding, as gzip(1) and
    Python's :mod:`gzip` skip them); :data:`_inflate_lib`'s error when the stream is
    corrupt (other bytes after a member among them), ``EOFError`` when it ends inside a
    member."""
    d = _inflate_lib.decompressobj(31)
    pending = False  # the current gzip member has input but no end yet
    buf = first
    while True:
        while buf:
            if not pending:  # between members: NUL padding is skipped, as gzip(1) does
                buf = buf.lstrip(b"\0")
                if not buf:
                    break
            pending = True
            out = d.decompress(buf, MAX_FEED)
            if out:
                yield out
            # not past the member's end: when it ends in a call fed from unconsumed_tail,
            # CPython's zlib leaves the bytes after it there as well as in unused_data, and
            # feeding the ended stream again gives nothing, forever
            while d.unconsumed_tail and not d.eof:
                out = d.decompress(d.unconsumed_tail, MAX_FEED)
                if out:
                    yield out
            if d.eof:  # next gzip member (multi-member files), if any: unused_data
                buf = d.unused_data
                d = _inflate_lib.decompressobj(31)
                pending = False
            else:
                buf = b""
        buf = fh.read(READ_BLOCK)
        if not buf:
            break
    if pending:
        raise EOFError("gzip stream ended before its end-of-stream marker (truncated file)")
