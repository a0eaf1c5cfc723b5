"""Widths of the bounded text columns that code outside the database writes to.

The schema (:mod:`litpulse.core.schema`) declares these columns with these widths, and
the rows a parse worker prepares (:mod:`ingest.rows`) cut or drop values to fit them.
They live here, not in the schema, because parse workers must not import SQLAlchemy:
each worker process (and the forkserver they fork from) imports only what it runs, and
SQLAlchemy was ~60 % of that start-up, time the writer spent waiting for the first
record (an import contract in ``pyproject.toml`` keeps the workers' modules free of it).
"""

from __future__ import annotations

__all__ = [
    "ID_MAX", "LANGUAGE_MAX", "PMCID_MAX", "PMID_MAX", "SHARDS_MAX", "TERM_KIND_MAX", "TERM_MAX",
]

#: The largest row id (the ``id`` of every table keyed by a number is a 32-bit
#: ``INTEGER``): an id asked for above it is no row's, answered "not found" (or a usage
#: error) without asking the database, which refuses to compare past its range.
ID_MAX = 2**31 - 1
#: ``articles.language``: the first <Language> code (``eng``; longer text is cut).
LANGUAGE_MAX = 8
#: ``articles.pmcid``: ``PMC`` and a few digits in practice; a longer text is no PMC id.
PMCID_MAX = 32
#: Largest PMID the API and the CLI take: 2**53, the largest integer every JSON reader
#: (JavaScript, a float) holds exactly, so the OpenAPI document states the bound exactly too
#: (FastAPI keeps bounds as floats); within ``articles.pmid`` (BIGINT). Real PMIDs have 8 digits.
PMID_MAX = 2**53
#: Most PMID shards (``pmid % n``) an embed step is split into: each is a mapped Airflow
#: task, and the plan lists every shard (the CLI, the DAGs' params and the planner hold to it).
SHARDS_MAX = 1024
#: ``article_terms.kind``: ``mesh``, ``ptype`` or ``lang``.
TERM_KIND_MAX = 8
#: ``article_terms.term``: a MeSH descriptor, publication type or language code.
TERM_MAX = 255
