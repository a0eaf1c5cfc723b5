"""Hostile review (session 32p) of this session's fixes outside the HTTP clients and the
digest channels: ``ApiGuard``'s catch-all 500 and the ``DBAPIError`` 503, ``serve``
without proxy headers, BibTeX name bracing (``export._bib_person``), the NaN-vector
handling (``ranking.embed._encode``, ``stored_cosines``, ``/similar``, the query's
refusal), the feedback query rule, the CLI's ``path_arg`` and bounds, ``SHARDS_MAX`` in the
DAGs, the nightly's ``--since``/``--until`` checks and its ``not_promoted`` retrain, and
``LITPULSE_PUBLIC_URL``.

Every test drives the real code: the FastAPI app through ``TestClient`` over a store
written by :class:`ingest.store.Store` and published by
:func:`ranking.refresh.refresh_index` with the session-32m overflowing tiny encoder (the
word ``zebra`` is encoded to NaN, as a half-precision overflow does), the digest's
:func:`litpulse.pipeline.digest.run_digest`, and :func:`litpulse.app.export.to_bibtex`
read back by a splitter that follows BibTeX's own ``name_scan_for_and`` — on SQLite and
PostgreSQL where a store matters.

Defects (each was a strict xfail asserting the correct behaviour; all three were fixed in
the same session and are plain tests now: P1 ``add_search`` / ``edit_search`` refuse a query
the published index's model cannot embed, as a search does; P2 a BibTeX name part that is,
begins or ends with the word ``and`` is braced; P3 the API's and the CLI's feedback check
the query as a search does, before recording it):

P1 A saved search whose query the model cannot embed is accepted and then never searched.
   Since M2, ``GET /search?q=zebra heart failure`` (hybrid, semantic; ``/export`` too) is
   refused, 400 "the model cannot embed this query ... search with other words, or
   mode=lexical". ``POST /alerts`` with the same query answers **201**; each digest then
   fails that search (``ConfigError`` raised by ``encode_query`` inside ``run_search``),
   logs a full traceback at ERROR, lists it in the digest's ``failures`` and keeps its
   watermark: the matching articles stored after it (``Heart failure new``) are never
   delivered, its feed stays empty, night after night, and its owner was told nothing
   when saving it. The saved-search rules (``saved_searches._checked`` →
   ``checked_query``) know nothing of the encoder, although a saved search was meant to
   be refused on save by every rule a search applies (``problem``/``remedy`` for rules
   added later). At fault: ``litpulse/pipeline/saved_searches.py`` (``add_search`` /
   ``edit_search`` check the query's text only) and ``digest._digest_one`` (a search that
   cannot be embedded fails whole though its matching could go on lexically, as
   ``mode=lexical`` does). Fix: embed the query when a search is saved or edited (the
   API's 400 / the CLI's exit 2, with the same message), and in the digest report such a
   search as ``problem`` ("not searched: the model cannot embed ...") without a traceback,
   or match it on its lexical part.
   (test_p1_a_saved_search_the_model_cannot_embed_is_refused_or_still_matched)
P2 BibTeX still splits a person whose name part *is*, begins or ends with the word
   ``and``: ``_bib_person`` braces a part only when ``\\sand\\s`` is found **inside** it,
   but BibTeX (``name_scan_for_and``) takes any ``and`` (any case) at brace depth 0 with
   white space on both sides *in the whole field*, and the ", " and " and " around a part
   give it those. The common case is an initials-only author (PubMed records before 2002
   and many since give ``Initials`` alone; ``_authors`` uses them when there is no
   ``ForeName``): A. N. D. Jones is ``Jones, AND``, and ``Roe, R and Jones, AND and Poe,
   P`` reads as four names ``Roe, R`` / ``Jones,`` / ``""`` / ``Poe, P`` (Jones loses his
   initials, an empty author appears); a last name ``and Wesson`` (a group given as a
   person) or a fore name ``And`` likewise. At fault: ``litpulse/app/export.py``
   ``_BIB_AND`` / ``_bib_person``. Fix: brace a part where ``(?<!\\S)and(?!\\S)`` matches
   (case-insensitive), i.e. the word at the part's start or end too.
   (test_p2_bibtex_keeps_a_name_whose_part_is_or_edges_on_and)
P3 ``POST /feedback`` still records and trains on queries no search answers. The rule
   added this session ("a query without a letter or digit ... nothing a search finds")
   passes ``the``, ``of the`` (stop words alone: ``GET /search`` answers 400 "the query
   has no word to search for"), ``NOT asthma`` (an exclusion alone: 400) and ``1`` (a PMID
   alone: 400, "shows that article"): each answers **201** and becomes a training pair of
   the next retrain, exactly what the rule was added to stop. At fault:
   ``retrain/feedback.py`` ``record_feedback`` (its own, weaker rule) and the API's
   ``feedback_endpoint`` / the CLI's ``feedback`` (which could check the query as a search
   does). Fix: refuse a judgement's query that :func:`ranking.search.checked_query`
   refuses (the application floor checks it before ``record_feedback``, as retrain may
   not import ``ranking.search``), 400 with its message.
   (test_p3_feedback_refuses_a_query_the_search_refuses)

Guards (right today, must stay right): a name part holding ``and`` inside (``Smith and
Wesson``) stays one braced name and ``Anderson``/``Sandy`` are left unbraced; a saved
search of an ordinary query is accepted; a judgement on ``🫀 heart`` or ``2019-nCoV`` is
recorded; ``/similar`` of the article stored as the zero vector answers 200 with no hits;
the nightly's calendar check passes a far-past window (1990) and any time zone.

Also tried and held (not kept as tests): every ``/search``, ``/alerts``, ``/feedback`` and
``/articles/doi`` input holding NUL on PostgreSQL (400, never a ``DataError`` 500);
``HEAD`` answers through the guard; the DAG files parse under Airflow's DagBag with
``SHARDS_MAX`` (``tests/dags``: no import errors, no heavy imports); the nightly DAG passes
no window to another source; ``_default_workers`` caps at 64 on bigger machines;
``not_promoted`` shows in the nightly's table and JSON (the Airflow retrain defers its
re-index and never meets ``IndexBusyError``); ``LITPULSE_PUBLIC_URL`` is stripped of its
trailing ``/`` and the feed route's id is an integer (no raw name in the self link).
Observed, not filed: the new catch-all answers an exception after the answer started by
logging it and closing (no streaming route exists); ``hybrid`` refuses a query it could
answer lexically (a deliberate choice of M2, the message names ``mode=lexical``).
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ingest.store import Store
from litpulse.app.export import to_bibtex
from litpulse.core import db
from litpulse.core.settings import Settings
from ranking.refresh import refresh_index
from tests.ranking.corpus import BOTH_DATABASES, make_article, world_on
from tests.review.test_session32m_review import P, _build, _overflowing_encoder, _records

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from litpulse.app.api import create_app  # noqa: E402
from litpulse.app.tokens import create_token  # noqa: E402


@pytest.fixture(scope="module")
def overflowing(tmp_path_factory: pytest.TempPathFactory) -> str:
    return _overflowing_encoder(tmp_path_factory.mktemp("enc-32p"))


@pytest.fixture(scope="module", params=BOTH_DATABASES)
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, overflowing: str
) -> Iterator[Settings]:
    def build(home: Path, url: str) -> Settings:
        s = _build(home, url, overflowing, _records())
        return s.replace(api_feedback_per_hour=100000)

    yield from world_on(request.param, tmp_path_factory, "s32p", build)


@pytest.fixture(scope="module")
def client(world: Settings) -> Iterator[tuple[TestClient, dict[str, str]]]:
    token = create_token(world, "alice").token
    with TestClient(create_app(world), raise_server_exceptions=False) as c:
        yield c, {"Authorization": f"Bearer {token}"}


# ------------------------------------------------------------------------------ P1


def test_p1_a_saved_search_the_model_cannot_embed_is_refused_or_still_matched(
    world: Settings, client: tuple[TestClient, dict[str, str]]
) -> None:
    from litpulse.pipeline.digest import run_digest

    c, auth = client
    assert c.get("/search", params={"q": "zebra heart failure"}).status_code == 400
    r = c.post("/alerts", json={"name": "zebra hf", "query": "zebra heart failure",
                                "min_score": 0.0}, headers=auth)  # fmt: skip
    if r.status_code == 400:  # refused on save, as the search refuses it: fixed
        assert "embed" in r.json()["detail"] or "query" in r.json()["detail"]
        return
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    time.sleep(0.05)  # stored after the search's watermark
    Store(db.connect(world)).apply([make_article(P + 40, "Heart failure new",
                                                 "Heart failure outcomes in a new cohort.")])
    assert refresh_index(world).published
    report = run_digest(world).to_dict()
    mine = next(d for d in report["searches"] if d["search_id"] == sid)
    # accepted: it is searched (lexically at least), never a failure each night
    assert mine["error"] is None, mine["error"]
    assert mine["matched"] >= 1, mine


def test_an_ordinary_saved_search_is_accepted(client: tuple[TestClient, dict[str, str]]) -> None:
    c, auth = client
    r = c.post("/alerts", json={"name": "hf plain", "query": "heart failure outcomes"},
               headers=auth)  # fmt: skip
    assert r.status_code == 201, r.text


def test_similar_of_the_zero_vector_article_finds_nothing(
    client: tuple[TestClient, dict[str, str]],
) -> None:
    c, _ = client
    r = c.get(f"/similar/{P + 2}")  # 'zebra' in its text: stored as the zero vector
    assert r.status_code == 200, r.text
    assert r.json()["results"] == []
    assert "content-security-policy" in r.headers


# ------------------------------------------------------------------------------ P3

REFUSED_BY_SEARCH = ["the", "of the", "NOT asthma", "1"]


def test_p3_feedback_refuses_a_query_the_search_refuses(
    client: tuple[TestClient, dict[str, str]],
) -> None:
    c, auth = client
    got = {}
    for query in REFUSED_BY_SEARCH:
        assert c.get("/search", params={"q": query, "mode": "lexical"}).status_code == 400
        r = c.post("/feedback", json={"query": query, "pmid": P + 1, "relevant": True},
                   headers=auth)  # fmt: skip
        got[query] = r.status_code
    assert got == dict.fromkeys(REFUSED_BY_SEARCH, 400), got


@pytest.mark.parametrize("query", ["🫀 heart", "2019-nCoV", "heart failure"])
def test_feedback_on_a_searchable_query_is_recorded(
    client: tuple[TestClient, dict[str, str]], query: str
) -> None:
    c, auth = client
    r = c.post("/feedback", json={"query": query, "pmid": P + 1, "relevant": True},
               headers=auth)  # fmt: skip
    assert r.status_code == 201, r.text


# ------------------------------------------------------------------------------ P2


def _bibtex_names(field: str) -> list[str]:
    """The names BibTeX reads from an ``author`` field, as ``name_scan_for_and`` does
    (bibtex.web): at brace depth 0, an ``and`` in any case with white space before it (a
    name's first character has none) and after it ends a name; each name is stripped."""
    names, depth, start, i = [], 0, 0, 0
    while i < len(field):
        ch = field[i]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif (depth == 0 and i > start and field[i - 1].isspace()
              and field[i:i + 3].lower() == "and" and field[i + 3:i + 4].isspace()):  # fmt: skip
            names.append(field[start:i].strip())
            i += 3
            start = i
            continue
        i += 1
    names.append(field[start:].strip())
    return names


def _author_field(middle: dict[str, Any]) -> str:
    row = {"title": "T", "authors": [{"last_name": "Roe", "fore_name": "R"}, middle,
                                     {"last_name": "Poe", "fore_name": "P"}]}  # fmt: skip
    found = re.search(r"^  author = \{(.*)\},?$", to_bibtex([1], {1: row}), re.MULTILINE)
    assert found is not None
    return found.group(1)


@pytest.mark.parametrize("middle", [
    {"last_name": "Jones", "initials": "AND"},      # A. N. D. Jones, initials only
    {"last_name": "and Wesson", "fore_name": "J"},  # a group given as a person
    {"last_name": "Smith", "fore_name": "And"},
], ids=["initials-AND", "last-begins-and", "fore-is-And"])
def test_p2_bibtex_keeps_a_name_whose_part_is_or_edges_on_and(middle: dict[str, Any]) -> None:
    names = _bibtex_names(_author_field(middle))
    assert len(names) == 3 and names[0] == "Roe, R" and names[2] == "Poe, P", names
    assert "," in names[1] and names[1].split(",")[1].strip(), names


@pytest.mark.parametrize(("middle", "braced"), [
    ({"last_name": "Smith and Wesson", "fore_name": "S"}, True),
    ({"last_name": "Anderson", "fore_name": "Sandy"}, False),
    ({"last_name": "Brand", "fore_name": "Andrea"}, False),
])
def test_bibtex_names_holding_and_inside_or_as_letters(
    middle: dict[str, Any], braced: bool
) -> None:
    field = _author_field(middle)
    names = _bibtex_names(field)
    assert len(names) == 3, names
    assert ("{" in names[1]) is braced, names


# ------------------------------------------------------------------------------ guards


@pytest.mark.parametrize(("since", "until"), [
    (dt.datetime(1990, 1, 1, tzinfo=dt.UTC), dt.datetime(1990, 1, 2, tzinfo=dt.UTC)),
    (dt.datetime(1990, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=14))), None),
    (dt.datetime(2024, 3, 10, 2, 30, tzinfo=dt.timezone(dt.timedelta(hours=-12))),
     dt.datetime(2024, 3, 11, tzinfo=dt.UTC)),
])
def test_the_nightly_calendar_check_passes_far_past_windows_in_any_zone(
    tmp_path: Path, since: dt.datetime, until: dt.datetime | None
) -> None:
    from litpulse.pipeline.nightly import _searchable

    _searchable(Settings.from_env({}, home=tmp_path), since, until)  # no ConfigError
