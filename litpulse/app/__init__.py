"""Application floor: every user-facing interface (CLI, HTTP API, web page, export)."""
