"""Read-only commands: ``article``, ``status``, ``quarantine``, ``missing`` and ``settings``."""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Callable
from typing import Any

from litpulse.app.cli._common import (
    id_arg,
    int_arg,
    kv,
    pmid_arg,
    pmid_or_doi_arg,
    print_json,
    print_table,
    safe_text,
)
from litpulse.core.errors import ConfigError
from litpulse.core.settings import Settings, hide_password

__all__ = ["register"]


def register(sub: Any) -> None:
    p = sub.add_parser("article", help="show one stored article, by PMID or DOI")
    p.add_argument("pmid", type=pmid_or_doi_arg, metavar="PMID|DOI")
    p.add_argument("--json", action="store_true", help="every stored field as JSON")
    p.set_defaults(func=article)

    p = sub.add_parser("status", help="counts of the store and the latest ingest runs")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.add_argument("--runs", type=int_arg(0, 10_000), default=5, metavar="N",
                   help="runs to list (default 5)")
    p.set_defaults(func=status)

    p = sub.add_parser("quarantine", help="records that could not be parsed: what, why, where")
    p.add_argument("--json", action="store_true", help="print as JSON (with the raw XML)")
    p.add_argument("--limit", type=int_arg(1, 100_000), default=20, metavar="N",
                   help="entries (default 20)")
    p.add_argument("--all", action="store_true",
                   help="also the entries resolved since (a later record or deletion of their "
                        "PMID was stored)")  # fmt: skip
    p.add_argument("--pmid", type=pmid_arg, metavar="PMID",
                   help="only the entries of this PMID")
    p.add_argument("--run", type=id_arg, metavar="ID",
                   help="only those of this ingest run (`litpulse status` lists runs)")
    p.add_argument("--file", metavar="TEXT",
                   help="only those whose source (file, request) holds TEXT")
    p.add_argument("--before", type=id_arg, metavar="ID",
                   help="only entries older than ID: the next page after the last id shown")
    p.add_argument("--raw", type=id_arg, metavar="ID",
                   help="print entry ID's raw XML as it was met, nothing else "
                        "(`> bad.xml` keeps it for a bug report)")  # fmt: skip
    p.set_defaults(func=quarantine)

    p = sub.add_parser(
        "missing",
        help="PMIDs E-utilities listed but EFetch has not returned: owed (asked again by "
        "every E-utilities run) or given up",
    )
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.add_argument("--limit", type=int_arg(1, 100_000), default=50, metavar="N",
                   help="PMIDs (default 50)")
    p.set_defaults(func=missing)

    p = sub.add_parser(
        "settings", help="every setting: variable, current value, allowed range and help"
    )
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=settings_cmd)


def _store(settings: Settings) -> Any:
    from ingest.store import Store
    from litpulse.core.db import connect

    return Store(connect(settings))


def article(args: argparse.Namespace, settings: Settings) -> int:
    store = _store(settings)  # NotFoundError -> exit 1
    art = store.get_article(args.pmid) if isinstance(args.pmid, int) else (
        store.article_by_doi(args.pmid))
    if args.json:
        print_json(art)
        return 0
    flags = [f for f, on in (("DELETED", art["is_deleted"]), ("RETRACTED", art["is_retracted"]),
                             ("BOOK", art["is_book"])) if on]  # fmt: skip
    print(f"PMID {art['pmid']}  version {art['version']}  {' '.join(f'[{f}]' for f in flags)}")
    # stored text as the record had it: XML allows DEL and C1 controls, a terminal acts on them
    print(safe_text(art["title"] or "(no title)"))
    names = [a.get("name", "") for a in art["authors"]]
    if names:
        shown = ", ".join(names[:10]) + (f", … ({len(names)} authors)" if len(names) > 10 else "")
        print(safe_text(shown))
    where = ". ".join(
        str(x) for x in (art["journal"], art["pub_date_raw"] or art["pub_year"]) if x
    )
    print()
    pairs: list[tuple[str, Any]] = [("published", where or "-")]
    if art["doi"]:
        pairs.append(("doi", art["doi"]))
    if art.get("same_doi"):  # PubMed gave two records one DOI (an erratum, a duplicate)
        pairs.append(("same doi", ", ".join(f"PMID {p}" for p in art["same_doi"])))
    if art["pmcid"]:
        pairs.append(("pmc", art["pmcid"]))
    pairs += [
        ("best date", art["best_date"] or "-"),
        ("revised", art["date_revised"] or "-"),
        ("language", art["language"] or "-"),
        ("types", "; ".join(art["publication_types"]) or "-"),
        ("mesh", "; ".join(m["descriptor"] + ("*" if m["major"] else "") for m in art["mesh"])
         or "-"),  # fmt: skip
        ("references", len(art["references"])),
        ("cited in corpus", art["cited_by_in_corpus"]),
        ("citations", "-" if art["citation_count"] is None else art["citation_count"]),
        ("rcr", "-" if art["relative_citation_ratio"] is None else art["relative_citation_ratio"]),
        # how old the counts are (a snapshot's date, or the fetch that brought them), and
        # when iCite was last asked (a fetch without values moves only that)
        ("citations as of", art["icite_values_at"] or "-"),
        ("icite asked", art["icite_fetched_at"] or "-"),
        ("source", f"{art['source']['kind']} {art['source']['location']}"),
        ("updated", art["updated_at"]),
    ]
    if art["is_deleted"]:
        pairs.append(("deleted", art["deleted_at"]))
    bad = art.get("quarantined") or []
    if bad:  # what is shown may not be PubMed's newest: a revision could not be parsed
        newest = bad[0]
        pairs.append((
            "quarantine",
            f"{len(bad)} element(s) of this PMID could not be parsed, the newest from "
            f"{newest['source_location']} ({(newest['created_at'] or '')[:10]}): "
            f"`litpulse quarantine --pmid {art['pmid']}`",
        ))
    kv(pairs)
    if art["abstract"]:
        print()
        for para in art["abstract"].split("\n"):
            print(textwrap.fill(safe_text(para), width=100))
    return 0


