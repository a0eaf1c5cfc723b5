"""Which base model an index's vectors come from: the fingerprint, an upgraded
deployment's older records, and the vectors that must never mix two models.

Vectors are synthetic where no model is needed (as in test_index.py).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select, update

from litpulse.core import db
from litpulse.core.schema import index_versions
from litpulse.core.settings import Settings
from ranking import embed as em
from ranking import index_status as ix_status
from ranking import refresh
from ranking.models import published_index_row
from tests.ranking.test_index import _fine_tuned_copy, add_articles, change_article


def _of(record: dict[str, Any]) -> dict[str, Any]:
    """A base-model record without the precision (that of the encoder the process ran)."""
    return {k: v for k, v in record.items() if k != "precision"}


def _details(engine: Engine, version_id: str) -> dict:
    with engine.connect() as conn:
        return dict(conn.execute(select(index_versions.c.details)
                                 .where(index_versions.c.id == version_id)).scalar_one())


def _make_legacy(engine: Engine, version_id: str, settings: Settings) -> None:
    """The record an index version got before the weights' bytes were hashed."""
    details = _details(engine, version_id)
    details["base_model"] = {"path": settings.model_path,
                             "fingerprint": em.base_fingerprint(settings.model_path, legacy=True)}
    with engine.begin() as conn:
        conn.execute(update(index_versions).where(index_versions.c.id == version_id)
                     .values(details=details))


def test_the_fingerprint_hashes_the_weights_bytes(
    sqlite_settings: Settings, tmp_path: Path
) -> None:
    """A fine-tuned copy (same sizes, same configs) is another model; a copy (symlinks,
    another folder) of the same one is not; rewriting a weight file in place with other
    bytes is noticed within the same process."""
    original = sqlite_settings.model_path
    link = tmp_path / "linked"
    shutil.copytree(original, link, symlinks=True, copy_function=os.symlink)
    assert em.base_fingerprint(str(link)) == em.base_fingerprint(original)
    tuned = _fine_tuned_copy(original, tmp_path / "tuned")
    assert em.base_fingerprint(str(tuned)) != em.base_fingerprint(original)
    # the old way could not tell them apart: what a legacy record is checked with
    assert em.base_fingerprint(str(tuned), legacy=True) == em.base_fingerprint(original,
                                                                      legacy=True)

    inplace = tmp_path / "inplace"
    shutil.copytree(original, inplace)
    before = em.base_fingerprint(str(inplace))
    weights = inplace / "model.safetensors"
    st = weights.stat()
    _fine_tuned_copy(original, tmp_path / "newer", seed=2)
    shutil.copyfile(tmp_path / "newer" / "model.safetensors", weights)  # same size, in place
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))  # even with the mtime kept
    assert weights.stat().st_size == st.st_size
    assert em.base_fingerprint(str(inplace)) != before


def test_the_fingerprint_of_the_bundled_model_is_fast(sqlite_settings: Settings) -> None:
    """Hashing the bundled model's weights (87 MiB) once per process state is cheap; the
    second ask is cached."""
    path = sqlite_settings.model_path
    em._fingerprint.cache_clear()
    em._file_sha1.cache_clear()
    t0 = time.perf_counter()
    em.base_fingerprint(path)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    em.base_fingerprint(path)
    again = time.perf_counter() - t0
    assert first < 5.0, first  # ~0.1 s measured; generous for shared CI cores
    assert again < 0.05, again


