"""Tests of the deterministic PubMed corpus generator (litpulse.app.demo.generate)."""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
from collections.abc import Sequence
from pathlib import Path

import pytest

from ingest.parse import iter_items, parse_bytes
from ingest.records import (
    Deletion,
    Item,
    QuarantineEntry,
    Record,
    SourceRef,
    nlm_sequence,
)
from litpulse.app.demo.generate import (
    DRIFT_TERMS,
    POPULATIONS,
    TOPICS,
    ArticleSpec,
    Concept,
    CorpusConfig,
    CorpusManifest,
    compounds,
    expected_title,
    generate_corpus,
    iter_file_plan,
    iter_generated_records,
    live_specs,
    render_article_xml,
    write_md5,
)
from litpulse.core.errors import ConfigError

OPTIONS = {
    "n_records": 400,
    "n_files": 3,
    "seed": 11,
    "revise_fraction": 0.1,
    "delete_fraction": 0.05,
    "malformed_fraction": 0.02,
    "book_fraction": 0.03,
    "retract_fraction": 0.02,
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> CorpusManifest:
    return generate_corpus(tmp_path_factory.mktemp("corpus"), **OPTIONS)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def parsed(corpus: CorpusManifest) -> list[Item]:
    return [item for path in corpus.files for item in iter_items(path)]


def _apply(items: list[Item]) -> tuple[dict[int, Record], set[int], int]:
    """A minimal store: newest record per PMID wins, deletions tombstone."""
    live: dict[int, Record] = {}
    deleted: set[int] = set()
    quarantined = 0
    for item in items:
        if isinstance(item, Record):
            old = live.get(item.pmid)
            if old is None or item.order_key() >= old.order_key():
                live[item.pmid] = item
        elif isinstance(item, Deletion):
            live.pop(item.pmid, None)
            deleted.add(item.pmid)
        else:
            quarantined += 1
    return live, deleted, quarantined


def test_files_are_named_in_number_order(corpus: CorpusManifest) -> None:
    assert [p.name for p in corpus.files] == [
        "pubmed26n0001.xml.gz",
        "pubmed26n0002.xml.gz",
        "pubmed26n0003.xml.gz",
    ]
    head = gzip.open(corpus.files[0], "rb").read(300)
    assert head.startswith(b'<?xml version="1.0" encoding="utf-8"?>\n<!DOCTYPE PubmedArticleSet')
    assert b"pubmed_250101.dtd" in head


def test_parsing_the_corpus_gives_exactly_the_manifest(
    corpus: CorpusManifest, parsed: list[Item]
) -> None:
    live, deleted, quarantined = _apply(parsed)
    assert len(parsed) == corpus.n_items
    assert set(live) == corpus.live_pmids
    assert deleted == corpus.deleted_pmids
    assert quarantined == corpus.quarantined == round(0.02 * 400)
    assert {p: r.version for p, r in live.items()} == dict(corpus.versions)
    assert len(corpus.live_pmids) + len(corpus.deleted_pmids) + corpus.quarantined == 400
    for pmid, title in corpus.revised_titles.items():
        assert live[pmid].title == title
        assert title.endswith("(corrected).")
    assert {p for p, r in live.items() if r.is_book} == corpus.books
    assert {p for p, r in live.items() if r.is_retracted} == corpus.retracted
    assert corpus.books and corpus.retracted
    for rec in live.values():
        assert rec.entrez_date == corpus.entrez_dates[rec.pmid]
        assert rec.pubmed_date == rec.entrez_date
        assert rec.source.sequence in {nlm_sequence(26, n) for n in (1, 2, 3)}
    cited: dict[int, int] = {}
    for rec in live.values():
        for p in rec.references:
            if p in live and p != rec.pmid:
                cited[p] = cited.get(p, 0) + 1
    assert cited == dict(corpus.cited_by)
    assert sum(cited.values()) > 100  # in-corpus citations exist


def test_revisions_and_deletions_come_after_the_original(parsed: list[Item]) -> None:
    seen: dict[int, int] = {}
    for pos, item in enumerate(parsed):
        if isinstance(item, Record):
            if item.pmid in seen:
                first = parsed[seen[item.pmid]]
                assert isinstance(first, Record)
                assert item.order_key()[:2] > first.order_key()[:2]
                assert item.title != first.title
            else:
                seen[item.pmid] = pos
        elif isinstance(item, Deletion):
            assert item.pmid in seen
    versions = {r.version for r in parsed if isinstance(r, Record)}
    assert versions == {1, 2}


def test_quarantined_records_name_their_problem(parsed: list[Item]) -> None:
    reasons = {i.reason for i in parsed if isinstance(i, QuarantineEntry)}
    assert {r.split(" '")[0] for r in reasons} == {
        "MedlineCitation without PMID",
        "MedlineCitation with non-integer PMID",
        "PubmedArticle without MedlineCitation",
    }


def test_records_are_realistic(parsed: list[Item]) -> None:
    records = [i for i in parsed if isinstance(i, Record)]
    articles = [r for r in records if not r.is_book]
    words = [len(r.abstract.split()) for r in records]
    assert 25 <= min(words) and max(words) <= 200  # short abstracts: a demo embeds quickly
    assert any(
        len(r.abstract_sections) == 4 and r.abstract_sections[0].label == "BACKGROUND"
        for r in records
    )
    assert any(
        len(r.abstract_sections) == 2 and r.abstract_sections[0].label is None for r in records
    )
    texts = " ".join(r.title + " " + r.abstract for r in records)
    assert "H2O2" in texts and "in vivo" in texts and "α-subunit" in texts and "<" in texts
    assert {r.pub_date.season for r in articles} >= {None, "Winter"}  # a January window
    assert any("-" in r.pub_date.raw for r in articles)  # MedlineDate ranges
    assert any(r.pub_date.raw.split()[-1] in ("January", "February") for r in articles)
    assert any(a.collective_name for r in records for a in r.authors)
    assert any(a.orcid for r in records for a in r.authors)
    assert any(m.major for r in articles for m in r.mesh)
    assert any(r.pmcid for r in records) and any(r.doi for r in records)
    assert any(r.article_date for r in records)
    assert any(r.vernacular_title for r in records)
    assert {r.status for r in articles} >= {"MEDLINE", "In-Process"}
    assert all(r.title and r.journal and r.authors for r in records)


def test_same_seed_same_bytes(tmp_path: Path, corpus: CorpusManifest) -> None:
    again = generate_corpus(tmp_path / "again", **OPTIONS)  # type: ignore[arg-type]
    for a, b in zip(corpus.files, again.files, strict=True):
        assert a.read_bytes() == b.read_bytes()
    other = generate_corpus(tmp_path / "other", **{**OPTIONS, "seed": 12})  # type: ignore[arg-type]
    assert other.files[0].read_bytes() != corpus.files[0].read_bytes()
    assert again.live_pmids == corpus.live_pmids and again.versions == corpus.versions


def test_specs_render_the_file_contents(corpus: CorpusManifest) -> None:
    specs = list(iter_generated_records(corpus.config))
    assert len(specs) == corpus.n_items - len(corpus.deleted_pmids)
    body = b"".join(gzip.open(p, "rb").read() for p in corpus.files).decode()
    pos = 0
    for spec in specs:
        xml = render_article_xml(spec)
        found = body.find(xml, pos)
        assert found >= 0, spec
        pos = found + len(xml)
    final: dict[int, ArticleSpec] = {}
    for spec in specs:
        if not spec.malformed:
            final[spec.pmid] = spec
    for pmid in corpus.live_pmids:
        spec = final[pmid]
        (rec,) = parse_bytes(
            f"<PubmedArticleSet>{render_article_xml(spec)}</PubmedArticleSet>".encode(),
            source_ref=SourceRef("generated", "emulator"),
        )
        assert isinstance(rec, Record)
        assert (rec.pmid, rec.version, rec.title) == (pmid, spec.version, expected_title(spec))
        assert rec.entrez_date == spec.entrez_date
        assert rec.references == spec.references
        assert corpus.topics[pmid] == spec.topic


def test_file_plan_lists_deletions_last(corpus: CorpusManifest) -> None:
    plan = list(iter_file_plan(corpus.config))
    assert [f for f, _ in plan] == [0, 1, 2]
    deletions = [p for _, items in plan for p in items if isinstance(p, int)]
    assert set(deletions) == corpus.deleted_pmids
    for _, items in plan:
        kinds = [isinstance(i, int) for i in items]
        assert kinds == sorted(kinds)


def test_drift_plants_late_topics_and_terms(tmp_path: Path) -> None:
    m = generate_corpus(tmp_path, n_records=300, seed=5, drift=True, days=90)
    cutoff = m.config.drift_cutoff
    assert cutoff == dt.date(2024, 3, 1)
    emerging = set(m.drift_topics)
    assert emerging == {t.name for t in TOPICS if t.emerging}
    late = [p for p, d in m.entrez_dates.items() if d >= cutoff]
    early = [p for p, d in m.entrez_dates.items() if d < cutoff]
    assert not any(m.topics[p] in emerging for p in early)
    assert any(m.topics[p] in emerging for p in late)
    records = [i for i in iter_items(m.files[0]) if isinstance(i, Record)]
    with_terms = {r.pmid for r in records if any(t in r.abstract for t in DRIFT_TERMS)}
    assert with_terms and all(m.entrez_dates[p] >= cutoff for p in with_terms)
    plain = generate_corpus(tmp_path / "plain", n_records=300, seed=5, days=90)
    assert plain.drift_topics == ()
    assert not set(plain.topics.values()) & emerging


def test_plain_output_md5_and_file_numbers(tmp_path: Path) -> None:
    m = generate_corpus(
        tmp_path, n_records=30, n_files=2, gz=False, md5=True, first_file_number=1280
    )
    assert [p.name for p in m.files] == ["pubmed26n1280.xml", "pubmed26n1281.xml"]
    for p in m.files:
        side = p.with_name(p.name + ".md5")
        digest = hashlib.md5(p.read_bytes(), usedforsecurity=False).hexdigest()
        assert side.read_text() == f"MD5({p.name})= {digest}\n"
    items = [i for p in m.files for i in iter_items(p)]
    assert {i.source.sequence for i in items} == {nlm_sequence(26, 1280), nlm_sequence(26, 1281)}
    assert write_md5(m.files[0]) == m.files[0].with_name("pubmed26n1280.xml.md5")


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"n_records": 0}, "n_records"),
        ({"n_records": 5, "n_files": 6}, "n_files"),
        ({"revise_fraction": 1.5}, "revise_fraction"),
        ({"delete_fraction": -0.1}, "delete_fraction"),
        ({"days": 0}, "days"),
        ({"cite_window": 0}, "cite_window"),
    ],
)
def test_config_validation_names_the_field(options: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=f"`{field}`"):
        CorpusConfig(**options)  # type: ignore[arg-type]


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from litpulse.app.cli import main

    args = ["demo", "generate", str(tmp_path), "--records", "20", "--files", "2", "--seed", "3"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "generated corpus (not real literature): 2 files" in out
    assert "pubmed26n0002.xml.gz" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "GENERATED.txt",
        "pubmed26n0001.xml.gz",
        "pubmed26n0002.xml.gz",
    ]
    assert "not real literature" in (tmp_path / "GENERATED.txt").read_text()


