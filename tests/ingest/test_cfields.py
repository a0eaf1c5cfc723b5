"""The compiled article reader (ingest/_cfields.pyx) against the pure-Python reader.

For every ``PubmedArticle`` it reads, the compiled reader must give exactly the Record of
``ingest.fields._article`` (compared by ``repr``: field values and their types); where it
is not sure it returns None and the Python reader takes the record. Inputs: the fixtures,
freshly generated corpora, and records built by hypothesis from hostile pieces (inline
markup, CDATA, odd whitespace, odd identifiers, namespaces, comments, empty elements).
Skipped where the extension was not built (the pure-Python reader is then the only one).
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

import ingest.fields as fields_mod
from ingest.parse import _PARSER_OPTIONS, iter_items
from ingest.records import Record, SourceRef
from litpulse.app.demo.generate import generate_corpus

cfields = pytest.importorskip("ingest._cfields")

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
REF = SourceRef("file", "cfields")
PARSER = etree.XMLParser(**_PARSER_OPTIONS)
READER = cfields.ArticleReader(fields_mod, fields_mod.dates)


def _python(elem: Any) -> Record | None:
    try:
        return fields_mod._article(elem, REF)
    except Exception:  # noqa: BLE001 - quarantined by the Python reader
        return None


def _compare(elem: Any) -> bool:
    """Assert both readers agree on ``elem``; True if the compiled one read it."""
    got = READER.read(elem, REF)
    if got is None:
        return False
    want = _python(elem)
    assert want is not None, etree.tostring(elem)[:300]
    assert repr(got) == repr(want), etree.tostring(elem)[:300]
    return True


def _articles(data: bytes) -> Iterator[Any]:
    """Each well-formed ``PubmedArticle`` of a document, parsed on its own (no DTD)."""
    for m in re.finditer(rb"<PubmedArticle>.*?</PubmedArticle>", data, re.S):
        try:
            yield etree.fromstring(m.group(0), PARSER)
        except etree.XMLSyntaxError:
            continue


def test_compiled_reader_is_used_when_built() -> None:
    assert fields_mod.COMPILED


@pytest.mark.parametrize("name", ["pubmed_edge_cases.xml", "pubmed_generated_120.xml.gz"])
def test_fixtures_read_alike(name: str) -> None:
    raw = (FIXTURES / name).read_bytes()
    data = gzip.decompress(raw) if name.endswith(".gz") else raw
    read = [_compare(e) for e in _articles(data)]
    assert len(read) > 5
    # most go through the compiled reader (the edge cases: MathML and broken records not)
    assert sum(read) >= 0.6 * len(read)


@pytest.mark.parametrize("seed", [3, 11])
def test_generated_corpora_read_alike(tmp_path: Path, seed: int) -> None:
    generate_corpus(
        tmp_path, n_records=150, seed=seed, malformed_fraction=0.05, retract_fraction=0.05
    )
    (path,) = tmp_path.glob("*.xml.gz")
    read = [_compare(e) for e in _articles(gzip.decompress(path.read_bytes()))]
    assert sum(read) >= 0.9 * len(read) > 100  # the malformed ones: Python


def test_whole_file_items_are_those_of_the_python_reader(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = FIXTURES / "pubmed_generated_120.xml.gz"
    compiled = [repr(i) for i in iter_items(path, source_ref=REF)]
    monkeypatch.setattr(fields_mod, "_READER", None)
    python = [repr(i) for i in iter_items(path, source_ref=REF)]
    assert compiled == python


# --------------------------------------------------------------------------- hypothesis

_WORDS = st.sampled_from(
    [
        "alpha",
        "β-cell",
        "x",
        "",
        " ",
        "  ",
        "\n",
        "\t",
        "\u00a0",
        "\u2009",
        "a\u3000b",
        "&amp;",
        "&lt;",
        "&#945;",
        "<![CDATA[ c ]]>",
        "<![CDATA[]]>",
        "12",
        "Dé",
    ]
)
_INLINE = st.sampled_from(["i", "b", "sub", "sup", "u", "em", "bold", "span"])
_MATH = '<mml:math xmlns:mml="urn:m"><mml:mi>x</mml:mi></mml:math>'  # namespaced: Python


@st.composite
def _text(draw: st.DrawFn, depth: int = 0) -> str:
    parts = []
    for _ in range(draw(st.integers(0, 4))):
        if depth < 2 and draw(st.booleans()):
            tag = draw(_INLINE)
            parts.append(f"<{tag}>{draw(_text(depth + 1))}</{tag}>")
        else:
            parts.append(draw(_WORDS))
    if draw(st.integers(0, 9)) == 0:
        parts.append("<!-- c -->")
    return "".join(parts)


_IDS = st.sampled_from(
    [
        "1",
        "38000001",
        " 42 ",
        "0",
        "007",
        "2147483647",
        "2147483648",
        "99999999999",
        "x1",
        "١٢٣",
        "²",
        "",
        "12<i>3</i>",
    ]
)


def _opt(draw: st.DrawFn, xml: str) -> str:
    return xml if draw(st.booleans()) else ""


@st.composite
def _record(draw: st.DrawFn) -> bytes:
    t = lambda: draw(_text())  # noqa: E731 - short local helper
    version = draw(
        st.sampled_from(
            ["", ' Version="1"', ' Version="2"', ' Version="0"', ' Version="x"', ' Version=" 3 "']
        )
    )
    authors = "".join(
        f'<Author ValidYN="{draw(st.sampled_from(["Y", "N"]))}">'
        f"<LastName>{t()}</LastName><ForeName>{t()}</ForeName><Initials>{t()}</Initials>"
        + _opt(draw, f"<CollectiveName>{t()}</CollectiveName>")
        + _opt(draw, f'<Identifier Source="ORCID">{t()}</Identifier>')
        + f"<AffiliationInfo><Affiliation>{t()}</Affiliation></AffiliationInfo></Author>"
        for _ in range(draw(st.integers(0, 3)))
    )
    mesh = "".join(
        f'<MeshHeading><DescriptorName UI="D{i}" MajorTopicYN="{draw(st.sampled_from("YN"))}">'
        f'{t()}</DescriptorName><QualifierName MajorTopicYN="Y">{t()}</QualifierName>'
        "</MeshHeading>"
        for i in range(draw(st.integers(0, 2)))
    )
    labels = st.sampled_from(["", ' Label="L"', ' Label=""'])
    categories = st.sampled_from(["", ' NlmCategory="X"'])
    abstract = "".join(
        f"<AbstractText{draw(labels)}{draw(categories)}>{t()}</AbstractText>"
        for _ in range(draw(st.integers(0, 3)))
    )
    date = draw(
        st.sampled_from(
            [
                "<Year>2020</Year><Month>Feb</Month><Day>30</Day>",
                "<MedlineDate>1998 Dec-1999 Jan</MedlineDate>",
                "<Year>2001</Year><Season>Spring</Season>",
                "<Year> 2020 </Year><Month>13</Month>",
                "",
            ]
        )
    )
    ymd = draw(
        st.sampled_from(
            [
                "<Year>2024</Year><Month>02</Month><Day>29</Day>",
                "<Year>2023</Year><Month>Feb</Month><Day>29</Day>",
                "<Year>x</Year>",
                "",
            ]
        )
    )
    refs = "".join(
        f'<Reference><ArticleIdList><ArticleId IdType="{draw(st.sampled_from(["pubmed", "doi"]))}">'
        f"{draw(_IDS)}</ArticleId></ArticleIdList></Reference>"
        for _ in range(draw(st.integers(0, 3)))
    )
    cc = "".join(
        f'<CommentsCorrections RefType="{draw(st.sampled_from(["Cites", "RetractionIn", "X"]))}">'
        f"<PMID>{draw(_IDS)}</PMID></CommentsCorrections>"
        for _ in range(draw(st.integers(0, 2)))
    )
    xml = (
        f'<PubmedArticle><MedlineCitation Status="{draw(st.sampled_from(["MEDLINE", ""]))}">'
        f"<PMID{version}>{draw(_IDS)}</PMID>"
        f"<DateRevised>{ymd}</DateRevised>"
        + _opt(draw, f"<DateCompleted>{ymd}</DateCompleted>")
        + "<Article><Journal><JournalIssue>"
        f"<Volume>{t()}</Volume><Issue>{t()}</Issue><PubDate>{date}</PubDate></JournalIssue>"
        f"<Title>{t()}</Title><ISOAbbreviation>{t()}</ISOAbbreviation></Journal>"
        f"<ArticleTitle>{t()}{draw(st.sampled_from(['', '', '', _MATH]))}</ArticleTitle>"
        + _opt(draw, f"<VernacularTitle>{t()}</VernacularTitle>")
        + _opt(draw, f"<Pagination><MedlinePgn>{t()}</MedlinePgn></Pagination>")
        + _opt(
            draw,
            f'<ELocationID EIdType="doi" ValidYN="{draw(st.sampled_from("YN"))}">'
            f"{t()}</ELocationID>",
        )
        + _opt(draw, f"<Abstract>{abstract}</Abstract>")
        + _opt(draw, f'<AuthorList CompleteYN="Y">{authors}</AuthorList>')
        + f"<Language>{t()}</Language>"
        + f"<PublicationTypeList><PublicationType>{t()}</PublicationType>"
        + _opt(draw, "<PublicationType>Retracted Publication</PublicationType>")
        + "</PublicationTypeList>"
        + _opt(draw, f'<ArticleDate DateType="Electronic">{ymd}</ArticleDate>')
        + "</Article>"
        + _opt(draw, f"<MeshHeadingList>{mesh}</MeshHeadingList>")
        + _opt(draw, f'<KeywordList Owner="NOTNLM"><Keyword>{t()}</Keyword></KeywordList>')
        + _opt(draw, f"<CommentsCorrectionsList>{cc}</CommentsCorrectionsList>")
        + "</MedlineCitation><PubmedData><History>"
        f'<PubMedPubDate PubStatus="entrez">{ymd}</PubMedPubDate>'
        f'<PubMedPubDate PubStatus="pubmed">{ymd}</PubMedPubDate></History>'
        f'<ArticleIdList><ArticleId IdType="doi">{t()}</ArticleId>'
        f'<ArticleId IdType="pmc">{t()}</ArticleId></ArticleIdList>'
        + _opt(draw, f"<ReferenceList>{refs}</ReferenceList>")
        + "</PubmedData></PubmedArticle>"
    )
    return xml.encode()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_record())
def test_hostile_records_read_alike(xml: bytes) -> None:
    try:
        elem = etree.fromstring(xml, PARSER)
    except etree.XMLSyntaxError:
        return
    _compare(elem)