def test_an_upgraded_deployment_keeps_its_vectors_and_records_the_new_fingerprint(
    sqlite_settings: Settings,
) -> None:
    """An index published before the upgrade records the sizes-only fingerprint. The
    check accepts it while the model's sizes and configs match; the first refresh records
    the full fingerprint in the row without embedding or rebuilding anything; from then on
    a same-shape model is noticed."""
    s = sqlite_settings
    engine = db.connect(s)
    add_articles(engine, list(range(1, 11)))
    v1 = refresh.refresh_index(s, embed=False)
    _make_legacy(engine, v1.id, s)
    assert em.legacy_base_record(_details(engine, v1.id))

    assert ix_status.check_consistency(s)["ok"]
    assert em.embed_pending(s) == 0  # the DAG's embed step takes the legacy record too
    report = refresh.refresh_index(s)  # the first night after the upgrade
    assert not report.published and report.embedded == 0 and not report.rebuilt
    record = _details(engine, v1.id)["base_model"]
    # the sequence length its vectors were cut at is not known: not recorded, not compared
    assert record == em.base_record(s.model_path) and record["weights"] == em.WEIGHTS_HASH
    assert ix_status.check_consistency(s)["ok"]

    change_article(engine, 3)  # an ordinary night: an incremental update, the full record
    v2 = refresh.refresh_index(s, embed=False)
    assert v2.published and not v2.rebuilt
    assert _details(engine, v2.id)["base_model"]["fingerprint"] == em.base_fingerprint(
        s.model_path)


def test_a_legacy_record_of_another_model_is_still_noticed(
    sqlite_settings: Settings, tmp_path: Path
) -> None:
    """A sizes-only record is taken only when it matches: another configuration is still
    a changed model, and nothing is recorded over it."""
    s = sqlite_settings
    engine = db.connect(s)
    add_articles(engine, list(range(1, 6)))
    v1 = refresh.refresh_index(s, embed=False)
    _make_legacy(engine, v1.id, s)
    other = tmp_path / "other"
    shutil.copytree(s.model_path, other, symlinks=True, copy_function=os.symlink)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").unlink()
    (other / "config.json").write_text(json.dumps({**config, "hidden_act": "relu"}))
    changed = s.replace(model=str(other))
    report = ix_status.check_consistency(changed)
    assert any("base model changed" in p for p in report["problems"])
    assert em.legacy_base_record(_details(engine, v1.id))


def _another_model(s: Settings, where: Path) -> Settings:
    """Settings whose LITPULSE_MODEL is another model (a config of its own)."""
    shutil.copytree(s.model_path, where, symlinks=True, copy_function=os.symlink)
    config = json.loads((where / "config.json").read_text())
    (where / "config.json").unlink()
    (where / "config.json").write_text(json.dumps({**config, "fine_tuned_on": "x"}))
    return s.replace(model=str(where))


def test_the_embedding_steps_refuse_beside_another_models_vectors(
    sqlite_settings: Settings, tmp_path: Path
) -> None:
    """LITPULSE_MODEL changed under a published index of 'base': the DAG's embed task,
    the reindex DAG's planning and shards refuse (not retryable) and write nothing; a
    `refresh --rebuild` drops the old vectors and embeds every article with the new
    model, after which embedding goes on as usual."""
    from litpulse.core.errors import ConsistencyError
    from litpulse.core.schema import embeddings
    from litpulse.pipeline.planning import EmbeddingShard, embed_shard, plan_embedding_shards

    s = sqlite_settings
    engine = db.connect(s)
    add_articles(engine, list(range(1, 6)))
    refresh.refresh_index(s, embed=False)
    other = _another_model(s, tmp_path / "other")
    add_articles(engine, [6], models=())  # a new article, pending

    def stored() -> list[tuple[int, bytes]]:
        with engine.connect() as conn:
            return sorted((int(p), bytes(v)) for p, v in conn.execute(
                select(embeddings.c.pmid, embeddings.c.vector)))

    before = stored()
    for step in (lambda: em.embed_pending(other),
                 lambda: plan_embedding_shards(other, 2),
                 lambda: embed_shard(other, EmbeddingShard(0, 2, "base", 1))):
        try:
            step()
        except ConsistencyError as exc:
            assert "base model changed" in str(exc) and "--rebuild" in str(exc)
            assert not exc.retryable
        else:
            raise AssertionError("embedded beside another model's vectors")
    assert stored() == before

    report = refresh.refresh_index(other, rebuild=True)
    assert report.published and report.rebuilt and report.embedded == 6
    assert _of(_details(engine, report.id)["base_model"]) == em.base_record(
        str(tmp_path / "other"), max_seq_length=other.max_seq_length)
    assert ix_status.check_consistency(other)["ok"]
    add_articles(engine, [7], models=())
    assert em.embed_pending(other) == 1