def test_live_specs_match_the_manifest(corpus: CorpusManifest) -> None:
    final = live_specs(corpus.config)
    assert set(final) == corpus.live_pmids
    assert {p: s.version for p, s in final.items()} == dict(corpus.versions)
    assert all(final[p].entrez_date == corpus.entrez_dates[p] for p in final)


# ------------------------------------------------------------- learnable like literature

DEMO = {
    "n_records": 1200,
    "n_files": 2,
    "seed": 3,
    "drift": True,
    "days": 3 * 365,
    "start_date": dt.date(2023, 1, 1),
}


@pytest.fixture(scope="module")
def demo(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[CorpusManifest, dict[int, ArticleSpec], dict[int, Record]]:
    """The demo's kind of corpus: three years, drift on (as ``litpulse demo generate``)."""
    m = generate_corpus(tmp_path_factory.mktemp("demo"), **DEMO)  # type: ignore[arg-type]
    specs = {p: s for p, s in live_specs(m.config).items() if not s.is_book}
    live, _, _ = _apply([i for p in m.files for i in iter_items(p)])
    return m, specs, live


def test_titles_and_abstracts_say_the_same_in_other_words(
    demo: tuple[CorpusManifest, dict[int, ArticleSpec], dict[int, Record]],
) -> None:
    _, specs, live = demo
    unshared = abbreviations = 0
    for pmid, spec in specs.items():
        title, abstract = live[pmid].title.lower(), live[pmid].abstract.lower()
        x_t, y_t, p_t = (f.lower() for f in spec.title_forms)
        x_a, y_a, p_a = (f.lower() for f in spec.abstract_forms)
        assert (x_t, y_t, p_t) != (x_a, y_a, p_a) and y_t != y_a and p_t != p_a
        assert x_t in title and y_t in title
        assert y_a in abstract and p_a in abstract
        if spec.compound:  # a code in the title, the generic name and mechanism below
            assert x_t == spec.compound.lower() and x_a.split(",")[0] in abstract
        else:
            assert x_a in abstract
        if x_t not in abstract and y_t not in abstract:
            unshared += 1
        if spec.title_forms[1].isupper() and y_a == spec.outcome.lower():
            abbreviations += 1  # e.g. HFpEF above, heart failure with preserved ... below
    assert unshared >= 0.6 * len(specs)
    assert abbreviations >= 20
    assert sum(1 for s in specs.values() if s.compound) >= 0.15 * len(specs)


def test_topics_and_compounds_drift_over_the_years(
    demo: tuple[CorpusManifest, dict[int, ArticleSpec], dict[int, Record]],
) -> None:
    m, specs, _ = demo
    by_year: dict[int, list[ArticleSpec]] = {}
    for spec in specs.values():
        by_year.setdefault(spec.entrez_date.year, []).append(spec)
    first, last = by_year[2023], by_year[2025]
    emerging = {t.name for t in TOPICS if t.emerging}
    assert not {s.topic for s in first} & emerging and {s.topic for s in last} & emerging

    def shares(group: list[ArticleSpec]) -> dict[str, float]:
        stable = [s for s in group if s.topic not in emerging]
        return {t.name: sum(s.topic == t.name for s in stable) / len(stable) for t in TOPICS}

    a, b = shares(first), shares(last)
    assert sum(abs(a[t] - b[t]) for t in a) / 2 > 0.1  # the mix of stable topics moved too
    known = {c.code: c for c in compounds(m.config.seed)}
    seen_first: dict[str, dt.date] = {}
    for spec in sorted(specs.values(), key=lambda s: s.entrez_date):
        if spec.compound:
            seen_first.setdefault(spec.compound, spec.entrez_date)
    for code, day in seen_first.items():  # no compound before its introduction
        assert (day - m.config.start_date).days >= known[code].intro * m.config.days - 1
    new_late = {s.compound for s in last if s.compound} - {s.compound for s in first}
    assert len(new_late) >= 5


def test_articles_cite_related_earlier_articles(
    demo: tuple[CorpusManifest, dict[int, ArticleSpec], dict[int, Record]],
) -> None:
    _, specs, live = demo
    links = related = 0
    for pmid, spec in specs.items():
        assert live[pmid].references == spec.references
        for cited in spec.references:
            other = specs.get(cited)
            if other is None:
                continue  # outside the corpus, a book, or deleted
            links += 1
            assert other.index < spec.index and other.topic == spec.topic
            related += other.exposure == spec.exposure or other.outcome == spec.outcome
    assert links >= len(specs)
    assert related >= 0.6 * links  # mostly related: same exposure, compound or outcome


def test_citations_reach_as_far_back_as_the_window() -> None:
    """The default window keeps citations within a few files; a wide one spreads them over
    the whole corpus, as the baseline's do (``bench.bootstrap --cite-window``)."""

    def reach(window: int) -> list[int]:
        specs = live_specs(CorpusConfig(n_records=3000, seed=3, cite_window=window))
        return [
            spec.index - specs[c].index
            for spec in specs.values() for c in spec.references if c in specs
        ]  # fmt: skip

    near, wide = reach(200), reach(3000)
    assert near and max(near) <= 200
    assert max(wide) > 1500 and sum(d > 200 for d in wide) > len(wide) / 2


def test_author_keywords_name_what_the_article_studies(
    demo: tuple[CorpusManifest, dict[int, ArticleSpec], dict[int, Record]],
) -> None:
    """Keywords as authors write them: the article's own exposure (or compound), outcome
    and population, so a keyword query has one right answer rather than a whole topic."""
    _, specs, live = demo
    with_keywords = 0
    for pmid, spec in specs.items():
        kws = {k.lower() for k in live[pmid].keywords}
        if not kws:
            continue
        with_keywords += 1
        topic = next(t for t in TOPICS if t.name == spec.topic)

        def forms(concepts: Sequence[Concept], name: str) -> set[str]:
            return {f.lower() for c in concepts if c.name == name for f in c.forms}

        if spec.compound:
            c = next(c for c in compounds(spec.seed) if c.code == spec.compound)
            assert kws & {c.code.lower(), c.generic.lower()}
        else:
            assert kws & forms(topic.exposures, spec.exposure)
        assert kws & forms(topic.outcomes, spec.outcome)
        assert kws & forms(POPULATIONS, spec.population)
    assert with_keywords >= 0.4 * len(specs)
