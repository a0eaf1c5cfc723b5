"""Hostile review (session 32q) of the retrain stage as a hostile expert and a crashing
machine: ``retrain/run.py`` (the round, its lease, its early stops), ``registry.py``
(register, promote, rollback, prune), ``pairs.py`` / ``feedback.py`` (what an expert's
judgements become), ``evaluate.py`` (the gate), ``report.py`` (``models report``, ``GET
/models``).

Every test drives the real code: :func:`retrain.run.retrain` with the tests' tiny random
encoder (one training step, about a second a round, as ``tests/retrain/
test_lifecycle_review.py`` does), :func:`retrain.registry.promote` / ``rollback`` /
``prune_rejected`` on versions whose adapter folders hold a weights file and its recorded
SHA-256, :func:`retrain.feedback.record_feedback`, :func:`retrain.pairs.mine_pairs` and
:func:`retrain.report.model_history` — on SQLite and PostgreSQL (the race of Q2 on
PostgreSQL, whose lock queue orders it deterministically). A re-index is the caller's
step (``reindex=``, as the application passes :func:`~litpulse.pipeline.planning.
reindex_now` or :func:`~litpulse.pipeline.planning.defer_reindex`); where it is not the
point it is a step that records its calls. Each defect was a strict xfail asserting the
correct behaviour; all 5 were fixed in the same session and are plain tests now: Q1 a round
registers its version with the gate's outcome (rejected with its reasons) before it writes
its report, and each round, under its lease, rejects the candidates cut rounds left (one
that passed and found the index busy is kept: a ``not_promoted`` event); Q2 ``promote``
reads the version it replaces under the switch's lock and takes ``expected_active``
(``ActiveChangedError``), which ``_decide`` passes; Q3 ``adapter_problem`` calls a recorded
SHA-256 with no weights file a problem; Q4 a dry run prunes nothing (it names what a round
would prune); Q5 judgements of articles retracted or deleted since (``feedback_gone``) and
unpaired ones are registered and shown by ``models report`` / ``GET /models``.

Defects:

Q1 A round cut between registering its candidate and applying the gate's decision leaves a
   version ``candidate`` **for ever**. ``_retrain`` registers the version (status
   ``candidate``), then writes its report (``_write_report``: a folder, a JSON file, a
   matplotlib plot), then ``_decide`` sets ``rejected`` or promotes. A SIGKILL (OOM killer,
   an Airflow task timeout) or an ``OSError`` writing the report (disk full; here
   ``reports`` blocked by a file) in between leaves the row ``candidate`` with the gate's
   decision (``passed: false``) in its metrics; nothing ever settles it: the next retrain
   (its lease taken over) trains a new version and leaves the old one as it is, ``models
   report`` / ``/models`` show it as "candidate (waiting for the gate or a person)", its
   adapter is never pruned (``prune_rejected`` prunes ``rejected`` rows only, and
   ``prune_adapters`` keeps every folder a row names), and ``last_training_end`` counts it
   as a training of the model in use (``retrain_due`` says 0 new articles). A clean run of
   the same round ends ``rejected``. At fault: ``retrain/run.py`` ``_retrain`` (register,
   report, decide: three steps) and ``retrain()`` (no clean-up of what a cut round left).
   Fix: register the version with the gate's outcome in the same transaction (``rejected``
   with the gate's reasons when it failed; a passed one stays a candidate only until
   ``_decide``), write the report after; and at the start of each round, under the
   ``retrain`` lease, reject every ``candidate`` whose gate failed or whose round is over
   (no live holder) with a reason ("its round was cut short"), keeping one that passed
   but met a busy index lease (record that as an event, to tell it apart).
   (test_q1_a_round_cut_after_registering_leaves_no_candidate_for_ever)
Q2 (PostgreSQL; SQLite reads the same way) A promotion that lands just after a rollback
   **revives the version the rollback rejected**: ``registry.promote`` reads the active
   version (``previous``) *before* its transaction and its ``_lock_models``, then
   ``_switch`` writes ``retired`` to that stale ``previous``. The retrain DAG's gate
   promotion (``defer_reindex``: no index-publish lease, as ``_restore``'s docstring
   says) racing a person's ``litpulse models rollback`` of the bad version A: the rollback
   commits (A ``rejected``, "rolled back"; P active again), then the promotion sets A
   **``retired``** ("replaced by C") and retires P as a stray. A is a rollback target
   again: two later rollbacks re-activate A, the version a person rolled back as bad
   (seen: C → P → A). ``_decide``'s check that the active model did not change during
   the round is stale the same way (it reads before ``promote`` switches). At fault:
   ``retrain/registry.py`` ``promote`` (``previous = active_version(...)`` outside the
   lock), ``retrain/run.py`` ``_decide``. Fix: read the active version inside the
   switch's transaction after ``_lock_models`` (``_rows`` already does), and let
   ``promote`` take an ``expected_active`` that ``_decide`` passes (the version the
   candidate was compared with): another one active under the lock → the candidate is
   rejected with the reason ``_decide`` already words.
   (test_q2_a_promotion_racing_a_rollback_never_revives_the_rolled_back_version)
Q3 An adapter folder whose weights file is gone passes for one that can serve.
   ``ranking.embed.adapter_problem`` reports a missing folder and changed weights, but
   compares the SHA-256 only ``if os.path.isfile(weights)``: a folder without
   ``adapter_model.safetensors`` (a ``models prune`` or retrain killed half-way through
   its ``shutil.rmtree``, a restore that missed a file, a weights file deleted by hand) is
   "no problem". So ``models promote`` of such a version switches the model and fails only
   in the re-index (peft's "Can't find weights", the switch undone) — the README: "promote
   refuses, before switching anything, a version whose adapter cannot serve" — and
   ``models rollback`` makes it active instead of passing over it ("a rollback passes over
   a previous version that cannot serve ..., says so and marks it rejected"): with
   ``reindex_now`` the whole rollback fails, and the operator cannot roll back at all
   (every retry picks it again). A retrain continuing such an active version fails in peft
   instead of the clear "cannot be continued: restore, roll back, or --from-base". At fault:
   ``ranking/embed.py`` ``adapter_problem``. Fix: a recorded SHA-256 with no weights file
   is a problem ("the adapter's weights ... are missing"). (The registry tests' fake
   adapter folders hold no weights file: they would write one.)
   (test_q3_a_version_whose_adapter_weights_are_gone_cannot_be_promoted_or_rolled_back_to)
Q4 ``litpulse retrain --dry-run`` deletes. README: "``--dry-run`` mines and counts the
   pairs only (it writes nothing)"; ``retrain()`` runs ``prune_adapters``,
   ``prune_rejected`` and ``prune_untrained`` before it looks at ``dry_run``: a preview
   removes the adapter and report folders of every rejected version older than
   ``LITPULSE_KEEP_REJECTED_DAYS`` (one a person meant to promote by hand after looking at
   the preview is gone: ``promote`` then refuses it as "pruned"), appends ``pruned``
   events to their rows, and deletes adapter folders and held-back records. At fault:
   ``retrain/run.py`` ``retrain`` (the prunes before ``_retrain``). Fix: prune only when
   not ``dry_run`` (a dry run may *report* what a round would prune:
   ``prune_rejected(dry_run=True)``). (test_q4_a_dry_run_retrain_prunes_nothing)
Q5 Judgements a round does not train on and no report counts, against the README's "The
   report counts every judgement not trained on: carried ..., held out ..., disputed,
   capped per expert, or excluded": (a) a judgement of a **retracted** article is
   accepted (``record_feedback`` refuses only a deleted one; ``POST /feedback`` answers
   201), then silently dropped by mining (``_load_articles`` leaves retracted articles
   out, ``in_round`` needs the article) and counted nowhere; (b) "not relevant" judgements
   of a query no expert marked relevant for any article (``feedback_unpaired``) are in the
   round's own JSON but not registered (``run.py`` ``pair_counts`` omits them), so
   ``models report`` and ``GET /models`` never show them. Seen: 3 judgements of a round, 1
   accounted for in its version's report. At fault: ``retrain/pairs.py``
   ``_feedback_pairs``, ``retrain/run.py`` (``pair_counts``), ``retrain/report.py``. Fix:
   count the judgements of articles retracted or deleted since (``feedback_gone``), register
   ``feedback_unpaired`` too, and show both in the report (or refuse a judgement of a
   retracted article at record time, 409/400, as a deleted one is refused).
   (test_q5_every_judgement_of_a_round_is_counted_in_its_versions_report)

Guards (right today, must stay right after a fix): ``prune_rejected`` removes the adapter
of a version the gate rejected and keeps that of a version that served and was rolled
back (a rollback's or promotion's need), and a rollback after the prune still goes back
past it to a served version; a judgement of an article of the older held-out set and of a
fresh article is never a training pair (positive, negative, anchor) of the round — held
out and carried, counted so.

Also tried and held (not kept as tests): a retrain while another holds the ``retrain``
lease (``RetrainBusyError``, nothing written; a dead holder's lease taken over at once:
``tests/retrain/test_lifecycle_review.py``); the gate on a collapsed or NaN candidate
(non-finite vectors are zero vectors since session 32m: tied ranks, recall 0 on sets the
size a fresh set of 10 brings, 40+ distractors) and on NaN metrics (every comparison with
NaN fails the gate); fresh and older sets sharing a PMID or a text (excluded both ways),
hard negatives, citations, replay and distractors of held-out texts (excluded); a
judgement changed back and forth (the latest per expert counts; a revoked token's falls
back to the latest earlier one not sent with it); one expert's 20 tokens under one name
(one per-hour limit, one quarter share); ``models report`` / ``/models`` over rows with
null (NaN) metrics and losses, events without a time, versions whose parent row is gone.
Observed, not filed: one expert can veto every other expert's positive by marking the same
articles "not relevant" (disputed, neither positive nor negative) within the hourly limit
and without touching the quarter cap — the documented dispute rule; a version the gate
passed but ``_decide`` rejected (the active model changed) is pruned after
``LITPULSE_KEEP_REJECTED_DAYS`` like any rejected one.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text, update

from bench.drift import insert_batch, make_drugs
from litpulse.core import db
from litpulse.core.errors import ConfigError, NotFoundError
from litpulse.core.schema import articles, model_versions
from litpulse.core.settings import Settings
from litpulse.core.states import ModelEvent, ModelStatus
from ranking.embed import ADAPTER_WEIGHTS
from ranking.refresh import refresh_index
from retrain import registry
from retrain.feedback import record_feedback
from retrain.lora import LoraOptions
from retrain.pairs import in_older_holdout, mine_pairs
from retrain.report import model_history
from retrain.run import retrain
from tests.retrain.histories import fake_adapter

T0 = dt.datetime(2024, 7, 1, tzinfo=dt.UTC)
#: One training step: the point is the lifecycle, not the learning.
OPTS = LoraOptions(
    max_steps=1, batch_size=8, max_seq_length=32, warmup_steps=0, precision="fp32", max_seconds=1e5
)
MINE = {"fresh_size": 10, "distractors": 20, "holdout_buckets": 4, "anchors": False}
FIRST = 1000  #: PMIDs FIRST .. FIRST+119, dated over the first half of 2024


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    from tests.tiny_encoder import build_tiny_encoder

    return build_tiny_encoder(tmp_path_factory.mktemp("tiny-model"))


def _tiny(settings: Settings, tiny_model: str) -> Settings:
    """The tiny encoder, and a gate no one-step candidate passes (a clean round: rejected)."""
    return settings.replace(
        model=tiny_model, max_seq_length=32, device="cpu", gate_fresh_margin=1.0
    )


def _corpus(engine: Engine) -> None:
    insert_batch(
        engine,
        start_pmid=FIRST,
        n=120,
        start=dt.date(2024, 1, 1),
        days=180,
        ingested=T0,
        drugs=make_drugs(12),
        seed=1,
    )


class Steps:
    """A re-index step (the caller's, as ``reindex=`` takes it) that records the model
    active at each call."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, settings: Settings) -> dict[str, str]:
        active = registry.active_version(settings)
        self.calls.append(active.id if active else registry.BASE_ID)
        return {"model_version": self.calls[-1]}


def _version(settings: Settings, tag: str, *, status: ModelStatus | None = None) -> str:
    """A registered version whose adapter folder holds a weights file and its SHA-256
    (marked as this store's, as a retrain writes it)."""
    vid = registry.new_version_id(hashlib.sha256(tag.encode()).hexdigest())
    folder = settings.ensure_home() / "adapters" / vid
    sha = fake_adapter(folder, tag.encode() * 64)
    db.mark_folder(folder, db.store_id(db.connect(settings)))
    registry.register(
        settings,
        id=vid,
        adapter_path=str(folder),
        adapter_sha256=sha,
        parent_id=None,
        window_start=None,
        window_end=dt.datetime(2024, 12, 1, tzinfo=dt.UTC),
        pair_counts={"title_abstract": 10},
        options={},
        metrics={},
    )
    if status is not None:
        registry.set_status(settings, vid, status)
    time.sleep(0.01)  # distinct created_at / promoted_at
    return vid


def _age(settings: Settings, vid: str, days: float) -> None:
    """Registered ``days`` days ago."""
    with db.connect(settings).begin() as conn:
        conn.execute(update(model_versions).where(model_versions.c.id == vid)
                     .values(created_at=db_now() - dt.timedelta(days=days)))  # fmt: skip


def db_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# ------------------------------------------------------------------------------- Q1


def test_q1_a_round_cut_after_registering_leaves_no_candidate_for_ever(
    settings: Settings, tiny_model: str
) -> None:
    s = _tiny(settings, tiny_model)
    _corpus(db.connect(s))
    refresh_index(s)
    reports = s.ensure_home() / "reports"
    reports.write_text("a file where the reports folder goes: the disk-full stand-in\n")
    with pytest.raises(OSError):
        retrain(s, options=OPTS, mine_kwargs=MINE, reindex=Steps())
    (cut,) = registry.list_models(s)  # registered before the report failed
    assert cut.metrics["gate"]["passed"] is False  # the gate had decided: rejected
    reports.unlink()

    again = retrain(s, options=OPTS, mine_kwargs=MINE, reindex=Steps())  # the re-run
    assert again.status == "rejected"  # as a clean run of this round ends
    statuses = {v.id: v.status for v in registry.list_models(s)}
    assert statuses[again.version_id] is ModelStatus.REJECTED  # type: ignore[index]
    # the cut round's version is settled as the clean run's is, not waiting for ever
    assert statuses[cut.id] is not ModelStatus.CANDIDATE, statuses
    report = {v.id: v for v in model_history(s)}
    assert "waiting for the gate" not in report[cut.id].summary
    # and its adapter goes with the other rejected ones
    registry.prune_rejected(s, older_than_days=0)
    assert not Path(cut.adapter_path or "").exists()


# ------------------------------------------------------------------------------- Q2


def _waiting_on_models(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                    "WHERE c.relname = 'model_versions' AND NOT l.granted"
                )
            ).scalar()
            or 0
        )


