"""``litpulse citations``: citation impact from NIH iCite (API refresh, snapshot load)."""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

from litpulse.app.cli._common import (
    add_json,
    command,
    command_group,
    date_arg,
    int_arg,
    kv,
    path_arg,
    pmid_arg,
    print_json,
    show_progress,
)
from litpulse.core.settings import Settings, bounds


def register(sub: Any) -> None:
    actions = command_group(
        sub,
        "citations",
        help="refresh citation counts and relative citation ratios from iCite",
        description=(
            "Citation impact comes from NIH iCite (LITPULSE_ICITE_URL), at most "
            "LITPULSE_ICITE_BATCH PMIDs per request, with the same rate limit and retries "
            "as E-utilities; a new store loads iCite's database snapshot first "
            "(`citations load`), so the API is needed only for the daily refresh."
        ),
    )
    r = command(
        actions,
        "refresh",
        run_refresh,
        help="fetch iCite data for articles that are due (or for the PMIDs given)",
        description=(
            "Without --pmid, refresh every live article never fetched or fetched too long "
            "ago: after 7 days for articles under a year old, 30 days under five years, "
            "180 days for older ones. A PMID iCite does not know keeps its in-corpus "
            "citation count and is asked again on the same schedule."
        ),
    )
    r.add_argument(
        "--pmid",
        dest="pmids",
        type=pmid_arg,
        action="append",
        metavar="PMID",
        help="refresh this PMID (repeatable); PMIDs not in the store are ignored",
    )
    add_json(r, "print the counts as JSON")
    load = command(
        actions,
        "load",
        run_load,
        help="load iCite's database snapshot (icite_metadata.csv, .csv.gz or .zip)",
        description=(
            "Stream the iCite database snapshot (NIH figshare, 'iCite Database Snapshot') "
            "into the store: the same columns as `citations refresh`, for the live "
            "articles the store holds, stamped with the snapshot's date so the daily "
            "refresh asks only for what is due after it. Resumable: a killed load run "
            "again continues where it stopped. Malformed rows are quarantined and counted."
        ),
    )
    load.add_argument(
        "file",
        metavar="FILE",
        type=path_arg,
        help="icite_metadata.csv (plain, .gz or figshare's .zip), or a folder of them",
    )
    load.add_argument(
        "--as-of",
        type=date_arg,
        metavar="YYYY-MM-DD",
        help=(
            "the snapshot's date, stored as the fetch time (default: the date the file "
            "carries: a .zip's CSV member time, a .gz header's time, else the file's mtime; "
            "give it for a plain CSV whose mtime is its download's)"
        ),
    )
    load.add_argument(
        "--batch-size",
        type=int_arg(*bounds("icite_snapshot_batch")),
        metavar="N",
        help="rows per transaction (default LITPULSE_ICITE_SNAPSHOT_BATCH)",
    )
    add_json(load, "print the counts as JSON")


def run_refresh(args: argparse.Namespace, settings: Settings) -> int:
    from ingest.citations import refresh_citations

    counts = refresh_citations(settings, pmids=args.pmids, progress=show_progress())
    if args.json:
        print_json(counts.to_dict())
    else:
        kv(counts.to_dict().items())
    return 0


def run_load(args: argparse.Namespace, settings: Settings) -> int:
    from ingest.icite_snapshot import load_snapshot

    as_of = None
    if args.as_of is not None:
        as_of = dt.datetime.combine(args.as_of, dt.time(), dt.UTC)
    counts = load_snapshot(
        settings, args.file, as_of=as_of, progress=show_progress(), batch_size=args.batch_size
    )
    if args.json:
        print_json(counts.to_dict())
    else:
        kv(counts.to_dict().items())
    return 0
