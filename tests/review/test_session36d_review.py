"""Hostile review (session 36d): alerts, saved searches, the digest and webhooks when the
network misbehaves.

Code under review: litpulse/pipeline/alerts.py, digest.py, digest_channels.py,
exchange.py (the deadline of one exchange), saved_searches.py, ingest/missing.py (the
given-up alert outbox of 35c), the CLI's ingest. Real paths: the digest's webhook and
e-mail sent to a loopback HTTP server and the real SMTP server of ``aiosmtpd``, the alert
webhook, E-utilities windows against the loopback emulator through the real CLI, on
SQLite and PostgreSQL (``settings``) where the store is involved. A resolver that hangs
is the one thing simulated: ``socket.getaddrinfo`` (the C library's, not ours) replaced
by one that blocks for the host asked, as a dead DNS server does.

Findings (each first a strict xfail asserting the correct behaviour):

X1 The name of a webhook or SMTP host is resolved outside the exchange's deadline:
   ``Deadline.connect`` hands the host to :func:`socket.create_connection`, whose
   ``getaddrinfo`` takes no timeout at all (a resolver that does not answer holds it for
   the resolver's own retries, 5 s x attempts x servers by default, or for ever behind a
   stuck nscd or VPN resolver). The digest's webhook POST, its e-mail, and the on-call
   alert (a DAG's failure callback) all wait on it past ``LITPULSE_HTTP_TIMEOUT``: the
   nightly run and its ``digest`` lease are held by a resolver. Reproduced: a webhook /
   SMTP / alert host whose resolution blocks; ``post_webhook``, ``send_email`` and
   ``notify`` return only once the resolver gives up, not within the 0.3 s deadline.
   Besides, :class:`smtplib.SMTP` resolves this machine's own name (``socket.getfqdn``,
   a reverse lookup) for its EHLO after connecting, again with no deadline.
   **Fixed**: ``Deadline.connect`` resolves the name itself (``Deadline.resolve``: an
   address literal as it is, a name by ``getaddrinfo`` in a thread of its own, waited on
   for the time left, ``Deadline.within``) and connects to each address in turn within
   the time left; the SMTP exchange gives smtplib its EHLO name, looked up the same way
   (``digest_channels._ehlo_name``). A resolver that does not answer fails the exchange
   at its deadline, as a receiver that does not answer does (``unreachable``: the digest
   tries that channel no more this digest).
X2 Give-ups are told only at the end of the nightly E-utilities ingest
   (``nightly.ingest_eutils_window``): a window ingested by hand (``litpulse ingest
   --eutils``, the documented way to fill a gap) gives PMIDs up and posts no alert, and a
   site whose nightly reads update files (``--source updatefiles``) never posts one, by
   that run or by any other ingest: the alert owed waits for an E-utilities nightly that
   never comes. Reproduced: ``litpulse ingest --eutils`` gives a PMID up with the webhook
   up: nothing posted, ``alerts_owed`` 1; then ``litpulse ingest --files FILE``:
   still nothing posted.
   **Fixed**: every ingest tells the give-ups owed as it ends, failing or not, whatever
   its source (``alerts.tell_given_up``, the outbox's one teller): ``litpulse ingest``
   (files, ``--eutils``, ``--updatefiles``; not when its arguments are refused) and
   ``litpulse nightly`` with ``--source updatefiles`` or ``files`` (the E-utilities
   source tells them as before, ``ingest_eutils_window``).
X3 An e-mail the SMTP server took (``250`` to its data) is taken for a failed delivery
   when the goodbye goes wrong: ``send_email`` sends inside ``with smtplib.SMTP(...)``,
   whose exit sends ``QUIT`` and raises when the answer is not ``221`` (a server shutting
   down answers ``421``) or does not come within the deadline (a relay slow to close);
   that error is caught with those of the exchange and raised as a ``DeliveryError``, so
   the matches are not stamped and every later digest mails them again: a duplicate each
   night to every recipient, for as long as the server answers so. Reproduced: an
   ``aiosmtpd`` server that takes the message and answers ``QUIT`` with ``421``:
   ``send_email`` raises ``DeliveryError`` while the server holds the message (the digest
   keeps its matches pending: mailed again by each later digest).
   **Fixed**: ``send_email`` keeps what ``send_message`` answered; an error after it (the
   ``QUIT`` of the ``with``'s exit: a non-221 answer, the deadline running out) is logged
   and the message counts as delivered (stamped; recipients it refused still reported).

Attacks that held (read or run, not repeated here):

H1 A webhook answering 403 (a refusal of the message) is marked refused and reported
   each digest, the others going on; 404/410 (no receiver there) is a failure, retried
   each digest, reported (``failures``, stderr of ``litpulse alerts run``) and counted by
   ``litpulse status`` (``deliveries``: pending, refused): not silent. Pinned by
   tests/review/test_session29_refused_review.py and test_session33*.
H2 A digest killed between the send and its stamp sends the message again under the same
   delivery key (``Idempotency-Key``, ``Message-ID``): at least once, the receiver can
   tell the repeat; pinned by ``test_matches_sent_again_after_a_kill_carry_the_same_
   delivery_key`` (tests/litpulse/pipeline/test_digest.py).
H3 A saved search whose query or filters a later rule refuses is listed with its
   ``problem``, reported by the digest (exit 2 of ``alerts run``) and the others are
   digested and delivered (``test_a_saved_search_that_cannot_be_searched_is_reported_
   and_the_others_go_on``).
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from litpulse.app.cli import main as cli_main
from litpulse.core import db
from litpulse.core.settings import Settings
from litpulse.pipeline.digest_channels import DeliveryError, Match, post_webhook, send_email
from litpulse.pipeline.saved_searches import SavedSearch
from ranking.search import SearchFilters
from tests.conftest import free_port
from tests.litpulse.pipeline.test_alerts import _Receiver
from tests.litpulse.pipeline.test_nightly import DAY, _serve, emulator  # noqa: F401

#: The host whose resolution hangs (a dead resolver).
HUNG = "hung-resolver.example"
#: How long the hung resolver holds a caller at most before giving up (the test's bound).
HANG_S = 3.0


class _HungResolver:
    """``socket.getaddrinfo`` that blocks for :data:`HUNG` until released (at most
    :data:`HANG_S`), then fails as a resolver that timed out does."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.real = socket.getaddrinfo
        self.release = threading.Event()
        self.returned = threading.Event()
        monkeypatch.setattr(socket, "getaddrinfo", self)

    def __call__(self, host: Any, *args: Any, **kwargs: Any) -> Any:
        if host != HUNG:
            return self.real(host, *args, **kwargs)
        self.release.wait(HANG_S)
        self.returned.set()
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")


