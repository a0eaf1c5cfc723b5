from __future__ import annotations

from pathlib import Path

import pytest

from litpulse.errors import ConfigError, LitpulseError, TransientSourceError
from litpulse.settings import Settings, default_model_path


def test_defaults() -> None:
    s = Settings.from_env({})
    assert s.home == Path(".litpulse")
    assert s.effective_database_url.startswith("sqlite:///")
    assert s.effective_database_url.endswith("/.litpulse/litpulse.db")
    assert s.rate_limit == 3.0
    assert s.eutils_url.endswith("/entrez/eutils/")


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
        ({"LITPULSE_EFETCH_BATCH": "many"}, "LITPULSE_EFETCH_BATCH='many' is not a valid int"),
        ({"LITPULSE_EFETCH_BATCH": "0"}, "LITPULSE_EFETCH_BATCH must be positive"),
        ({"LITPULSE_ICITE_BATCH": "500"}, "LITPULSE_ICITE_BATCH must be <= 200"),
        ({"LITPULSE_DEVICE": "tpu"}, "LITPULSE_DEVICE must be auto, cpu or cuda"),
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
