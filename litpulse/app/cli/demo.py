"""``litpulse demo``: demo data, e.g. a generated PubMed corpus to ingest without NCBI."""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

from litpulse.core.settings import Settings

__all__ = ["register"]


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="demo data: generate a PubMed-shaped corpus")
    dsub = p.add_subparsers(dest="demo_command", metavar="ACTION")
    dsub.required = True
    g = dsub.add_parser(
        "generate",
        help="write a deterministic corpus of NLM-style update files (pubmed26nNNNN.xml.gz)",
        description=(
            "Write generated PubMed XML files: the same seed gives byte-identical files. "
            "Generated text, not real literature. "
            "Ingest it with `litpulse ingest --files DIR/*.xml.gz`."
        ),
    )
    g.add_argument("out_dir", metavar="DIR", help="folder to write the files to")
    g.add_argument("--records", type=int, default=1000, metavar="N", help="records (default 1000)")
    g.add_argument("--files", type=int, default=1, metavar="K", help="files (default 1)")
    g.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    g.add_argument("--days", type=int, default=30, help="entrez dates span (default 30)")
    g.add_argument("--start", type=dt.date.fromisoformat, default=dt.date(2024, 1, 1),
                   metavar="YYYY-MM-DD", help="first entrez date (default 2024-01-01)")  # fmt: skip
    g.add_argument("--revise", type=float, default=0.05, help="share revised in later files")
    g.add_argument("--delete", type=float, default=0.01, help="share deleted in later files")
    g.add_argument("--malformed", type=float, default=0.0, help="share of malformed records")
    g.add_argument("--drift", action="store_true", help="plant new terms late in the window")
    g.add_argument("--plain", action="store_true", help="write .xml instead of .xml.gz")
    g.add_argument("--md5", action="store_true", help="write .md5 sidecars")
    g.set_defaults(func=generate)


def generate(args: argparse.Namespace, settings: Settings) -> int:
    from litpulse.app.demo.generate import generate_corpus

    m = generate_corpus(
        args.out_dir,
        n_records=args.records,
        n_files=args.files,
        seed=args.seed,
        start_date=args.start,
        days=args.days,
        revise_fraction=args.revise,
        delete_fraction=args.delete,
        malformed_fraction=args.malformed,
        drift=args.drift,
        gz=not args.plain,
        md5=args.md5,
    )
    print(
        f"{len(m.files)} files, {len(m.live_pmids)} live, {len(m.deleted_pmids)} deleted, "
        f"{m.quarantined} malformed, {len(m.revised_titles)} revised"
    )
    for p in m.files:
        print(p)
    return 0
