"""Benchmark: search quality on real expert questions, BM25 / dense / hybrid, before and
after one retrain, through the product's own path.

On the BioASQ 7b dev split (``../shared/eval/bioasq7b-dev/``: 300 questions, 1,328
PubMed-format articles; read its README, the data never enters the repository), in a
fresh data directory:

1. ``litpulse ingest --files corpus.xml`` → ``litpulse index refresh`` → every question
   searched in each mode (``lexical``: BM25 alone; ``semantic``: the dense base model;
   ``hybrid``);
2. ``litpulse retrain`` (its gate decides; the report is printed) → ``litpulse index
   refresh`` → every question searched again (dense and hybrid after the retrain).

Prints one table: recall@10 (share of a question's gold PMIDs in the top 10), MRR@10,
nDCG@10 (binary gains) averaged over the questions, the ratio of each to BM25 alone, and
the per-query latency p50/p99 of ``ranking.search.search`` (what the API and the CLI
call; in-process, after a warm-up query). Then the goals of issue 13 checked. The
question set is scored as a whole: tune on the whole set, never question by question
(another set over the same corpus is kept aside). To check that a change carries over,
the questions are also split into two fixed halves (:func:`half`: by a hash of the
question's text, the set has no ids) and recall@10 / MRR@10 printed for each: a general
gain shows on both.

``--steps N`` fixes how long the retrain trains: N steps, whatever the load (without
``--max-seconds`` the time budget is lifted to :data:`STEPS_BUDGET_S`, else the default
budget of 60 s decides how many steps fit: 2 of 16 at load ~6, and the gate then rejects
an all but untrained candidate). Without ``--steps`` the product's own budget decides, and
with it the load of the machine. The summary says how many steps were trained.
``--no-retrain`` stops after step 1 (BM25 alone, dense base and hybrid base: a quick
check of a ranking change); ``--keep DIR`` with a ``DIR`` kept by such a run reuses its
store and published index instead of ingesting again (a lexical change still needs a
fresh ``DIR``: the index is built once).

Usage::

    python -m bench.quality [--data ../shared/eval/bioasq7b-dev] [--steps N]
        [--max-seconds S] [--keep DIR] [--json out.json] [--threads N] [--no-retrain]

It skips, saying why, when the data folder is absent.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

#: Where the set lives, relative to the repository root's parent (a checkout or a worktree
#: beside ``shared/``, or one folder deeper).
DATA_REL = Path("shared") / "eval" / "bioasq7b-dev"
K = 10
#: The retrain's time budget when ``--steps`` is given alone: ample, so the steps decide.
STEPS_BUDGET_S = 3600.0
MODES = ("lexical", "semantic", "hybrid")


@dataclass(frozen=True)
class Question:
    text: str
    gold: frozenset[int]


@dataclass(frozen=True)
class Row:
    name: str
    recall: float
    mrr: float
    ndcg: float
    p50_ms: float
    p99_ms: float
    halves: tuple[tuple[float, float], ...] = ()  # (recall@10, MRR@10) of half A, half B


def half(text: str) -> int:
    """The fixed half (0 = A, 1 = B) a question belongs to: the parity of the SHA-1 of its
    text, so the split is the same in every run and independent of any ranking.

    Example:
        >>> half("Is durvalumab used for lung cancer treatment?") in (0, 1)
        True
    """
    return int(hashlib.sha1(text.encode()).hexdigest(), 16) % 2


def default_data() -> Path:
    """``../shared/eval/bioasq7b-dev`` of the repository, or of the folder above it."""
    root = Path(__file__).resolve().parents[1]
    for up in (root.parent, root.parent.parent):
        if (up / DATA_REL).is_dir():
            return up / DATA_REL
    return root.parent / DATA_REL


def load_questions(folder: Path) -> list[Question]:
    data = json.loads((folder / "questions.json").read_text())
    return [Question(q["question"], frozenset(int(p) for p in q["gold_pmids"])) for q in data]


def score(ranked: Sequence[int], gold: frozenset[int], k: int = K) -> tuple[float, float, float]:
    """recall@k, reciprocal rank@k and nDCG@k (binary gains) of one ranking.

    Example:
        >>> [round(x, 3) for x in score([5, 1, 9], frozenset({1, 2}), k=10)]
        [0.5, 0.5, 0.387]
    """
    top = list(ranked)[:k]
    hits = [i for i, pmid in enumerate(top) if pmid in gold]
    recall = len(hits) / len(gold) if gold else 0.0
    rr = 1.0 / (hits[0] + 1) if hits else 0.0
    dcg = sum(1.0 / math.log2(i + 2) for i in hits)
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(k, len(gold))))
    return recall, rr, dcg / ideal if ideal else 0.0


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def measure(settings: Any, questions: Sequence[Question], mode: str, name: str) -> Row:
    """Every question searched in one mode: the averaged metrics and the latencies."""
    from ranking.search import search

    search(settings, questions[0].text, k=K, mode=mode)  # warm-up: model, index, caches
    totals = [0.0, 0.0, 0.0]
    by_half = [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]  # recall, RR, questions
    ms: list[float] = []
    for q in questions:
        t0 = time.perf_counter()
        hits = search(settings, q.text, k=K, mode=mode)
        ms.append((time.perf_counter() - t0) * 1000)
        values = score([h.pmid for h in hits], q.gold)
        for i, v in enumerate(values):
            totals[i] += v
        h = by_half[half(q.text)]
        h[0], h[1], h[2] = h[0] + values[0], h[1] + values[1], h[2] + 1
    n = len(questions)
    return Row(
        name,
        totals[0] / n,
        totals[1] / n,
        totals[2] / n,
        statistics.median(ms),
        _percentile(ms, 0.99),
        tuple((r / c, rr / c) if c else (math.nan, math.nan) for r, rr, c in by_half),
    )


def cli(argv: Sequence[str]) -> tuple[int, str]:
    """Run ``litpulse <argv>`` in this process; its exit code and what it printed."""
    from litpulse.app.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(argv))
    return code, out.getvalue()


def _check(code: int, text: str, what: str) -> None:
    if code != 0:
        raise SystemExit(f"`litpulse {what}` failed ({code}):\n{text}")


def table(rows: Sequence[Row]) -> str:
    base = rows[0]
    head = (
        f"| {'system (same corpus, same questions)':<40} | recall@10 | MRR@10 | nDCG@10 "
        "| recall ÷ BM25 | MRR ÷ BM25 | p50 ms | p99 ms |"
    )
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        lines.append(
            f"| {r.name:<40} | {r.recall:.3f} | {r.mrr:.3f} | {r.ndcg:.3f} "
            f"| {r.recall / base.recall:.2f} | {r.mrr / base.mrr:.2f} "
            f"| {r.p50_ms:.1f} | {r.p99_ms:.1f} |"
        )
    return "\n".join(lines)


def halves_table(rows: Sequence[Row]) -> str:
    """recall@10 / MRR@10 of each row on the two fixed halves of the questions."""
    lines = [
        f"| {'system, per half (see half())':<40} | recall A | MRR A | recall B | MRR B |",
        "|" + "---|" * 5,
    ]
    for r in rows:
        (ra, ma), (rb, mb) = r.halves or ((math.nan, math.nan), (math.nan, math.nan))
        lines.append(f"| {r.name:<40} | {ra:.3f} | {ma:.3f} | {rb:.3f} | {mb:.3f} |")
    return "\n".join(lines)


def goals(rows: dict[str, Row]) -> list[str]:
    """Issue 13's goals after one retrain, each with its verdict."""
    h, bm, dense = rows["hybrid_after"], rows["lexical"], rows["semantic_base"]
    checks = [
        ("hybrid recall@10 >= 0.95", h.recall >= 0.95),
        ("hybrid MRR@10 >= 0.95", h.mrr >= 0.95),
        ("hybrid >= BM25 alone (recall, MRR)", h.recall >= bm.recall and h.mrr >= bm.mrr),
        ("hybrid >= dense base (recall, MRR)", h.recall >= dense.recall and h.mrr >= dense.mrr),
    ]
    return [f"{'met ' if ok else 'MISSED'} {what}" for what, ok in checks]


