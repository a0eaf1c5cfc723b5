"""Training pairs mined from the literature ingested since the active model was trained.

Kinds of pair:

* ``title_abstract`` — an article's title → its abstract (new articles of the window);
* ``citation`` — a citing article's title → the text of an article it cites, both in
  the corpus (from the ``references`` table);
* ``feedback`` — an expert's query → an article marked relevant; the articles marked
  not relevant for the same query become its hard negatives (never a judgement sent with
  a revoked API token: :func:`retrain.feedback.trainable_feedback`);
* ``mesh``, ``keywords``, ``sentence`` — query-like anchors of an article (a few of its
  MeSH headings, a few of its author keywords, one sentence of its abstract) → the article
  (see :mod:`retrain.anchors`; headings on more than 15 % of the articles, check tags
  such as Humans or Female, are left out); an article's sampling weight is shared by its
  pairs;
* ``replay`` — title → abstract of *older* articles, a share of the set against
  forgetting.

Hard negatives: with a lexical ranker (``lexical=``, the published BM25 index's search,
passed in by the application floor), every pair without one gets a document BM25 ranks
high for its anchor that is neither its article nor held out (:func:`retrain.anchors.
pick_negative`); expert feedback keeps the experts' own negatives. Training masks a mined
negative the model scores nearly as high as the positive (:mod:`retrain.lora`).

Sampling is weighted by the same recency and citation impact as ranking
(:mod:`litpulse.core.impact`: recency ``0.5 ** (age / half_life)``; citation ranking's
value, :func:`~litpulse.core.impact.row_citation_impact` of the same columns ranking's
score reads: iCite's RCR, else its citations per year (or count ÷ years: a young or
provisional article without an RCR yet), else the in-corpus citations; scaled so that a
typical article weighs 1.0; missing means neutral) and deterministic by ``settings.seed``.

Held-out evaluation articles never become training pairs nor hard negatives: the *fresh*
set is the newest articles of the window (newer than anything trained on), and the *older*
set is a stable hash bucket of older articles (the same for every run and seed, so no model ever
trains on it). The *queries* set asks for the same held-out articles with one query-like
anchor each (:func:`retrain.anchors.heldout_anchor`), ranked among full article texts.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import JSON, Engine, or_, select, type_coerce

from litpulse.core.db import connect
from litpulse.core.impact import (
    CITATION_COLUMNS,
    NEUTRAL_CITATION,
    age_days,
    recency_decay,
    row_citation_impact,
)
from litpulse.core.schema import articles, references
from litpulse.core.settings import Settings
from litpulse.core.timeutil import as_utc, iso, utcnow
from ranking.embed import query_text
from retrain.anchors import LexicalSearch, article_anchors, heldout_anchor, pick_negative
from retrain.evaluate import EvalItem, HeldOut
from retrain.feedback import Judgement, trainable_feedback

__all__ = ["Pair", "PairSet", "ArticleRow", "mine_pairs", "doc_text", "article_weight"]

logger = logging.getLogger(__name__)

KINDS = ("title_abstract", "citation", "mesh", "keywords", "sentence", "feedback", "replay")
#: Kinds whose positive is an abstract alone (their hard negatives are abstracts too, so
#: that the format of a text never tells a positive from a negative).
ABSTRACT_ONLY = ("title_abstract", "replay")

#: One article in this many (by a hash of its pmid) belongs to the older held-out set.
HOLDOUT_BUCKETS = 20
#: What the held-out bucket's hash is salted with: a constant, not ``LITPULSE_SEED``, so
#: the older held-out set is the same whatever the seed (a new seed would otherwise move
#: it onto articles an earlier round trained on). 13, the seed's default: a store that
#: kept the default keeps the set it had.
HOLDOUT_SALT = 13
#: MeSH headings on more than this share of the articles are no anchor (check tags).
COMMON_HEADING_SHARE = 0.15
#: Fewest articles for heading shares to count.
MIN_HEADING_CORPUS = 200


@dataclass(frozen=True)
class Pair:
    """One training example: anchor → positive (optionally with a hard negative)."""

    anchor: str
    positive: str
    kind: str
    pmid: int
    negative: str | None = None
    weight: float = 1.0
    #: The positive's article when it is not ``pmid`` (citation pairs: the cited one).
    positive_pmid: int | None = None


@dataclass(frozen=True)
class ArticleRow:
    pmid: int
    title: str
    abstract: str
    best_date: dt.date | None
    updated_at: dt.datetime
    relative_citation_ratio: float | None
    cited_by_in_corpus: int
    mesh: tuple[str, ...] = ()
    keywords: tuple[str, ...] = ()
    #: iCite's citations per year and citation count (ranking's evidence when no RCR yet).
    citations_per_year: float | None = None
    citation_count: int | None = None


@dataclass(frozen=True)
class PairSet:
    """Sampled pairs, their counts by kind, the window they come from and the held-out sets."""

    pairs: tuple[Pair, ...]
    counts: dict[str, int]
    available: dict[str, int]
    window_start: dt.datetime | None
    window_end: dt.datetime | None
    new_articles: int
    heldout: HeldOut
    feedback_unpaired: int = 0
    hard_negatives: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)
    #: Expert → judgements of theirs the feedback pairs used (positives and negatives).
    feedback_experts: dict[str, int] = field(default_factory=dict)
    #: Judgements of the window left out because their API token was revoked.
    feedback_excluded: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A summary (not the pairs themselves)."""
        return {
            "pairs": len(self.pairs),
            "counts": dict(self.counts),
            "available": dict(self.available),
            "window_start": iso(self.window_start),
            "window_end": iso(self.window_end),
            "new_articles": self.new_articles,
            "hard_negatives": self.hard_negatives,
            "feedback_unpaired": self.feedback_unpaired,
            "feedback_experts": dict(self.feedback_experts),
            "feedback_excluded": self.feedback_excluded,
            "heldout": self.heldout.to_dict(),
            "notes": list(self.notes),
        }

    def replace(self, **changes: Any) -> PairSet:
        return dataclasses.replace(self, **changes)


