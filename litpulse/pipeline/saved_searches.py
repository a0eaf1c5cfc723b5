"""Saved searches: a query, its filters and a score threshold, digested after each publish.

A saved search is created by ``litpulse alerts add``, ``POST /alerts`` or the page, and
named uniquely (a name is never only digits, so ``alerts remove 3`` means the id). Its
``watermark`` starts at its creation: articles stored or revised after it are "new" for
the search; each digest (:mod:`litpulse.pipeline.digest`) moves it forward. It starts at
the newest write time of the articles committed when it is saved, not at the time of the
save: a batch being written meanwhile stamped its rows when it began (earlier) and commits
them after; they are new for it too.

Example:
    >>> s = add_search(settings, name="crispr", query="CRISPR off-target effects",
    ...                filters=SearchFilters(mesh=("Humans",)), min_score=0.6)  # doctest: +SKIP
    >>> [x.name for x in list_searches(settings)]  # doctest: +SKIP
    ['crispr']
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import unicodedata
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, Text, cast, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from litpulse.core import db
from litpulse.core.errors import ConfigError, NotFoundError
from litpulse.core.schema import articles, digest_matches, saved_searches
from litpulse.core.settings import Settings
from litpulse.core.text import checked_text, visible_name
from litpulse.core.timeutil import iso, utcnow
from litpulse.core.widths import ID_MAX
from ranking.search import SearchFilters, checked_query, query_notes

__all__ = [
    "CLI_OWNER_PREFIX",
    "SearchLimitError",
    "MAX_NAME_CHARS",
    "SavedSearch",
    "add_search",
    "get_search",
    "list_searches",
    "remove_search",
]

logger = logging.getLogger(__name__)

#: How a search saved from the CLI names its owner (``cli:<user>``); no API token's expert
#: may be named so (:func:`litpulse.app.tokens.create_token`).
CLI_OWNER_PREFIX = "cli:"
#: Longest name of a saved search, in characters.
MAX_NAME_CHARS = 255
#: The watermark of a search saved while no article is stored: every article is new.
_BEFORE_ALL = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True)
class SavedSearch:
    """One saved search.

    Attributes:
        id: Its id (feeds are ``/feeds/{id}.atom``).
        name: Its unique name.
        query: The free-text query.
        filters: Which articles may match (the filters of ``litpulse search``).
        min_score: Score a new article needs; ``None``: ``LITPULSE_DIGEST_MIN_SCORE``.
        owner: Who saved it (the API token's expert, or ``cli:<user>``).
        created_at: When it was saved.
        watermark: Articles stored or revised after this are new for it.
        last_digest_at: When a digest last looked at it.
        last_index_version: The index version that digest searched.
        edited_at: When it was last edited in place (:func:`edit_search`), or ``None``.
        matches: Matches recorded so far whose article is live (:func:`live_match`).
        problem: Why it cannot be searched, or ``None``: its stored filters or its query
            break a rule added since it was saved (``filters`` is then empty; the digest
            reports it instead of searching it). :func:`edit_search` corrects it in place.
    """

    id: int
    name: str
    query: str
    filters: SearchFilters
    min_score: float | None
    owner: str
    created_at: dt.datetime
    watermark: dt.datetime
    last_digest_at: dt.datetime | None = None
    last_index_version: str | None = None
    matches: int = 0
    problem: str | None = None
    edited_at: dt.datetime | None = None

    @property
    def remedy(self) -> str:
        """How to correct a search with a :attr:`problem` in place (its feed, matches and
        owed articles kept)."""
        parts = []
        if self.problem and "query is refused" in self.problem:
            parts.append("--query ...")
        if self.problem and "filters are refused" in self.problem:
            parts.append("--replace-filters [filter options]")
        return (f"correct it in place, keeping its feed and the articles it is owed: "
                f"`litpulse alerts edit {self.id} {' '.join(parts) or '--query ...'}`")

    def threshold(self, settings: Settings) -> float:
        """The score a new article needs for this search."""
        return settings.digest_min_score if self.min_score is None else self.min_score

    @property
    def feed_path(self) -> str:
        """Where the API serves its Atom feed."""
        return f"/feeds/{self.id}.atom"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "query": self.query,
            "filters": self.filters.to_dict(),
            "min_score": self.min_score,
            "owner": self.owner,
            "created_at": iso(self.created_at),
            "watermark": iso(self.watermark),
            "last_digest_at": iso(self.last_digest_at),
            "last_index_version": self.last_index_version,
            "edited_at": iso(self.edited_at),
            "matches": self.matches,
            "feed": self.feed_path,
            "problem": self.problem,
            "notes": list(self.notes),
        }

    @property
    def notes(self) -> tuple[str, ...]:
        """What its query does not do that its syntax may suggest, and what to write
        instead (:func:`ranking.search.query_notes`: its digests hold what it searches)."""
        return query_notes(self.query)


#: A saved search's row as :func:`_from_row` reads it: ``filters`` as its JSON text (both
#: stores alike), parsed there, so that a row SQLite holds no JSON in (a hand edit) is
#: that search's problem, not a decoding error while every row is fetched.
_ROW = (*(c for c in saved_searches.c if c.name != "filters"),
        cast(saved_searches.c.filters, Text).label("filters"))


def _from_row(row: Any, matches: int = 0) -> SavedSearch:
    problem, stored = None, row.filters
    try:
        # a hand-edited row may hold any JSON, or on SQLite any text (read as text,
        # _ROW): what is no object is this search's problem, never an error of every
        # listing and of the whole digest
        if isinstance(stored, str):
            try:
                stored = json.loads(stored)
            except ValueError:
                raise ConfigError(f"they are no JSON: {stored!r:.80}") from None
        if stored is not None and not isinstance(stored, dict):
            raise ConfigError(f"they are no JSON object of filters: {stored!r:.80}")
        filters = SearchFilters(**(stored or {}))
    except (ConfigError, TypeError, ValueError) as exc:  # saved before a rule it breaks
        filters, problem = SearchFilters(), f"its stored filters are refused: {exc}"
    try:  # its query too (PubMed's syntax, refused since: it was searched other than meant)
        checked_query(row.query)
    except ConfigError as exc:
        problem = f"its query is refused: {exc}" + (f"; {problem}" if problem else "")
    return SavedSearch(
        id=int(row.id),
        name=row.name,
        query=row.query,
        filters=filters,
        problem=problem,
        min_score=row.min_score,
        owner=row.owner,
        created_at=row.created_at,
        watermark=row.watermark,
        last_digest_at=row.last_digest_at,
        last_index_version=row.last_index_version,
        matches=matches,
        edited_at=row.edited_at,
    )


def _name_forms(name: str) -> list[str]:
    """The stored forms a name may have: as given, composed (NFC: how names are saved,
    :func:`_clean_name`) and decomposed (NFD: ``é`` as ``e`` and an accent, as macOS types
    it, in a name saved before names were composed)."""
    return sorted({name, unicodedata.normalize("NFC", name), unicodedata.normalize("NFD", name)})


def _check_name_free(conn: Any, name: str) -> None:
    """Refuse ``name`` when a saved search has it, in any of its forms (a ``ConfigError``)."""
    taken = conn.execute(
        select(saved_searches.c.id).where(saved_searches.c.name.in_(_name_forms(name)))
    ).first()
    if taken is not None:
        raise ConfigError(f"a saved search named {name!r} exists already (id {taken.id})")




def _clean_name(name: str) -> str:
    text = " ".join(checked_text(str(name or ""), "a saved search's name").split())
    text = visible_name(text, "a saved search's name")  # one name however it was typed
    if not text:
        raise ConfigError("a saved search needs a name")
    if len(text) > MAX_NAME_CHARS:
        raise ConfigError(f"a saved search's name must be at most {MAX_NAME_CHARS} characters")
    if text.isdigit():
        raise ConfigError(f"a saved search's name must not be only digits (ids are): {text!r}")
    return text


def _clean_query(query: str) -> str:
    return checked_query(query)  # the rules of a search's query


def _check_embeddable(settings: Settings, engine: Engine, query: str) -> None:
    """Refuse a query the model of the published index cannot embed (an encoder that
    overflows on some input: a search refuses it too), which each digest would fail."""
    from ranking.embed import encode_query
    from ranking.models import published_index_row

    row = published_index_row(engine)
    if row is not None:  # nothing published yet: nothing searches it before a model does
        encode_query(settings, row.model_version, query)


def _clean_min_score(value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"min_score must be a finite number, got {value!r}")
    if not 0.0 <= float(value) <= 1000.0:
        raise ConfigError(f"min_score must be from 0 to 1000, got {value!r}")
    return float(value)


class SearchLimitError(ConfigError):
    """The owner keeps as many saved searches as they may (``owner_limit``)."""


def add_search(
    settings: Settings,
    *,
    name: str,
    query: str,
    filters: SearchFilters | None = None,
    min_score: float | None = None,
    owner: str,
    owner_limit: int | None = None,
    engine: Engine | None = None,
) -> SavedSearch:
    """Save a search; articles stored from now on are its new ones.

    Args:
        owner_limit: Most saved searches ``owner`` may keep (``None``: no limit; the API
            passes ``LITPULSE_ALERTS_PER_EXPERT``). Counted in the saving transaction:
            saves at the same moment may pass it by the few that raced.

    Raises:
        ConfigError: An empty or over-long name or query, a name of digits only, a name
            or query holding a control character, a threshold outside 0..1000, or the
            name is taken (also when another save of that name wins at the same moment).
        SearchLimitError: ``owner`` keeps ``owner_limit`` saved searches already.
    """
    name = _clean_name(name)
    query = _clean_query(query)
    min_score = _clean_min_score(min_score)
    filters = filters or SearchFilters()
    engine = engine or db.connect(settings)
    _check_embeddable(settings, engine, query)
    try:
        with engine.begin() as conn:
            # the database's clock, as articles' first-stored times: the watermark compares
            # one clock's stamps (an app host running ahead would hide the first new ones)
            now = db.db_now(conn)
            _check_name_free(conn, name)
            if owner_limit is not None:
                kept = conn.execute(
                    select(func.count()).where(saved_searches.c.owner == owner)
                ).scalar_one()
                if kept >= owner_limit:
                    raise SearchLimitError(
                        f"{owner!r} keeps {kept} saved searches, the most one expert may "
                        f"(LITPULSE_ALERTS_PER_EXPERT): remove one to save another")
            # what is committed now is not new for it; what commits later is, whenever
            # its batch stamped it (one writer at a time: after everything committed)
            newest = conn.execute(select(func.max(articles.c.updated_at))).scalar()
            key = conn.execute(
                insert(saved_searches).values(
                    name=name,
                    query=query,
                    filters=filters.to_dict(),
                    min_score=min_score,
                    owner=owner,
                    created_at=now,
                    watermark=min(newest, now) if newest is not None else _BEFORE_ALL,
                )
            ).inserted_primary_key
            sid = int(key[0]) if key is not None else 0
            row = conn.execute(select(*_ROW).where(saved_searches.c.id == sid)).one()
    except IntegrityError:  # another save of this name committed since the check
        with engine.connect() as conn:
            _check_name_free(conn, name)
        raise
    logger.info("saved search %d %r by %s", sid, name, owner)
    return _from_row(row)


def live_match() -> Any:
    """The condition on ``digest_matches`` rows whose article is live: the matches a
    search lists, sends and counts. A match whose article PubMed deleted since stays
    recorded (pending where it was) and comes back with a record that restores it."""
    return (
        select(articles.c.pmid)
        .where(articles.c.pmid == digest_matches.c.pmid, articles.c.is_deleted.is_(False))
        .exists()
    )


def _match_counts(engine: Engine) -> dict[int, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(digest_matches.c.search_id, func.count())
            .where(live_match())
            .group_by(digest_matches.c.search_id)
        ).all()
    return {int(sid): int(n) for sid, n in rows}


def list_searches(settings: Settings, *, engine: Engine | None = None) -> list[SavedSearch]:
    """Every saved search, oldest first, with its number of matches."""
    engine = engine or db.connect(settings)
    counts = _match_counts(engine)
    with engine.connect() as conn:
        rows = conn.execute(select(*_ROW).order_by(saved_searches.c.id)).all()
    return [_from_row(r, counts.get(int(r.id), 0)) for r in rows]


def get_search(settings: Settings, ref: int | str, *, engine: Engine | None = None) -> SavedSearch:
    """The saved search with this id (an int, or text of digits) or name.

    A name is found in either Unicode form (composed, as names are saved, or decomposed,
    as macOS types it); where names saved before they were composed hold both forms of
    it, the one typed exactly is taken, and otherwise the lookup is refused as ambiguous.

    Raises:
        NotFoundError: No saved search has this id or name.
        ConfigError: Several saved searches have this name in forms other than the one
            typed (their ids are named: use one).
    """
    engine = engine or db.connect(settings)
    text = str(ref).strip()
    # an id is ASCII digits (``²`` is a digit int() refuses); a name never is one
    # (_clean_name), so digits past any row's id are no saved search's
    if text.isascii() and text.isdecimal() and len(text) < 18:
        if int(text) > ID_MAX:
            raise NotFoundError(f"no saved search has id or name {text!r}")
        cond = saved_searches.c.id == int(text)
    else:
        name = " ".join(text.split())
        cond = saved_searches.c.name.in_(_name_forms(name))
    with engine.connect() as conn:
        rows = conn.execute(select(*_ROW).where(cond).order_by(saved_searches.c.id)).all()
        exact = [r for r in rows if r.name == name] if len(rows) > 1 else rows
        if len(exact) > 1 or (not exact and rows):
            ids = ", ".join(str(r.id) for r in rows)
            raise ConfigError(f"saved searches {ids} have the name {text!r} in other Unicode "
                              "forms (saved before names were composed): name one by its id")
        if not exact:
            raise NotFoundError(f"no saved search has id or name {text!r}")
        row = exact[0]
        n = conn.execute(
            select(func.count()).where(digest_matches.c.search_id == row.id, live_match())
        ).scalar()
    return _from_row(row, int(n or 0))


class _Keep:
    """:func:`edit_search`'s "leave it as it is" for the threshold (``None`` resets it)."""

    def __repr__(self) -> str:
        return "KEEP"


#: Leave the threshold as it is (:func:`edit_search`).
KEEP: Any = _Keep()


def edit_search(
    settings: Settings,
    ref: int | str,
    *,
    query: str | None = None,
    filters: SearchFilters | None = None,
    min_score: float | None | _Keep = KEEP,
    owner: str | None = None,
    engine: Engine | None = None,
) -> SavedSearch:
    """Change a saved search in place: its query, its filters or its threshold (``None``
    for ``query`` or ``filters``, :data:`KEEP` for ``min_score``: it stays; ``min_score``
    ``None``: back to ``LITPULSE_DIGEST_MIN_SCORE``). It keeps its id (its feed's address),
    its matches and its watermark, so the articles stored while it could not be searched
    (a query a later rule refuses) are still new for it: the next digest matches them.
    A digest that read it before the edit records nothing for it (``edited_at``); the
    next one judges those articles by the edit. The log line names the old and new
    values and ``owner`` (or the CLI).

    Args:
        owner: The expert who edits (the API's token): the search must still be theirs,
            the one they checked, when it is written (else ``NotFoundError``).

    Raises:
        NotFoundError: No saved search has this id or name (or it was removed, or is no
            longer ``owner``'s, while it was edited).
        ConfigError: A query or threshold refused as by :func:`add_search`, or nothing to
            change.
    """
    values: dict[str, Any] = {}
    if query is not None:
        values["query"] = _clean_query(query)
    if filters is not None:
        values["filters"] = filters.to_dict()
    if not isinstance(min_score, _Keep):
        values["min_score"] = _clean_min_score(min_score)
    if not values:
        raise ConfigError("nothing to change: give a query, filters or a threshold")
    engine = engine or db.connect(settings)
    if "query" in values:
        _check_embeddable(settings, engine, values["query"])
    found = get_search(settings, ref, engine=engine)
    c = saved_searches.c
    where = [c.id == found.id, c.created_at == found.created_at]
    if owner is not None:
        where.append(c.owner == owner)
    with engine.begin() as conn:
        changed = conn.execute(
            update(saved_searches).where(*where).values(**values, edited_at=utcnow())
        ).rowcount
    if changed != 1:
        raise NotFoundError(f"saved search {ref} was removed (or is no longer yours) while "
                            "it was edited: nothing changed")
    before = found.to_dict()
    logger.info(
        "saved search %d %r edited by %s: %s", found.id, found.name, owner or "the CLI",
        "; ".join(f"{k} {before[k]!r} -> {values[k]!r}" for k in values),
    )
    return get_search(settings, found.id, engine=engine)


def remove_search(
    settings: Settings, ref: int | str, *, engine: Engine | None = None
) -> SavedSearch:
    """Delete a saved search and its matches; returns what was deleted.

    Raises:
        NotFoundError: No saved search has this id or name.
    """
    engine = engine or db.connect(settings)
    found = get_search(settings, ref, engine=engine)
    with engine.begin() as conn:
        # the search first: a digest recording its matches holds its row (see
        # litpulse.pipeline.digest), so they are committed, and deleted here, before it goes
        conn.execute(delete(saved_searches).where(saved_searches.c.id == found.id))
        conn.execute(delete(digest_matches).where(digest_matches.c.search_id == found.id))
    logger.info("removed saved search %d %r", found.id, found.name)
    return found
