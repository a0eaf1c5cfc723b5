"""``litpulse nightly``: the whole nightly chain in one process (no Airflow needed)."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import Any

from litpulse.app.cli._common import (
    EX_TEMPFAIL,
    add_json,
    command,
    float_arg,
    path_arg,
    print_json,
    print_table,
    show_progress,
)
from litpulse.core.settings import Settings
from litpulse.core.timeutil import as_utc

#: Longest ``--wait`` in seconds (a day: by then the next night's run is due).
MAX_WAIT_S = 24 * 3600


def register(sub: Any) -> None:
    p = command(
        sub, "nightly", run,
        help="run the nightly pipeline once: ingest, citations, quality, index, retrain",
        description=(
            "Ingest (from the last watermark, or --since), refresh citations, check data "
            "quality, embed and refresh the index, and retrain when due. Holds the database "
            f"lease 'nightly': a second concurrent run exits with code {EX_TEMPFAIL} (or waits "
            "with --wait). Every step resumes where a killed run stopped."
        ),
    )
    p.add_argument(
        "--source",
        choices=("eutils", "updatefiles", "files"),
        default=None,
        help="where new records come from (default: eutils, or files when --files is given)",
    )
    p.add_argument("--files", nargs="+", metavar="PATH", type=path_arg,
                   help="local PubMed XML(.gz) files")
    p.add_argument(
        "--since",
        type=_when,
        help="window start, included (YYYY-MM-DD or ISO time, UTC; default: the watermark)",
    )
    p.add_argument(
        "--until",
        type=_when,
        help="window end, excluded (default: now): --until 2024-01-03 ends with Jan 2",
    )
    p.add_argument("--no-retrain", action="store_true", help="never retrain in this run")
    p.add_argument("--no-citations", action="store_true", help="skip the iCite refresh")
    p.add_argument("--no-quality", action="store_true", help="skip the data-quality check")
    p.add_argument(
        "--wait",
        type=float_arg(0, MAX_WAIT_S),
        default=0.0,
        metavar="SECONDS",
        help=f"wait this long for a running nightly to finish, 0 to {MAX_WAIT_S} "
        "(default: exit at once)",
    )
    add_json(p, "print the report as JSON")


def _when(text: str) -> dt.datetime:
    try:
        return as_utc(dt.datetime.fromisoformat(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date or ISO time: {text!r}") from None
    except OverflowError:  # in UTC it falls off the calendar (0001-01-01T00:00+01:00)
        raise argparse.ArgumentTypeError(
            f"not a time of years 1 to 9999 in UTC: {text!r}"
        ) from None


def run(args: argparse.Namespace, settings: Settings) -> int:
    from ingest.runs import StoreBusyError
    from litpulse.core.errors import LeaseLostError
    from litpulse.pipeline.nightly import NightlyBusyError, run_nightly

    source = args.source or ("files" if args.files else "eutils")
    try:
        report = run_nightly(
            settings,
            source=source,
            files=args.files,
            since=args.since,
            until=args.until,
            retrain=not args.no_retrain,
            citations=not args.no_citations,
            quality=not args.no_quality,
            progress=show_progress() and not args.json,
            wait_s=args.wait,
        )
    except (NightlyBusyError, StoreBusyError, LeaseLostError) as exc:
        # busy (another nightly run, or a bootstrap writing articles), or another run took
        # the lease over: try again later (EX_TEMPFAIL)
        print(f"litpulse: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    data = report.to_dict()
    if args.json:
        print_json(data)
        return 0
    if data["window_start"]:
        print(f"window {data['window_start']} .. {data['window_end']}")
    print_table(report.summary_rows(), ["step", "time", "what happened"])
    if args.files and _generated(args.files):
        print("\nThe files were written by `litpulse demo generate`: generated text, not real "
              "literature.")
    if report.index and report.index.get("size"):
        print('\nNext: litpulse search "QUERY" --explain, or litpulse serve and open '
              "http://127.0.0.1:8000/")
    return 0


def _generated(files: list[str]) -> bool:
    """Whether any of the files lies in a folder ``litpulse demo generate`` wrote."""
    from litpulse.app.demo import GENERATED_MARKER

    return any((Path(f).parent / GENERATED_MARKER).exists() for f in files)
