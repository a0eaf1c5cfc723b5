"""Saved searches through ``litpulse alerts`` and the HTTP API, then a digest and the feed:
the CLI and an API token save searches, new articles are stored and indexed, ``alerts
run`` records the matches, ``/feeds/{id}.atom`` serves them, only the owner removes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import feedparser
import pytest
from sqlalchemy import insert

from litpulse.app.cli import main
from litpulse.core import db
from litpulse.core.schema import article_terms, articles
from litpulse.core.settings import Settings
from ranking.refresh import refresh_index
from tests.litpulse.app.apistore import unlimited_store
from tests.ranking.corpus import article_rows

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from litpulse.app.api import create_app  # noqa: E402
from litpulse.app.tokens import create_token  # noqa: E402

#: Stored after the searches are saved: two on malaria, one off topic.
NEW = {
    901: "Malaria vaccine booster doses protect young African children",
    902: "Seasonal malaria vaccination in children of the Sahel",
    903: "Knee osteoarthritis and running shoes",
}


@pytest.fixture
def store(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory,
          monkeypatch: pytest.MonkeyPatch) -> Settings:
    return unlimited_store(tmp_path, tmp_path_factory, monkeypatch)


@pytest.fixture
def client(store: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(store), raise_server_exceptions=False) as c:
        yield c


def _cli_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _store_new(settings: Settings) -> None:
    template = article_rows()[0]
    rows = [{**template, "pmid": pmid, "title": title, "abstract": title + ".",
             "doi": None, "is_retracted": False, "is_deleted": False, "deleted_at": None}
            for pmid, title in NEW.items()]
    terms = [{"pmid": pmid, "kind": "mesh", "term": "Humans", "major": False} for pmid in NEW]
    with db.connect(settings).begin() as conn:
        conn.execute(insert(articles), rows)
        conn.execute(insert(article_terms), terms)


def test_saved_searches_by_cli_and_api_then_digest_and_feed(
    store: Settings, client: TestClient, capsys: pytest.CaptureFixture[str]
) -> None:
    # the API: writes need a token, like POST /feedback
    body = {"name": "malaria kids", "query": "malaria vaccine in children", "min_score": 0.5,
            "mesh": ["Humans"]}
    assert client.post("/alerts", json=body).status_code == 403  # no token exists: read-only
    alice = create_token(store, "alice").token
    bob = create_token(store, "bob").token
    assert client.post("/alerts", json=body).status_code == 401
    assert client.post("/alerts", json={**body, "min_score": -1},
                       headers={"Authorization": f"Bearer {alice}"}).status_code == 422
    made = client.post("/alerts", json=body, headers={"Authorization": f"Bearer {alice}"})
    assert made.status_code == 201, made.text
    api_search = made.json()
    assert api_search["owner"] == "alice" and api_search["filters"]["mesh"] == ["Humans"]
    again = client.post("/alerts", json=body, headers={"Authorization": f"Bearer {alice}"})
    assert again.status_code == 400 and "exists already" in again.json()["detail"]

    # the CLI: same filters as `litpulse search`
    cli_search = _cli_json(capsys, "alerts", "add", "malaria vaccination", "--name", "malaria",
                           "--min-score", "0.5", "--language", "eng")
    assert cli_search["filters"]["language"] == "eng" and cli_search["owner"].startswith("cli:")
    listed = client.get("/alerts").json()
    assert [s["name"] for s in listed] == ["malaria kids", "malaria"]
    assert [s["name"] for s in _cli_json(capsys, "alerts", "list")] == ["malaria kids", "malaria"]

    # a night: new articles stored and indexed, then the digest
    _store_new(store)
    assert refresh_index(store).published
    report = _cli_json(capsys, "alerts", "run")
    assert report["matched"] > 0 and not report["failures"]
    for search in (api_search, cli_search):
        shown = client.get(f"/alerts/{search['id']}").json()
        pmids = {m["pmid"] for m in shown["recent_matches"]}
        assert pmids and pmids <= {901, 902}  # new and on topic; the old corpus is not new
        assert shown["matches"] == len(pmids)
        assert all(m["explanation"]["text"] for m in shown["recent_matches"])

        resp = client.get(search["feed"])
        assert resp.status_code == 200, resp.text
        assert resp.headers["content-type"].startswith("application/atom+xml")
        feed = feedparser.parse(resp.content)
        assert not feed.bozo and feed.version == "atom10"
        assert {int(e.link.rstrip("/").rsplit("/", 1)[1]) for e in feed.entries} == pmids
        assert feed.feed.links[0].href.endswith(search["feed"])
    assert _cli_json(capsys, "alerts", "run")["matched"] == 0  # nothing new since

    assert main(["alerts", "feed", "malaria"]) == 0
    assert feedparser.parse(capsys.readouterr().out).entries
    # pages (RFC 5005): one holds them all here; past it, an empty page that says where
    # they are; a page below 1 is refused
    assert main(["alerts", "feed", "malaria", "--page", "2"]) == 0
    beyond = feedparser.parse(capsys.readouterr().out)
    assert not beyond.entries and "No matches on page 2" in beyond.feed.subtitle
    assert {x.rel for x in beyond.feed.links} == {"self", "first", "previous"}
    resp = client.get(f"{api_search['feed']}?page=2")
    assert resp.status_code == 200 and not feedparser.parse(resp.content).entries
    assert client.get(f"{api_search['feed']}?page=0").status_code == 422
    with pytest.raises(SystemExit):
        main(["alerts", "feed", "malaria", "--page", "0"])
    capsys.readouterr()

    # only the owner removes over the API; the CLI (an admin) removes by name
    url = f"/alerts/{api_search['id']}"
    assert client.delete(url).status_code == 401
    assert client.delete(url, headers={"Authorization": f"Bearer {bob}"}).status_code == 403
    assert client.delete(url, headers={"Authorization": f"Bearer {alice}"}).status_code == 200
    assert client.get(api_search["feed"]).status_code == 404
    assert _cli_json(capsys, "alerts", "remove", "malaria")["id"] == cli_search["id"]
    assert client.get("/alerts").json() == []
    assert main(["alerts", "remove", "malaria"]) == 1  # unknown now


# ------------------------------------------------------------ review (rev-api): findings


def test_a_saved_search_with_control_characters_still_has_a_well_formed_feed(
    store: Settings, client: TestClient
) -> None:
    from lxml import etree

    token = create_token(store, "ana").token
    r = client.post(
        "/alerts",
        json={"name": "malaria\u0001kids", "query": "malaria \u001b[31m vaccine\u0008"},
        headers={"Authorization": f"Bearer {token}"},
    )
    if r.status_code in (400, 422):  # refusing such text is a fine answer too
        return
    assert r.status_code == 201, r.text
    feed = client.get(f"/feeds/{r.json()['id']}.atom")
    assert feed.status_code == 200
    etree.fromstring(feed.content)  # well-formed XML 1.0
    assert not feedparser.parse(feed.content).bozo


@pytest.mark.parametrize(
    "body",
    [
        {"name": "malaria\u0001kids", "query": "malaria vaccine"},
        {"name": "malaria kids", "query": "malaria \u001b[31m vaccine\u0008"},
        {"name": "malaria kids", "query": "malaria", "mesh": ["Humans\u0000"]},
        {"name": "malaria kids", "query": "malaria", "publication_type": ["Re\u009bview"]},
        {"name": "malaria kids", "query": "malaria", "language": "e\u007fng"},
    ],
)
def test_control_characters_in_a_saved_search_are_refused_with_400(
    store: Settings, client: TestClient, body: dict[str, Any]
) -> None:
    token = create_token(store, "ana").token
    r = client.post("/alerts", json=body, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 400, r.text
    assert "control characters" in r.json()["detail"]
    assert client.get("/alerts").json() == []
    # /search and /export answer the same filters 400, on SQLite and PostgreSQL alike
    for path in ("/search", "/export"):
        params = {"mesh": "a\x00", "language": "\x1b", "type": "\x00", "q": "mal\x07aria"}
        for key, value in params.items():
            got = client.get(path, params={"q": "malaria", key: value})
            assert got.status_code == 400, (path, key, got.text)


def test_a_saved_search_stored_before_the_rule_still_has_a_well_formed_feed(
    store: Settings, client: TestClient
) -> None:
    from lxml import etree

    from litpulse.core.schema import saved_searches
    from litpulse.core.timeutil import utcnow

    now = utcnow()
    with db.connect(store).begin() as conn:  # as POST /alerts stored it before the rule
        sid = conn.execute(
            insert(saved_searches).values(
                name="malaria\x01kids", query="malaria \x1b[31m vaccine\x08\ufffe",
                filters={}, owner="ana", created_at=now, watermark=now,
            )
        ).inserted_primary_key[0]
    feed = client.get(f"/feeds/{sid}.atom")
    assert feed.status_code == 200
    root = etree.fromstring(feed.content)  # well-formed XML 1.0
    ns = {"a": "http://www.w3.org/2005/Atom"}
    assert root.findtext("a:title", namespaces=ns) == "litpulse: malariakids"
    assert "malaria [31m vaccine" in root.findtext("a:subtitle", namespaces=ns)
    assert not feedparser.parse(feed.content).bozo



def test_concurrent_saves_of_one_name_are_never_500(store: Settings, client: TestClient) -> None:
    import threading
    from collections import Counter

    auth = {"Authorization": f"Bearer {create_token(store, 'alice').token}"}
    seen: Counter[int] = Counter()
    for trial in range(20):
        barrier = threading.Barrier(8)

        def post(name: str = f"race {trial}", barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            r = client.post("/alerts", json={"name": name, "query": "malaria"}, headers=auth)
            seen[r.status_code] += 1

        threads = [threading.Thread(target=post) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if seen[500]:
            break
    assert seen[500] == 0, dict(seen)
    assert set(seen) == {201, 400} and seen[201] == trial + 1, dict(seen)



def test_one_expert_keeps_at_most_the_configured_number_of_saved_searches(
    store: Settings, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``LITPULSE_ALERTS_PER_EXPERT`` bounds what one token's expert can make every
    nightly digest run: past it a save is refused (403, saying how to make room); a
    removal makes room; other experts and the CLI (an operator) are not held by it."""
    s = store.replace(alerts_per_expert=3)
    monkeypatch.setenv("LITPULSE_ALERTS_PER_EXPERT", "3")
    mallory = {"Authorization": f"Bearer {create_token(s, 'mallory').token}"}
    alice = {"Authorization": f"Bearer {create_token(s, 'alice').token}"}
    with TestClient(create_app(s), raise_server_exceptions=False) as c:
        codes = [c.post("/alerts", json={"name": f"spam {i}", "query": "malaria"},
                        headers=mallory).status_code for i in range(5)]  # fmt: skip
        assert codes == [201, 201, 201, 403, 403]
        refused = c.post("/alerts", json={"name": "spam 9", "query": "malaria"}, headers=mallory)
        assert "3 saved searches" in refused.json()["detail"]
        assert c.post("/alerts", json={"name": "alice 1", "query": "malaria"},
                      headers=alice).status_code == 201  # fmt: skip
        first = next(x for x in c.get("/alerts").json() if x["name"] == "spam 0")
        assert c.delete(f"/alerts/{first['id']}", headers=mallory).status_code == 200
        assert c.post("/alerts", json={"name": "spam 5", "query": "malaria"},
                      headers=mallory).status_code == 201  # fmt: skip
    for i in range(4):  # the operator's own searches
        assert main(["alerts", "add", "malaria", "--name", f"ops {i}"]) == 0
    capsys.readouterr()


