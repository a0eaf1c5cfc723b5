"""Hostile review (session 27) of bb1b337: each message's delivery key is recorded with its
matches before it goes out (``digest_matches.email_key`` / ``webhook_key``); a message not
known to have gone out is sent again whole with its key, first; matches never handed on go
after it in one new message (litpulse/pipeline/digest.py ``_deliver``, ``_messages``,
``matches_of``; digest_channels.py ``delivery_key``, ``send_email``, ``post_webhook``).

The promise checked (README, "recorded with its matches before it goes out"): every match
reaches each channel, and a receiver that keeps the first message of each key and drops
any later one with that key (``Idempotency-Key`` / ``delivery``, the e-mail's
``Message-ID``) ends up with every match exactly once — so a key is never sent again with
other matches, and a match is never sent again under another key. A kill is a
``BaseException`` (nothing of the digest's ``except`` clauses catches it).

Defects (each first a strict xfail asserting the correct behaviour; all fixed since, the
marks removed: a key that went out is cleared from the matches left out of it, which go
under a new key; a message carries at most ``MESSAGE_MATCHES`` (200) matches; the keys and
stamps are written with one array parameter; the matches never handed on that earlier
digests left go in a message of their own before this digest's — which gives again the
key of the release before, which sent all of a search's pending matches together: K2's
test now models that release (as filed it modelled c11737c, a commit of this session that
never shipped, whose one message a digest cannot be told apart from later ones)):

K1 A key reused for different matches after a deletion and a restore: a message {101,
   103} is handed on (key K recorded) and not taken (HTTP 500); PubMed deletes 103; the
   next digest sends K again with 101 alone (``matches_of`` leaves a deleted article out)
   and stamps it; a record restores 103; the next digest sends K again with 103 alone. The
   receiver holds K already (with 101) and drops it as a repeat: 103 never reaches it,
   while litpulse stamps it as delivered (digest._messages / _deliver: a tried key is
   reused for whatever of its matches is live, even after the key went out without them).
K2 An older store (no ``*_key`` columns) upgraded with matches pending from before: the
   old release sent each digest's matches as a message of their own under
   ``delivery_key(search, that digest's matches)``; one it sent and did not stamp (a kill,
   a timeout) is, after the upgrade, merged with the later digests' matches into one new
   message under a new key: the receiver gets its articles twice under two keys and
   cannot drop the repeat (``add_missing_columns`` adds the columns empty; ``_messages``
   takes every unkeyed match as never handed on).
K3 The one new message is unbounded, and its key (and so its content) is frozen at its
   first try: a webhook down for some weeks (default cap: 50 a night) leaves ~1,800
   matches pending; they go as one ~1.2 MB body, which a receiver behind nginx's default
   ``client_max_body_size`` of 1 MiB refuses (413) — then every night again, whole, and
   everything found after it waits behind it (``break``): the channel is wedged for good,
   no match reaches it again. Before, each digest's matches (at most the cap) went alone.
K4 (PostgreSQL) The same unbounded message crashes the digest: the key is written with
   ``digest_matches.c.id.in_([...])``, one bound parameter per match, outside the
   ``try``; past psycopg's 65,535 parameters (70,000 pending matches: seven nights of
   ``LITPULSE_DIGEST_MAX_MATCHES=10000`` with the channel down, or a search without a
   recipient for long enough) ``psycopg.OperationalError`` leaves ``_deliver`` and
   ``run_digest`` (``digest_step`` logs "digest not run"): no search's match is delivered
   on any channel, that night and every night after, as the pending set only grows. The
   rest of the module uses ``db.id_in_clause`` (one array parameter). (SQLite as built
   here allows 250,000 variables: not reached.)

Attacks that held (plain tests):

H1 A kill at each point — after the key is written and before the send, after the send
   and before the stamp (e-mail or webhook), between the e-mail and the webhook of one
   search, between two searches — then a night with a new match and a re-run: every
   match reaches both channels, every repeat carries the key of the message it repeats,
   no key carries two contents, and a third run sends nothing.
H2 Both channels with different failure histories for the same matches (SMTP down the
   first night, the webhook the second): each channel's keys are consistent and complete.
H3 A partial SMTP refusal: stamped (a warning), never re-sent; the next match goes under
   another key.
H4 ``edit_search`` between the failed try and the resend: the tried message goes again
   whole with its key (same matches), the match found after the edit under another key.
H5 A search removed with its matches and saved again (SQLite gives it the same id, its
   matches the same row ids): its first message's key differs from the old one's (the
   creation time is in it), so the receiver does not drop it.
H6 A tried message whose webhook times out every night (the receiver slow but taking it):
   it goes again with its key each night, the fresh matches wait behind it and are not
   lost; once the receiver is quick, both arrive, no match under two keys. (The waiting is
   the documented order; K3 is where it becomes a loss.)
"""

