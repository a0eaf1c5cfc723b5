"""Training pairs mined from the literature ingested since the active model was trained.

Kinds of pair:

* ``title_abstract`` — an article's title → its abstract (new articles of the window);
* ``citation`` — a citing article's title → the text of an article it cites, both in
  the corpus (from the ``references`` table);
* ``feedback`` — an expert's query → an article marked relevant; the articles marked
  not relevant for the same query become its hard negatives (never an article experts
  disagree on for it, never a judgement sent with a revoked API token:
  :func:`retrain.feedback.trainable_feedback`; see *Expert feedback* below);
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

Held-out evaluation articles never train, under their own PMID or another: the *fresh*
set is the newest *new literature* of the window (articles first ingested after the
window start, by ``first_ingested_at``, which neither a revision nor a reinstatement
after a withdrawal moves; never an article an earlier round's window held, never the twin
of one, withdrawn or retracted since or not), and the *older* set is a stable hash bucket
of older articles (the same for every run and seed, so no model ever trains on it).
Nothing newer than the first fresh article trains in the round (the time split).
Exclusion is by text and DOI as well as by PMID: an article whose text (title and
abstract, or the abstract alone, compared with case and spacing ignored) or DOI (case
aside: :func:`litpulse.core.text.doi_key`) is a held-out article's, a duplicate PubMed
record, is neither a positive, an anchor, a citation, a hard negative, a feedback pair
nor a distractor. The *queries* set asks for the same held-out articles
with one query-like anchor each (:func:`retrain.anchors.heldout_anchor`), ranked among
full article texts.

What a round held back it does not lose: each mining records, keyed by its window end
(``checkpoints`` scope :data:`UNTRAINED_SCOPE`), the articles of its window it left
untrained (the fresh set, anything as new, their text twins) and the articles whose expert
judgements waited with them. The round that continues from that window end (its
``since``) trains those articles with its own new ones once they are older than its own
fresh set (they are never fresh again), and uses the judgements that waited. A window
end mined before such records were kept has none: its held-out articles are not carried,
and the round says so in its notes.

Expert feedback (:func:`_feedback_pairs`): each expert's latest judgement of an article
for a query counts. An article experts disagree on for a query (one says relevant,
another not) is *disputed*: neither a positive nor a hard negative of that query.
Judgements of an article held back from the round wait for a later one (counted as
*carried*); those of the older held-out set never train (counted as *held out*). One
expert's feedback pairs are at most :data:`EXPERT_SHARE` (a quarter) of the round's pairs,
keeping each expert's most recent judgements; the others are counted as *capped*, per
expert. A pair several experts agree on counts for each of them, and stays while one of
them has room.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
import logging
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import JSON, Engine, func, or_, select, type_coerce

from litpulse.core.db import connect, upsert
from litpulse.core.impact import (
    CITATION_COLUMNS,
    NEUTRAL_CITATION,
    age_days,
    recency_decay,
    row_citation_impact,
)
from litpulse.core.schema import articles, checkpoints, model_versions, references
from litpulse.core.settings import Settings
from litpulse.core.text import doi_key
from litpulse.core.timeutil import as_utc, iso, utcnow
from ranking.embed import query_text
from retrain.anchors import LexicalSearch, article_anchors, heldout_anchor, pick_negative
from retrain.evaluate import MIN_OLDER, EvalItem, HeldOut
from retrain.feedback import Judgement, trainable_feedback

__all__ = [
    "Pair", "PairSet", "ArticleRow", "mine_pairs", "doc_text", "article_weight",
    "prune_untrained",
]  # fmt: skip

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
#: Largest share of a round's training pairs one expert's feedback may make (the pairs
#: of their most recent judgements are kept): a quarter, so that even a tireless expert
#: (the API lets one send 120 judgements an hour, the CLI any number) steers a round
#: no more than its literature does.
EXPERT_SHARE = 0.25
#: ``checkpoints`` scope of what each mined window left untrained (key: its window end).
UNTRAINED_SCOPE = "retrain/untrained"
#: ``checkpoints`` scope and key of the narrowest older held-out bucket a round held out.
OLDER_SCOPE = "retrain/older"
OLDER_KEY = "buckets"


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
    #: When a record of the article was first stored (``articles.first_ingested_at``:
    #: neither a revision nor a reinstatement after a withdrawal moves it; ``None``:
    #: unknown, taken to be ``updated_at``).
    first_ingested_at: dt.datetime | None = None
    #: Its DOI as stored (:func:`article_keys` compares it as
    #: :func:`litpulse.core.text.doi_key` gives it).
    doi: str | None = None


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
    #: Judgements of articles held back from this round (fresh, newer than the fresh set,
    #: or sharing a held-out text): they wait for the round that trains those articles.
    feedback_carried: int = 0
    #: Judgements of articles of the older held-out set (or sharing its text): never
    #: trained on.
    feedback_held_out: int = 0
    #: Judgements of articles experts disagree on for the same query (neither a positive
    #: nor a hard negative of it).
    feedback_disputed: int = 0
    #: Judgements of articles retracted or deleted since they were judged (never trained).
    feedback_gone: int = 0
    #: Expert → feedback pairs left out over one expert's share (:data:`EXPERT_SHARE`).
    feedback_capped: dict[str, int] = field(default_factory=dict)
    #: Articles an earlier round held back that this round could train.
    carried: int = 0
    #: Articles of this round's window it held back, recorded for the next round.
    held_back: int = 0

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
            "feedback_carried": self.feedback_carried,
            "feedback_held_out": self.feedback_held_out,
            "feedback_disputed": self.feedback_disputed,
            "feedback_gone": self.feedback_gone,
            "feedback_capped": dict(self.feedback_capped),
            "carried": self.carried,
            "held_back": self.held_back,
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


def _first_stored() -> Any:
    """When a record of an article was first stored: ``first_ingested_at``, or for a row
    written without it (a bare tombstone lifted before the column) ``ingested_at``."""
    a = articles.c
    return func.coalesce(a.first_ingested_at, a.ingested_at).label("first_ingested_at")


def _load_articles(engine: Engine) -> list[ArticleRow]:
    """The live, unretracted articles with a text: what a round may train and judge."""
    a = articles.c
    stmt = (
        select(
            a.pmid, a.title, a.abstract, a.best_date, a.updated_at, _first_stored(), a.doi,
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
                first_ingested_at=r.first_ingested_at, doi=r.doi,
            )
            for r in conn.execute(stmt)
        ]


@dataclass(frozen=True, slots=True)
class _Gone:
    """A stored article no longer live (withdrawn, retracted) that still holds a text: an
    earlier round may have trained it, under this PMID, while it was."""

    pmid: int
    #: when a record of it was first stored (:func:`_first_stored`)
    first: dt.datetime
    #: :func:`article_keys`
    keys: tuple[bytes, ...]


def _load_gone(engine: Engine) -> list[_Gone]:
    """The identity keys (:func:`article_keys`) of every withdrawn or retracted article
    whose row keeps a text (a tombstone keeps its title and abstract): keys only, the
    texts are not kept."""
    a = articles.c
    stmt = select(a.pmid, a.title, a.abstract, a.doi, _first_stored(), a.updated_at).where(
        or_(a.is_deleted.is_(True), a.is_retracted.is_(True)),
        or_(a.abstract != "", a.title != ""),
    )
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=10_000).execute(stmt)
        return [
            _Gone(int(r.pmid), r.first_ingested_at or r.updated_at or utcnow(),
                  article_keys(r.title or "", r.abstract or "", r.doi))
            for r in result
        ]  # fmt: skip


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
    expert_share: float = EXPERT_SHARE,
    record: bool = True,
) -> PairSet:
    """Mine training pairs from articles updated after ``since`` (all when ``None``), and
    from the articles the round that ended at ``since`` held back.

    Args:
        settings: Database, seed and recency half-life.
        since: End of the active model's training window (its ``window_end``).
        max_pairs: Most new (non-replay, non-feedback) pairs to sample; ``None`` = all.
        replay_share: Share of the final set made of older pairs (0 disables replay).
        fresh_size: Most articles of the fresh held-out set.
        fresh_share: Most share of the window's new articles held out as fresh.
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
        expert_share: Largest share of the round's pairs one expert's feedback may make.
        record: Record what this window holds back, keyed by its window end, for the
            round that continues from it (``False``: write nothing).

    Returns:
        The sampled :class:`PairSet` (pairs in a seeded random order).
    """
    from litpulse.core.errors import ConfigError

    if not 0 <= replay_share < 1:
        raise ConfigError(f"`replay_share` must be within [0, 1), got {replay_share!r}")
    if not 0 < expert_share <= 1:
        raise ConfigError(f"`expert_share` must be within (0, 1], got {expert_share!r}")
    engine = engine or connect(settings)
    seed = settings.seed
    since = as_utc(since)
    today = (now or utcnow()).date()
    rows = _without_common_headings(_load_articles(engine))
    by_pmid = {r.pmid: r for r in rows}
    keys = {r.pmid: article_keys(r.title, r.abstract, r.doi) for r in rows}
    gone = _load_gone(engine)
    window = [r for r in rows if since is None or r.updated_at > since]
    older_rows = [r for r in rows if since is not None and r.updated_at <= since]
    notes: list[str] = []

    waiting = _load_untrained(engine, since) if since is not None else _Untrained()
    if waiting is None:
        notes.append(
            f"no record of what the window ending {iso(since)} held back (mined before "
            "such records were kept): its held-out articles are not carried"
        )
        waiting = _Untrained()
    carried_rows = [r for r in older_rows if r.pmid in waiting.articles]

    # the older bucket: the narrowest that holds MIN_OLDER judged articles, never wider
    # than the narrowest a round before held out (its model may have trained on the rest)
    narrowest = _older_buckets(engine, holdout_buckets)
    for buckets in _bucket_choices(holdout_buckets, narrowest):
        split = _hold_out(
            rows, window, older_rows, keys, gone, since=since, waiting=waiting.articles,
            seed=seed,
            fresh_size=fresh_size, fresh_share=fresh_share, older_size=older_size,
            distractors=distractors, holdout_buckets=buckets,
        )
        if len(split.heldout.older) >= MIN_OLDER:
            break
    if buckets < holdout_buckets:
        notes.append(
            f"older held-out set: 1 article in {buckets} (1 in {holdout_buckets} held too few)"
        )
    elif buckets > holdout_buckets:
        notes.append(
            f"older held-out set: 1 article in {buckets} (a round before held out only 1 in "
            f"{narrowest})"
        )
    pool = [*window, *carried_rows]
    new_rows = [r for r in pool if split.trainable(r)]
    replay_rows = [
        r for r in older_rows if r.pmid not in waiting.articles and split.trainable(r)
    ]
    held_back = frozenset(
        r.pmid for r in pool if not split.trainable(r) and not split.for_good(r.pmid)
    )

    def weight(r: ArticleRow) -> float:
        return article_weight(r, now=today, half_life_days=settings.recency_half_life_days)

    candidates = _new_pairs(
        engine, settings, new_rows, by_pmid, split, today, weight, anchors=anchors
    )
    available = Counter(p.kind for p in candidates)
    limit = len(candidates) if max_pairs is None else max_pairs
    chosen = _weighted_sample(candidates, [p.weight for p in candidates], limit, seed)

    # ---- expert feedback: every usable judgement, hard negatives attached, each expert
    # at most `expert_share` of the round's pairs
    fb = _feedback_pairs(engine, since, by_pmid, split, waiting.articles | waiting.feedback)
    available["feedback"] = len(fb.pairs)
    replay_candidates = _replay_candidates(replay_rows, weight) if replay_share > 0 else []
    ratio = replay_share / (1 - replay_share)

    def total(n_feedback: int) -> int:
        """The round's pairs with ``n_feedback`` feedback pairs (replay included)."""
        n = len(chosen) + n_feedback
        return n + min(round(ratio * n), len(replay_candidates))

    fb_kept, capped = _cap_experts(fb.pairs, total, expert_share)
    fb_pairs = [p.pair for p in fb_kept]
    if capped:
        notes.append(
            f"feedback capped at {expert_share:.0%} of the round's pairs per expert: "
            + ", ".join(f"{e} {n}" for e, n in capped.items()) + " pair(s) left out"
        )

    # ---- replay of older pairs against forgetting
    replay: list[Pair] = []
    if replay_share > 0 and replay_rows:
        n_replay = round(ratio * (len(chosen) + len(fb_pairs)))
        replay = _weighted_sample(
            replay_candidates, [p.weight for p in replay_candidates], n_replay, seed + 1
        )
        available["replay"] = len(replay_candidates)
    elif replay_share > 0 and since is not None:
        notes.append("no older articles to replay")

    pairs = chosen + fb_pairs + replay
    if lexical is not None:
        pairs = _with_negatives(
            pairs, lexical, by_pmid, split, depth=negative_depth, skip=negative_skip,
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
    window_end = max((r.updated_at for r in rows), default=None)
    if record and window_end is not None:
        _save_untrained(engine, window_end, _Untrained(held_back, fb.waiting))
    if record and (narrowest is None or buckets > narrowest):
        _save_older_buckets(engine, buckets)
    result = PairSet(
        pairs=tuple(pairs),
        counts=counts,
        available={k: int(available.get(k, 0)) for k in KINDS},
        window_start=since,
        window_end=window_end,
        new_articles=len(window),
        heldout=split.heldout,
        feedback_unpaired=fb.unpaired,
        feedback_experts=_experts_used(fb_kept),
        feedback_excluded=fb.excluded,
        feedback_carried=fb.carried,
        feedback_held_out=fb.held_out,
        feedback_disputed=fb.disputed,
        feedback_gone=fb.gone,
        feedback_capped=capped,
        carried=sum(1 for r in carried_rows if split.trainable(r)),
        held_back=len(held_back),
        hard_negatives=sum(1 for p in pairs if p.negative),
        notes=tuple(notes),
    )
    logger.info("mined %d pairs %s from %d new articles", len(pairs), counts, len(window))
    return result


def _replay_candidates(
    rows: Sequence[ArticleRow], weight: Callable[[ArticleRow], float]
) -> list[Pair]:
    """Title → abstract pairs of older articles, weighted (replay samples among them)."""
    return [
        Pair(r.title, r.abstract, "replay", r.pmid, weight=weight(r))
        for r in rows if r.title and r.abstract
    ]


def _date_key(r: ArticleRow) -> tuple[dt.date, int]:
    return (r.best_date or dt.date.min, r.pmid)


# ------------------------------------------------------------------ texts and held-out sets


def _normal(text: str) -> str:
    return " ".join(text.split()).casefold()


def text_keys(title: str, abstract: str) -> tuple[bytes, ...]:
    """What makes two articles the same text: their title and abstract together, and
    their abstract alone (when there is one), case and spacing ignored.

    Two PMIDs sharing either (a duplicate PubMed record, a reprint under another title)
    are one text to the held-out rules: a held-out answer is never trained under the
    other PMID.
    """
    abstract = _normal(abstract)
    whole = f"{_normal(title)}\n{abstract}"
    out = [hashlib.blake2b(b"t:" + whole.encode(), digest_size=12).digest()]
    if abstract:
        out.append(hashlib.blake2b(b"a:" + abstract.encode(), digest_size=12).digest())
    return tuple(out)


def article_keys(title: str, abstract: str, doi: str | None) -> tuple[bytes, ...]:
    """What makes two articles one to the held-out rules: :func:`text_keys`, and their DOI
    (as :func:`litpulse.core.text.doi_key` gives it, case aside) when they have one.

    Two PMIDs sharing a DOI are the same article recorded twice (a duplicate PubMed record
    whose abstract carries section labels, or a copyright line, the other's not): held
    out together, never trained the one beside the other.
    """
    key = doi_key(doi) if doi else None
    if key is None:
        return text_keys(title, abstract)
    return (*text_keys(title, abstract),
            hashlib.blake2b(b"d:" + key.encode(), digest_size=12).digest())  # fmt: skip


def _first_ingest(r: ArticleRow) -> dt.datetime:
    return r.first_ingested_at or r.updated_at


@dataclass(frozen=True)
class _Split:
    """The held-out sets of a mining round and what training must not see."""

    heldout: HeldOut
    #: PMIDs held out (fresh, and the whole older bucket)
    held: frozenset[int]
    #: the texts and DOIs of the held-out articles (:func:`article_keys`): no other PMID
    #: trains them
    held_keys: frozenset[bytes]
    #: the older bucket (held for good) and its texts and DOIs
    bucket: frozenset[int]
    bucket_keys: frozenset[bytes]
    #: the (date, pmid) of the first fresh article; training stays before it
    cutoff: tuple[dt.date, int] | None
    #: pmid → :func:`article_keys`
    keys: Mapping[int, tuple[bytes, ...]]

    def is_held(self, pmid: int) -> bool:
        """Held out, or sharing a held-out article's text or DOI."""
        return pmid in self.held or not self.held_keys.isdisjoint(self.keys.get(pmid, ()))

    def for_good(self, pmid: int) -> bool:
        """In the older held-out bucket, or sharing the text or DOI of an article in it."""
        return pmid in self.bucket or not self.bucket_keys.isdisjoint(self.keys.get(pmid, ()))

    def trainable(self, r: ArticleRow) -> bool:
        """Neither held out (by PMID or text) nor as new as the fresh held-out set."""
        return not self.is_held(r.pmid) and (self.cutoff is None or _date_key(r) < self.cutoff)


def _hold_out(
    rows: Sequence[ArticleRow],
    window: Sequence[ArticleRow],
    older_rows: Sequence[ArticleRow],
    keys: Mapping[int, tuple[bytes, ...]],
    gone: Sequence[_Gone],
    *,
    since: dt.datetime | None,
    waiting: AbstractSet[int],
    seed: int,
    fresh_size: int,
    fresh_share: float,
    older_size: int,
    distractors: int,
    holdout_buckets: int,
) -> _Split:
    """The fresh, older and distractor sets (see :func:`mine_pairs` for the sizes).

    They judge title → abstract, so only articles with both are among them; an article
    with a title alone in the older hash bucket is still held (never trained on).

    Fresh candidates are the window's *new literature*: first ingested after ``since``
    (a revision of an article an earlier window held is not, nor one withdrawn and
    reinstated since), not held back by the round before (``waiting``), and sharing no
    text or DOI (:func:`article_keys`) with an article ingested before, which an earlier
    round may have trained on: live or not (``gone``: withdrawn or retracted since, its
    text kept). Of twins among them, the newest stands for them.

    Older items share no text or DOI with an article outside the bucket that an earlier
    round may have trained before texts and DOIs were held: one stored by ``since`` (any,
    without one), live or not. A twin stored since is held with its item (never trained).
    """
    # ---- fresh held-out: the newest new literature of the window, never trained on
    earlier: set[bytes] = set()
    if since is not None:
        earlier.update(k for r in rows if _first_ingest(r) <= since for k in keys[r.pmid])
        earlier.update(k for g in gone if g.first <= since for k in g.keys)
    candidates = [
        r for r in window
        if r.title and r.abstract and (since is None or _first_ingest(r) > since)
        and r.pmid not in waiting and earlier.isdisjoint(keys[r.pmid])
    ]
    unique: list[ArticleRow] = []
    seen: set[bytes] = set()
    for r in sorted(candidates, key=_date_key, reverse=True):
        if seen.isdisjoint(keys[r.pmid]):
            unique.append(r)
        seen.update(keys[r.pmid])
    unique.reverse()
    n_fresh = min(fresh_size, int(len(unique) * fresh_share))
    fresh = unique[len(unique) - n_fresh :] if n_fresh else []
    cutoff = _date_key(fresh[0]) if fresh else None
    fresh_ids = {r.pmid for r in fresh}

    # ---- older held-out: a stable hash bucket, from before the window when there is one
    bucket = [
        r for r in rows
        if in_older_holdout(r.pmid, holdout_buckets) and r.pmid not in fresh_ids
    ]
    bucket_ids = frozenset(r.pmid for r in bucket)
    bucket_keys = frozenset(k for r in bucket for k in keys[r.pmid])
    # an older item shares no text or DOI with an article outside the bucket an earlier
    # round may have trained (before texts and DOIs were held): one stored by ``since``
    # (without one, any), live or withdrawn or retracted since
    def stored_before(first: dt.datetime) -> bool:
        return since is None or first <= since

    outside = {k for r in rows if r.pmid not in bucket_ids and stored_before(_first_ingest(r))
               for k in keys[r.pmid]}  # fmt: skip
    outside.update(k for g in gone if not in_older_holdout(g.pmid, holdout_buckets)
                   and stored_before(g.first) for k in g.keys)  # fmt: skip
    older_ids = {r.pmid for r in older_rows}
    judged = [
        r for r in bucket if r.title and r.abstract and outside.isdisjoint(keys[r.pmid])
    ]
    pool = [r for r in judged if r.pmid in older_ids] if since is not None else []
    if len(pool) < min(20, older_size):
        pool = [r for r in judged if cutoff is None or _date_key(r) < cutoff]
    pool.sort(key=lambda r: _hash_unit(r.pmid, seed, "older"))
    older: list[ArticleRow] = []
    seen = {k for r in fresh for k in keys[r.pmid]}
    for r in pool:  # one item per text
        if len(older) >= older_size:
            break
        if seen.isdisjoint(keys[r.pmid]):
            older.append(r)
            seen.update(keys[r.pmid])
    held = frozenset(fresh_ids | bucket_ids)
    held_keys = frozenset(bucket_keys | {k for r in fresh for k in keys[r.pmid]})

    # ---- distractors: other abstracts, fixed by seed
    others = [
        r for r in rows
        if r.pmid not in held and r.abstract and held_keys.isdisjoint(keys[r.pmid])
    ]
    others.sort(key=lambda r: _hash_unit(r.pmid, seed, "distractor"))
    heldout = HeldOut(
        fresh=tuple(EvalItem(r.pmid, r.title, r.abstract) for r in fresh),
        older=tuple(EvalItem(r.pmid, r.title, r.abstract) for r in older),
        distractors=tuple(EvalItem(r.pmid, r.title, r.abstract) for r in others[:distractors]),
        queries=tuple(_query_items([*fresh, *older], seed)),
    )
    return _Split(
        heldout=heldout, held=held, held_keys=held_keys, bucket=bucket_ids,
        bucket_keys=bucket_keys, cutoff=cutoff, keys=keys,
    )


# ------------------------------------------------------------------ what a window held back


@dataclass(frozen=True)
class _Untrained:
    """What a mined window held back: articles it left untrained (its fresh set, what
    was as new, their text twins), and articles whose expert judgements waited."""

    articles: frozenset[int] = frozenset()
    feedback: frozenset[int] = frozenset()


def _window_key(at: dt.datetime) -> str:
    return str(iso(at))


def _load_untrained(engine: Engine, since: dt.datetime | None) -> _Untrained | None:
    """What the window ending at ``since`` held back; ``None``: no record of it."""
    if since is None:
        return _Untrained()
    c = checkpoints.c
    stmt = select(c.value).where(c.scope == UNTRAINED_SCOPE, c.key == _window_key(since))
    with engine.connect() as conn:
        value = conn.execute(stmt).scalar()
    if not isinstance(value, dict):
        return None
    return _Untrained(
        frozenset(int(p) for p in value.get("articles") or ()),
        frozenset(int(p) for p in value.get("feedback") or ()),
    )


def _bucket_choices(requested: int, narrowest: int | None) -> list[int]:
    """The older buckets a round may hold out, narrowest first: 1 in ``requested``, then
    twice and four times as wide, none wider than 1 in ``narrowest`` (the narrowest a
    round before held out: its model trained on the rest; ``None``: no model has trained
    yet, any width is safe). A bucket is a subset of every wider one
    (:func:`in_older_holdout`), so what a round holds out was held out by every round
    before it."""
    choices = [b for b in (requested, requested // 2, requested // 4) if b >= 1]
    if narrowest is not None:
        choices = [b for b in choices if b >= narrowest] or [narrowest]
    return list(dict.fromkeys(choices))


def _older_buckets(engine: Engine, requested: int) -> int | None:
    """The narrowest older bucket any round of this store held out (1 in N: the largest
    N), or ``None`` when no round has trained: no record and no model version. A store
    whose rounds ran before the width was recorded held out 1 in ``requested``."""
    c = checkpoints.c
    stmt = select(c.value).where(c.scope == OLDER_SCOPE, c.key == OLDER_KEY)
    with engine.connect() as conn:
        value = conn.execute(stmt).scalar()
        if isinstance(value, dict) and isinstance(value.get("buckets"), int):
            return int(value["buckets"])
        trained = conn.execute(select(model_versions.c.id).limit(1)).first()
    return None if trained is None else requested


def _save_older_buckets(engine: Engine, buckets: int) -> None:
    """Record the older bucket this round held out, if narrower than the one recorded: a
    later round holds out no wider one, so it never judges what this round trained. (A
    round that trains nothing, a dry run, records a width too: harmless, the next round
    may still narrow.)"""
    c = checkpoints.c
    stmt = select(c.value).where(c.scope == OLDER_SCOPE, c.key == OLDER_KEY).with_for_update()
    with engine.begin() as conn:
        old = conn.execute(stmt).scalar()
        if isinstance(old, dict) and isinstance(old.get("buckets"), int):
            buckets = max(buckets, int(old["buckets"]))
            if buckets == old["buckets"]:
                return
        upsert(conn, checkpoints, [{"scope": OLDER_SCOPE, "key": OLDER_KEY, "status": "done",
                                    "value": {"buckets": buckets}, "updated_at": utcnow()}],
               keys=("scope", "key"))  # fmt: skip


def prune_untrained(engine: Engine) -> int:
    """Remove the records of what a window held back (:data:`UNTRAINED_SCOPE`) that no
    round will read: a round reads the record of the window end of the version it
    continues, so a record is kept while a version whose adapter is still there ends its
    window at its key (active, retired, a candidate, a rejected one not yet pruned: a
    person may promote it). Those of dry runs, of rounds that stopped after mining and of
    pruned rejected versions go. Call it under the ``retrain`` lease (no round mines
    meanwhile).

    Returns:
        The records removed.
    """
    from litpulse.core.states import ModelEvent

    c, mv = checkpoints.c, model_versions.c
    with engine.begin() as conn:
        kept = {
            _window_key(end)
            for end, events in conn.execute(select(mv.window_end, mv.events))
            if end is not None
            and not any(e.get("event") == ModelEvent.PRUNED for e in events or ())
        }
        keys = conn.execute(select(c.key).where(c.scope == UNTRAINED_SCOPE)).scalars().all()
        gone = [k for k in keys if k not in kept]
        for part in range(0, len(gone), 500):
            conn.execute(checkpoints.delete().where(
                c.scope == UNTRAINED_SCOPE, c.key.in_(gone[part : part + 500])
            ))  # fmt: skip
    if gone:
        logger.info("removed %d records of held-back articles no round will read", len(gone))
    return len(gone)


def _save_untrained(engine: Engine, window_end: dt.datetime, held: _Untrained) -> None:
    """Add what this mining holds back to the record of its window end.

    Records are merged: two minings of the same window end (a dry run, another seed or
    fresh size) hold back the union, so a round continuing from it may train an article
    twice but never loses one.
    """
    c = checkpoints.c
    key = _window_key(window_end)
    stmt = select(c.value).where(c.scope == UNTRAINED_SCOPE, c.key == key).with_for_update()
    with engine.begin() as conn:
        old = conn.execute(stmt).scalar()
        before = {
            name: {int(p) for p in (old.get(name) or ())} if isinstance(old, dict) else set()
            for name in ("articles", "feedback")
        }
        merged = {name: before[name] | set(getattr(held, name)) for name in before}
        if isinstance(old, dict) and merged == before:
            return
        value = {name: sorted(pmids) for name, pmids in merged.items()}
        upsert(conn, checkpoints, [{"scope": UNTRAINED_SCOPE, "key": key, "status": "done",
                                    "value": value, "updated_at": utcnow()}],
               keys=("scope", "key"))  # fmt: skip


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
    split: _Split,
    today: dt.date,
    weight: Callable[[ArticleRow], float],
    *,
    anchors: bool,
) -> list[Pair]:
    """Candidate pairs of the window: title → abstract, query-like anchors → article (an
    article's weight shared by its pairs), and citing title → cited text (a cited article
    that may train: not held out by PMID or text, older than the fresh set)."""
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
        if src is None or dst is None or not split.trainable(dst) or not src.title:
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
    split: _Split,
    *,
    depth: int,
    skip: int,
    seed: int,
) -> list[Pair]:
    """The pairs, each without a negative (but feedback) given one from the lexical ranking
    of its anchor.

    The negative is neither the pair's articles nor one that may not train (held out by
    PMID or text, or as new as the fresh set: held-out text is never trained on), and is
    formatted like the positive (abstract alone, or title and abstract, or a title alone:
    see :func:`_negative_allowed`).
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
            allowed=functools.partial(_negative_allowed, by_pmid, split, with_abstract),
        )
        if neg is None:
            out.append(p)
            continue
        n = by_pmid[neg]
        text = n.abstract if abstract_only else doc_text(n.title, n.abstract)
        out.append(dataclasses.replace(p, negative=text))
    return out


def _negative_allowed(
    by_pmid: Mapping[int, ArticleRow], split: _Split, with_abstract: bool, pmid: int
) -> bool:
    """Whether an article may be a hard negative: known, allowed to train (not held out by
    PMID or text, older than the fresh set), and shaped like the positive (an abstract
    where the positive has one, a title alone where it has none), so that the length of a
    text never tells a positive from a negative (measured on BioASQ: title-only negatives
    for positives with an abstract cost MRR@10 0.006)."""
    r = by_pmid.get(pmid)
    if r is None or not split.trainable(r):
        return False
    return bool(r.abstract) == with_abstract


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


# ------------------------------------------------------------------ expert feedback


@dataclass(frozen=True)
class _FeedbackPair:
    """A feedback pair and the judgements behind it."""

    pair: Pair
    #: the experts who marked its positive relevant for its query
    backers: tuple[str, ...]
    #: the newest of those judgements (time, id): which pairs a cap keeps
    recency: tuple[dt.datetime, int]
    #: (query, pmid) of its negative, and the experts who marked that not relevant
    negative: tuple[str, int] | None = None
    negative_backers: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Feedback:
    """What the round's feedback amounts to (see :func:`_feedback_pairs`)."""

    pairs: list[_FeedbackPair]
    unpaired: int = 0
    excluded: int = 0
    carried: int = 0
    held_out: int = 0
    disputed: int = 0
    #: articles whose judgements wait for a later round
    waiting: frozenset[int] = frozenset()
    #: judgements of articles retracted or deleted since (nothing to train)
    gone: int = 0


def _feedback_pairs(
    engine: Engine,
    since: dt.datetime | None,
    by_pmid: Mapping[int, ArticleRow],
    split: _Split,
    waiting: AbstractSet[int],
) -> _Feedback:
    """The round's feedback pairs, and what became of the judgements it did not use.

    A judgement is the round's when it came after ``since``, or when its article was held
    back by the round that ended there (``waiting``: it waited). It trains when its
    article may train in this round; a held-back article's judgements wait again
    (*carried*), the older held-out set's never train (*held out*). Queries are grouped as
    the model sees them (:func:`ranking.embed.query_text`: ``gout flares?`` and ``gout
    flares`` are one query), and an expert's latest judgement of an article for that
    query is the one that counts, as for the same text. An article experts disagree on
    for a query, over every standing judgement (this round's or not), is *disputed*:
    neither a positive nor a negative of that query. Judgements withheld because their
    API token was revoked (:func:`retrain.feedback.trainable_feedback`) are counted
    (``excluded``), for articles not held out.
    """
    def in_window(j: Judgement) -> bool:
        return since is None or j.created_at > since or j.pmid in waiting

    def in_round(j: Judgement) -> bool:
        return in_window(j) and j.pmid in by_pmid

    found = trainable_feedback(engine)
    standing: dict[tuple[str, int, str], bool] = {}
    latest: dict[tuple[str, int, str], Judgement] = {}
    gone_keys: set[tuple[str, int, str]] = set()
    for j in found.judgements:  # oldest first: the latest stays
        key = (query_text(j.query), j.pmid, j.expert)
        standing[key] = j.relevant
        if in_round(j):
            latest[key] = j
        elif in_window(j):  # its article retracted or deleted since: counted, not trained
            gone_keys.add(key)
    stances: dict[tuple[str, int], set[bool]] = defaultdict(set)
    for (query, pmid, _), relevant in standing.items():
        stances[(query, pmid)].add(relevant)
    excluded = sum(
        1 for w in found.withheld
        if in_round(w.judgement) and not split.is_held(w.judgement.pmid)
    )
    carried = held_out = disputed = 0
    waits: set[int] = set()
    positives: dict[str, list[int]] = defaultdict(list)
    negatives: dict[str, list[int]] = defaultdict(list)
    judges: dict[tuple[str, int, bool], list[Judgement]] = defaultdict(list)
    for (query, pmid, _), j in latest.items():
        if not split.trainable(by_pmid[pmid]):
            if split.for_good(pmid):
                held_out += 1
            else:
                carried += 1
                waits.add(pmid)
            continue
        if len(stances[(query, pmid)]) > 1:
            disputed += 1
            continue
        (positives if j.relevant else negatives)[query].append(pmid)
        judges[(query, pmid, j.relevant)].append(j)
    pairs: list[_FeedbackPair] = []
    unpaired = 0
    for query in sorted(set(positives) | set(negatives)):
        pos = list(dict.fromkeys(positives.get(query, [])))
        neg = list(dict.fromkeys(negatives.get(query, [])))
        if not pos:
            unpaired += len(neg)
            continue
        for i, pmid in enumerate(pos):
            r = by_pmid[pmid]
            n = by_pmid[neg[i % len(neg)]] if neg else None
            backers = judges[(query, pmid, True)]
            pairs.append(_FeedbackPair(
                Pair(query, doc_text(r.title, r.abstract), "feedback", pmid,
                     negative=doc_text(n.title, n.abstract) if n else None),
                backers=tuple(j.expert for j in backers),
                recency=max((j.created_at, j.id) for j in backers),
                negative=(query, n.pmid) if n else None,
                negative_backers=tuple(j.expert for j in judges[(query, n.pmid, False)])
                if n else (),
            ))  # fmt: skip
    return _Feedback(pairs, unpaired, excluded, carried, held_out, disputed, frozenset(waits),
                     gone=len(gone_keys))


def _cap_experts(
    pairs: Sequence[_FeedbackPair], total: Callable[[int], int], share: float
) -> tuple[list[_FeedbackPair], dict[str, int]]:
    """The feedback pairs within one expert's share of the round, and expert → pairs left
    out.

    ``total(n)`` is the round's pair count with ``n`` feedback pairs. Each expert may
    back at most ``floor(share × total)`` of the kept pairs, their most recent judgements
    first; a pair several experts back is kept while one of them has room (and counts for
    each that has). Leaving pairs out shrinks the round (and its replay), so the cap is
    worked out again until nothing more is left out.
    """
    kept = sorted(pairs, key=lambda p: p.recency, reverse=True)
    while True:
        cap = math.floor(share * total(len(kept)) + 1e-9)
        charged: Counter[str] = Counter()
        out: list[_FeedbackPair] = []
        for p in kept:
            room = [e for e in dict.fromkeys(p.backers) if charged[e] < cap]
            if room:
                charged.update(room)
                out.append(p)
        if len(out) == len(kept):
            break
        kept = out
    left = {id(p) for p in kept}
    capped = Counter(e for p in pairs if id(p) not in left for e in dict.fromkeys(p.backers))
    return [p for p in pairs if id(p) in left], dict(sorted(capped.items()))


def _experts_used(pairs: Iterable[_FeedbackPair]) -> dict[str, int]:
    """Expert → judgements of theirs the pairs use (positives, and each negative once)."""
    used: Counter[str] = Counter()
    negatives: set[tuple[str, int]] = set()
    for p in pairs:
        used.update(p.backers)
        if p.negative is not None and p.negative not in negatives:
            negatives.add(p.negative)
            used.update(p.negative_backers)
    return dict(sorted(used.items()))
