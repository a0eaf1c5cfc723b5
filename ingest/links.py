"""Article links: MeSH/publication-type terms, references and in-corpus citation counts.

``article_terms`` and ``references`` are replaced for every changed article and kept
only for live ones; ``cited_by_in_corpus`` moves by deltas in the same transaction
(:func:`replace_links`), and :func:`recompute_cited_by` recounts from scratch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import Table, bindparam, delete, func, select, update
from sqlalchemy.engine import Connection

from ingest.records import Record
from litpulse.core.schema import article_terms, articles, references

__all__ = ["IN_CHUNK", "chunks", "recompute_cited_by", "replace_links"]

#: Largest IN (...) list per statement (SQLite allows 32766 bound parameters).
IN_CHUNK = 5000
_TERM_MAX = 255

_SET_CITED_BY = (
    update(articles)
    .where(articles.c.pmid == bindparam("b_pmid"))
    .values(cited_by_in_corpus=bindparam("b_n"))
)

_ADD_CITED_BY = (
    update(articles)
    .where(articles.c.pmid == bindparam("b_pmid"))
    .values(cited_by_in_corpus=articles.c.cited_by_in_corpus + bindparam("b_n"))
)


def replace_links(
    conn: Connection,
    stored_changed: set[int],
    live: dict[int, Record],
    was_live: set[int],
) -> None:
    """Replace terms and references of changed articles; keep ``cited_by_in_corpus``.

    Args:
        conn: The batch's connection.
        stored_changed: Changed PMIDs that had a row before the batch (their old
            links are removed; new PMIDs have none).
        live: The changed PMIDs that end the batch live, with their record.
        was_live: PMIDs that were live before the batch.

    The in-corpus counts move by deltas: -1 for each reference of an article that
    was live before, +1 for each reference of an article live now. An article that
    becomes live in this batch gets its own count recounted from ``references``.
    """
    delta: dict[int, int] = {}
    for chunk in chunks(sorted(stored_changed)):
        old = conn.execute(
            select(references.c.citing_pmid, references.c.cited_pmid).where(
                references.c.citing_pmid.in_(chunk)
            )
        ).all()
        for citing, cited in old:
            if citing in was_live:
                delta[cited] = delta.get(cited, 0) - 1
        conn.execute(delete(references).where(references.c.citing_pmid.in_(chunk)))
        conn.execute(delete(article_terms).where(article_terms.c.pmid.in_(chunk)))
    term_rows: list[tuple[Any, ...]] = []
    ref_rows: list[tuple[Any, ...]] = []
    for pmid, rec in live.items():
        terms: dict[tuple[str, str], bool] = {}
        for m in rec.mesh:
            key = ("mesh", m.descriptor[:_TERM_MAX])
            terms[key] = terms.get(key, False) or m.major
        for pt in rec.publication_types:
            terms.setdefault(("ptype", pt[:_TERM_MAX]), False)
        term_rows.extend((pmid, k, t, major) for (k, t), major in terms.items())
        for cited in sorted({c for c in rec.references if c != pmid}):
            ref_rows.append((pmid, cited))
            delta[cited] = delta.get(cited, 0) + 1
    _insert_tuples(conn, article_terms, ("pmid", "kind", "term", "major"), term_rows)
    _insert_tuples(conn, references, ("citing_pmid", "cited_pmid"), ref_rows)
    # articles live now but not before: count every live citer (delta would miss old ones)
    recount = set(live) - was_live
    _add_cited_by(conn, [(p, n) for p, n in sorted(delta.items()) if n and p not in recount])
    if recount:
        recompute_cited_by(conn, recount)


def recompute_cited_by(conn: Connection, pmids: set[int]) -> None:
    """Count live citing articles for the stored ones among ``pmids``; write the changes.

    Done as a grouped count driven by ``ix_references_cited`` and an update of the rows
    that differ (a correlated ``UPDATE`` lets SQLite's planner scan every live article).
    """
    a, r = articles.c, references.c
    citer = articles.alias("citer")
    changes: list[dict[str, Any]] = []
    for chunk in chunks(sorted(pmids)):
        stored: dict[int, int] = dict(
            conn.execute(select(a.pmid, a.cited_by_in_corpus).where(a.pmid.in_(chunk))).all()
        )
        if not stored:
            continue
        counts: dict[int, int] = dict(
            conn.execute(
                select(r.cited_pmid, func.count())
                .select_from(references.join(citer, citer.c.pmid == r.citing_pmid))
                .where(
                    r.cited_pmid.in_(sorted(stored)),
                    # an expression, not the bare column: keeps the planner off ix_is_deleted
                    func.coalesce(citer.c.is_deleted, True).is_(False),
                )
                .group_by(r.cited_pmid)
            ).all()
        )
        changes.extend(
            {"b_pmid": pmid, "b_n": counts.get(pmid, 0)}
            for pmid, old in stored.items()
            if counts.get(pmid, 0) != old
        )
    if changes:
        conn.execute(_SET_CITED_BY, changes)


_PG_ARRAY_TYPES = {"BigInteger": "bigint", "Integer": "integer", "String": "text",
                   "Text": "text", "Boolean": "boolean"}  # fmt: skip


def _add_cited_by(conn: Connection, deltas: list[tuple[int, int]]) -> None:
    """Add ``n`` to ``cited_by_in_corpus`` of each stored ``pmid`` (others are ignored)."""
    if not deltas:
        return
    if conn.dialect.name == "postgresql":
        pmids, ns = (list(col) for col in zip(*deltas, strict=True))
        conn.exec_driver_sql(
            "UPDATE articles AS a SET cited_by_in_corpus = a.cited_by_in_corpus + d.n "
            "FROM unnest(%s::bigint[], %s::integer[]) AS d(pmid, n) WHERE a.pmid = d.pmid",
            (pmids, ns),
        )
        return
    conn.execute(_ADD_CITED_BY, [{"b_pmid": p, "b_n": n} for p, n in deltas])


def _insert_tuples(
    conn: Connection, table: Table, columns: Sequence[str], rows: list[tuple[Any, ...]]
) -> None:
    """Plain ``INSERT`` of many tuples through the driver (no per-row SQLAlchemy work).

    Used for the narrow link tables, where SQLAlchemy's parameter processing would cost
    more than the database itself.
    """
    if not rows:
        return
    quote = conn.dialect.identifier_preparer
    if conn.dialect.name == "postgresql":
        # one statement per chunk: column arrays, unnested server-side
        types = [_PG_ARRAY_TYPES[type(table.c[c].type).__name__] for c in columns]
        sql = (
            f"INSERT INTO {quote.format_table(table)} "
            f"({', '.join(quote.quote(c) for c in columns)}) "
            f"SELECT * FROM unnest({', '.join(f'%s::{t}[]' for t in types)})"
        )
        for start in range(0, len(rows), 50_000):
            chunk = rows[start : start + 50_000]
            conn.exec_driver_sql(sql, tuple(list(col) for col in zip(*chunk, strict=True)))
        return
    mark = "?" if conn.dialect.paramstyle in ("qmark", "numeric") else "%s"
    sql = (
        f"INSERT INTO {quote.format_table(table)} "
        f"({', '.join(quote.quote(c) for c in columns)}) "
        f"VALUES ({', '.join([mark] * len(columns))})"
    )
    conn.exec_driver_sql(sql, rows)


def chunks(seq: Sequence[int], size: int = IN_CHUNK) -> Iterator[Sequence[int]]:
    """``seq`` in slices of at most ``size`` (for ``IN (...)`` lists)."""
    for start in range(0, len(seq), size):
        yield seq[start : start + size]
