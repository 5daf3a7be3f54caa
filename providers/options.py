"""Checking client options: each check names the option it refuses.

Options come from clients, so every value is checked for type and range before a provider
uses it, and unknown option names are refused rather than silently ignored.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import Any


def refuse_unknown(provider: str, options: Mapping[str, Any], known: Collection[str]) -> None:
    """Raise :class:`ValueError` for the first option name not in ``known``."""
    for key in options:
        if key not in known:
            allowed = ", ".join(sorted(known)) or "none"
            raise ValueError(
                f"options.{key}: unknown option for provider {provider} (known: {allowed})"
            )


def int_option(
    options: Mapping[str, Any], key: str, default: int, *, minimum: int, maximum: int
) -> int:
    """An integer option within ``minimum..maximum``."""
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"options.{key} must be an integer")
    if not minimum <= value <= maximum:
        raise ValueError(f"options.{key} must be between {minimum} and {maximum}")
    return value


def optional_int_option(
    options: Mapping[str, Any], key: str, *, minimum: int, maximum: int
) -> int | None:
    """An integer option within ``minimum..maximum``, or ``None`` when absent or null."""
    if options.get(key) is None:
        return None
    return int_option(options, key, 0, minimum=minimum, maximum=maximum)


def number_option(
    options: Mapping[str, Any],
    key: str,
    default: float | None,
    *,
    minimum: float,
    maximum: float,
) -> float | None:
    """A finite number within ``minimum..maximum`` (``default`` when absent or null)."""
    value = options.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"options.{key} must be a number")
    if not minimum <= value <= maximum:
        raise ValueError(f"options.{key} must be between {minimum:g} and {maximum:g}")
    return float(value)


def bool_option(options: Mapping[str, Any], key: str, default: bool = False) -> bool:
    """A boolean option."""
    value = options.get(key, default)
    if not isinstance(value, bool):
        raise ValueError(f"options.{key} must be true or false")
    return value


def str_option(
    options: Mapping[str, Any], key: str, *, max_length: int, min_length: int = 0
) -> str | None:
    """A string option of bounded length, or ``None`` when absent or null."""
    value = options.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"options.{key} must be a string")
    if not min_length <= len(value) <= max_length:
        raise ValueError(f"options.{key} must be {min_length} to {max_length} characters long")
    return value


def choice_option(options: Mapping[str, Any], key: str, choices: Collection[str]) -> str | None:
    """A string option that must be one of ``choices``, or ``None`` when absent or null."""
    value = options.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or value not in choices:
        allowed = ", ".join(sorted(choices)) or "none"
        raise ValueError(f"options.{key} must be one of: {allowed}")
    return value
