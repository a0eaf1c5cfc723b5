"""The database schema (SQLAlchemy 2 Core), shared by SQLite and PostgreSQL.

One ``MetaData`` holds every table of litpulse; :func:`litpulse.core.db.connect` creates
missing tables. JSON columns hold the structured parts of a record (authors, MeSH, …);
the columns searched or filtered on are plain columns with indexes.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    DDL,
    JSON,
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    case,
    event,
    func,
    null,
    or_,
    select,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

from litpulse.core.timeutil import as_utc
from litpulse.core.widths import LANGUAGE_MAX, PMCID_MAX, TERM_KIND_MAX, TERM_MAX

__all__ = [
    "UTCDateTime",
    "metadata",
    "RETIRED_INDEXES",
    "articles",
    "references",
    "store_counts",
    "embedding_counts",
    "term_forms",
    "FOLDED_TERM_KINDS",
    "quarantine",
    "ingest_runs",
    "checkpoints",
    "source_files",
    "embeddings",
    "index_versions",
    "model_versions",
    "feedback",
    "api_tokens",
    "feedback_log",
    "locks",
    "saved_searches",
    "digest_matches",
]

class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timestamp stored as UTC and always read back timezone-aware (UTC).

    PostgreSQL keeps ``timestamptz``; SQLite has no time zones and hands back naive
    values, which this type marks as UTC, so no caller has to. A naive value written is
    taken to be UTC already.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if not isinstance(value, dt.datetime):
            raise TypeError(f"UTCDateTime needs a datetime, got {type(value).__name__}")
        return as_utc(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if isinstance(value, str):  # raw SQLite text (e.g. from an aggregate)
            value = dt.datetime.fromisoformat(value)
        return as_utc(value)


metadata = MetaData()


def _first_ingested(context: Any) -> dt.datetime | None:
    """``articles.first_ingested_at`` of a row inserted without it: its ``ingested_at``
    (a bare tombstone, which no record ever held, is written with NULL explicitly)."""
    value = context.get_current_parameters().get("ingested_at")
    return value if isinstance(value, dt.datetime) else None

#: Indexes older stores have and this schema no longer makes: (table, index). Opening such
#: a store drops them (:func:`litpulse.core.db.drop_retired_indexes`).
RETIRED_INDEXES: tuple[tuple[str, str], ...] = (
    ("article_terms", "ix_article_terms_term"),  # read by no query (filters go by PMID)
)

#: A PMID key column's type: ``BIGINT`` on PostgreSQL; ``INTEGER`` on SQLite, where a
#: single-column ``INTEGER`` primary key is the rowid itself, so the table is one B-tree
#: keyed by PMID instead of a rowid table plus a unique index (stores created before
#: this keep their ``BIGINT`` key and the extra index; both read and write the same).
PMID_KEY = BigInteger().with_variant(Integer(), "sqlite")

# ---------------------------------------------------------------------------------- ingest

articles = Table(
    "articles",
    metadata,
    Column("pmid", PMID_KEY, primary_key=True, autoincrement=False),
    Column("version", Integer, nullable=False),
    Column("date_revised", Date),
    Column("source_sequence", BigInteger, nullable=False, default=0),
    Column("source_time", Float, nullable=False, default=0.0),
    Column("source_kind", String(16), nullable=False),
    Column("source_location", Text, nullable=False),
    # ordinal of the item that wrote the row within its source: orders items of one file.
    # Rows of a store made before this column existed get the largest value: all of their
    # source counts as already read (re-reading an old file is a replay, as it was then).
    Column(
        "source_position", BigInteger, nullable=False, default=0,
        info={"upgrade_fill": 2**63 - 1},
    ),
    Column("title", Text, nullable=False, default=""),
    Column("vernacular_title", Text),
    Column("abstract", Text, nullable=False, default=""),
    Column("journal", Text),
    Column("pub_year", Integer),
    Column("pub_month", Integer),
    Column("pub_day", Integer),
    Column("pub_date_raw", Text),
    # the last day of the issue's period when its text reaches beyond the start ("2019
    # Nov-Dec", "2000 Spring": ingest.dates.period_end); NULL when the start says it all
    Column("pub_period_end", Date),
    Column("article_date", Date),
    Column("entrez_date", Date),
    Column("best_date", Date, index=True),
    # no index on language: none is read (searches filter lower(language) over their
    # candidates) and it cost every row written. Stores made before keep theirs.
    Column("language", String(LANGUAGE_MAX)),
    Column("doi", Text),
    Column("pmcid", String(PMCID_MAX)),
    Column("is_retracted", Boolean, nullable=False, default=False),
    Column("is_book", Boolean, nullable=False, default=False),
    # indexed: on SQLite the index is what lists and counts the live PMIDs (every refresh,
    # index check, status) without reading the whole table
    Column("is_deleted", Boolean, nullable=False, default=False, index=True),
    Column("deleted_at", UTCDateTime()),
    Column("has_abstract", Boolean, nullable=False, default=False),
    Column("text_hash", String(40), nullable=False, default=""),
    # SHA-1 of the whole record without its source: a replayed record is "unchanged"
    Column("content_hash", String(40), nullable=False, default=""),
    # structured parts, as JSON
    Column("authors", JSON, nullable=False, default=list),
    Column("mesh", JSON, nullable=False, default=list),
    Column("publication_types", JSON, nullable=False, default=list),
    Column("record", JSON, nullable=False, default=dict),
    # citations (iCite); NULL until fetched
    Column("citation_count", Integer),
    Column("relative_citation_ratio", Float),
    Column("citations_per_year", Float),
    Column("icite_year", Integer),
    Column("icite_provisional", Boolean),
    # when iCite was last asked for the article (the refresh's schedule), answered or not
    Column("icite_fetched_at", UTCDateTime()),
    # what the iCite values held are as of (the fetch or snapshot that wrote them): a
    # fetch that brings no values moves icite_fetched_at, not this; a snapshot writes
    # over values not newer than itself (ingest.citations.icite_not_newer)
    Column("icite_values_at", UTCDateTime()),
    Column("cited_by_in_corpus", Integer, nullable=False, default=0),
    # when the article last became live: first stored, or a record lifted its tombstone
    Column("ingested_at", UTCDateTime(), nullable=False),
    # when a record of the article was first stored: set when the row is inserted (NULL
    # for a deletion's tombstone of a PMID never stored, until a record lifts it) and
    # never moved after, by a revision, a tombstone or a lift (what retrain calls new
    # literature). A writer that leaves it out stores its ``ingested_at``; rows of a store
    # made before the column get theirs (bare tombstones NULL)
    Column("first_ingested_at", UTCDateTime(), default=_first_ingested),
    Column("updated_at", UTCDateTime(), nullable=False, index=True),
    # the ingest run that last inserted or updated the row (a deletion's tombstone too; a
    # later source repeating it unchanged does not move it), or took it over: met again
    # before a data-quality check judged its run (ingest.quality: IngestCounts.reseen).
    # NULL on rows of a store made before the column: judged, as their runs' checks did
    Column("run_id", Integer),
)
# A store made before ``articles.first_ingested_at``: each row gets its ``ingested_at``
# (an article reinstated before the upgrade keeps the time it came back, the earliest
# known), a bare tombstone (a deletion of a PMID never stored: version 0) NULL.
articles.c.first_ingested_at.info["upgrade_fill"] = case(
    (and_(articles.c.is_deleted.is_(True), articles.c.version == 0), null()),
    else_=articles.c.ingested_at,
)
# A store made before ``articles.icite_values_at``: the values held are as of the last
# fetch (the best known; a later fetch without values may have moved it), none held NULL.
articles.c.icite_values_at.info["upgrade_fill"] = case(
    (
        or_(*(articles.c[c].is_not(None) for c in (
            "citation_count", "relative_citation_ratio", "citations_per_year", "icite_year",
            "icite_provisional",
        ))),
        articles.c.icite_fetched_at,
    ),
    else_=null(),
)  # fmt: skip
#: An article by its DOI (``litpulse article DOI``, ``GET /articles/doi/DOI``): DOIs
#: match without regard to case (:func:`litpulse.core.text.doi_key`). A store made before
#: it gains it on its next open (:func:`litpulse.core.db.add_missing_indexes`).
Index("ix_articles_doi", func.lower(articles.c.doi))

#: PostgreSQL: the large text columns of a new ``articles`` table are compressed with
#: lz4 instead of the default pglz when they go to TOAST (a row is several KB): several
#: times less server CPU per row written, for slightly larger values. Only where the
#: server has lz4 (PostgreSQL 14+ built with it); a table created before keeps pglz for
#: what it holds, and both read alike.
_ARTICLES_LZ4 = DDL(
    "DO $$ BEGIN IF 'lz4' = ANY(COALESCE((SELECT enumvals FROM pg_settings "
    "WHERE name = 'default_toast_compression'), '{}')) THEN "
    "ALTER TABLE articles ALTER COLUMN record SET COMPRESSION lz4, "
    "ALTER COLUMN abstract SET COMPRESSION lz4, ALTER COLUMN authors SET COMPRESSION lz4, "
    "ALTER COLUMN mesh SET COMPRESSION lz4; END IF; END $$"
).execute_if(dialect="postgresql")
event.listen(articles, "after_create", _ARTICLES_LZ4)

#: MeSH descriptors and publication types, one row each, for filters. Filters read a
#: candidate's terms by its PMID (the primary key's prefix), so the table has no other
#: index: one over (kind, term) cost every row a second B-tree and no query read it.
article_terms = Table(
    "article_terms",
    metadata,
    Column("pmid", BigInteger, primary_key=True, autoincrement=False),
    Column("kind", String(TERM_KIND_MAX), primary_key=True),  # "mesh", "ptype" or "lang"
    Column("term", String(TERM_MAX), primary_key=True),
    Column("major", Boolean, nullable=False, default=False),
    # SQLite: the rows live in the primary key's B-tree (no rowid table beside it: one
    # B-tree less to write per link; stores created before this keep their rowid tables)
    sqlite_with_rowid=False,
)

#: The term kinds a filter compares folded (``lang`` codes are compared as they are).
FOLDED_TERM_KINDS = ("mesh", "ptype")

#: The spellings ``article_terms`` holds of each MeSH descriptor and publication type, with
#: their folded form (:func:`litpulse.core.text.fold_term`): a filter typed ``Sjögren’s
#: Syndrome`` or ``α-Synuclein`` finds the stored ``Sjogren's Syndrome`` and
#: ``alpha-Synuclein`` through it. Written with the terms; filled once for a store made
#: before it when it is opened (:func:`litpulse.core.db.fill_term_forms`); never pruned (a
#: spelling no article carries any more matches nothing).
term_forms = Table(
    "term_forms",
    metadata,
    Column("kind", String(TERM_KIND_MAX), primary_key=True),
    Column("term", String(TERM_MAX), primary_key=True),
    Column("folded", String(TERM_MAX), nullable=False),
    Index("ix_term_forms_folded", "kind", "folded"),
    sqlite_with_rowid=False,
)

references = Table(
    "references",
    metadata,
    Column("citing_pmid", BigInteger, primary_key=True, autoincrement=False),
    Column("cited_pmid", BigInteger, primary_key=True, autoincrement=False),
    Index("ix_references_cited", "cited_pmid"),
    sqlite_with_rowid=False,  # as article_terms
)

# The store's counts (``litpulse status``, ``GET /status``), kept by the database itself:
# triggers on ``articles`` and ``references`` (``litpulse.core.db.keep_counts``) add what
# each write changes, so every writer keeps them in step. PostgreSQL appends one row of
# deltas per statement (concurrent writers never wait on one counter row) and folds them
# into one now and then; SQLite (one writer at a time) moves the one row (id 1). The
# counts are the sums of the rows. A store with no row yet keeps none (counted whole).
# Nullable, though never NULL: a NOT NULL check in SQLite's triggers makes every deletion
# from ``references`` open a statement journal (2.5 -> 1.5 µs a row without it).
store_counts = Table(
    "store_counts",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=True),
    Column("live", BigInteger, default=0),  # not is_deleted
    Column("deleted", BigInteger, default=0),  # withdrawn: is_deleted, version > 0
    Column("retracted", BigInteger, default=0),  # live and is_retracted
    Column("with_abstract", BigInteger, default=0),  # live and has_abstract
    Column("with_citations", BigInteger, default=0),  # live, iCite asked
    Column("refs", BigInteger, default=0),  # rows of ``references``
)

# The current vectors of each model version (an embedding whose ``text_hash`` is its live
# article's), kept beside ``store_counts`` by the same triggers (and two on
# ``embeddings``): ``count_pending`` is ``store_counts``' live minus this, no anti-join of
# ``articles`` with ``embeddings``. PostgreSQL appends a row of deltas per model version a
# statement moved and folds them; SQLite keeps one row a version. A row with model version
# ``''`` says the counts are kept (made with the counts at open, ``db.keep_counts``).
embedding_counts = Table(
    "embedding_counts",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=True),
    Column("model_version", String(64)),
    Column("current_vectors", BigInteger, default=0),
)

quarantine = Table(
    "quarantine",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("digest", String(64), nullable=False, unique=True),
    Column("pmid", BigInteger),
    Column("reason", Text, nullable=False),
    Column("source_kind", String(16), nullable=False),
    Column("source_location", Text, nullable=False),
    Column("line", Integer),
    Column("raw_xml", Text, nullable=False),
    Column("run_id", Integer),
    Column("created_at", UTCDateTime(), nullable=False),
    # when a later record or deletion of its PMID was stored: the entry no longer stands
    # for a missing record (rows of stores made before the column stay open until then)
    Column("resolved_at", UTCDateTime()),
    # when a data-quality check judged the run that holds it (ingest.quality): met again
    # after that, the entry is not a new bad record (IngestCounts.requarantined)
    Column("judged_at", UTCDateTime()),
    # every batch resolves the entries of the PMIDs it stores (one UPDATE by PMID): a
    # lookup, not a scan of the whole quarantine per batch, when it holds many
    Index("ix_quarantine_pmid", "pmid"),
    # ``status`` counts the open entries (resolved_at IS NULL) on every poll: the open
    # ones, not every entry ever quarantined
    Index("ix_quarantine_resolved", "resolved_at"),
)

ingest_runs = Table(
    "ingest_runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("source", String(32), nullable=False),  # files, eutils, updatefiles, citations
    Column("target", Text),  # file list, window "2024-01-01..2024-01-02", query
    Column("window_start", UTCDateTime()),
    Column("window_end", UTCDateTime()),
    Column("status", String(16), nullable=False),  # running, succeeded, failed
    Column("inserted", Integer, nullable=False, default=0),
    Column("updated", Integer, nullable=False, default=0),
    Column("unchanged", Integer, nullable=False, default=0),
    Column("deleted", Integer, nullable=False, default=0),
    Column("quarantined", Integer, nullable=False, default=0),
    # of those, the elements met again (judged by an earlier check): see IngestCounts
    Column("requarantined", Integer, nullable=False, default=0),
    # of ``unchanged``, the records and deletions met again whose stored row an earlier
    # check judged (articles.run_id of a judged run): see IngestCounts
    Column("reseen", Integer, nullable=False, default=0),
    Column("missing", Integer, nullable=False, default=0),
    Column("details", JSON, nullable=False, default=dict),
    Column("error", Text),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("finished_at", UTCDateTime()),
    # when a data-quality check of its window judged the run (ingest.quality), with its
    # quarantine entries: the articles it wrote, met again, are not new to a check
    Column("judged_at", UTCDateTime()),
    # ``GET /status``'s last ingest (the newest succeeded run) on every poll: a walk down
    # this index, not a sort of every run ever recorded
    Index("ix_ingest_runs_status_finished", "status", "finished_at"),
    # the held E-utilities windows past the watermark (``planning.held_windows``, on
    # every ``litpulse status`` and nightly): the succeeded runs ending after the mark,
    # not every succeeded run ever recorded filtered on its JSON ``details``
    Index("ix_ingest_runs_status_window_end", "status", "window_end"),
)

#: PMIDs an E-utilities window listed (ESearch) but EFetch did not return, even asked twice:
#: owed until a later run stores them; ``given_up_at`` once ``missing_retries`` later runs
#: asked in vain (see :mod:`ingest.missing`).
missing_pmids = Table(
    "missing_pmids",
    metadata,
    Column("pmid", BigInteger, primary_key=True, autoincrement=False),
    Column("first_missing_in", Text, nullable=False),  # the window (target) and its run
    Column("first_missing_at", UTCDateTime(), nullable=False),
    Column("last_asked_at", UTCDateTime(), nullable=False),
    # the run step that asked last (a window's generation): a resumed run counts no try twice
    Column("last_asked_in", String(255), nullable=False),
    Column("tries", Integer, nullable=False),  # EFetch asks that left it out (each twice)
    Column("given_up_at", UTCDateTime()),
    # when the on-call engineer was told of the give-up (the alert webhook took it, or none
    # is set and the log told it); a given-up row without it is an alert owed, posted by
    # the next ingest of the application, whatever its source (an outbox: a kill or a
    # webhook down between the give-up and its alert loses nothing)
    Column("alerted_at", UTCDateTime()),
)
#: A give-up an older release stored was alerted by it then (fire and forget).
missing_pmids.c.alerted_at.info["upgrade_fill"] = missing_pmids.c.given_up_at

#: Resumable progress: one row per (scope, key), e.g. ("eutils", "2024-01-01..02#batch3").
checkpoints = Table(
    "checkpoints",
    metadata,
    Column("scope", String(64), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("status", String(16), nullable=False),
    Column("value", JSON, nullable=False, default=dict),
    Column("updated_at", UTCDateTime(), nullable=False),
)

#: Update and baseline files applied, with their checksum.
source_files = Table(
    "source_files",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("sequence", Integer, nullable=False),
    Column("md5", String(32), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("run_id", Integer),
    Column("counts", JSON, nullable=False, default=dict),
    Column("applied_at", UTCDateTime(), nullable=False),
    #: The listing's entry of the file as applied (its modification time and size, as the
    #: server lists them; ``NULL``: not known): a changed entry is a re-issue to check
    #: (``ingest.updatefiles``).
    Column("listed", String(200)),
)

#: When the store first read each numbered NLM file (``sequence``: :func:`ingest.records.
#: nlm_sequence`): its *as-of* time, recorded once and never moved by a re-read (only a
#: re-issue of the file under its name moves it: ``md5``). It ranks an EFetch against the
#: files (``ingest.rules``): an EFetch fetched at ``t`` comes after every file first read
#: at or before ``t``.
source_times = Table(
    "source_times",
    metadata,
    Column("sequence", BigInteger, primary_key=True, autoincrement=False),
    Column("as_of", Float, nullable=False),
    Column("location", Text, nullable=False),
    #: The MD5 of the re-issue of the file that moved ``as_of`` (NLM re-issued it under
    #: its name: ``Store.reissue``), or of the local copy whose first read it is
    #: (``Store.note_first_issue``); ``NULL``: the as-of time of a first read whose MD5 is
    #: not recorded (an update-file run's: ``source_files`` holds it; a local copy's read
    #: by a release before MD5s were: an unknown issue, ``ingest.store.UNKNOWN_ISSUE``).
    Column("md5", String(32)),
    #: The MD5s of the file's earlier issues, oldest first, that re-issues replaced
    #: (``Store.reissue``; ``NULL``: none recorded): a local copy of one of them is known
    #: for what it is (``ingest.files``), not taken for the issue applied.
    Column("earlier", JSON),
)

# --------------------------------------------------------------------------------- ranking

embeddings = Table(
    "embeddings",
    metadata,
    Column("pmid", BigInteger, primary_key=True, autoincrement=False),
    Column("model_version", String(64), primary_key=True),
    Column("text_hash", String(40), nullable=False),
    Column("vector", LargeBinary, nullable=False),  # float32, little-endian
    Column("created_at", UTCDateTime(), nullable=False),
)

index_versions = Table(
    "index_versions",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("model_version", String(64), nullable=False),
    Column("kind", String(32), nullable=False),  # flat, ivf, hnsw
    Column("path", Text, nullable=False),
    Column("size", Integer, nullable=False),
    Column("status", String(16), nullable=False),  # building, published, retired
    Column("parent_id", String(64)),
    Column("details", JSON, nullable=False, default=dict),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("published_at", UTCDateTime()),
)

# --------------------------------------------------------------------------------- retrain

model_versions = Table(
    "model_versions",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("base_model", Text, nullable=False),
    Column("adapter_path", Text),
    Column("adapter_sha256", String(64)),
    Column("parent_id", String(64)),
    Column("window_start", UTCDateTime()),
    Column("window_end", UTCDateTime()),
    Column("pair_counts", JSON, nullable=False, default=dict),
    Column("options", JSON, nullable=False, default=dict),
    Column("metrics", JSON, nullable=False, default=dict),
    Column("status", String(16), nullable=False),  # candidate, active, rejected, retired
    Column("promoted_by", Text),
    Column("reason", Text),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("promoted_at", UTCDateTime()),
    # what the training did (steps, seconds, losses, device; ``retrain.lora.TrainResult``)
    # and the version's lifecycle, oldest first: ``{"at", "event", "by", "reason"}`` per
    # registration, promotion, retirement, rejection and rollback (NULL on older stores)
    Column("training", JSON),
    Column("events", JSON),
)

#: API tokens, each tied to a named expert; only the SHA-256 of a token is kept.
api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("expert", String(255), nullable=False, index=True),
    Column("token_sha256", String(64), nullable=False, unique=True),
    Column("prefix", String(16), nullable=False),  # the first characters, to tell tokens apart
    Column("created_by", String(255)),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("revoked_at", UTCDateTime()),
    # where the expert's saved-search digests are e-mailed (set by whoever issues it)
    Column("email", String(320)),
)

#: Every judgement as sent, append-only: who (expert), how (api, cli, with which token)
#: and when. ``feedback`` holds each expert's latest judgement per (query, article).
feedback_log = Table(
    "feedback_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("feedback_id", Integer, nullable=False, index=True),
    Column("query", Text, nullable=False),
    Column("pmid", BigInteger, nullable=False),
    Column("relevant", Boolean, nullable=False),
    Column("expert", String(255), nullable=False),
    Column("source", String(16), nullable=False),  # api, cli
    Column("token_id", Integer),
    Column("created_at", UTCDateTime(), nullable=False),
    Index("ix_feedback_log_expert_time", "expert", "created_at"),
)

feedback = Table(
    "feedback",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("query", Text, nullable=False),
    Column("pmid", BigInteger, nullable=False),
    Column("relevant", Boolean, nullable=False),
    Column("user", String(255), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    # the API token this judgement was sent with (NULL: ``litpulse feedback``, or a
    # judgement older than API tokens); a revoked token's judgements no longer train
    Column("token_id", Integer),
    UniqueConstraint("query", "pmid", "user", name="uq_feedback_query_pmid_user"),
)
# A store made before ``feedback.token_id``: each row gets the token of its latest logged
# judgement (the one it holds: both are written in one transaction); no log row, no token.
feedback.c.token_id.info["upgrade_fill"] = (
    select(feedback_log.c.token_id)
    .where(feedback_log.c.feedback_id == feedback.c.id)
    .order_by(feedback_log.c.id.desc())
    .limit(1)
    .scalar_subquery()
)

#: Leases: at most one holder per name (index publish, nightly run, retrain) across
#: processes. ``holder`` is ``host:pid:start:boot:random``
#: (:func:`litpulse.core.db.default_holder`); ``expires_at`` is pushed ahead by the
#: holder's heartbeat (:class:`litpulse.core.db.Lease`); ``acquired_at``: when the holder
#: took it (``NULL``: taken by a release that did not record it).
locks = Table(
    "locks",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(255), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
    Column("acquired_at", UTCDateTime(), nullable=True),
)


# ---------------------------------------------------------------------------------- alerts

#: Saved searches: a query with its filters and threshold, digested after each index
#: publish. ``watermark``: articles first stored after it are "new" for this search.
saved_searches = Table(
    "saved_searches",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(255), nullable=False, unique=True),
    Column("query", Text, nullable=False),
    Column("filters", JSON, nullable=False, default=dict),
    Column("min_score", Float),  # NULL: LITPULSE_DIGEST_MIN_SCORE
    Column("owner", String(255), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("watermark", UTCDateTime(), nullable=False),
    Column("last_digest_at", UTCDateTime()),
    Column("last_index_version", String(64)),
    # the last edit in place (its query, filters or threshold): a digest that read the
    # search before it records nothing (the next one judges the articles by the edit)
    Column("edited_at", UTCDateTime()),
)

#: What a digest found for a saved search: one row per (search, PMID), so the same
#: article is never sent twice for one search; ``*_sent_at`` per delivery channel
#: (NULL: not delivered yet, retried by the next digest).
digest_matches = Table(
    "digest_matches",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("search_id", Integer, nullable=False),
    Column("pmid", BigInteger, nullable=False),
    Column("title", Text, nullable=False, default=""),
    Column("score", Float, nullable=False),
    Column("explanation", JSON, nullable=False, default=dict),
    Column("index_version", String(64), nullable=False),
    Column("model_version", String(64), nullable=False),
    Column("found_at", UTCDateTime(), nullable=False),
    Column("email_sent_at", UTCDateTime()),
    Column("webhook_sent_at", UTCDateTime()),
    # the delivery key of the message the match was handed to on that channel, written
    # before it is sent: a message not known to have gone out is sent again whole, with
    # its key (a receiver drops the repeat), and matches found since go in another one
    Column("email_key", String(32)),
    Column("webhook_key", String(32)),
    # when the receiver last refused that message (its content, not a failure to reach
    # it): such a message goes after the others, so one refused for good holds none back
    Column("email_refused_at", UTCDateTime()),
    Column("webhook_refused_at", UTCDateTime()),
    UniqueConstraint("search_id", "pmid", name="uq_digest_matches_search_pmid"),
    Index("ix_digest_matches_search_found", "search_id", "found_at"),
)
