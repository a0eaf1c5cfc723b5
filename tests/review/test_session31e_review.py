"""Hostile review (session 31e) of this session's fixes (58f444c iCite snapshot merge and
coalesce, 47acfcd model switches under a lease, 69fb9e9 hostile-user API/CLI fixes, 18e993b
the watermark chain's start), on SQLite and PostgreSQL where the store matters.

Defects (were strict xfails asserting the correct behaviour; fixed in the same session, now
plain tests: E1 ``get_search`` takes the row named exactly as typed, and refuses as ambiguous
where only other forms match several; E2 names refuse a named list of invisible characters,
not every format character; E3 a typed DOI is checked for control characters as typed, and
only a link's decoded text after decoding):

E1. **A saved search named by its exact (legacy) name acts on another saved search:
    ``alerts remove`` deletes the wrong one, with its matches.** Before this release names
    were unique byte for byte, so a store may hold ``café`` composed (id 1, "heart
    failure") and ``café`` decomposed (id 2, "asthma", saved from a paste of a macOS file
    name). 69fb9e9 made ``get_search`` look a name up in all its forms and take *the
    oldest* row: ``litpulse alerts remove <the decomposed name, byte for byte as
    alerts list printed it>`` now removes id 1 -- the other search and every match it
    recorded -- and id 2 stays; ``alerts edit``/``alerts feed`` by that name act on id 1
    too. Before the fix the exact name found id 2. What the user loses: a saved search and
    its match history they did not name. Reproduction:
    ``test_e1_the_exact_legacy_name_removes_its_own_search`` (both databases). At fault:
    ``litpulse/pipeline/saved_searches.py::get_search`` (``name IN _name_forms(...)``
    ``ORDER BY id`` ``.first()``). Suggested fix: prefer the row whose name equals the
    typed text byte for byte; when only other forms match and more than one row does,
    refuse as ambiguous naming the ids (``ConfigError``), never pick one silently.

E2. **A saved-search name holding a format character of real writing or of an emoji is
    refused.** 69fb9e9 refuses every Unicode ``Cf`` character in a name except the two
    joiners, "which spell words and emoji". But emoji and scripts use other ``Cf``
    characters: the flags of Scotland, England and Wales are emoji *tag sequences*
    (U+1F3F4 followed by TAG letters U+E0067 ... and CANCEL TAG U+E007F, all ``Cf``);
    Mongolian words hold U+180E MONGOLIAN VOWEL SEPARATOR (``Cf``); Arabic and Syriac
    text hold U+0600..U+0605, U+06DD, U+070F (visible signs, ``Cf``). ``POST /alerts``
    with the name ``"Scotland 🏴󠁧󠁢󠁳󠁣󠁴󠁿 trials"`` answers 400 "must not hold the invisible character
    U+E0067" (so does ``alerts add``); before this release it was saved. What the user
    loses: a name they could save before (and that reads as no other). Reproduction:
    ``test_e2_emoji_tag_flags_and_script_format_characters_name_a_search``. At fault:
    ``litpulse/pipeline/saved_searches.py::_clean_name`` (``category == "Cf"`` minus
    ``_HIDDEN``). Suggested fix: refuse a named list of invisible characters (U+200B,
    U+2060..U+2064, U+FEFF, U+00AD, the bidi marks/embeddings/overrides/isolates U+200E,
    U+200F, U+202A..U+202E, U+2066..U+2069, U+061C) rather than the whole ``Cf`` category;
    or allow TAG characters after an emoji base and ``Cf`` characters of the name's own
    script.

E3. **An article whose stored DOI holds a literal ``%`` escape of a control character
    can no longer be looked up by its DOI, and the search points at an address that
    answers 400.** PubMed's DOIs are stored as given (``ingest.fields._clean_doi``:
    a plain DOI's ``%`` stays literal, only a ``doi.org`` link is decoded), so
    ``10.5555/100%1Fx`` is stored as those 15 characters. 69fb9e9's typed check runs
    ``unquote`` over *every* typed DOI, link or not, and refuses the text when the decoded
    form holds a control character: ``GET /articles/doi/10.5555/100%251Fx`` (the DOI
    itself, ``%`` escaped in the path; a server decodes the path once) answers 400 "not a
    DOI" (``Store.article_by_doi``), ``litpulse article 10.5555/100%1Fx`` is a usage error,
    and ``GET /search?q=https://doi.org/10.5555/100%251Fx`` says "the query is a DOI alone:
    GET /articles/doi/10.5555/100%251fx shows that article" -- an address that answers 400.
    Before this release all three found the article. Rare (a literal ``%`` followed by
    two hex digits naming a C0/C1 control or DEL in a DOI's suffix), but the store and the
    lookup now disagree on what is a DOI. Reproduction:
    ``test_e3_a_stored_doi_with_a_literal_percent_escape_is_found`` (both databases). At
    fault: ``litpulse/core/text.py::clean_doi`` (``_REFUSED.search(unquote(text))`` for a
    non-link DOI). Suggested fix: refuse a control character in the text as typed, and in
    the decoded text only for a ``doi.org`` link (the branch that decodes); i.e. check
    ``unquote(text)`` only where ``_LINK`` matches, and ``text`` itself otherwise.

Attacks that held (plain tests below where cheap, both databases):

* The watermark chain's start (18e993b): a store whose first run by start time *failed*
  (so the "first" is the next night's), then nightly windows, then an old day pulled by
  hand: the mark stays at the last night (``test_held_a_failed_first_night_...``); a store
  begun by a bootstrap (update files: the first span covers all before, no start to
  filter by) with an old day pulled by hand after the nightly windows: the mark stays
  (``test_held_a_bootstrap_first_...``).
* Read only (no test): a withheld or pending old window (its span reaches its start) is
  skipped or only extends; a multi-day manual window crossing the chain's start joins it;
  an initial load done year by year newest first keeps its chain; a backfill of the day
  before the first night (ending after the first window's NLM-midnight begin) joins the
  chain without cutting it; ``--query`` runs are excluded before ``first`` is chosen; the
  overlap setting is applied to ``first`` and every span alike. Clock skew would need days.
* iCite snapshot (58f444c), by reading and against the row-at-a-time rule: three rows of
  one PMID, a bad row between two good ones (the bad row is never parsed into the batch),
  a checkpoint between the two rows (the second batch's COPY now coalesces over what the
  first wrote, as SQLite's ``icite_update`` does), and a folder load (each file its own
  fetch date, ``keep_newer``) all store what rows stored one by one would. That a NULL
  never clears a value is the documented rule of the API refresh too (``ingest.citations``
  module docstring: "a null from iCite is 'not known'"): no defect. The per-batch
  ``updated``/``skipped`` counts of a PMID met twice still depend on the batch size (one
  update in a batch, two across batches) -- as before the fix, counts only.
* Model switches (47acfcd), by reading: ``_restore``'s full path only when the switched-in
  version alone is active, the partial path keeps the newer (deferred) switch and puts back
  only the switched-in row (a rollback's target to ``retired`` with its old
  ``promoted_at``, so ``_previous_active`` after the undo still finds the version that
  served); a rollback to the base model (``switched_in`` None) restores fully when nothing
  is active; ``LeasedReindex`` is entered in an ``ExitStack`` around ``promote``, so the
  lease is released when ``promote`` raises (``ConfigError``, an interrupted re-index) and
  never taken when the gate rejects; the nightly's own index step takes and releases its
  lease before the retrain step, so the retrain does not refuse itself. A busy index now
  fails the nightly at its retrain step before the digest, as it did before the fix.
* A note for later reviews (no product defect): Starlette's ``TestClient`` decodes a
  request path twice (``scope["path"]`` is ``unquote`` of httpx's already decoded path:
  ``/articles/doi/10.5555/a%2541`` reaches the endpoint as ``10.5555/aA``), while uvicorn
  decodes once; a test of a ``%25`` in a DOI path through ``TestClient`` tests the
  harness, so E3 calls ``Store.article_by_doi`` with the once-decoded path instead.
* 69fb9e9 otherwise: the page's alerts.js sends ``min_score`` as ``Number(...)`` and the
  booleans as JSON ``true`` (strict fields accept both; a JSON integer is a strict float);
  ``litpulse search`` against a JSON object without ``index_version``/``options`` searches
  in process; legacy names holding a zero-width space are still found byte for byte.
"""

