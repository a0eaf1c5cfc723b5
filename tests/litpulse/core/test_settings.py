from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path
from typing import Any

import pytest

from litpulse.core.errors import ConfigError, LitpulseError, TransientSourceError
from litpulse.core.settings import Settings, default_model_path, env_name


def _numeric_fields() -> list[tuple[str, type, Any, Any]]:
    """Every int/float field with its declared bounds (``None`` when missing)."""
    hints = typing.get_type_hints(Settings)
    return [
        (f.name, hints[f.name], f.metadata.get("min"), f.metadata.get("max"))
        for f in dataclasses.fields(Settings)
        if hints[f.name] in (int, float)
    ]


NUMERIC = _numeric_fields()
NAMES = [name for name, *_ in NUMERIC]


def test_defaults() -> None:
    s = Settings.from_env({})
    assert s.home == Path.cwd() / ".litpulse"  # relative: from the folder it starts in
    assert s.effective_database_url.startswith("sqlite:///")
    assert s.effective_database_url.endswith("/.litpulse/litpulse.db")
    assert s.rate_limit == 3.0
    assert s.eutils_url.endswith("/entrez/eutils/")


@pytest.mark.parametrize(("cores", "workers"), [(1, 0), (2, 2), (16, 16), (200, 64)])
def test_ingest_workers_default_to_the_cores(
    monkeypatch: pytest.MonkeyPatch, cores: int, workers: int
) -> None:
    """One parse worker per core (issue #12: "default: the cores"); measured on 2 cores, a
    file split over 2 workers beat 1 worker idle and beside a busy core, on both stores,
    and the bootstrap too. One core parses in the writer (a worker there only adds the
    hand-over)."""
    from litpulse.core import settings as module

    monkeypatch.setattr(module.os, "sched_getaffinity", lambda pid: set(range(cores)))
    assert module._default_workers() == workers


def test_env_values_are_typed() -> None:
    s = Settings.from_env(
        {
            "LITPULSE_HOME": "/tmp/x",
            "LITPULSE_EFETCH_BATCH": "150",
            "LITPULSE_WEIGHT_RECENCY": "0.5",
            "LITPULSE_NCBI_API_KEY": "secret-key",
            "LITPULSE_EUTILS_URL": "http://127.0.0.1:9/eutils",
            "PATH": "/usr/bin",
        }
    )
    assert s.home == Path("/tmp/x")
    assert s.efetch_batch == 150
    assert s.weight_recency == 0.5
    assert s.rate_limit == 10.0
    assert s.eutils_url == "http://127.0.0.1:9/eutils/"  # trailing slash added


def test_api_key_never_in_repr_or_describe() -> None:
    s = Settings.from_env({"LITPULSE_NCBI_API_KEY": "secret-key"})
    assert "secret-key" not in repr(s)
    assert "secret-key" not in str(s.describe())


