"""The embedder: only new/changed articles, normalised vectors, fast path == fp32, adapters.

Uses the bundled all-MiniLM-L6-v2 on a handful of short texts (seconds on a CPU).
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Engine, insert, select, update

from litpulse.core import db
from litpulse.core.errors import ConfigError, ConsistencyError, NotFoundError
from litpulse.core.schema import articles, embeddings, model_versions
from litpulse.core.settings import Settings
from ranking import embed as em

TEXTS = [
    "Statin therapy and the risk of dementia in older adults: a cohort study.",
    "CRISPR-Cas9 editing of BCL11A enhancer raises fetal haemoglobin in sickle cell disease.\n"
    "We treated 45 patients; fetal haemoglobin rose to 40% at 12 months (p < 0.001).",
    "Gut microbiome composition predicts response to immune checkpoint inhibitors.",
    "Remdesivir for hospitalised adults with COVID-19: a randomised, placebo-controlled trial "
    "across 60 sites, with time to recovery as the primary outcome measured over 29 days.",
]


def _add(engine: Engine, pmid: int, title: str, abstract: str = "", *,
         deleted: bool = False) -> None:
    now = db.utcnow()
    with engine.begin() as conn:
        conn.execute(insert(articles).values(
            pmid=pmid, version=1, source_kind="test", source_location="t", title=title,
            abstract=abstract, text_hash=f"{hash((title, abstract)) & 0xFFFFFFFF:x}",
            is_deleted=deleted, best_date=dt.date(2024, 5, 1), ingested_at=now, updated_at=now,
        ))


def _vectors(engine: Engine, model: str = "base") -> dict[int, np.ndarray]:
    with engine.connect() as conn:
        rows = conn.execute(select(embeddings.c.pmid, embeddings.c.vector)
                            .where(embeddings.c.model_version == model)).all()
    return {int(p): em.vector_from_bytes(v) for p, v in rows}


def _plain(settings: Settings, texts: list[str]) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(settings.model_path, device="cpu")
    model.max_seq_length = settings.max_seq_length
    return np.asarray(model.encode(texts, normalize_embeddings=True, convert_to_numpy=True))


def test_embed_pending_only_new_and_changed(settings: Settings, engine: Engine) -> None:
    for n, text in enumerate(TEXTS[:3], start=1):
        _add(engine, n, text, "Background and methods." if n == 2 else "")
    _add(engine, 9, TEXTS[3], deleted=True)
    assert em.count_pending(settings, "base") == 3
    assert em.embed_pending(settings) == 3
    first = _vectors(engine)
    assert sorted(first) == [1, 2, 3]
    for vec in first.values():
        assert vec.dtype == np.float32 and vec.shape == (384,)
        assert np.linalg.norm(vec) == pytest.approx(1.0, abs=1e-5)

    assert em.embed_pending(settings) == 0  # nothing new

    with engine.begin() as conn:
        conn.execute(update(articles).where(articles.c.pmid == 2)
                     .values(title=TEXTS[3], text_hash="changed"))
    _add(engine, 4, TEXTS[0] + " Revisited.")
    assert em.embed_pending(settings) == 2
    second = _vectors(engine)
    assert np.array_equal(second[1], first[1]) and np.array_equal(second[3], first[3])
    assert float(second[2] @ first[2]) < 0.95  # new text, new vector
    assert 9 not in second
    with engine.connect() as conn:
        hashes = dict(conn.execute(select(embeddings.c.pmid, embeddings.c.text_hash)).all())
    assert hashes[2] == "changed"


def test_fast_path_matches_plain_fp32_encode(sqlite_settings: Settings) -> None:
    texts = [em.article_text(t, "") for t in TEXTS] + [" ".join(TEXTS) * 3]
    reference = _plain(sqlite_settings, texts)
    for precision in ("auto", "bf16", "fp32"):
        settings = sqlite_settings.replace(embed_precision=precision, embed_batch_size=2)
        em.clear_cache()
        encoder = em.load_encoder(em.active_model(settings), settings)
        fast = em.embed_texts(encoder, texts, settings)
        assert fast.dtype == np.float32 and fast.shape == reference.shape
        np.testing.assert_allclose(np.linalg.norm(fast, axis=1), 1.0, atol=1e-5)
        cos = np.sum(fast * reference, axis=1)
        assert cos.min() >= 0.99, (precision, cos)
    em.clear_cache()


def test_encode_query_and_article_text(sqlite_settings: Settings) -> None:
    spec = em.active_model(sqlite_settings)
    assert spec == em.ModelSpec("base", sqlite_settings.model_path, None)
    q = em.encode_query(sqlite_settings, spec, "statins and dementia")
    assert q.shape == (1, 384) and q.dtype == np.float32
    same = em.encode_query(sqlite_settings, "base", "statins and dementia")
    np.testing.assert_allclose(q, same, atol=1e-6)
    assert em.load_encoder(spec, sqlite_settings) is em.load_encoder(spec, sqlite_settings)
    assert em.article_text(" Title. ", " Abstract ") == "Title.\nAbstract"
    assert em.article_text("Title", None) == "Title"
    with pytest.raises(NotFoundError):
        em.model_spec(sqlite_settings, "nope")
    with pytest.raises(ConfigError):
        em.ModelSpec("", "x")
    with pytest.raises(ConsistencyError, match="is missing: restore"):  # not the caller's
        em.load_encoder(em.ModelSpec("m", "/no/such/model"), sqlite_settings)  # input (36c X6)


def test_query_vectors_are_cached_per_model_and_bounded(sqlite_settings: Settings) -> None:
    """A repeated query (the next page, another sort order) skips the encoder; the cache is
    read-only, bounded, keyed by model version, and forgotten with the encoders."""
    import torch

    em.clear_cache()
    threads = torch.get_num_threads()
    # a thread count other than the process's (one per xdist worker), so it is restored
    settings = sqlite_settings.replace(query_cache_size=2, query_threads=threads % 2 + 1)
    spec = em.active_model(settings)
    first = em.encode_query(settings, spec, "statins and dementia")
    assert torch.get_num_threads() == threads  # the query's thread count is restored
    assert em.encode_query(settings, spec, "statins and dementia") is first
    with pytest.raises(ValueError):
        first[0, 0] = 1.0  # shared by every caller: nobody may change it
    # the vector equals what the encoder gives for the text, uncached
    np.testing.assert_allclose(
        first, em.embed_texts(em.load_encoder(spec, settings), ["statins and dementia"],
                              settings), atol=1e-6)
    other = em.ModelSpec("other", spec.base_model, None)  # another model version: own entry
    assert em.encode_query(settings, other, "statins and dementia") is not first
    em.encode_query(settings, spec, "sepsis")  # size 2: the oldest entry goes
    assert em.encode_query(settings, spec, "statins and dementia") is not first
    em.clear_cache()
    off = settings.replace(query_cache_size=0)
    a = em.encode_query(off, spec, "sepsis")
    assert em.encode_query(off, spec, "sepsis") is not a
    np.testing.assert_allclose(a, em.encode_query(off, spec, "sepsis"), atol=1e-6)
    em.clear_cache()


@pytest.mark.filterwarnings("ignore::FutureWarning")  # peft 0.21 on transformers 5.23
def test_active_model_with_lora_adapter(sqlite_settings: Settings, tmp_path: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from sentence_transformers import SentenceTransformer

    settings = sqlite_settings.replace(embed_precision="fp32")
    torch.manual_seed(0)
    model = SentenceTransformer(settings.model_path, device="cpu")
    config = LoraConfig(r=4, lora_alpha=16, target_modules=["query", "value"],
                        init_lora_weights=False)
    peft_model = get_peft_model(model[0].auto_model, config)
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(str(adapter))
    model[0].model = peft_model
    model.max_seq_length = settings.max_seq_length
    expected = np.asarray(model.encode(TEXTS, normalize_embeddings=True))

    engine = db.connect(settings)
    with engine.begin() as conn:
        conn.execute(insert(model_versions).values(
            id="lora-1", base_model="all-MiniLM-L6-v2", adapter_path=str(adapter),
            status="active", created_at=db.utcnow(), promoted_at=db.utcnow()))
    spec = em.active_model(settings, engine)
    assert spec == em.ModelSpec("lora-1", settings.model_path, str(adapter))
    merged = em.embed_texts(em.load_encoder(spec, settings), TEXTS, settings)
    assert np.sum(merged * expected, axis=1).min() > 0.999
    base = em.embed_texts(em.load_encoder(em.model_spec(settings, "base"), settings), TEXTS,
                          settings)
    assert np.sum(merged * base, axis=1).max() < 0.999  # the adapter changes the vectors

    _add(engine, 1, TEXTS[0])
    assert em.embed_pending(settings) == 1
    assert list(_vectors(engine, "lora-1")) == [1] and _vectors(engine, "base") == {}
    em.clear_cache()


def test_one_device_rule_and_base_id_for_ranking_and_retraining(
    sqlite_settings: Settings,
) -> None:
    from litpulse.core.states import Device
    from retrain import lora, registry

    device = em.resolve_device(sqlite_settings.replace(device="auto"))
    assert isinstance(device, Device) and device in (Device.CPU, Device.CUDA)
    assert em.resolve_device(sqlite_settings.replace(device="cpu")) == "cpu"
    assert lora.resolve_device is em.resolve_device  # retraining uses ranking's rule
    assert not hasattr(lora, "load_encoder")  # the one encoder loader is ranking.embed's
    assert registry.BASE_ID == em.BASE_MODEL_ID


def test_encoder_cache_keeps_the_newest_few_and_frees_the_rest(sqlite_settings: Settings) -> None:
    """A server that lives through many promotions (one model version a night) holds the
    encoders of the newest few versions only: an older one is evicted, and its memory goes
    (it is collectable, also after a server's ``gc.freeze``), instead of ~90 MB a night."""
    import gc
    import weakref

    em.clear_cache()
    base = em.active_model(sqlite_settings).base_model
    specs = [em.ModelSpec(f"v{i}", base, None) for i in range(em.ENCODER_CACHE + 2)]
    # the first encoder (the one that must be freed) as a server loads it, in the half type
    # where the machine has one; the others, which only fill the cache, in fp32: making
    # and probing a half copy took 40 % of this test
    fp32 = sqlite_settings.replace(embed_precision="fp32")
    first = weakref.ref(em.load_encoder(specs[0], sqlite_settings))
    gc.freeze()  # what litpulse serve does once the first model is loaded
    try:
        for spec in specs[1:]:
            em.load_encoder(spec, fp32)
        assert em.cached_encoder(specs[0], sqlite_settings) is None
        cached = [s for s in specs if em.cached_encoder(s, fp32) is not None]
        assert cached == specs[-em.ENCODER_CACHE:]
        gc.collect()
        assert first() is None
        # a hit makes an entry the newest: it survives the next load
        keep = specs[-em.ENCODER_CACHE]
        em.load_encoder(keep, fp32)
        em.load_encoder(specs[0], fp32)
        assert em.cached_encoder(keep, fp32) is not None
    finally:
        gc.unfreeze()
        em.clear_cache()


def test_the_base_model_fingerprint_follows_the_model_not_its_saving(
    sqlite_settings: Settings, tmp_path: Path
) -> None:
    """Another model of the same shape changes it; the same model saved again by another
    library version (or copied elsewhere) does not."""
    import json
    import shutil

    from ranking.embed import base_fingerprint

    original = sqlite_settings.model_path
    copy = tmp_path / "copy"
    shutil.copytree(original, copy, symlinks=True, copy_function=os.symlink)
    assert base_fingerprint(str(copy)) == base_fingerprint(original)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").unlink()
    (copy / "config.json").write_text(json.dumps({**config, "transformers_version": "9.9.9"}))
    assert base_fingerprint(str(copy)) == base_fingerprint(original)
    (copy / "config.json").unlink()
    (copy / "config.json").write_text(json.dumps({**config, "hidden_act": "relu"}))
    assert base_fingerprint(str(copy)) != base_fingerprint(original)
    assert base_fingerprint("no/such/model") != base_fingerprint(original)


def test_a_query_is_embedded_without_its_closing_marks(sqlite_settings: Settings) -> None:
    """``Is X used?`` is a question about X: the ``?`` (or a sentence's ``.``) says how it
    is asked, not what about, and is left out of the embedded text — also of the cache key."""
    question = "Is durvalumab used for lung cancer? "
    assert em.query_text(question) == "Is durvalumab used for lung cancer"
    assert em.query_text("Describe Escobar syndrome.") == "Describe Escobar syndrome"
    assert em.query_text("what?!") == "what"
    assert em.query_text("Is it A. baumannii?") == "Is it A. baumannii"  # inner marks stay
    assert em.query_text("IL-6 and TNF-α") == "IL-6 and TNF-α"
    assert em.query_text(" ? ") == "?"  # marks alone stay what was asked
    em.clear_cache()
    spec = em.active_model(sqlite_settings)
    asked = em.encode_query(sqlite_settings, spec, "Is statin use linked to dementia?")
    bare = em.encode_query(sqlite_settings, spec, "Is statin use linked to dementia")
    assert asked is bare  # one cache entry: the same embedded text
    encoder = em.load_encoder(spec, sqlite_settings)
    with_mark = em.embed_texts(encoder, ["Is statin use linked to dementia?"], sqlite_settings)
    assert float(np.sum(with_mark * asked)) < 0.999  # the mark moves the vector: it is gone
    em.clear_cache()


def test_query_text_drops_every_closing_mark_spaced_or_not() -> None:
    """``Is X used ?.`` and ``Is X used ? .`` close the same question: both should embed
    as ``Is X used`` (and the rule applied to its own output changes nothing)."""
    assert em.query_text("Is X used ?.") == "Is X used"
    for typed in ("Is X used ? .", "what ? !", "Describe Y . ."):
        once = em.query_text(typed)
        assert once == em.query_text(once), (typed, once)
        assert not once.endswith(("?", ".", "!")), (typed, once)