@pytest.fixture
def hung(monkeypatch: pytest.MonkeyPatch) -> Iterator[_HungResolver]:
    resolver = _HungResolver(monkeypatch)
    yield resolver
    resolver.release.set()


def _search() -> SavedSearch:
    now = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    return SavedSearch(id=1, name="crispr", query="CRISPR", filters=SearchFilters(),
                       min_score=None, owner="alice", created_at=now, watermark=now)  # fmt: skip


def _match() -> Match:
    return Match(id=1, search_id=1, pmid=101, title="A title", score=0.9, index_version="v1",
                 model_version="m1", found_at=dt.datetime(2026, 12, 1, tzinfo=dt.UTC))  # fmt: skip


def test_x1_a_webhook_whose_name_does_not_resolve_in_time_fails_within_the_deadline(
    sqlite_settings: Settings, hung: _HungResolver
) -> None:
    s = sqlite_settings.replace(http_timeout=0.3, digest_webhook_url=f"http://{HUNG}:8080/hook")
    with pytest.raises(DeliveryError) as err:
        post_webhook(s, _search(), [_match()])
    assert not hung.returned.is_set(), "the caller waited for the resolver"
    assert err.value.unreachable and "0.3 s" in str(err.value)


def test_x1_an_alert_whose_webhook_name_does_not_resolve_returns_within_the_deadline(
    sqlite_settings: Settings, hung: _HungResolver
) -> None:
    from litpulse.pipeline.alerts import notify

    s = sqlite_settings.replace(http_timeout=0.3, alert_webhook_url=f"http://{HUNG}/alert")
    assert notify(s, "litpulse_nightly_ingest failed") is False
    assert not hung.returned.is_set(), "the failure callback waited for the resolver"


def test_x1_an_smtp_host_whose_name_does_not_resolve_fails_within_the_deadline(
    sqlite_settings: Settings, hung: _HungResolver
) -> None:
    s = sqlite_settings.replace(http_timeout=0.3, digest_smtp_host=HUNG, digest_smtp_port=25,
                                digest_smtp_from="lp@example.org")  # fmt: skip
    with pytest.raises(DeliveryError) as err:
        send_email(s, _search(), [_match()], to=["alice@example.org"])
    assert not hung.returned.is_set(), "the digest waited for the resolver"
    assert err.value.unreachable


