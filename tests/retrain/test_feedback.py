"""Expert feedback: upsert per (query, pmid, user), validation, unknown articles."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import Engine, func, select

from bench.drift import insert_batch
from litpulse.core.errors import ConfigError, NotFoundError
from litpulse.core.schema import feedback
from litpulse.core.settings import Settings
from retrain.feedback import record_feedback


def test_upsert_and_validation(settings: Settings, engine: Engine) -> None:
    insert_batch(engine, start_pmid=10, n=3, start=dt.date(2024, 1, 1), days=3,
                 ingested=dt.datetime(2024, 1, 5, tzinfo=dt.UTC))
    a = record_feedback(settings, query="  gout   flares ", pmid=10, relevant=True, user="ann")
    b = record_feedback(settings, query="gout flares", pmid=10, relevant=False, user="ann")
    c = record_feedback(settings, query="gout flares", pmid=10, relevant=True, user="bob")
    assert a == b != c
    with engine.connect() as conn:
        rows = conn.execute(select(feedback).order_by(feedback.c.id)).all()
        assert conn.execute(select(func.count()).select_from(feedback)).scalar() == 2
    assert rows[0].query == "gout flares" and rows[0].relevant is False
    with pytest.raises(NotFoundError):
        record_feedback(settings, query="q", pmid=999, relevant=True, user="ann")
    with pytest.raises(ConfigError, match="`query`"):
        record_feedback(settings, query="   ", pmid=10, relevant=True, user="ann")
    with pytest.raises(ConfigError, match="`query`"):
        record_feedback(settings, query="x" * 1001, pmid=10, relevant=True, user="ann")
    # nothing a search could have found: invisible characters or punctuation alone
    for nothing in ("\u200b", "\u200b\ufeff \u2060", "?!", "\u2014 \u2026", "\u00ad"):
        with pytest.raises(ConfigError, match="`query` must hold a letter or digit"):
            record_feedback(settings, query=nothing, pmid=10, relevant=True, user="ann")
    for words in ("IL-6", "\u03b2", "\u65b0\u51a0", "gout\u200bflares", "5"):
        record_feedback(settings, query=words, pmid=11, relevant=True, user="ann")
    with pytest.raises(ConfigError, match="`user`"):
        record_feedback(settings, query="q", pmid=10, relevant=True, user="")
    with pytest.raises(ConfigError, match="`pmid`"):
        record_feedback(settings, query="q", pmid=-1, relevant=True, user="ann")


def test_concurrent_judgements_cannot_pass_the_expert_limit(
    settings: Settings, engine: Engine
) -> None:
    """20 judgements at once, 2 allowed an hour: exactly 2 get in (both databases)."""
    import threading

    from retrain.feedback import FeedbackLimitError, FeedbackSource

    insert_batch(engine, start_pmid=500, n=20, start=dt.date(2024, 1, 1), days=5,
                 ingested=dt.datetime(2024, 2, 1, tzinfo=dt.UTC), seed=4)
    barrier = threading.Barrier(20)
    accepted: list[int] = []
    refused: list[int] = []
    errors: list[str] = []

    def judge(pmid: int) -> None:
        barrier.wait()
        try:
            accepted.append(record_feedback(
                settings, query="q", pmid=pmid, relevant=True, user="alice",
                source=FeedbackSource.API, max_per_hour=2, engine=engine,
            ))  # fmt: skip
        except FeedbackLimitError:
            refused.append(pmid)
        except Exception as exc:  # noqa: BLE001 - any other error fails the test below
            errors.append(repr(exc))

    threads = [threading.Thread(target=judge, args=(500 + i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert (len(accepted), len(refused)) == (2, 18)


def test_a_revoked_tokens_judgements_are_withheld_and_earlier_ones_train_again(
    settings: Settings, engine: Engine
) -> None:
    """Ann's first token leaks and is used to overturn her judgements. Revoked, what it
    sent is withheld (kept for the audit); where she had judged the same article for the
    same query before, with her other token or the CLI, that judgement trains again."""
    from litpulse.app.tokens import create_token, revoke_token
    from retrain.feedback import (
        FeedbackSource,
        TokenFeedback,
        feedback_by_token,
        trainable_feedback,
    )

    insert_batch(engine, start_pmid=10, n=4, start=dt.date(2024, 1, 1), days=3,
                 ingested=dt.datetime(2024, 1, 5, tzinfo=dt.UTC))
    leaked = create_token(settings, "ann").info.id
    other = create_token(settings, "ann").info.id

    def judge(pmid: int, relevant: bool, token_id: int | None) -> None:
        source = FeedbackSource.CLI if token_id is None else FeedbackSource.API
        record_feedback(settings, query="gout", pmid=pmid, relevant=relevant, user="ann",
                        source=source, token_id=token_id)

    judge(10, True, other)
    judge(11, True, None)
    judge(10, False, leaked)  # overturned with the leaked token
    judge(11, False, leaked)
    judge(11, False, leaked)  # sent twice: one standing judgement
    judge(12, True, leaked)   # only ever judged with the leaked token
    judge(13, True, other)
    assert feedback_by_token(engine)[leaked] == TokenFeedback(4, 3, 3, 0, 0)

    revoke_token(settings, leaked)
    found = trainable_feedback(engine)
    assert sorted((j.pmid, j.relevant, j.token_id) for j in found.judgements) == [
        (10, True, other), (11, True, None), (13, True, other),
    ]
    assert sorted(w.judgement.pmid for w in found.withheld) == [10, 11, 12]
    assert feedback_by_token(engine)[leaked] == TokenFeedback(4, 3, 0, 3, 2)
    assert feedback_by_token(engine)[other] == TokenFeedback(2, 1, 2, 0, 0)
    with engine.connect() as conn:  # nothing was deleted: the audit keeps all of it
        assert conn.execute(select(func.count()).select_from(feedback)).scalar() == 4
