"""Benchmark: litpulse's PubMed parser against pubmed_parser, Bio.Entrez and bare lxml.

Generates a corpus file (``litpulse.app.demo.generate``, cached in ``--workdir``) and runs every
parser in its own subprocess, so the peak RSS (the child's ``VmHWM``; ``ru_maxrss``
where /proc is missing) belongs to one parser alone. Each child reports wall time, CPU
time (user + system, all threads) and peak RSS; the table gives articles/s on both
clocks and the ratios of ours against each. A second run of ours on a file twice as
large shows that memory stays flat.

    python -m bench.parse --records 20000

Parsers:

* ``litpulse`` — ``ingest.parse.iter_items``: every Record field (with the compiled
  article reader, ``ingest/_cfields.pyx``, when ``pip install -e .`` built it).
* ``litpulse_pure`` — the same with the compiled reader hidden: the pure-Python reader.
* ``litpulse_threaded`` — the same with ``threaded=True`` (libxml2 in a helper thread).
* ``--before PATH`` adds a row for the parser of another checkout (e.g. ``/work/main``),
  run in the same way, for a before/after table from one run.
* ``pubmed_parser`` — ``parse_medline_xml`` with every option on (authors and
  references as lists, full dates, NLM categories, MeSH subterms); ``pubmed_parser
  (defaults)`` with its defaults.
* ``Bio.Entrez.parse`` — Entrez.parse refuses PubmedArticleSet under the 2018+ DTDs
  (``((PubmedArticle|PubmedBookArticle)+, DeleteCitation?)`` is not a "list" to it),
  so it reads a copy whose DOCTYPE names biopython's bundled ``pubmed_150101.dtd``
  (no DTD download; the trailing DeleteCitation dropped; ``validate=False`` for the
  elements newer than that DTD).
* ``bare lxml`` — ``gzip.open`` + ``etree.iterparse(tag="PubmedArticle")`` reading only
  PMID, title and abstract, clearing elements as it goes.

Timings are never part of the test run; this prints a markdown table.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

PARSERS = (
    "litpulse",
    "litpulse_pure",
    "litpulse_threaded",
    "pubmed_parser",
    "pubmed_parser_defaults",
    "biopython",
    "bare_lxml",
)
LABELS = {
    "litpulse": "litpulse iter_items (every field)",
    "litpulse_pure": "litpulse iter_items, pure-Python reader (every field)",
    "litpulse_threaded": "litpulse iter_items(threaded=True): libxml2 in a helper thread",
    "pubmed_parser": "pubmed_parser.parse_medline_xml (all options)",
    "pubmed_parser_defaults": "pubmed_parser.parse_medline_xml (defaults)",
    "biopython": "Bio.Entrez.parse",
    "bare_lxml": "bare lxml iterparse (PMID/title/abstract)",
}


# --------------------------------------------------------------------------- children


def _run_litpulse(path: str) -> int:
    from ingest.fields import COMPILED
    from ingest.parse import iter_items

    if "pure" not in os.environ.get("BENCH_PARSER", "") and not COMPILED:
        sys.stderr.write("note: the compiled reader is not built (pip install -e .)\n")
    from ingest.records import Record

    n = 0
    threaded = "threaded" in os.environ.get("BENCH_PARSER", "")
    for item in iter_items(path, threaded=threaded):
        n += isinstance(item, Record)
    return n


def _run_pubmed_parser(path: str, full: bool = True) -> int:
    import pubmed_parser as pp

    kwargs = (
        {
            "year_info_only": False,
            "nlm_category": True,
            "author_list": True,
            "reference_list": True,
            "parse_downto_mesh_subterms": True,
        }
        if full
        else {}
    )
    n = 0
    for _d in pp.parse_medline_xml(path, **kwargs):
        n += 1
    return n


def _run_biopython(path: str) -> int:
    from Bio import Entrez

    n = 0
    with open(path, "rb") as fh:
        for _rec in Entrez.parse(fh, validate=False):
            n += 1
    return n


def _run_bare(path: str) -> int:
    from lxml import etree

    n = 0
    with gzip.open(path, "rb") as fh:
        for _ev, el in etree.iterparse(
            fh, events=("end",), tag="PubmedArticle", resolve_entities=False, huge_tree=True
        ):
            mc = el.find("MedlineCitation")
            if mc is not None:
                _pmid = mc.findtext("PMID")
                _title = "".join(mc.find("Article/ArticleTitle").itertext())
                _abstract = [
                    "".join(a.itertext()) for a in mc.iterfind("Article/Abstract/AbstractText")
                ]
            n += 1
            el.clear()
            while el.getprevious() is not None:
                del el.getparent()[0]
    return n


CHILDREN: dict[str, Callable[[str], int]] = {
    "litpulse": _run_litpulse,
    "litpulse_pure": _run_litpulse,
    "litpulse_threaded": _run_litpulse,
    "pubmed_parser": _run_pubmed_parser,
    "pubmed_parser_defaults": lambda p: _run_pubmed_parser(p, full=False),
    "biopython": _run_biopython,
    "bare_lxml": _run_bare,
}


IMPORTS: dict[str, tuple[str, ...]] = {
    "litpulse": ("ingest.parse",),
    "litpulse_pure": ("ingest.parse",),
    "litpulse_threaded": ("ingest.parse",),
    "pubmed_parser": ("pubmed_parser",),
    "pubmed_parser_defaults": ("pubmed_parser",),
    "biopython": ("Bio.Entrez",),
    "bare_lxml": ("lxml.etree", "gzip"),
}


def _child(name: str, path: str) -> None:
    os.environ["BENCH_PARSER"] = name
    if name == "litpulse_pure":  # as if ingest/_cfields.pyx had not been built
        sys.modules["ingest._cfields"] = None  # type: ignore[assignment]
    # Import what this parser needs first (and nothing else): only parsing is timed.
    for module in IMPORTS[name]:
        __import__(module)
    t0, c0 = time.perf_counter(), time.process_time()
    n = CHILDREN[name](path)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    rss_mb = peak_rss_kb() / 1024
    sys.stdout.write(json.dumps({"n": n, "wall": wall, "cpu": cpu, "rss_mb": rss_mb}))


def scratch_home(prefix: str) -> Path:
    """A fresh temporary folder for a benchmark child's data, removed when the child exits
    (a benchmark run leaves no store or index behind in the temporary folder)."""
    import atexit
    import shutil

    home = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    return home


def peak_rss_kb() -> float:
    """Peak RSS of this process image: VmHWM (ru_maxrss on Linux also counts the parent's
    memory at fork time, which would put every child at the parent's size)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1])
    except OSError:
        pass
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


# --------------------------------------------------------------------------- parent


def corpus_file(workdir: Path, records: int, seed: int) -> Path:
    from litpulse.app.demo.generate import generate_corpus

    out = workdir / f"corpus-{records}-{seed}"
    path = out / "pubmed26n0001.xml.gz"
    if not path.exists():
        generate_corpus(out, n_records=records, n_files=1, seed=seed)
    return path


def _biopython_copy(path: Path) -> Path:
    """The same file with biopython's list-type pubmed_150101.dtd and no DeleteCitation."""
    out = path.with_name("biopython-" + path.name.removesuffix(".gz"))
    if out.exists():
        return out
    doctype = re.compile(rb"<!DOCTYPE[^>]*>")
    with gzip.open(path, "rb") as src, open(out, "wb") as dst:
        head = src.readline() + src.readline()
        dst.write(
            doctype.sub(
                b'<!DOCTYPE PubmedArticleSet PUBLIC "-//NLM//DTD PubMedArticle, 1st January '
                b'2015//EN" "https://dtd.nlm.nih.gov/ncbi/pubmed/out/pubmed_150101.dtd">',
                head,
            )
        )
        for line in src:
            if not line.startswith(b"<DeleteCitation>"):
                dst.write(line)
    return out


def _measure(
    name: str, path: Path, timeout: float, tree: Path | None = None
) -> dict[str, float] | str:
    here = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-P", "-m", "bench.parse", "--child", name, str(path)]
    # --before: the parser of another checkout, with this checkout's bench module (-P:
    # the working directory is not put first on sys.path)
    env = dict(os.environ, PYTHONPATH=f"{tree}:{here}" if tree else str(here))
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout:.0f} s"
    if res.returncode != 0:
        return (res.stderr.strip().splitlines() or ["failed"])[-1]
    data: dict[str, float] = json.loads(res.stdout.strip().splitlines()[-1])
    return data


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the markdown table."""
    ap = argparse.ArgumentParser(prog="python -m bench.parse", description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "litpulse-bench")
    ap.add_argument("--repeat", type=int, default=1, help="runs per parser; the best is kept")
    ap.add_argument("--only", nargs="*", choices=PARSERS, default=list(PARSERS))
    ap.add_argument("--timeout", type=float, default=1800.0)
    ap.add_argument(
        "--before",
        type=Path,
        help="another checkout (e.g. main) whose parser is measured as a 'before' row",
    )
    ap.add_argument("--child", nargs=2, metavar=("PARSER", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(*args.child)
        return 0

    args.workdir.mkdir(parents=True, exist_ok=True)
    path = corpus_file(args.workdir, args.records, args.seed)
    size_mb = path.stat().st_size / 2**20
    with gzip.open(path, "rb") as fh:
        raw_mb = sum(len(b) for b in iter(lambda: fh.read(1 << 22), b"")) / 2**20
    sys.stdout.write(
        f"corpus: {path} ({args.records} records, {size_mb:.1f} MiB gz, {raw_mb:.1f} MiB XML)\n"
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f} at start\n\n"
    )
    results: dict[str, dict[str, float] | str] = {}
    names = list(args.only)
    if args.before is not None:
        names.insert(1, "before")
        LABELS["before"] = f"litpulse iter_items at {args.before} (before)"
    for name in names:
        target = _biopython_copy(path) if name == "biopython" else path
        best: dict[str, float] | str = "not run"
        for _ in range(args.repeat):
            if name == "before":
                r = _measure("litpulse", target, args.timeout, tree=args.before)
            else:
                r = _measure(name, target, args.timeout)
            if isinstance(r, str):
                best = r
                break
            if isinstance(best, str) or r["cpu"] < best["cpu"]:
                best = r
        results[name] = best
        sys.stderr.write(f"{name}: {best}\n")

    ours = results.get("litpulse")
    rows = [
        "| parser | items | wall s | CPU s | articles/s (wall) | articles/s (CPU) "
        "| peak RSS MiB | ours ÷ it (CPU) | ours ÷ it (wall) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in names:
        r = results[name]
        if isinstance(r, str):
            rows.append(f"| {LABELS[name]} | — | — | — | — | — | — | {r} | |")
            continue
        ratio_cpu = ratio_wall = "—"
        if isinstance(ours, dict) and name != "litpulse":
            ratio_cpu = f"{(ours['n'] / ours['cpu']) / (r['n'] / r['cpu']):.2f}×"
            ratio_wall = f"{(ours['n'] / ours['wall']) / (r['n'] / r['wall']):.2f}×"
        rows.append(
            f"| {LABELS[name]} | {r['n']:.0f} | {r['wall']:.2f} | {r['cpu']:.2f} "
            f"| {r['n'] / r['wall']:,.0f} | {r['n'] / r['cpu']:,.0f} | {r['rss_mb']:.0f} "
            f"| {ratio_cpu} | {ratio_wall} |"
        )
    sys.stdout.write("\n".join(rows) + "\n")

    if "litpulse" in args.only:
        double = corpus_file(args.workdir, 2 * args.records, args.seed)
        r2 = _measure("litpulse", double, args.timeout)
        if isinstance(r2, dict) and isinstance(ours, dict):
            sys.stdout.write(
                f"\nRSS flatness (litpulse): {args.records} records → {ours['rss_mb']:.0f} MiB; "
                f"{2 * args.records} records → {r2['rss_mb']:.0f} MiB "
                f"({r2['n'] / r2['cpu']:,.0f} articles/s CPU)\n"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
