"""Hostile review (session 33e) of the honesty of the retrain's evaluation gate and of its
training data: ``retrain/pairs.py`` (mining, the held-out split), ``retrain/anchors.py``,
``retrain/evaluate.py`` (metrics, the gate), ``retrain/run.py`` (the round) and
``retrain/feedback.py``.

The gate promotes a LoRA candidate only when it finds more *fresh* articles (new literature
it never saw) without losing *older* held-out ones and query-like anchors. README ("What a
retrain learns from, and what it never sees"): "a revised article an earlier round trained
on is never judged as fresh", "held-out articles are excluded by text as well as by PMID",
"an article a model trained on is never judged as held out"; ``retrain/pairs.py``: "Held-out
evaluation articles never train, under their own PMID or another".

Every test drives the real miner (:func:`retrain.pairs.mine_pairs`, as ``retrain.run``
calls it, one round after another with ``since`` = the previous round's ``window_end``) on
stores written through the real ingest store (:class:`ingest.store.Store`: records,
``DeleteCitation`` tombstones, reinstated records) over the generated literature of
``tests/retrain/test_pairs.py`` (``bench.drift``), on SQLite and PostgreSQL. No training
is needed: each defect is in which articles train and which are judged.

Defects:

E1 **An article an earlier round trained on is judged as fresh once it comes back from a
   tombstone.** A record PubMed withdrew (``DeleteCitation``) and later reinstated (the
   same PMID, the same text) has its ``ingested_at`` moved to the reinstatement by the
   store (``ingest.store._LIFT_COLUMNS``: "the article enters the live corpus again, so
   the time it did moves too", for the digest). ``retrain.pairs._hold_out`` takes
   ``ingested_at`` as "first stored" (``_first_ingest``): the reinstated article counts as
   new literature, and being the newest of the window it is put in the *fresh* held-out
   set, although round 1 trained on it (its title → abstract, its anchors) and the
   candidate continues that adapter. The fresh recall the gate and ``models report`` show
   is then partly recall of trained text ("its metrics on held-out articles it never
   saw"), exactly what the revision rule was made to prevent.
   At fault: ``retrain/pairs.py`` ``_hold_out`` / ``_first_ingest`` (``ingested_at`` is no
   "first stored" after a lift, which clears ``deleted_at`` too). Fix: judge "new
   literature" by a first-stored time the lift does not move (a column of its own, kept
   by the store), or by a record of the PMIDs each round trained beside the
   ``retrain/untrained`` one: an article live at or before ``since`` is no fresh
   candidate, however it came back. (Found through the store's real tombstone and lift.)
   (test_e1_a_reinstated_article_an_earlier_round_trained_is_not_fresh)
   **Fixed:** ``articles.first_ingested_at`` (``litpulse.core.schema``) records when a
   record of the article was first stored: written by the insert alone (no update list of
   ``ingest.store`` names it, so neither a revision, a tombstone nor a lift moves it; a
   bare tombstone's NULL becomes the lift's time, in one ``UPDATE`` per batch), added to
   an older store on open with each row's ``ingested_at``. ``retrain.pairs`` judges new
   literature by it (``_first_ingest``, ``coalesce(first_ingested_at, ingested_at)``).

E2 **The text of a withdrawn (or retracted) article an earlier round trained on is judged
   as held out under its duplicate's PMID, fresh or older.** PubMed withdraws duplicate
   citations: PMID X (trained by round 1) is deleted and its duplicate Y (the same title and
   abstract) stays. ``_load_articles`` reads live, unretracted rows only, so the text
   identities that keep trained text out of the held-out sets -- ``earlier`` (texts stored
   before ``since``: "never the twin of one" an earlier window held) and ``outside`` (an
   older item "shares no text with an article outside the bucket") -- no longer know X's
   text: Y becomes a *fresh* item of round 2 when it is the newest, and an *older* item
   when its PMID falls in the hash bucket. README: "an article a model trained on is never
   judged as held out". The same happens when X is retracted instead of withdrawn.
   At fault: ``retrain/pairs.py`` ``mine_pairs``/``_hold_out`` (the ``earlier`` and
   ``outside`` key sets built from ``rows``, which leave out tombstoned and retracted
   articles; a tombstone keeps its title and abstract). Fix: build those two key sets from
   every stored row with text, deleted and retracted included.
   (test_e2_a_withdrawn_articles_duplicate_is_not_judged_fresh,
   test_e2_a_withdrawn_articles_duplicate_is_not_judged_as_older)
   **Fixed:** ``retrain.pairs._load_gone`` reads the keys (keys only, streamed) and
   first-stored time of every withdrawn or retracted row that keeps a text, and
   ``_hold_out`` adds them to ``earlier`` (those stored by ``since``) and to ``outside``
   (those outside the older bucket): the duplicate of a text an earlier round trained is
   neither fresh nor older, whatever became of the PMID it trained under.

E3 **A held-out article trains under another PMID when its duplicate record's abstract is
   formatted differently: the candidate learns the very query it is judged on.** Text
   identity (``text_keys``: title + abstract, or abstract alone, case and spacing aside)
   misses the commonest kind of duplicate PubMed record: the same article, the same title,
   the same DOI, its abstract once with section labels (``BACKGROUND: ... RESULTS: ...``)
   and once without, or with a copyright line. The duplicate D is trainable, so the round
   trains ``title -> abstract`` with exactly the fresh item's query (its title) and nearly
   its document, plus D's anchors (``sentence``, ``mesh``) -- the candidate's fresh recall
   (and the queries set's) rises from training on the held-out article itself, the active
   model's does not, and the gate reads the leak as "learned the new literature". The
   same holds for an older held-out article (never to be trained on): D trains it every
   round. At fault: ``retrain/pairs.py`` ``text_keys`` / ``_Split.is_held`` (identity by
   text only; ``articles.doi`` is not read). Fix: an article sharing a held-out article's
   DOI (compared as :func:`litpulse.core.text.doi_key` gives it) is the same article: held
   with it (never a positive, anchor, citation, hard negative, feedback pair or
   distractor), and a fresh candidate sharing a DOI with an earlier article is not fresh.
   (test_e3_a_duplicate_record_with_the_same_doi_never_trains_beside_a_held_out_one,
   fresh and older)
   **Fixed:** ``retrain.pairs.article_keys`` adds a DOI key (``doi_key`` of
   ``articles.doi``) to an article's text keys, and every held-out rule compares those
   (held and bucket keys, ``earlier``, one fresh or older item per article, distractors,
   the keys of withdrawn and retracted rows): a DOI twin of a held-out article is held
   with it, and a fresh candidate sharing a DOI with an earlier article is not fresh. The
   ``outside`` rule (an older item sharing a key with an article outside the bucket is
   not judged: an earlier round may have trained that one) now counts only the articles
   stored by ``since`` (all without one): a twin stored since no round trained, and it is
   held with its older item.

Attacks that held (read or run in scratch scripts, not kept as tests): citation pairs whose
cited end is held out, by PMID or text, or newer than the fresh set (``_new_pairs`` checks
``split.trainable``); relevance feedback on a fresh or older held-out article or its text
twin, as positive and as negative (carried or held out, never paired); a BM25 hard negative
that is held out or as new as the fresh set (``_negative_allowed``); the candidate, the
active and the base model scored on the one ``HeldOut`` of the round with the serving
sequence length and precision (``run.evaluate_versions``); fresh or older sets under
``MIN_FRESH``/``MIN_OLDER`` (rejected, never "0 of 0: no loss"); a non-finite vector (the
zero vector, a miss) and ties (mean rank); ``models report``/``/models`` deltas and gate
reasons are the stored figures the gate used (a real round of the tiny encoder, SQLite).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest
from sqlalchemy import Engine

from bench.drift import insert_batch, make_drugs
from ingest.records import AbstractSection, Deletion, SourceRef
from ingest.store import Store
from litpulse.core.settings import Settings
from litpulse.core.timeutil import utcnow
from retrain.pairs import PairSet, in_older_holdout, mine_pairs
from tests.ranking.corpus import make_article
from tests.retrain.test_pairs import T0, _corpus

#: Round options of the retrain data-path tests (tests/retrain/test_pairs_heldout.py).
MINE: dict[str, Any] = {"fresh_size": 20, "distractors": 50}

TITLE = "Gliflozin use in frail elderly with heart failure"
SENTENCES = (
    "We followed 300 frail elderly patients given a gliflozin for heart failure.",
    "Hospital admissions fell by a third over two years.",
)
ABSTRACT = " ".join(SENTENCES)
#: Dated before every article of the later nights below: the newest new literature.
DAY = dt.date(2024, 2, 20)


def _src(n: int) -> SourceRef:
    """Update file number ``n`` (a later file wins)."""
    return SourceRef("file", f"pubmed26n{n:04d}.xml.gz", sequence=n, fetched_at=T0)


def _article(pmid: int, n: int, *, day: dt.date = DAY, doi: str | None = None,
             labelled: bool = False) -> Any:
    rec = make_article(pmid, TITLE, "" if labelled else ABSTRACT)
    changes: dict[str, Any] = {"source": _src(n), "article_date": day,
                               "doi": doi or f"10.1000/{pmid}"}
    if labelled:  # the same abstract, with PubMed's section labels
        changes["abstract_sections"] = (AbstractSection(SENTENCES[0], label="BACKGROUND"),
                                        AbstractSection(SENTENCES[1], label="RESULTS"))
    return dataclasses.replace(rec, **changes)


def _trained(ps: PairSet) -> set[int]:
    """Every article a pair trains: its own, the positive's, the replayed."""
    return {p.pmid for p in ps.pairs} | {p.positive_pmid for p in ps.pairs
                                         if p.positive_pmid is not None}


