"""Hostile review (session 37c): the small defects earlier reviews noticed and left.

Attacked through the real entry points: ``litpulse alerts run``, ``litpulse article``
and ``litpulse search`` (``litpulse.app.cli.main``), the digest's webhook and e-mail
deliveries (``litpulse.pipeline.digest_channels``) behind a resolver that hangs,
``litpulse ingest --files`` and the update-file run (``ingest.updatefiles.apply_updates``)
against the loopback emulator, on SQLite and PostgreSQL where the store is involved.

Attacked and held (kept as tests): ``alerts run`` with nothing due and the webhook down
exits 0; the copy read first, read again unchanged after its MD5 was lost, is that copy
(nothing changes, no re-issue); a re-issue of a file applied from NLM's server, killed
half-way, is reported by the run that resumes it. Tidies (no defect, one commit each):
``ingest.records.nlm_file_key`` is the one rule for a file's name as the store knows it
(``RemoteFile.key``, ``applied_files``), ``doi_key``'s docstring says how DOIs match,
``Store.reissue`` tests ``was`` once.

Defects (each a strict xfail asserting the correct behaviour until fixed):

X1 **``litpulse alerts run`` exits 0 when every delivery failed.** A saved search with
   new matches, the webhook down: nothing delivered, the failures on stderr, exit 0; a
   cron job or an Airflow task calling it cannot tell a night that delivered nothing
   from one that delivered everything. (``--json`` exited 0 even for a saved search that
   could not be searched, where the text output exits 2.)
   **Fixed**: ``DigestReport.nothing_delivered`` (deliveries were due, as failures of
   delivery say, and none went out: nothing e-mailed or posted) is the rule;
   ``litpulse alerts run`` exits 75 (``EX_TEMPFAIL``, as a busy nightly) then, 2 still
   for a saved search that cannot be searched, 0 otherwise, with ``--json`` as without;
   README's CLI table and the command's help say so.

X2 **``litpulse article PMID`` does not say how old the citation counts are.** It
   shows ``icite_fetched_at`` (when iCite was last asked, in ``--json`` only), never
   ``icite_values_at`` (the date of the values held): a snapshot of January loaded and a
   fetch in June that brought nothing show counts of January as if of June.
   **Fixed**: the article's record (``Store._article_dict``: ``--json``, ``GET
   /articles/PMID``) carries ``icite_values_at``, and the text output shows both,
   ``citations as of`` and ``icite asked`` (README's CLI table says which is which).

X3 **A name look-up that runs out of time is told as "no complete answer".** A webhook
   or SMTP host whose name the resolver does not resolve within the deadline fails with
   "no complete answer within N s": no receiver was reached, nothing answered in part;
   ``Deadline.within`` said "resolving HOST: no answer", which the failure dropped.
   **Fixed**: ``Deadline.said`` (the one wording of a deadline run out, for the webhook,
   the e-mail and the on-call alert) tells how far the exchange got: a look-up that did
   not answer (``Deadline.ran_out``, set by ``within``: "name HOST not resolved within N
   s", "this machine's own name (for EHLO) not looked up within N s"), "no connection
   within N s" (none made), or "no complete answer within N s" (a receiver reached).

X4 **A second, different copy of a file whose first copy was read before MD5s were
   recorded is half applied.** ``source_times.md5`` NULL (a release before 36a read the
   first copy): the second copy given to ``ingest --files``, or the server's issue
   applied by the update-file run, is taken for the copy read before: its items at or
   before the stored positions are replays, skipped.
   **Fixed**: ``Store.reissue`` (the one home of "which issue does this read replace")
   takes an issue whose MD5 was never recorded for an unknown one
   (``ingest.store.UNKNOWN_ISSUE``) where the as-of time is of another read: the
   ``source_times.location`` another than this read's (the copy's path, not the
   server's name), or ``unknown=True`` from ``ingest.files._reissue`` (a copy that is
   not the first read). The copy or the server's issue is then a re-issue of it: ranked
   after it, applied whole, reported (``was: "unknown"``; ``litpulse status``: "replacing
   an issue whose MD5 was never recorded"). The same copy read again,
   unchanged, is still that copy (its MD5 recorded then: held, tested below).

X5 **An unpacked ``.xml`` copy and the server's ``.xml.gz`` of the same content are told
   apart.** The unpacked copy's MD5 is recorded; the server's ``.xml.gz`` of the same
   XML then has another MD5 and is applied and reported as a re-issue (and a ``.xml.gz``
   copy read first, then its unpacked copy, likewise).
   **Fixed**: an issue is also told by its unpacked content's MD5
   (``litpulse.core.checksums.content_md5``: a gzip file's content, any other file's
   bytes): ``ingest --files`` records a copy's content MD5 as the issue read
   (``source_times.md5``) and compares a copy's MD5 and content MD5 with the issues
   recorded (``_earlier_issues``); ``Store.reissue`` takes the content MD5 of the
   server's file (``content=``, asked only where the issue recorded is another MD5), so
   the ``.xml.gz`` of an unpacked copy's content is that issue. A re-issue keeps both
   the issue a copy was read as and the one applied among the earlier issues.

X6 **A re-issue whose application was killed half-way is not reported as one when
   resumed.** The resumed run applies it correctly, but ``Store.reissue`` finds the
   as-of time already moved, and the run's ``details.reissued`` (and its warning) lose
   it: neither the killed run nor the resumed one says the file was re-issued.
   (A re-issue of a file applied from NLM's server is reported when resumed: its
   ``source_files`` row still holds the issue replaced; held, tested below.)
   **Fixed**: ``_store_file`` writes the re-issue's progress mark with its new as-of
   time, in one transaction (``Store.reissue`` takes the caller's ``conn``), before its
   first batch, and the mark keeps the MD5 replaced (``was``) in every later batch's
   mark: a run resuming the file, whose ``Store.reissue`` finds the as-of time moved,
   reports the re-issue from the mark (``details.reissued``, the warning).

X8 (found while fixing X4) **An update file whose first application was killed, then
   re-issued before the resume, is half applied.** Issue A of file 2 applied to its last
   item, killed before its ``source_files`` row; NLM re-issues it (B) before the next
   run. That run sees a progress mark of another MD5 and replays B from its start, but
   as the same source as A (no issue recorded in ``source_times``: ``Store.reissue``
   knows none to replace): B's items at or before the positions A stored are replays,
   skipped: 22 stays as A has it.
   **Fixed**: ``_store_file`` gives ``Store.reissue`` the mark's MD5 as the issue
   replaced where the mark is of another issue: B is a re-issue of A, ranked after it,
   applied whole and reported.

X7 **``litpulse search --w-lexical -0.0`` prints ``-0*lex``; a λ asked equal to the
   setting in a search that does not use it gets no note.** ``--mode semantic
   --w-lexical 0.35`` (the setting's value) is as unused as 0.9, silently.
   **Fixed**: ``ScoringOptions`` turns a ``-0.0`` weight into ``0.0`` as it checks it
   (the one home of the options' values: CLI, API and JSON alike), and records whether
   λ was asked (``lexical_asked``, from ``from_settings``' overrides; not an option of
   the ranking: out of comparisons and ``to_dict``); ``unused_share_notes`` says a λ
   asked is unused even equal to the setting. The CLI sends ``w_lexical`` to a running
   server where asked or where a hybrid search ranks by it (not for a semantic or
   lexical search it was not asked for), so the server's note is the CLI's.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pytest
from sqlalchemy import update

from ingest.updatefiles import apply_updates, reissue_notes
from litpulse.app.cli import main
from litpulse.core import db
from litpulse.core.schema import articles, source_times
from litpulse.core.settings import Settings
from litpulse.pipeline.digest_channels import DeliveryError, post_webhook, send_email
from litpulse.pipeline.saved_searches import add_search
from ranking.refresh import refresh_index
from tests.conftest import free_port
from tests.ingest.test_windows_review import ReviewEmulator, _settings
from tests.litpulse.pipeline.test_digest import CRISPR, NEW, THRESHOLD, _load, indexed  # noqa: F401
from tests.review.test_session35a_review import ISSUE_A as REISSUED_A
from tests.review.test_session35a_review import _killed_once, _last_run, _publish_and_apply
from tests.review.test_session36a_review import (
    ISSUE_A,
    ISSUE_B,
    N1,
    N2,
    _art,
    _copy,
    _file,
    _rows,
    _runs,
    _titles,
)
from tests.review.test_session36d_review import HUNG, _HungResolver, _match, _search, hung  # noqa: F401

RE_ISSUED = (("21 as re-issued", False), ("22 as re-issued", False))


def _both(s: Settings) -> tuple[tuple[str, bool], tuple[str, bool]]:
    got = _titles(s)
    return got[21], got[22]


def _cli_env(monkeypatch: pytest.MonkeyPatch, s: Settings, **extra: str) -> None:
    monkeypatch.setenv("LITPULSE_HOME", str(s.home))
    if s.database_url:
        monkeypatch.setenv("LITPULSE_DATABASE_URL", s.database_url)
    for name, value in extra.items():
        monkeypatch.setenv(name, value)


# ------------------------------------------ X1: alerts run when every delivery failed


def test_x1_alerts_run_exits_75_when_every_due_delivery_failed(
    indexed: Settings,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    s = indexed
    add_search(s, name="crispr", query=CRISPR, min_score=THRESHOLD, owner="cli:crispr")
    _load(db.connect(s), NEW)
    assert refresh_index(s).published
    down = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    _cli_env(monkeypatch, s, LITPULSE_DIGEST_WEBHOOK_URL=down, LITPULSE_HTTP_TIMEOUT="2")
    assert main(["alerts", "run"]) == 75
    err = capsys.readouterr().err
    assert "failed:" in err
    assert main(["alerts", "run", "--json"]) == 75, "--json hides it"
    report = json.loads(capsys.readouterr().out)
    assert report["posted"] == 0 and report["failures"]


def test_x1_alerts_run_with_nothing_due_or_delivered_exits_0(
    indexed: Settings,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Held: nothing due (no new article) with the webhook down exits 0."""
    s = indexed
    add_search(s, name="crispr", query=CRISPR, min_score=THRESHOLD, owner="cli:crispr")
    down = f"http://127.0.0.1:{free_port()}/hook"
    _cli_env(monkeypatch, s, LITPULSE_DIGEST_WEBHOOK_URL=down, LITPULSE_HTTP_TIMEOUT="2")
    assert main(["alerts", "run"]) == 0