from __future__ import annotations

import datetime as dt
import unicodedata
from typing import Any
from urllib.parse import unquote

import pytest
from sqlalchemy import insert

from ingest.store import Store
from litpulse.core import db
from litpulse.core.errors import LitpulseError
from litpulse.core.schema import articles, ingest_runs, saved_searches
from litpulse.core.settings import Settings
from litpulse.pipeline.saved_searches import add_search, list_searches
from tests.ranking.corpus import article_rows
from tests.review import test_session31c_review as _c31

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from litpulse.app.api import create_app  # noqa: E402
from litpulse.app.tokens import create_token  # noqa: E402

UTC = dt.UTC
PG = pytest.param("postgresql", marks=pytest.mark.postgres)
BOTH = ["sqlite", PG]
#: The empty store on the parametrized backend, and the CLI runner, of the 31c review.
backend_store = _c31.backend_store
_run_cli = _c31._run_cli


# ------------------------------------------------------------------------------------ E1


@pytest.mark.parametrize("backend_store", BOTH, indirect=True)
def test_e1_the_exact_legacy_name_removes_its_own_search(
    backend_store: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    nfc = unicodedata.normalize("NFC", "café")
    nfd = unicodedata.normalize("NFD", "café")
    first = add_search(backend_store, name=nfc, query="heart failure", owner="cli:x")
    # saved before this release, when names were unique byte for byte (a paste of a
    # macOS file name): the decomposed form, as its own row
    with db.connect(backend_store).begin() as conn:
        conn.execute(insert(saved_searches).values(
            name=nfd, query="asthma", filters={}, owner="cli:x",
            created_at=first.created_at, watermark=first.created_at,
        ))  # fmt: skip
    before = {s.query: s.id for s in list_searches(backend_store)}
    assert set(before) == {"heart failure", "asthma"}
    # the user removes the search named exactly as typed (byte for byte the second row's)
    code, err = _run_cli(["alerts", "remove", nfd], capsys)
    left = {s.query: s.id for s in list_searches(backend_store)}
    # whatever the answer (removed, or refused as ambiguous), the search the user did not
    # name -- "heart failure", id 1, and its matches -- is never the one removed
    assert "heart failure" in left, (code, err, left)
    assert code == 0 and "asthma" not in left, (code, err, left)
    # both forms held again, a third form typed (one accent composed, one not) is no
    # row's exact name: refused as ambiguous, naming both ids, nothing removed
    nfc2 = unicodedata.normalize("NFC", "éé")
    nfd2 = unicodedata.normalize("NFD", "éé")
    mixed = nfc2[0] + nfd2[2:]
    assert len({nfc2, nfd2, mixed}) == 3
    one = add_search(backend_store, name=nfc2, query="gout", owner="cli:x")
    with db.connect(backend_store).begin() as conn:
        conn.execute(insert(saved_searches).values(
            name=nfd2, query="lupus", filters={}, owner="cli:x",
            created_at=one.created_at, watermark=one.created_at,
        ))  # fmt: skip
    code, err = _run_cli(["alerts", "remove", mixed], capsys)
    assert code != 0 and "name one by its id" in err, (code, err)
    assert {"gout", "lupus"} <= {s.query for s in list_searches(backend_store)}


# ------------------------------------------------------------------------------------ E2

#: The flag of Scotland: U+1F3F4 and TAG characters (each of category Cf).
SCOTLAND = "\U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f"
#: A Mongolian word with its vowel separator U+180E (category Cf), as Mongolian is written.
MONGOLIAN = "\u1828\u1820\u180e\u1821"


@pytest.mark.parametrize("backend_store", ["sqlite"], indirect=True)
def test_e2_emoji_tag_flags_and_script_format_characters_name_a_search(
    backend_store: Settings,
) -> None:
    assert {unicodedata.category(c) for c in SCOTLAND[1:]} == {"Cf"}
    token = create_token(backend_store, "alice").token
    auth = {"Authorization": f"Bearer {token}"}
    got = {}
    with TestClient(create_app(backend_store), raise_server_exceptions=False) as client:
        for name in (f"Scotland {SCOTLAND} trials", f"{MONGOLIAN} cohort"):
            answer = client.post("/alerts", json={"name": name, "query": "asthma"}, headers=auth)
            got[name] = (answer.status_code, answer.text[:120])
    assert all(code == 201 for code, _ in got.values()), got


# ------------------------------------------------------------------------------------ E3

#: A DOI whose suffix holds a literal "%1F" (three characters), as PubMed may give it.
PERCENT_DOI = "10.5555/100%1Fx"


@pytest.mark.parametrize("backend_store", BOTH, indirect=True)
def test_e3_a_stored_doi_with_a_literal_percent_escape_is_found(
    backend_store: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    from ingest.fields import _clean_doi

    stored = _clean_doi(PERCENT_DOI)  # what ingest stores from PubMed's <ArticleId>
    assert stored == PERCENT_DOI
    with db.connect(backend_store).begin() as conn:
        conn.execute(insert(articles), [{**article_rows()[0], "pmid": 777, "doi": stored}])
    with TestClient(create_app(backend_store), raise_server_exceptions=False) as client:
        pointed = client.get("/search", params={"q": "https://doi.org/10.5555/100%251Fx"})
    address = pointed.json().get("article")
    assert address == "/articles/doi/10.5555/100%251fx", pointed.text
    # what GET {address} runs: a server (uvicorn) decodes the path once, so the endpoint
    # is given "10.5555/100%1fx" (Starlette's TestClient decodes a path twice, so it is
    # not used for this request: it would hand the endpoint "\x1f" before and after the fix)
    store = Store(db.connect(backend_store))
    found: dict[str, Any] = {}
    for typed in (unquote(address.removeprefix("/articles/doi/")), PERCENT_DOI):
        try:
            found[typed] = store.article_by_doi(typed)["pmid"]
        except LitpulseError as exc:
            found[typed] = f"{type(exc).__name__}: {exc}"
    code, err = _run_cli(["article", PERCENT_DOI, "--json"], capsys)
    assert found == dict.fromkeys(found, 777) and code == 0, (found, code, err[-200:])


# ------------------------------------------------------------------------------ held: 18e993b


def _at(day: dt.date, hour: int = 0) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour), UTC)