def _until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.mark.postgres
def test_q2_a_promotion_racing_a_rollback_never_revives_the_rolled_back_version(
    pg_settings: Settings,
) -> None:
    s = pg_settings
    engine = db.connect(s)
    p, a, c = _version(s, "p"), _version(s, "a"), _version(s, "c")
    registry.promote(s, p, by="ann", reindex=Steps())
    registry.promote(s, a, by="gate", reindex=Steps())  # A: the bad one

    # both switches queue behind one transaction holding the switch's lock: the person's
    # rollback first, then the retrain DAG's gate promotion of C (no index lease)
    blocker = engine.connect()
    held = blocker.begin()
    blocker.execute(text("LOCK TABLE model_versions IN SHARE ROW EXCLUSIVE MODE"))
    errors: list[BaseException] = []

    def run(step: Callable[[], Any]) -> threading.Thread:
        def body() -> None:
            try:
                step()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        thread = threading.Thread(target=body)
        thread.start()
        return thread

    try:
        rb = run(lambda: registry.rollback(s, by="ann", reason="A is bad", reindex=Steps()))
        _until(lambda: _waiting_on_models(engine) == 1, "the rollback to queue")
        pr = run(lambda: registry.promote(s, c, by="gate", reindex=Steps()))
        _until(lambda: _waiting_on_models(engine) == 2, "the promotion to queue")
    finally:
        held.commit()
        blocker.close()
    rb.join(30)
    pr.join(30)
    assert not errors, errors
    assert registry.active_version(s).id == c  # type: ignore[union-attr]  # the later switch
    rolled = registry.get_model(s, a)
    # A was rolled back by a person: it stays rejected, never a rollback target again
    assert rolled.status is ModelStatus.REJECTED, [e["event"] for e in rolled.events]
    assert rolled.events[-1]["event"] == ModelEvent.ROLLED_BACK
    registry.rollback(s, by="bob", reindex=Steps())
    if registry.active_version(s) is not None:
        registry.rollback(s, by="bob", reindex=Steps())
    assert registry.active_version(s) is None or registry.active_version(s).id != a  # type: ignore[union-attr]