# ----------------------------------------------- X2: how old the citation counts are


def test_x2_article_shows_the_date_of_its_citation_values(
    env: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    import datetime as dt

    _load(db.connect(env), {101})
    with db.connect(env).begin() as conn:
        conn.execute(update(articles).where(articles.c.pmid == 101).values(
            citation_count=12, icite_values_at=dt.datetime(2026, 1, 2, tzinfo=dt.UTC),
            icite_fetched_at=dt.datetime(2026, 6, 3, tzinfo=dt.UTC),
        ))  # fmt: skip
    assert main(["article", "101", "--json"]) == 0
    art = json.loads(capsys.readouterr().out)
    assert (art.get("icite_values_at") or "").startswith("2026-01-02")
    assert main(["article", "101"]) == 0
    out = capsys.readouterr().out
    assert "2026-01-02" in out, out


# ------------------------------------------- X3: a name look-up that runs out of time


def test_x3_a_name_not_resolved_in_time_is_told_as_such(
    sqlite_settings: Settings,
    hung: _HungResolver,  # noqa: F811
) -> None:
    s = sqlite_settings.replace(
        http_timeout=0.3, digest_webhook_url=f"http://{HUNG}:8080/hook",
        digest_smtp_host=HUNG, digest_smtp_port=2525, digest_smtp_from="lp@example.org",
        digest_smtp_to="alice@example.org",
    )  # fmt: skip
    for send in (lambda: post_webhook(s, _search(), [_match()]),
                 lambda: send_email(s, _search(), [_match()])):  # fmt: skip
        with pytest.raises(DeliveryError) as err:
            send()
        said = str(err.value)
        assert err.value.unreachable
        assert "no complete answer" not in said, said
        assert f"name {HUNG} not resolved within 0.3 s" in said, said


# ------------------------------ X4: a first copy read before MD5s were recorded, then another


def _forget_md5s(s: Settings) -> None:
    """The store as a release before 36a left it: no MD5 of the copy read first."""
    with db.connect(s).begin() as conn:
        conn.execute(update(source_times).values(md5=None))


def test_x4_a_second_copy_after_a_first_read_without_md5_is_applied_whole(
    env: Settings, tmp_path: Path
) -> None:
    assert main(["ingest", "--files", str(_copy(tmp_path, ISSUE_A))]) == 0
    _forget_md5s(env)
    new = tmp_path / "new"
    new.mkdir()
    assert main(["ingest", "--files", str(_copy(new, ISSUE_B))]) == 0
    assert _both(env) == RE_ISSUED, "half of the second copy applied"


def test_x4_the_servers_issue_after_a_first_copy_without_md5_is_applied_whole(
    emu: ReviewEmulator, env: Settings, tmp_path: Path
) -> None:
    s = _settings(emu, env)
    emu.add_file("updatefiles", N1, _file(_art(11, "Record 11")))
    assert main(["ingest", "--files", str(_copy(tmp_path, ISSUE_A))]) == 0
    _forget_md5s(s)
    emu.add_file("updatefiles", N2, ISSUE_B)
    apply_updates(s, workers=0)
    assert _both(s) == RE_ISSUED, "the server's issue half applied"
    assert [r["was"] for r in _runs(s)[-1]["details"]["reissued"]] == ["unknown"]
    assert (
        "replacing an issue whose MD5 was never recorded"
        in reissue_notes(_runs(s)[-1]["details"])[0]
    )


def test_x4_the_same_copy_read_again_after_an_upgrade_changes_nothing(
    env: Settings, tmp_path: Path
) -> None:
    """Held: the copy read first, read again (unchanged) by this release, is that copy."""
    copy = _copy(tmp_path, ISSUE_A)
    assert main(["ingest", "--files", str(copy)]) == 0
    _forget_md5s(env)
    before = _rows(env)
    assert main(["ingest", "--files", str(copy)]) == 0
    assert _rows(env) == before
    assert not _runs(env)[-1]["details"].get("reissued")


# ------------------------------------ X5: an unpacked copy and the .gz of the same content


def test_x5_the_servers_gz_of_an_unpacked_copy_read_first_is_no_reissue(
    emu: ReviewEmulator, env: Settings, tmp_path: Path
) -> None:
    s = _settings(emu, env)
    emu.add_file("updatefiles", N1, _file(_art(11, "Record 11")))
    plain = _copy(tmp_path, gzip.decompress(ISSUE_A), N2.removesuffix(".gz"))
    assert main(["ingest", "--files", str(plain)]) == 0
    before = _rows(s)[0]
    emu.add_file("updatefiles", N2, ISSUE_A)
    apply_updates(s, workers=0)
    assert not _runs(s)[-1]["details"].get("reissued"), "the same content as a re-issue"
    assert [r for r in _rows(s)[0] if r[0] != 11] == before
    emu.add_file("updatefiles", N2, ISSUE_B)  # then NLM does re-issue it
    apply_updates(s, workers=0)
    assert _both(s) == RE_ISSUED
    assert _runs(s)[-1]["details"]["reissued"]


def test_x5_an_unpacked_copy_of_a_gz_copy_read_first_is_no_reissue(
    env: Settings, tmp_path: Path
) -> None:
    assert main(["ingest", "--files", str(_copy(tmp_path, ISSUE_A))]) == 0
    before = _rows(env)
    (tmp_path / "x").mkdir()
    plain = _copy(tmp_path / "x", gzip.decompress(ISSUE_A), N2.removesuffix(".gz"))
    assert main(["ingest", "--files", str(plain)]) == 0
    assert not _runs(env)[-1]["details"].get("reissued"), "the same content as a re-issue"
    assert _rows(env)[0] == before[0]


# --------------------------------------------- X6: a killed re-issue resumed, unreported


def test_x6_a_reissue_of_a_copy_killed_half_way_is_reported_when_resumed(
    emu: ReviewEmulator, env: Settings, tmp_path: Path
) -> None:
    """Issue A of file 2 read from a local copy; the update-file run applying the
    server's issue B (a re-issue of it) is killed after its first item: the resumed run
    applies B whole and says it was a re-issue of the copy's issue."""
    s = _settings(emu, env).replace(store_batch=1)
    emu.add_file("updatefiles", N1, _file(_art(11, "Record 11")))
    assert main(["ingest", "--files", str(_copy(tmp_path, ISSUE_A))]) == 0
    emu.add_file("updatefiles", N2, ISSUE_B)
    with _killed_once(s, lambda: _titles(s)[22] == ("22 as re-issued", False)):
        apply_updates(s, workers=0)
    assert _titles(s)[21] == ("21 as first issued", False), "the kill missed the file"
    apply_updates(s, workers=0)
    assert _both(s) == RE_ISSUED
    told = _last_run(s)["details"].get("reissued")
    assert told and told[0]["name"] == N2, told
    # a copy's issue is recorded by its unpacked content's MD5 (X5)
    assert told[0]["was"] == hashlib.md5(gzip.decompress(ISSUE_A)).hexdigest(), told


def test_x6_a_reissue_of_an_applied_file_killed_half_way_is_reported_when_resumed(
    emu: ReviewEmulator, settings: Settings
) -> None:
    """Held: a re-issue of a file the update-file run applied, killed half-way, is
    reported by the run that resumes it (its ``source_files`` row still holds the issue
    replaced)."""
    s = _settings(emu, settings).replace(store_batch=1)
    _publish_and_apply(emu, s)
    was = hashlib.md5(REISSUED_A).hexdigest()
    emu.add_file("updatefiles", N2, _file(
        _art(22, "22 only in the re-issue"), _art(21, "21 as re-issued"), deleted=(22,),
    ))  # fmt: skip
    with _killed_once(s, lambda: _titles(s)[21] == ("21 as re-issued", False)):
        apply_updates(s, workers=0)
    apply_updates(s, workers=0)
    assert _titles(s)[22] == ("22 only in the re-issue", True)
    told = _last_run(s)["details"].get("reissued")
    assert told and told[0]["name"] == N2 and told[0]["was"] == was, told


# ------------------------------------------------------ X7: -0 and a λ equal to the setting


def test_x7_a_negative_zero_lambda_and_one_equal_to_the_setting(
    indexed: Settings,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _cli_env(monkeypatch, indexed, LITPULSE_SEARCH_SERVER_URL="")
    assert main(["search", CRISPR, "-k", "3", "--w-lexical", "-0.0"]) == 0
    out = capsys.readouterr().out
    assert "-0" not in out.rsplit("score =", 1)[1], out
    same = f"{indexed.weight_lexical:g}"
    assert main(["search", CRISPR, "-k", "3", "--mode", "semantic", "--w-lexical", same]) == 0
    err = capsys.readouterr().err
    assert "w_lexical" in err and "not used" in err, err
    assert main(["search", CRISPR, "-k", "3", "--mode", "semantic"]) == 0
    assert "w_lexical" not in capsys.readouterr().err  # not asked: nothing to say


# -------------------------- X8: a first application killed, re-issued before the resume


def test_x8_a_file_reissued_after_its_first_application_was_killed_is_applied_whole(
    emu: ReviewEmulator, env: Settings
) -> None:
    s = _settings(emu, env).replace(store_batch=1)
    emu.add_file("updatefiles", N1, _file(_art(11, "Record 11")))
    emu.add_file("updatefiles", N2, ISSUE_A)
    with _killed_once(s, lambda: _titles(s).get(22) == ("22 as first issued", False)):
        apply_updates(s, workers=0)  # every item of A stored, not its source_files row
    emu.add_file("updatefiles", N2, ISSUE_B)
    apply_updates(s, workers=0)
    assert _both(s) == RE_ISSUED, "the re-issue half applied"


def test_x7_the_cli_sends_a_lambda_to_a_server_only_where_it_ranks_or_was_asked(
    indexed: Settings,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """X7's fix on the server path: the query a running server is asked (it answers an
    error here, so the CLI then searches in process) holds ``w_lexical`` for a hybrid
    search and for one asked for it, not for a semantic search that was not."""
    import threading
    import urllib.parse
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    asked: list[dict[str, list[str]]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            asked.append(urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query))
            self.send_response(500)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        _cli_env(monkeypatch, indexed, LITPULSE_SEARCH_SERVER_URL=url)
        for argv in ([], ["--mode", "semantic"], ["--mode", "semantic", "--w-lexical", "0.35"]):
            assert main(["search", CRISPR, "-k", "2", *argv]) == 0
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert ["w_lexical" in q for q in asked] == [True, False, True]
