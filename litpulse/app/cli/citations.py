"""``litpulse citations``: refresh citation impact from NIH iCite."""

from __future__ import annotations

import argparse
from typing import Any

from litpulse.app.cli._common import add_json, command, command_group, kv, print_json, show_progress
from litpulse.core.settings import Settings


def register(sub: Any) -> None:
    actions = command_group(
        sub, "citations",
        help="refresh citation counts and relative citation ratios from iCite",
        description=(
            "Citation impact comes from NIH iCite (LITPULSE_ICITE_URL), at most "
            "LITPULSE_ICITE_BATCH PMIDs per request, with the same rate limit and retries "
            "as E-utilities."
        ),
    )
    r = command(
        actions, "refresh", run_refresh,
        help="fetch iCite data for articles that are due (or for the PMIDs given)",
        description=(
            "Without --pmid, refresh every live article never fetched or fetched too long "
            "ago: after 7 days for articles under a year old, 30 days under five years, "
            "180 days for older ones. A PMID iCite does not know keeps its in-corpus "
            "citation count and is asked again on the same schedule."
        ),
    )
    r.add_argument(
        "--pmid", dest="pmids", type=int, action="append", metavar="PMID",
        help="refresh this PMID (repeatable); PMIDs not in the store are ignored",
    )
    add_json(r, "print the counts as JSON")


def run_refresh(args: argparse.Namespace, settings: Settings) -> int:
    from ingest.citations import refresh_citations

    counts = refresh_citations(settings, pmids=args.pmids, progress=show_progress())
    if args.json:
        print_json(counts.to_dict())
    else:
        kv(counts.to_dict().items())
    return 0
