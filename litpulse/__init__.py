"""litpulse: a continuously learning PubMed index.

Floors (see ARCHITECTURE.md): ``litpulse.core`` (settings, errors, schema, db) below the
stages ``ingest``, ``ranking`` and ``retrain``; ``litpulse.pipeline`` (the nightly chain and
its decisions, DAG support, alerts) and ``litpulse.app`` (CLI, HTTP API, page, export) on top.
"""

from __future__ import annotations

from litpulse.core import __version__

__all__ = ["__version__"]
