"""Revoking an API token: what it says it withheld from training, on both databases."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from sqlalchemy import Engine, insert

from bench.drift import insert_batch
from litpulse.app.cli import main
from litpulse.app.tokens import create_token, list_tokens, revoke_token
from litpulse.core.schema import model_versions
from litpulse.core.settings import Settings
from litpulse.core.timeutil import utcnow
from retrain.feedback import FeedbackSource, record_feedback, trainable_feedback


def test_revoking_a_token_reports_the_feedback_it_withheld_from_training(
    settings: Settings, engine: Engine, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("LITPULSE_HOME", str(settings.home))
    if settings.database_url:
        monkeypatch.setenv("LITPULSE_DATABASE_URL", settings.database_url)
    insert_batch(engine, start_pmid=10, n=3, start=dt.date(2024, 1, 1), days=3,
                 ingested=dt.datetime(2024, 1, 5, tzinfo=dt.UTC))
    leaked = create_token(settings, "ann").info.id
    spare = create_token(settings, "ann").info.id
    bob = create_token(settings, "bob").info.id

    def judge(token_id: int, pmid: int, relevant: bool) -> None:
        expert = "bob" if token_id == bob else "ann"
        record_feedback(settings, query="gout", pmid=pmid, relevant=relevant, user=expert,
                        source=FeedbackSource.API, token_id=token_id)

    judge(leaked, 10, True)
    with engine.begin() as conn:  # a model trained after that judgement is active
        conn.execute(insert(model_versions).values(
            id="m1", base_model="", status="active", created_at=utcnow(),
            promoted_at=utcnow(), pair_counts={}, options={}, metrics={},
        ))  # fmt: skip
    judge(leaked, 11, True)
    judge(spare, 12, True)
    judge(leaked, 12, False)  # overturns ann's judgement made with her other token
    judge(bob, 10, True)

    assert main(["tokens", "revoke", str(leaked)]) == 0
    out = capsys.readouterr().out
    assert f"token {leaked} of expert 'ann' revoked" in out
    assert "3 standing judgement(s) sent with it excluded from training (3 sent" in out
    assert "for 1 of them ann's earlier judgement" in out
    assert "1 of them predate the active model m1" in out

    trained = {(j.expert, j.pmid, j.relevant) for j in trainable_feedback(engine).judgements}
    assert trained == {("ann", 12, True), ("bob", 10, True)}  # per token, not per expert

    assert main(["tokens", "list", "--json"]) == 0
    listed = {t["id"]: t["feedback"] for t in json.loads(capsys.readouterr().out)}
    assert listed[leaked] == {"sent": 3, "standing": 3, "training": 0, "excluded": 3,
                              "fallbacks": 1}
    assert listed[bob] == {"sent": 1, "standing": 1, "training": 1, "excluded": 0,
                           "fallbacks": 0}
    assert listed[spare] == {"sent": 1, "standing": 0, "training": 1, "excluded": 0,
                             "fallbacks": 0}  # overturned by the leaked token, trains again
    assert main(["tokens", "list"]) == 0
    table = capsys.readouterr().out
    assert "judgements" in table and "excluded" in table

    again = revoke_token(settings, leaked)  # idempotent, and the same account
    assert (again.info.excluded, again.before_active, again.active_model) == (3, 1, "m1")
    assert again.to_dict()["excluded_before_active_model"] == 1
    assert [t.excluded for t in list_tokens(settings)] == [3, 0, 0]


def test_a_token_carries_the_e_mail_address_its_experts_digests_go_to(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """``tokens create --email`` records where the expert's saved-search digests go
    (:mod:`litpulse.pipeline.digest`); ``tokens list`` shows it. An address that is not
    one plain mailbox is refused before anything is stored: a header's line break (which
    would add recipients to every digest), a display name, two addresses, no domain."""
    from litpulse.core.errors import ConfigError

    monkeypatch.setenv("LITPULSE_HOME", str(settings.home))
    if settings.database_url:
        monkeypatch.setenv("LITPULSE_DATABASE_URL", settings.database_url)
    assert main(["tokens", "create", "--expert", "ann", "--email", " ann@lab.example.org ",
                 "--json"]) == 0  # fmt: skip
    made = json.loads(capsys.readouterr().out)
    assert made["email"] == "ann@lab.example.org"
    assert main(["tokens", "create", "--expert", "bob"]) == 0
    capsys.readouterr()
    assert [t.email for t in list_tokens(settings)] == ["ann@lab.example.org", None]
    assert main(["tokens", "list"]) == 0
    assert "ann@lab.example.org" in capsys.readouterr().out
    for bad in ("ann@lab.example.org\r\nBcc: all@example.org", "Ann <ann@lab.example.org>",
                "ann@lab.example.org, bob@lab.example.org", "ann", "ann@", "@lab.example.org",
                "ann @lab.example.org", "ann@lab\x00.example.org", "a" * 250 + "@example.org"):
        with pytest.raises(ConfigError, match="e-mail"):
            create_token(settings, "eve", email=bad)
    assert main(["tokens", "create", "--expert", "eve", "--email", "eve"]) == 2
    assert "e-mail" in capsys.readouterr().err
    assert len(list_tokens(settings)) == 2  # nothing stored for the refused ones


def test_tokens_issued_before_addresses_existed_keep_working(settings: Settings) -> None:
    """A store made before tokens had addresses gains the column on the next start; its
    tokens have none (their experts' digests go to the shared list) and still verify."""
    from sqlalchemy import text

    from litpulse.app.tokens import verify_token
    from litpulse.core import db

    old = create_token(settings, "ann")
    engine = db.connect(settings)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE api_tokens DROP COLUMN email"))
    db.dispose_engines()
    engine = db.connect(settings)  # reconnecting upgrades the schema
    found = verify_token(engine, old.token)
    assert found is not None and found.expert == "ann" and found.email is None
    new = create_token(settings, "ann", email="ann@lab.example.org", engine=engine)
    assert [t.email for t in list_tokens(settings)] == [None, new.info.email]
