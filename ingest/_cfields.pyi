"""Types of the compiled article reader (ingest/_cfields.pyx)."""

from types import ModuleType
from typing import Any

from ingest.records import Record, SourceRef

class ArticleReader:
    def __init__(self, fields: ModuleType, dates: ModuleType) -> None: ...
    def read(self, elem: Any, ref: SourceRef) -> Record | None: ...
