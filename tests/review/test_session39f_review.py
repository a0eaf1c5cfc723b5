"""Session 39f: a hostile review of this session's first fixes (39b, 39c, 39d).

X1 (39d X2): two hosts on one store (an Airflow worker and an API host, one PostgreSQL)
hold the same base model at different paths (their own ``LITPULSE_MODEL``). 39d's
relocation rewrote the shared ``model_versions.base_model`` to the path of the host whose
refresh saw the recorded folder gone: from then on the other host's searches were refused
("base model folder ... is missing") although its own copy of the same model was there,
until its own next refresh flipped the row back (and broke the first host's). A host now
finds its copy itself when the recorded folder is not on it, by the same fingerprint check.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from litpulse.core.settings import Settings
from ranking.embed import active_model, load_encoder, model_spec
from ranking.refresh import refresh_index
from retrain.lora import TrainResult
from tests.review import test_session39d_review as review39d
from tests.review.test_session39d_review import _served_fine_tuned, _stored, _tiny

# 39d's module fixtures: the tiny encoder, and one real adapter of it trained once
tiny_model = review39d.tiny_model
trained = review39d.trained


def test_x1_two_hosts_with_their_own_model_path_both_serve_the_fine_tuned_version(
    settings: Settings, tiny_model: str, trained: TrainResult, tmp_path: Path
) -> None:
    path_a = tmp_path / "host-a"
    s_a, vid = _served_fine_tuned(settings, tiny_model, trained, path_a)
    path_b = tmp_path / "host-b"
    shutil.copytree(path_a, path_b)  # host B's copy of the same model
    s_b = _tiny(settings, str(path_b / "encoder"))
    aside_a, aside_b = tmp_path / "aside-a", tmp_path / "aside-b"

    shutil.move(str(path_a), str(aside_a))  # host B: host A's path is not there
    assert refresh_index(s_b).embedded == 0  # B's refresh: B serves with its copy
    load_encoder(active_model(s_b), s_b, cache=False)
    shutil.move(str(aside_a), str(path_a))
    shutil.move(str(path_b), str(aside_b))  # host A: host B's path is not there

    spec = active_model(s_a)  # a search on host A (no refresh in between)
    assert spec.id == vid and spec.base_model == s_a.model_path
    assert model_spec(s_a, vid).base_model == s_a.model_path
    load_encoder(spec, s_a, cache=False)
    assert _stored(s_a, vid) == 30
