"""``litpulse search`` and ``litpulse serve``: query the index, or serve the API and page."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from typing import Any

from litpulse.app.cli._common import add_json, command, print_json, print_table
from litpulse.core.settings import Settings


def register(sub: Any) -> None:
    p = command(
        sub, "search", run_search_cmd,
        help="search the published index (relevance + recency + citation impact)",
        description=(
            "Fetch candidates from the published index version — the nearest articles to "
            "QUERY embedded with the index's own model version, and the best BM25 matches of "
            "its lexical index (--mode hybrid, the default; or one of them: semantic, "
            "lexical) — apply the filters and re-rank them by "
            "w_sim*((1-λ)*similarity + λ*lexical) + w_rec*recency + w_cit*citation. "
            "Retracted articles are left out unless --include-retracted."
        ),
    )
    p.add_argument("query", help="free-text query (quote it)")
    p.add_argument("-k", type=_positive_int, default=10, help="number of results (default 10)")
    p.add_argument("--since", type=_date, help="published on or after YYYY-MM-DD")
    p.add_argument("--until", type=_date, help="published on or before YYYY-MM-DD")
    p.add_argument(
        "--mesh", action="append", metavar="TERM", help="MeSH descriptor (repeat for all of)"
    )
    p.add_argument(
        "--type", dest="ptype", action="append", metavar="PUBTYPE",
        help="publication type, e.g. Review (repeat for all of)",
    )
    p.add_argument("--language", help="language code, e.g. eng")
    p.add_argument("--has-abstract", action="store_true", help="only articles with an abstract")
    p.add_argument(
        "--include-retracted", action="store_true", help="also return retracted articles"
    )
    p.add_argument("--w-sim", type=float, metavar="X", help="weight of the similarity")
    p.add_argument("--w-recency", type=float, metavar="X", help="weight of the recency")
    p.add_argument("--w-citation", type=float, metavar="X", help="weight of citation impact")
    p.add_argument("--w-lexical", type=float, metavar="λ",
                   help="share of the lexical part in hybrid mode, 0..1")
    p.add_argument("--half-life", type=float, metavar="DAYS", help="recency half-life in days")
    p.add_argument("--mode", choices=("hybrid", "semantic", "lexical"), default="hybrid",
                   help="indexes asked: both fused (default), vectors only, BM25 only")
    p.add_argument("--sort", choices=("score", "date"), default="score",
                   help="best first (default), or the same results newest first")
    add_json(p, "print the results as JSON")
    p.add_argument("--explain", action="store_true", help="print how each score was made")

    s = command(
        sub, "serve", run_serve,
        help="serve the HTTP API and the search page",
        description="Run the HTTP API (OpenAPI at /openapi.json) and the web page at /.",
    )
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=8000, help="port (default 8000)")


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date YYYY-MM-DD: {text!r}") from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1: {text!r}")
    return value


def run_search_cmd(args: argparse.Namespace, settings: Settings) -> int:
    from ranking.scoring import ScoringOptions
    from ranking.search import SearchFilters, run_search

    filters = SearchFilters(
        since=args.since,
        until=args.until,
        mesh=tuple(args.mesh or ()),
        publication_type=tuple(args.ptype or ()),
        language=args.language,
        has_abstract=True if args.has_abstract else None,
        include_retracted=args.include_retracted,
    )
    options = ScoringOptions.from_settings(
        settings,
        weights={
            "similarity": args.w_sim,
            "recency": args.w_recency,
            "citation": args.w_citation,
            "lexical": args.w_lexical,
        },
        half_life_days=args.half_life,
    )
    result = run_search(settings, args.query, k=args.k, filters=filters, options=options,
                        mode=args.mode, sort=args.sort)
    if args.json:
        data = result.to_dict()
        if not args.explain:
            for hit in data["results"]:
                hit["explanation"] = hit["explanation"]["text"]
        print_json(data)
        return 0
    if not result.hits:
        print("no results", file=sys.stderr)
        return 0
    rows = [
        (
            n,
            h.pmid,
            f"{h.score:.3f}",
            f"{h.similarity:.3f}",
            "" if h.bm25 is None else f"{h.bm25:.2f}",
            f"{h.recency:.2f}",
            f"{h.citation:.2f}",
            h.best_date or h.pub_year or "",
            _cut(h.title, 70),
        )
        for n, h in enumerate(result.hits, start=1)
    ]
    print_table(rows, ["#", "pmid", "score", "sim", "bm25", "rec", "cit", "date", "title"])
    o = result.options
    relevance = (f"{o.w_similarity:g}*sim" if result.mode == "semantic" else
                 f"{o.w_similarity:g}*lex" if result.mode == "lexical" else
                 f"{o.w_similarity:g}*({1 - o.lexical_share:g}*sim + {o.lexical_share:g}*lex)"
                 f" [{o.fusion}]")
    print(
        f"\nindex {result.index_version} (model {result.model_version}); mode {result.mode}; "
        f"{result.candidates} candidates re-ranked; "
        f"score = {relevance} + {o.w_recency:g}*rec + "
        f"{o.w_citation:g}*cit, half-life {o.half_life_days:g} days"
        + ("; sorted by date" if result.sort == "date" else "")
    )
    if args.explain:
        for n, h in enumerate(result.hits, start=1):
            print(f"\n{n}. PMID {h.pmid}: {h.explanation['text']}")
            for name, comp in h.explanation["components"].items():
                print(f"   {name:<10} {comp['text']}")
            if h.explanation.get("retracted"):
                print("   (retracted)")
    return 0


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def run_serve(args: argparse.Namespace, settings: Settings) -> int:
    import logging

    import uvicorn

    from litpulse.app.api import create_app

    if args.host not in ("127.0.0.1", "localhost", "::1"):
        logging.getLogger(__name__).warning(
            "serving on %s: searches are open to anyone who reaches it (writes need a "
            "token from `litpulse tokens create`); rate limits are per client address",
            args.host,
        )
    print(f"litpulse: serving on http://{args.host}:{args.port}/ (Ctrl-C stops)", file=sys.stderr)
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="info")
    return 0
