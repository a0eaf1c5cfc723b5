"""Query-like anchors, BM25 hard negatives and the gate's query-like held-out set."""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine, select, update

from bench.drift import insert_batch, make_drugs
from litpulse.core.schema import articles
from litpulse.core.settings import Settings
from ranking.embed import article_text
from retrain.anchors import article_anchors, pick_negative, sentences
from retrain.pairs import ABSTRACT_ONLY, PairSet, mine_pairs

T0 = dt.datetime(2024, 7, 1, tzinfo=dt.UTC)
T1 = T0 + dt.timedelta(days=180)
MINE: dict[str, Any] = {"fresh_size": 20, "distractors": 60}


def _corpus(engine: Engine) -> None:
    """The drifted corpus, with MeSH headings and author keywords on every article."""
    drugs = make_drugs(12)
    insert_batch(
        engine,
        start_pmid=1000,
        n=120,
        start=dt.date(2024, 1, 1),
        days=180,
        ingested=T0,
        drugs=drugs,
        seed=1,
    )
    insert_batch(
        engine,
        start_pmid=5000,
        n=120,
        start=dt.date(2024, 7, 1),
        days=180,
        ingested=T1,
        new_share_from=0.3,
        new_share_to=0.9,
        drugs=drugs,
        seed=2,
    )
    with engine.begin() as conn:
        rows = conn.execute(select(articles.c.pmid, articles.c.title, articles.c.updated_at))
        for pmid, title, updated in rows.all():
            words = [w for w in title.split() if len(w) > 4]
            conn.execute(
                update(articles)
                .where(articles.c.pmid == pmid)
                .values(
                    mesh=[
                        {"descriptor": f"{w.capitalize()} Heading", "major": False} for w in words
                    ],
                    record={"keywords": [w.lower() for w in words[:2]]},
                    updated_at=updated,
                )
            )


def _lexical(engine: Engine, tmp_path: Path) -> Any:
    """The real BM25 index of the store (as ``index refresh`` builds it)."""
    from ranking.lexical import LEXICAL_DIR, build_lexical, open_lexical_at

    build_lexical(
        engine, tmp_path / LEXICAL_DIR, base=None, add=None, remove=np.zeros(0, dtype=np.int64)
    )
    return open_lexical_at(tmp_path)


def test_anchor_kinds_of_one_article() -> None:
    abstract = (
        "Zorvex lowered the relapse rate in older adults. Adverse events were rare "
        "and mild overall. The effect held at twelve months of follow-up."
    )
    got = {
        a.kind: a
        for a in article_anchors(
            7,
            "Zorvex in older adults",
            abstract,
            ["Aged", "Recurrence", "Aged"],
            ["relapse", "zorvex"],
            seed=13,
        )
    }
    assert set(got) == {"mesh", "keywords", "sentence"}
    assert sorted(got["mesh"].text.split()) == ["Aged", "Recurrence"]  # duplicates once
    assert sorted(got["keywords"].text.split()) == ["relapse", "zorvex"]
    s = got["sentence"]
    assert s.text in sentences(abstract) and s.text not in s.abstract  # inverse cloze
    assert len(sentences(s.abstract)) == 2 and s.title == "Zorvex in older adults"
    # a lone sentence without a title has no context to find: no sentence anchor
    assert article_anchors(8, "", "Only this one sentence is here today.", [], [], seed=13) == []
    # stable for a seed, and the seed matters somewhere among many articles
    many = [article_anchors(i, "t", abstract, [], [], seed=13) for i in range(30)]
    assert many == [article_anchors(i, "t", abstract, [], [], seed=13) for i in range(30)]
    assert many != [article_anchors(i, "t", abstract, [], [], seed=14) for i in range(30)]


def test_pick_negative_skips_the_positive_and_the_very_top() -> None:
    ranked = [(9, 10.0), (1, 9.0), (2, 8.0), (3, 7.0), (4, 6.0)]
    picks = {pick_negative(ranked, {9}, skip=1, key=(i,)) for i in range(200)}
    assert picks == {2, 3, 4}
    assert pick_negative(ranked, {9}, skip=1, key=(0,), allowed=lambda m: m == 4) == 4
    assert pick_negative([(9, 1.0)], {9}, skip=0, key=(0,)) is None


