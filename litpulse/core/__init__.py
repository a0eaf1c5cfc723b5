"""Core floor of litpulse: settings, errors, schema, database helpers and time helpers.

Imports nothing of ours outside ``litpulse.core``; every stage (``ingest``, ``ranking``,
``retrain``) and the application build on it.
"""

from __future__ import annotations

__version__ = "0.1.0"