def _next_night(engine: Engine, start: dt.date, *, pmid: int = 8000, hours: int = 1) -> None:
    """New literature stored after the round before (late-indexed: published earlier)."""
    insert_batch(engine, start_pmid=pmid, n=60, start=start, days=40,
                 ingested=utcnow() + dt.timedelta(hours=hours), drugs=make_drugs(12), seed=3)


# ------------------------------------------------------------------------------------ E1


def test_e1_a_reinstated_article_an_earlier_round_trained_is_not_fresh(
    settings: Settings, engine: Engine
) -> None:
    _corpus(engine)
    store = Store(engine)
    x = 7001
    store.apply([_article(x, 1)])
    round1 = mine_pairs(settings, since=T0, **MINE)
    assert x in {p.pmid for p in round1.pairs if p.kind == "title_abstract"}
    # PubMed withdraws it, then reinstates it unchanged
    store.apply([Deletion(x, _src(2))])
    store.apply([_article(x, 3)])
    _next_night(engine, dt.date(2024, 1, 1))
    round2 = mine_pairs(settings, since=round1.window_end, **MINE)
    fresh = {i.pmid for i in round2.heldout.fresh}
    assert len(fresh) >= 10
    assert x not in fresh, (
        f"{x} was a round-1 training positive and is judged as fresh literature in round 2"
    )


