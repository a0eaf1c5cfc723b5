"""``litpulse bootstrap``: a new deployment from NLM's baseline to a published index."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from litpulse.app.cli._common import int_arg, kv, print_json, show_progress
from litpulse.core.settings import Settings, bounds
from litpulse.core.widths import SHARDS_MAX

__all__ = ["register"]


def register(sub: Any) -> None:
    p = sub.add_parser(
        "bootstrap",
        help="load every baseline file and the update files since, embed, publish the index",
        description=(
            "Download (resuming, MD5-checked) and apply every file of baseline/ and then "
            "updatefiles/ not applied yet, in order, parsing the next files in worker "
            "processes while the current one is stored; then embed the new articles in "
            "PMID shards and publish the index. Killed at any point, run it again: it goes "
            "on where it stopped. Run again when everything is done, it does nothing and "
            "says so."
        ),
    )
    p.add_argument(
        "--workers",
        type=int_arg(*bounds("ingest_workers")),
        metavar="N",
        help=(
            "parse worker processes, each parsing one of the next files while the writer "
            "stores (default: LITPULSE_INGEST_WORKERS, the cores; 0: parse in "
            "the writer)"
        ),
    )
    p.add_argument(
        "--prefetch",
        type=int_arg(*bounds("bootstrap_prefetch")),
        metavar="N",
        help="files downloaded ahead (default: LITPULSE_BOOTSTRAP_PREFETCH)",
    )
    p.add_argument(
        "--shards",
        type=int_arg(1, SHARDS_MAX),
        default=8,
        metavar="N",
        help="PMID shards of the embed step, each resumable (default: 8)",
    )
    p.add_argument("--no-embed", action="store_true", help="load the store only")
    p.add_argument("--max-files", type=int, metavar="N", help="apply at most N files this time")
    p.add_argument(
        "--accept-gaps",
        action="store_true",
        help=(
            "apply the files after a number missing from the server's listing (only for a "
            "file NLM withdrew; a mirror still copying fills its gap later)"
        ),
    )
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from litpulse.pipeline.bootstrap import bootstrap

    report = bootstrap(
        settings,
        workers=args.workers,
        prefetch=args.prefetch,
        shards=args.shards,
        embed=not args.no_embed,
        max_files=args.max_files,
        progress=show_progress() and not args.json,
        accept_gaps=args.accept_gaps,
    )
    out = report.to_dict()
    if args.json:
        print_json(out)
        return 0
    load = report.load
    if report.nothing_to_do:
        done = "" if args.no_embed else ", every article is embedded and the index is current"
        print(f"nothing to do: all {load.listed} listed files were applied before{done}")
        return 0
    if load.nothing_to_do:
        print(f"all {load.listed} listed files were applied before", file=sys.stderr)
    kv(
        [
            (
                "files applied",
                f"{len(load.applied)} (of {load.listed} listed; {load.already} before)",
            ),
            *((k, v) for k, v in load.counts.to_dict().items()),
            ("records/s", out["load"]["records_per_s"]),
            ("embedded", out["embedded"]),
            ("index", (report.index or {}).get("id", "-")),
            ("seconds", out["seconds"]),
        ]
    )
    return 0