from __future__ import annotations

import datetime as dt
import re
import time
from typing import Any

import pytest
from sqlalchemy import insert, select, text, update

from ingest.records import Deletion, SourceRef
from ingest.store import Store
from litpulse.core import db
from litpulse.core.schema import articles, digest_matches, saved_searches
from litpulse.core.settings import Settings
from litpulse.core.timeutil import utcnow
from litpulse.pipeline import digest as digest_mod
from litpulse.pipeline.digest import matches_of, run_digest
from litpulse.pipeline.digest_channels import post_webhook
from litpulse.pipeline.saved_searches import add_search, edit_search, remove_search
from ranking.refresh import refresh_index
from tests.conftest import _truncate
from tests.ingest.test_store import make_record
from tests.litpulse.pipeline.test_digest import (
    CRISPR,
    THRESHOLD,
    _Hook,
    _Inbox,
    _load,
    _PickyInbox,
)
from tests.ranking.corpus import ARTICLES, article_rows
from tests.review.test_session27_digest_review import _Killed, _smtp, crispr_world


@pytest.fixture
def world(sqlite_settings: Settings) -> Settings:
    return crispr_world(sqlite_settings)


# ------------------------------------------------------------------ the receiver's view


def _check(messages: list[tuple[str | None, list[int]]], want: set[int]) -> None:
    """A receiver that keeps the first message of each key and drops the others ends up
    with every pmid of ``want`` exactly once; no key came with two contents."""
    kept: dict[str, list[int]] = {}
    for key, pmids in messages:
        assert key, "a message without a key"
        if key in kept:
            assert sorted(kept[key]) == sorted(pmids), (
                f"key {key} sent with {sorted(kept[key])}, then with {sorted(pmids)}: the "
                "receiver drops the second as a repeat"
            )
            continue
        kept[key] = pmids
    got = [p for pmids in kept.values() for p in pmids]
    assert sorted(got) == sorted(set(got)), f"a match under two keys: {kept}"
    assert set(got) == want, f"kept {sorted(set(got))}, wanted {sorted(want)}"


def _posted(hook: _Hook, search_id: int | None = None) -> list[tuple[str | None, list[int]]]:
    out = []
    for key, body in zip(hook.keys, hook.bodies, strict=True):
        assert key == body["delivery"]
        if search_id is None or body["search"]["id"] == search_id:
            out.append((key, [m["pmid"] for m in body["matches"]]))
    return out


_URL = re.compile(r"pubmed\.ncbi\.nlm\.nih\.gov/(\d+)")


def _mailed(inbox: Any, name: str | None = None) -> list[tuple[str | None, list[int]]]:
    out = []
    for _, msg in inbox.messages:
        if name is None or f"“{name}”" in str(msg["Subject"]):
            out.append((msg["Message-ID"], [int(p) for p in _URL.findall(msg.get_content())]))
    return out


def _night(s: Settings, pmids: set[int]) -> None:
    _load(db.connect(s), pmids)
    assert refresh_index(s).published


# ------------------------------------------------------------------------ defects


def test_a_restored_match_is_not_sent_under_a_key_already_used_for_other_matches(
    world: Settings, hook: _Hook
) -> None:
    s = world.replace(digest_webhook_url=hook.url)
    engine = db.connect(s)
    search = add_search(s, name="crispr", query=CRISPR, min_score=THRESHOLD, owner="alice")
    hook.status = 500
    _night(s, {101, 103})
    assert run_digest(s).matched == 2  # handed on under one key, not taken
    store = Store(engine)
    store.apply([Deletion(103, SourceRef("file", "pubmed26n0002.xml", 2))])
    hook.status = 200
    assert run_digest(s).posted == 1  # 101, under the tried key
    a = ARTICLES[103]
    store.apply([make_record(103, title=a["title"], abstract=a["abstract"],
                             source=SourceRef("file", "pubmed26n0003.xml", 3))])  # fmt: skip
    digest_mod._deliver(s, engine)
    assert not matches_of(engine, search.id, pending="webhook")  # litpulse says delivered
    _check(_posted(hook), {101, 103})


