"""Hostile review (session 35d): settings and the operator's and researcher's options.

Every ``LITPULSE_*`` setting was fed hostile values (empty, white space, ``1e3``, ``0x10``,
``1_000``, ``١٢``, ``inf``/``nan``/``-0``, huge, booleans spelt ``yes``/``On``/``2``, URLs
with spaces, no host or wrong schemes, ``~`` and relative paths); the search filters and
scoring options of ``litpulse search`` and ``GET /search`` were compared. Held (no test
kept): ``inf``, ``nan``, ``1e400`` and huge integers are refused naming the range; ``-0``
of a float is 0 and of an int out of a range starting at 1; ``1_000`` is 1000 and ``١٢``
is 12 (what the user typed, read as Python and argparse read it); a reversed date range
and ``--language en`` are refused; the fusion options, settings on both sides, make the
CLI search in process when a server ranks otherwise (``_options_differ``).

Defects (each a strict xfail asserting the right behaviour until fixed):

X1 **A blank boolean setting is read as false**: ``LITPULSE_QUALITY_EXPECT_WEEKDAYS=``
   (a template's ``export VAR=``, a compose file's unset ``${VAR}``) silently switches a
   data-quality check off whose default is on; ``2`` or ``y`` are refused without naming
   the spellings accepted. Reproduced by ``Settings.from_env``.
   **Fixed**: ``settings._convert`` refuses a blank boolean ("unset it for the default")
   and names the spellings (true/false, 1/0, yes/no, on/off) in every refusal.
X2 **A number setting given as text that is no number is refused without its range**
   (``LITPULSE_STORE_BATCH=1e3``: "'1e3' is not a valid int"), while an out-of-range one
   names it; the operator has to look the range up. Reproduced by ``Settings.from_env``.
   **Fixed**: ``settings._convert`` says "is not a number; allowed: an integer from 1 to
   100000", from the one text of a field's range (``settings._allowed``).
X3 **A ``~user`` path naming no user crashes or lands in the working directory**:
   ``LITPULSE_HOME=~nobody/x`` is a ``RuntimeError`` traceback ("Could not determine home
   directory"), not a ``ConfigError`` naming the variable; ``LITPULSE_DATABASE_URL=
   sqlite:///~nobody/x.db`` silently opens ``./~nobody/x.db`` (a folder named ``~nobody``
   in whatever folder the command starts in: each process its own store).
   **Fixed**: one rule, ``settings._user_expanded``, expands ``~`` and ``~user`` for the
   home and a SQLite path and refuses a ``~user`` naming no user, naming the variable.
X4 **URL settings are checked by their first characters only**: ``http://`` (no host),
   ``http://exa mple.org/`` and a port of 99999 are accepted for E-utilities, iCite, the
   file server, the digest webhook and the search server, to fail later in the middle of
   a run; ``LITPULSE_ALERT_WEBHOOK_URL`` is not checked at all (``ftp://...``, ``not a
   url``): the alert of a failed task is then only a log line nobody reads, the one
   message the webhook was set up to deliver.
   **Fixed**: every URL setting passes one rule when the settings load
   (``settings._check_url``: its schemes, a host, a port that is a number in range, no
   white space; a secret one's value is not repeated), the alert webhook included.
X5 **``LITPULSE_MODEL`` with ``~`` or a relative path is taken literally**: ``~/m`` is
   refused at the first embedding as "base model folder '~/m' is missing" although the
   folder exists; ``models/m`` names another folder (or none) for each process started
   elsewhere (``litpulse serve``, an Airflow worker) and is recorded so in the registry.
   ``LITPULSE_HOME`` and SQLite URLs are fixed when the settings load; the model was not.
   **Fixed**: ``Settings.__post_init__`` makes a set ``LITPULSE_MODEL`` absolute with ``~``
   expanded (``settings._user_expanded``), as the home; help and README say so. A model
   version recorded before with a relative base path keeps it (its folder is unknown).
X6 **``--language xyz`` (any three letters) is accepted and matches nothing**, in the
   CLI, ``GET /search`` and saved searches alike (``ranking.search._language`` takes any
   three letters for a stored code). Reproduced by ``SearchFilters`` and ``GET /search``
   on SQLite and PostgreSQL (the request reaches the store: "no index" instead of 400).
   **Fixed**: ``_language`` takes the codes PubMed's records hold (its language list,
   ISO 639-2/B: the named languages' codes, now 65 with Kinyarwanda, Pashto, Basque... and
   their names) and refuses others naming them all, in search, the API, the CLI and saved
   searches alike; README says so. Known limit: a code PubMed adds later is refused until
   ``LANGUAGE_CODES`` names it.
X7 **A MeSH or type filter written with PubMed's field tag matches nothing**:
   ``--mesh "Neoplasms[mh]"``, ``--mesh "Neoplasms[MeSH Terms]"``, ``--type
   "Review[pt]"`` (as copied from a PubMed query) are accepted as descriptor names that no
   article carries. Reproduced by ``SearchFilters``.
   **Fixed**: ``ranking.search._terms`` refuses a term ending in one of the field tags the
   query refuses (the one rule, ``_FIELD_TAG``; a space before the bracket allowed),
   naming the term alone (``Neoplasms*`` for ``[majr]``); README says so.
X8 **Per-query scoring options hold other ranges than their settings and than the API**:
   ``litpulse search --w-sim 5000`` is accepted (``GET /search`` answers 400 above 1000,
   ``LITPULSE_WEIGHT_SIMILARITY`` refuses it too), and ``--half-life 0.5`` or
   ``?half_life=0.5`` are accepted where ``LITPULSE_RECENCY_HALF_LIFE_DAYS`` allows 1 ..
   1000000. Reproduced by ``ScoringOptions`` and the CLI.
   **Fixed**: ``ScoringOptions`` holds each option to its setting's range
   (``ranking.scoring._SETTING_OF``, ``settings.bounds``; the words from
   ``settings.allowed``), so the CLI, the API and the settings refuse
   alike; ``GET /search``'s parameters declare the same bounds.
X9 **The README's settings table drifted from the code**: the test checked only that a
   range appears somewhere in a row; defaults and help were never compared, and
   ``LITPULSE_PUBLIC_URL``'s default reads ```` (empty code), two help texts differ from
   what ``litpulse settings`` prints. Reproduced by comparing every row's cells.
   **Fixed**: the two help texts hold the README's fuller words (``litpulse settings``
   shows them), the README's default reads (empty); the test above compares every cell
   (``LITPULSE_HOME`` and ``LITPULSE_INGEST_WORKERS`` are described, not this machine's).
X10 **``LITPULSE_DIGEST_SMTP_TO`` is not checked, while the sender is**: ``ann@lab.org
   bob@lab.org`` (a space for a comma) is sent to the envelope address ``@lab.org``,
   ``Ann Smith`` to the relay's local user ``Ann``; every digest's e-mail then fails or
   goes astray, found one digest at a time. Reproduced by ``Settings.from_env``.
   **Fixed**: one rule, ``litpulse.core.text.address_list`` (each comma-separated entry
   one mailbox, as the sender), checks the list when the settings load (e-mail on) and
   splits it for ``digest_channels.shared_recipients``; help and README say so.
X11 **A database URL of another database or driver is a traceback at the first
   command**: ``postgres://user@host/db`` (libpq's and Heroku's spelling, which ``psql``
   takes) fails with ``NoSuchModuleError: Can't load plugin: sqlalchemy.dialects:postgres``,
   ``mysql://`` with ``ModuleNotFoundError``; ``postgresql+psycopg2://`` would connect
   where psycopg2 is installed and fail at the first ``COPY`` (psycopg 3's). Reproduced by
   ``litpulse status`` (``main``) with the variable set.
   **Fixed**: ``settings._store_url`` refuses, when the settings load, a database or
   driver litpulse does not run on (naming ``sqlite:///`` and ``postgresql+psycopg://``,
   the password hidden) and reads ``postgres://`` as ``postgresql+psycopg://``.
X12 **NCBI's ``tool`` and ``email`` are sent as given**: a blank ``LITPULSE_NCBI_TOOL``
   or one holding a space, and an ``LITPULSE_NCBI_EMAIL`` that is no address, go to
   NCBI with every request, where NCBI's rules ask for a tool name without spaces and a
   valid address (NCBI blocks abusive traffic it cannot attribute). Reproduced by
   ``Settings.from_env``.
   **Fixed**: ``Settings.__post_init__`` refuses a blank tool or one holding white space,
   and an e-mail that is not one plain mailbox (``core.text.plain_mailbox``, the rule of
   ``tokens create --email``); help and README say so.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from litpulse.core.errors import ConfigError
from litpulse.core.settings import Settings
from tests.litpulse.app.test_cli_contracts_review import run_cli

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


def refused(var: str, value: str) -> str:
    """The message of ``var=value`` refused by the settings (fails when accepted)."""
    try:
        got = Settings.from_env({var: value})
    except ConfigError as exc:
        return str(exc)
    name = var.removeprefix("LITPULSE_").lower()
    raise AssertionError(f"{var}={value!r} accepted as {getattr(got, name)!r}")


# ------------------------------------------------------------------------------ X1


def test_x1_a_blank_boolean_setting_is_refused_naming_the_spellings() -> None:
    for value in ("", "   "):
        msg = refused("LITPULSE_QUALITY_EXPECT_WEEKDAYS", value)
        assert "LITPULSE_QUALITY_EXPECT_WEEKDAYS" in msg and "blank" in msg, msg
    msg = refused("LITPULSE_QUALITY_EXPECT_WEEKDAYS", "2")
    assert "true" in msg and "false" in msg, msg
    for value, want in (("yes", True), ("On", True), ("OFF", False), ("0", False)):
        got = Settings.from_env({"LITPULSE_QUALITY_EXPECT_WEEKDAYS": value})
        assert got.quality_expect_weekdays is want, value


# ------------------------------------------------------------------------------ X2


def test_x2_text_that_is_no_number_is_refused_naming_the_range() -> None:
    for var, value, allowed in (
        ("LITPULSE_STORE_BATCH", "1e3", "an integer from 1 to 100000"),
        ("LITPULSE_STORE_BATCH", "0x10", "an integer from 1 to 100000"),
        ("LITPULSE_STORE_BATCH", "", "an integer from 1 to 100000"),
        ("LITPULSE_HTTP_TIMEOUT", "0x10", "a finite number from 0.1 to 3600"),
        ("LITPULSE_HTTP_TIMEOUT", "ten", "a finite number from 0.1 to 3600"),
    ):
        msg = refused(var, value)
        assert var in msg and allowed in msg, msg
    assert Settings.from_env({"LITPULSE_STORE_BATCH": "1_000"}).store_batch == 1000


# ------------------------------------------------------------------------------ X3


def test_x3_a_home_of_an_unknown_user_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    nobody = "~no_such_user_35d"
    try:
        msg = refused("LITPULSE_HOME", f"{nobody}/lp")
    except RuntimeError as exc:  # a traceback, not a message naming the variable
        raise AssertionError(f"LITPULSE_HOME: {exc!r}") from None
    assert "LITPULSE_HOME" in msg and nobody in msg, msg
    msg = refused("LITPULSE_DATABASE_URL", f"sqlite:///{nobody}/x.db")
    assert "LITPULSE_DATABASE_URL" in msg and nobody in msg, msg
    home = Settings.from_env({"LITPULSE_HOME": "~/lp"}).home
    assert home == Path.home() / "lp"


# ------------------------------------------------------------------------------ X4

URL_VARS = ("LITPULSE_EUTILS_URL", "LITPULSE_ICITE_URL", "LITPULSE_PUBMED_FILES_URL",
            "LITPULSE_DIGEST_WEBHOOK_URL", "LITPULSE_ALERT_WEBHOOK_URL",
            "LITPULSE_SEARCH_SERVER_URL", "LITPULSE_PUBLIC_URL")


def test_x4_a_url_setting_without_host_or_with_spaces_is_refused() -> None:
    for var in URL_VARS:
        for bad in ("http://", "http://exa mple.org/", "https://host:99999/", "ftp://host/",
                    "not a url"):
            msg = refused(var, bad)
            assert var in msg, msg
        good = "https://mirror.example.org:8443/eutils/"
        assert Settings.from_env({var: good})  # accepted
    files = Settings.from_env({"LITPULSE_PUBMED_FILES_URL": "file:///srv/pubmed"})
    assert files.pubmed_files_url == "file:///srv/pubmed/"


# ------------------------------------------------------------------------------ X5


def test_x5_a_model_path_is_fixed_when_the_settings_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "models" / "m").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "models")
    tilde = Settings.from_env({"LITPULSE_MODEL": "~/models/m"})
    relative = Settings.from_env({"LITPULSE_MODEL": "m"})
    assert tilde.model == relative.model == str(tmp_path / "models" / "m")
    assert tilde.model_path == str(tmp_path / "models" / "m")


# ------------------------------------------------------------------------------ X6


def test_x6_an_unknown_language_code_is_refused_naming_the_codes() -> None:
    from ranking.search import SearchFilters

    with pytest.raises(ConfigError) as err:
        SearchFilters(language="xyz")
    assert "'xyz'" in str(err.value) and "eng" in str(err.value) and "fre" in str(err.value)
    # a code PubMed's records hold, its terminology code and its name, all kept
    assert SearchFilters(language="Kinyarwanda").language == "kin"
    assert SearchFilters(language="fra").language == "fre"
    assert SearchFilters(language="ENG").language == "eng"


@pytest.fixture
def api(settings: Settings) -> Iterator[object]:
    from fastapi.testclient import TestClient

    from litpulse.app.api import create_app

    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def test_x6_the_api_refuses_an_unknown_language(api: object) -> None:
    answer = api.get("/search", params={"q": "asthma", "language": "xyz"})  # type: ignore[attr-defined]
    assert answer.status_code == 400, answer.text
    assert "xyz" in answer.text and "eng" in answer.text


def test_x6_a_known_language_reaches_the_store(api: object) -> None:
    answer = api.get("/search", params={"q": "asthma", "language": "fre"})  # type: ignore[attr-defined]
    assert answer.status_code != 400, answer.text


# ------------------------------------------------------------------------------ X7


def test_x7_a_filter_term_holding_a_field_tag_is_refused() -> None:
    from ranking.search import SearchFilters

    for kw, bare in ((dict(mesh=("Neoplasms[mh]",)), "Neoplasms"),
                     (dict(mesh=("Neoplasms [MeSH Terms]",)), "Neoplasms"),
                     (dict(mesh=("Neoplasms[majr]",)), "Neoplasms*"),
                     (dict(publication_type=("Review[pt]",)), "Review")):
        with pytest.raises(ConfigError) as err:
            SearchFilters(**kw)  # type: ignore[arg-type]
        assert repr(bare) in str(err.value), str(err.value)
    assert SearchFilters(mesh=("Neoplasms*",)).mesh == ("Neoplasms*",)


# ------------------------------------------------------------------------------ X8


def test_x8_scoring_options_hold_the_ranges_of_their_settings() -> None:
    from ranking.scoring import ScoringOptions

    settings = Settings.from_env({})
    for weights, half_life, var in (
        ({"similarity": 5000.0}, None, "0 to 1000"),
        ({"recency": 1001.0}, None, "0 to 1000"),
        ({}, 0.5, "1 to 1000000"),
        ({}, 2e6, "1 to 1000000"),
    ):
        with pytest.raises(ConfigError) as err:
            ScoringOptions.from_settings(settings, weights=weights, half_life_days=half_life)
        assert var in str(err.value), str(err.value)
    ok = ScoringOptions.from_settings(settings, weights={"similarity": 1000.0},
                                      half_life_days=1.0)
    assert ok.w_similarity == 1000.0 and ok.half_life_days == 1.0


def test_x8_the_cli_refuses_what_the_api_refuses(
    sqlite_settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LITPULSE_HOME", str(sqlite_settings.home))
    monkeypatch.setenv("LITPULSE_SEARCH_SERVER_URL", "")
    for option, allowed in ((["--w-sim", "5000"], "0 to 1000"),
                            (["--half-life", "0.5"], "1 to 1000000")):
        code, out, err = run_cli(["search", "asthma", *option], capsys)
        assert code == 2 and allowed in err, (code, err)


# ------------------------------------------------------------------------------ X9


def test_x9_the_readme_table_matches_the_code_cell_by_cell() -> None:
    rows = {}
    for line in README.splitlines():
        if line.startswith("| `LITPULSE_"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows[cells[0].strip("`")] = cells
    described = {"LITPULSE_HOME": "`.litpulse`",  # shown absolute, relative by default
                 "LITPULSE_INGEST_WORKERS": "the cores (one core: 0)"}  # this machine's
    wrong = []
    for row in Settings.from_env({}).describe():
        var = row["env"]
        _, default, span, help_ = rows[var]
        want = described.get(var) or ("(empty)" if row["value"] == "" else f"`{row['value']}`")
        if default != want:
            wrong.append(f"{var} default {default!r}, code {want!r}")
        if span != row["range"]:
            wrong.append(f"{var} range {span!r}, code {row['range']!r}")
        if help_ != row["help"]:
            wrong.append(f"{var} help differs from `litpulse settings`")
    assert not wrong, wrong


# ------------------------------------------------------------------------------ X10


def test_x10_digest_recipients_are_checked_when_email_is_sent() -> None:
    host = {"LITPULSE_DIGEST_SMTP_HOST": "relay.example.org"}
    for bad in ("ann@lab.example.org bob@lab.example.org", "Ann Smith",
                "ann@lab.example.org; bob@lab.example.org", "ann@lab.example.org,,x"):
        try:
            got = Settings.from_env({**host, "LITPULSE_DIGEST_SMTP_TO": bad})
        except ConfigError as exc:
            assert "LITPULSE_DIGEST_SMTP_TO" in str(exc), str(exc)
            continue
        raise AssertionError(f"{bad!r} accepted as {got.digest_smtp_to!r}")
    good = "Team Lead <lead@example.org>, ops@example.org, root@localhost"
    assert Settings.from_env({**host, "LITPULSE_DIGEST_SMTP_TO": good}).digest_smtp_to == good
    # no e-mail sent: nothing to check (as the sender)
    assert Settings.from_env({"LITPULSE_DIGEST_SMTP_TO": "Ann Smith"})


# ------------------------------------------------------------------------------ X11


@pytest.mark.postgres
def test_x11_a_database_url_of_another_database_is_refused_or_read_as_meant(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("LITPULSE_HOME", str(tmp_path))
    for bad in ("mysql://u@127.0.0.1/db", "postgresql+psycopg2://u@127.0.0.1/db",
                "oracle://u@h/db"):
        monkeypatch.setenv("LITPULSE_DATABASE_URL", bad)
        code, out, err = run_cli(["status"], capsys)
        assert code == 2 and "LITPULSE_DATABASE_URL" in err and "postgresql" in err, (
            code, err[-400:])
    # libpq's spelling names PostgreSQL: it opens the same store as postgresql://
    libpq = postgres_url.replace("postgresql+psycopg://", "postgres://", 1)
    assert libpq.startswith("postgres://"), postgres_url
    monkeypatch.setenv("LITPULSE_DATABASE_URL", libpq)
    code, out, err = run_cli(["status", "--json"], capsys)
    assert code == 0, err[-600:]


# ------------------------------------------------------------------------------ X12


def test_x12_ncbi_tool_and_email_are_checked() -> None:
    for var, bad in (("LITPULSE_NCBI_TOOL", ""), ("LITPULSE_NCBI_TOOL", "my tool"),
                     ("LITPULSE_NCBI_EMAIL", "not-an-email"),
                     ("LITPULSE_NCBI_EMAIL", "a b@example.org")):
        msg = refused(var, bad)
        assert var in msg, msg
    ok = Settings.from_env({"LITPULSE_NCBI_TOOL": "lab-pulse",
                            "LITPULSE_NCBI_EMAIL": " ann@lab.example.org "})
    assert (ok.ncbi_tool, ok.ncbi_email) == ("lab-pulse", "ann@lab.example.org")
    assert Settings.from_env({"LITPULSE_NCBI_EMAIL": ""}).ncbi_email == ""
