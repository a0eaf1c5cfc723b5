"""A promotion whose re-index never finished heals itself or says so.

`litpulse models promote` switches the active model and then re-indexes inline. A kill
there (SIGKILL, OOM) leaves the active model switched and the published index on the old
model: `reindex_pending` then holds the index-refresh DAG back every night, waiting for a
litpulse_reindex run that only the Airflow retrain DAG's model asset triggers. Here: the
re-run of the promotion finishes the re-index (keeping the vectors already written), the
status and the check name the command that finishes it, and the index-refresh DAG's
first task skips only while a litpulse_reindex run is coming, else fails loudly.
"""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, update

from litpulse.app.cli import index as cli_index
from litpulse.app.cli import models as cli_models
from litpulse.core import db
from litpulse.core.errors import ConsistencyError
from litpulse.core.schema import embeddings, model_versions
from litpulse.core.settings import Settings
from litpulse.pipeline import planning
from litpulse.pipeline.planning import reindex_pending
from ranking import index_files, lexical, refresh
from ranking.index_status import check_consistency
from ranking.models import published_index_row
from tests.ingest.test_crash_resume import child_env, kill_when, self_killing
from tests.ranking.test_index import _activate, _embed, add_articles


def _cli(argv: list[str], settings: Settings) -> int:
    """Run `litpulse models|index ...` through their own parsers."""
    parser = argparse.ArgumentParser(prog="litpulse")
    sub = parser.add_subparsers(dest="command")
    cli_models.register(sub)
    cli_index.register(sub)
    args = parser.parse_args(argv)
    return int(args.func(args, settings))


class _Runs:
    """The count of queued/running litpulse_reindex runs Airflow answers; records whether
    it was asked."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.asked = 0

    def __call__(self) -> int:
        self.asked += 1
        return self.n


def _stalled(settings: Settings, engine: Engine, *, promoted_ago: dt.timedelta) -> None:
    """Index of 'base' published, 'm2' active (promoted ``promoted_ago``), half embedded."""
    live = list(range(1, 11))
    add_articles(engine, live)
    refresh.refresh_index(settings, embed=False)
    _activate(engine, "m2", settings)
    with engine.begin() as conn:
        conn.execute(
            update(model_versions)
            .where(model_versions.c.id == "m2")
            .values(promoted_at=db.utcnow() - promoted_ago)
        )
    _embed(engine, live[:5], "m2")


def test_the_refresh_dag_skips_only_while_a_reindex_run_is_coming(
    settings: Settings, engine: Engine
) -> None:
    none = _Runs(0)
    add_articles(engine, [100, 101])
    refresh.refresh_index(settings, embed=False)
    assert planning.refresh_waits_for_reindex(settings, reindex_runs=none) is None
    assert none.asked == 0  # nothing pending: Airflow is not asked

    _stalled(settings, engine, promoted_ago=dt.timedelta(hours=3))
    assert reindex_pending(settings) is not None
    one = _Runs(1)
    reason = planning.refresh_waits_for_reindex(settings, reindex_runs=one)
    assert reason is not None and "litpulse_reindex" in reason and one.asked == 1

    with pytest.raises(ConsistencyError) as exc:  # nothing is coming: say so, loudly
        planning.refresh_waits_for_reindex(settings, reindex_runs=none)
    message = str(exc.value)
    assert "airflow dags trigger litpulse_reindex" in message
    assert "litpulse index refresh" in message
    assert not exc.value.retryable


def test_a_fresh_promotion_gets_time_for_its_reindex_run_to_appear(
    settings: Settings, engine: Engine
) -> None:
    """The retrain DAG promotes in one task and emits the model asset in the next: the
    litpulse_reindex run appears a little after the switch."""
    _stalled(settings, engine, promoted_ago=dt.timedelta(minutes=5))
    reason = planning.refresh_waits_for_reindex(settings, reindex_runs=_Runs(0))
    assert reason is not None and "promoted" in reason


def test_rerunning_the_promotion_finishes_the_pending_reindex(
    settings: Settings, engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    """The state a killed `litpulse models promote m2` leaves (synthetic vectors: the rest
    of m2's are written as the embedding would); the re-run finishes, not 'already
    active'."""
    _stalled(settings, engine, promoted_ago=dt.timedelta(minutes=1))
    _embed(engine, list(range(6, 11)), "m2")
    assert published_index_row(engine).model_version == "base"

    assert _cli(["models", "promote", "m2", "--by", "ops"], settings) == 0
    out = capsys.readouterr().out
    assert published_index_row(engine).model_version == "m2", out
    assert reindex_pending(settings) is None
    assert check_consistency(settings)["ok"]
    assert "re-index" in out


def test_status_and_check_name_the_command_that_finishes_it(
    settings: Settings, engine: Engine
) -> None:
    from litpulse.app.cli.info import _index

    _stalled(settings, engine, promoted_ago=dt.timedelta(hours=3))
    check = check_consistency(settings)
    assert not check["ok"]
    assert any("litpulse index refresh" in p for p in check["problems"]), check["problems"]
    ix = _index(settings)
    assert ix["reindex_pending"] and "litpulse index refresh" in ix["reindex_pending"]


# ------------------------------------------------ a real promotion killed while embedding


def _created(engine: Engine, model: str) -> dict[int, object]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(embeddings.c.pmid, embeddings.c.created_at).where(
                embeddings.c.model_version == model
            )
        ).all()
    return {int(p): t for p, t in rows}


