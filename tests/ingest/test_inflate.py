"""The parse's gzip inflater (ISA-L where installed) against zlib, byte for byte and error
for error, and the parse of damaged gzip through it."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import pytest

from ingest import inflate
from ingest.parse import iter_items
from ingest.records import QuarantineEntry, Record

PAYLOAD = b"".join(
    b"<PubmedArticle><MedlineCitation><PMID Version='1'>%d</PMID></MedlineCitation>"
    b"</PubmedArticle>\n" % i
    for i in range(3000)
)


def _inflate(make: object, data: bytes, feed: int = 4096, out: int = 1000) -> tuple[bytes, bool]:
    """Everything ``make()``'s decompressor gives for ``data`` fed in blocks, output capped
    per call, drained at the end of the input, as ``ingest.parse`` reads a file, and
    whether it saw the member's end."""
    d = make()  # type: ignore[operator]
    got = bytearray()
    for i in range(0, len(data), feed):
        got += d.decompress(data[i : i + feed], out)
        while d.unconsumed_tail:
            got += d.decompress(d.unconsumed_tail, out)
        if d.eof:
            break
    while not d.eof:  # the input ended first: what the inflater still holds
        more = d.decompress(b"", out)
        if not more:
            break
        got += more
    return bytes(got), d.eof


def _zlib() -> object:
    return zlib.decompressobj(31)


def test_the_engine_is_isal_where_it_is_installed() -> None:
    try:
        import isal  # noqa: F401
    except ImportError:  # pragma: no cover - isal is a dependency
        assert inflate.ENGINE == "zlib"
    else:
        assert inflate.ENGINE == "isal"


@pytest.mark.parametrize("level", [1, 6, 9])
def test_same_bytes_as_zlib(level: int) -> None:
    data = gzip.compress(PAYLOAD, compresslevel=level)
    assert _inflate(inflate.decompressor, data) == _inflate(_zlib, data) == (PAYLOAD, True)


def test_a_second_member_is_left_unused_as_zlib_leaves_it() -> None:
    data = gzip.compress(PAYLOAD) + gzip.compress(b"second")
    d, z = inflate.decompressor(), zlib.decompressobj(31)
    assert d.decompress(data) == z.decompress(data) == PAYLOAD
    assert d.eof and z.eof
    assert d.unused_data == z.unused_data == gzip.compress(b"second")


@pytest.mark.parametrize("out", [1000, 1 << 20])
@pytest.mark.parametrize("cut", [0.1, 0.5, 0.9, 0.999])
def test_a_truncated_stream_gives_what_zlib_gives_but_its_last_bytes(cut: float, out: int) -> None:
    data = gzip.compress(PAYLOAD)
    head = data[: int(len(data) * cut)]
    got, eof = _inflate(inflate.decompressor, head, out=out)
    want, zeof = _inflate(_zlib, head, out=out)
    assert not eof and not zeof
    # ISA-L may keep the last few bits of a cut stream undecoded: a prefix of zlib's bytes,
    # a few at most (the last record of a truncated file may be quarantined as cut off)
    assert want.startswith(got) and len(want) - len(got) <= 1024
    assert 0 < len(got) <= len(PAYLOAD)  # 0.999: the trailer is cut, every byte is in


@pytest.mark.parametrize("where", ["block", "crc", "length"])
def test_damage_raises_one_of_the_inflate_errors(where: str) -> None:
    data = bytearray(gzip.compress(PAYLOAD))
    at = {"block": 40, "crc": len(data) - 8, "length": len(data) - 1}[where]
    data[at] ^= 0xFF
    with pytest.raises(zlib.error):
        _inflate(_zlib, bytes(data))
    with pytest.raises(inflate.INFLATE_ERRORS):
        _inflate(inflate.decompressor, bytes(data))


def _article(pmid: int) -> bytes:
    return (
        b"<PubmedArticle><MedlineCitation Status='MEDLINE' Owner='NLM'>"
        b"<PMID Version='1'>%d</PMID><Article><ArticleTitle>T %d</ArticleTitle></Article>"
        b"</MedlineCitation></PubmedArticle>\n" % (pmid, pmid)
    )


@pytest.mark.parametrize("where", ["crc", "middle"])
def test_a_broken_gzip_file_parses_as_it_does_with_zlib(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    xml = (
        b"<?xml version='1.0'?>\n<PubmedArticleSet>\n"
        + b"".join(_article(p) for p in range(1, 4001))
        + b"</PubmedArticleSet>\n"
    )
    data = bytearray(gzip.compress(xml))
    data[len(data) - 8 if where == "crc" else len(data) // 2] ^= 0xFF
    path = tmp_path / "broken.xml.gz"
    path.write_bytes(bytes(data))

    def parse() -> tuple[list[int], list[tuple[int | None, str]]]:
        items = list(iter_items(path))
        entries = [i for i in items if type(i) is QuarantineEntry]
        return [i.pmid for i in items if type(i) is Record], [
            (e.line, e.reason.split(": ")[0]) for e in entries
        ]

    got = parse()
    monkeypatch.setattr(inflate, "_engine", zlib)
    assert got == parse()
    pmids, entries = got
    assert pmids == list(range(1, len(pmids) + 1)) and len(pmids) > 1000
    # the stream's end is unreadable (a damaged block may first inflate to garbled records)
    assert entries[-1][1] == "unreadable input"
    assert where == "middle" or len(entries) == 1
