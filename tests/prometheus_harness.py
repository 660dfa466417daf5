"""Moved to tests/support/prometheus.py (the fixture to tests/conftest.py): re-exported until the last
importer (tests/reliability/test_protected_scrape.py) imports from there, then delete this file."""

from __future__ import annotations

from tests.conftest import prometheus_factory  # noqa: F401
from tests.support.prometheus import PrometheusFactory, PrometheusServer, free_port  # noqa: F401
