"""The bootstrap's embed step is resumable per shard, and the whole job is idempotent.

A real process embedding the store in 4 shards is killed (SIGKILL) once the first shards
are written; the re-run embeds only the articles still pending (the finished shards find
nothing to do: their vectors keep their creation time) and ends with the vectors of an
uninterrupted run. Uses the bundled all-MiniLM-L6-v2 on 60 short generated records.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Engine, func, select

from ingest.files import ingest_files
from litpulse.app.demo.generate import generate_corpus
from litpulse.core import db
from litpulse.core.schema import embeddings
from litpulse.core.settings import Settings
from litpulse.pipeline.bootstrap import embed_shards
from ranking.embed import vector_from_bytes
from tests.ingest.test_crash_resume import child_env, kill_when, self_killing

SHARDS = 4


def _vectors(engine: Engine) -> dict[int, tuple[np.ndarray, object]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(embeddings.c.pmid, embeddings.c.vector, embeddings.c.created_at)
        ).all()
    return {int(p): (vector_from_bytes(v), t) for p, v, t in rows}


def _count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(embeddings)).scalar_one())


@pytest.mark.slow
def test_a_killed_embed_step_redoes_no_finished_shard(settings: Settings, tmp_path: Path) -> None:
    corpus = generate_corpus(tmp_path / "c", n_records=60, n_files=1, seed=5,
                             revise_fraction=0.0, delete_fraction=0.0)  # fmt: skip
    ingest_files(settings, corpus.files)
    engine = db.connect(settings)
    per_shard = embed_shards(settings, SHARDS)
    assert sum(per_shard) == len(corpus.live_pmids) and all(per_shard)
    clean = _vectors(engine)
    with engine.begin() as conn:
        conn.execute(embeddings.delete())

    script = (
        "from litpulse.core.settings import Settings\n"
        "from litpulse.pipeline.bootstrap import embed_shards\n"
        f"embed_shards(Settings.from_env(), {SHARDS})\n"
    )
    # the child kills itself once the first shard is committed: a poller in this process
    # could wake after the last shard (each takes ~0.1 s once the encoder is loaded)
    argv = self_killing(["-c", script], engine, "SELECT count(*) FROM embeddings", per_shard[0])
    kill_when(argv, child_env(settings), lambda: False, tmp_path / "child.log",
              label="after the first shard", timeout=180)  # fmt: skip
    before = _vectors(engine)
    assert 0 < len(before) < len(clean)

    again = embed_shards(settings, SHARDS)
    assert sum(again) == len(clean) - len(before)  # only the rest
    for shard, n in enumerate(again):
        done = sum(1 for p in before if p % SHARDS == shard)
        assert n == per_shard[shard] - done
    after = _vectors(engine)
    assert after.keys() == clean.keys()
    for pmid, (_, created) in before.items():
        assert after[pmid][1] == created  # not embedded again
    for pmid, (vector, _) in after.items():
        assert np.allclose(vector, clean[pmid][0], atol=1e-5), pmid
    assert embed_shards(settings, SHARDS) == (0,) * SHARDS  # nothing left: nothing loaded