def test_a_kept_version_without_files_still_says_which_model_its_vectors_are(
    sqlite_settings: Settings, tmp_path: Path
) -> None:
    """The rollback case of test_a_kept_version_of_another_base_model_is_not_updated_in_place
    with the kept 'base' version's files pruned: a refresh would build a new index from the
    stored 'base' vectors (of the old model); the row still records that model, so the
    refresh refuses, and the rebuild embeds every article with the configured one."""
    from litpulse.core.errors import ConsistencyError
    from litpulse.core.schema import model_versions
    from tests.ranking.test_index import _activate

    s = sqlite_settings
    engine = db.connect(s)
    add_articles(engine, list(range(1, 6)), models=("base", "m2"))
    v_base = refresh.refresh_index(s, embed=False)
    other = _another_model(s, tmp_path / "other")
    _activate(engine, "m2", other)
    assert refresh.refresh_index(other, embed=False).model_version == "m2"
    with engine.begin() as conn:
        conn.execute(update(model_versions).where(model_versions.c.id == "m2")
                     .values(status="rejected"))
    shutil.rmtree(v_base.path)
    assert refresh.index_store.base_row(engine, "base") is None

    try:
        refresh.refresh_index(other)
    except ConsistencyError as exc:
        assert "base model changed" in str(exc) and v_base.id in str(exc)
    else:
        raise AssertionError("built from vectors of the old base model")
    report = refresh.refresh_index(other, rebuild=True)
    assert report.rebuilt and report.embedded == 5 and report.model_version == "base"
    assert ix_status.check_consistency(other)["ok"]


def test_a_kept_version_of_another_base_model_is_rebuilt_when_asked(
    sqlite_settings: Settings, tmp_path: Path
) -> None:
    """After the refusal of the rollback's re-index, `index refresh --rebuild` embeds
    every article with the configured model and records it; the old version's vectors
    are not reused."""
    from litpulse.core.schema import model_versions
    from tests.ranking.test_index import _activate

    s = sqlite_settings
    engine = db.connect(s)
    add_articles(engine, list(range(1, 6)), models=("base", "m2"))
    refresh.refresh_index(s, embed=False)
    other = _another_model(s, tmp_path / "other")
    _activate(engine, "m2", other)
    refresh.refresh_index(other, embed=False)
    with engine.begin() as conn:
        conn.execute(update(model_versions).where(model_versions.c.id == "m2")
                     .values(status="rejected"))
    report = refresh.refresh_index(other, rebuild=True)
    assert report.rebuilt and report.embedded == 5 and report.model_version == "base"
    assert _details(engine, report.id)["base_model"]["fingerprint"] == em.base_fingerprint(
        other.model_path)
    assert ix_status.check_consistency(other)["ok"]


# ------------------------------------------- an embedding rebuild killed half-way


_REBUILD = (
    "import sys\n"
    "import ranking.embed\n"
    "ranking.embed.CHUNK = 8  # several chunks, each its own transaction, on a small corpus\n"
    "from litpulse.app.cli import main\n"
    "sys.exit(main(['index', 'refresh', '--rebuild']))\n"
)


def _created(engine: Engine) -> dict[int, object]:
    from litpulse.core.schema import embeddings

    with engine.connect() as conn:
        rows = conn.execute(select(embeddings.c.pmid, embeddings.c.created_at)
                            .where(embeddings.c.model_version == "base")).all()
    return {int(p): t for p, t in rows}


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, int]:
    """The old model's index of 60 records, embedded for real once for this module's
    parameters (each works on a copy)."""
    from tests.litpulse.pipeline.test_reindex_heal import embedded_store

    return embedded_store(tmp_path_factory.mktemp("embedded"))


