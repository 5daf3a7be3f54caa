"""Fixtures shared by every test package: the real servers of the multi-process tests."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tests.servers import Databases, postgres_server, redis_server


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """One ``redis-server`` for the whole test run, started on first use."""
    with redis_server() as url:
        yield url


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """One PostgreSQL cluster for the whole test run, started on first use; tests make
    their own databases in it."""
    with postgres_server() as url:
        yield url


@pytest.fixture(scope="session")
def databases(postgres_url: str) -> Iterator[Databases]:
    """The test databases of the session's PostgreSQL server, dropped at its end."""
    made = Databases(postgres_url)
    yield made
    asyncio.run(made.drop_all())
