"""Build of the optional compiled article reader (``ingest/_cfields.pyx``).

Everything else is configured in pyproject.toml. The extension is optional: without
Cython, lxml's headers or a C compiler the package installs without it and
``ingest.fields`` reads every record with its pure-Python code (same results, slower).
"""

from __future__ import annotations

from setuptools import Extension, setup


def _extensions() -> list[Extension]:
    try:
        import lxml
        from Cython.Build import cythonize
    except ImportError:
        return []
    ext = Extension(
        "ingest._cfields",
        ["ingest/_cfields.pyx"],
        include_dirs=lxml.get_include(),  # type: ignore[attr-defined]
        optional=True,  # a failed compile leaves the pure-Python reader
    )
    modules: list[Extension] = cythonize([ext], language_level=3, quiet=True)
    return modules


setup(ext_modules=_extensions())
