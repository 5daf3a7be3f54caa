"""Both stores are the one :class:`~registry.store.Store`: the same members, with the same
signatures, so code written against either runs on the other."""

from __future__ import annotations

import inspect

import pytest

from registry.store import PostgresStore, SQLiteStore, Store

# Checked by mypy as well as at run time: each class is assignable to the protocol.
STORES: tuple[type[Store], ...] = (SQLiteStore, PostgresStore)
MEMBERS = sorted(
    name for name in dir(Store) if not name.startswith("_") or name in ("__aenter__", "__aexit__")
)


def test_the_protocol_lists_what_the_gateway_uses() -> None:
    assert {"run_started", "read_history", "history_page", "digest", "fork_session"} <= set(MEMBERS)
    assert {"max_ord", "stats", "flush", "close", "mark_read", "set_fork_summary"} <= set(MEMBERS)


@pytest.mark.parametrize("name", MEMBERS)
def test_both_stores_have_each_member_with_its_signature(name: str) -> None:
    expected = getattr(Store, name)
    for cls in STORES:
        member = getattr(cls, name)
        if isinstance(expected, property):
            assert isinstance(member, property), (cls.__name__, name)
            continue
        assert inspect.iscoroutinefunction(member) == inspect.iscoroutinefunction(expected)
        assert inspect.signature(member) == inspect.signature(expected), (cls.__name__, name)
