"""Fixtures the review files share, from the test modules that own them."""

from tests.ingest.test_windows_review import emu  # noqa: F401 - fixture
from tests.litpulse.pipeline.test_digest import hook  # noqa: F401 - fixture
from tests.review.test_session27_keys_review import pg_settings  # noqa: F401 - fixture