def test_requests_per_second_cannot_exceed_ncbi_limit() -> None:
    assert Settings.from_env({"LITPULSE_REQUESTS_PER_SECOND": "50"}).rate_limit == 3.0
    assert Settings.from_env({"LITPULSE_REQUESTS_PER_SECOND": "1.5"}).rate_limit == 1.5


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"LITPULSE_EFETCH_BATCH": "many"},
         "LITPULSE_EFETCH_BATCH='many' is not a number; allowed: an integer from 1 to 10000"),
        ({"LITPULSE_EFETCH_BATCH": "0"}, "LITPULSE_EFETCH_BATCH=0 is out of range"),
        ({"LITPULSE_ICITE_BATCH": "500"}, "allowed: an integer from 1 to 200"),
        ({"LITPULSE_HTTP_TIMEOUT": "nan"}, "LITPULSE_HTTP_TIMEOUT=nan is out of range"),
        ({"LITPULSE_HTTP_TIMEOUT": "inf"}, "allowed: a finite number from 0.1 to 3600"),
        ({"LITPULSE_WEIGHT_RECENCY": "-1"}, "LITPULSE_WEIGHT_RECENCY=-1.0 is out of range"),
        ({"LITPULSE_DEVICE": "tpu"}, "LITPULSE_DEVICE must be auto, cpu or cuda"),
        ({"LITPULSE_IVF_CODEC": "pq"}, "LITPULSE_IVF_CODEC must be flat or sq8, got 'pq'"),
        ({"LITPULSE_EUTILS_URL": "ftp://x/"}, "LITPULSE_EUTILS_URL must be an http(s)"),
        ({"LITPULSE_DATABASE_URL": "nonsense"}, "LITPULSE_DATABASE_URL must be a SQLAlchemy URL"),
        ({"LITPULSE_NO_SUCH_THING": "1"}, "unknown setting LITPULSE_NO_SUCH_THING"),
    ],
)
def test_invalid_values_name_the_variable(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert needle in str(info.value)


def test_every_setting_is_documented() -> None:
    rows = Settings.from_env({}).describe()
    assert rows and all(r["help"] and r["env"].startswith("LITPULSE_") for r in rows)


def test_bundled_model_is_found() -> None:
    path = Path(default_model_path())
    assert (path / "config.json").exists()
    assert (path / "modules.json").exists()


def test_error_hierarchy_says_what_is_retryable() -> None:
    assert TransientSourceError("x").retryable
    assert not ConfigError("x").retryable
    assert isinstance(ConfigError("x"), LitpulseError)


# ----------------------------------------------------------------------------- ranges


def test_every_numeric_setting_declares_a_finite_range() -> None:
    assert len(NUMERIC) >= 20
    for name, kind, lo, hi in NUMERIC:
        assert lo is not None and hi is not None, f"{name}: _opt(..., min=..., max=...) missing"
        assert isinstance(lo, int | float) and isinstance(hi, int | float), name
        assert math.isfinite(lo) and math.isfinite(hi) and lo < hi, name
        if kind is int:
            assert isinstance(lo, int) and isinstance(hi, int), f"{name}: int bounds"
        assert lo <= getattr(Settings(), name) <= hi, f"{name}: default outside its range"


def _bad_values(kind: type, lo: Any, hi: Any) -> list[Any]:
    bad: list[Any] = [math.nan, math.inf, -math.inf, 1e308, -1e308, 10**30, -(10**30), 10**400]
    if lo is not None:
        bad += [lo - 1, hi + 1] if kind is int else [lo - abs(lo) - 1.0, hi + abs(hi) + 1.0]
    return bad


@pytest.mark.parametrize("name", NAMES)
def test_out_of_range_values_name_the_variable(name: str) -> None:
    """NaN, infinities, huge and just-outside values fail when the settings are built —
    from the environment, by ``Settings(...)`` and by ``replace`` — naming the variable."""
    kind, lo, hi = next((k, lo, hi) for n, k, lo, hi in NUMERIC if n == name)
    var = env_name(name)
    texts = ["nan", "NaN", "inf", "-inf", "infinity", "1e308", "1e309", str(10**30)]
    if lo is not None:
        texts += [str(v) for v in _bad_values(kind, lo, hi)[-2:]]
    for text in texts:
        with pytest.raises(ConfigError) as info:
            Settings.from_env({var: text})
        assert var in str(info.value), (text, str(info.value))
    base = Settings()
    for value in _bad_values(kind, lo, hi):
        for build in (lambda v: Settings(**{name: v}), lambda v: base.replace(**{name: v})):
            with pytest.raises(ConfigError) as info:
                build(value)
            message = str(info.value)
            assert var in message and "allowed" in message, (value, message)
    # both bounds themselves are allowed (unless a cross-field rule says otherwise)
    for edge in (lo, hi):
        try:
            assert getattr(base.replace(**{name: edge}), name) == edge
        except ConfigError as exc:
            assert var in str(exc) and "allowed" not in str(exc)


def test_the_error_names_the_value_and_the_range() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"LITPULSE_REQUESTS_PER_SECOND": "nan"})
    assert str(info.value) == (
        "LITPULSE_REQUESTS_PER_SECOND=nan is out of range; allowed: a finite number from 0 to 100"
    )
    with pytest.raises(ConfigError, match=r"LITPULSE_EFETCH_BATCH='200' is not an integer"):
        Settings(efetch_batch="200")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"LITPULSE_EFETCH_BATCH=200.0 is not an integer"):
        Settings(efetch_batch=200.0)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"LITPULSE_SEED=True is not an integer"):
        Settings(seed=True)
    assert Settings(http_timeout=5).http_timeout == 5.0  # an int is a fine float