def embedded_store(folder: Path) -> tuple[Settings, int]:
    """A SQLite store in ``folder`` holding 60 generated records (no revisions or
    deletions), ingested and embedded for real with the base model and published, and
    the number of live PMIDs: the start of the kill tests here and in
    tests/ranking/test_base_model.py. Built once per module (the ingest, the model's load
    and the embedding took a third of each test); each test works on its own copy
    (:func:`tests.litpulse.app.apistore.clone_store`)."""
    from ingest.files import ingest_files
    from litpulse.app.demo.generate import generate_corpus

    s = Settings.from_env({}, home=folder / "home")
    corpus = generate_corpus(folder / "c", n_records=60, n_files=1, seed=7,
                             revise_fraction=0.0, delete_fraction=0.0)  # fmt: skip
    ingest_files(s, corpus.files)
    refresh.refresh_index(s)  # the base model's index, embedded for real
    db.dispose_engines()
    return s, len(corpus.live_pmids)


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, int]:
    return embedded_store(tmp_path_factory.mktemp("embedded"))


_PROMOTE = (
    "import sys\n"
    "import ranking.embed\n"
    "ranking.embed.CHUNK = 8  # several chunks, each its own transaction, on a small corpus\n"
    "from litpulse.app.cli import main\n"
    "sys.exit(main(['models', 'promote', 'm2', '--by', 'ops']))\n"
)


@pytest.mark.slow
@pytest.mark.parametrize("heal", ["promote", "index refresh"])
def test_a_promotion_killed_while_embedding_is_finished_by_a_rerun(
    embedded: tuple[Settings, int], tmp_path: Path, heal: str
) -> None:
    from litpulse.core.schema import model_versions as mv
    from tests.litpulse.app.apistore import clone_store

    s = clone_store(embedded[0], tmp_path / "home")  # the base model's index, embedded
    engine = db.connect(s)
    with engine.begin() as conn:  # a candidate on the same encoder (no adapter)
        conn.execute(
            mv.insert().values(
                id="m2",
                base_model=s.model_path,
                adapter_path=None,
                status="candidate",
                created_at=db.utcnow(),
            )
        )
    db.dispose_engines()

    # the child kills itself once the first chunk of m2's vectors is committed (a poller
    # here could wake after the last of the ~8 chunks, each a few tens of ms)
    count = "SELECT count(*) FROM embeddings WHERE model_version = 'm2'"
    kill_when(self_killing(["-c", _PROMOTE], engine, count, 8), child_env(s), lambda: False,
              tmp_path / "child.log", label="promote m2", timeout=180)  # fmt: skip
    index_files._CACHE.clear()
    lexical._CACHE.clear()
    engine = db.connect(s)
    before = _created(engine, "m2")
    live = embedded[1]
    assert 0 < len(before) < live
    # the state it leaves: m2 active, the published index still on base, and it says so
    assert published_index_row(engine).model_version == "base"
    assert reindex_pending(s) is not None
    assert any("litpulse index refresh" in p for p in check_consistency(s)["problems"])

    argv = ["models", "promote", "m2", "--by", "ops"] if heal == "promote" else ["index", "refresh"]
    assert _cli(argv, s) == 0
    assert published_index_row(engine).model_version == "m2"
    assert reindex_pending(s) is None and check_consistency(s)["ok"]
    after = _created(engine, "m2")
    assert len(after) == live
    assert all(after[p] == t for p, t in before.items())  # not embedded again