def retrain_limits(steps: int | None, max_seconds: float | None) -> list[str]:
    """The ``litpulse retrain`` options that bound the training: ``--steps`` alone trains
    that many steps (the budget lifted to :data:`STEPS_BUDGET_S`), so the rows after the
    retrain do not depend on the load of the machine.

    Example:
        >>> retrain_limits(16, None)
        ['--steps', '16', '--max-seconds', '3600.0']
        >>> retrain_limits(16, 90), retrain_limits(None, None)
        (['--steps', '16', '--max-seconds', '90'], [])
    """
    out: list[str] = []
    if steps is not None:
        out += ["--steps", str(steps)]
        if max_seconds is None:
            max_seconds = STEPS_BUDGET_S
    if max_seconds is not None:
        out += ["--max-seconds", str(max_seconds)]
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    data = Path(args.data)
    questions = load_questions(data)
    home = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="lp-quality-"))
    os.environ["LITPULSE_HOME"] = str(home)
    os.environ.setdefault("LITPULSE_DEVICE", "cpu")
    from litpulse.core.settings import Settings

    settings = Settings.from_env()
    timings: dict[str, float] = {}
    from litpulse.core import db
    from ranking.models import published_index_row

    if published_index_row(db.connect(settings)) is None:  # a fresh (or unfinished) home
        t0 = time.perf_counter()
        _check(*cli(["ingest", "--files", str(data / "corpus.xml")]), "ingest")
        timings["ingest_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        _check(*cli(["index", "refresh"]), "index refresh")
        timings["index_s"] = time.perf_counter() - t0

    rows: dict[str, Row] = {}
    rows["lexical"] = measure(settings, questions, "lexical", "BM25 alone (mode=lexical)")
    rows["semantic_base"] = measure(
        settings, questions, "semantic", "dense, base model (mode=semantic)"
    )
    rows["hybrid_base"] = measure(settings, questions, "hybrid", "hybrid, base model")
    print(table(list(rows.values())), flush=True)
    if args.no_retrain:
        return {
            "rows": rows,
            "report": {},
            "timings": timings,
            "home": str(home),
            "questions": len(questions),
        }

    retrain_args = ["retrain", "--json", *retrain_limits(args.steps, args.max_seconds)]
    t0 = time.perf_counter()
    code, text = cli(retrain_args)
    timings["retrain_s"] = time.perf_counter() - t0
    _check(code, text, "retrain")
    report = json.loads(text)
    _check(*cli(["index", "refresh"]), "index refresh")
    promoted = report.get("status") == "promoted"
    tag = "after retrain" if promoted else f"after retrain ({report.get('status')})"
    rows["semantic_after"] = measure(settings, questions, "semantic", f"dense, {tag}")
    rows["hybrid_after"] = measure(settings, questions, "hybrid", f"hybrid, {tag}")
    return {
        "rows": rows,
        "report": report,
        "timings": timings,
        "home": str(home),
        "questions": len(questions),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(default_data()), help="the bioasq7b-dev folder")
    parser.add_argument("--steps", type=int, default=None, help="retrain: train this many steps")
    parser.add_argument("--max-seconds", type=float, default=None, help="retrain: budget")
    parser.add_argument("--keep", default=None, help="data directory to use and keep")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument(
        "--no-retrain", action="store_true", help="stop after the base rows (no retrain)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (0: torch's default; 1 is faster on a loaded machine)",
    )
    args = parser.parse_args(argv)
    data = Path(args.data)
    if not (data / "questions.json").is_file() or not (data / "corpus.xml").is_file():
        print(
            f"skipped: no BioASQ set at {data} (questions.json and corpus.xml; it is kept "
            "outside the repository, in ../shared/eval/bioasq7b-dev/)"
        )
        return 0
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    out = run(args)
    rows: dict[str, Row] = out["rows"]
    report = out["report"]
    if "retrain_s" in out["timings"]:
        trained = report.get("training") or {}
        print(
            f"\n{out['questions']} questions; retrain {report.get('status')} in "
            f"{out['timings']['retrain_s']:.0f} s ({trained.get('steps', 0)} steps trained, "
            f"{trained.get('planned_steps', 0)} planned); data in {out['home']}"
        )
    else:
        print(f"\n{out['questions']} questions, no retrain; data in {out['home']}")
    for line in report.get("reasons") or []:
        print(f"  - {line}")
    print()
    print(table(list(rows.values())))
    print()
    print(halves_table(list(rows.values())))
    print()
    if "hybrid_after" in rows:
        for line in goals(rows):
            print(line)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {**out, "rows": {k: vars(v) for k, v in rows.items()}}, indent=2, default=str
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