def test_window_anchors_and_query_heldout(settings: Settings, engine: Engine) -> None:
    _corpus(engine)
    ps = mine_pairs(settings, since=T0, **MINE)
    counts = ps.counts
    assert counts["mesh"] > 50 and counts["keywords"] > 50 and counts["sentence"] > 50
    assert counts["title_abstract"] > 50
    titles = {}
    with engine.connect() as conn:
        for pmid, title, abstract in conn.execute(
            select(articles.c.pmid, articles.c.title, articles.c.abstract)
        ):
            titles[pmid] = (title, abstract)
    for p in ps.pairs:
        if p.kind == "sentence":
            title, abstract = titles[p.pmid]
            assert p.anchor in abstract and p.anchor not in p.positive
            assert p.positive.startswith(title + "\n")
        if p.kind == "mesh":
            assert p.anchor.endswith("Heading") and p.positive == article_text(*titles[p.pmid])
    # an article's weight is shared by its pairs: all kinds of one article weigh the same
    by_article: dict[int, set[float]] = {}
    for p in ps.pairs:
        if p.kind in ("title_abstract", "mesh", "keywords", "sentence"):
            by_article.setdefault(p.pmid, set()).add(round(p.weight, 9))
    assert all(len(w) == 1 for w in by_article.values())
    # the query-like held-out set asks for the held-out articles, never trained on
    q = ps.heldout.queries
    held = {i.pmid for i in (*ps.heldout.fresh, *ps.heldout.older)}
    assert len(q) == len(held) and {i.pmid for i in q} == held
    assert not {p.pmid for p in ps.pairs} & held
    assert {i.query.split()[-1] for i in q} >= {"Heading"}  # some MeSH queries among them
    assert ps.heldout.to_dict()["queries"] == len(q)


