"""Hostile review (session 29) of 7f1a58f: a digest message the receiver *refuses* (a
webhook's 4xx other than 408/425/429; an SMTP server's permanent 5xx to DATA) no longer
holds back the later messages of its search's channel: it stays pending with its key, its
matches get ``digest_matches.{channel}_refused_at``, it is reported among the digest's
failures, it goes after the other messages from then on, and a channel stops for the
search after ``REFUSED_IN_A_ROW`` (3) refusals in a row (litpulse/pipeline/digest.py
``_deliver``, ``_messages``, ``matches_of``; digest_channels.py ``DeliveryError``,
``post_webhook``, ``send_email``; README, "refuses a message").

Every test drives the real ``_deliver`` against a loopback webhook (``_Hook`` of
test_digest.py) or aiosmtpd server, on SQLite and PostgreSQL; the matches are written as
a digest records them (``_pending_nights`` of the session-27 keys review), so no index is
needed.

Defects (each a strict xfail first, asserting the correct behaviour; all fixed in the
commit after this file's: ``digest._deliver_channel``, ``DeliveryError.too_large``,
``_NO_REFUSAL``, ``_SMTP``):

R1 A wall of refused messages strands every message refused after them, for good.
   ``_messages`` puts the refused messages last, *oldest first*, and ``_deliver`` stops
   after 3 refusals in a row. Once 3 messages are refused for their content (for good:
   the receiver's validator dislikes them), each digest tries those same 3 first among the
   refused, they are refused again, and the channel stops: any message refused after them
   for a passing reason (the token revoked for one night: 401; a proxy's 4xx during a
   deploy) is never tried again, though the receiver would take it now — its matches are
   never delivered, and nothing in the report says so (R2). The commit's promise, "one it
   refuses for good holds back no other", holds for one or two such messages, not three.
   (test_a_message_refused_for_a_night_is_not_stranded_behind_three_refused_for_good)
R2 ...and is no longer reported. README: the refused message "is reported among the
   digest's failures each night"; the stranded one (R1), or any refused one behind a
   5xx that broke the channel earlier that night, is in no failure line: the report says
   three messages were refused, not that a fourth waits too. (test_every_pending_refused_
   message_is_reported_each_night)
R3 A stale ``refused_at`` reorders a message that was never refused. A successful send
   clears ``{channel}_refused_at`` only on the matches it carried; the matches of the
   refused message left out of it (an article deleted since: their key is reset, README)
   keep the mark. Restored, such a match goes under a new key, fresh; if that message then
   merely fails (HTTP 500: "holds the later messages back, in order"), the next digest
   sees a refused match in it (``any(m.refused_at ...)``) and sends it *after* what a
   later digest found — out of the documented order. (test_a_stale_refused_mark_does_not_
   put_a_failed_message_after_later_ones)
R4 A channel-wide 4xx is taken for a refusal of the message. 404/410 say the address has
   no receiver (a Slack/Discord/Teams webhook removed or re-created: "no_service",
   "Unknown Webhook"), nothing about the message; yet every message tried while it lasts
   is marked refused: the receiver gets up to 3 POSTs a search a night instead of one,
   and once the address is back the messages "refused" meanwhile go *after* the ones
   found later — for good out of order, where a 5xx outage keeps the order. (The same
   holds for an SMTP server refusing every message at DATA for the sender, not the
   content: a DMARC/SPF failure, "550 5.7.26", or a Postfix smtpd_data_restrictions 554
   to the DATA command itself, which smtplib also raises as ``SMTPDataError``; and for a
   409 from a receiver implementing the IETF Idempotency-Key draft, where it means "a
   request with this key is still being processed": not now.) The cap is per search, so
   a dead address shared by N searches gets 3N POSTs a night.
   (test_a_webhook_address_gone_for_a_night_does_not_reorder_the_messages)
R5 HTTP 413 is a refusal of the message's *size*, not its content, yet the message goes
   again whole, with its key, every night, and is refused every night: its matches never
   reach a receiver whose limit is below ``MESSAGE_MATCHES`` (200, ~130 KB) matches'
   worth (Microsoft Teams' incoming webhooks take ~28 KB). A message that did not go out
   may be split under new keys (no key went out), but nothing ever splits it: the matches
   are lost in all but name (pending, reported nightly, never delivered). The same for an
   e-mail over the server's size limit at the end of DATA (aiosmtpd: "552 Error: Too much
   mail data").
   (test_a_message_too_large_for_the_receiver_reaches_it_in_smaller_ones)

The fixes: R1, refused messages go the one refused longest ago first, and the stop after
3 refusals in a row applies only while the receiver took nothing this digest; R2, every
refused message still pending is reported, tried or not; R3, a match's refused mark goes
with its key (cleared when the key is reset or a new one written); R4, a webhook's 401,
404, 409 and 410 and an SMTP refusal of the DATA command itself are failures (the later
messages wait, in order), not refusals; R5, a message refused for its size (413, SMTP 552
or 5.3.4 / 5.2.3) never went out, so its matches go at once in halves under new keys,
halved again while refused (a warning says so).

Attacks that held (plain tests):

H1 Which webhook answers are "not now": 408, 425, 429, a 5xx and a redirect (307 with a
   Location) are failures, not refusals: the first message fails, none of the later ones
   is tried (one POST), nothing is marked refused, and the next digest sends them all in
   order, each once.
H2 An SMTP 451 (greylisting) to the message's data is a failure, not a refusal: the later
   messages wait; and a 554 to the data marks only that message refused, the next one
   going the same night (the partial-recipient case: stamped, a warning, is the
   session-27 review's H3).
H3 Refusals are counted per search: one search whose every message is refused (stopped
   after 3) stops no other search's messages on the same webhook.
H4 The delivery keys through a refusal, a deletion and a restore: the refused message goes
   again with its key less the deleted match, the restored match goes later under a new
   key; a receiver keeping the first message of each key gets every match exactly once
   and no key with two contents.
H5 An older store (no ``*_refused_at`` columns) gains them on open
   (``db.add_missing_columns``) and a refusal then behaves as on a new one.
H6 A refused message taken later clears its mark: it goes once, under its key, and a
   later failure of another message is not reordered by it.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import select, text

from ingest.records import Deletion, SourceRef
from ingest.store import Store
from litpulse.core import db
from litpulse.core.schema import digest_matches
from litpulse.core.settings import Settings
from litpulse.pipeline import digest as digest_mod
from litpulse.pipeline.digest import matches_of
from litpulse.pipeline.digest_channels import post_webhook
from litpulse.pipeline.saved_searches import SavedSearch, add_search
from tests.conftest import free_port
from tests.ingest.test_store import make_record
from tests.litpulse.pipeline.test_digest import CRISPR, THRESHOLD, _Hook, _Inbox
from tests.review.test_session27_keys_review import _check, _pending_nights, _posted


def _search(s: Settings, name: str = "crispr") -> SavedSearch:
    return add_search(s, name=name, query=CRISPR, min_score=THRESHOLD, owner=f"cli:{name}")


def _night(s: Settings) -> tuple[int, int, list[str], list[str]]:
    """One digest's delivery (what ``run_digest`` does after recording the matches)."""
    return digest_mod._deliver(s, db.connect(s))


