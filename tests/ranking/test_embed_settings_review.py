"""Review: embedding configuration drift (max_seq_length, precision, model folder).

What a text's vector is depends on more than the model version id: ``LITPULSE_MAX_SEQ_LENGTH``
(where the text is cut), ``LITPULSE_EMBED_PRECISION`` (fp32 or a half type, and with ``auto``
the hardware), and the whole sentence-transformers folder (its pooling module too). The
stored ``embeddings`` (keyed by PMID and model version and text hash only) and the index
versions built from them record none of the first two, so a change of either mixes vectors
made both ways, unseen. The ``xfail(strict=True)`` tests state what a demanding user
expects; the plain ones pin what holds.

A tiny random BERT encoder (32-d, 128 positions) built here keeps the file fast; the texts
are long enough that cutting them at 16 or at 64 tokens gives clearly different vectors.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine, insert, select

from litpulse.core import db
from litpulse.core.errors import ConfigError, ConsistencyError
from litpulse.core.schema import articles, embeddings, model_versions
from litpulse.core.settings import Settings
from ranking import embed as em
from ranking import index_status as ix_status
from ranking import refresh
from ranking.models import published_index_row
from tests.tiny_encoder import build_tiny_encoder

LONG = " ".join(f"sepsis cohort outcome marker{i} mortality" for i in range(30))


def _build_tiny(folder: Path, seed: int) -> str:
    return build_tiny_encoder(folder, seed=seed, positions=128, max_seq_length=64)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random encoder: mean pooling, no Normalize module, 128 positions."""
    return _build_tiny(tmp_path_factory.mktemp("tiny-a"), seed=0)


@pytest.fixture(autouse=True)
def _fresh_encoders() -> Iterator[None]:
    """Each nightly, shard or search is a new process: no encoder survives a test."""
    em.clear_cache()
    yield
    em.clear_cache()


def _at(settings: Settings, model: str, seq: int = 16, precision: str = "fp32") -> Settings:
    return settings.replace(model=model, max_seq_length=seq, embed_precision=precision)


def _text(pmid: int) -> tuple[str, str]:
    return f"Article {pmid} on sepsis biomarkers", f"{pmid} {LONG}"


def _add(engine: Engine, pmids: list[int]) -> None:
    now = db.utcnow()
    with engine.begin() as conn:
        conn.execute(insert(articles), [
            {"pmid": p, "version": 1, "source_kind": "test", "source_location": "t",
             "title": _text(p)[0], "abstract": _text(p)[1], "text_hash": f"h{p}",
             "is_deleted": False, "best_date": dt.date(2024, 1, 1), "ingested_at": now,
             "updated_at": now}
            for p in pmids
        ])


def _stored(engine: Engine, model: str = "base") -> dict[int, np.ndarray]:
    with engine.connect() as conn:
        rows = conn.execute(select(embeddings.c.pmid, embeddings.c.vector)
                            .where(embeddings.c.model_version == model)).all()
    return {int(p): em.vector_from_bytes(v) for p, v in rows}


def _fresh(settings: Settings, pmids: list[int]) -> np.ndarray:
    """What the encoder gives the articles under ``settings`` (a new process)."""
    em.clear_cache()
    encoder = em.load_encoder(em.active_model(settings), settings)
    return em.embed_texts(encoder, [em.article_text(*_text(p)) for p in pmids], settings)