def test_nan_rate_cannot_switch_throttling_off() -> None:
    """``LITPULSE_REQUESTS_PER_SECOND=nan`` used to make the limiter's interval NaN (no
    waiting at all: 21 requests in 0.57 s); now it and every other bad rate fail, and every
    accepted rate throttles at NCBI's limit or below."""
    for text in ("nan", "inf", "-1", "1e-300", "0.001"):
        with pytest.raises(ConfigError, match="LITPULSE_REQUESTS_PER_SECOND"):
            Settings.from_env({"LITPULSE_REQUESTS_PER_SECOND": text})
    for key in ("", "k"):
        for rate in (0.0, 0.01, 1.0, 3.0, 10.0, 100.0):
            limit = Settings(requests_per_second=rate, ncbi_api_key=key).rate_limit
            assert 0.01 <= limit <= (10.0 if key else 3.0), (rate, key, limit)


def test_gate_settings_cannot_make_the_gate_accept_everything() -> None:
    from retrain.evaluate import gate

    def metrics(fresh: float, older: float) -> dict[str, dict[str, float]]:
        return {
            "fresh": {"recall@10": fresh, "queries": 100},
            "older": {"recall@10": older, "queries": 100},
        }

    active = metrics(0.5, 0.9)
    for bad in (
        {"gate_fresh_margin": -1.0},
        {"gate_fresh_margin": 0.0},
        {"gate_fresh_margin": math.nan},
        {"gate_older_tolerance": math.inf},
        {"gate_older_tolerance": 1.0},
        {"gate_older_tolerance": -0.1},
        {"gate_older_tolerance": math.nan},
    ):
        with pytest.raises(ConfigError, match=env_name(next(iter(bad)))):
            Settings(**bad)
    for margin in (0.001, 0.005, 1.0):
        for tolerance in (0.0, 0.01, 0.2):
            s = Settings(gate_fresh_margin=margin, gate_older_tolerance=tolerance)
            assert not gate(s, active, active).passed  # no gain: never promoted
            assert not gate(s, metrics(1.0, 0.0), active).passed  # older set destroyed
            assert not gate(s, metrics(0.4, 0.9), active).passed  # worse on fresh
    s = Settings()
    assert gate(s, metrics(0.6, 0.9), active).passed  # a real gain still passes


def test_cross_field_rules() -> None:
    with pytest.raises(
        ConfigError, match="LITPULSE_BACKOFF_BASE=120.0 must not exceed LITPULSE_BACKOFF_MAX=60.0"
    ):
        Settings.from_env({"LITPULSE_BACKOFF_BASE": "120"})
    assert Settings(backoff_base=8.0, backoff_max=8.0).backoff_base == 8.0
    with pytest.raises(ConfigError, match="at least one score weight must be > 0"):
        Settings(weight_similarity=0.0, weight_recency=0.0, weight_citation=0.0)
    assert Settings(weight_similarity=0.0, weight_recency=0.0).weight_citation == 0.1