def _order(hook: _Hook) -> list[int]:
    """The PMIDs the webhook took, in the order it took them."""
    return [m["pmid"] for b in hook.bodies for m in b["matches"]]


def _pending(s: Settings, search: SavedSearch, channel: str = "webhook") -> set[int]:
    return {m.pmid for m in matches_of(db.connect(s), search.id, pending=channel)}


def _key_of(s: Settings, search: SavedSearch, pmid: int) -> str | None:
    with db.connect(s).connect() as conn:
        return conn.execute(
            select(digest_matches.c.webhook_key).where(
                digest_matches.c.search_id == search.id, digest_matches.c.pmid == pmid
            )
        ).scalar_one()


# ------------------------------------------------------------------------------ defects


def test_a_message_refused_for_a_night_is_not_stranded_behind_three_refused_for_good(
    settings: Settings, hook: _Hook, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(digest_mod, "MESSAGE_MATCHES", 1)  # one message a match
    s = settings.replace(digest_webhook_url=hook.url)
    search = _search(s)
    p0, p1, p2, p3 = sorted(_pending_nights(s, search, nights=4, per_night=1))
    hook.poison = {p0, p1, p2}  # the receiver refuses these three for their content
    _night(s)  # p0, p1, p2 refused: the channel stops, p3 not tried yet
    assert hook.refused == 3 and not hook.bodies
    hook.status = 401  # a night with the token revoked: p3 refused too (then p0, p1)
    _night(s)
    assert _key_of(s, search, p3) is not None
    hook.status = 200  # the token is back: the receiver takes p3 now
    for _ in range(3):
        _night(s)
    assert p3 in _order(hook), f"{p3} never tried again: it waits behind {p0}, {p1}, {p2}"
    assert _pending(s, search) == {p0, p1, p2}


def test_every_pending_refused_message_is_reported_each_night(
    settings: Settings, hook: _Hook, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(digest_mod, "MESSAGE_MATCHES", 1)
    s = settings.replace(digest_webhook_url=hook.url)
    search = _search(s)
    pmids = sorted(_pending_nights(s, search, nights=4, per_night=1))
    hook.poison = set(pmids)  # all four refused for good
    _night(s)  # the first three refused, the fourth not tried
    _night(s)  # the fourth (fresh, first) refused, then two of the others
    keys = {p: _key_of(s, search, p) for p in pmids}
    assert all(keys.values()), keys
    *_, failures, _ = _night(s)  # every one refused before, still pending
    missing = [p for p in pmids if not any(str(keys[p]) in f for f in failures)]
    assert not missing, f"pending refused messages not reported: {missing}; {failures}"


def test_a_stale_refused_mark_does_not_put_a_failed_message_after_later_ones(
    settings: Settings, hook: _Hook
) -> None:
    s = settings.replace(digest_webhook_url=hook.url)
    engine = db.connect(s)
    search = _search(s)
    a, b = sorted(_pending_nights(s, search, nights=1, per_night=2))
    hook.poison = {a}
    _night(s)  # one message {a, b}, refused: both marked
    store = Store(engine)
    store.apply([Deletion(b, SourceRef("file", "pubmed26n0002.xml", 2))])
    hook.poison = set()
    _night(s)  # the refused message goes, with its key, without b; b's key is reset
    assert _order(hook) == [a] and _key_of(s, search, b) is None
    store.apply([make_record(b, title=f"study {b} restored",
                             source=SourceRef("file", "pubmed26n0003.xml", 3))])  # fmt: skip
    hook.status = 500  # the receiver is down: b's new message fails, not refused
    _night(s)
    assert _key_of(s, search, b) is not None
    (c,) = _pending_nights(s, search, nights=1, per_night=1, first_pmid=9_100_000)
    hook.status = 200
    _night(s)
    _check(_posted(hook), {a, b, c})
    assert _order(hook) == [a, b, c], "the message that failed went after a later one"


@pytest.mark.parametrize("gone", [404, 410])
def test_a_webhook_address_gone_for_a_night_does_not_reorder_the_messages(
    settings: Settings, hook: _Hook, monkeypatch: pytest.MonkeyPatch, gone: int
) -> None:
    monkeypatch.setattr(digest_mod, "MESSAGE_MATCHES", 1)
    s = settings.replace(digest_webhook_url=hook.url)
    search = _search(s)
    first = sorted(_pending_nights(s, search, nights=2, per_night=1))
    hook.status = gone  # the webhook removed for a night (re-created the next day)
    _night(s)
    posts_while_gone = hook.posts
    (later,) = _pending_nights(s, search, nights=1, per_night=1, first_pmid=9_100_000)
    hook.status = 200
    _night(s)
    assert _order(hook) == [*first, later]
    assert posts_while_gone == 1, "a dead address got a POST for each message"


def test_a_message_too_large_for_the_receiver_reaches_it_in_smaller_ones(
    settings: Settings,
) -> None:
    probe = _Hook()
    try:  # how large a one-match body is
        s = settings.replace(digest_webhook_url=probe.url)
        search = _search(s)
        pmids = _pending_nights(s, search, nights=1, per_night=4)
        engine = db.connect(s)
        one = matches_of(engine, search.id, pending="webhook")[:1]
        post_webhook(s, search, one)
        size = len(json.dumps(probe.bodies[0]).encode())
    finally:
        probe.close()
    hook = _Hook(limit=2 * size)  # takes a message of one match, not of four
    try:
        s = settings.replace(digest_webhook_url=hook.url)
        *_, failures, warnings = _night(s)  # refused whole, then taken in two halves
        assert hook.refused == 1 and not failures and [w for w in warnings if "413" in w]
        assert _pending(s, search) == set(), f"never delivered: {sorted(_pending(s, search))}"
        _check(_posted(hook), pmids)
    finally:
        hook.close()


# ------------------------------------------------------------------------ attacks held


@pytest.mark.parametrize("status", [408, 425, 429, 500, 503, 307])
def test_a_not_now_answer_holds_the_later_messages_back_in_order(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, status: int
) -> None:
    monkeypatch.setattr(digest_mod, "MESSAGE_MATCHES", 1)
    state: dict[str, Any] = {"status": status, "posts": 0, "got": []}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state["posts"] += 1
            code = state["status"]
            if code == 200:
                state["got"].append([m["pmid"] for m in body["matches"]])
            self.send_response(code)
            if 300 <= code < 400:
                self.send_header("Location", "http://127.0.0.1:1/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        s = settings.replace(digest_webhook_url=f"http://127.0.0.1:{server.server_address[1]}/hook")
        search = _search(s)
        pmids = sorted(_pending_nights(s, search, nights=3, per_night=1))
        _, posted, failures, _ = _night(s)
        assert posted == 0 and state["posts"] == 1 and len(failures) == 1
        assert "refused" not in failures[0]
        with db.connect(s).connect() as conn:
            assert not conn.execute(select(digest_matches.c.id).where(
                digest_matches.c.webhook_refused_at.is_not(None))).all()  # fmt: skip
        state["status"] = 200
        _, posted, failures, _ = _night(s)
        assert posted == 3 and not failures
        assert state["got"] == [[p] for p in pmids]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_smtp_451_to_data_holds_back_and_554_refuses_only_that_message(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aiosmtpd.controller import Controller

    monkeypatch.setattr(digest_mod, "MESSAGE_MATCHES", 1)
    answer: dict[int, str] = {}

    class Picky(_Inbox):
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
            body = envelope.content.decode("utf-8", "replace")
            for pmid, reply in answer.items():
                if f"pubmed.ncbi.nlm.nih.gov/{pmid}/" in body:
                    return reply
            return await super().handle_DATA(server, session, envelope)

    port = free_port()
    s = settings.replace(digest_smtp_host="127.0.0.1", digest_smtp_port=port,
                         digest_smtp_from="lp@example.org",
                         digest_smtp_to="team@example.org")  # fmt: skip
    engine = db.connect(s)
    search = _search(s)
    p0, p1, p2 = sorted(_pending_nights(s, search, nights=3, per_night=1))
    inbox = Picky()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        answer[p0] = "451 4.7.1 Greylisted, try again later"
        emailed, _, failures, _ = _night(s)
        assert emailed == 0 and len(failures) == 1 and "refused" not in failures[0]
        assert not inbox.messages  # p1 and p2 wait behind p0
        answer[p0] = "554 5.7.1 Message content rejected"
        emailed, _, failures, _ = _night(s)
        assert emailed == 2 and len(failures) == 1 and "refused" in failures[0]
        assert {m.pmid for m in matches_of(engine, search.id, pending="email")} == {p0}
        del answer[p0]
        emailed, _, failures, _ = _night(s)
        assert emailed == 1 and not failures
        assert len(inbox.messages) == 3
    finally:
        controller.stop()


def test_refusals_of_one_search_stop_no_other_search(
    settings: Settings, hook: _Hook, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(digest_mod, "MESSAGE_MATCHES", 1)
    s = settings.replace(digest_webhook_url=hook.url)
    bad, good = _search(s, "bad"), _search(s, "good")
    refused = _pending_nights(s, bad, nights=5, per_night=1)
    fine = _pending_nights(s, good, nights=5, per_night=1, first_pmid=9_200_000)
    hook.poison = set(refused)
    _, posted, failures, _ = _night(s)
    assert posted == len(fine) and hook.refused == digest_mod.REFUSED_IN_A_ROW
    assert len(failures) == digest_mod.REFUSED_IN_A_ROW
    assert _pending(s, good) == set() and _pending(s, bad) == refused


def test_keys_through_a_refusal_a_deletion_and_a_restore(settings: Settings, hook: _Hook) -> None:
    s = settings.replace(digest_webhook_url=hook.url)
    engine = db.connect(s)
    search = _search(s)
    a, b = sorted(_pending_nights(s, search, nights=1, per_night=2))
    hook.poison = {a}
    _night(s)
    key = _key_of(s, search, a)
    store = Store(engine)
    store.apply([Deletion(b, SourceRef("file", "pubmed26n0002.xml", 2))])
    hook.poison = set()
    _night(s)
    assert hook.keys == [key]
    store.apply([make_record(b, title=f"study {b} restored",
                             source=SourceRef("file", "pubmed26n0003.xml", 3))])  # fmt: skip
    _night(s)
    _night(s)
    _check(_posted(hook), {a, b})
    assert len(hook.bodies) == 2 and hook.keys[1] != key
    assert _pending(s, search) == set()


def test_an_older_store_gains_the_refused_columns_on_open(
    settings: Settings, hook: _Hook, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(digest_mod, "MESSAGE_MATCHES", 1)
    s = settings.replace(digest_webhook_url=hook.url)
    engine = db.connect(s)
    search = _search(s)
    p0, p1 = sorted(_pending_nights(s, search, nights=2, per_night=1))
    with engine.begin() as conn:  # the store as the release before had it
        conn.execute(text("ALTER TABLE digest_matches DROP COLUMN email_refused_at"))
        conn.execute(text("ALTER TABLE digest_matches DROP COLUMN webhook_refused_at"))
    assert sorted(db.add_missing_columns(engine)) == [
        "digest_matches.email_refused_at",
        "digest_matches.webhook_refused_at",
    ]
    hook.poison = {p0}
    _, posted, failures, _ = _night(s)
    assert posted == 1 and len(failures) == 1 and _pending(s, search) == {p0}


def test_a_refused_message_taken_later_clears_its_mark(
    settings: Settings, hook: _Hook, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(digest_mod, "MESSAGE_MATCHES", 1)
    s = settings.replace(digest_webhook_url=hook.url)
    search = _search(s)
    (p0,) = _pending_nights(s, search, nights=1, per_night=1)
    hook.poison = {p0}
    _night(s)
    hook.poison = set()
    _night(s)
    with db.connect(s).connect() as conn:
        assert conn.execute(select(digest_matches.c.webhook_refused_at)).scalar_one() is None
    p1, p2 = sorted(_pending_nights(s, search, nights=2, per_night=1, first_pmid=9_100_000))
    hook.status = 500
    _night(s)
    hook.status = 200
    _night(s)
    _check(_posted(hook), {p0, p1, p2})
    assert _order(hook) == [p0, p1, p2]