def test_a_message_sent_before_the_upgrade_goes_again_under_its_old_key(
    world: Settings, hook: _Hook
) -> None:
    """The release before recorded keys (stop 40, 3980e44) sent all of a search's pending
    matches as one message under ``delivery_key(search, all of them)``: one it sent and
    did not stamp goes again, after the upgrade, under that key, and what the first digest
    after the upgrade finds goes in another message. (As filed, the old release sent each
    digest's matches alone: that was c11737c, a commit of this session that never shipped.)"""
    s = world.replace(digest_webhook_url=hook.url)
    engine = db.connect(s)
    search = add_search(s, name="crispr", query=CRISPR, min_score=THRESHOLD, owner="alice")
    hook.status = 500
    _night(s, {101})
    run_digest(s)
    _night(s, {103})
    run_digest(s)  # two digests' matches pending, as the old release left them
    # the old release's last try, all pending together: taken by the receiver, the answer
    # lost (a timeout), so not stamped; its key: delivery_key(search, all of them)
    hook.status = 200
    post_webhook(s, search, matches_of(engine, search.id, pending="webhook"))
    with engine.begin() as conn:  # the store as the old release had it
        conn.execute(text("ALTER TABLE digest_matches DROP COLUMN email_key"))
        conn.execute(text("ALTER TABLE digest_matches DROP COLUMN webhook_key"))
    assert sorted(db.add_missing_columns(engine)) == [
        "digest_matches.email_key", "digest_matches.webhook_key"
    ]
    _night(s, {104})  # the first digest after the upgrade finds one more
    assert run_digest(s).posted == 3
    _check(_posted(hook), {101, 103, 104})


def _pending_nights(s: Settings, search: Any, nights: int, per_night: int,
                    first_pmid: int = 9_000_000, lean: bool = False) -> set[int]:
    """``nights`` digests' matches of ``search`` (``per_night`` each, as a digest records
    them: a realistic explanation), stored as the digest writes them; none delivered."""
    engine = db.connect(s)
    template = next(r for r in article_rows() if r["pmid"] == 101)
    explanation = {
        "text": "cosine 0.71 to the query (semantic), recency 0.93 (published 2026-11), "
                "citation impact 0.40 (RCR 1.2); matched: CRISPR, gene editing, human cells",
        "components": {"cosine": 0.712345, "recency": 0.93125, "impact": 0.4012,
                       "bm25": None, "weights": {"cosine": 0.8, "recency": 0.1,
                                                 "impact": 0.1}},
    }  # fmt: skip
    if lean:  # the fewest bytes: the point is the count
        template = {**template, "abstract": "", "authors": [], "mesh": [], "record": {}}
        explanation = {}
    pmids: set[int] = set()
    base = utcnow()
    arts, rows = [], []
    for night in range(nights):
        found = base - dt.timedelta(days=nights - night)
        for i in range(per_night):
            pmid = first_pmid + night * per_night + i
            pmids.add(pmid)
            title = f"study {pmid}" if lean else (
                "CRISPR-Cas9 base editing of the HBB locus in human haematopoietic stem "
                f"cells: off-target profile, study {pmid}")
            arts.append({**template, "pmid": pmid, "doi": f"10.1000/x.{pmid}", "title": title})
            rows.append({"search_id": search.id, "pmid": pmid, "title": title,
                         "score": 0.7, "explanation": explanation, "index_version": "v1",
                         "model_version": "m1", "found_at": found})  # fmt: skip
    with engine.begin() as conn:
        conn.execute(insert(articles), arts)
        conn.execute(insert(digest_matches), rows)
    return pmids


def test_a_channel_back_after_weeks_gets_every_match_through_a_1_mib_body_limit(
    sqlite_settings: Settings,
) -> None:
    hook = _Hook(limit=1 << 20)
    try:
        s = sqlite_settings.replace(digest_webhook_url=hook.url)  # cap: the default 50
        engine = db.connect(s)
        search = add_search(s, name="crispr", query=CRISPR, min_score=THRESHOLD, owner="al")
        # 36 nights of a busy search with the webhook down (each night at most the cap)
        want = _pending_nights(s, search, nights=36, per_night=s.digest_max_matches)
        for _ in range(5):  # back up: five more digests
            digest_mod._deliver(s, engine)
        assert not hook.refused, f"413 x{hook.refused}: the pending matches never go out"
        assert not matches_of(engine, search.id, pending="webhook")
        _check(_posted(hook), want)
    finally:
        hook.close()


@pytest.fixture
def pg_settings(postgres_url: str, tmp_path: Any) -> Settings:
    s = Settings.from_env({}, home=tmp_path / "home", database_url=postgres_url)
    _truncate(db.connect(s))
    return s