def status(args: argparse.Namespace, settings: Settings) -> int:
    if args.runs < 0:
        raise ConfigError("--runs must be >= 0")
    st = _store(settings).status(runs=args.runs)
    st["database"] = hide_password(settings.effective_database_url)
    st["index"] = _index(settings)
    st["deliveries"] = _deliveries(settings)
    st.update(_nightly(settings))
    st["devices"] = _devices(settings)
    if args.json:
        print_json(st)
        return 0
    ix = st.pop("index")
    st["index"] = (
        f"{ix['version']} (model {ix['model_version']}, {ix['size']} vectors, "
        f"published {ix['published_at']})" if ix["version"] else None
    )
    if ix["problem"]:
        st["index problem"] = ix["problem"]
    if ix["reindex_pending"]:
        st["reindex pending"] = ix["reindex_pending"]
    st["deliveries"] = _deliveries_text(st.pop("deliveries"))
    nightly = st.pop("nightly")
    st["nightly"] = (
        f"{nightly['holder']} since {nightly['since'] or 'an unrecorded time'}, until "
        f"{nightly['until']} unless renewed" if nightly else "not running"
    )
    st["watermark"] = st.pop("watermark")  # where the next nightly window starts
    held = st.pop("held_windows")
    st["held windows"] = "; ".join(
        f"{w['window_start']} .. {w['window_end']} (run {w['run']}: {w['why']})" for w in held
    ) or "none"
    owed = st.pop("missing")
    st["missing"] = (
        f"{owed['waiting']} owed (asked again by every E-utilities run), "
        f"{owed['given_up']} given up" + (" (litpulse missing)" if any(owed.values()) else "")
    )
    devices = st.pop("devices")
    st["devices"] = "; ".join(
        f"{what} on {d['device']} ({d['why']})" if d["device"] else f"{what} refused ({d['why']})"
        for what, d in (("embedding and training", devices["torch"]),
                        ("FAISS", devices["faiss"]))
    )
    told = st.pop("alerts_owed")
    st["alerts owed"] = (
        f"{told} given-up PMID{'s' if told != 1 else ''} not yet alerted (the alert webhook "
        "did not take it): the next ingest posts it" if told else "none"
    )
    kv([(k, v if v is not None else "-") for k, v in st.items() if k != "last_runs"])
    runs = st["last_runs"]
    if runs:
        print()
        print_table(
            [
                (r["id"], r["source"], r["status"], (r["started_at"] or "")[:19], r["seconds"],
                 r["inserted"], r["updated"], r["unchanged"], r["deleted"], r["quarantined"],
                 r["missing"], _short(r["error"] or r["target"] or "", 40))
                for r in runs
            ],  # fmt: skip
            ["run", "source", "status", "started", "seconds", "ins", "upd", "same", "del",
             "quar", "miss", "target / error"],  # fmt: skip
        )
        from ingest.updatefiles import reissue_notes

        for r in runs:
            for note in reissue_notes(r["details"]):
                print(f"run {r['id']}: {note}")
    return 0


def _devices(settings: Settings) -> dict[str, Any]:
    """Where the stages run and why: torch (embedding, queries, training:
    :func:`ranking.embed.device_report`) and FAISS (:func:`ranking.faiss_ops.faiss_device`),
    as this process's settings and libraries decide."""
    from ranking.embed import device_report
    from ranking.faiss_ops import faiss_device

    return {"torch": device_report(settings), "faiss": faiss_device(settings)}


def _nightly(settings: Settings) -> dict[str, Any]:
    """Who runs the nightly chain now (its lease: holder, since, until; ``None``: no one),
    the watermark, and the E-utilities windows held from it
    (:func:`~litpulse.pipeline.planning.held_windows_past`)."""
    from litpulse.core.db import connect, live_lease
    from litpulse.core.timeutil import iso
    from litpulse.pipeline.nightly import LEASE_NAME
    from litpulse.pipeline.planning import held_windows_past, last_watermark

    engine = connect(settings)
    lease = live_lease(engine, LEASE_NAME)
    mark = last_watermark(settings, engine)  # once: held_windows would work it out again
    return {
        "nightly": None if lease is None else lease.to_dict(),
        "watermark": iso(mark),
        "held_windows": held_windows_past(mark, engine),
    }


