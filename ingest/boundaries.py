"""Cutting a decompressed PubMed XML byte stream at record boundaries, in bounded memory.

:func:`pieces` finds record start tags with ``bytes.find`` (no regex over the records'
bytes; comments and CDATA are not seen, see :func:`open_markup`) and yields each record
from its start tag to its end tag (or to the next record's start tag when its end tag is
missing), the runs of bytes between records (bounded by :data:`MAX_GAP`), records over
the size cap (their first :data:`MAX_RAW_TAIL` bytes) and the end of the input.
:func:`split_records` re-cuts one batch record by record when it is not well-formed,
seeing comments, CDATA sections and PIs. :mod:`ingest.parse` parses what comes out.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Any

__all__ = [
    "MAX_GAP",
    "MAX_RAW_TAIL",
    "Piece",
    "HOW_ENDED",
    "open_markup",
    "pieces",
    "split_records",
]

#: Most bytes of a broken, oversize or unexpected element kept in its quarantine entry.
MAX_RAW_TAIL = 1 << 16
#: Longest run of bytes between two records kept as it is; a longer run is counted and
#: dropped (whitespace) or quarantined by its first :data:`MAX_RAW_TAIL` bytes.
MAX_GAP = 1 << 16


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
Piece = tuple[str, Any, int]


def pieces(first: bytes, chunks: Iterator[bytes], line: int, max_record: int) -> Iterator[Piece]:
    """Cut the decompressed stream at record boundaries, in bounded memory.

    Start tags are found with ``bytes.find`` (no regex over the records' bytes); a record
    is ``<Tag ...>`` to ``</Tag>``, or to the next record's start tag when its end tag is
    missing. At most ``max_record`` bytes of one record and :data:`MAX_GAP` bytes between
    two records are ever held: past that, only a bounded prefix is kept while the rest is
    counted and dropped.

    Longer than the usual 80 lines on purpose: one byte-level state machine whose reader
    closure shares the buffer and position with the loop; split apart, that state would
    have to travel through every call.
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
            c, after = _find_end(buf, closer, search)
            if c >= 0:
                end = after
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
            # an end tag's name read up to the buffer's end (blanks may follow) is kept
            search = after if after >= 0 else max(s + 1, len(buf) - len(closer) + 1)
            open_from = max(s + 1, len(buf) - _KEEP)
            if s:
                del buf[:s]
                search, open_from, s = search - s, open_from - s, 0
            read()
        if ended == "closed" and end - s > max_record:
            # the first end tag in the buffer may be a later record's (this one's is
            # missing): over the cap, a record start before it ends this one there
            o = _next_start(buf, s + 1, c)
            if o >= 0:
                end, ended = o, "next"
        if end < 0 or end - s > max_record:
            # -- over the cap: keep the start, drop the rest up to its end
            kept = bytes(buf[s : min(len(buf) if end < 0 else end, s + MAX_RAW_TAIL)])
            lines = size = 0
            how = HOW_ENDED[ended]
            while end < 0:
                cut = max(s, len(buf) - _KEEP)
                lines += buf.count(b"\n", s, cut)
                size += cut - s
                del buf[:cut]
                s = 0
                if not read():
                    end = len(buf)
                    how = HOW_ENDED["eof"]
                    break
                c, after = _find_end(buf, closer, 0)
                o = _next_start(buf, 1, len(buf))
                if c >= 0 and (o < 0 or c < o):
                    end = after
                    how = ""
                elif o >= 0:
                    end = o
                    how = HOW_ENDED["next"]
            lines += buf.count(b"\n", s, end)
            size += end - s
            yield ("oversize", (kept, size, how), line)
            line += lines
            pos = end
            if how == HOW_ENDED["eof"]:
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


HOW_ENDED = {
    "closed": "",
    "next": "without its end tag",
    "eof": "cut short by the end of the input",
}
#: Bytes kept from one read to the next so that a tag cut in two is still found.
_KEEP = 24
_START_TAGS = (b"<PubmedArticle", b"<PubmedBookArticle", b"<DeleteCitation")
#: End tag of a record (up to its name: blanks may come before ``>``) by the 8th byte of
#: its start tag (``<PubmedA``, ``<PubmedB``...).
_END_TAGS = {
    ord("A"): b"</PubmedArticle",
    ord("B"): b"</PubmedBookArticle",
    ord("C"): b"</DeleteCitation",
}
_AFTER_NAME = frozenset(b" \t\r\n/>")
_BLANKS = frozenset(b" \t\r\n")
_GT = ord(">")


def _find_end(buf: bytes | bytearray, closer: bytes, start: int) -> tuple[int, int]:
    """The first end tag ``closer`` (``</Name``) + blanks + ``>`` from ``start`` (XML's
    ``ETag ::= '</' Name S? '>'``): ``(its index, the index after its '>')``; ``(-1, i)``
    when the one at ``i`` is read only up to the end of ``buf`` (more bytes may close it);
    ``(-1, -1)`` when there is none. ``</PubmedArticleSet>`` is not ``</PubmedArticle``."""
    i = buf.find(closer, start)
    while i >= 0:
        j = i + len(closer)
        while j < len(buf) and buf[j] in _BLANKS:
            j += 1
        if j >= len(buf):
            return -1, i
        if buf[j] == _GT:
            return i, j + 1
        i = buf.find(closer, j)
    return -1, -1


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
        i = _find_tag(buf, tag, start, end if best < 0 else best, end)
        if i >= 0:
            best = i
    return best


def _find_tag(buf: bytes | bytearray, tag: bytes, start: int, stop: int, end: int) -> int:
    """Index of the first start tag ``tag`` (its name then a blank, ``/`` or ``>``)
    beginning within ``buf[start:stop]``, else -1; one whose name runs up to ``end`` is
    not counted yet."""
    i = buf.find(tag, start, stop)
    while i >= 0:
        j = i + len(tag)
        if j >= end:
            return -1
        if buf[j] in _AFTER_NAME:
            return i
        i = buf.find(tag, j, stop)
    return -1


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


#: Markup whose text is not markup: an opener and its terminator.
_MARKUP = ((b"<!--", b"-->"), (b"<![CDATA[", b"]]>"), (b"<?", b"?>"))


def _next_markup(data: bytes, start: int, stop: int) -> tuple[int, int, bytes]:
    """The first comment, CDATA section or PI opening in ``data[start:stop]``: its index,
    the index after its opener and its terminator; ``(-1, -1, b"")`` when there is none."""
    best, body, term = -1, -1, b""
    for opener, closer in _MARKUP:
        i = data.find(opener, start, stop if best < 0 else best)
        if i >= 0:
            best, body, term = i, i + len(opener), closer
    return best, body, term


def open_markup(data: bytes, inside: bytes | None = None) -> bytes | None:
    """The terminator of a comment, CDATA section or PI that ``data`` ends inside (None
    when it ends outside); ``inside``: the terminator ``data`` starts inside of. The
    cutter (:func:`pieces`) does not see such markup, so a piece may end at a record tag
    written in a comment or CDATA section: :mod:`ingest.parse` never closes a batch
    there."""
    if inside is None and b"!" not in data and b"?" not in data:  # memchr: the usual case
        return None
    pos = 0
    term = inside
    while True:
        if term is not None:
            c = data.find(term, pos)
            if c < 0:
                return term
            pos = c + len(term)
        o, pos, term = _next_markup(data, pos, len(data))
        if o < 0:
            return None


def split_records(data: bytes, line: int) -> Iterator[Piece]:
    """One batch that is not well-formed, cut again: ``("item", bytes, line)`` for each
    record (start tag to end tag, or to the next record's start tag when its end tag is
    missing, or to the end of ``data``) and ``("gap", bytes, line)`` for what lies between.

    Unlike :func:`pieces` (fast, streaming, markup-blind), record tags written inside
    comments, CDATA sections and PIs are text here, so a commented-out
    ``<DeleteCitation>`` stays in its gap (a comment) and a record holding
    ``<![CDATA[</PubmedArticle>]]>`` is one item. An opener whose terminator ``data`` does
    not hold (``values <? 0.05``, an unclosed ``<!--``) is taken for text: its record is
    cut at its own end tag and quarantined alone, not run on over every record after it.
    """
    pos, n = 0, len(data)
    seen = _Seen(data)
    while pos < n:
        start = _scan(seen, pos, None)[0]
        if start < 0:
            start = n
        if start > pos:
            gap = data[pos:start]
            yield ("gap", gap, line)
            line += gap.count(b"\n")
        if start >= n:
            return
        closer = _END_TAGS[data[start + 7]]
        _, end = _scan(seen, start + 1, closer)
        sub = data[start:end]
        yield ("item", sub, line)
        line += sub.count(b"\n")
        pos = end


class _Seen:
    """What :func:`split_records` has found in its data, from positions that only grow:
    the next start tag of each kind, the next end tag of each kind and the terminators
    found missing. Each is looked for again only once the scan has passed it, so a batch
    is cut in linear time however its records are broken (a run of ``DeleteCitation``
    blocks with no ``<PubmedArticle`` after them, every record holding an unclosed
    ``<?``), where looking afresh from each record scanned the rest of the batch each
    time."""

    __slots__ = ("data", "starts", "ends", "absent")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.starts: dict[bytes, int] = {}
        self.ends: dict[bytes, tuple[int, int]] = {}
        self.absent: set[bytes] = set()

    def start(self, pos: int) -> int:
        """:func:`_find_start` from ``pos`` to the end."""
        best = -1
        for tag in _START_TAGS:
            i = self.starts.get(tag, -2)
            if i == -2 or 0 <= i < pos:
                n = len(self.data)
                i = self.starts[tag] = _find_tag(self.data, tag, pos, n, n)
            if i >= 0 and (best < 0 or i < best):
                best = i
        return best

    def end(self, closer: bytes, pos: int) -> tuple[int, int]:
        """:func:`_find_end` from ``pos``."""
        c, after = self.ends.get(closer, (-2, -2))
        if c == -2 or 0 <= c < pos or (c < 0 and 0 <= after < pos):
            c, after = self.ends[closer] = _find_end(self.data, closer, pos)
        return c, after


def _scan(seen: _Seen, pos: int, closer: bytes | None) -> tuple[int, int]:
    """From ``pos``, outside comments, CDATA sections and PIs: the first record start tag,
    or (``closer`` given) end tag ``closer``, whichever comes first: ``(its index, the
    index after it)`` for an end tag, ``(its index, its index)`` for a start tag;
    ``(-1, len(data))`` when there is neither. An opener whose terminator is not in the
    rest of the data is text."""
    data = seen.data
    n = len(data)
    while True:
        start = seen.start(pos)
        stop = start if start >= 0 else n
        c, after = seen.end(closer, pos) if closer is not None else (-1, -1)
        if c >= stop:
            c = -1
        if c >= 0:
            stop = c
        o, body, term = _next_markup(data, pos, stop)
        if o < 0:
            if c >= 0:
                return c, after
            return (start, start) if start >= 0 else (-1, n)
        t = -1 if term in seen.absent else data.find(term, body)
        if t < 0:  # never closed: not markup (its record is malformed, and only it)
            seen.absent.add(term)
            pos = body
            continue
        pos = t + len(term)