def test_the_refresh_dag_waits_while_an_inline_reindex_holds_the_publish_lease(
    settings: Settings, engine: Engine
) -> None:
    """`litpulse models promote m2` (or rollback, or the `litpulse index refresh` the
    message itself recommends) re-embeds the corpus in its own process, under the
    index-publish lease: hours at full size. No litpulse_reindex run exists meanwhile, and
    the promotion is more than an hour old. The refresh DAG must not fail saying "no index
    for the active model is coming" and telling the operator to start a second re-index
    while one is running."""
    from ranking.publish import acquire_publish_lease

    _stalled(settings, engine, promoted_ago=dt.timedelta(hours=3))
    with acquire_publish_lease(engine):  # the CLI's refresh_index, embedding for m2
        reason = planning.refresh_waits_for_reindex(settings, reindex_runs=_Runs(0))
    assert reason is not None


def test_a_paused_reindex_dag_is_no_reindex_coming(settings: Settings, engine: Engine) -> None:
    """An engineer paused `litpulse_reindex`: its queued run never starts (the scheduler
    examines no run of a paused DAG, and an asset creates none). The refresh DAG used to
    count that run as coming and skip every night without a word; now it fails and says
    to unpause it — also inside the hour after a promotion, whose asset-triggered run
    will not appear either. A re-index running in a process of its own still counts."""

    _stalled(settings, engine, promoted_ago=dt.timedelta(hours=3))
    asked: list[bool] = []

    def paused() -> bool:
        asked.append(True)
        return True

    with pytest.raises(ConsistencyError) as exc:
        planning.refresh_waits_for_reindex(settings, reindex_runs=_Runs(1),
                                           reindex_paused=paused)
    message = str(exc.value)
    assert "paused" in message and "airflow dags unpause litpulse_reindex" in message
    assert "1 litpulse_reindex run(s) queued" in message and asked
    assert not exc.value.retryable
    # not paused: the queued run is coming (as before)
    reason = planning.refresh_waits_for_reindex(settings, reindex_runs=_Runs(1),
                                                reindex_paused=lambda: False)
    assert reason is not None and "queued or running" in reason
    # a fresh promotion: its run will not appear while the DAG is paused
    with engine.begin() as conn:
        conn.execute(update(model_versions).where(model_versions.c.id == "m2")
                     .values(promoted_at=db.utcnow() - dt.timedelta(minutes=5)))
    assert planning.refresh_waits_for_reindex(settings, reindex_runs=_Runs(0),
                                              reindex_paused=lambda: False)
    with pytest.raises(ConsistencyError, match="paused"):
        planning.refresh_waits_for_reindex(settings, reindex_runs=_Runs(0),
                                           reindex_paused=paused)
    # an inline re-index (`litpulse models promote`) does not need the DAG
    _skips_under_the_publish_lease(settings, engine, paused)


def _skips_under_the_publish_lease(
    settings: Settings, engine: Engine, reindex_paused: Callable[[], bool]
) -> None:
    """An inline re-index holds the publish lease: the refresh skips, naming the holder."""
    from ranking.publish import acquire_publish_lease

    with acquire_publish_lease(engine):
        reason = planning.refresh_waits_for_reindex(settings, reindex_runs=_Runs(0),
                                                    reindex_paused=reindex_paused)
    assert reason is not None and "holds" in reason


