"""Pair mining: kinds, windows, held-out exclusion, weighting, feedback, determinism."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import Engine, update

from bench.drift import insert_batch, make_drugs
from litpulse.core.schema import articles
from litpulse.core.settings import Settings
from litpulse.pipeline.planning import reindex_now
from retrain.feedback import record_feedback
from retrain.pairs import ArticleRow, article_weight, mine_pairs

T0 = dt.datetime(2024, 7, 1, tzinfo=dt.UTC)
T1 = T0 + dt.timedelta(days=180)


def _corpus(engine: Engine) -> dict[str, dict[str, list[int]]]:
    drugs = make_drugs(12)
    old = insert_batch(engine, start_pmid=1000, n=120, start=dt.date(2024, 1, 1), days=180,
                       ingested=T0, drugs=drugs, seed=1)
    new = insert_batch(engine, start_pmid=5000, n=120, start=dt.date(2024, 7, 1), days=180,
                       ingested=T1, new_share_from=0.3, new_share_to=0.9, drugs=drugs, seed=2)
    return {"old": old, "new": new}


def test_window_kinds_and_heldout_exclusion(settings: Settings, engine: Engine) -> None:
    c = _corpus(engine)
    ps = mine_pairs(settings, since=T0, fresh_size=20, distractors=50)
    new_ids = set(c["new"]["old"] + c["new"]["new"])
    old_ids = set(c["old"]["old"] + c["old"]["new"])
    assert ps.new_articles == 120
    assert ps.counts["title_abstract"] > 50
    assert ps.counts["citation"] > 0
    assert ps.counts["replay"] > 0
    # the replay share is about 20 % of the set
    assert 0.1 < ps.counts["replay"] / len(ps.pairs) < 0.3
    held = ps.heldout.pmids()
    assert len(ps.heldout.fresh) == 20
    # fresh = the newest articles of the window, newer than every trained pair
    fresh = {i.pmid for i in ps.heldout.fresh}
    assert fresh == set(sorted(new_ids)[-20:])
    for p in ps.pairs:
        assert p.pmid not in held
        if p.kind in ("title_abstract", "citation"):
            assert p.pmid in new_ids and p.pmid < min(fresh)
        if p.kind == "replay":
            assert p.pmid in old_ids
    # no held-out abstract is a positive
    held_docs = {i.doc for i in (*ps.heldout.fresh, *ps.heldout.older)}
    assert not any(p.positive in held_docs for p in ps.pairs)
    assert ps.heldout.older and all(i.pmid < min(fresh) for i in ps.heldout.older)
    assert not {i.pmid for i in ps.heldout.distractors} & held


def test_deterministic_and_capped(settings: Settings, engine: Engine) -> None:
    _corpus(engine)
    a = mine_pairs(settings, since=T0, max_pairs=40, fresh_size=20)
    b = mine_pairs(settings, since=T0, max_pairs=40, fresh_size=20)
    assert a.pairs == b.pairs
    new_kinds = ("title_abstract", "citation", "mesh", "keywords", "sentence")
    assert sum(a.counts[k] for k in new_kinds) == 40
    assert a.counts["replay"] == 10  # 20 % of the final 50
    other = mine_pairs(settings.replace(seed=99), since=T0, max_pairs=40, fresh_size=20)
    assert other.pairs != a.pairs


def test_weighting_prefers_recent_and_cited(settings: Settings, engine: Engine) -> None:
    today = dt.date(2025, 1, 1)
    base = ArticleRow(1, "t", "a", dt.date(2024, 12, 31), T1, None, 0)
    old = ArticleRow(2, "t", "a", dt.date(2023, 12, 31), T1, None, 0)
    cited = ArticleRow(3, "t", "a", dt.date(2024, 12, 31), T1, 4.0, 0)
    w = [article_weight(r, now=today, half_life_days=365) for r in (base, old, cited)]
    assert abs(w[1] / w[0] - 0.5) < 0.01
    assert w[2] > w[0]
    # sampling follows the weights: cite a few window articles heavily
    _corpus(engine)
    before = mine_pairs(settings, since=T0, max_pairs=60, fresh_size=20, replay_share=0)
    with engine.begin() as conn:
        conn.execute(
            update(articles).where(articles.c.pmid.between(5000, 5039))
            .values(relative_citation_ratio=50.0)
        )
    ps = mine_pairs(settings, since=T0, max_pairs=60, fresh_size=20, replay_share=0)
    boosted = sum(1 for p in ps.pairs if 5000 <= p.pmid < 5040)
    unboosted = sum(1 for p in before.pairs if 5000 <= p.pmid < 5040)
    assert boosted >= unboosted + 3  # RCR 50 weighs 1.7x a typical article, as in ranking


def test_feedback_positive_and_hard_negative(settings: Settings, engine: Engine) -> None:
    _corpus(engine)
    record_feedback(settings, query="gout flares", pmid=5001, relevant=True, user="ann")
    record_feedback(settings, query="gout flares", pmid=5002, relevant=False, user="ann")
    record_feedback(settings, query="only negative", pmid=5003, relevant=False, user="ann")
    ps = mine_pairs(settings, since=T0, fresh_size=20)
    fb = [p for p in ps.pairs if p.kind == "feedback"]
    assert len(fb) == 1
    assert fb[0].anchor == "gout flares" and fb[0].pmid == 5001
    assert fb[0].negative is not None
    assert ps.hard_negatives == 1
    assert ps.feedback_unpaired == 1


def test_pairs_say_which_experts_feedback_they_used(settings: Settings, engine: Engine) -> None:
    from retrain.run import retrain

    _corpus(engine)
    record_feedback(settings, query="gout flares", pmid=5001, relevant=True, user="ann")
    record_feedback(settings, query="gout flares", pmid=5002, relevant=False, user="bob")
    record_feedback(settings, query="gout flares", pmid=5004, relevant=True, user="bob")
    record_feedback(settings, query="only negative", pmid=5003, relevant=False, user="cy")
    ps = mine_pairs(settings, since=T0, fresh_size=20)
    assert ps.counts["feedback"] == 2
    # cy's lone "not relevant" made no pair: not used
    assert ps.feedback_experts == {"ann": 1, "bob": 2}
    assert ps.to_dict()["feedback_experts"] == {"ann": 1, "bob": 2}
    report = retrain(
        settings, dry_run=True, mine_kwargs={"fresh_size": 20}, reindex=reindex_now
    )
    assert report.pairs["feedback_experts"] == {"ann": 1, "bob": 2}
    assert any("ann 1" in line and "bob 2" in line for line in report.summary())


def test_first_run_uses_everything(settings: Settings, engine: Engine) -> None:
    _corpus(engine)
    ps = mine_pairs(settings, since=None, fresh_size=20)
    assert ps.new_articles == 240
    assert ps.counts["replay"] == 0
    assert ps.window_end == T1
    assert ps.heldout.older  # from the hash bucket, older than the fresh set


def test_weight_uses_rankings_citation_formula(settings: Settings, engine: Engine) -> None:
    from ranking.scoring import ScoringOptions, citation_value

    today = dt.date(2025, 1, 1)
    unknown = ArticleRow(1, "t", "a", dt.date(2024, 1, 1), T1, None, 0)
    typical = ArticleRow(2, "t", "a", dt.date(2024, 1, 1), T1, 1.0, 0)
    strong = ArticleRow(3, "t", "a", dt.date(2024, 1, 1), T1, 9.0, 0)
    w = [article_weight(r, now=today, half_life_days=365) for r in (unknown, typical, strong)]
    # ranking: RCR 1 is a typical article, scored like one without citation data
    assert w[1] == pytest.approx(w[0])
    opts = ScoringOptions(today=today)
    cit = [citation_value({"relative_citation_ratio": r.relative_citation_ratio}, opts)[0]
           for r in (unknown, typical, strong)]
    # the same citation value as ranking, shifted so that no article drops out
    recency = w[1] / (0.5 + cit[1])
    assert w[2] - w[1] == pytest.approx(recency * (cit[2] - cit[1]))
    uncited = ArticleRow(4, "t", "a", dt.date(2024, 1, 1), T1, 0.0, 0)
    assert article_weight(uncited, now=today, half_life_days=365) == pytest.approx(w[1] / 2)


def test_feedback_conflict_across_a_closing_mark(settings: Settings, engine: Engine) -> None:
    """Since searches and training anchors drop the closing ``?``, ``gout flares?`` and
    ``gout flares`` are one query to the model. Ann marks 5001 relevant for the question,
    then (her change of mind, typed without the mark) not relevant: for the same text the
    later judgement replaces the first and no positive pair is made; across the mark the
    positive is still trained."""
    from ranking.embed import query_text

    _corpus(engine)
    record_feedback(settings, query="gout flares?", pmid=5001, relevant=True, user="ann")
    record_feedback(settings, query="gout flares", pmid=5001, relevant=False, user="ann")
    record_feedback(settings, query="gout flares", pmid=5004, relevant=True, user="ann")
    ps = mine_pairs(settings, since=T0, fresh_size=20)
    trained = {(query_text(p.anchor), p.pmid) for p in ps.pairs if p.kind == "feedback"}
    assert ("gout flares", 5004) in trained
    assert ("gout flares", 5001) not in trained, trained


def test_a_revoked_tokens_feedback_no_longer_trains(settings: Settings, engine: Engine) -> None:
    """Ann's token leaked: what was sent with it stops training once it is revoked, while
    Bob's judgements (another token) still train. Exclusion is per token, not per expert."""
    from litpulse.app.tokens import create_token, revoke_token
    from retrain.feedback import FeedbackSource

    _corpus(engine)
    ann = create_token(settings, "ann").info
    bob = create_token(settings, "bob").info

    def judge(token_id: int, expert: str, pmid: int, relevant: bool) -> None:
        record_feedback(settings, query="gout flares", pmid=pmid, relevant=relevant,
                        user=expert, source=FeedbackSource.API, token_id=token_id)

    judge(ann.id, "ann", 5001, True)
    judge(ann.id, "ann", 5002, False)
    judge(bob.id, "bob", 5004, True)
    before = mine_pairs(settings, since=T0, fresh_size=20)
    assert before.feedback_experts == {"ann": 2, "bob": 1}

    revoke_token(settings, ann.id)
    ps = mine_pairs(settings, since=T0, fresh_size=20)
    assert {p.pmid for p in ps.pairs if p.kind == "feedback"} == {5004}
    assert ps.feedback_experts == {"bob": 1}
    assert (before.feedback_excluded, ps.feedback_excluded) == (0, 2)
    later = mine_pairs(settings, since=dt.datetime.now(dt.UTC), fresh_size=20)
    assert later.feedback_excluded == 0  # judgements before the window are not its concern
    from retrain.run import retrain

    report = retrain(
        settings, dry_run=True, mine_kwargs={"fresh_size": 20}, reindex=reindex_now
    )
    assert report.pairs["feedback_excluded"] == 2
    assert "feedback excluded: 2 judgement(s) sent with revoked API tokens" in report.summary()
