"""Benchmark: what the retired ``(kind, term)`` index cost ``article_terms`` as the table grows.

Issue 12 ("PubMed at full size"). ``article_terms`` takes ~6.7 rows per record: 255
million at the full baseline. Until 2026-12-05 it carried, beside its primary key
``(pmid, kind, term)``, an index over ``(kind, term)`` that no query read (every filter
reaches a candidate's terms by its PMID). The 20k-record ingest bench (``bench.ingest``)
starts from an empty table, where that index is cheap; this one shows what it cost as the
table grows toward baseline size.

Two stores are made with the real schema (:data:`litpulse.core.schema.metadata`), one of
them given the retired index back (:data:`litpulse.core.schema.RETIRED_INDEXES`), and the
same term rows are written to both through the store's own bulk path
(:func:`litpulse.core.db.insert_tuples`: ``COPY`` on PostgreSQL, ``executemany`` on
SQLite), :data:`BATCH` records per transaction as the store does, the two interleaved
batch by batch. The rows: per record its language (mostly ``eng``), 1–2 publication types
of 60 and 4–6 MeSH descriptors drawn from 30,000 with a Zipf-like law (a few, like
*Humans*, on most records), with a major flag: ~6.2 rows per record (the generated corpus
of ``bench.ingest`` has 6.6). Each table row gives the seconds per million rows written in
one stretch of the table's growth, for both stores and their ratio, and at the end the size
of the table, its primary key and the retired index (PostgreSQL). Never pass/fail; the
machine is shared, so the load average is printed.

    python -m bench.terms --records 600000
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.ingest import PG_ADMIN_URL, scratch_database

#: Records written per transaction (the store's default ``LITPULSE_STORE_BATCH``).
BATCH = 5000
#: MeSH descriptors and publication types to draw from (MeSH has ~30,000 descriptors).
MESH, PTYPES = 30_000, 60


def term_rows(first: int, count: int, rng: random.Random) -> list[tuple[Any, ...]]:
    """The term rows of records ``first .. first + count - 1`` (pmid, kind, term, major)."""
    rows: list[tuple[Any, ...]] = []
    for pmid in range(first, first + count):
        rows.append((pmid, "lang", "eng" if rng.random() < 0.9 else "fre", False))
        for p in sorted(rng.sample(range(PTYPES), rng.choice((1, 1, 2)))):
            rows.append((pmid, "ptype", f"Publication Type {p:02d}", False))
        # Zipf-like: rank r drawn with weight ~1/r (paretovariate), so low ranks dominate
        mesh = {min(int(rng.paretovariate(0.6)), MESH) for _ in range(rng.randint(4, 6))}
        for m in sorted(mesh):
            rows.append((pmid, "mesh", f"Descriptor {m:05d}", rng.random() < 0.25))
    return rows


def run(kind: str, records: int, stretches: int, admin_url: str, seed: int) -> list[str]:
    """Markdown rows: seconds per million rows, stretch by stretch, with and without."""
    out: list[str] = []
    with tempfile.TemporaryDirectory(prefix="litpulse-terms-") as tmp:
        where = argparse.Namespace(workdir=Path(tmp), pg_admin_url=admin_url)
        with scratch_database(f"{kind}-without", where) as url_new, \
                scratch_database(f"{kind}-with", where) as url_old:  # fmt: skip
            out += _run(kind, records, stretches, seed, url_new, url_old, Path(tmp))
    return out


def _run(kind: str, records: int, stretches: int, seed: int, url_new: str, url_old: str,
         tmp: Path) -> list[str]:
    from sqlalchemy import text
    from tqdm import tqdm

    from litpulse.core import db
    from litpulse.core.schema import RETIRED_INDEXES, article_terms
    from litpulse.core.settings import Settings

    (table, index), = [r for r in RETIRED_INDEXES if r[0] == "article_terms"]
    columns = ("pmid", "kind", "term", "major")
    out: list[str] = []
    engines = {}
    for label, url in (("without", url_new), ("with", url_old)):
        engines[label] = db.connect(Settings.from_env({}, home=tmp, database_url=url))
    with engines["with"].begin() as conn:  # the store as it was before the retirement
        conn.execute(text(f"CREATE INDEX {index} ON {table} (kind, term)"))
    spent = {"with": 0.0, "without": 0.0}
    rows_done = 0
    per_stretch = -(-records // stretches // BATCH) * BATCH  # whole batches, ≤ stretches rows
    rng = random.Random(seed)
    start = 1
    mark = 0
    bar = tqdm(total=records, unit="rec", desc=kind)
    while start <= records:
        n = min(BATCH, records - start + 1)
        batch = term_rows(start, n, rng)
        order = ("with", "without") if start // BATCH % 2 else ("without", "with")
        for label in order:
            t0 = time.perf_counter()
            with engines[label].begin() as conn:
                db.insert_tuples(conn, article_terms, columns, batch)
            spent[label] += time.perf_counter() - t0
        rows_done += len(batch)
        start += n
        bar.update(n)
        if start - 1 - mark >= per_stretch or start > records:
            m = rows_done / 1e6
            w, wo = spent["with"] / m, spent["without"] / m
            out.append(f"| {kind} | {mark:,}–{start - 1:,} | {rows_done:,} | {w:.2f} | "
                       f"{wo:.2f} | {w / wo:.2f}× |")
            spent = {"with": 0.0, "without": 0.0}
            rows_done = 0
            mark = start - 1
    bar.close()
    if kind == "postgresql":
        with engines["with"].connect() as conn:
            sizes = conn.execute(text(
                "SELECT pg_relation_size('article_terms'), "
                "pg_relation_size('article_terms_pkey'), pg_relation_size(:ix)"
            ), {"ix": index}).one()  # fmt: skip
        out.append(f"| {kind}: sizes at {records:,} records | table {sizes[0] / 2**20:.0f} "
                   f"MiB | primary key {sizes[1] / 2**20:.0f} MiB | retired index "
                   f"{sizes[2] / 2**20:.0f} MiB | | |")
    db.dispose_engines()
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=600_000)
    p.add_argument("--stretches", type=int, default=4, help="rows of the table per database")
    p.add_argument("--only", nargs="*", choices=("postgresql", "sqlite"),
                   default=["postgresql", "sqlite"])
    p.add_argument("--pg-admin-url", default=PG_ADMIN_URL)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    print(f"load average at start: {'/'.join(f'{x:.1f}' for x in os.getloadavg())}")
    lines = ["| store | records (stretch) | rows written | s per million rows, with the "
             "retired (kind, term) index | without (today's schema) | with ÷ without |",
             "|---|---|---:|---:|---:|---:|"]
    for kind in args.only:
        lines += run(kind, args.records, args.stretches, args.pg_admin_url, args.seed)
    print("\n".join(lines))
    print(f"load average after: {'/'.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