def _walk(obj: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk(v, f"{prefix}.{k}")
    else:
        yield prefix.lower(), obj


def _says(exc_or_text: Any, setting: str) -> bool:
    return setting in str(exc_or_text)


# ------------------------------------------------------------------------------- defects


def test_nightly_after_max_seq_length_change_re_embeds_or_refuses(
    settings: Settings, tiny: str
) -> None:
    s16, s64 = _at(settings, tiny, 16), _at(settings, tiny, 64)
    engine = db.connect(s16)
    _add(engine, [1, 2, 3, 4, 5])
    assert refresh.refresh_index(s16).embedded == 5
    _add(engine, [6])
    em.clear_cache()  # the next night: a new process with LITPULSE_MAX_SEQ_LENGTH=64
    try:
        report = refresh.refresh_index(s64)  # the nightly's index step (pipeline/nightly.py)
    except ConsistencyError as exc:
        assert _says(exc, "LITPULSE_MAX_SEQ_LENGTH"), exc
        return
    stored = _stored(engine)
    want = _fresh(s64, [1, 2, 3, 4, 5, 6])
    cos = {p: float(stored[p] @ want[i]) for i, p in enumerate(range(1, 7))}
    assert report.embedded == 6 and min(cos.values()) > 0.999, (
        f"embedded {report.embedded} of 6; cosine of the stored vectors to what "
        f"max_seq_length=64 gives: {cos}")


def test_a_precision_change_is_recorded_and_stays_within_the_probe(
    sqlite_settings: Settings, tiny: str
) -> None:
    """A precision change is not refused (a GPU embeds the baseline in fp16, the nightly's
    CPU in bf16 or fp32): a half type is used only when its vectors keep cosine >=
    MIN_COSINE to fp32's, so vectors of both stay within that of each other; each index
    records the precision its encoder ran in."""
    import torch

    fp32, bf16 = _at(sqlite_settings, tiny, 64, "fp32"), _at(sqlite_settings, tiny, 64, "bf16")
    engine = db.connect(fp32)
    _add(engine, [1, 2, 3, 4, 5])
    first = refresh.refresh_index(fp32)
    assert published_index_row(engine).details["base_model"]["precision"] == "fp32"
    em.clear_cache()
    encoder = em.load_encoder(em.active_model(bf16), bf16)
    if next(encoder.parameters()).dtype != torch.bfloat16:
        pytest.skip("bf16 was not kept on this machine (probe cosine)")
    _add(engine, [6])
    report = refresh.refresh_index(bf16)
    assert report.published and report.id != first.id and report.embedded == 1
    assert published_index_row(engine).details["base_model"]["precision"] == "bf16"
    stored = _stored(engine)
    half = _fresh(bf16, [1, 2, 3, 4, 5])
    assert min(float(stored[p] @ half[i]) for i, p in enumerate(range(1, 6))) >= em.MIN_COSINE


def test_an_index_records_the_embedding_settings_it_was_built_with(
    sqlite_settings: Settings, tiny: str
) -> None:
    s = _at(sqlite_settings, tiny, 16, "fp32")
    _add(db.connect(s), [1, 2, 3])
    report = refresh.refresh_index(s)
    row = published_index_row(db.connect(s))
    meta = json.loads((Path(report.path) / "meta.json").read_text(encoding="utf-8"))
    for recorded in (row.details, meta):
        flat = dict(_walk(recorded))
        seq = [v for k, v in flat.items() if "seq" in k]
        prec = [v for k, v in flat.items() if "precision" in k or "dtype" in k]
        assert 16 in seq, f"max_seq_length not recorded: {sorted(flat)}"
        assert any(str(v).endswith(("fp32", "float32")) for v in prec), (
            f"precision not recorded: {sorted(flat)}")


def test_index_check_notices_another_max_seq_length(sqlite_settings: Settings,
                                                     tiny: str) -> None:
    s16, s64 = _at(sqlite_settings, tiny, 16), _at(sqlite_settings, tiny, 64)
    _add(db.connect(s16), [1, 2, 3])
    refresh.refresh_index(s16)
    assert ix_status.check_consistency(s16)["ok"]
    report = ix_status.check_consistency(s64)
    assert not report["ok"] and any(_says(p, "LITPULSE_MAX_SEQ_LENGTH")
                                    for p in report["problems"]), (
        f"index built at 16 tokens, checked at 64: ok={report['ok']}, "
        f"problems={report['problems']}")


def test_a_search_embeds_the_query_at_the_index_s_sequence_length(
    sqlite_settings: Settings, tiny: str
) -> None:
    """A server started under another LITPULSE_MAX_SEQ_LENGTH than the published index was
    built with embeds its queries as the index's vectors were made: cut where the index
    records, so a long query scores as it would under the index's own setting."""
    from ranking.search import run_search

    s16, s64 = _at(sqlite_settings, tiny, 16), _at(sqlite_settings, tiny, 64)
    _add(db.connect(s16), [1, 2, 3])
    refresh.refresh_index(s16)
    query = "sepsis " + LONG[:400]
    want = run_search(s16, query, k=3, mode="semantic")
    em.clear_cache()  # `litpulse serve` started with LITPULSE_MAX_SEQ_LENGTH=64
    got = run_search(s64, query, k=3, mode="semantic")
    assert [(h.pmid, round(h.score, 6)) for h in got.hits] == [
        (h.pmid, round(h.score, 6)) for h in want.hits]


def test_shards_embedded_under_different_settings_never_publish_together(
    sqlite_settings: Settings, tiny: str
) -> None:
    from litpulse.pipeline.planning import embed_shard, plan_embedding_shards

    s16, s64 = _at(sqlite_settings, tiny, 16), _at(sqlite_settings, tiny, 64)
    engine = db.connect(s16)
    _add(engine, list(range(1, 9)))
    shards = plan_embedding_shards(s16, 2)  # the litpulse_reindex DAG: plan, map, publish
    assert embed_shard(s16, shards[0]) == 4  # worker A: LITPULSE_MAX_SEQ_LENGTH=16
    em.clear_cache()
    try:
        embed_shard(s64, shards[1])  # worker B: LITPULSE_MAX_SEQ_LENGTH=64
        report = refresh.refresh_index(s64, embed=False)
    except ConsistencyError as exc:
        assert _says(exc, "LITPULSE_MAX_SEQ_LENGTH"), exc
        return
    stored = _stored(engine)
    at16, at64 = _fresh(s16, [2, 4, 6, 8]), _fresh(s64, [1, 3, 5, 7])
    assert not report.published, (
        "published one index of shard 0 cut at 16 tokens and shard 1 cut at 64: "
        f"cos(stored 2, 16-token) {float(stored[2] @ at16[0]):.4f}, "
        f"cos(stored 1, 64-token) {float(stored[1] @ at64[0]):.4f}")


def test_the_encoder_cache_is_keyed_by_precision(sqlite_settings: Settings, tiny: str) -> None:
    import torch

    fp32, bf16 = _at(sqlite_settings, tiny, 64, "fp32"), _at(sqlite_settings, tiny, 64, "bf16")
    spec = em.active_model(fp32)
    alone = em.load_encoder(spec, bf16)
    if next(alone.parameters()).dtype != torch.bfloat16:
        pytest.skip("bf16 was not kept on this machine (probe cosine)")
    em.clear_cache()
    first = em.load_encoder(spec, fp32)
    second = em.load_encoder(spec, bf16)
    assert next(second.parameters()).dtype == torch.bfloat16, (
        f"asked for bf16, got the cached {next(second.parameters()).dtype} encoder "
        f"(same object: {first is second})")


def test_a_pooling_change_in_the_model_folder_is_noticed(
    sqlite_settings: Settings, tiny: str, tmp_path: Path
) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny, folder)
    s = _at(sqlite_settings, str(folder), 64)
    engine = db.connect(s)
    _add(engine, [1, 2, 3])
    refresh.refresh_index(s)
    before = _fresh(s, [1])
    pooling = folder / "1_Pooling" / "config.json"
    config = json.loads(pooling.read_text())
    config["pooling_mode"] = "cls"  # the model folder updated in place
    pooling.write_text(json.dumps(config))
    after = _fresh(s, [1])
    assert float(before[0] @ after[0]) < 0.99  # precondition: another vector per text
    _add(engine, [4])
    em.clear_cache()
    try:
        refresh.refresh_index(s)
    except ConsistencyError as exc:
        assert "base model changed" in str(exc), exc
        return
    raise AssertionError(
        "refresh embedded article 4 with CLS pooling beside mean-pooled vectors; "
        f"fingerprint unchanged ({em.base_fingerprint(str(folder))})")


