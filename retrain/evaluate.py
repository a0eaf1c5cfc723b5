"""Time-split evaluation of encoders and the promotion gate.

Two held-out sets, neither ever trained on: *fresh* (the newest articles, newer than
anything the candidate saw) and *older* (a stable random sample of older articles). A
query is an article's title; its one relevant document is the article's abstract, ranked
against the set's own abstracts plus a fixed sample of distractor abstracts. Metrics at
10: recall, MRR and nDCG.

A third set, *queries*, asks for the same held-out articles the way researchers do: one
query-like anchor each (a few MeSH headings or keywords, or a sentence of the abstract,
see :mod:`retrain.anchors`), its relevant document the article's full text (without that
sentence), ranked against the distractors' full texts.

The gate promotes a candidate only when it beats the active model on fresh recall@10 by
``settings.gate_fresh_margin``, loses at most ``settings.gate_older_tolerance`` on
older recall@10, *and* loses at most ``settings.gate_query_tolerance`` (default: nothing)
on the queries set's recall@10 and MRR@10; every check is listed as a reason.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from litpulse.core.settings import Settings
from ranking.embed import query_text

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "EvalItem",
    "HeldOut",
    "GateDecision",
    "retrieval_metrics",
    "evaluate_encoder",
    "encoder_embed",
    "gate",
    "query_check",
    "write_report",
]

logger = logging.getLogger(__name__)

K = 10
SETS = ("fresh", "older")


@dataclass(frozen=True)
class EvalItem:
    """One held-out article: its query (title) and relevant document (abstract)."""

    pmid: int
    query: str
    doc: str


@dataclass(frozen=True)
class HeldOut:
    """The fresh and older held-out sets, the shared distractor documents (query: title,
    doc: abstract), and the query-like set (query: an anchor, doc: the article's text)."""

    fresh: tuple[EvalItem, ...] = ()
    older: tuple[EvalItem, ...] = ()
    distractors: tuple[EvalItem, ...] = ()
    queries: tuple[EvalItem, ...] = ()

    def pmids(self) -> set[int]:
        return {i.pmid for i in (*self.fresh, *self.older)}

    def texts(self) -> int:
        """Texts one evaluation embeds: every query and document, distractors once."""
        return 2 * (len(self.fresh) + len(self.older)) + len(self.distractors)

    def to_dict(self) -> dict[str, Any]:
        return {
            "fresh": len(self.fresh),
            "older": len(self.older),
            "distractors": len(self.distractors),
            "queries": len(self.queries),
        }


@dataclass(frozen=True)
class GateDecision:
    """Whether a candidate may be promoted, and why."""

    passed: bool
    reasons: tuple[str, ...]
    fresh_gain: float
    older_change: float

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["reasons"] = list(self.reasons)
        return d


def retrieval_metrics(
    queries: np.ndarray, docs: np.ndarray, relevant: Sequence[int], k: int = K
) -> dict[str, float]:
    """Recall, MRR and nDCG at ``k`` for one relevant document per query.

    Args:
        queries: ``(n, d)`` L2-normalised query vectors.
        docs: ``(m, d)`` L2-normalised document vectors.
        relevant: For each query, the row of its relevant document in ``docs``.
    """
    import numpy as np

    if len(relevant) == 0:
        return {f"recall@{k}": 0.0, f"mrr@{k}": 0.0, f"ndcg@{k}": 0.0, "queries": 0}
    scores = queries @ docs.T
    rel = np.asarray(relevant)
    target = scores[np.arange(len(rel)), rel]
    # rank = 1 + documents scoring higher + half the others scoring the same (the mean rank
    # among ties: an encoder whose vectors collapsed ranks nothing first); a score that is
    # not a number (a diverged model) ranks last
    higher = (scores > target[:, None]).sum(axis=1)
    tied = (scores == target[:, None]).sum(axis=1) - 1
    ranks = np.where(np.isfinite(target), 1 + higher + tied / 2, max(len(docs), k + 1))
    hit = ranks <= k
    recall = float(hit.mean())
    mrr = float(np.where(hit, 1.0 / ranks, 0.0).mean())
    ndcg = float(np.where(hit, 1.0 / np.log2(ranks + 1), 0.0).mean())
    return {
        f"recall@{k}": round(recall, 6),
        f"mrr@{k}": round(mrr, 6),
        f"ndcg@{k}": round(ndcg, 6),
        "queries": len(rel),
    }


Embed = Callable[[Sequence[str]], "np.ndarray"]


def encoder_embed(encoder: Any, batch_size: int = 32) -> Embed:
    """An embedding function from anything with a SentenceTransformer ``encode``."""
    import numpy as np

    def embed(texts: Sequence[str]) -> np.ndarray:
        vecs = encoder.encode(
            list(texts), batch_size=batch_size, normalize_embeddings=True,
            convert_to_numpy=True, show_progress_bar=False,
        )
        return np.asarray(vecs, dtype=np.float32)

    return embed


def evaluate_encoder(
    embed: Embed, heldout: HeldOut, *, k: int = K
) -> dict[str, dict[str, float]]:
    """Metrics of one model on both held-out sets.

    Args:
        embed: Texts → L2-normalised float32 ``(n, d)`` vectors (e.g.
            ``lambda t: ranking.embed.embed_texts(encoder, t, settings)``, or
            :func:`encoder_embed`).
        heldout: The held-out sets.
        k: Cut-off of the metrics.
    """
    import numpy as np

    def run(texts: list[str]) -> np.ndarray:
        return np.asarray(embed(texts), dtype=np.float32) if texts else np.zeros((0, 1))

    distract = run([d.doc for d in heldout.distractors])
    out: dict[str, dict[str, float]] = {}
    for name in SETS:
        items: tuple[EvalItem, ...] = getattr(heldout, name)
        if not items:
            out[name] = retrieval_metrics(np.zeros((0, 1)), np.zeros((0, 1)), [], k)
            continue
        q = run([query_text(i.query) for i in items])
        d = run([i.doc for i in items])
        docs = np.vstack([d, distract]) if len(distract) else d
        out[name] = retrieval_metrics(q, docs, list(range(len(items))), k)
    if heldout.queries:
        out["queries"] = _query_metrics(run, heldout, k)
    return out


def _query_metrics(
    run: Callable[[list[str]], np.ndarray], heldout: HeldOut, k: int
) -> dict[str, float]:
    """Metrics of the query-like set: anchors against full article texts."""
    import numpy as np

    from ranking.embed import article_text

    items = heldout.queries
    q = run([query_text(i.query) for i in items])
    docs = run([i.doc for i in items] + [article_text(d.query, d.doc)
                                         for d in heldout.distractors])
    return retrieval_metrics(q, np.asarray(docs), list(range(len(items))), k)


#: Fewest fresh held-out articles the gate judges a candidate on.
MIN_FRESH = 10
#: Fewest older held-out articles the gate judges the effect on older literature on
#: (an empty set passed the "older kept" check on 0.000 vs 0.000).
MIN_OLDER = 10


#: How far two metrics rounded to 6 digits (:func:`retrieval_metrics`) may put a loss off:
#: one whole item lost must never read as less than :func:`one_item`.
ROUNDING = 1e-6


def one_item(n: int) -> float:
    """The most one of ``n`` held-out items moves their mean recall@k or MRR@k (from 1 to
    0): a loss below it one item could make alone, so the gate takes it for noise, not
    for forgetting (70 query-like items: an MRR loss under 0.014; the tolerances of the
    settings still allow more where they are larger)."""
    return 1.0 / n if n > 0 else 0.0


def gate(
    settings: Settings,
    candidate: Mapping[str, Mapping[str, float]],
    active: Mapping[str, Mapping[str, float]],
    *,
    k: int = K,
) -> GateDecision:
    """The promotion gate: fresh gain ≥ margin on at least :data:`MIN_FRESH` fresh held-out
    articles, and older loss ≤ tolerance (or under :func:`one_item`'s worth) on at least
    :data:`MIN_OLDER` older ones (recall@k), and :func:`query_check`."""
    metric = f"recall@{k}"
    reasons: list[str] = []
    c_f, a_f = float(candidate["fresh"][metric]), float(active["fresh"][metric])
    c_o, a_o = float(candidate["older"][metric]), float(active["older"][metric])
    fresh_gain, older_change = c_f - a_f, c_o - a_o
    ok = True
    n_fresh = int(candidate["fresh"].get("queries", MIN_FRESH))
    if n_fresh < MIN_FRESH:
        ok = False
        reasons.append(
            f"{n_fresh} fresh held-out article(s), fewer than {MIN_FRESH}: too few to show the "
            "candidate learned (one lucky hit would decide)"
        )
    elif fresh_gain >= settings.gate_fresh_margin - 1e-12:  # a gain of exactly the margin
        reasons.append(
            f"fresh {metric} {c_f:.3f} vs active {a_f:.3f}: +{fresh_gain:.3f} "
            f">= margin {settings.gate_fresh_margin:.3f}"
        )
    else:
        ok = False
        reasons.append(
            f"fresh {metric} {c_f:.3f} vs active {a_f:.3f}: {fresh_gain:+.3f} "
            f"< margin {settings.gate_fresh_margin:.3f}"
        )
    n_older = int(candidate["older"].get("queries", MIN_OLDER))
    if n_older < MIN_OLDER:
        ok = False
        reasons.append(
            f"{n_older} older held-out article(s), fewer than {MIN_OLDER}: the candidate's "
            "effect on older literature is not measured"
        )
    else:
        kept, reason = _loss(f"older {metric}", c_o, a_o, settings.gate_older_tolerance,
                             n_older, "article")  # fmt: skip
        ok = ok and kept
        reasons.append(reason)
    query_ok, query_reasons = query_check(settings, candidate, active, k=k)
    return GateDecision(
        ok and query_ok, (*reasons, *query_reasons), round(fresh_gain, 6), round(older_change, 6)
    )


def _loss(
    label: str, candidate: float, active: float, tolerance: float, n: int, item: str
) -> tuple[bool, str]:
    """Whether a candidate's ``candidate`` against the active model's ``active`` (a mean over
    ``n`` held-out items) loses no more than ``tolerance``, or less than one item's worth
    (:func:`one_item`); and the reason, as the gate reports it."""
    change = candidate - active
    head = f"{label} {candidate:.3f} vs active {active:.3f}: {change:+.3f}"
    if -change <= tolerance + 1e-12:
        return True, f"{head} within tolerance {tolerance:.3f}"
    if -change < one_item(n) - ROUNDING:
        return True, f"{head} less than one {item}'s worth (1/{n})"
    return False, f"{head} loses more than tolerance {tolerance:.3f}"


def query_check(
    settings: Settings,
    candidate: Mapping[str, Mapping[str, float]],
    active: Mapping[str, Mapping[str, float]],
    *,
    k: int = K,
) -> tuple[bool, tuple[str, ...]]:
    """The gate's check on the query-like set: neither recall@k nor MRR@k may drop by more
    than ``settings.gate_query_tolerance``, unless by less than one query's worth
    (:func:`one_item`). Passes (saying so) when no set was measured."""
    c, a = candidate.get("queries"), active.get("queries")
    if not c or not a or not int(c.get("queries", 0)):
        return True, ("no query-like held-out set: not checked",)
    ok = True
    reasons = []
    tol = settings.gate_query_tolerance
    n = int(c.get("queries", 0))
    for metric in (f"recall@{k}", f"mrr@{k}"):
        kept, reason = _loss(f"queries {metric}", float(c[metric]), float(a[metric]), tol, n,
                             "query")  # fmt: skip
        ok = ok and kept
        reasons.append(reason)
    return ok, tuple(reasons)


def write_report(
    settings: Settings,
    version_id: str,
    report: Mapping[str, Any],
    history: Sequence[Mapping[str, Any]] = (),
) -> dict[str, str]:
    """Write ``report.json`` and ``metrics.png`` under ``settings.home/reports/<version>/``.

    Args:
        settings: The data directory.
        version_id: The candidate's id.
        report: JSON-able evaluation report.
        history: Earlier versions, oldest first, each ``{"id", "metrics"}`` where metrics
            holds ``candidate``/``base`` → ``fresh``/``older`` → metric; the candidate
            is appended from ``report["metrics"]``.

    Returns:
        ``{"json": path, "png": path}``.
    """
    folder = settings.home / "reports" / version_id
    folder.mkdir(parents=True, exist_ok=True)
    json_path = folder / "report.json"
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str, sort_keys=True))
    tmp.replace(json_path)
    png_path = folder / "metrics.png"
    points = [*history, {"id": version_id, "metrics": report.get("metrics", {})}]
    try:
        _plot(points, png_path)
    except Exception as exc:  # noqa: BLE001 - a plot must never fail a retrain
        logger.warning("could not draw %s: %s", png_path, exc)
        return {"json": str(json_path)}
    return {"json": str(json_path), "png": str(png_path)}


def _plot(points: Sequence[Mapping[str, Any]], path: Path, metric: str = f"recall@{K}") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [str(p["id"]) for p in points]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(points)), 4.0))
    xs = list(range(len(points)))
    for who, style in (("candidate", "-o"), ("active", ":s"), ("base", "--x")):
        for name, colour in (("fresh", "tab:red"), ("older", "tab:blue")):
            ys = [
                p.get("metrics", {}).get(who, {}).get(name, {}).get(metric, math.nan)
                for p in points
            ]
            if all(math.isnan(y) for y in ys):
                continue
            ax.plot(xs, ys, style, color=colour, label=f"{who} {name}")
    ax.set_xticks(xs)
    ax.set_xticklabels([lab[-13:] for lab in labels], rotation=30, ha="right", fontsize=7)
    ax.set_ylabel(metric)
    ax.set_ylim(0, 1.05)
    ax.set_title(f"{metric} on held-out literature, by model version")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
