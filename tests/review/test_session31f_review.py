"""Hostile review (session 31f): API tokens, relevance feedback, similar articles, model
history and the operator commands around them (``tokens``, ``feedback``, ``models``,
``similar``, ``status``).

Each confirmed defect was a strict xfail asserting the correct behaviour; all five were
fixed in the same session and are plain tests now: F1 ``hide_password`` masks a secret query
parameter; F2 ``registry.register`` stores a non-finite float as null (``registry.finite``);
F3 ``revoke_token`` counts a judgement the token sent before the active model was made
(``feedback_log``), however often re-sent since; F4 ``clean_expert`` composes the name and
refuses invisible characters (``litpulse.core.text.visible_name``, as saved-search names);
F5 a query or name past the unique index's byte budget is a clear usage error
(``MAX_QUERY_BYTES``, ``MAX_USER_BYTES``), not "the database cannot be reached" (exit 75).
The plain tests at the end are attacks that held.

F1  ``litpulse status`` and ``litpulse settings`` show the PostgreSQL password when it
    is given the way libpq and SQLAlchemy also take it, as a query parameter
    (``postgresql+psycopg://app@db/litpulse?password=SECRET``), under a help text that
    says "Its password is never shown". The operator pastes the output into a ticket or
    a CI log, and the database password goes with it. The ``Settings`` repr (logs,
    tracebacks) shows it too.
    Reproduce: ``LITPULSE_DATABASE_URL='postgresql+psycopg://u@h/db?password=s3cret'
    litpulse status`` prints ``database  postgresql+psycopg://u@h/db?password=s3cret``.
    At fault: ``litpulse.core.settings.hide_password`` masks only ``user:password@``.
    Fix: parse with ``sqlalchemy.engine.make_url`` and render with
    ``hide_password=True``, and mask a ``password`` (any case) query parameter as well
    (keep the plain-text fallback for non-URLs).

F2  On PostgreSQL a retrain whose LoRA run diverged (NaN loss, recorded as it came) can
    not be registered: ``registry.register`` stores the training record as JSON with
    ``NaN`` in it, which PostgreSQL's ``json`` type refuses (``DataError: Token "NaN" is
    invalid``). The retrain ends in a traceback after its training time was spent (a
    ``DataError`` is no ``OperationalError``: the CLI does not catch it), the rejected
    version never appears in ``/models`` or ``models report``, and the gate's verdict on
    it is lost. On SQLite the same version is stored and shown (the fixed review of
    ``/models`` covered SQLite only).
    Reproduce: ``registry.register(..., training={"first_loss": nan, ...})`` on
    PostgreSQL.
    At fault: ``retrain.registry.register`` (and every JSON column written with NaN:
    ``training``, ``metrics``, ``pair_counts``).
    Fix: write JSON columns through one serializer that turns non-finite floats into
    ``null`` (``retrain.report._finite``, or ``json_serializer=`` on the engine with
    ``allow_nan=False`` after that conversion), as the report already does on output.

F3  ``tokens revoke`` under-reports what the active model learnt from the revoked token.
    It counts only withheld judgements whose *standing* time predates the active model;
    a judgement the leaked token sent before the model was trained (so the model learnt
    it) and then sent again, or overturned, after it is counted as 0. The operator reads
    "1 standing judgement excluded" with no "predate the active model … `models
    rollback`" line, and keeps serving a model trained on the leaked token's judgement.
    Reproduce: leaked token judges (gout, 10) relevant; a model is made and promoted; the
    leaked token sends the same judgement again; ``revoke_token`` →
    ``before_active == 0``.
    At fault: ``litpulse.app.tokens.revoke_token`` (``w.judgement.created_at <
    active.created_at``: the standing row's time, rewritten by every re-send).
    Fix: count a withheld judgement when *any* ``feedback_log`` entry of it sent with
    that token predates the active model (``min(created_at)`` over the log rows with
    that ``feedback_id`` and ``token_id``).

F4  Expert names are not normalised to one Unicode form: ``tokens create --expert José``
    typed on a keyboard that composes (NFC) and pasted from a source that does not (NFD,
    ``Jose`` + U+0301) makes two experts that ``tokens list`` shows identically. Each has
    its own ``LITPULSE_API_FEEDBACK_PER_HOUR`` (the expert's limit doubles), its own
    quarter of a round's pairs (``EXPERT_SHARE``), its own saved searches, and a
    judgement of one counts as the other's dispute rather than a change of mind; the
    deprecated body ``user`` naming the expert in the other form is refused 403. Saved-
    search names were given the same rule in session 31c (stored NFC, invisible format
    characters refused); expert names were not.
    Reproduce: ``create_token(s, "José")``, ``create_token(s, "Jose\\u0301")`` with
    ``api_feedback_per_hour=2``: four judgements are accepted, not two.
    At fault: ``retrain.feedback.clean_expert`` (used by ``create_token``,
    ``record_feedback`` and the API's ``user`` check).
    Fix: ``unicodedata.normalize("NFC", …)`` in ``clean_expert`` and refuse ``Cf``
    characters as ``saved_searches`` does (a migration re-normalises stored names).

F5  On PostgreSQL a judgement whose query is within the documented 1000 characters but
    longer than ~2700 bytes in UTF-8 (≥ 900 CJK characters: a pasted Chinese abstract)
    is refused by the unique btree index ``uq_feedback_query_pmid_user`` ("index row
    size 3032 exceeds btree version 4 maximum 2704"). ``litpulse feedback`` then says
    "the database cannot be reached" and exits 75 (EX_TEMPFAIL: retry later), so a
    script retries forever and the judgement is lost; on SQLite it is stored.
    Reproduce: ``litpulse feedback --query "$(1000 CJK characters)" --pmid 10
    --relevant --user ann`` on PostgreSQL.
    At fault: ``retrain.feedback.record_feedback`` / ``MAX_QUERY_CHARS`` against the
    schema's ``UniqueConstraint("query", "pmid", "user")`` on ``feedback``.
    Fix: key the uniqueness on a digest of the query (a ``query_sha256`` column) or bound
    the query in UTF-8 bytes (e.g. 2000) with a clear 400 / usage error; the API's 512
    characters stay within it only while the expert's name is short.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from bench.drift import insert_batch
from litpulse.app.cli import main
from litpulse.core import db
from litpulse.core.errors import ConfigError
from litpulse.core.schema import feedback, model_versions
from litpulse.core.settings import Settings
from retrain import registry
from retrain.feedback import FeedbackSource, record_feedback, trainable_feedback
from tests.litpulse.app.apistore import UNLIMITED, clone_store
from tests.ranking.corpus import real_corpus
from tests.retrain.histories import evaluation, role, training

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from litpulse.app.api import create_app  # noqa: E402
from litpulse.app.tokens import create_token, revoke_token, verify_token  # noqa: E402

W = dt.datetime(2024, 1, 5, tzinfo=dt.UTC)


def _articles(settings: Settings, n: int = 4) -> None:
    insert_batch(db.connect(settings), start_pmid=10, n=n, start=dt.date(2024, 1, 1), days=3,
                 ingested=W)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def api_store(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A private copy of the real corpus (SQLite, published index), limits out of the way."""
    return clone_store(real_corpus(tmp_path_factory), tmp_path / "home", **UNLIMITED)