def test_an_inline_reindex_counts_when_airflow_cannot_say_if_the_reindex_dag_is_paused(
    settings: Settings, engine: Engine
) -> None:
    """`litpulse models promote` re-indexes inline under the publish lease: the refresh
    DAG skips, whatever the litpulse_reindex DAG is (the docstring: an inline re-index
    still counts). Where that DAG is not known to Airflow (not deployed, an import error,
    renamed), the Task SDK's ``get_dag`` raises an ``AirflowRuntimeError`` (the execution
    API answers 404; its run count is 0). Before the paused check this skipped."""
    from airflow.sdk.exceptions import AirflowRuntimeError, ErrorType
    from airflow.sdk.execution_time.comms import ErrorResponse


    _stalled(settings, engine, promoted_ago=dt.timedelta(hours=3))

    def unknown() -> bool:  # what dag_paused("litpulse_reindex") meets in that case
        raise AirflowRuntimeError(ErrorResponse(
            error=ErrorType.API_SERVER_ERROR,
            detail={"status_code": 404, "message": "The Dag with dag_id: "
                    "`litpulse_reindex` was not found"}))

    _skips_under_the_publish_lease(settings, engine, unknown)


def test_a_paused_reindex_dag_with_no_run_queued_says_to_trigger_after_unpausing(
    settings: Settings, engine: Engine
) -> None:
    """Airflow's asset manager queues a model event only for DAGs not paused
    (``airflow/assets/manager.py``: ``if not ref.dag.is_paused``), and a run triggered
    while paused stays queued. So with no run queued, unpausing starts nothing and
    triggering alone never runs: the message (and DOC_MD's "a promotion starts none —
    unpause it") must say unpause *then* trigger (or `litpulse index refresh`)."""
    _stalled(settings, engine, promoted_ago=dt.timedelta(hours=3))
    with pytest.raises(ConsistencyError) as exc:
        planning.refresh_waits_for_reindex(settings, reindex_runs=_Runs(0),
                                           reindex_paused=lambda: True)
    message = str(exc.value)
    assert "its 0 litpulse_reindex run(s)" not in message, message
    after_unpause = message[message.find("unpause"):]
    assert "trigger" in after_unpause, message


def test_an_unknown_reindex_dag_is_no_reindex_coming(settings: Settings, engine: Engine) -> None:
    """Airflow does not know `litpulse_reindex` (not deployed, its file fails to import):
    no run is coming, whatever the promotion's age; the error says so."""
    _stalled(settings, engine, promoted_ago=dt.timedelta(minutes=5))
    with pytest.raises(ConsistencyError) as exc:
        planning.refresh_waits_for_reindex(settings, reindex_runs=_Runs(0),
                                           reindex_paused=lambda: None)
    assert "does not know the litpulse_reindex DAG" in str(exc.value)
    assert "litpulse index refresh" in str(exc.value)


# ------------------------------- a re-run promotion racing a promotion of another version


