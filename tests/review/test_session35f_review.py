"""Review 35f: the published indexes over many nights; a resumed E-utilities window's counts.

Held (no defect found): five nights applied through ``Store.apply`` (revisions with new
titles, abstracts and MeSH, deletions, a retraction and its lifting, tombstones lifted with
old and new words, a deletion after a revision in one file) and published by
``refresh_index`` (incremental updates of an IVF index probed one list at a time, and of
the lexical index), on SQLite and PostgreSQL. After nights 2, 4 and 5, lexical and hybrid
search find exactly the live articles holding a word (new words found, old ones not,
deleted articles never), every mode with filters (MeSH, publication type, retracted)
returns exactly the oracle's articles (:func:`tests.review.test_session34c_review.oracle`
over the store as it is), pages are slices of one list, and ``similar`` lists every other
live article with the cosine of the store's current vectors. (Probed also on a flat index
and with every mode and sort: held; the test keeps the IVF case to stay small.)

X1 **A killed and resumed E-utilities window counts the records of its cut batch twice.**
   ``ingest.eutils._fetch_batch`` wrote a batch's ``done`` checkpoint after its store
   transactions committed, and nothing between. A run killed after some (or all) of a
   batch's store transactions committed, before the mark, left the batch to the resumed
   run, which fetched it again and applied it whole: the records the killed run inserted
   came back ``unchanged``. The window's whole counts (what its data-quality check
   judges, ``whole_window``) said 20 inserted and 20 unchanged for 40 new records, and
   the runs' rows together counted 40 inserted plus 20 unchanged for 40 records (the
   34e N2 / 35b X4 defect of update files, in the E-utilities path). Reproduced: 40
   records, EFetch batches of 20, store batches of 5; a child ``ingest_window`` killing
   itself once 10 (inside the first batch) or 20 (after its last commit, before the mark)
   articles are stored; the resumed window's whole counts and the runs' summed counts
   compared with those of a clean run, on SQLite and PostgreSQL.
   **Fixed**: each store transaction of a batch commits with a progress mark in the
   batch's checkpoint (status ``applying``: the items applied, their PMIDs, the counts, the
   runs), as ``_store_file``'s mark of 35b X4; a resumed run fetches the batch again and,
   when the answer begins with the same PMIDs, goes on after those items, adding the mark's
   counts to the window's (``resumed_counts``) and judging the killed run with it.
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from ingest.eutils import ingest_window
from ingest.parse import parse_bytes
from ingest.records import SourceRef
from ingest.store import Store
from litpulse.core import db
from litpulse.core.settings import Settings
from ranking.refresh import refresh_index
from ranking.search import SearchFilters, run_search
from ranking.similar import similar_articles
from tests.emulator import Emulator
from tests.ingest.test_crash_resume import child_env, kill_when, quick, reset, self_killing
from tests.review.test_session34c_review import _fresh_encoders, oracle, paged, tiny  # noqa: F401
from tests.review.test_session35b_review import _runs, _summed

FIRST = 35000


def _rec(
    pmid: int,
    night: int,
    title: str,
    abstract: str,
    mesh: tuple[str, ...] = (),
    ptypes: tuple[str, ...] = ("Journal Article",),
) -> str:
    mh = "".join(
        f'<MeshHeading><DescriptorName UI="D{abs(hash(m)) % 999999:06d}" '
        f'MajorTopicYN="N">{html.escape(m)}</DescriptorName></MeshHeading>'
        for m in mesh
    )
    rev = dt.date(2026, 1, night)
    return (
        f'<PubmedArticle><MedlineCitation Status="MEDLINE"><PMID Version="1">{pmid}</PMID>'
        f"<DateRevised><Year>{rev.year}</Year><Month>{rev.month:02d}</Month>"
        f"<Day>{rev.day:02d}</Day></DateRevised>"
        "<Article><Journal><JournalIssue><PubDate><Year>2020</Year></PubDate></JournalIssue>"
        "<Title>J Test</Title></Journal>"
        f"<ArticleTitle>{html.escape(title)}</ArticleTitle>"
        f"<Abstract><AbstractText>{html.escape(abstract)}</AbstractText></Abstract>"
        "<Language>eng</Language><PublicationTypeList>"
        + "".join(f"<PublicationType>{p}</PublicationType>" for p in ptypes)
        + "</PublicationTypeList></Article>"
        + (f"<MeshHeadingList>{mh}</MeshHeadingList>" if mh else "")
        + '</MedlineCitation><PubmedData><History><PubMedPubDate PubStatus="entrez">'
        "<Year>2020</Year><Month>01</Month><Day>02</Day></PubMedPubDate></History>"
        "</PubmedData></PubmedArticle>"
    )


def _night(s: Settings, night: int, recs: list[str], deleted: Sequence[int] = ()) -> None:
    dl = (
        (
            "<DeleteCitation>"
            + "".join(f'<PMID Version="1">{p}</PMID>' for p in deleted)
            + "</DeleteCitation>"
        )
        if deleted
        else ""
    )
    xml = (
        '<?xml version="1.0"?><PubmedArticleSet>' + "".join(recs) + dl + "</PubmedArticleSet>"
    ).encode()
    ref = SourceRef("updatefile", f"pubmed26n{night:04d}.xml.gz", sequence=26_000_000_000 + night)
    Store(db.connect(s)).apply(parse_bytes(xml, source_ref=ref))
    refresh_index(s)


def _found(s: Settings, q: str, mode: str, **f: Any) -> set[int]:
    return {h.pmid for h in run_search(s, q, k=1000, filters=SearchFilters(**f), mode=mode).hits}


WORDS = (
    "sepsis",
    "asthma",
    "malaria",
    "insulin",
    "zebrafish",
    "lactate",
    "yeast",
    "humans",
    "child",
    "neoplasms",
)


def _check(s: Settings) -> list[Any]:
    rows = _rows(s)
    bad: list[Any] = []
    live = set(oracle(s, SearchFilters()))
    for mode in ("lexical", "hybrid", "semantic"):
        for w in WORDS if mode != "semantic" else ():
            got = _found(s, w, mode)
            want = {p for p, t in rows.items() if w in t} & live
            if mode == "lexical" and got != want:
                bad.append((mode, w, sorted(got ^ want)))
            if got - live:
                bad.append((mode, w, "not live", sorted(got - live)))
        for f in (
            {"mesh": "Neoplasms"},
            {"mesh": "Humans"},
            {"mesh": "Child"},
            {"include_retracted": True},
            {"publication_type": "Retracted Publication"},
        ):
            got = _found(s, "cohort zebrafish lactate yeast", mode, **f)
            want = oracle(s, SearchFilters(**f))
            if mode == "lexical":
                want = {
                    p
                    for p in want
                    if any(w in rows[p] for w in ("cohort", "zebrafish", "lactate", "yeast"))
                }
            if got != want:
                bad.append((mode, f, sorted(got ^ want)))
    for mode, sort in (("hybrid", "score"), ("lexical", "date")):
        whole = [
            h.pmid
            for h in run_search(s, "zebrafish yeast", k=1000, mode=mode, offset=0, sort=sort).hits
        ]
        pages = paged(s, "zebrafish yeast", 4, mode, sort)
        # a date-sorted page is its score page newest first (36g X1): the same results
        if (pages != whole) if sort == "score" else (sorted(pages) != sorted(whole)):
            bad.append(("pages", mode, sort))
    vec = _vectors(s)
    for p in (FIRST + 0, FIRST + 7):
        if p not in live:
            continue
        hits = similar_articles(s, p, k=100).hits
        simp = {h.pmid for h in hits}
        if simp != live - {p}:
            bad.append(("similar", p, sorted(simp ^ (live - {p}))))
        for h in hits:
            want_sim = float(vec[p] @ vec[h.pmid])
            if abs(want_sim - h.similarity) > 1e-3:
                bad.append(("similarity", p, h.pmid, h.similarity, want_sim))
    return bad


def test_search_and_similar_match_the_store_after_each_night(
    settings: Settings,
    tiny: str,  # noqa: F811
) -> None:
    s = settings.replace(
        model=tiny,
        max_seq_length=32,
        search_server_url="",
        exact_index_max=10,
        ivf_nprobe=1,
        rerank_candidates=5,
    )
    n1 = [
        _rec(
            FIRST + i,
            1,
            f"{WORDS[i % 4]} cohort {i}",
            f"we studied {WORDS[i % 4]} outcomes",
            mesh=("Humans",),
        )
        for i in range(30)
    ]
    _night(s, 1, n1)
    bad: list[Any] = []
    # night 2: revise 0..5 to zebrafish, delete 6,7, retract 8, mesh change on 9
    n2 = [
        _rec(FIRST + i, 2, f"zebrafish fins {i}", "zebrafish regeneration", mesh=("Neoplasms",))
        for i in range(6)
    ]
    n2.append(
        _rec(
            FIRST + 8,
            2,
            "malaria cohort 8",
            "we studied malaria outcomes",
            ptypes=("Journal Article", "Retracted Publication"),
        )
    )
    n2.append(_rec(FIRST + 9, 2, "asthma cohort 9", "we studied asthma outcomes", mesh=("Child",)))
    _night(s, 2, n2, deleted=[FIRST + 6, FIRST + 7])
    bad.append(("night2", _check(s)))
    # night 3: revise 0 back to lactate; new articles
    n3 = [_rec(FIRST + 0, 3, "lactate only", "lactate measured")] + [
        _rec(FIRST + 40 + i, 3, f"sepsis new {i}", "sepsis lactate") for i in range(5)
    ]
    _night(s, 3, n3, deleted=[FIRST + 12])
    # night 4: 6 comes back as it was, 7 with new words; 8 no longer retracted
    n4 = [
        n1[6],
        _rec(FIRST + 7, 4, "yeast budding", "yeast cells"),
        _rec(FIRST + 8, 4, "malaria cohort 8", "we studied malaria outcomes"),
    ]
    _night(s, 4, n4)
    bad.append(("night4", _check(s)))
    # night 5: 2 revised, then deleted later in the same file
    n5 = [_rec(FIRST + 2, 5, "yeast two", "yeast")]
    _night(s, 5, n5, deleted=[FIRST + 2])
    bad.append(("night5", _check(s)))
    assert [b for b in bad if b[1]] == [], bad


def _vectors(s: Settings) -> dict[int, Any]:
    import numpy as np

    from ranking.index_files import open_published
    from ranking.index_store import fetch_vectors

    idx = open_published(s, db.connect(s))
    assert idx is not None
    vectors, ids = fetch_vectors(db.connect(s), idx.model_version)
    vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return dict(zip(ids.tolist(), vectors, strict=True))


def _rows(s: Settings) -> dict[int, str]:
    from sqlalchemy import select

    from litpulse.core.schema import articles

    with db.connect(s).connect() as conn:
        return {
            r.pmid: f"{r.title} {r.abstract} {r.mesh}".lower()
            for r in conn.execute(
                select(articles.c.pmid, articles.c.title, articles.c.abstract, articles.c.mesh)
            )
        }


# ------------------------------------------------- X1: a resumed E-utilities window's counts

_DAY = dt.date(2024, 3, 5)
_WINDOW_SCRIPT = (
    "import datetime as dt\n"
    "from litpulse.core.settings import Settings\n"
    "from ingest.eutils import ingest_window\n"
    "ingest_window(Settings.from_env(), dt.datetime(2024, 3, 5), dt.datetime(2024, 3, 6))\n"
)


@pytest.mark.parametrize("at", [10, 20])  # inside the first EFetch batch; at its end
def test_x1_a_killed_and_resumed_window_counts_each_record_once(
    emu: Emulator, settings: Settings, tmp_path: Path, at: int
) -> None:
    for p in range(1, 41):
        emu.add_article(p, edat=_DAY)
    base = emu.configure(quick(settings, store_batch=5, efetch_batch=20), ncbi_api_key="k")
    since, until = dt.datetime(2024, 3, 5), dt.datetime(2024, 3, 6)
    clean = base.replace(home=tmp_path / "clean")
    want = ingest_window(clean, since, until, whole_window=True)
    want_runs = _summed(_runs(clean))
    s = base.replace(home=tmp_path / "killed")
    engine = db.connect(s)
    reset(engine)  # PostgreSQL: the same database
    argv = self_killing(["-c", _WINDOW_SCRIPT], engine, "SELECT count(*) FROM articles", at)
    kill_when(argv, {**child_env(s), **emu.env(s)}, lambda: False, tmp_path / "child.log",
              label=f"{at} records", timeout=60)  # fmt: skip
    got = ingest_window(s, since, until, whole_window=True)
    assert [status for status, _ in _runs(s)] == ["abandoned", "succeeded"]
    assert (got.inserted, got.unchanged) == (want.inserted, want.unchanged)
    assert _summed(_runs(s)) == want_runs