def test_hard_negatives_come_from_bm25_top(
    settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    _corpus(engine)
    lex = _lexical(engine, tmp_path)
    plain = mine_pairs(settings, since=T0, **MINE)
    assert plain.hard_negatives == 0 and any("no lexical index" in n for n in plain.notes)
    ps = mine_pairs(
        settings, since=T0, lexical=lex.search, negative_depth=10, negative_skip=1, **MINE
    )
    assert [dataclasses.replace(p, negative=None) for p in ps.pairs] == list(plain.pairs)
    with engine.connect() as conn:
        text = {
            pmid: (t, a)
            for pmid, t, a in conn.execute(
                select(articles.c.pmid, articles.c.title, articles.c.abstract)
            )
        }
    held = ps.heldout.pmids()
    negatives = [p for p in ps.pairs if p.negative]
    assert len(negatives) > 0.9 * len(ps.pairs) and ps.hard_negatives == len(negatives)
    for p in negatives:
        own = {p.pmid, p.positive_pmid or p.pmid}
        top = [m for m, _ in lex.search(p.anchor, 13) if m not in own]
        fmt = (
            (lambda m: text[m][1])
            if p.kind in ABSTRACT_ONLY
            else (lambda m: article_text(*text[m]))
        )
        source = [m for m in top if fmt(m) == p.negative]
        assert source, (p.kind, p.anchor)
        m = source[0]
        # never the positive, never held out, never BM25's very best other match
        assert m not in own and m not in held and p.negative != p.positive
        assert top.index(m) >= 1


def _shuffled(ps: PairSet) -> list[Any]:
    positives = [p.positive for p in ps.pairs]
    random.Random(5).shuffle(positives)
    return [dataclasses.replace(p, positive=q) for p, q in zip(ps.pairs, positives, strict=True)]


def test_gate_rejects_a_model_that_lowers_query_like_retrieval(
    sqlite_settings: Settings, tmp_path: Path
) -> None:
    from litpulse.core import db
    from ranking.embed import ModelSpec, embed_texts, load_encoder
    from retrain.evaluate import evaluate_encoder, gate, query_check
    from retrain.lora import LoraOptions, train

    s = sqlite_settings.replace(
        max_seq_length=48, device="cpu", gate_fresh_margin=0.001, gate_older_tolerance=0.2
    )
    engine = db.connect(s)
    _corpus(engine)
    ps = mine_pairs(s, since=T0, max_pairs=96, fresh_size=20, distractors=30)
    # an honest bad candidate: anchors taught to find random articles, all 8 steps (the
    # retrain budget, 60 s, cut them to 6 on a slow CI machine: too little harm to refuse)
    opts = LoraOptions(
        max_steps=8, batch_size=12, max_seq_length=48, warmup_steps=0, learning_rate=5e-3,
        max_seconds=1e5,
    )
    train(s, _shuffled(ps), opts, tmp_path / "bad")

    def metrics(adapter: str | None) -> dict[str, Any]:
        spec = ModelSpec("bad" if adapter else "base", s.model_path, adapter)
        enc = load_encoder(spec, s, cache=False)
        return evaluate_encoder(lambda t: embed_texts(enc, t, s), ps.heldout)

    bad, base = metrics(str(tmp_path / "bad")), metrics(None)
    assert bad["queries"]["queries"] == len(ps.heldout.queries) > 20
    assert bad["queries"]["mrr@10"] < base["queries"]["mrr@10"]
    ok, reasons = query_check(s, bad, base)
    assert not ok and any("loses more than tolerance" in r for r in reasons)
    decision = gate(s, bad, base)
    assert not decision.passed
    # the same model against itself passes the query check
    assert query_check(s, base, base)[0]


def test_headings_most_articles_carry_are_no_anchor() -> None:
    from retrain.pairs import MIN_HEADING_CORPUS, ArticleRow, _without_common_headings

    now = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)

    def row(i: int) -> ArticleRow:
        specific = f"Heading {i % 20}"  # 5 % of the corpus each
        check = ("Humans", "Female") if i % 2 else ("Humans",)
        return ArticleRow(i, "t", "a", None, now, None, 0, mesh=(*check, specific))

    rows = [row(i) for i in range(MIN_HEADING_CORPUS)]
    kept = _without_common_headings(rows)
    assert [r.mesh for r in kept[:2]] == [("Heading 0",), ("Heading 1",)]
    # a corpus too small for shares to mean anything keeps every heading
    few = rows[: MIN_HEADING_CORPUS // 4]
    assert _without_common_headings(few) == few


def test_an_article_without_abstract_is_its_title() -> None:
    # letters, editorials, older records: PubMed holds many articles with a title alone;
    # their headings and keywords find the title (no sentence anchor: a title is one claim,
    # and inverse-cloze pairs within titles did not help on BioASQ, see README)
    title = "Xist transcripts were found in every female tissue. In males, only testis."
    got = {
        a.kind: a
        for a in article_anchors(9, title, "", ["X Chromosome"], ["xist"], seed=13)
    }
    assert set(got) == {"mesh", "keywords"}
    assert got["mesh"].title == title and got["mesh"].abstract == ""
    assert got["mesh"].text == "X Chromosome" and got["keywords"].text == "xist"


def test_articles_without_abstract_are_trained_on(settings: Settings, engine: Engine) -> None:
    _corpus(engine)
    with engine.begin() as conn:
        rows = conn.execute(
            select(articles.c.pmid, articles.c.updated_at)
            .where(articles.c.pmid.between(5000, 5059))
        ).all()
        for pmid, updated in rows:
            conn.execute(
                update(articles).where(articles.c.pmid == pmid)
                .values(abstract="", updated_at=updated)
            )
    title_only = {int(r[0]) for r in rows}
    ps = mine_pairs(settings, since=T0, **MINE)
    kinds_of = {(p.kind, p.pmid) for p in ps.pairs}
    trained = {pmid for kind, pmid in kinds_of if pmid in title_only}
    assert len(trained) > 40  # every title-only article not held out
    kinds = {k for k, pmid in kinds_of if pmid in title_only}
    assert kinds >= {"mesh", "keywords"} and not kinds & {"sentence", *ABSTRACT_ONLY}
    for p in ps.pairs:
        # no pair ever asks for an empty text, nor offers one as a negative
        assert p.positive.strip() and (p.negative is None or p.negative.strip())
        if p.pmid in title_only:
            assert p.kind not in ABSTRACT_ONLY
    # the held-out sets still judge title -> abstract: only articles with an abstract
    held = (*ps.heldout.fresh, *ps.heldout.older, *ps.heldout.distractors)
    assert all(i.doc.strip() for i in held)
    assert not {i.pmid for i in held} & title_only


def test_title_only_articles_get_hard_negatives_and_feedback(
    settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    from retrain.feedback import record_feedback

    _corpus(engine)
    with engine.begin() as conn:
        conn.execute(
            update(articles).where(articles.c.pmid.between(5000, 5059)).values(abstract="")
        )
    record_feedback(settings, query="gout flares", pmid=5001, relevant=True, user="ann")
    record_feedback(settings, query="gout flares", pmid=5002, relevant=False, user="ann")
    lexical = _lexical(engine, tmp_path)
    ps = mine_pairs(settings, since=T0, lexical=lexical.search, **MINE)
    fb = [p for p in ps.pairs if p.kind == "feedback"]
    assert [(p.pmid, p.positive) for p in fb] == [(5001, article_text(_title(engine, 5001), ""))]
    assert fb[0].negative == article_text(_title(engine, 5002), "")
    negs = [p for p in ps.pairs if p.negative and p.kind in ABSTRACT_ONLY]
    assert negs and all(p.negative.strip() for p in negs)
    # a negative is shaped like its positive: a title alone for a title alone, else a text
    # with an abstract (the length of a text must not give the answer away)
    texts = _texts(engine)
    title_only = {article_text(t, "") for t, a in texts.values() if not a}
    checked = 0
    for p in ps.pairs:
        if p.negative is None or p.kind in (*ABSTRACT_ONLY, "feedback"):
            continue
        checked += 1
        assert (p.positive in title_only) == (p.negative in title_only), p
    assert checked > 50
    assert any(p.negative for p in ps.pairs if p.pmid in range(5000, 5060))


def _texts(engine: Engine) -> dict[int, tuple[str, str]]:
    with engine.connect() as conn:
        rows = conn.execute(select(articles.c.pmid, articles.c.title, articles.c.abstract))
        return {int(r[0]): (r[1], r[2]) for r in rows}


def _title(engine: Engine, pmid: int) -> str:
    with engine.connect() as conn:
        return str(conn.execute(select(articles.c.title).where(articles.c.pmid == pmid)).scalar())