@pytest.fixture
def pg(postgres_url: str, tmp_path: Path) -> Iterator[Settings]:
    """Settings on the session's PostgreSQL database, emptied."""
    from tests.conftest import _truncate

    s = Settings.from_env({}, home=tmp_path / "home", database_url=postgres_url)
    _truncate(db.connect(s))
    yield s


def _register(settings: Settings, tag: str, *, loss: float = 0.9,
              status: str = "rejected") -> str:
    vid = registry.new_version_id((tag * 6)[:6])
    t = training(3, 10)
    t["first_loss"] = t["last_loss"] = loss
    registry.register(
        settings, id=vid, adapter_path=f"/{tag}", adapter_sha256=(tag * 64)[:64],
        parent_id=None, window_start=None, window_end=None,
        pair_counts={"title_abstract": 3, "feedback": 1}, options={"batch_size": 2},
        training=t, status=status,
        metrics=evaluation(role(vid, 0.0 if math.isnan(loss) else 0.5, 0.9),
                           role("base", 0.3, 0.8), role("base", 0.3, 0.8), False, ["no"]),
    )
    return vid


def _strict_json(text: str) -> object:
    def refuse(name: str) -> object:
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


# ------------------------------------------------------------------------------- F1


@pytest.mark.postgres
def test_f1_status_and_settings_never_show_a_password_given_as_a_query_parameter(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    secret = "s3cret-F1-pw"
    url = f"{postgres_url}?password={secret}"  # trust auth: the server takes any password
    monkeypatch.setenv("LITPULSE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LITPULSE_DATABASE_URL", url)
    try:
        assert main(["status"]) == 0
        assert main(["status", "--json"]) == 0
        assert main(["settings"]) == 0
        out = capsys.readouterr()
        shown = Settings.from_env({}, home=tmp_path / "home", database_url=url)
        assert "postgresql" in out.out  # the database is named ...
        assert secret not in out.out + out.err  # ... never its password
        assert secret not in repr(shown)
    finally:
        engine = db._ENGINES.pop(url, None)
        if engine is not None:
            engine.dispose()


# ------------------------------------------------------------------------------- F2


@pytest.mark.postgres
def test_f2_a_diverged_retrain_is_registered_and_shown_on_postgresql(pg: Settings) -> None:
    from sqlalchemy.exc import DBAPIError

    try:
        vid = _register(pg, "d", loss=math.nan)
    except DBAPIError as exc:
        raise AssertionError(f"register raised: {str(exc.orig)[:90]}") from None
    with TestClient(create_app(pg), raise_server_exceptions=False) as c:
        r = c.get("/models", headers={"Accept": "application/json"})
    assert r.status_code == 200
    doc = _strict_json(r.text)
    assert [v["id"] for v in doc["versions"]] == [vid]  # type: ignore[index]


def test_f2_control_the_same_version_is_stored_and_shown_on_sqlite(
    sqlite_settings: Settings,
) -> None:
    vid = _register(sqlite_settings, "d", loss=math.nan)
    with TestClient(create_app(sqlite_settings), raise_server_exceptions=False) as c:
        r = c.get("/models", headers={"Accept": "application/json"})
        assert c.get("/models/plot.png").status_code == 200
    assert r.status_code == 200
    assert [v["id"] for v in _strict_json(r.text)["versions"]] == [vid]  # type: ignore[index]


# ------------------------------------------------------------------------------- F3


def _activate(settings: Settings, vid: str) -> None:
    with db.connect(settings).begin() as conn:
        conn.execute(update(model_versions).where(model_versions.c.id == vid)
                     .values(status="active"))


@pytest.mark.parametrize("again", [True, False], ids=["re-sent", "overturned"])
def test_f3_revoke_counts_a_judgement_the_active_model_learnt_before_it_was_re_sent(
    settings: Settings, again: bool
) -> None:
    _articles(settings)
    leaked = create_token(settings, "ann").info

    def judge(relevant: bool) -> None:
        record_feedback(settings, query="gout", pmid=10, relevant=relevant, user="ann",
                        source=FeedbackSource.API, token_id=leaked.id)

    judge(True)  # the leaked token's judgement ...
    time.sleep(0.02)
    vid = _register(settings, "a", status="candidate")  # ... a model is made from it ...
    _activate(settings, vid)
    assert registry.active_version(settings).id == vid  # type: ignore[union-attr]
    time.sleep(0.02)
    judge(again)  # ... and the leaked token sends it again (or overturns it)
    done = revoke_token(settings, leaked.id)
    assert done.info.excluded == 1 and done.active_model == vid
    # the active model was trained while the leaked token's judgement stood: say so
    assert done.before_active == 1


# ------------------------------------------------------------------------------- F4

NFC = "Jos\u00e9 Garc\u00eda"
NFD = "Jose\u0301 Garci\u0301a"


def test_f4_one_expert_however_the_name_was_typed(api_store: Settings) -> None:
    limited = api_store.replace(api_feedback_per_hour=2)
    a = create_token(limited, NFC)
    b = create_token(limited, NFD)
    codes = []
    with TestClient(create_app(limited), raise_server_exceptions=False) as c:
        for i, tok in enumerate([a.token, a.token, b.token, b.token]):
            r = c.post("/feedback", json={"query": f"malaria {i}", "pmid": 201,
                                          "relevant": True}, headers=_bearer(tok))
            codes.append(r.status_code)
    assert codes == [201, 201, 429, 429]  # one expert, one limit
    assert a.info.expert == b.info.expert  # `tokens list` shows both as one name


# ------------------------------------------------------------------------------- F5


@pytest.mark.postgres
def test_f5_a_long_cjk_query_is_refused_clearly_and_the_longest_allowed_is_recorded(
    pg: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from retrain.feedback import MAX_QUERY_BYTES, MAX_USER_BYTES

    _articles(pg)
    monkeypatch.setenv("LITPULSE_HOME", str(pg.home))
    monkeypatch.setenv("LITPULSE_DATABASE_URL", pg.database_url)
    rnd = random.Random(31)
    query = "".join(chr(rnd.randint(0x4E00, 0x9FFF)) for _ in range(1000))
    code = main(["feedback", "--query", query, "--pmid", "10", "--relevant", "--user", "ann"])
    err = capsys.readouterr().err
    # a usage error saying why, never "cannot be reached" (exit 75: retry for ever)
    assert "cannot be reached" not in err and code not in (0, 75), (code, err)
    # the CLI checks the query as a search does first (session 32p, P3): no search takes
    # more than 512 characters; the byte limit is record_feedback's own (below)
    assert "at most 512 characters" in err, err
    # the longest query and name allowed (random: nothing for PostgreSQL to compress)
    longest = "".join(chr(rnd.randint(0x4E00, 0x9FFF)) for _ in range(MAX_QUERY_BYTES // 3))
    name = "".join(chr(rnd.randint(0x20000, 0x2A6DF)) for _ in range(MAX_USER_BYTES // 4))
    assert record_feedback(pg, query=longest, pmid=10, relevant=True, user=name)
    with db.connect(pg).connect() as conn:
        assert conn.execute(select(func.count()).select_from(feedback)).scalar() == 1


def test_f5_the_same_rule_on_sqlite(sqlite_settings: Settings) -> None:
    _articles(sqlite_settings)
    rnd = random.Random(31)
    query = "".join(chr(rnd.randint(0x4E00, 0x9FFF)) for _ in range(1000))
    with pytest.raises(ConfigError, match="bytes in UTF-8"):
        record_feedback(sqlite_settings, query=query, pmid=10, relevant=True, user="ann")
    assert record_feedback(sqlite_settings, query=query[:600], pmid=10, relevant=True,
                           user="ann")  # fmt: skip


# ------------------------------------------------------------------- attacks that held


def test_held_a_revoked_token_stops_at_once_and_the_other_token_of_its_expert_goes_on(
    api_store: Settings,
) -> None:
    """Two tokens of one expert; one revoked while the server runs (no cache): it is 401
    on the next request, the other still writes, and the revoked one's judgement is
    withheld from training while the other's trains."""
    first = create_token(api_store, "ann")
    second = create_token(api_store, "ann")
    body = {"query": "malaria vaccine", "pmid": 201, "relevant": True}
    with TestClient(create_app(api_store), raise_server_exceptions=False) as c:
        assert c.post("/feedback", json=body, headers=_bearer(first.token)).status_code == 201
        revoke_token(api_store, first.info.id)
        r = c.post("/feedback", json={**body, "pmid": 202}, headers=_bearer(first.token))
        assert r.status_code == 401 and first.token not in r.text
        assert c.post("/feedback", json={**body, "pmid": 203},
                      headers=_bearer(second.token)).status_code == 201
        # a token in the query string is no token
        r = c.post(f"/feedback?access_token={second.token}", json=body)
        assert r.status_code == 401
    engine = db.connect(api_store)
    assert verify_token(engine, second.token.upper()) is None
    found = trainable_feedback(engine)
    assert [j.pmid for j in found.judgements] == [203]
    assert [w.judgement.pmid for w in found.withheld] == [201]


def test_held_hostile_feedback_bodies_are_4xx_never_5xx(api_store: Settings) -> None:
    tok = create_token(api_store, "ann").token
    bodies = [
        {"query": "q\u0000", "pmid": 201, "relevant": True},
        {"query": "q", "pmid": 2**70, "relevant": True},
        {"query": "q", "pmid": 201.5, "relevant": True},
        {"query": "q", "pmid": 201, "relevant": 1},
        {"query": "x" * 513, "pmid": 201, "relevant": True},
        {"query": "q", "pmid": 999999, "relevant": True},  # not in the store
        {"query": "q", "pmid": 201, "relevant": True, "user": "ann\u200b"},
        {"query": "q", "pmid": 201, "relevant": True, "user": "\u0001"},
    ]
    with TestClient(create_app(api_store), raise_server_exceptions=False) as c:
        codes = [c.post("/feedback", json=b, headers=_bearer(tok)).status_code for b in bodies]
        raw = c.post("/feedback", content=b'{"query":"\\ud800","pmid":201,"relevant":true}',
                     headers={**_bearer(tok), "content-type": "application/json"})
    assert codes == [400, 422, 422, 422, 422, 404, 400, 400]  # ann+ZWSP: an invisible character
    assert raw.status_code == 422


def test_held_similar_and_models_at_their_bounds(api_store: Settings) -> None:
    with TestClient(create_app(api_store), raise_server_exceptions=False) as c:
        full = c.get("/similar/201", params={"k": 100}).json()
        deep = c.get("/similar/201", params={"k": 100, "offset": 1000}).json()
        assert c.get("/similar/999999").status_code == 404
        assert c.get("/similar/201", params={"k": 101}).status_code == 422
        models = c.get("/models")
        assert c.get("/models/plot.png").status_code == 200
        assert c.get("/status").status_code == 200
    pmids = [h["pmid"] for h in full["results"]]
    assert 201 not in pmids and len(pmids) == len(set(pmids)) and not full["has_more"]
    assert deep["results"] == [] and not deep["has_more"]
    assert models.json() == {"active": "base", "count": 0, "versions": []}