def test_a_rerun_promotion_never_publishes_for_a_model_switched_out_meanwhile(
    settings: Settings, engine: Engine, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`litpulse models promote m2` run again (m2 active, its re-index cut short) finishes
    the re-index in its own process, under the index-publish lease only: hours of embedding
    at full size. Meanwhile the Airflow retrain DAG promotes m3 (its re-index deferred to
    the litpulse_reindex DAG, so it needs no lease). The re-run must not then publish an
    index for m2, which is no longer active, nor say it finished m2's re-index: the index
    of the active model is m3's re-index's to publish (its publish_index task found the
    lease held meanwhile)."""
    import threading

    from litpulse.pipeline.planning import defer_reindex
    from retrain import registry

    _stalled(settings, engine, promoted_ago=dt.timedelta(hours=3))
    _embed(engine, list(range(6, 11)), "m2")  # the rest of m2's vectors (as embedding would)
    published = published_index_row(engine).id
    with engine.begin() as conn:  # the retrain DAG's candidate
        conn.execute(model_versions.insert().values(
            id="m3", base_model=settings.model_path, adapter_path=None, status="candidate",
            created_at=db.utcnow()))
    embedding, promoted = threading.Event(), threading.Event()
    real = refresh.embed_pending

    def slow_embed(*args: object, **kwargs: object) -> int:  # the hours of embedding
        embedding.set()
        assert promoted.wait(60)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(refresh, "embed_pending", slow_embed)
    outcome: dict[str, object] = {}

    def rerun() -> None:
        try:
            outcome["rc"] = _cli(["models", "promote", "m2", "--by", "ops"], settings)
        except Exception as exc:  # noqa: BLE001 - the outcome is asserted below
            outcome["error"] = exc

    worker = threading.Thread(target=rerun, name="promote-m2-again")
    worker.start()
    try:
        assert embedding.wait(60)
        registry.promote(settings, "m3", by="gate", reindex=defer_reindex)
    finally:
        promoted.set()
        worker.join(60)
    assert not worker.is_alive()

    out = capsys.readouterr().out
    row = published_index_row(engine)
    assert row.model_version != "m2", f"published {row.id} for m2 while m3 is active: {out}"
    assert row.id == published
    assert "finished its pending re-index" not in out
    error = outcome.get("error")
    assert isinstance(error, ConsistencyError) and "m3" in str(error), outcome
    assert registry.active_version(settings).id == "m3"
    assert reindex_pending(settings) is not None  # m3's re-index is still to come


@pytest.mark.parametrize("argv", [["models", "promote", "m3", "--by", "ops"],
                                  ["models", "rollback", "--by", "ops"]])
def test_a_promotion_during_an_inline_reindex_switches_nothing(
    settings: Settings, engine: Engine, monkeypatch: pytest.MonkeyPatch, argv: list[str]
) -> None:
    """While a re-index runs in another process under the index-publish lease (a re-run
    promotion finishing it, `litpulse index refresh`: hours at full size), a promotion or
    rollback is refused before it touches the registry. It used to switch the model, fail
    to take the lease, and switch it back: meanwhile a retrain ending its round saw another
    model active and rejected its candidate, and the re-index's own publication found the
    model switched out."""
    from litpulse.core.errors import LitpulseError
    from ranking.publish import acquire_publish_lease
    from retrain import registry

    _stalled(settings, engine, promoted_ago=dt.timedelta(hours=3))
    with engine.begin() as conn:
        conn.execute(model_versions.insert().values(
            id="m3", base_model=settings.model_path, adapter_path=None, status="candidate",
            created_at=db.utcnow()))
    undone: list[object] = []
    real = registry._restore

    def spy(engine: Engine, rows: list[registry.ModelVersion]) -> None:
        undone.extend(r.id for r in rows)  # a switch made, then undone
        real(engine, rows)

    monkeypatch.setattr(registry, "_restore", spy)
    with acquire_publish_lease(engine), pytest.raises(LitpulseError, match="index-publish"):
        _cli(argv, settings)
    assert undone == []
    assert registry.active_version(settings).id == "m2"


def test_a_rerun_promotion_never_reports_another_models_index_as_its_own(
    settings: Settings, engine: Engine, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The deferred promotion (the retrain DAG's, under no lease) lands between the re-run
    promotion's look at the registry and its re-index's: the re-index is for the model
    active then, m3. The command must not report it as m2's."""
    from litpulse.pipeline.planning import defer_reindex
    from retrain import registry

    _stalled(settings, engine, promoted_ago=dt.timedelta(hours=3))
    with engine.begin() as conn:
        conn.execute(model_versions.insert().values(
            id="m3", base_model=settings.model_path, adapter_path=None, status="candidate",
            created_at=db.utcnow()))
    _embed(engine, list(range(1, 11)), "m3")  # (as its litpulse_reindex shards would)
    real = planning.reindex_pending

    def then_promoted(*args: object, **kwargs: object) -> str | None:
        pending = real(*args, **kwargs)  # type: ignore[arg-type]
        registry.promote(settings, "m3", by="gate", reindex=defer_reindex)
        return pending

    monkeypatch.setattr(planning, "reindex_pending", then_promoted)
    with pytest.raises(ConsistencyError, match="m3"):
        _cli(["models", "promote", "m2", "--by", "ops"], settings)
    assert "finished its pending re-index" not in capsys.readouterr().out
    assert published_index_row(engine).model_version == "m3"  # the active model's, kept