def _run(
    conn: Any,
    source: str,
    window: tuple[dt.date, dt.date] | None,
    started: dt.datetime,
    status: str = "succeeded",
    details: dict[str, Any] | None = None,
) -> None:
    conn.execute(insert(ingest_runs).values(
        source=source, target="t", status=status, details=details or {},
        window_start=_at(window[0]) if window else None,
        window_end=_at(window[1]) if window else None,
        started_at=started, finished_at=started + dt.timedelta(minutes=5),
    ))  # fmt: skip


def _nights(conn: Any, first: dt.date, n: int) -> None:
    for i in range(n):
        day = first + dt.timedelta(days=i)
        _run(conn, "eutils", (day, day + dt.timedelta(days=1)),
             _at(day + dt.timedelta(days=1), 2))  # fmt: skip


@pytest.mark.parametrize("backend_store", BOTH, indirect=True)
def test_held_a_failed_first_night_then_an_old_day_pulled_by_hand_leaves_the_mark(
    backend_store: Settings,
) -> None:
    from litpulse.pipeline.planning import last_watermark

    monday = dt.date(2024, 3, 4)
    engine = db.connect(backend_store)
    with engine.begin() as conn:
        # the first night failed (not succeeded: the next night's run is the "first")
        _run(conn, "eutils", (monday, monday + dt.timedelta(days=1)), _at(monday, 2) +
             dt.timedelta(days=1), status="failed")  # fmt: skip
        _nights(conn, monday + dt.timedelta(days=1), 3)  # 03-05 .. 03-07
    mark = last_watermark(backend_store, engine)
    assert mark == _at(dt.date(2024, 3, 8))
    with engine.begin() as conn:  # an old day pulled by hand, after the nights
        _run(
            conn, "eutils", (dt.date(2024, 1, 4), dt.date(2024, 1, 5)), _at(dt.date(2024, 3, 8), 9)
        )
    assert last_watermark(backend_store, engine) == mark


@pytest.mark.parametrize("backend_store", BOTH, indirect=True)
def test_held_a_bootstrap_first_then_nights_then_an_old_day_leaves_the_mark(
    backend_store: Settings,
) -> None:
    from litpulse.pipeline.planning import last_watermark

    monday = dt.date(2024, 3, 4)
    engine = db.connect(backend_store)
    with engine.begin() as conn:
        # a bootstrap of update files applied on 03-04 01:00: all before 03-03 01:00
        _run(conn, "updatefiles", None, _at(monday, 1), details={"files": ["pubmed24n1300"]})
        _nights(conn, monday - dt.timedelta(days=1), 4)  # 03-03 .. 03-06
        _run(
            conn, "eutils", (dt.date(2024, 1, 4), dt.date(2024, 1, 5)), _at(dt.date(2024, 3, 7), 9)
        )
    assert last_watermark(backend_store, engine) == _at(dt.date(2024, 3, 7))