# ------------------------------------------------------------------------------------ E2


def test_e2_a_withdrawn_articles_duplicate_is_not_judged_fresh(
    settings: Settings, engine: Engine
) -> None:
    _corpus(engine)
    store = Store(engine)
    x, y = 7001, 7002
    store.apply([_article(x, 1)])
    round1 = mine_pairs(settings, since=T0, **MINE)
    assert x in {p.pmid for p in round1.pairs if p.kind == "title_abstract"}
    # a duplicate citation of it arrives; PubMed withdraws the first of the two
    store.apply([_article(y, 2)])
    store.apply([Deletion(x, _src(3))])
    _next_night(engine, dt.date(2024, 1, 1))
    round2 = mine_pairs(settings, since=round1.window_end, **MINE)
    fresh = {i.pmid for i in round2.heldout.fresh}
    assert len(fresh) >= 10
    assert y not in fresh, (
        f"{y} holds the text round 1 trained under {x} and is judged as fresh literature"
    )


def test_e2_a_withdrawn_articles_duplicate_is_not_judged_as_older(
    settings: Settings, engine: Engine
) -> None:
    _corpus(engine)
    store = Store(engine)
    x = next(p for p in range(7000, 8000) if not in_older_holdout(p))
    y = next(p for p in range(9000, 10000) if in_older_holdout(p))  # every bucket holds it
    store.apply([_article(x, 1)])
    round1 = mine_pairs(settings, since=T0, **MINE)
    assert x in {p.pmid for p in round1.pairs if p.kind == "title_abstract"}
    store.apply([_article(y, 2)])
    store.apply([Deletion(x, _src(3))])
    _next_night(engine, dt.date(2025, 1, 1))
    round2 = mine_pairs(settings, since=round1.window_end, **MINE)
    older = {i.pmid for i in round2.heldout.older}
    assert len(older) >= 10
    assert y not in older, (
        f"{y} holds the text round 1 trained under {x} and is judged as held-out older "
        "literature"
    )


# ------------------------------------------------------------------------------------ E3


@pytest.mark.parametrize("heldout", ["fresh", "older"])
def test_e3_a_duplicate_record_with_the_same_doi_never_trains_beside_a_held_out_one(
    settings: Settings, engine: Engine, heldout: str
) -> None:
    _corpus(engine)
    if heldout == "fresh":  # the newest article of the window
        held = 7001
        kept = _article(held, 1, day=dt.date(2025, 1, 20), doi="10.1234/hf.2025.01")
    else:  # an article of the older hash bucket, held out for good
        held = next(p for p in range(7000, 8000) if in_older_holdout(p))
        kept = _article(held, 1, doi="10.1234/hf.2025.01")
    twin = next(p for p in range(9000, 10000) if not in_older_holdout(p))
    # the same article recorded twice: the same title and DOI (in another case), its
    # abstract with section labels; dated in the middle of the window
    dup = _article(twin, 1, day=dt.date(2024, 9, 1), doi="10.1234/HF.2025.01", labelled=True)
    Store(engine).apply([kept, dup])
    ps = mine_pairs(settings, since=T0, **MINE)
    assert held in {i.pmid for i in getattr(ps.heldout, heldout)}
    query = next(i.query for i in getattr(ps.heldout, heldout) if i.pmid == held)
    leaked = [(p.kind, p.anchor[:40]) for p in ps.pairs if twin in (p.pmid, p.positive_pmid)]
    assert not leaked, (
        f"held-out {held} (query {query!r}) trains under its duplicate {twin}: {leaked}"
    )
    assert twin not in _trained(ps)
    assert twin not in {i.pmid for i in ps.heldout.distractors}
