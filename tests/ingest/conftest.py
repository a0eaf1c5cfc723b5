"""Fixtures of the ingest tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.emulator import Emulator, running_emulator


@pytest.fixture
def emu() -> Iterator[Emulator]:
    """The loopback emulator of E-utilities, iCite and the update-file server."""
    yield from running_emulator()