# ------------------------------------------------------------------------------- Q3


def test_q3_a_version_whose_adapter_weights_are_gone_cannot_be_promoted_or_rolled_back_to(
    settings: Settings,
) -> None:
    p, a, b = _version(settings, "p"), _version(settings, "a"), _version(settings, "b")
    for vid in (p, a, b):
        registry.promote(settings, vid, by="ann", reindex=Steps())
    gone = Path(registry.get_model(settings, a).adapter_path or "") / ADAPTER_WEIGHTS
    gone.unlink()  # a prune killed mid-rmtree, a restore that missed a file

    steps = Steps()
    with pytest.raises(ConfigError, match="weights"):
        registry.promote(settings, a, by="ann", reindex=steps)
    assert steps.calls == []  # refused before anything was switched
    assert registry.active_version(settings).id == b  # type: ignore[union-attr]

    out = registry.rollback(settings, by="ann", reindex=steps)
    assert [x["id"] for x in out["skipped"]] == [a], out  # passed over, said so
    assert out["model"] == p
    assert registry.get_model(settings, a).status is ModelStatus.REJECTED


# ------------------------------------------------------------------------------- Q4


def test_q4_a_dry_run_retrain_prunes_nothing(settings: Settings) -> None:
    old = _version(settings, "old", status=ModelStatus.REJECTED)
    _age(settings, old, days=settings.keep_rejected_days + 5)
    folder = Path(registry.get_model(settings, old).adapter_path or "")
    report = settings.ensure_home() / "reports" / old
    report.mkdir(parents=True)
    (report / "report.json").write_text("{}")
    events = registry.get_model(settings, old).events

    out = retrain(settings, dry_run=True, reindex=Steps())
    assert out.status == "dry_run"
    assert folder.is_dir() and (folder / ADAPTER_WEIGHTS).is_file()
    assert report.is_dir()
    assert registry.get_model(settings, old).events == events  # nothing written


