"""Providers: what produces a run's events (echo, agent CLIs, OpenAI-compatible APIs).

The app builds a :class:`ProviderRegistry` from its configuration (:class:`ProviderConfig`
or :func:`default_providers`), looks a provider up by name and hands the registry a source
made by :func:`make_source`. Depends on :mod:`registry` only.

``OpenAIProvider`` is imported on first use, so that a server without it never loads its
HTTP client.
"""

from typing import TYPE_CHECKING

from .base import (
    Burst,
    ConversationStore,
    Item,
    Provider,
    ProviderRegistry,
    ProviderRequest,
    UnknownProvider,
    check_options,
    each_item,
    make_source,
)
from .cli_formats import FORMATS, CliFormat
from .command import CommandProvider
from .config import CommandSpec, OpenAISettings, ProviderConfig, default_providers
from .echo import EchoOptions, EchoProvider

if TYPE_CHECKING:
    from .openai import OpenAIProvider

__all__ = [
    "FORMATS",
    "Burst",
    "CliFormat",
    "CommandProvider",
    "CommandSpec",
    "ConversationStore",
    "EchoOptions",
    "EchoProvider",
    "Item",
    "OpenAIProvider",
    "OpenAISettings",
    "Provider",
    "ProviderConfig",
    "ProviderRegistry",
    "ProviderRequest",
    "UnknownProvider",
    "check_options",
    "default_providers",
    "each_item",
    "make_source",
]


def __getattr__(name: str) -> object:
    if name == "OpenAIProvider":
        from .openai import OpenAIProvider

        return OpenAIProvider
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
