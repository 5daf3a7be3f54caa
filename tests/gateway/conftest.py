from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.settings import Settings

from .helpers import Served, make_settings, serve


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(str(tmp_path / "runwire.db"))


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[Served]:
    """A gateway on a free loopback port: (base_url, ws_url, tokens, gateway)."""
    async with serve(settings) as served:
        yield served
