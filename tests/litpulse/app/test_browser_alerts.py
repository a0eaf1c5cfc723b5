"""The page's saved searches in headless Chromium: a search saved on the page, a night
(new article stored and indexed, digest), then its feed linked from the page.

Uses the fixtures of :mod:`tests.litpulse.app.test_browser` (skipped without Chromium).
"""

from __future__ import annotations

from typing import Any

import feedparser
import pytest
from sqlalchemy import insert

from litpulse.core import db
from litpulse.core.schema import articles
from litpulse.core.settings import Settings
from litpulse.pipeline.digest import run_digest
from litpulse.pipeline.saved_searches import add_search, get_search, remove_search
from ranking.refresh import refresh_index
from tests.litpulse.app.test_browser import (  # noqa: F401 - fixtures
    By,
    WebDriverWait,
    browser,
    fetch,
    real,
    server,
    token,
)
from tests.ranking.corpus import article_rows

pytestmark = pytest.mark.browser

TITLE = "Malaria vaccine booster doses protect young African children"


def test_a_search_saved_on_the_page_has_a_feed_after_the_digest(
    browser: Any, server: str, real: Settings, token: str,  # noqa: F811 - fixtures
) -> None:
    browser.get(server + "/")
    WebDriverWait(browser, 20).until(lambda d: "articles" in d.find_element(By.ID, "status").text)
    browser.execute_script("localStorage.setItem('litpulse.token', arguments[0])", token)
    browser.find_element(By.ID, "q").send_keys("malaria vaccine for children")
    browser.find_element(By.ID, "save-min-score").send_keys("0.5")
    browser.find_element(By.ID, "save-search").click()
    prompt = WebDriverWait(browser, 10).until(lambda d: d.switch_to.alert)
    prompt.send_keys("page malaria")
    prompt.accept()
    WebDriverWait(browser, 10).until(
        lambda d: "page malaria" in d.find_element(By.ID, "saved-list").text
    )
    saved = get_search(real, "page malaria")
    assert saved.owner == "browser-test" and saved.min_score == 0.5
    assert saved.query == "malaria vaccine for children"

    # the night: a new article on the topic, the index refresh, the digest
    row = {**article_rows()[0], "pmid": 911, "title": TITLE, "abstract": TITLE + ".",
           "doi": None, "is_retracted": False, "is_deleted": False, "deleted_at": None}
    with db.connect(real).begin() as conn:
        conn.execute(insert(articles), [row])
    refresh_index(real)
    assert run_digest(real).matched == 1

    browser.get(server + "/")
    WebDriverWait(browser, 20).until(
        lambda d: "1 match)" in d.find_element(By.ID, "saved-list").text
    )
    link = browser.find_element(By.CSS_SELECTOR, f"#saved-list li[data-id='{saved.id}'] a.feed")
    feed = feedparser.parse(fetch(link.get_attribute("href")))
    assert not feed.bozo
    assert [e.title for e in feed.entries] == [TITLE]


def test_the_saved_list_says_what_a_query_does_not_do(
    browser: Any, server: str, real: Settings,  # noqa: F811 - fixtures
) -> None:
    """A search saved (by the API, the CLI) with Google's -word: its digests hold the
    articles of the word, and the page's list says so under it, with the query to write."""
    saved = add_search(real, name="minus word", query="malaria vaccine -children",
                       owner="browser-test")  # fmt: skip
    try:
        browser.get(server + "/")
        item = f"#saved-list li[data-id='{saved.id}']"
        WebDriverWait(browser, 20).until(lambda d: d.find_elements(By.CSS_SELECTOR, item))
        notes = browser.find_elements(By.CSS_SELECTOR, f"{item} .saved-note")
        assert [n.text for n in notes] == list(saved.notes)
        assert notes[0].text.endswith("write: malaria vaccine NOT children")
    finally:
        remove_search(real, saved.id)