# ------------------------------------------------------------------------------- Q5


def _trainable(pmid: int) -> bool:
    """Outside every older bucket a round may choose (1 in 4, 2; nested)."""
    return not in_older_holdout(pmid, 2)


def _counted(version: dict[str, Any]) -> int:
    """Judgements a version's report accounts for: used (per expert), and every other
    ``feedback_*`` count (a number, or per expert)."""
    total = 0
    for key, value in version.items():
        if not key.startswith("feedback_"):
            continue
        if isinstance(value, dict):
            total += sum(int(n) for n in value.values() if isinstance(n, int))
        elif isinstance(value, int) and not isinstance(value, bool):
            total += value
    return total


def test_q5_every_judgement_of_a_round_is_counted_in_its_versions_report(
    settings: Settings, tiny_model: str
) -> None:
    s = _tiny(settings, tiny_model)
    engine = db.connect(s)
    _corpus(engine)
    refresh_index(s)
    x, y, z = [p for p in range(FIRST, FIRST + 40) if _trainable(p)][:3]  # oldest: trainable
    with engine.begin() as conn:  # Y is retracted (a revision that says so)
        conn.execute(update(articles).where(articles.c.pmid == y).values(is_retracted=True))
    recorded = 0
    for query, pmid, relevant in (
        ("statin myopathy risk", x, True),
        ("beta blocker dosing", y, True),
        ("anticoagulant bleeding", z, False),
    ):
        try:
            record_feedback(s, query=query, pmid=pmid, relevant=relevant, user="alice")
        except (ConfigError, NotFoundError):
            continue  # refused at the door: also correct (then nothing to count)
        recorded += 1

    out = retrain(s, options=OPTS, mine_kwargs=MINE, reindex=Steps())
    assert out.version_id is not None, out.reasons
    (version,) = [v.to_dict() for v in model_history(s) if v.id == out.version_id]
    assert version["feedback_experts"] == {"alice": 1}  # X trained: the pair it makes
    assert _counted(version) == recorded, {
        k: v for k, v in version.items() if k.startswith("feedback_")
    }


