"""Hides the installed ``isal`` from a benchmark child (and its parse workers, which inherit
``PYTHONPATH``): with this folder first on the path, :mod:`ingest.inflate` falls back to
zlib, so the ``-zlib`` rows of ``bench.ingest`` measure what ISA-L's inflate gains."""

raise ImportError("isal is hidden for a zlib-inflate benchmark row (bench/zlib_only)")
