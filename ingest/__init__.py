"""Ingest: sources (files, E-utilities, update files), the streaming parser, the store, citations."""
