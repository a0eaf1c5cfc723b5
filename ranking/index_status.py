"""What ``litpulse index status`` and ``litpulse index check`` report.

Example:
    >>> check_consistency(settings)["ok"]  # doctest: +SKIP
    True
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
from sqlalchemy import Engine, and_, desc, func, select

from litpulse.core import db
from litpulse.core.errors import ConsistencyError, NotFoundError
from litpulse.core.schema import articles, embeddings, index_versions
from litpulse.core.settings import Settings
from litpulse.core.timeutil import iso
from ranking.embed import (
    ModelSpec,
    active_model,
    adapter_refusal,
    base_model_changed,
    count_pending,
    model_spec,
    profile_changed,
    rebuild_changed,
    rebuild_record,
)
from ranking.index_files import REPUBLISH, PublishedIndex, has_files, open_published
from ranking.index_store import live_ids
from ranking.lexical import changed_docs, open_lexical_at, read_ids, text_changed_ids
from ranking.models import published_index_row

__all__ = ["check_consistency", "index_status", "serving_problem"]


def serving_problem(settings: Settings, engine: Engine | None = None) -> str | None:
    """Why the published index cannot serve searches now, with what repairs it; ``None``
    when it can (or none is published: the status says so already).

    Cheap enough for every status call: whether its index file is there, its model
    version's adapter (:func:`ranking.embed.adapter_refusal`: the folder, the weights and
    their SHA-256) and its base model (:func:`ranking.embed.base_model_changed`: missing
    or another; its fingerprint hashes the weights once per file state in a process, then
    costs a few stat calls). A store restored from a backup older than the data directory, or a
    data directory restored older than the store, or moved, leaves these."""
    engine = engine or db.connect(settings)
    row = published_index_row(engine)
    if row is None:
        return None
    if not has_files(row.path):
        return (f"the files of the published index {row.id} are missing in {row.path}: "
                f"every search fails; {REPUBLISH}")
    try:
        spec = model_spec(settings, row.model_version, engine)
    except NotFoundError:
        return (f"the published index {row.id} is of model {row.model_version}, which the "
                f"store does not know: every search fails; {REPUBLISH}")
    refusal = adapter_refusal(spec)
    if refusal is not None:
        return f"every search fails: {refusal}"
    # what a search embedding its query refuses (ranking.search._query_embedder): the
    # base model gone or another one; BM25 (lexical mode) needs no model
    changed = base_model_changed(row.details, spec)
    if changed is not None:
        return f"every semantic and hybrid search fails (lexical ones answer): {changed}"
    return None


def index_status(settings: Settings) -> dict[str, Any]:
    """The published index version and the kept ones, for ``litpulse index status``."""
    engine = db.connect(settings)
    row = published_index_row(engine)
    spec = active_model(settings, engine)
    with engine.connect() as conn:
        versions = conn.execute(
            select(index_versions).order_by(desc(index_versions.c.created_at))
        ).all()
        kept = db.counts_kept(conn)  # kept by the database: no count of articles
        live = kept["live"] if kept is not None else conn.execute(
            select(func.count()).select_from(articles).where(articles.c.is_deleted.is_(False))
        ).scalar()
    return {
        "published": row.id if row is not None else None,
        "model_version": row.model_version if row is not None else None,
        "active_model": spec.id,
        "kind": row.kind if row is not None else None,
        "size": int(row.size) if row is not None else 0,
        "lexical_size": int(((row.details or {}).get("lexical") or {}).get("size") or 0)
        if row is not None else 0,
        "path": row.path if row is not None else None,
        "created_at": iso(row.created_at) if row is not None else None,
        "published_at": iso(row.published_at) if row is not None else None,
        "newest_article_date": (row.details or {}).get("newest_article_date")
        if row is not None else None,
        "problem": serving_problem(settings, engine),
        "live_articles": int(live or 0),
        "pending_embeddings": count_pending(settings, spec.id, engine),
        "versions": [
            {"id": v.id, "model_version": v.model_version, "kind": v.kind, "size": int(v.size),
             "status": v.status, "created_at": iso(v.created_at),
             "published_at": iso(v.published_at)}
            for v in versions
        ],
    }


def check_consistency(settings: Settings, *, sample: int = 10) -> dict[str, Any]:
    """Compare the published index with the store and the active model.

    Checks: an index is published and its files load; its size matches its row; its
    model version is the active one; every live article is in it (``missing``) and
    nothing else is (``extra``: deleted or unknown PMIDs); no embedded article text has
    changed since (``stale``). The same for its lexical index: it loads and holds what its
    PMID list says (``lexical_size``), every live article and nothing else
    (``lexical_missing``, ``lexical_extra``), each with the text, MeSH headings and keywords
    the store holds now (``lexical_stale``).

    Returns:
        ``{"ok": bool, "problems": [str], "index_id", "model_version", "active_model",
        "size", "live_articles", "missing", "extra", "stale", "missing_sample",
        "extra_sample", "lexical_size", "lexical_missing", "lexical_extra",
        "lexical_stale", "lexical_missing_sample", "lexical_extra_sample"}``.
    """
    engine = db.connect(settings)
    spec = active_model(settings, engine)
    row = published_index_row(engine)
    problems: list[str] = []
    out: dict[str, Any] = {"ok": False, "problems": problems, "index_id": None,
                           "model_version": None, "active_model": spec.id, "size": 0}
    live = live_ids(engine)
    out["live_articles"] = len(live)
    if row is None:
        problems.append("no index is published")
        return out
    out.update(index_id=row.id, model_version=row.model_version, size=int(row.size))
    try:
        pub = open_published(settings, engine)
    except ConsistencyError as exc:  # what is wrong and what repairs it
        problems.append(str(exc))
        return out
    except (OSError, RuntimeError, ValueError) as exc:
        problems.append(f"index {row.id} cannot be loaded: {exc}")
        return out
    if pub is None:  # unpublished between the two reads
        problems.append("no index is published")
        return out
    if pub.size != int(row.size) or len(pub.ids) != pub.size:
        problems.append(f"index holds {pub.size} vectors, its row says {row.size}, "
                        f"its id list {len(pub.ids)}")
    if row.model_version != spec.id:
        problems.append(
            f"index model {row.model_version} is not the active model {spec.id}: a re-index "
            "is pending (finish it with `litpulse index refresh`, or the litpulse_reindex DAG: "
            "`airflow dags trigger litpulse_reindex`)"
        )
    else:
        changed = _rebuild_problem(engine, spec) or profile_changed(row.details, spec)
        if changed:
            problems.append(changed)
    codec = str(row.details.get("codec") or "flat")
    if row.kind == "ivf" and codec != settings.ivf_codec:
        problems.append(f"index {row.id} holds IVF lists of codec {codec}, LITPULSE_IVF_CODEC "
                        f"is {settings.ivf_codec}: the next refresh rebuilds it")
    _check_membership(pub, live, sample, out, problems)
    _check_freshness(engine, pub, row.model_version, spec.id, out, problems)
    _check_lexical(engine, row, live, sample, out, problems)
    out["ok"] = not problems
    return out


def _rebuild_problem(engine: Engine, spec: ModelSpec) -> str | None:
    """What an embedding rebuild cut short left (:func:`ranking.embed.rebuild_record`),
    and what finishes it; ``None`` when none is under way."""
    record = rebuild_record(engine, spec.id)
    if record is None:
        return None
    return rebuild_changed(record, spec) or (
        f"an embedding rebuild of model {spec.id} with {spec.base_model} was cut short: the "
        "published index holds the old base model's vectors until it is finished; the next "
        "`litpulse index refresh` (the nightly's too) resumes it, keeping the vectors embedded"
    )


def _check_lexical(engine: Engine, row: Any, live: np.ndarray, sample: int,
                   out: dict[str, Any], problems: list[str]) -> None:
    """The lexical index of the published version against its id list and the store."""
    try:
        lex = open_lexical_at(row.path)
        ids = read_ids(row.path) if lex is not None else None
    except (ConsistencyError, OSError, ValueError) as exc:
        problems.append(f"lexical index of {row.id} cannot be loaded: {exc}")
        return
    if lex is None or ids is None:
        problems.append(f"index {row.id} has no lexical index (run `litpulse index refresh`)")
        return
    out["lexical_size"] = lex.size
    if lex.size != len(ids):
        problems.append(f"lexical index holds {lex.size} documents, its id list {len(ids)}")
    missing = np.setdiff1d(live, ids, assume_unique=True)
    extra = np.setdiff1d(ids, live, assume_unique=True)
    out.update(lexical_missing=int(len(missing)), lexical_extra=int(len(extra)),
               lexical_missing_sample=[int(p) for p in missing[:sample]],
               lexical_extra_sample=[int(p) for p in extra[:sample]])
    if len(missing):
        problems.append(f"{len(missing)} live articles are not in the lexical index")
    if len(extra):
        problems.append(f"{len(extra)} PMIDs in the lexical index are deleted or unknown")
    upto = ((row.details or {}).get("lexical") or {}).get("updated_upto")
    candidates = np.intersect1d(text_changed_ids(engine, upto),
                                np.intersect1d(ids, live, assume_unique=True))
    stale = changed_docs(engine, lex, candidates)
    out["lexical_stale"] = int(len(stale))
    if len(stale):
        problems.append(f"{len(stale)} articles changed since the lexical index was built")


def _check_membership(pub: PublishedIndex, live: np.ndarray, sample: int,
                      out: dict[str, Any], problems: list[str]) -> None:
    """``missing`` (live, not indexed) and ``extra`` (indexed, not live) PMIDs."""
    missing = np.setdiff1d(live, pub.ids, assume_unique=True)
    extra = np.setdiff1d(pub.ids, live, assume_unique=True)
    out.update(missing=int(len(missing)), extra=int(len(extra)),
               missing_sample=[int(p) for p in missing[:sample]],
               extra_sample=[int(p) for p in extra[:sample]])
    if len(missing):
        problems.append(f"{len(missing)} live articles are not in the index")
    if len(extra):
        problems.append(f"{len(extra)} indexed PMIDs are deleted or unknown")


def _check_freshness(engine: Engine, pub: PublishedIndex, model_version: str, active: str,
                     out: dict[str, Any], problems: list[str]) -> None:
    """``stale`` (text changed since embedded) and ``newer_vectors`` (embedded since)."""
    with engine.connect() as conn:
        stale = conn.execute(
            select(func.count()).select_from(embeddings.join(
                articles, and_(articles.c.pmid == embeddings.c.pmid,
                               embeddings.c.model_version == model_version)))
            .where(articles.c.is_deleted.is_(False),
                   embeddings.c.text_hash != articles.c.text_hash)
        ).scalar()
    out["stale"] = int(stale or 0)
    if stale:
        problems.append(f"{stale} articles changed since they were embedded")
    upto = pub.details.get("embedded_upto")
    if not upto:
        return
    with engine.connect() as conn:
        newer = conn.execute(
            select(func.count()).select_from(embeddings.join(
                articles, articles.c.pmid == embeddings.c.pmid))
            .where(embeddings.c.model_version == model_version,
                   embeddings.c.created_at > dt.datetime.fromisoformat(upto),
                   articles.c.is_deleted.is_(False))
        ).scalar()
    out["newer_vectors"] = int(newer or 0)
    if newer and model_version == active:
        problems.append(f"{newer} vectors were embedded after the index was built")

