"""Benchmark: the lexical index's nightly refresh against a full rebuild, at several sizes.

Issue #13's goal: "the lexical refresh costs in proportion to the new articles, like the
vector refresh". For each ``--sizes`` N a generated corpus of N records
(``litpulse.app.demo.generate``, cached in ``--workdir``) is ingested into a scratch SQLite
store (the real ``ingest_files``; not timed), and then, on the product's own functions
(:mod:`ranking.lexical`):

* **full build** — the whole corpus indexed from nothing (``build_lexical`` with no base:
  what a rebuild, a format change or ``index refresh --rebuild`` costs);
* **base** — a version holding every live article but the newest ``--add`` (its PMID list
  and ``meta.json`` written as a published version has them; not timed), the articles'
  rows dated as if ingested over the weeks before, a second apart (rows written within
  :data:`ranking.lexical.WATERMARK_SLACK_S` of a base's watermark are compared again, so
  rows all written at once would all be);
* **nightly refresh** — after ``--revise`` of the base's articles are rewritten (a new
  title, a later ``updated_at``, as a revision arriving from PubMed), the refresh a new
  index version does: :func:`ranking.lexical.plan_lexical` (new, changed and deleted PMIDs
  against the base, changed ones found by their content hash) and
  :meth:`LexicalPlan.write` (the base hard-linked, the changed removed, new and changed
  indexed, the PMID list written).

The table gives the seconds of each, documents per second, the refresh as a share of the
full build, and the index's bytes per document with the full baseline (38 M articles)
projected from them. The refresh is proportional when its seconds stay about the same as
N grows while the full build's grow with N. Never pass/fail; the load average is printed
before and after.

    python -m bench.lexical --sizes 20000 80000 --add 1000 --revise 100
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.bootstrap import at_baseline
from bench.parse import corpus_file, scratch_home


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def measure(path: Path, add: int, revise: int, seed: int) -> dict[str, Any]:
    """Ingest ``path`` into a scratch store; time a full build and a nightly refresh."""
    import numpy as np
    from sqlalchemy import bindparam, select, update

    from ingest.files import ingest_files
    from litpulse.core.db import connect
    from litpulse.core.schema import articles
    from litpulse.core.settings import Settings
    from litpulse.core.timeutil import utcnow
    from ranking.lexical import (
        FORMAT,
        IDS_FILE,
        LEXICAL_DIR,
        build_lexical,
        plan_lexical,
        text_watermark,
    )

    home = scratch_home("litpulse-bench-lexical-")
    settings = Settings.from_env({}, home=home, database_url=f"sqlite:///{home}/bench.db")
    engine = connect(settings)
    ingest_files(settings, [path], workers=1)
    with engine.begin() as conn:  # written over the weeks before, a second apart, in order
        pmids = conn.execute(select(articles.c.pmid).order_by(articles.c.pmid)).scalars().all()
        start = utcnow() - dt.timedelta(days=30)
        conn.execute(
            update(articles).where(articles.c.pmid == bindparam("b_pmid")),
            [{"b_pmid": p, "updated_at": start + dt.timedelta(seconds=i)}
             for i, p in enumerate(pmids)],
        )  # fmt: skip
    with engine.connect() as conn:
        live = np.asarray(
            sorted(conn.execute(select(articles.c.pmid).where(articles.c.is_deleted.is_(False)))
                   .scalars()),
            dtype=np.int64,
        )  # fmt: skip
    none = np.zeros(0, dtype=np.int64)

    t0 = time.perf_counter()
    build_lexical(engine, home / "full" / LEXICAL_DIR, base=None, add=live, remove=none)
    full_s = time.perf_counter() - t0
    full_bytes = _folder_bytes(home / "full" / LEXICAL_DIR)

    base_ids = live[:-add]
    base = home / "base"
    base_added, _n = build_lexical(engine, base / LEXICAL_DIR, base=None, add=base_ids,
                                   remove=none)  # fmt: skip
    np.save(base / IDS_FILE, base_added)
    upto = text_watermark(engine)
    meta = {"lexical": {"format": FORMAT, "updated_upto": upto.isoformat() if upto else None}}
    (base / "meta.json").write_text(json.dumps(meta), encoding="utf-8")

    revised = sorted(random.Random(seed).sample(base_ids.tolist(), revise))
    with engine.begin() as conn:
        conn.execute(
            update(articles)
            .where(articles.c.pmid.in_(revised))
            .values(title=articles.c.title + " (revised)", updated_at=utcnow())
        )

    new = home / "new"
    new.mkdir()
    t0 = time.perf_counter()
    plan = plan_lexical(engine, str(base), live)
    plan_s = time.perf_counter() - t0
    written = plan.write(new)
    refresh_s = time.perf_counter() - t0
    engine.dispose()
    return {
        "docs": len(live),
        "full_s": full_s,
        "full_bytes": full_bytes,
        "refresh_s": refresh_s,
        "plan_s": plan_s,
        "added": written["added"],
        "removed": written["removed"],
        "new": add,
        "revised": revise,
    }


def _table(rows: list[dict[str, Any]]) -> str:
    out = [
        "| articles | full build s | docs/s (full) | nightly refresh s (+new, changed) "
        "| of which planning s | refresh ÷ full build | index bytes per article "
        "| full baseline (38 M) on disk |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        per_doc = r["full_bytes"] / r["docs"]
        out.append(
            f"| {r['docs']:,} | {r['full_s']:.2f} | {r['docs'] / r['full_s']:,.0f} "
            f"| {r['refresh_s']:.2f} (+{r['new']:,}, {r['revised']:,}; indexed {r['added']:,}) "
            f"| {r['plan_s']:.2f} | {r['refresh_s'] / r['full_s']:.1%} | {per_doc:,.0f} "
            f"| {at_baseline(per_doc)} |"
        )
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the markdown table."""
    ap = argparse.ArgumentParser(prog="python -m bench.lexical", description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[20000, 80000])
    ap.add_argument("--add", type=int, default=1000, help="new articles since the base")
    ap.add_argument("--revise", type=int, default=100, help="base articles revised since")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "litpulse-bench")
    args = ap.parse_args(argv)
    if min(args.sizes) <= args.add + args.revise:
        ap.error("every size must exceed --add + --revise")
    sys.stdout.write(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs (shared), load average "
        "(1/5/15 min) at start: " + "/".join(f"{x:.1f}" for x in os.getloadavg()) + "\n\n"
    )
    rows = []
    for n in args.sizes:
        path = corpus_file(args.workdir.resolve(), n, args.seed)
        rows.append(measure(path, args.add, args.revise, args.seed))
    sys.stdout.write(_table(rows))
    sys.stdout.write(f"\nload average {os.getloadavg()[0]:.1f} after the table\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
