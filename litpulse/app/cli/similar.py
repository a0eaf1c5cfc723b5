"""``litpulse similar PMID``: the articles nearest to one article's own vector."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from litpulse.app.cli._common import (
    add_json,
    command,
    fixed,
    pmid_arg,
    print_json,
    print_table,
    safe_text,
)
from litpulse.core.settings import Settings


def register(sub: Any) -> None:
    p = command(
        sub,
        "similar",
        run_similar_cmd,
        help="articles similar to one article (nearest vectors in the published index)",
        description=(
            "The articles whose vectors are nearest (cosine) to PMID's own stored vector in "
            "the published index version, without PMID itself, deleted articles and, unless "
            "--include-retracted, retracted ones. The same as `GET /similar/{pmid}`."
        ),
    )
    p.add_argument("pmid", type=pmid_arg, help="PubMed id of the article")
    p.add_argument("-k", type=int, default=10, help="number of articles (1..100, default 10)")
    p.add_argument(
        "--offset", type=int, default=0,
        help="neighbours to skip (0..1000): the next page starts where one ended",
    )  # fmt: skip
    p.add_argument(
        "--include-retracted", action="store_true", help="also list retracted articles (marked)"
    )
    add_json(p, "print the result as JSON")


def run_similar_cmd(args: argparse.Namespace, settings: Settings) -> int:
    from ranking.search import MAX_OFFSET
    from ranking.similar import similar_articles

    result = similar_articles(
        settings, args.pmid, k=args.k, include_retracted=args.include_retracted,
        offset=args.offset,
    )  # fmt: skip
    if args.json:
        print_json(result.to_dict())
        return 0
    flag = "[retracted] " if result.retracted else ""
    print(safe_text(f"similar to PMID {result.pmid}: {flag}{result.title}"))
    if not result.hits:
        print("no similar articles", file=sys.stderr)
        return 0
    rows = [
        (
            n,
            h.pmid,
            fixed(h.similarity),
            h.best_date or h.pub_year or "",
            ("[retracted] " if h.retracted else "")
            + (h.title[:67] + "…" if len(h.title) > 68 else h.title),
        )
        for n, h in enumerate(result.hits, start=result.offset + 1)
    ]
    print_table(rows, ["#", "pmid", "cosine", "date", "title"])
    if result.has_more:  # say how to go on (stderr, as `quarantine` does)
        print(f"more follow: add --offset {result.offset + len(result.hits)}", file=sys.stderr)
    elif result.truncated:  # more, past the deepest offset: said, never left as the end
        print(f"more follow past the deepest offset ({MAX_OFFSET:,}): they are not listed",
              file=sys.stderr)
    print(f"\nindex {result.index_version} (model {result.model_version})")
    return 0