def test_x1_the_ehlo_name_lookup_of_smtplib_is_within_the_deadline(
    sqlite_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aiosmtpd.controller import Controller

    from tests.litpulse.pipeline.test_digest import _Inbox

    release, returned = threading.Event(), threading.Event()

    def hung_fqdn(name: str = "") -> str:  # a reverse lookup the resolver never answers
        release.wait(HANG_S)
        returned.set()
        return "localhost"

    inbox = _Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port,
                            server_hostname="mail.example.org")  # it looks up no name
    controller.start()
    monkeypatch.setattr(socket, "getfqdn", hung_fqdn)
    try:
        s = sqlite_settings.replace(http_timeout=0.3, digest_smtp_host="127.0.0.1",
                                    digest_smtp_port=port, digest_smtp_from="lp@example.org")
        try:
            send_email(s, _search(), [_match()], to=["alice@example.org"])
        except DeliveryError:
            pass  # no EHLO name in time: failed, retried by the next digest
        assert not returned.is_set(), "the digest waited for the reverse lookup"
    finally:
        release.set()
        controller.stop()


@pytest.fixture
def alert_hook() -> Iterator[_Receiver]:
    """A loopback alert webhook answering 204 to every POST (its bodies kept)."""

    def ok(conn: socket.socket, body: bytes) -> None:
        conn.sendall(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")

    receiver = _Receiver(ok)
    yield receiver
    receiver.close()


def _cli_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def test_x2_a_give_up_of_a_manual_window_is_alerted_and_any_ingest_tells_what_is_owed(
    settings: Settings,
    emulator: Any,  # noqa: F811 - the fixture imported
    alert_hook: _Receiver,
    monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
    tmp_path: Any,
) -> None:
    from ingest.missing import listing, untold_count

    _serve(emulator, DAY, range(1000, 1004))
    emulator.faults.add("drop", path="efetch", times=2)  # the batch and its second ask
    s = emulator.configure(settings, missing_retries=0, alert_webhook_url=alert_hook.url)
    _cli_env(monkeypatch, emulator.env(s))
    day = DAY.isoformat()
    assert cli_main(["ingest", "--eutils", "--since", day, "--until", day, "--json"]) == 0
    engine = db.connect(s)
    (lost,) = [r["pmid"] for r in listing(engine) if r["given_up"]]
    assert len(alert_hook.bodies) == 1, "a manual window's give-up was not alerted"
    assert str(lost) in json.loads(alert_hook.bodies[0])["text"]
    with engine.connect() as conn:
        assert untold_count(conn) == 0

    # an owed one (its webhook was down then), and a site that ingests update files now
    from litpulse.core.schema import missing_pmids

    with engine.begin() as conn:
        conn.execute(missing_pmids.update().where(missing_pmids.c.pmid == lost)
                     .values(alerted_at=None))  # fmt: skip
    xml = tmp_path / "one.xml"
    xml.write_bytes(emulator.efetch({"db": "pubmed", "id": "1001"}, None))  # stored again
    capsys.readouterr()
    assert cli_main(["ingest", "--files", str(xml), "--json"]) == 0
    assert len(alert_hook.bodies) == 2, "an owed alert waited for an E-utilities nightly"
    with engine.connect() as conn:
        assert untold_count(conn) == 0

    # the nightly's ingest step of a site reading files (``--source files``) tells it too
    from litpulse.pipeline.nightly import _ingest

    with engine.begin() as conn:
        conn.execute(missing_pmids.update().where(missing_pmids.c.pmid == lost)
                     .values(alerted_at=None))  # fmt: skip
    _ingest(s, "files", [xml], None, progress=False, checked=False, quality=False)
    assert len(alert_hook.bodies) == 3, "the nightly's files ingest told nothing owed"
    with engine.connect() as conn:
        assert untold_count(conn) == 0


class _RudeGoodbye:
    """An aiosmtpd handler that takes every message and answers QUIT with 421 (a server
    shutting down after the data: what a busy relay does)."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.messages.append(envelope.content)
        return "250 2.0.0 Message accepted for delivery"

    async def handle_QUIT(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        return "421 4.3.2 Service shutting down, closing transmission channel"


def test_x3_an_email_the_server_took_is_delivered_whatever_it_answers_to_quit(
    sqlite_settings: Settings,
) -> None:
    from aiosmtpd.controller import Controller

    handler = _RudeGoodbye()
    port = free_port()
    controller = Controller(
        handler, hostname="127.0.0.1", port=port, server_hostname="mail.example.org"
    )
    controller.start()
    try:
        s = sqlite_settings.replace(
            digest_smtp_host="127.0.0.1", digest_smtp_port=port, digest_smtp_from="lp@example.org"
        )
        assert send_email(s, _search(), [_match()], to=["alice@example.org"]) is None
    finally:
        controller.stop()
    assert len(handler.messages) == 1
