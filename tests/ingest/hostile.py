"""Hostile PubMed XML inputs, built at test time (nothing large is committed).

Every builder returns bytes or writes a file in streaming fashion, so a "gzip bomb" of
hundreds of MiB never sits in memory: :func:`write_gzip` compresses an iterable of
blocks as it goes and :func:`blanks` yields the whitespace one block at a time.

Example:
    >>> from tests.ingest.hostile import article, corpus, document
    >>> data = document(corpus(3, {2: article(2, title="<b>unclosed")}))
    >>> data.count(b"<PubmedArticle>")
    3
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from litpulse.app.demo.pubmed_xml import DOCTYPE

__all__ = [
    "PROLOG",
    "article",
    "blanks",
    "corpus",
    "deep",
    "deletion",
    "document",
    "laughs_doctype",
    "write_gzip",
    "xxe_doctype",
]

#: The prolog NLM files start with (the DTD is named but must never be fetched).
PROLOG = b'<?xml version="1.0" encoding="UTF-8"?>\n' + DOCTYPE.encode() + b"\n"


def article(
    pmid: int | str,
    *,
    version: str | None = "1",
    title: str = "",
    abstract: str = "",
    refs: Sequence[str] = (),
    cites: Sequence[str] = (),
) -> bytes:
    """One ``PubmedArticle``; ``title`` and ``abstract`` are raw XML fragments.

    Args:
        pmid: The PMID text as written (may be hostile).
        version: The ``Version`` attribute as written, or None to leave it out.
        title: ArticleTitle content (default ``Title <pmid>.``).
        abstract: AbstractText content (default ``Abstract of <pmid>.``).
        refs: PMID texts of the ReferenceList.
        cites: PMID texts of ``CommentsCorrections RefType="Cites"``.
    """
    ver = f' Version="{version}"' if version is not None else ""
    refs_xml = "".join(
        f'<Reference><Citation>c</Citation><ArticleIdList><ArticleId IdType="pubmed">{r}'
        "</ArticleId></ArticleIdList></Reference>"
        for r in refs
    )
    cites_xml = "".join(
        f'<CommentsCorrections RefType="Cites"><RefSource>s</RefSource><PMID Version="1">{c}'
        "</PMID></CommentsCorrections>"
        for c in cites
    )
    return (
        f'<PubmedArticle><MedlineCitation Status="MEDLINE" Owner="NLM"><PMID{ver}>{pmid}</PMID>\n'
        "<Article><Journal><JournalIssue><PubDate><Year>2024</Year><Month>Mar</Month></PubDate>"
        "</JournalIssue><Title>J Test</Title></Journal>\n"
        f"<ArticleTitle>{title or f'Title {pmid}.'}</ArticleTitle>\n"
        f"<Abstract><AbstractText>{abstract or f'Abstract of {pmid}.'}</AbstractText></Abstract>"
        "\n<Language>eng</Language></Article>"
        + (f"<CommentsCorrectionsList>{cites_xml}</CommentsCorrectionsList>" if cites else "")
        + "</MedlineCitation>\n"
        f'<PubmedData><ArticleIdList><ArticleId IdType="pubmed">{pmid}</ArticleId></ArticleIdList>'
        + (f"<ReferenceList>{refs_xml}</ReferenceList>" if refs else "")
        + "</PubmedData></PubmedArticle>\n"
    ).encode()


def deletion(*pmids: str) -> bytes:
    """One ``DeleteCitation`` block naming the given PMID texts."""
    body = "".join(f'<PMID Version="1">{p}</PMID>' for p in pmids)
    return f"<DeleteCitation>{body}</DeleteCitation>\n".encode()


def corpus(n: int, replace: Mapping[int, bytes] | None = None) -> list[bytes]:
    """Articles with PMIDs 1..n, where ``replace[i]`` stands in for article ``i``."""
    replace = replace or {}
    return [replace[i] if i in replace else article(i) for i in range(1, n + 1)]


def document(items: Iterable[bytes], *, prolog: bytes = PROLOG) -> bytes:
    """A whole ``PubmedArticleSet`` document around the items."""
    return prolog + b"<PubmedArticleSet>\n" + b"".join(items) + b"</PubmedArticleSet>\n"


def stream(items: Iterable[bytes], *, prolog: bytes = PROLOG) -> Iterator[bytes]:
    """:func:`document` as blocks, for :func:`write_gzip` (items may be generators)."""
    yield prolog + b"<PubmedArticleSet>\n"
    yield from items
    yield b"</PubmedArticleSet>\n"


def blanks(total: int, block: int = 1 << 20) -> Iterator[bytes]:
    """``total`` bytes of whitespace (spaces and newlines), one block at a time."""
    line = b" " * 79 + b"\n"
    chunk = line * (block // len(line))
    left = total
    while left > 0:
        out = chunk if left >= len(chunk) else chunk[:left]
        left -= len(out)
        yield out


def write_gzip(path: Path, blocks: Iterable[bytes], level: int = 6) -> Path:
    """Gzip-compress ``blocks`` into ``path`` without holding them in memory."""
    comp = zlib.compressobj(level, zlib.DEFLATED, 31)
    with open(path, "wb") as fh:
        for block in blocks:
            fh.write(comp.compress(block))
        fh.write(comp.flush())
    return path


def xxe_doctype(secret: Path) -> bytes:
    """A prolog whose internal subset declares external entities on ``secret``."""
    uri = secret.resolve().as_uri()
    return (
        b'<?xml version="1.0" encoding="UTF-8"?>\n'
        b"<!DOCTYPE PubmedArticleSet [\n"
        + f'  <!ENTITY xxe SYSTEM "{uri}">\n'.encode()
        + f'  <!ENTITY xxp SYSTEM "{secret.resolve()}">\n'.encode()
        + b'  <!ENTITY pwd SYSTEM "file:///etc/passwd">\n'
        + f'  <!ENTITY % dtd SYSTEM "{uri}">\n'.encode()
        + b'  <!ENTITY net SYSTEM "http://127.0.0.1:9/x.xml">\n'
        + b"]>\n"
    )


def laughs_doctype(levels: int = 10, fanout: int = 10) -> bytes:
    """The "billion laughs" internal subset: ``&lol<levels-1>;`` expands to 10^levels."""
    decls = ['  <!ENTITY lol0 "lol">']
    for i in range(1, levels):
        decls.append(f'  <!ENTITY lol{i} "{f"&lol{i - 1};" * fanout}">')
    return (
        b'<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE PubmedArticleSet [\n'
        + "\n".join(decls).encode()
        + b"\n]>\n"
    )


def deep(levels: int) -> str:
    """``levels`` nested ``<i>`` elements (an XML fragment for a title or abstract)."""
    return "<i>" * levels + "deep" + "</i>" * levels