def test_the_owner_edits_a_saved_search_in_place_over_the_api(
    store: Settings, client: TestClient
) -> None:
    """``PATCH /alerts/{id}``, as ``litpulse alerts edit``: its owner changes the query, the
    threshold or (all) the filters; the id, feed, owner and watermark stay; others are
    refused, and a change the rules refuse changes nothing."""
    alice = {"Authorization": f"Bearer {create_token(store, 'alice').token}"}
    bob = {"Authorization": f"Bearer {create_token(store, 'bob').token}"}
    made = client.post("/alerts", headers=alice, json={
        "name": "malaria", "query": "malaria vaccine", "min_score": 0.5, "mesh": ["Humans"],
    }).json()  # fmt: skip
    url = f"/alerts/{made['id']}"
    assert client.patch(url, json={"query": "x"}).status_code == 401
    assert client.patch(url, headers=bob, json={"query": "malaria"}).status_code == 403
    assert client.patch("/alerts/999999", headers=alice, json={"query": "x"}).status_code == 404
    nothing = client.patch(url, headers=alice, json={})
    assert nothing.status_code == 400 and "nothing to change" in nothing.json()["detail"]
    refused = client.patch(url, headers=alice, json={"query": "malaria[ti]"})
    assert refused.status_code == 400 and "field tags" in refused.json()["detail"]
    assert client.patch(url, headers=alice, json={"colour": "red"}).status_code == 422
    assert client.get(url).json()["query"] == "malaria vaccine"  # unchanged so far

    edited = client.patch(url, headers=alice, json={
        "query": '"malaria vaccine" NOT Sahel', "min_score": 0.7,
    })  # fmt: skip
    assert edited.status_code == 200, edited.text
    got = edited.json()
    assert (got["id"], got["name"], got["owner"]) == (made["id"], "malaria", "alice")
    assert got["query"] == '"malaria vaccine" NOT Sahel' and got["min_score"] == 0.7
    assert got["filters"]["mesh"] == ["Humans"]  # filters left out: kept
    cleared = client.patch(url, headers=alice, json={"filters": {"language": "English"}})
    assert cleared.json()["filters"]["mesh"] == []  # replaced whole
    assert cleared.json()["filters"]["language"] == "eng"
    assert cleared.json()["watermark"] == made["watermark"]
    assert client.get(f"/feeds/{made['id']}.atom").status_code == 200