def test_scoring_settings_fail_at_load_not_per_query() -> None:
    """A bad weight or half-life used to pass and then fail every search, naming the
    query parameter (``w_recency``) instead of the variable."""
    for var, text in (
        ("LITPULSE_WEIGHT_RECENCY", "nan"),
        ("LITPULSE_WEIGHT_CITATION", "inf"),
        ("LITPULSE_RECENCY_HALF_LIFE_DAYS", "inf"),
        ("LITPULSE_RECENCY_HALF_LIFE_DAYS", "0"),
    ):
        with pytest.raises(ConfigError, match=var):
            Settings.from_env({var: text})


def test_describe_and_cli_show_the_range(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    rows = {r["env"]: r for r in Settings().describe()}
    assert rows["LITPULSE_HTTP_TIMEOUT"]["range"] == "0.1 .. 3600"
    assert rows["LITPULSE_ICITE_BATCH"]["range"] == "1 .. 200"
    assert rows["LITPULSE_HOME"]["range"] == ""
    from litpulse.app.cli import main

    monkeypatch.setenv("LITPULSE_HOME", str(tmp_path))
    assert main(["settings"]) == 0
    out = capsys.readouterr().out
    assert "range" in out.splitlines()[0]
    line = next(x for x in out.splitlines() if x.startswith("LITPULSE_MAX_QUARANTINE_RATE "))
    assert "0 .. 1" in line


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LITPULSE_DEVICE": "cuda:x"}, "LITPULSE_DEVICE"),
        ({"LITPULSE_EUTILS_URL": "file:///tmp/mirror/"}, "LITPULSE_EUTILS_URL"),
        ({"LITPULSE_ICITE_URL": "file:///tmp/mirror/"}, "LITPULSE_ICITE_URL"),
        ({"LITPULSE_PUBLIC_URL": "lit.example.org"}, "LITPULSE_PUBLIC_URL"),
        ({"LITPULSE_PUBLIC_URL": "ftp://lit.example.org/"}, "LITPULSE_PUBLIC_URL"),
        ({"LITPULSE_PUBLIC_URL": "https:///pulse"}, "LITPULSE_PUBLIC_URL"),  # no host
        ({"LITPULSE_PUBLIC_URL": "https://lit.example.org/?a=1"}, "LITPULSE_PUBLIC_URL"),
        ({"LITPULSE_PUBLIC_URL": "https://lit.example.org/#top"}, "LITPULSE_PUBLIC_URL"),
    ],
)
def test_values_that_would_fail_later_fail_at_load(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)
    assert Settings.from_env({"LITPULSE_DEVICE": "cuda:1"}).device == "cuda:1"
    assert Settings.from_env({"LITPULSE_PUBMED_FILES_URL": "file:///m/"}).pubmed_files_url


def test_the_public_url_is_kept_without_its_last_slash() -> None:
    assert Settings.from_env({}).public_url == ""
    given = {"LITPULSE_PUBLIC_URL": "https://lit.example.org/pulse/"}
    assert Settings.from_env(given).public_url == "https://lit.example.org/pulse"


def test_a_home_that_is_a_file_is_refused_naming_the_variable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``LITPULSE_HOME`` naming a file (or a folder under one): the first command said
    ``[Errno 17] File exists: '/tmp/afile'``, naming no setting (35d's note)."""
    from litpulse.app.cli import main

    afile = tmp_path / "afile"
    afile.write_text("")
    for home in (afile, afile / "below"):
        with pytest.raises(ConfigError, match="LITPULSE_HOME"):
            Settings.from_env({"LITPULSE_HOME": str(home)}).ensure_home()
    monkeypatch.setenv("LITPULSE_HOME", str(afile))
    monkeypatch.delenv("LITPULSE_DATABASE_URL", raising=False)
    assert main(["status"]) == 2
    assert "LITPULSE_HOME" in capsys.readouterr().err
    monkeypatch.setenv("LITPULSE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LITPULSE_DATABASE_URL", f"sqlite:///{afile}/below/store.db")
    assert main(["status"]) == 2
    assert "LITPULSE_DATABASE_URL" in capsys.readouterr().err
