"""Ingest: sources (files, E-utilities, update files), the parser, the store, citations."""
