"""``litpulse search`` and ``litpulse serve``: query the index, or serve the API and page."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from litpulse.app.cli._common import (
    add_filter_args,
    add_json,
    command,
    filters_from_args,
    fixed,
    int_arg,
    positive_int,
    print_json,
    print_table,
    safe_text,
)
from litpulse.core.settings import Settings

#: Most results one ``litpulse search`` lists (``-k``). More than the API's deepest page
#: (offset 1,000 + 100) and its largest export (500), so the CLI still lists what paging
#: cannot reach; bounded because the results are ranked block by block
#: (``rerank_candidates`` each, every block a deeper candidate search): an unbounded
#: ``-k`` walks the whole index, ever deeper, before it prints anything.
MAX_K = 10_000


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
    p.add_argument("query", help="words to search for, quoted as one argument; a phrase in "
                   "double quotes inside it is required ('\"heart failure\" outcomes'), a "
                   "word or phrase after a capital NOT excluded ('COPD NOT asthma'), an "
                   "author required ('asthma AND Smith J[au]', [1au], [lastau]); PubMed's "
                   "other field tags and word* are refused (see the README)")
    p.add_argument("-k", type=_result_count, default=10,
                   help=f"number of results (default 10, at most {MAX_K:,})")
    add_filter_args(p)
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
    s.add_argument("--port", type=int_arg(1, 65535), default=8000, help="port (default 8000)")


def _result_count(text: str) -> int:
    """``-k``: 1 to :data:`MAX_K`."""
    return positive_int(text, most=MAX_K)


def run_search_cmd(args: argparse.Namespace, settings: Settings) -> int:
    from ranking.scoring import ScoringOptions

    filters = filters_from_args(args)
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
    data = search_via_server(settings, args, filters, options)
    if data is None:
        from ranking.search import run_search

        # offset 0: the first page, ranked exactly as `GET /search` ranks it for a server
        result = run_search(settings, args.query, k=args.k, filters=filters, options=options,
                            mode=args.mode, sort=args.sort, offset=0)
        data = result.to_dict()
    if args.json:
        if not args.explain:
            for hit in data["results"]:
                hit["explanation"] = hit["explanation"]["text"]
        print_json(data)
        return 0
    for note in data.get("notes") or ():  # what the query does not do, as it may seem to
        print(f"note: {safe_text(note)}", file=sys.stderr)
    hits = data["results"]
    if not hits:  # the answer may be a server's: its text escaped, as every output
        print(safe_text("no results"
                        + "".join(f"; excluding {w!r}" for w in data.get("excluded") or ())
                        + ("; authors " + ", ".join(data["authors"])
                           if data.get("authors") else "")),
              file=sys.stderr)  # fmt: skip
        return 0
    rows = [
        (
            n,
            h["pmid"],
            fixed(h['score']),
            fixed(h['similarity']),
            "" if h.get("bm25") is None else f"{h['bm25']:.2f}",
            f"{h['recency']:.2f}",
            f"{h['citation']:.2f}",
            h.get("published") or h["best_date"] or h["pub_year"] or "",
            ("[retracted] " if h.get("retracted") or h["explanation"].get("retracted")
             else "") + _cut(h["title"], 70),
        )
        for n, h in enumerate(hits, start=1)
    ]
    print_table(rows, ["#", "pmid", "score", "sim", "bm25", "rec", "cit", "date", "title"])
    o, mode = data["options"], data["mode"]
    w, lam = o["w_similarity"], o["lexical_share"]
    relevance = (f"{w:g}*sim" if mode == "semantic" else f"{w:g}*lex" if mode == "lexical"
                 else f"{w:g}*({1 - lam:g}*sim + {lam:g}*lex) [{o['fusion']}]")
    print(safe_text(
        f"\nindex {data['index_version']} (model {data['model_version']}); mode {mode}; "
        f"{data['candidates']} candidates re-ranked; "
        f"score = {relevance} + {o['w_recency']:g}*rec + "
        f"{o['w_citation']:g}*cit, half-life {o['half_life_days']:g} days"
        + ("; sorted by date" if data["sort"] == "date" else "")
        + "".join(f"; excluding {w!r}" for w in data.get("excluded") or ())
        + ("; authors " + ", ".join(data["authors"]) if data.get("authors") else "")
    ))
    if args.explain:
        for n, h in enumerate(hits, start=1):
            print(safe_text(f"\n{n}. PMID {h['pmid']}: {h['explanation']['text']}"))
            for name, comp in h["explanation"]["components"].items():
                print(safe_text(f"   {name:<10} {comp['text']}"))
            if h["explanation"].get("retracted"):
                print("   (retracted)")
    return 0


#: Seconds to wait for a running server to accept the connection (then: in process).
CONNECT_TIMEOUT_S = 1.0
#: Seconds a server that accepted may take to answer: its first search loads the model,
#: which searching in process would have to do as well.
ANSWER_TIMEOUT_S = 300.0


def search_via_server(
    settings: Settings, args: argparse.Namespace, filters: Any, options: Any
) -> dict[str, Any] | None:
    """The answer of a running ``litpulse serve`` (model already loaded), or ``None``.

    Asks ``settings.search_server_url`` with the CLI's own filters and effective scoring
    options. ``None`` (search in process) when it is empty, ``-k`` is more than a page of
    ``GET /search`` (:data:`ranking.search.MAX_PAGE`), nothing accepts the connection
    within :data:`CONNECT_TIMEOUT_S`, the server answers an error or something that is no
    litpulse answer (another program on the port: no JSON object), or it serves another
    index than this store's published one (another ``LITPULSE_HOME``). Says on stderr
    which path answered.
    """
    import http.client
    import json
    import time
    import urllib.parse

    from ranking.search import MAX_PAGE

    base = settings.search_server_url
    if not base:
        return None
    if args.k > MAX_PAGE:  # GET /search would refuse it (422): not asked
        print(f"litpulse: -k {args.k} is more than a server's page of {MAX_PAGE}: searching "
              "in process (loading the model takes a while)", file=sys.stderr)
        return None
    url = urllib.parse.urlsplit(base)
    params: list[tuple[str, Any]] = [
        ("q", args.query), ("k", args.k), ("include_retracted", filters.include_retracted),
        ("w_sim", options.w_similarity), ("w_recency", options.w_recency),
        ("w_citation", options.w_citation), ("half_life", options.half_life_days),
        ("mode", args.mode), ("sort", args.sort),
    ]
    if options.lexical_asked or args.mode == "hybrid":
        # the CLI's λ where a hybrid search ranks by it, and where asked: a λ sent is a λ
        # asked to the server, whose note on one its search does not use is then the CLI's
        params.append(("w_lexical", options.lexical_share))
    params += [("mesh", m) for m in filters.mesh] + [("type", t) for t in filters.publication_type]
    for name in ("since", "until", "language", "has_abstract"):
        value = getattr(filters, name)
        if value is not None:
            params.append((name, value.isoformat() if hasattr(value, "isoformat") else value))
    path = url.path.rstrip("/") + "/search?" + urllib.parse.urlencode(
        [(k, str(v).lower() if isinstance(v, bool) else v) for k, v in params]
    )
    cls = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
    started = time.perf_counter()
    conn = cls(url.hostname or "127.0.0.1", url.port, timeout=CONNECT_TIMEOUT_S)
    try:
        conn.connect()
        conn.sock.settimeout(ANSWER_TIMEOUT_S)
        conn.request("GET", path, headers={"Accept": "application/json"})
        answer = conn.getresponse()
        body = answer.read()
    except (OSError, http.client.HTTPException):
        print(f"litpulse: no server at {base}: searching in process (loading the model takes "
              "a while; `litpulse serve` keeps it loaded)", file=sys.stderr)
        return None
    finally:
        conn.close()
    if answer.status != 200:
        detail = safe_text(body[:200].decode("utf-8", "replace"))  # whatever answers there
        print(f"litpulse: the server at {base} answered {answer.status} ({detail}): searching "
              "in process", file=sys.stderr)
        return None
    try:
        data = json.loads(body)
    except ValueError:  # not JSON (UnicodeDecodeError is one): an HTML page, say
        data = None
    if not isinstance(data, dict):
        print(f"litpulse: what answers at {base} is no litpulse server (its answer is no JSON "
              "object): searching in process", file=sys.stderr)
        return None
    published = _published_index_id(settings)
    if data.get("index_version") != published:
        served = safe_text(str(data.get("index_version")))
        print(f"litpulse: the server at {base} serves index {served}, this "
              f"store publishes {published}: searching in process", file=sys.stderr)
        return None
    differs = _options_differ(data.get("options"), options.to_dict(), mode=args.mode)
    if differs:
        print(f"litpulse: the server at {base} ranks with other options ({differs}): "
              "searching in process", file=sys.stderr)
        return None
    print(f"litpulse: answered by the server at {base} in "
          f"{time.perf_counter() - started:.2f} s", file=sys.stderr)
    return data


def _options_differ(served: Any, ours: dict[str, Any], *, mode: str = "hybrid") -> str:
    """The scoring options (``ScoringOptions.to_dict``) a server's answer was ranked with
    that are not this CLI's — the fusion and its k come from each side's own settings, the
    query sends the rest — as ``name server≠ours`` text; empty when all agree. The fusion
    counts in hybrid mode only, its k only when both sides fuse by rank (rrf)."""
    import math

    if not isinstance(served, dict):
        return "none given"
    ignored = {"today"}
    if mode != "hybrid":
        ignored |= {"fusion", "rrf_k"}
    elif not (ours.get("fusion") == served.get("fusion") == "rrf"):
        ignored.add("rrf_k")
    out = []
    for name, want in ours.items():
        if name in ignored:
            continue
        got = served.get(name)
        same = (
            isinstance(got, int | float) and not isinstance(got, bool)
            and math.isclose(float(got), float(want), rel_tol=1e-9, abs_tol=1e-12)
        ) if isinstance(want, int | float) and not isinstance(want, bool) else got == want
        if not same:
            out.append(f"{name} {got!r}≠{want!r}")
    return ", ".join(out)


def _published_index_id(settings: Settings) -> str | None:
    from litpulse.core.db import connect
    from ranking.models import published_index_row

    row = published_index_row(connect(settings))
    return None if row is None else str(row.id)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def run_serve(args: argparse.Namespace, settings: Settings) -> int:
    """Serve the API and page, ready first (:func:`litpulse.app.api.prepare_to_serve`)."""
    import logging

    import uvicorn

    from litpulse.app.api import create_app, prepare_to_serve

    if args.host not in ("127.0.0.1", "localhost", "::1"):
        logging.getLogger(__name__).warning(
            "serving on %s: searches are open to anyone who reaches it (writes need a "
            "token from `litpulse tokens create`); rate limits are per client address",
            args.host,
        )
    app = create_app(settings)
    ready = prepare_to_serve(settings)
    loaded = f"index {ready} loaded" if ready else "no index published yet"
    print(
        f"litpulse: serving on http://{args.host}:{args.port}/ ({loaded}; Ctrl-C stops)",
        file=sys.stderr,
    )
    # the client is the socket's peer: an X-Forwarded-For is anyone's to write (trusted, a
    # client of the default 127.0.0.1 server would name a new address each request and
    # pass the per-client rate limit; behind a proxy, all its clients share one bucket)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", proxy_headers=False)
    return 0