@pytest.mark.slow
@pytest.mark.parametrize("heal", ["refresh", "rebuild"])
def test_a_rebuild_killed_half_way_resumes_and_never_mixes_models(
    embedded: tuple[Settings, int], tmp_path: Path, heal: str
) -> None:
    """LITPULSE_MODEL changed; `litpulse index refresh --rebuild` dropped the old model's
    vectors and was SIGKILLed after some chunks of the new model's (hours in, at full
    size). Embedding is blocked until the rebuild is finished; what blocks it must say
    what is true and what finishes it, and what finishes it (the next refresh — the
    nightly's — or the `--rebuild` the message names) resumes it instead of dropping what
    was embedded. With LITPULSE_MODEL set back to the old model, the stored vectors of
    the new one must never be taken as current (they carry current text hashes)."""
    from litpulse.core.errors import ConsistencyError
    from tests.ingest.test_crash_resume import child_env, kill_when, self_killing
    from tests.litpulse.app.apistore import clone_store
    from tests.litpulse.pipeline.test_reindex_heal import _cli

    s = clone_store(embedded[0], tmp_path / "home")  # the old model's index, embedded
    engine = db.connect(s)
    first = published_index_row(engine)
    live = embedded[1]
    other = s.replace(model=str(_fine_tuned_copy(s.model_path, tmp_path / "other",
                                                 config_note="x")))
    db.dispose_engines()

    # killed once a chunk or more of the new model's vectors is committed, before all
    count = ("SELECT CASE WHEN count(*) BETWEEN 8 AND 50 THEN 1 ELSE 0 END FROM embeddings "
             "WHERE model_version = 'base'")
    kill_when(self_killing(["-c", _REBUILD], engine, count, 1),
              child_env(other, LITPULSE_MODEL=other.model_path), lambda: False,
              tmp_path / "child.log", label="index refresh --rebuild", timeout=180)
    index_files_cache_clear()
    engine = db.connect(s)
    before = _created(engine)
    assert 0 < len(before) < live
    assert published_index_row(engine).id == first.id

    # LITPULSE_MODEL set back: nothing may take the new model's vectors as current
    with pytest.raises(ConsistencyError, match="LITPULSE_MODEL"):
        em.embed_pending(s)
    with pytest.raises(ConsistencyError, match="LITPULSE_MODEL"):
        refresh.refresh_index(s)
    assert _created(engine) == before

    # the check says what is true: a rebuild was cut short, and what finishes it
    problems = ix_status.check_consistency(other)["problems"]
    assert any("cut short" in p and "litpulse index refresh" in p for p in problems), problems

    argv = ["index", "refresh"] + (["--rebuild"] if heal == "rebuild" else [])
    assert _cli(argv, other) == 0
    after = _created(engine)
    assert len(after) == live
    assert all(after[p] == t for p, t in before.items())  # resumed, not embedded again
    row = published_index_row(engine)
    assert _of(row.details["base_model"]) == em.base_record(
        other.model_path, max_seq_length=other.max_seq_length)
    assert ix_status.check_consistency(other)["ok"]
    assert em.embed_pending(other) == 0


def index_files_cache_clear() -> None:
    from ranking import index_files, lexical

    index_files._CACHE.clear()
    lexical._CACHE.clear()