def test_max_seq_length_beyond_the_model_is_refused_clearly(sqlite_settings: Settings,
                                                            tiny: str) -> None:
    s = _at(sqlite_settings, tiny, 512)  # the tiny model has 128 positions
    try:
        encoder = em.load_encoder(em.active_model(s), s)
        out = em.embed_texts(encoder, [LONG * 4], s)
    except Exception as exc:  # noqa: BLE001 - which error is the point
        assert isinstance(exc, ConfigError) and _says(exc, "LITPULSE_MAX_SEQ_LENGTH"), (
            f"unhelpful failure: {type(exc).__name__}: {str(exc)[:160]}")
        return
    assert out.shape == (1, 32)  # clamped to what the model can take: also fine


def test_search_under_another_base_model_says_so(
    sqlite_settings: Settings, tiny: str, tmp_path: Path
) -> None:
    from ranking.search import run_search

    other = _build_tiny(tmp_path / "other", seed=7)  # same dimension, other weights
    a, b = _at(sqlite_settings, tiny, 64), _at(sqlite_settings, other, 64)
    _add(db.connect(a), [1, 2, 3])
    refresh.refresh_index(a)
    assert ix_status.check_consistency(b)["ok"] is False  # the check does notice
    em.clear_cache()
    try:
        result = run_search(b, "sepsis biomarkers", k=3, mode="semantic")
    except ConsistencyError as exc:
        assert "base model changed" in str(exc) or _says(exc, "LITPULSE_MODEL"), exc
        return
    raise AssertionError(f"searched index {result.index_version} of {tiny} with queries "
                         f"embedded by {other}: {len(result.hits)} hits, no warning")


