"""How the server configures its providers.

Everything that decides what runs (an executable, its arguments, working directory and
environment, an API's base URL and key) comes from here, that is from the server's own
configuration. Clients can only pick a provider by name and set the options a provider
declares safe (for ``command`` providers: the knobs listed here, nothing else).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from .base import Provider, ProviderRegistry
from .cli_formats import FORMATS, CliFormat, FormatName
from .command import CommandProvider
from .echo import EchoProvider

_EMPTY: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True)
class CommandSpec:
    """An agent CLI run as a subprocess that prints JSON lines.

    ``CommandSpec(format="claude")`` runs ``claude -p --output-format stream-json
    --verbose`` from ``PATH``; every field can be overridden by the server's configuration.
    """

    format: FormatName
    name: str | None = None
    """The provider name clients use; defaults to the format name."""
    executable: str | None = None
    """Path or name of the program; defaults to the format's usual executable."""
    args: tuple[str, ...] | None = None
    """Arguments before the resume arguments; defaults to the format's JSON-output flags."""
    cwd: str | None = None
    """Working directory of the command; ``None`` is the server's."""
    env: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    """Environment variables set for the command, on top of the server's own environment
    unless ``inherit_env`` is false."""
    inherit_env: bool = True
    knobs: Mapping[str, Mapping[str, tuple[str, ...]]] = field(default_factory=dict)
    """Options a client may set, each mapping allowed values to the arguments they add.
    E.g. ``{"model": {"fast": ("--model", "haiku"), "smart": ("--model", "opus")}}`` lets a
    client send ``options: {"model": "fast"}``. Any other option is refused."""
    grace: float = 1.0
    """Seconds between ``SIGTERM`` and ``SIGKILL`` when the command must stop."""
    max_line_bytes: int = 4 << 20
    """Longest stdout line read; a longer one is skipped with an ``error`` event."""
    max_stderr_bytes: int = 16 << 10
    """How much stderr, at most, becomes ``error`` events in one run."""

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            known = ", ".join(FORMATS)
            raise ValueError(f"unknown command format {self.format!r} (known: {known})")
        if self.grace < 0:
            raise ValueError("grace must not be negative")
        if self.max_line_bytes < 1024:
            raise ValueError("max_line_bytes must be at least 1024")
        if self.max_stderr_bytes < 0:
            raise ValueError("max_stderr_bytes must not be negative")
        for knob, values in self.knobs.items():
            for value, extra in values.items():
                if not isinstance(extra, tuple) or not all(isinstance(a, str) for a in extra):
                    raise ValueError(f"knob {knob}={value}: arguments must be a tuple of str")

    @property
    def cli(self) -> CliFormat:
        return FORMATS[self.format]

    @property
    def provider_name(self) -> str:
        return self.name or self.format

    def argv(self, extra: list[str], resume_id: str | None, *, fork: bool = False) -> list[str]:
        """The full command line: executable, arguments, knob arguments, resume (as a fork
        of the conversation when ``fork``)."""
        cli = self.cli
        base = self.args if self.args is not None else cli.args
        args = cli.argv(base, extra, resume_id, fork=fork)
        return [self.executable or cli.executable, *args]

    def environment(self) -> dict[str, str]:
        """The command's environment."""
        env = dict(os.environ) if self.inherit_env else {}
        env.update(self.env)
        return env


@dataclass(frozen=True)
class OpenAISettings:
    """An OpenAI-compatible Chat Completions endpoint (OpenAI, vLLM, llama.cpp, Ollama)."""

    model: str
    base_url: str = "https://api.openai.com/v1"
    api_key: str | None = None
    name: str = "openai"
    models: tuple[str, ...] = ()
    """Other models a client may pick with ``options.model``."""
    system_prompt: str | None = None
    connect_timeout: float = 10.0
    read_timeout: float = 300.0
    """Longest silence while streaming before the run fails."""
    include_usage: bool = True
    """Ask for token usage in the last chunk (``stream_options.include_usage``)."""
    max_history_turns: int = 200
    """At most this many earlier turns (the most recent ones) are sent."""
    max_line_bytes: int = 1 << 20
    """Longest server-sent-events line read; a longer one is skipped with an ``error``."""

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("the openai provider needs a model")
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError("base_url must start with http:// or https://")
        if self.connect_timeout <= 0 or self.read_timeout <= 0:
            raise ValueError("timeouts must be positive")
        if self.max_history_turns < 0:
            raise ValueError("max_history_turns must not be negative")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OpenAISettings | None:
        """Settings from ``RUNWIRE_OPENAI_MODEL`` (required), ``OPENAI_BASE_URL`` and
        ``OPENAI_API_KEY``; ``None`` when no model is set."""
        env = os.environ if environ is None else environ
        model = env.get("RUNWIRE_OPENAI_MODEL", "").strip()
        if not model:
            return None
        base_url = env.get("OPENAI_BASE_URL", "").strip() or cls.base_url
        return cls(model=model, base_url=base_url, api_key=env.get("OPENAI_API_KEY") or None)


@dataclass(frozen=True)
class ProviderConfig:
    """Which providers a server offers. ``echo`` always; the others when configured."""

    commands: tuple[CommandSpec, ...] = ()
    openai: OpenAISettings | None = None
    echo: bool = True

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ProviderConfig:
        """``RUNWIRE_CLAUDE_BIN``, ``RUNWIRE_CODEX_BIN``, ``RUNWIRE_GEMINI_BIN`` (path of the
        CLI, enabling it; ``RUNWIRE_<NAME>_CWD`` sets its working directory) and the
        :meth:`OpenAISettings.from_env` variables."""
        env = os.environ if environ is None else environ
        commands = []
        for cli in FORMATS.values():
            prefix = f"RUNWIRE_{cli.name.upper()}"
            executable = env.get(f"{prefix}_BIN", "").strip()
            if executable:
                cwd = env.get(f"{prefix}_CWD", "").strip() or None
                commands.append(CommandSpec(format=cli.name, executable=executable, cwd=cwd))
        return cls(commands=tuple(commands), openai=OpenAISettings.from_env(env))

    def build(self) -> ProviderRegistry:
        """The :class:`ProviderRegistry` these settings describe (``echo`` first)."""
        return default_providers(commands=self.commands, openai=self.openai, echo=self.echo)


def default_providers(
    commands: tuple[CommandSpec, ...] | list[CommandSpec] = (),
    openai: OpenAISettings | None = None,
    *,
    echo: bool = True,
) -> ProviderRegistry:
    """A registry with ``echo`` (the default provider), the given CLIs and OpenAI."""
    providers: list[Provider] = []
    if echo:
        providers.append(EchoProvider())
    providers.extend(CommandProvider(spec) for spec in commands)
    if openai is not None:
        # Imported here: a server without it never loads its HTTP client.
        from .openai import OpenAIProvider

        providers.append(OpenAIProvider(openai))
    return ProviderRegistry(providers)
