"""``litpulse demo``: demo data, e.g. a generated PubMed corpus to ingest without NCBI."""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path
from typing import Any

from litpulse.app.cli._common import date_arg, path_arg
from litpulse.core.settings import Settings

__all__ = ["register"]

#: The demo corpus spans three years, so topics and compounds can be seen to drift.
DEMO_START = dt.date(2023, 1, 1)
DEMO_DAYS = 3 * 365


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="demo data: generate a PubMed-shaped corpus")
    dsub = p.add_subparsers(dest="demo_command", metavar="ACTION")
    dsub.required = True
    g = dsub.add_parser(
        "generate",
        help="write a deterministic corpus of NLM-style update files (pubmed26nNNNN.xml.gz)",
        description=(
            "Write generated PubMed XML files: the same seed gives byte-identical files. "
            "Generated text, not real literature, but learnable like it: titles and "
            "abstracts name the same things in different words (synonyms, abbreviations, "
            "paraphrases, drug codes vs generic names), topics and compounds drift over the "
            "years, and articles cite related earlier ones. "
            "Ingest it with `litpulse ingest --files DIR/*.xml.gz` or `litpulse nightly`."
        ),
    )
    g.add_argument("out_dir", metavar="DIR", type=path_arg, help="folder to write the files to")
    g.add_argument("--records", type=int, default=1000, metavar="N", help="records (default 1000)")
    g.add_argument("--files", type=int, default=1, metavar="K", help="files (default 1)")
    g.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    g.add_argument(
        "--days",
        type=int,
        default=DEMO_DAYS,
        help=f"entrez dates span (default {DEMO_DAYS}: three years)",
    )
    g.add_argument(
        "--start",
        type=date_arg,
        default=DEMO_START,
        metavar="YYYY-MM-DD",
        help=f"first entrez date (default {DEMO_START})",
    )
    g.add_argument("--revise", type=float, default=0.05, help="share revised in later files")
    g.add_argument("--delete", type=float, default=0.01, help="share deleted in later files")
    g.add_argument("--malformed", type=float, default=0.0, help="share of malformed records")
    g.add_argument(
        "--drift",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="emerging topics and methods in the last third of the window (default on)",
    )
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
    from litpulse.app.demo import GENERATED_MARKER

    marker = Path(args.out_dir) / GENERATED_MARKER
    marker.write_text(
        "The PubMed XML files in this folder were written by `litpulse demo generate` "
        f"(seed {args.seed}): generated text, not real literature.\n",
        encoding="utf-8",
    )
    print(
        f"generated corpus (not real literature): {len(m.files)} files, "
        f"{len(m.live_pmids)} live, {len(m.deleted_pmids)} deleted, "
        f"{m.quarantined} malformed, {len(m.revised_titles)} revised"
    )
    for p in m.files:
        print(p)
    return 0