def doc_text(title: str, abstract: str) -> str:
    """The document text of an article: the same text the index embeds."""
    from ranking.embed import article_text

    return article_text(title, abstract)


def article_weight(row: ArticleRow, *, now: dt.date, half_life_days: float) -> float:
    """Recency × citation impact, with ranking's formulas (:mod:`litpulse.core.impact`).

    Recency is :func:`~litpulse.core.impact.recency_decay` of the article's age (no date:
    1.0); the citation factor is ranking's citation value shifted to be 1.0 for a typical
    article (see :func:`_citation`).
    """
    recency = 1.0
    if row.best_date is not None:
        recency = recency_decay((now - row.best_date).days, half_life_days)
    return recency * _citation(row, now)


def _citation(row: ArticleRow, today: dt.date) -> float:
    """0.5 + ranking's citation value: 1.0 for a typical or unknown article.

    Ranking's value is :func:`~litpulse.core.impact.row_citation_impact` of the same
    columns (:data:`~litpulse.core.impact.CITATION_COLUMNS`) and age that ranking's
    ``citation_value`` reads. In [0.5, 1.5): it rises with what ranking adds for
    citations, so the sample leans towards cited articles, but an uncited one (iCite's
    RCR 0) still weighs half a typical article: new literature, which has had no time to
    be cited, must stay in the sample.
    """
    columns = {c: getattr(row, c) for c in CITATION_COLUMNS}
    impact = row_citation_impact(columns, age_days(row.best_date, today))
    return NEUTRAL_CITATION + impact.value