def test_a_rebuild_cut_short_is_recorded_until_its_index_is_published(
    settings: Settings, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record of a rebuild under way, on both stores (synthetic vectors): written with
    the drop, read by every embedding step, removed by the publication."""
    from litpulse.core.errors import ConsistencyError
    from tests.ranking.test_index import _embed

    add_articles(engine, list(range(1, 6)))
    refresh.refresh_index(settings, embed=False)
    other = _another_model(settings, tmp_path / "other")

    def cut_short(*args: object, **kwargs: object) -> int:
        _embed(engine, [1, 2], "base")  # two chunks committed, then killed
        raise KeyboardInterrupt

    monkeypatch.setattr(refresh, "embed_pending", cut_short)
    with pytest.raises(KeyboardInterrupt):
        refresh.refresh_index(other, rebuild=True)
    monkeypatch.undo()
    assert em.rebuild_record(engine, "base") == em.base_record(
        other.model_path, max_seq_length=other.max_seq_length)
    with pytest.raises(ConsistencyError, match="cut short"):
        em.embed_pending(settings)  # LITPULSE_MODEL set back
    assert any("cut short" in p for p in ix_status.check_consistency(other)["problems"])

    em.check_stored_base(engine, em.active_model(other, engine))  # the nightly's goes on
    _embed(engine, [3, 4, 5], "base")  # (as it would embed the rest)
    report = refresh.refresh_index(other, embed=False)
    assert report.published and report.rebuilt and report.size == 5
    assert em.rebuild_record(engine, "base") is None
    assert ix_status.check_consistency(other)["ok"]
    with pytest.raises(ConsistencyError, match="--rebuild"):  # as before any rebuild
        em.embed_pending(settings)


def test_a_first_embedding_cut_short_is_never_resumed_with_another_base_model(
    settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    """A model version's first embedding (no index of it yet: a new deployment's, or a
    promotion's re-index; hours at full size, in shards) is cut short, and LITPULSE_MODEL
    is changed before it is finished. Nothing recorded which base model its vectors are of,
    so the rest was embedded with the new model beside them and the first index mixed two
    models. The first vectors now say which model they are of until an index is published:
    every embedding step under another model refuses, the `--rebuild` it names embeds
    everything again, and under the first model the embedding resumes and is published."""
    from litpulse.core.errors import ConsistencyError
    from litpulse.core.schema import embeddings
    from litpulse.pipeline.planning import plan_embedding_shards

    add_articles(engine, list(range(1, 7)), models=())  # stored, nothing embedded yet
    assert em.embed_pending(settings, shard=0, shards=2) == 3  # one shard, then cut short
    other = _another_model(settings, tmp_path / "other")

    def stored() -> list[tuple[int, bytes]]:
        with engine.connect() as conn:
            return sorted((int(p), bytes(v)) for p, v in conn.execute(
                select(embeddings.c.pmid, embeddings.c.vector)))

    before = stored()
    for step in (lambda: em.embed_pending(other, shard=1, shards=2),
                 lambda: plan_embedding_shards(other, 2),
                 lambda: refresh.refresh_index(other)):
        with pytest.raises(ConsistencyError, match="LITPULSE_MODEL") as caught:
            step()
        assert "first embedding" in str(caught.value) and "--rebuild" in str(caught.value)
        assert not caught.value.retryable
    assert stored() == before

    # under the first model it goes on, and its publication ends the record
    assert em.embed_pending(settings) == 3
    report = refresh.refresh_index(settings, embed=False)
    assert report.published and report.size == 6
    assert em.rebuild_record(engine, "base") is None
    assert ix_status.check_consistency(settings)["ok"]

    # or, under the other model, the rebuild it names embeds every article again
    report = refresh.refresh_index(other, rebuild=True, embed=True)
    assert report.published and report.rebuilt and report.embedded == 6
    assert _of(_details(engine, report.id)["base_model"]) == em.base_record(
        other.model_path, max_seq_length=other.max_seq_length)


def test_two_first_embeddings_with_different_models_never_both_store(
    settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    """Two workers begin a model version's first embedding at once, one with another
    LITPULSE_MODEL (both saw nothing stored): the first to commit says which model the
    vectors are of, and the other's transaction refuses instead of storing beside them."""
    from litpulse.core.errors import ConsistencyError

    spec = em.active_model(settings, engine)
    other = em.active_model(_another_model(settings, tmp_path / "other"), engine)
    assert em.first_embedding(engine, spec) and em.first_embedding(engine, other)
    with engine.begin() as conn:
        em.claim_first_embedding(conn, spec)
    with pytest.raises(ConsistencyError, match="first embedding"), engine.begin() as conn:
        em.claim_first_embedding(conn, other)
    with engine.begin() as conn:
        em.claim_first_embedding(conn, spec)  # the same model goes on
    want = em.base_record(spec.base_model, max_seq_length=spec.max_seq_length)
    assert em.rebuild_record(engine, spec.id) == {**want, "first": True}
