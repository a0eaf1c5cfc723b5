"""A tiny random sentence encoder (2 layers, 32 dimensions) for quick training tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Folder of a randomly initialised BERT sentence encoder with the real tokenizer.

    Trains and embeds in milliseconds per step, so budget and progress tests are quick.
    """
    from tests.tiny_encoder import build_tiny_encoder

    return build_tiny_encoder(tmp_path_factory.mktemp("tiny-model"))