def _deliveries(settings: Settings) -> dict[str, Any]:
    """What the digest's channels have not delivered yet (:func:`delivery_status`)."""
    from litpulse.core.db import connect
    from litpulse.pipeline.digest import delivery_status

    return delivery_status(settings, connect(settings))


def _deliveries_text(channels: dict[str, Any]) -> str:
    """``webhook 3 pending, 1 refused by the receiver of 2 search(es), the oldest found
    2026-12-04T09:30 (retried by each digest: …)``, per configured channel."""
    if not channels:
        return "no channel configured (the Atom feeds only)"
    parts = []
    for channel, c in channels.items():
        if not c["pending"]:
            parts.append(f"{channel} none pending")
            continue
        refused = f", {c['refused']} refused by the receiver" if c["refused"] else ""
        parts.append(f"{channel} {c['pending']} pending{refused} of {c['searches']} "
                     f"search(es), the oldest found {c['oldest_found_at'][:16]}")  # fmt: skip
    return "; ".join(parts) + (" (retried by each digest: `litpulse alerts run`)"
                               if any(c["pending"] for c in channels.values()) else "")  # fmt: skip


def _index(settings: Settings) -> dict[str, Any]:
    """The published index version (``version`` is ``None`` before the first one), and
    why a re-index for the active model is pending (``None``: none is)."""
    from litpulse.pipeline.planning import reindex_pending
    from ranking.index_status import index_status

    ix = index_status(settings)
    return {
        "version": ix["published"],
        "model_version": ix["model_version"],
        "active_model": ix["active_model"],
        "size": ix["size"],
        "published_at": ix["published_at"],
        "pending_embeddings": ix["pending_embeddings"],
        "problem": ix["problem"],  # why searches fail now, and what repairs it
        "reindex_pending": reindex_pending(settings),
    }


def quarantine(args: argparse.Namespace, settings: Settings) -> int:
    store = _store(settings)
    if args.raw is not None:
        raw = store.quarantine_entry(args.raw)["raw_xml"]  # NotFoundError: exit 1
        # as met, for a file or a pipe; on a terminal its control characters are shown
        sys.stdout.write(safe_text(raw) if sys.stdout.isatty() else raw)
        return 0
    shown: list[dict[str, Any]] = []

    def fetch(n: int) -> list[dict[str, Any]]:
        shown[:] = store.quarantined(n, resolved=args.all, pmid=args.pmid, run_id=args.run,
                                     location=args.file, before=args.before)  # fmt: skip
        return shown

    code = _listing(
        args, fetch,
        "nothing in quarantine needs attention" + ("" if args.all else
                                                   " (--all lists resolved entries too)"),
        lambda r: (r["id"], r["pmid"] or "-", _short(r["reason"], 60),
                   r["source_location"] + (f":{r['line']}" if r["line"] else ""),
                   (r["created_at"] or "")[:19],
                   f"resolved {r['resolved_at'][:10]}" if r["resolved_at"] else "open"),
        ["id", "pmid", "why", "from", "when", "state"],
    )  # fmt: skip
    if len(shown) == args.limit:  # maybe more: say how to see them (stderr: JSON stays JSON)
        print(f"more may follow: add --before {shown[-1]['id']}", file=sys.stderr)
    return code


def missing(args: argparse.Namespace, settings: Settings) -> int:
    return _listing(
        args, _store(settings).missing_pmids, "no PMID is missing",
        lambda r: (r["pmid"], "given up" if r["given_up"] else "owed", r["tries"],
                   _short(r["first_missing_in"], 50), (r["last_asked_at"] or "")[:19]),
        ["pmid", "state", "asks", "first missing in", "last asked"],
    )  # fmt: skip


def _listing(
    args: argparse.Namespace,
    fetch: Callable[[int], list[dict[str, Any]]],
    empty: str,
    row: Callable[[dict[str, Any]], tuple[Any, ...]],
    headers: list[str],
) -> int:
    """A listing command: ``--limit`` rows of ``fetch``, as JSON or a table (or ``empty``)."""
    if args.limit <= 0:
        raise ConfigError("--limit must be positive")
    rows = fetch(args.limit)
    if args.json:
        print_json(rows)
    elif not rows:
        print(empty)
    else:
        print_table([row(r) for r in rows], headers)
    return 0


def settings_cmd(args: argparse.Namespace, settings: Settings) -> int:
    rows = settings.describe()
    if args.json:
        print_json(rows)
        return 0
    print_table(
        [(r["env"], r["value"], r["range"], r["help"]) for r in rows],
        ["variable", "value", "range", "help"],
    )
    return 0


def _short(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"
