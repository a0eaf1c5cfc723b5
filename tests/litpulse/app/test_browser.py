"""The web page in a real headless Chromium: search, stacked score bars, explanation,
exports, filters and feedback.

Needs Debian's ``chromium`` and ``chromium-driver`` packages and the ``selenium`` wheel;
skipped without them. The driver is given explicitly, so Selenium Manager downloads
nothing. Set ``LITPULSE_TEST_SCREENSHOT`` to a path to keep a screenshot of the page.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from litpulse.app.tokens import create_token
from litpulse.core import db
from litpulse.core.schema import feedback
from litpulse.core.settings import Settings
from tests.conftest import free_port
from tests.litpulse.app.apistore import clone_store
from tests.ranking.corpus import ARTICLES, real_corpus

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or (
    "/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else None
)
SCREENSHOT_ENV = "LITPULSE_TEST_SCREENSHOT"

if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip("needs Debian's chromium and chromium-driver", allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def screenshot_target() -> str | None:
    """Read before the autouse fixture clears every ``LITPULSE_*`` variable."""
    return os.environ.get(SCREENSHOT_ENV)


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A copy of the real corpus (the page records feedback in it), default API limits."""
    return clone_store(real_corpus(tmp_path_factory), tmp_path_factory.mktemp("page") / "home")


@pytest.fixture(scope="module")
def token(real: Settings) -> str:
    """An API token of the expert ``browser-test``."""
    return create_token(real, "browser-test").token


def fetch(url: str, attempts: int = 5) -> bytes:
    """The body of ``GET url``, waiting out a 429 as a polite client does.

    The test's own requests share 127.0.0.1's token bucket with the page's (default API
    limits: 20 at once, then 5/s), so after a burst of page loads the API may ask the test
    to wait: it sleeps ``Retry-After`` and asks again, ``attempts`` times at most.
    """
    for attempt in range(attempts):
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                return bytes(resp.read())
        except urllib.error.HTTPError as exc:
            if exc.code != 429 or attempt == attempts - 1:
                raise
            time.sleep(float(exc.headers.get("Retry-After") or 1))
    raise AssertionError("unreachable")


def _serve(settings: Settings) -> Iterator[str]:
    import uvicorn

    from litpulse.app.api import create_app

    port = free_port()
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                            log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def server(real: Settings) -> Iterator[str]:
    yield from _serve(real)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager: never download
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--window-size=1200,1400",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _search(browser: Any, query: str) -> list[Any]:
    browser.execute_script("document.getElementById('count').textContent = ''")
    box = browser.find_element(By.ID, "q")
    box.clear()
    box.send_keys(query)
    browser.find_element(By.ID, "go").click()
    WebDriverWait(browser, 20).until(lambda d: "result" in d.find_element(By.ID, "count").text)
    return browser.find_elements(By.CSS_SELECTOR, "li.hit")


def test_search_page_draws_results(
    browser: Any, server: str, real: Settings, token: str, tmp_path: Path,
    screenshot_target: str | None,
) -> None:
    browser.get(server + "/")
    WebDriverWait(browser, 20).until(
        lambda d: "articles" in d.find_element(By.ID, "status").text
    )
    assert f"{len(ARTICLES) - 1} articles" in browser.find_element(By.ID, "status").text
    # the page runs under its Content-Security-Policy: inline script is refused
    assert browser.execute_script(
        "const s = document.createElement('script'); s.textContent = 'window.inlineRan = 1';"
        "document.body.append(s); return window.inlineRan === undefined;"
    )
    browser.execute_script("localStorage.setItem('litpulse.token', arguments[0])", token)

    hits = _search(browser, "malaria vaccine for children")
    assert len(hits) >= 3
    assert hits[0].get_attribute("data-pmid") == "201"
    assert ARTICLES[201]["title"] in hits[0].text
    link = hits[0].find_element(By.CSS_SELECTOR, "a.title")
    assert link.get_attribute("href") == "https://pubmed.ncbi.nlm.nih.gov/201/"
    for hit in hits[:3]:  # the related ones (far articles can have cosine <= 0)
        segments = hit.find_elements(By.CSS_SELECTOR, ".bar span")
        assert [s.get_attribute("class") for s in segments] == ["sim", "lex", "rec", "cit"]
        widths = [s.size["width"] for s in segments]
        assert widths[0] > 0 and sum(widths) > 0  # drawn, similarity visible
    # the explanation opens and lists the four components and the matched terms
    hits[0].find_element(By.CSS_SELECTOR, "details.why summary").click()
    rows = hits[0].find_elements(By.CSS_SELECTOR, "table.explain tr")
    assert [r.find_elements(By.TAG_NAME, "td")[0].text for r in rows[1:]] == [
        "similarity", "lexical", "recency", "citation",
    ]
    terms = hits[0].find_element(By.CSS_SELECTOR, ".terms").text
    assert "Matched terms" in terms and "malaria" in terms and "vaccin" in terms
    # export buttons point at /export with the query
    for fmt in ("ris", "bibtex", "csv"):
        href = browser.find_element(By.ID, f"export-{fmt}").get_attribute("href")
        assert f"format={fmt}" in href and "q=malaria+vaccine" in href

    target = Path(screenshot_target) if screenshot_target else tmp_path / "page.png"
    browser.save_screenshot(str(target))
    assert target.stat().st_size > 10_000

    # feedback: a click sends the stored API token; recorded under its expert
    hits[0].find_element(By.CSS_SELECTOR, "button[data-relevant='true']").click()
    WebDriverWait(browser, 20).until(
        lambda d: "recorded" in hits[0].find_element(By.CSS_SELECTOR, ".thanks").text
    )
    assert "browser-test" in hits[0].find_element(By.CSS_SELECTOR, ".thanks").text
    with db.connect(real).connect() as conn:
        row = conn.execute(
            select(feedback).where(feedback.c.pmid == 201, feedback.c.user == "browser-test")
        ).one()
    assert row.relevant is True and row.query == "malaria vaccine for children"
    # nothing of the page itself broke the policy (the one violation is the probe above)
    refused = [e["message"] for e in browser.get_log("browser")
               if "Content Security Policy" in e["message"]]
    assert len(refused) <= 1 and all("inline script" in m for m in refused), refused


