"""Hostile review (session 39d): the learning loop on a crashing machine (``litpulse
retrain``, LoRA adapters, promotion, the model versions the index and search use).

Every test drives the real code with the tiny random encoder of ``tests/tiny_encoder.py``
(one training step, about a second), on SQLite and PostgreSQL: :func:`retrain.lora.train`,
:func:`retrain.registry.promote` / ``rollback``, :func:`ranking.refresh.refresh_index`,
:func:`ranking.embed.load_encoder` (what a search loads).

Findings (each was a strict xfail before its fix; all three fixed, plain tests now):

X1 **An adapter folder whose ``adapter_config.json`` is gone or cut passes for one that
   can serve.** ``ranking.embed.adapter_problem`` checks the folder and the weights'
   SHA-256, not the config peft reads beside them. A restore or copy cut short, a config
   deleted by hand: ``models rollback`` re-activates such a version (reproduced: the
   rollback of ``b`` chose ``a``, whose config was cut to 40 bytes, ``skipped: []``),
   ``models promote`` switches to it and fails only in the re-index, and loading it (a
   search) raises peft's ``JSONDecodeError`` / ``ValueError: Can't find
   'adapter_config.json'`` instead of the ``ConsistencyError`` naming the repair.
   **Fixed**: ``adapter_problem`` also asks, of a version with recorded weights, for a
   readable peft config (``ranking.embed._config_problem``): promote refuses, rollback
   passes over, a search is told. A config whose values changed (another ``lora_alpha``)
   is still not told: its bytes are not recorded (noticed, not fixed).
   (test_x1_an_adapter_whose_config_is_gone_or_cut_cannot_serve)

X2 **A fine-tuned version whose base model folder moved cannot be served again by
   pointing ``LITPULSE_MODEL`` at the new place,** though every message says so
   ("restore the model there, or point LITPULSE_MODEL at a copy of it"). The version's
   row records the base model's absolute path (``model_versions.base_model``) and
   ``version_base_path`` returns it as it is: with the model moved and
   ``LITPULSE_MODEL`` set to its new folder, searches, ``index refresh`` and a continued
   retrain are refused for good; ``index refresh --rebuild`` drops every stored vector of
   the version and then fails the same way (reproduced: 30 of 30 dropped). Only moving
   the model back, or leaving the fine-tuned model (rollback, ``--from-base``), helps.
   **Fixed**: ``relocate_adapters`` (run by every refresh, promotion, rollback and
   retrain) also points a version whose base folder is gone at ``LITPULSE_MODEL`` when
   that folder's fingerprint is the one the version's index recorded
   (``ranking.embed._relocate_bases``); another model there is never taken (held test).
   A candidate never indexed has no recorded fingerprint and keeps its path.
   (test_x2_a_moved_base_model_serves_its_fine_tuned_version_again)

X3 **``index refresh --rebuild`` with the base model folder missing drops every stored
   vector, then fails.** ``refresh._base_current`` deletes the model version's
   embeddings (and records a rebuild) before anything loads the model; the load then
   fails ("base model folder ... is missing"): once the folder is back, every article
   must be embedded again (hours at PubMed's size) where nothing had changed.
   **Fixed**: ``_base_current`` refuses before the drop when the base folder is missing
   (``ranking.embed.base_missing``, the message ``load_encoder`` gives too).
   (test_x3_a_rebuild_without_its_base_model_drops_nothing)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from bench.drift import insert_batch, make_drugs
from litpulse.core import db
from litpulse.core.errors import ConfigError, ConsistencyError
from litpulse.core.schema import embeddings
from litpulse.core.settings import Settings
from litpulse.core.states import ModelStatus
from litpulse.pipeline.planning import reindex_now
from ranking.embed import active_model, load_encoder, model_spec, rebuild_record
from ranking.refresh import refresh_index
from retrain import registry
from retrain.lora import LoraOptions, TrainResult, train
from retrain.pairs import Pair

OPTS = LoraOptions(
    max_steps=1, batch_size=4, max_seq_length=32, warmup_steps=0, precision="fp32", max_seconds=1e5
)
PAIRS = [Pair(f"Zorvex trial {i}", f"quatesmab cohort {i}", "title_abstract", i) for i in range(8)]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    from tests.tiny_encoder import build_tiny_encoder

    return build_tiny_encoder(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_model: str) -> TrainResult:
    """One real adapter of the tiny encoder (config, weights), trained once."""
    home = tmp_path_factory.mktemp("train-home")
    s = Settings(home=home).replace(model=tiny_model, max_seq_length=32, device="cpu")
    return train(s, PAIRS, OPTS, home / "adapter")


def _tiny(settings: Settings, model: str) -> Settings:
    return settings.replace(model=model, max_seq_length=32, device="cpu")


def _version(settings: Settings, tag: str, trained: TrainResult) -> str:
    """A registered version holding a copy of the trained adapter (marked as this
    store's, as a retrain writes it)."""
    vid = registry.new_version_id(hashlib.sha256(tag.encode()).hexdigest())
    folder = settings.ensure_home() / "adapters" / vid
    shutil.copytree(trained.output_dir, folder)
    db.mark_folder(folder, db.store_id(db.connect(settings)))
    registry.register(
        settings,
        id=vid,
        adapter_path=str(folder),
        adapter_sha256=trained.sha256,
        parent_id=None,
        window_start=None,
        window_end=dt.datetime(2024, 12, 1, tzinfo=dt.UTC),
        pair_counts={"title_abstract": 8},
        options={},
        metrics={},
    )
    time.sleep(0.01)  # distinct created_at / promoted_at
    return vid


def _corpus(settings: Settings) -> None:
    insert_batch(
        db.connect(settings),
        start_pmid=1000,
        n=30,
        start=dt.date(2024, 1, 1),
        days=100,
        ingested=dt.datetime(2024, 7, 1, tzinfo=dt.UTC),
        drugs=make_drugs(5),
        seed=1,
    )


def _stored(settings: Settings, model_version: str) -> int:
    with db.connect(settings).connect() as conn:
        return int(
            conn.execute(
                select(func.count())
                .select_from(embeddings)
                .where(embeddings.c.model_version == model_version)
            ).scalar()
            or 0
        )


def _none(_settings: Settings) -> None:
    return None


# ------------------------------------------------------------------------------- X1


@pytest.mark.parametrize("damage", ["cut", "gone"])
def test_x1_an_adapter_whose_config_is_gone_or_cut_cannot_serve(
    settings: Settings, tiny_model: str, trained: TrainResult, damage: str
) -> None:
    s = _tiny(settings, tiny_model)
    p, a, b = (_version(s, tag, trained) for tag in "pab")
    for vid in (p, a, b):
        registry.promote(s, vid, by="ann", reindex=_none)
    config = Path(registry.get_model(s, a).adapter_path or "") / "adapter_config.json"
    if damage == "cut":  # a copy or restore cut short
        config.write_text(config.read_text()[:40])
    else:
        config.unlink()

    with pytest.raises(ConsistencyError, match="adapter_config"):  # a search's 503
        load_encoder(model_spec(s, a), s, cache=False)
    with pytest.raises(ConfigError, match="adapter_config"):
        registry.promote(s, a, by="ann", reindex=_none)
    assert registry.active_version(s).id == b  # type: ignore[union-attr]
    out = registry.rollback(s, by="ann", reindex=_none)
    assert [x["id"] for x in out["skipped"]] == [a], out  # passed over, said so
    assert out["model"] == p
    assert registry.get_model(s, a).status is ModelStatus.REJECTED


# ------------------------------------------------------------------------------- X2


def _served_fine_tuned(
    settings: Settings, tiny_model: str, trained: TrainResult, first: Path
) -> tuple[Settings, str]:
    """A copy of the tiny encoder in ``first`` (``LITPULSE_MODEL``), 30 articles, and a
    fine-tuned version of it promoted with its index published; the settings and its id."""
    shutil.copytree(Path(tiny_model).parent, first)
    s = _tiny(settings, str(first / "encoder"))
    _corpus(s)
    refresh_index(s)
    vid = _version(s, "a", trained)
    assert registry.promote(s, vid, by="ann", reindex=reindex_now)["index"]["model_version"] == vid
    return s, vid


def test_x2_a_moved_base_model_serves_its_fine_tuned_version_again(
    settings: Settings, tiny_model: str, trained: TrainResult, tmp_path: Path
) -> None:
    from retrain.run import _usable_active

    first = tmp_path / "models-old"
    s, vid = _served_fine_tuned(settings, tiny_model, trained, first)
    served = _stored(s, vid)
    assert served == 30

    moved = tmp_path / "models-new"
    shutil.move(str(first), str(moved))  # the model's disk changed; LITPULSE_MODEL follows
    s2 = _tiny(settings, str(moved / "encoder"))
    report = refresh_index(s2)  # the repair every message names
    assert report.model_version == vid and report.embedded == 0, report
    assert _stored(s2, vid) == served  # nothing embedded again
    spec = active_model(s2)
    assert spec.base_model == s2.model_path
    load_encoder(spec, s2, cache=False)  # searches serve the fine-tuned model again
    active = registry.active_version(s2)
    assert active is not None and _usable_active(s2, active, from_base=False) == active


def test_held_another_model_at_the_new_path_is_not_taken_for_the_moved_one(
    settings: Settings, tiny_model: str, trained: TrainResult, tmp_path: Path
) -> None:
    """The other side of X2: a different model where ``LITPULSE_MODEL`` points now never
    serves a version trained on the model that is gone."""
    from tests.tiny_encoder import build_tiny_encoder

    first = tmp_path / "models-old"
    _s, vid = _served_fine_tuned(settings, tiny_model, trained, first)
    shutil.rmtree(first)
    other = build_tiny_encoder(tmp_path / "other", seed=7)  # same shape, other weights
    s2 = _tiny(settings, other)
    with pytest.raises(ConsistencyError, match="missing"):
        refresh_index(s2)
    assert active_model(s2).base_model == str(first / "encoder")
    assert _stored(s2, vid) == 30


# ------------------------------------------------------------------------------- X3


def test_x3_a_rebuild_without_its_base_model_drops_nothing(
    settings: Settings, tiny_model: str, tmp_path: Path
) -> None:
    first = tmp_path / "models"
    shutil.copytree(Path(tiny_model).parent, first)
    s = _tiny(settings, str(first / "encoder"))
    _corpus(s)
    refresh_index(s)
    assert _stored(s, "base") == 30
    aside = tmp_path / "aside"
    shutil.move(str(first), str(aside))  # a disk not mounted, a cache cleaned

    with pytest.raises(ConsistencyError, match="missing"):
        refresh_index(s, rebuild=True)
    assert _stored(s, "base") == 30
    assert rebuild_record(db.connect(s), "base") is None
    shutil.move(str(aside), str(first))  # back: nothing to embed again
    assert refresh_index(s).embedded == 0