def test_the_cli_sets_a_threshold_back_to_the_default(
    store: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    made = _cli_json(capsys, "alerts", "add", "malaria", "--name", "m", "--min-score", "0.9")
    assert made["min_score"] == 0.9
    kept = _cli_json(capsys, "alerts", "edit", "m", "--query", "malaria vaccine")
    assert kept["min_score"] == 0.9 and kept["edited_at"]  # a threshold left out stays
    back = _cli_json(capsys, "alerts", "edit", "m", "--default-min-score")
    assert back["min_score"] is None and back["query"] == "malaria vaccine"
    with pytest.raises(SystemExit):  # one or the other
        main(["alerts", "edit", "m", "--min-score", "0.5", "--default-min-score"])


def test_feed_links_start_with_the_public_url_whatever_host_was_asked(
    store: Settings,
) -> None:
    """Behind a proxy the request's Host header is whatever the client (or a cache's
    attacker) sent; with ``LITPULSE_PUBLIC_URL`` set, the feed's own links never follow it."""
    public = store.replace(public_url="https://lit.example.org/pulse/")
    token = create_token(public, "ana").token
    with TestClient(create_app(public), raise_server_exceptions=False) as c:
        made = c.post("/alerts", json={"name": "kids", "query": "malaria vaccine"},
                      headers={"Authorization": f"Bearer {token}"}).json()
        feed = c.get(f"/feeds/{made['id']}.atom", headers={"Host": "evil.example"})
    assert feed.status_code == 200, feed.text
    links = {link["rel"]: link["href"] for link in feedparser.parse(feed.content).feed.links}
    assert links["self"] == f"https://lit.example.org/pulse/feeds/{made['id']}.atom"
    assert b"evil.example" not in feed.content
    # without it, the links follow the address the request arrived at, as documented
    with TestClient(create_app(store), raise_server_exceptions=False) as c:
        plain = c.get(f"/feeds/{made['id']}.atom", headers={"Host": "lit.local:8000"})
    links = {link["rel"]: link["href"] for link in feedparser.parse(plain.content).feed.links}
    assert links["self"] == f"http://lit.local:8000/feeds/{made['id']}.atom"


def test_the_cli_feed_links_start_with_the_public_url_by_default(
    store: Settings, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    made = _cli_json(capsys, "alerts", "add", "malaria vaccine", "--name", "kids")
    monkeypatch.setenv("LITPULSE_PUBLIC_URL", "https://lit.example.org/pulse")
    assert main(["alerts", "feed", "kids"]) == 0
    links = {link["rel"]: link["href"]
             for link in feedparser.parse(capsys.readouterr().out).feed.links}
    assert links["self"] == f"https://lit.example.org/pulse/feeds/{made['id']}.atom"
    assert main(["alerts", "feed", "kids", "--base-url", "http://h:1/"]) == 0
    links = {link["rel"]: link["href"]
             for link in feedparser.parse(capsys.readouterr().out).feed.links}
    assert links["self"] == f"http://h:1/feeds/{made['id']}.atom"