# ------------------------------------------------------------------------------- guards


def test_prune_keeps_the_adapters_a_rollback_needs(settings: Settings) -> None:
    p, a, b = _version(settings, "p"), _version(settings, "a"), _version(settings, "b")
    for vid in (p, a, b):
        registry.promote(settings, vid, by="ann", reindex=Steps())
    registry.rollback(settings, by="ann", reindex=Steps())  # b: rolled back (served)
    never = _version(settings, "never", status=ModelStatus.REJECTED)  # the gate's reject
    for vid in (b, never):
        _age(settings, vid, days=settings.keep_rejected_days + 5)

    assert registry.prune_rejected(settings) == [never]
    assert not Path(registry.get_model(settings, never).adapter_path or "").exists()
    for vid in (p, a, b):
        assert (
            Path(registry.get_model(settings, vid).adapter_path or "") / ADAPTER_WEIGHTS
        ).is_file(), vid
    assert registry.rollback(settings, by="ann", reindex=Steps())["model"] == p
    registry.promote(settings, b, by="ann", reindex=Steps())  # a rolled-back one, by hand
    assert registry.active_version(settings).id == b  # type: ignore[union-attr]


def test_judgements_of_held_out_articles_never_train(settings: Settings) -> None:
    engine = db.connect(settings)
    _corpus(engine)
    older = next(p for p in range(FIRST, FIRST + 120) if in_older_holdout(p, 4))
    probe = mine_pairs(settings, engine=engine, record=False, **MINE)
    fresh = probe.heldout.fresh[-1].pmid
    assert older in {i.pmid for i in probe.heldout.older}
    for query, pmid in (("older literature question", older), ("fresh literature", fresh)):
        record_feedback(settings, query=query, pmid=pmid, relevant=True, user="alice")
    mined = mine_pairs(settings, engine=engine, record=False, **MINE)
    assert mined.heldout.pmids() == probe.heldout.pmids()
    with engine.connect() as conn:
        texts = {
            r.pmid: (r.title, r.abstract)
            for r in conn.execute(articles.select().where(articles.c.pmid.in_([older, fresh])))
        }
    for pair in mined.pairs:
        assert pair.pmid not in (older, fresh) and pair.positive_pmid not in (older, fresh)
        for _title, abstract in texts.values():
            for part in (pair.positive, pair.negative or "", pair.anchor):
                assert abstract not in part, (pair.kind, pair.pmid)
    assert mined.counts["feedback"] == 0
    assert (mined.feedback_held_out, mined.feedback_carried) == (1, 1)