# ---------------------------------------------------------------------------- what holds


def test_encoders_and_query_vectors_are_keyed_by_max_seq_length(sqlite_settings: Settings,
                                                                tiny: str) -> None:
    """In one process, another max_seq_length never gets a cached encoder or query vector
    made under the old one."""
    s16, s64 = _at(sqlite_settings, tiny, 16), _at(sqlite_settings, tiny, 64)
    spec = em.active_model(s16)
    e16, e64 = em.load_encoder(spec, s16), em.load_encoder(spec, s64)
    assert e16 is not e64 and e16.max_seq_length == 16 and e64.max_seq_length == 64
    query = "sepsis " + LONG[:300]
    q16, q64 = em.encode_query(s16, spec, query), em.encode_query(s64, spec, query)
    assert float(q16[0] @ q64[0]) < 0.999
    np.testing.assert_allclose(q16, em.embed_texts(e16, [query], s16), atol=1e-6)


def test_vectors_are_unit_length_without_a_normalize_module(sqlite_settings: Settings,
                                                             tiny: str) -> None:
    """The tiny model has no Normalize module: embed_texts normalises anyway, so whether a
    model folder normalises cannot change the stored vectors' scale (blank text: zeros)."""
    s = _at(sqlite_settings, tiny, 64)
    encoder = em.load_encoder(em.active_model(s), s)
    assert not any(type(m).__name__ == "Normalize" for m in encoder)
    out = em.embed_texts(encoder, [LONG, "sepsis", "  "], s)
    np.testing.assert_allclose(np.linalg.norm(out[:2], axis=1), 1.0, atol=1e-5)
    assert not out[2].any()


def test_other_weights_under_the_same_path_are_refused_by_refresh_and_check(
    sqlite_settings: Settings, tiny: str, tmp_path: Path
) -> None:
    """The guard that exists: the base model's fingerprint (top-level files, weights'
    bytes) is recorded per index version; a refresh under another model refuses and
    `litpulse index check` says so."""
    folder = tmp_path / "model"
    shutil.copytree(tiny, folder)
    s = _at(sqlite_settings, str(folder), 64)
    engine = db.connect(s)
    _add(engine, [1, 2])
    refresh.refresh_index(s)
    other = _build_tiny(tmp_path / "other", seed=3)
    shutil.copyfile(Path(other) / "model.safetensors", folder / "model.safetensors")
    _add(engine, [3])
    em.clear_cache()
    with pytest.raises(ConsistencyError, match="base model changed"):
        refresh.refresh_index(s)
    check = ix_status.check_consistency(s)
    assert not check["ok"] and any("base model changed" in p for p in check["problems"])


@pytest.mark.filterwarnings("ignore::FutureWarning")  # peft 0.21 on transformers 5.23
def test_a_promotion_half_embedded_keeps_serving_the_old_model(
    sqlite_settings: Settings, tiny: str, tmp_path: Path
) -> None:
    """Vectors are keyed by model version: with an adapter promoted and only one shard of
    its vectors written, no partial index is published, searches embed the query with the
    published index's own model version, and the check says a re-index is pending."""
    import torch
    from peft import LoraConfig, get_peft_model
    from sentence_transformers import SentenceTransformer

    from ranking.search import run_search

    s = _at(sqlite_settings, tiny, 64)
    engine = db.connect(s)
    _add(engine, list(range(1, 9)))
    first = refresh.refresh_index(s)
    torch.manual_seed(1)
    model = SentenceTransformer(tiny, device="cpu")
    adapter = tmp_path / "adapter"
    get_peft_model(model[0].auto_model, LoraConfig(
        r=4, lora_alpha=16, target_modules=["query", "value"], init_lora_weights=False,
    )).save_pretrained(str(adapter))
    with engine.begin() as conn:
        conn.execute(insert(model_versions).values(
            id="lora-1", base_model=tiny, adapter_path=str(adapter), status="active",
            created_at=db.utcnow(), promoted_at=db.utcnow()))
    spec = em.active_model(s, engine)
    assert spec.id == "lora-1"
    assert em.embed_pending(s, spec, engine=engine, shard=0, shards=2) == 4
    kept = refresh.refresh_index(s, embed=False)
    assert not kept.published and kept.id == first.id and "no vector of model" in kept.reason
    result = run_search(s, "sepsis biomarkers", k=3, mode="semantic")
    assert result.index_version == first.id and result.model_version == "base"
    assert set(_stored(engine, "base")) == set(range(1, 9))  # old rows untouched
    check = ix_status.check_consistency(s)
    assert any("re-index is pending" in p for p in check["problems"])