def _hash_unit(pmid: int, seed: int, salt: str = "") -> float:
    digest = hashlib.blake2b(f"{salt}:{seed}:{pmid}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def in_older_holdout(pmid: int, buckets: int = HOLDOUT_BUCKETS) -> bool:
    """Whether an article belongs to the older held-out bucket: the same for every run and
    every ``LITPULSE_SEED`` (:data:`HOLDOUT_SALT`), so no model ever trains on it."""
    return _hash_unit(pmid, HOLDOUT_SALT, "holdout") < 1.0 / buckets


def _load_articles(engine: Engine) -> list[ArticleRow]:
    a = articles.c
    stmt = (
        select(
            a.pmid, a.title, a.abstract, a.best_date, a.updated_at,
            a.relative_citation_ratio, a.cited_by_in_corpus, a.citations_per_year,
            a.citation_count, a.mesh,
            type_coerce(a.record["keywords"], JSON).label("keywords"),
        )
        .where(
            a.is_deleted.is_(False), a.is_retracted.is_(False),
            or_(a.abstract != "", a.title != ""),
        )
        .order_by(a.pmid)
    )
    with engine.connect() as conn:
        return [
            ArticleRow(
                pmid=int(r.pmid), title=r.title or "", abstract=r.abstract or "",
                best_date=r.best_date, updated_at=r.updated_at or utcnow(),
                relative_citation_ratio=r.relative_citation_ratio,
                cited_by_in_corpus=int(r.cited_by_in_corpus or 0),
                citations_per_year=r.citations_per_year, citation_count=r.citation_count,
                mesh=_texts(r.mesh, "descriptor"), keywords=_texts(r.keywords),
            )
            for r in conn.execute(stmt)
        ]


def _without_common_headings(
    rows: Sequence[ArticleRow], share: float = COMMON_HEADING_SHARE
) -> list[ArticleRow]:
    """The articles with the MeSH headings that more than ``share`` of them carry left out
    (check tags such as Humans, Female, Aged: they say nothing of what one article is about,
    so a MeSH anchor made of them has no right answer). Only a corpus of
    :data:`MIN_HEADING_CORPUS` articles or more has shares worth trusting."""
    if len(rows) < MIN_HEADING_CORPUS:
        return list(rows)
    df = Counter(h for r in rows for h in set(r.mesh))
    common = {h for h, n in df.items() if n > share * len(rows)}
    if not common:
        return list(rows)
    return [
        dataclasses.replace(r, mesh=tuple(h for h in r.mesh if h not in common)) for r in rows
    ]


def _texts(value: Any, key: str | None = None) -> tuple[str, ...]:
    """The non-empty strings of a JSON list (of strings, or of objects' ``key``)."""
    if not isinstance(value, list):
        return ()
    items = (v.get(key) if key and isinstance(v, dict) else v for v in value)
    return tuple(t for t in items if isinstance(t, str) and t.strip())


def _weighted_sample(
    items: Sequence[Any], weights: Sequence[float], k: int, seed: int
) -> list[Any]:
    """``k`` items without replacement, probability proportional to weight; all if fewer."""
    if k >= len(items):
        return list(items)
    if k <= 0:
        return []
    import numpy as np

    rng = np.random.default_rng(seed)
    w = np.asarray(weights, dtype=np.float64)
    w = np.where(np.isfinite(w) & (w > 0), w, 0.0) + 1e-12
    idx = rng.choice(len(items), size=k, replace=False, p=w / w.sum())
    return [items[i] for i in sorted(idx)]


def mine_pairs(
    settings: Settings,
    *,
    since: dt.datetime | None = None,
    max_pairs: int | None = None,
    replay_share: float = 0.2,
    fresh_size: int = 200,
    fresh_share: float = 0.2,
    older_size: int = 200,
    distractors: int = 400,
    holdout_buckets: int = HOLDOUT_BUCKETS,
    now: dt.datetime | None = None,
    engine: Engine | None = None,
    anchors: bool = True,
    lexical: LexicalSearch | None = None,
    negative_depth: int = 30,
    negative_skip: int = 2,
) -> PairSet:
    """Mine training pairs from articles updated after ``since`` (all when ``None``).

    Args:
        settings: Database, seed and recency half-life.
        since: End of the active model's training window.
        max_pairs: Most new (non-replay, non-feedback) pairs to sample; ``None`` = all.
        replay_share: Share of the final set made of older pairs (0 disables replay).
        fresh_size: Most articles of the fresh held-out set.
        fresh_share: Most share of the window's articles held out as fresh.
        older_size: Most articles of the older held-out set.
        distractors: Other abstracts retrieval has to rank the held-out ones against.
        holdout_buckets: One article in this many (a stable hash of its pmid) is
            held out as "older"; keep it the same between runs.
        now: Reference time for recency (default: now).
        engine: An engine to use instead of ``connect(settings)``.
        anchors: Add the query-like anchor pairs (``mesh``, ``keywords``, ``sentence``).
        lexical: A lexical ranker for hard negatives (``None``: in-batch negatives only).
        negative_depth: How deep in the lexical ranking a hard negative may be.
        negative_skip: Top lexical matches (besides the positive) never used as negatives.

    Returns:
        The sampled :class:`PairSet` (pairs in a seeded random order).
    """
    if not 0 <= replay_share < 1:
        from litpulse.core.errors import ConfigError

        raise ConfigError(f"`replay_share` must be within [0, 1), got {replay_share!r}")
    engine = engine or connect(settings)
    seed = settings.seed
    since = as_utc(since)
    today = (now or utcnow()).date()
    rows = _without_common_headings(_load_articles(engine))
    by_pmid = {r.pmid: r for r in rows}
    window = [r for r in rows if since is None or r.updated_at > since]
    older_rows = [r for r in rows if since is not None and r.updated_at <= since]
    notes: list[str] = []

    split = _hold_out(
        rows, window, older_rows, seed=seed, since_set=since is not None,
        fresh_size=fresh_size, fresh_share=fresh_share, older_size=older_size,
        distractors=distractors, holdout_buckets=holdout_buckets,
    )
    new_rows = [r for r in window if split.trainable(r)]
    replay_rows = [r for r in older_rows if split.trainable(r)]

    def weight(r: ArticleRow) -> float:
        return article_weight(r, now=today, half_life_days=settings.recency_half_life_days)

    candidates = _new_pairs(
        engine, settings, new_rows, by_pmid, split.held, today, weight, anchors=anchors
    )
    available = Counter(p.kind for p in candidates)
    limit = len(candidates) if max_pairs is None else max_pairs
    chosen = _weighted_sample(candidates, [p.weight for p in candidates], limit, seed)

    # ---- expert feedback: every usable judgement, hard negatives attached
    fb_pairs, unpaired, experts, excluded = _feedback_pairs(engine, since, by_pmid, split.held)
    available["feedback"] = len(fb_pairs)

    # ---- replay of older pairs against forgetting
    replay: list[Pair] = []
    if replay_share > 0 and replay_rows:
        n_replay = round(replay_share / (1 - replay_share) * (len(chosen) + len(fb_pairs)))
        replay, available["replay"] = _replay_pairs(replay_rows, weight, n_replay, seed + 1)
    elif replay_share > 0 and since is not None:
        notes.append("no older articles to replay")

    pairs = chosen + fb_pairs + replay
    if lexical is not None:
        pairs = _with_negatives(
            pairs, lexical, by_pmid, split.held, depth=negative_depth, skip=negative_skip,
            seed=seed,
        )
    else:
        notes.append("no lexical index: no hard negatives besides experts' own")
    import random

    random.Random(seed).shuffle(pairs)
    counts = {k: 0 for k in KINDS}
    counts.update(Counter(p.kind for p in pairs))
    if not split.heldout.fresh:
        notes.append("no fresh held-out set: too few new articles")
    result = PairSet(
        pairs=tuple(pairs),
        counts=counts,
        available={k: int(available.get(k, 0)) for k in KINDS},
        window_start=since,
        window_end=max((r.updated_at for r in rows), default=None),
        new_articles=len(window),
        heldout=split.heldout,
        feedback_unpaired=unpaired,
        feedback_experts=experts,
        feedback_excluded=excluded,
        hard_negatives=sum(1 for p in pairs if p.negative),
        notes=tuple(notes),
    )
    logger.info("mined %d pairs %s from %d new articles", len(pairs), counts, len(window))
    return result


def _replay_pairs(
    rows: Sequence[ArticleRow], weight: Callable[[ArticleRow], float], n: int, seed: int
) -> tuple[list[Pair], int]:
    """``n`` title → abstract pairs of older articles, by weight; and how many there were."""
    candidates = [
        Pair(r.title, r.abstract, "replay", r.pmid, weight=weight(r))
        for r in rows if r.title and r.abstract
    ]
    return _weighted_sample(candidates, [p.weight for p in candidates], n, seed), len(candidates)


def _date_key(r: ArticleRow) -> tuple[dt.date, int]:
    return (r.best_date or dt.date.min, r.pmid)


@dataclass(frozen=True)
class _Split:
    """The held-out sets of a mining round and what training must not see."""

    heldout: HeldOut
    #: PMIDs held out (fresh, and the whole older bucket)
    held: frozenset[int]
    #: the (date, pmid) of the first fresh article; training stays before it
    cutoff: tuple[dt.date, int] | None

    def trainable(self, r: ArticleRow) -> bool:
        """Neither held out nor as new as the fresh held-out set."""
        return r.pmid not in self.held and (self.cutoff is None or _date_key(r) < self.cutoff)


def _hold_out(
    rows: Sequence[ArticleRow],
    window: Sequence[ArticleRow],
    older_rows: Sequence[ArticleRow],
    *,
    seed: int,
    since_set: bool,
    fresh_size: int,
    fresh_share: float,
    older_size: int,
    distractors: int,
    holdout_buckets: int,
) -> _Split:
    """The fresh, older and distractor sets (see :func:`mine_pairs` for the sizes).

    They judge title → abstract, so only articles with both are among them; an article
    with a title alone in the older hash bucket is still held (never trained on).
    """
    # ---- fresh held-out: the newest articles of the window, never trained on
    window = [r for r in window if r.title and r.abstract]
    n_fresh = min(fresh_size, int(len(window) * fresh_share))
    ordered = sorted(window, key=_date_key)
    fresh = ordered[len(ordered) - n_fresh :] if n_fresh else []
    cutoff = _date_key(fresh[0]) if fresh else None
    fresh_ids = {r.pmid for r in fresh}

    # ---- older held-out: a stable hash bucket, from before the window when there is one
    bucket = [
        r for r in rows
        if in_older_holdout(r.pmid, holdout_buckets) and r.pmid not in fresh_ids
    ]
    older_ids = {r.pmid for r in older_rows}
    judged = [r for r in bucket if r.title and r.abstract]
    pool = [r for r in judged if r.pmid in older_ids] if since_set else []
    if len(pool) < min(20, older_size):
        pool = [r for r in judged if cutoff is None or _date_key(r) < cutoff]
    pool.sort(key=lambda r: _hash_unit(r.pmid, seed, "older"))
    older = pool[:older_size]
    held = frozenset(fresh_ids | {r.pmid for r in bucket})

    # ---- distractors: other abstracts, fixed by seed
    others = [r for r in rows if r.pmid not in held and r.abstract]
    others.sort(key=lambda r: _hash_unit(r.pmid, seed, "distractor"))
    heldout = HeldOut(
        fresh=tuple(EvalItem(r.pmid, r.title, r.abstract) for r in fresh),
        older=tuple(EvalItem(r.pmid, r.title, r.abstract) for r in older),
        distractors=tuple(EvalItem(r.pmid, r.title, r.abstract) for r in others[:distractors]),
        queries=tuple(_query_items([*fresh, *older], seed)),
    )
    return _Split(heldout=heldout, held=held, cutoff=cutoff)


def _query_items(rows: Sequence[ArticleRow], seed: int) -> Iterable[EvalItem]:
    """The query-like held-out items: one anchor of each article → its (remaining) text."""
    for r in rows:
        a = heldout_anchor(r.pmid, r.title, r.abstract, r.mesh, r.keywords, seed=seed)
        if a is not None:
            yield EvalItem(r.pmid, a.text, doc_text(a.title, a.abstract))


def _new_pairs(
    engine: Engine,
    settings: Settings,
    new_rows: Sequence[ArticleRow],
    by_pmid: Mapping[int, ArticleRow],
    held: frozenset[int],
    today: dt.date,
    weight: Callable[[ArticleRow], float],
    *,
    anchors: bool,
) -> list[Pair]:
    """Candidate pairs of the window: title → abstract, query-like anchors → article (an
    article's weight shared by its pairs), and citing title → cited text."""
    candidates: list[Pair] = []
    for r in new_rows:
        own = []
        if r.title and r.abstract:
            own.append(Pair(r.title, r.abstract, "title_abstract", r.pmid))
        if anchors:
            own += [
                Pair(a.text, doc_text(a.title, a.abstract), a.kind, r.pmid)
                for a in article_anchors(
                    r.pmid, r.title, r.abstract, r.mesh, r.keywords, seed=settings.seed
                )
            ]
        w = weight(r) / max(1, len(own))
        candidates.extend(dataclasses.replace(p, weight=w) for p in own)
    new_ids = {r.pmid for r in new_rows}
    for citing, cited in _references(engine, new_ids):
        src, dst = by_pmid.get(citing), by_pmid.get(cited)
        if src is None or dst is None or dst.pmid in held or not src.title:
            continue
        # recency of the citing article, impact of the cited one
        w = _recency(src, today, settings) * _citation(dst, today)
        candidates.append(
            Pair(src.title, doc_text(dst.title, dst.abstract), "citation", src.pmid, weight=w,
                 positive_pmid=dst.pmid)
        )
    return candidates


def _with_negatives(
    pairs: Sequence[Pair],
    lexical: LexicalSearch,
    by_pmid: Mapping[int, ArticleRow],
    held: AbstractSet[int],
    *,
    depth: int,
    skip: int,
    seed: int,
) -> list[Pair]:
    """The pairs, each without a negative (but feedback) given one from the lexical ranking
    of its anchor.

    The negative is neither the pair's articles nor a held-out one (held-out text is never
    trained on), and is formatted like the positive (abstract alone, or title and abstract,
    or a title alone: see :func:`_negative_allowed`).
    """
    ranked: dict[str, Sequence[tuple[int, float]]] = {}
    out: list[Pair] = []
    for p in pairs:
        if p.negative is not None or p.kind == "feedback":
            # an expert's query keeps the expert's own negatives: BM25 could pick an
            # article the same expert marked relevant for it
            out.append(p)
            continue
        if p.anchor not in ranked:
            ranked[p.anchor] = lexical(p.anchor, depth + skip + 2)
        exclude = {p.pmid, p.positive_pmid if p.positive_pmid is not None else p.pmid}
        abstract_only = p.kind in ABSTRACT_ONLY
        positive = by_pmid.get(p.positive_pmid if p.positive_pmid is not None else p.pmid)
        with_abstract = abstract_only or bool(positive is None or positive.abstract)
        neg = pick_negative(
            ranked[p.anchor], exclude, skip=skip, key=(seed, p.kind, p.pmid, p.anchor),
            allowed=functools.partial(_negative_allowed, by_pmid, held, with_abstract),
        )
        if neg is None:
            out.append(p)
            continue
        n = by_pmid[neg]
        text = n.abstract if abstract_only else doc_text(n.title, n.abstract)
        out.append(dataclasses.replace(p, negative=text))
    return out


def _negative_allowed(
    by_pmid: Mapping[int, ArticleRow], held: AbstractSet[int], with_abstract: bool, pmid: int
) -> bool:
    """Whether an article may be a hard negative: known, not held out, and shaped like the
    positive (an abstract where the positive has one, a title alone where it has none), so
    that the length of a text never tells a positive from a negative (measured on BioASQ:
    title-only negatives for positives with an abstract cost MRR@10 0.006)."""
    if pmid not in by_pmid or pmid in held:
        return False
    return bool(by_pmid[pmid].abstract) == with_abstract


def _recency(r: ArticleRow, today: dt.date, settings: Settings) -> float:
    if r.best_date is None:
        return 1.0
    return recency_decay((today - r.best_date).days, settings.recency_half_life_days)


def _references(engine: Engine, citing: Iterable[int]) -> list[tuple[int, int]]:
    ids = sorted(set(citing))
    out: list[tuple[int, int]] = []
    with engine.connect() as conn:
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            stmt = select(references.c.citing_pmid, references.c.cited_pmid).where(
                references.c.citing_pmid.in_(chunk)
            )
            out.extend((int(a), int(b)) for a, b in conn.execute(stmt))
    out.sort()
    return out


def _feedback_pairs(
    engine: Engine,
    since: dt.datetime | None,
    by_pmid: dict[int, ArticleRow],
    held: AbstractSet[int],
) -> tuple[list[Pair], int, dict[str, int], int]:
    """Feedback pairs, the count of unpaired negatives, expert → judgements used, and the
    count of the window's judgements (of trainable articles) withheld because their API
    token was revoked (:func:`retrain.feedback.trainable_feedback`).

    Queries are grouped as the model sees them (:func:`ranking.embed.query_text`: ``gout
    flares?`` and ``gout flares`` are one query), and an expert's latest judgement of an
    article for that query is the one that counts, as for the same text.
    """
    def usable(j: Judgement) -> bool:
        in_window = since is None or j.created_at > since
        return in_window and j.pmid in by_pmid and j.pmid not in held

    found = trainable_feedback(engine)
    latest: dict[tuple[str, int, str], bool] = {}  # (query, pmid, expert) → relevant
    for j in found.judgements:
        if usable(j):
            latest[(query_text(j.query), j.pmid, j.expert)] = j.relevant
    excluded = sum(1 for w in found.withheld if usable(w.judgement))
    positives: dict[str, list[int]] = defaultdict(list)
    negatives: dict[str, list[int]] = defaultdict(list)
    judges: dict[tuple[str, int, bool], list[str]] = defaultdict(list)
    for (query, pmid, user), relevant in latest.items():
        (positives if relevant else negatives)[query].append(pmid)
        judges[(query, pmid, relevant)].append(user)
    pairs: list[Pair] = []
    unpaired = 0
    used: Counter[str] = Counter()
    for query in sorted(set(positives) | set(negatives)):
        pos = [p for p in dict.fromkeys(positives.get(query, [])) if p not in negatives[query]]
        neg = list(dict.fromkeys(negatives.get(query, [])))
        if not pos:
            unpaired += len(neg)
            continue
        used_neg: set[int] = set()
        for i, pmid in enumerate(pos):
            r = by_pmid[pmid]
            n = by_pmid[neg[i % len(neg)]] if neg else None
            if n is not None:
                used_neg.add(n.pmid)
            used.update(judges[(query, pmid, True)])
            pairs.append(
                Pair(
                    query,
                    doc_text(r.title, r.abstract),
                    "feedback",
                    pmid,
                    negative=doc_text(n.title, n.abstract) if n else None,
                )
            )
        for pmid in used_neg:
            used.update(judges[(query, pmid, False)])
    return pairs, unpaired, dict(sorted(used.items())), excluded