def test_filters_and_errors_in_the_page(browser: Any, server: str) -> None:
    browser.get(server + "/")
    WebDriverWait(browser, 20).until(ec.element_to_be_clickable((By.ID, "go")))
    browser.find_element(By.CSS_SELECTOR, "#filters summary").click()
    browser.find_element(By.ID, "language").send_keys("spa")
    hits = _search(browser, "gene editing")
    assert [h.get_attribute("data-pmid") for h in hits] == ["104"]
    # a shareable URL carries the filters, and reloading it searches again
    assert "language=spa" in browser.current_url
    browser.get(browser.current_url)
    WebDriverWait(browser, 20).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "li.hit")) == 1
    )
    # the mode and sort selectors reach the API and the shareable URL
    Select(browser.find_element(By.ID, "mode")).select_by_value("lexical")
    Select(browser.find_element(By.ID, "sort")).select_by_value("date")
    hits = _search(browser, "gene editing")
    assert "mode=lexical" in browser.current_url and "sort=date" in browser.current_url
    assert "lexical · newest first" in browser.find_element(By.ID, "count").text
    # a NOT is applied and said (the count line names what was excluded)
    hits = _search(browser, "gene editing NOT zebrafish")
    assert "excluding NOT zebrafish" in browser.find_element(By.ID, "count").text
    assert "103" not in [h.get_attribute("data-pmid") for h in hits]
    assert not browser.find_element(By.ID, "notes").is_displayed()
    # Google's -word is searched for: the page says so above the results, naming NOT
    _search(browser, "gene editing -zebrafish")
    notes = browser.find_element(By.ID, "notes")
    assert notes.is_displayed()
    assert notes.text == ("-zebrafish is searched for, not left out: a hyphen excludes nothing "
                          "here. To leave out the articles that mention zebrafish, write: "
                          "gene editing NOT zebrafish")
    _search(browser, "gene editing")  # the next search's own (none)
    assert not browser.find_element(By.ID, "notes").is_displayed()
    # a server-side validation error is shown, not swallowed
    browser.get(server + "/?q=gene+editing&since=2024-05-01&until=2024-01-01")
    WebDriverWait(browser, 20).until(lambda d: d.find_element(By.ID, "error").is_displayed())
    assert "since" in browser.find_element(By.ID, "error").text


def test_a_pmid_or_a_doi_in_the_search_box_shows_that_article(
    browser: Any, server: str
) -> None:
    # a PMID or a DOI alone is no search (the API refuses it): the page shows the article
    browser.get(server + "/")
    WebDriverWait(browser, 20).until(ec.element_to_be_clickable((By.ID, "go")))
    for typed in ("201", "PMID: 201", "10.1000/TEST.201", "https://doi.org/10.1000/test.201"):
        hits = _search(browser, typed)
        assert [h.get_attribute("data-pmid") for h in hits] == ["201"], typed
        card = hits[0]
        assert card.find_element(By.CSS_SELECTOR, ".title").text == ARTICLES[201]["title"]
        assert card.find_element(By.CSS_SELECTOR, ".authors").text == "Doe J, Test Consortium"
        assert "The query names this article (GET /articles/" in card.text
        assert browser.find_element(By.ID, "error").text == ""
        assert not browser.find_element(By.ID, "pager").is_displayed()
        assert not browser.find_element(By.ID, "export-csv").is_displayed()
    # its similar articles open as a result's do
    card.find_element(By.CSS_SELECTOR, ".similar-btn").click()
    WebDriverWait(browser, 20).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#similar-201 li.similar-hit"))
    # one the store lacks: the API's 404 is said
    browser.get(server + "/?q=10.1000/none")
    WebDriverWait(browser, 20).until(lambda d: d.find_element(By.ID, "error").is_displayed())
    assert "10.1000/none" in browser.find_element(By.ID, "error").text
    assert browser.find_elements(By.CSS_SELECTOR, "li.hit") == []
    # a search after it shows its list, scores and exports again
    hits = _search(browser, "malaria vaccine for children")
    assert len(hits) > 1 and browser.find_element(By.ID, "export-csv").is_displayed()


def test_the_page_waits_out_the_rate_limit(browser: Any, real: Settings) -> None:
    """A quick series of searches beyond the client's request rate: the page's own files
    take no token, and a search answered 429 is asked again after the server's Retry-After;
    the results show, not a "too many requests" error."""
    strict = real.replace(api_rate_per_second=1.0, api_rate_burst=4)
    with contextlib.contextmanager(_serve)(strict) as url:
        browser.get(url + "/")  # the page and its status: 2 of the 4 tokens
        WebDriverWait(browser, 20).until(ec.element_to_be_clickable((By.ID, "go")))
        for query in ("gene editing", "malaria vaccine", "sleep memory"):
            hits = _search(browser, query)
            assert hits, query
            assert not browser.find_element(By.ID, "error").is_displayed()
