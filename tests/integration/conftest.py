"""Integration tests need the database."""

import pytest


@pytest.fixture(autouse=True)
def _rolled_back(db_conn):
    """Every integration test runs in a rolled-back transaction."""
    yield
