"""The SQL both engines run: named parameters, and the few fragments that differ.

The store's queries are written once, in SQL that SQLite and PostgreSQL both accept, with
``:name`` parameters bound from a mapping. SQLite binds those itself; for asyncpg,
:func:`positional` turns them into ``$1, $2 ...`` (a name used twice is one parameter).
Where the engines differ (reading a JSON field, the two-argument maximum, a parameter whose
type PostgreSQL cannot infer), a query asks its :class:`Dialect` for the fragment, so the
SQLite text stays exactly what it was before PostgreSQL existed.

A :class:`Tx` is what the shared code runs queries on: a write transaction of the writer's
(session changes, forks, recovery) or, for reads, the store itself.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

Params = Mapping[str, Any]
Fetch = Callable[[str, Params], Awaitable[list[Any]]]

# A string literal (skipped whole, so a colon inside one is not a parameter), a ``::`` cast,
# or a ``:name`` parameter.
_TOKEN = re.compile(r"'(?:[^']|'')*'|::|:([A-Za-z_]\w*)")


class Dialect(Protocol):
    """The SQL fragments that differ between the engines. ``column`` and ``key`` are the
    store's own names, never user input."""

    name: str

    def greatest(self, a: str, b: str) -> str:
        """The larger of two values."""
        ...

    def integer(self, param: str) -> str:
        """A parameter used where PostgreSQL cannot infer its type (a ``CASE`` branch, an
        expression): typed as a 64-bit integer."""
        ...

    def json_text(self, column: str, key: str) -> str:
        """The value of ``key`` in the JSON object in ``column``: a string as itself,
        anything else as SQL sees it."""
        ...

    def json_truth(self, column: str, key: str) -> str:
        """The value of ``key`` such that Python's ``bool()`` of the result is its JSON
        truthiness (false, null, 0 and "" are false)."""
        ...

    def json_set(self, column: str, key: str, param: str) -> str:
        """The JSON object in ``column`` with ``key`` set to the string ``param``."""
        ...


class Tx(Protocol):
    """A connection as the shared queries use it."""

    @property
    def sql(self) -> Dialect:
        """The dialect of the engine behind it."""
        ...

    async def fetch(self, query: str, params: Params) -> list[Any]:
        """The rows of a query (each a sequence of column values)."""
        ...

    async def execute(self, query: str, params: Params) -> int:
        """Run a statement; how many rows it changed."""
        ...


class SQLiteDialect:
    """SQLite's JSON1 functions and its scalar ``MAX``."""

    name = "sqlite"

    def greatest(self, a: str, b: str) -> str:
        return f"MAX({a}, {b})"

    def integer(self, param: str) -> str:
        return param

    def json_text(self, column: str, key: str) -> str:
        return f"json_extract({column}, '$.{_key(key)}')"

    def json_truth(self, column: str, key: str) -> str:
        # json_extract gives true as 1, false as 0 and strings as text: bool() agrees.
        return self.json_text(column, key)

    def json_set(self, column: str, key: str, param: str) -> str:
        return f"json_set({column}, '$.{_key(key)}', {param})"


class PostgresDialect:
    """PostgreSQL: JSON kept as text and cast to ``json`` where it is read."""

    name = "postgres"

    def greatest(self, a: str, b: str) -> str:
        return f"GREATEST({a}, {b})"

    def integer(self, param: str) -> str:
        return f"CAST({param} AS BIGINT)"

    def json_text(self, column: str, key: str) -> str:
        return f"({column}::json ->> '{_key(key)}')"

    def json_truth(self, column: str, key: str) -> str:
        value, text = f"({column}::json -> '{_key(key)}')", self.json_text(column, key)
        return (
            f"CASE json_typeof({value}) WHEN 'boolean' THEN {text}::boolean"
            f" WHEN 'number' THEN {text}::numeric <> 0 WHEN 'string' THEN {text} <> ''"
            f" WHEN 'null' THEN false ELSE {value} IS NOT NULL END"
        )

    def json_set(self, column: str, key: str, param: str) -> str:
        return (
            f"jsonb_set({column}::jsonb, '{{{_key(key)}}}', to_jsonb(CAST({param} AS TEXT)))::text"
        )


SQLITE = SQLiteDialect()
POSTGRES = PostgresDialect()


def positional(query: str, params: Params) -> tuple[str, list[Any]]:
    """``query`` with its ``:name`` parameters as ``$1, $2 ...``, and their values in that
    order. Raises ``KeyError`` for a parameter ``params`` lacks."""
    numbers: dict[str, int] = {}

    def number(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return match.group(0)
        if name not in numbers:
            numbers[name] = len(numbers) + 1
        return f"${numbers[name]}"

    text = _TOKEN.sub(number, query)
    return text, [params[name] for name in numbers]


def marks(prefix: str, values: Any) -> tuple[str, dict[str, Any]]:
    """One named parameter per value: ``(":p0, :p1", {"p0": ..., "p1": ...})``, for an
    ``IN (...)`` list whose values never reach the SQL text."""
    bound = {f"{prefix}{i}": value for i, value in enumerate(values)}
    return ", ".join(":" + name for name in bound), bound


def _key(key: str) -> str:
    if not key.isidentifier():
        raise ValueError(f"not a JSON key the store uses: {key!r}")
    return key
