"""The polite HTTP client against the loopback emulator: rate, retries, classes, secrets."""

from __future__ import annotations

import logging
import random
import re
import threading
from pathlib import Path

import pytest
import requests

from ingest.http import HttpClient, RateLimiter, eutils_client, limiter_for, redact
from litpulse.core.errors import InvalidRequestError, RateLimitedError, TransientSourceError
from litpulse.core.settings import Settings
from tests.emulator import Emulator, max_requests_in_window

KEY = "SECRET-api-key-0123456789"


@pytest.fixture
def fast(emu: Emulator, tmp_path: Path) -> Settings:
    """Settings on the emulator with an API key (10 requests/s) and tiny backoff."""
    return emu.configure(
        Settings.from_env({}, home=tmp_path / "home", ncbi_api_key=KEY, ncbi_email="t@example.org"),
        max_retries=4,
    )


class Sleeps:
    """A fake backoff sleep that records what it was asked to wait."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def test_limiter_spaces_requests_across_threads_and_clients(emu: Emulator, fast: Settings) -> None:
    emu.set_icite(1)
    clients = [HttpClient(fast, fast.icite_url) for _ in range(3)]
    assert clients[0].limiter is clients[1].limiter is clients[2].limiter
    errors: list[BaseException] = []

    def work(client: HttpClient) -> None:
        try:
            for _ in range(5):
                assert client.get("pubs", params={"pmids": "1"}).json()["data"][0]["pmid"] == 1
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(c,)) for c in clients for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(emu.requests("/icite")) == 30
    assert emu.max_rate("/icite") <= fast.rate_limit == 10


def test_stricter_rate_wins_for_a_shared_host(emu: Emulator) -> None:
    a = limiter_for(emu.url + "/x/", 10)
    b = limiter_for(emu.url + "/y/", 3)
    assert a is b and a.rate == 3
    assert RateLimiter(4).interval == pytest.approx(1.1 / 4)


def test_max_requests_in_window() -> None:
    assert max_requests_in_window([0.0, 0.1, 0.5, 0.99, 1.0, 1.5]) == 4
    assert max_requests_in_window([]) == 0


@pytest.mark.parametrize("kind", ["429", "500", "502", "503", "reset", "truncate", "slow"])
def test_transient_failures_are_retried(emu: Emulator, fast: Settings, kind: str) -> None:
    emu.set_icite(7, citation_count=3)
    emu.faults.add(kind, path="/icite", times=2, retry_after="2", delay=1.0)
    sleeps = Sleeps()
    client = HttpClient(fast.replace(http_timeout=0.4), fast.icite_url, sleep=sleeps)
    body = client.get("pubs", params={"pmids": "7"}).json()
    assert body["data"][0]["citation_count"] == 3
    assert [r.fault for r in emu.requests("/icite")] == [kind, kind, None]
    assert client.retries == 2 and len(sleeps.delays) == 2
    if kind == "429":
        assert all(d >= 2.0 for d in sleeps.delays)  # Retry-After honoured
    else:
        assert all(0 <= d <= fast.backoff_max for d in sleeps.delays)


def test_bad_body_is_retried_through_parse_callback(emu: Emulator, fast: Settings) -> None:
    emu.set_icite(7)
    emu.faults.add("garbage", path="/icite")
    client = HttpClient(fast, fast.icite_url, sleep=Sleeps())

    def parse(response: requests.Response) -> dict[str, object]:
        try:
            body: dict[str, object] = response.json()
            return body
        except ValueError:
            raise TransientSourceError("not JSON") from None

    assert client.get("pubs", params={"pmids": "7"}, parse=parse)["data"]
    assert len(emu.requests("/icite")) == 2


def test_client_errors_are_not_retried(emu: Emulator, fast: Settings) -> None:
    client = HttpClient(fast, fast.icite_url, sleep=Sleeps())
    with pytest.raises(InvalidRequestError, match="404"):
        client.get("no-such-endpoint")
    assert len(emu.requests("/icite")) == 1


def test_gives_up_after_max_retries(emu: Emulator, fast: Settings) -> None:
    emu.faults.add("429", path="/icite", times=10, retry_after="0")
    sleeps = Sleeps()
    client = HttpClient(fast.replace(max_retries=2), fast.icite_url, sleep=sleeps)
    with pytest.raises(RateLimitedError, match="gave up after 3 attempts"):
        client.get("pubs", params={"pmids": "1"})
    assert len(emu.requests("/icite")) == 3 and len(sleeps.delays) == 2


def test_backoff_is_full_jitter_with_a_cap(fast: Settings) -> None:
    s = fast.replace(backoff_base=1.0, backoff_max=8.0)
    client = HttpClient(s, s.icite_url, rng=random.Random(3))
    for attempt, cap in [(0, 1.0), (1, 2.0), (2, 4.0), (3, 8.0), (6, 8.0)]:
        delays = [client.backoff(attempt) for _ in range(200)]
        assert all(0 <= d <= cap for d in delays)
        assert max(delays) > cap / 2  # jitter spreads over the whole range
    assert client.backoff(0, retry_after=30.0) == 30.0


def test_api_key_is_sent_but_never_shown(
    emu: Emulator, fast: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # urllib3 logs request lines at DEBUG
    emu.faults.add("503", path="esearch", times=20)
    client = eutils_client(fast.replace(max_retries=2))
    with pytest.raises(TransientSourceError) as info:
        client.post("esearch.fcgi", data={"db": "pubmed", "term": "all[sb]"})
    first = emu.requests("esearch")[0]
    assert first.method == "POST" and first.params["api_key"] == KEY
    assert first.params["tool"] == "litpulse" and first.params["email"] == "t@example.org"
    assert KEY not in str(info.value) and KEY not in repr(info.value)
    assert info.value.__cause__ is None and info.value.__context__ is None or KEY not in str(
        info.value.__context__
    )
    assert KEY not in caplog.text
    assert "esearch.fcgi" in caplog.text  # the requests were logged, without the key
    assert KEY not in repr(fast)


def test_redact() -> None:
    url = "https://x/esearch.fcgi?db=pubmed&api_key=abc123&term=x"
    assert redact(url) == "https://x/esearch.fcgi?db=pubmed&api_key=***&term=x"
    assert redact("key abc123 in text", ["abc123"]) == "key *** in text"


@pytest.mark.parametrize(
    "key", ["SeCrEt+Key/with=reserved&chars", "a b+c%d~e", "Ünïcode:key?#[]@!$'()*,;"]
)
def test_redact_every_encoding_of_a_secret(key: str) -> None:
    """A key with URL-reserved characters leaks in none of its encodings."""
    from urllib.parse import quote, quote_plus, urlencode

    forms = {
        key,
        quote(key),
        quote(key, safe=""),
        quote_plus(key),
        quote_plus(key, safe="/"),
        urlencode({"api_key": key}).split("=", 1)[1],
    }
    forms |= {re.sub("%[0-9A-F]{2}", lambda m: m.group(0).lower(), f) for f in forms}
    forms |= {quote(f, safe="") for f in list(forms)}  # encoded twice, as in a logged URL
    for form in forms:
        for text in (
            f"HTTP 400 from https://x/esearch.fcgi?db=pubmed&api_key={form}&term=x",
            f"error: body was tool=litpulse&api_key={form}",
            f"ConnectionError: {form} (gave up after 3 attempts)",
            f"{{'api_key': '{form}'}}",
            f"url=/efetch.fcgi%3Fapi_key%3D{form}%26db%3Dpubmed",
        ):
            out = redact(text, [key])
            assert form not in out, (form, out)
            for piece in ("SeCrEt", "reserved", "Ünïcode", "%C3%9Cn"):
                if piece in key or piece.lower() in form.lower():
                    assert piece.lower() not in out.lower(), (form, out)
    assert redact("nothing secret here", [key]) == "nothing secret here"
    assert redact("api_key=", [key]) == "api_key="


def test_download_resumes_with_range(emu: Emulator, fast: Settings, tmp_path: Path) -> None:
    data = bytes(range(256)) * 4000
    emu.add_file("updatefiles", "pubmed26n0001.xml.gz", data)
    emu.faults.add("truncate", path="pubmed26n0001.xml.gz")
    client = HttpClient(fast, fast.pubmed_files_url, sleep=Sleeps())
    size, _md5 = client.download("updatefiles/pubmed26n0001.xml.gz", tmp_path / "f.gz")
    assert size == len(data) and (tmp_path / "f.gz").read_bytes() == data
    reqs = emu.requests("pubmed26n0001")
    assert len(reqs) == 2 and reqs[0].fault == "truncate"
    assert reqs[1].headers.get("Range", "").startswith("bytes=")
    assert reqs[1].headers["Range"] != "bytes=0-"