@pytest.mark.postgres
def test_seventy_thousand_pending_matches_do_not_crash_the_digest(
    pg_settings: Settings, hook: _Hook, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy.exc import OperationalError

    # all of them in one message (350 messages of 200 took half of this test): every
    # statement of the digest then carries all 70,000, not only those over all pending
    monkeypatch.setattr(digest_mod, "MESSAGE_MATCHES", 100_000)
    s = pg_settings.replace(digest_webhook_url=hook.url, digest_max_matches=10_000)
    engine = db.connect(s)
    search = add_search(s, name="crispr", query=CRISPR, min_score=THRESHOLD, owner="al")
    want = _pending_nights(s, search, nights=7, per_night=10_000, lean=True)
    try:
        posted = digest_mod._deliver(s, engine)[1]
    except OperationalError as exc:
        raise AssertionError(f"the digest raised: {str(exc)[:120]}") from None
    assert posted == len(want)
    assert {m["pmid"] for b in hook.bodies for m in b["matches"]} == want


# ------------------------------------------------------------------------ held


def _kill_webhook_before_send(monkeypatch: pytest.MonkeyPatch, **_: Any) -> None:
    def post(*args: Any, **kwargs: Any) -> None:
        raise _Killed

    monkeypatch.setattr(digest_mod, "post_webhook", post)


def _kill_after_send(channel: str) -> Any:
    def patch(monkeypatch: pytest.MonkeyPatch, **_: Any) -> None:
        name = "send_email" if channel == "email" else "post_webhook"
        real = getattr(digest_mod, name)

        def send(*args: Any, **kwargs: Any) -> Any:
            real(*args, **kwargs)
            raise _Killed

        monkeypatch.setattr(digest_mod, name, send)

    return patch


def _kill_email_before_send(monkeypatch: pytest.MonkeyPatch, **_: Any) -> None:
    def send(*args: Any, **kwargs: Any) -> None:
        raise _Killed

    monkeypatch.setattr(digest_mod, "send_email", send)


def _kill_matches_of(when: Any) -> Any:
    def patch(monkeypatch: pytest.MonkeyPatch, second: int) -> None:
        real = digest_mod.matches_of

        def matches(engine: Any, search_id: int, **kwargs: Any) -> Any:
            if when(search_id, kwargs.get("pending"), second):
                raise _Killed
            return real(engine, search_id, **kwargs)

        monkeypatch.setattr(digest_mod, "matches_of", matches)

    return patch


KILLS = {
    "webhook key written, not sent": _kill_webhook_before_send,
    "e-mail key written, not sent": _kill_email_before_send,
    "webhook sent, not stamped": _kill_after_send("webhook"),
    "e-mail sent, not stamped": _kill_after_send("email"),
    # the first search's e-mail stamped, its webhook not begun
    "between the e-mail and the webhook": _kill_matches_of(
        lambda sid, pending, second: sid != second and pending == "webhook"),
    # the first search delivered on both channels, the second not begun
    "between two searches": _kill_matches_of(
        lambda sid, pending, second: sid == second and pending == "email"),
}


@pytest.mark.parametrize("kill", list(KILLS))
def test_a_kill_at_each_point_then_reruns_deliver_each_match_once_by_key(
    world: Settings, hook: _Hook, monkeypatch: pytest.MonkeyPatch, kill: str
) -> None:
    inbox = _Inbox()
    s, controller = _smtp(world.replace(digest_webhook_url=hook.url), inbox)
    engine = db.connect(s)
    one = add_search(s, name="one", query=CRISPR, min_score=THRESHOLD, owner="a")
    two = add_search(s, name="two", query=CRISPR, min_score=THRESHOLD, owner="b")
    controller.start()
    try:
        _night(s, {101})
        with monkeypatch.context() as m:
            KILLS[kill](m, second=two.id)
            with pytest.raises(_Killed):
                run_digest(s)
        _night(s, {103})  # the next night finds another match
        report = run_digest(s)
        assert not report.failures, report.failures
        assert run_digest(s).emailed == run_digest(s).posted == 0
    finally:
        controller.stop()
    for search in (one, two):
        assert not matches_of(engine, search.id, pending="email")
        assert not matches_of(engine, search.id, pending="webhook")
        _check(_posted(hook, search.id), {101, 103})
        _check(_mailed(inbox, search.name), {101, 103})


def test_two_channels_with_different_failure_histories_each_get_every_match_once(
    world: Settings, hook: _Hook
) -> None:
    inbox = _Inbox()
    s, controller = _smtp(world.replace(digest_webhook_url=hook.url), inbox)
    engine = db.connect(s)
    search = add_search(s, name="crispr", query=CRISPR, min_score=THRESHOLD, owner="a")
    _night(s, {101})
    assert run_digest(s).failures  # SMTP down; the webhook takes 101
    controller.start()
    try:
        hook.status = 500
        _night(s, {103})
        run_digest(s)  # e-mail: 101 again (its key), then 103; webhook: 103 fails
        hook.status = 200
        _night(s, {104})
        run_digest(s)
        run_digest(s)
    finally:
        controller.stop()
    assert not matches_of(engine, search.id, pending="email")
    assert not matches_of(engine, search.id, pending="webhook")
    _check(_posted(hook), {101, 103, 104})
    _check(_mailed(inbox), {101, 103, 104})


def test_a_partial_smtp_refusal_is_not_sent_again_and_the_next_match_has_another_key(
    world: Settings,
) -> None:
    inbox = _PickyInbox()
    s, controller = _smtp(world, inbox)
    s = s.replace(digest_smtp_to="alice@example.org, bob@example.org")
    engine = db.connect(s)
    search = add_search(s, name="crispr", query=CRISPR, min_score=THRESHOLD, owner="a")
    controller.start()
    try:
        _night(s, {101})
        first = run_digest(s)
        assert first.warnings and not first.failures
        _night(s, {103})
        run_digest(s)
        run_digest(s)
    finally:
        controller.stop()
    assert len(inbox.messages) == 2
    assert not matches_of(engine, search.id, pending="email")
    _check(_mailed(inbox), {101, 103})


def test_a_search_edited_between_the_try_and_the_resend(world: Settings, hook: _Hook) -> None:
    s = world.replace(digest_webhook_url=hook.url)
    engine = db.connect(s)
    search = add_search(s, name="crispr", query=CRISPR, min_score=THRESHOLD, owner="a")
    hook.status = 500
    _night(s, {101})
    run_digest(s)
    with engine.connect() as conn:
        tried = conn.execute(select(digest_matches.c.webhook_key)).scalar_one()
    edit_search(s, search.id, min_score=THRESHOLD - 0.01)
    hook.status = 200
    _night(s, {103})
    run_digest(s)
    run_digest(s)
    assert hook.keys[0] == tried
    assert [m["pmid"] for m in hook.bodies[0]["matches"]] == [101]
    _check(_posted(hook), {101, 103})


def test_a_search_saved_again_under_a_reused_id_gets_keys_of_its_own(
    world: Settings, hook: _Hook
) -> None:
    s = world.replace(digest_webhook_url=hook.url)
    engine = db.connect(s)
    old = add_search(s, name="crispr", query=CRISPR, min_score=THRESHOLD, owner="a")
    _night(s, {101})
    run_digest(s)
    with engine.connect() as conn:
        old_match = conn.execute(select(digest_matches.c.id)).scalar_one()
    remove_search(s, old.id)
    new = add_search(s, name="crispr", query=CRISPR, min_score=THRESHOLD, owner="a")
    assert new.id == old.id  # SQLite hands the freed id out again
    with engine.begin() as conn:  # its watermark back: 101 is new for it
        conn.execute(update(saved_searches).values(watermark=old.watermark))
    run_digest(s)
    with engine.connect() as conn:
        assert conn.execute(select(digest_matches.c.id)).scalar_one() == old_match
    assert len(hook.bodies) == 2 and hook.keys[0] != hook.keys[1]
    assert [m["pmid"] for m in hook.bodies[1]["matches"]] == [101]


def test_a_tried_message_timing_out_every_night_holds_the_fresh_ones_back_not_lost(
    world: Settings, hook: _Hook, monkeypatch: pytest.MonkeyPatch
) -> None:
    from litpulse.pipeline.digest_channels import DeliveryError

    s = world.replace(digest_webhook_url=hook.url)
    engine = db.connect(s)
    search = add_search(s, name="crispr", query=CRISPR, min_score=THRESHOLD, owner="a")
    real = digest_mod.post_webhook
    slow = {"on": True}

    def post(*args: Any, **kwargs: Any) -> None:
        real(*args, **kwargs)  # the receiver takes it, the answer comes too late
        if slow["on"]:
            raise DeliveryError("webhook POST failed: timed out")

    monkeypatch.setattr(digest_mod, "post_webhook", post)
    for night in (101, 103, 104):
        _night(s, {night})
        assert run_digest(s).failures
    assert [len(b["matches"]) for b in hook.bodies] == [1, 1, 1]  # the tried one, alone
    assert len(set(hook.keys)) == 1
    assert {m.pmid for m in matches_of(engine, search.id, pending="webhook")} == {101, 103, 104}
    slow["on"] = False
    started = time.perf_counter()
    run_digest(s)
    assert time.perf_counter() - started < 30
    _check(_posted(hook), {101, 103, 104})
