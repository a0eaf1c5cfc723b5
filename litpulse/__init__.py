"""litpulse: a continuously learning PubMed index."""

from __future__ import annotations

__version__ = "0.1.0"
