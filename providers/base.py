"""The provider contract: what a provider is asked, what it streams, and how the app finds it.

A provider turns one request (a prompt, options, the conversation to resume) into a stream
of ``(kind, data)`` pairs. :func:`make_source` adapts a provider to the registry's
:data:`registry.Source`, fetching the conversation state from a :class:`ConversationStore`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any, NamedTuple, Protocol, runtime_checkable

from registry import ForkOrigin, RegistryError, RunContext, Source, Turn

Item = tuple[str, dict[str, Any]]
"""One event as a provider streams it: a kind and its data."""

Burst = list[Item]
"""Events that arrived together (a read that held several lines, a fast loop): yielding them
as one list lets the registry publish them in one step."""


class ProviderRequest(NamedTuple):
    """Everything a provider is told about the one turn it runs."""

    session_id: str
    """The app's session id (not the provider's)."""
    run_id: str
    content: str
    """The prompt of this turn."""
    options: dict[str, Any]
    """The client's options, to be validated by the provider."""
    resume_id: str | None
    """The provider session id recorded by an earlier run of the session, if any."""
    history: list[Turn]
    """Earlier turns of the session, oldest first, without this turn's prompt. Only filled
    for providers that keep no server-side conversation (``wants_history``)."""
    fork: ForkOrigin | None = None
    """For a forked session until its provider records a session id of its own: how to
    continue the conversation it was forked from (resume the source's provider session
    with the provider's fork option, count its turns, or start from its summary)."""


def with_summary(origin: ForkOrigin, content: str) -> str:
    """The prompt of a fork's first run for a provider that cannot resume the source's
    conversation: the fork's summary, then the prompt."""
    if not origin.summary:
        return content
    return f"{origin.summary}\n\n---\n\n{content}"


@runtime_checkable
class Provider(Protocol):
    """Streams the events of one run.

    ``stream`` may announce the provider's own session id with a ``session_created`` event
    (data ``{"provider_session_id": id}``); the registry records it and never shows it.
    Cancelling the task iterating the stream is the abort: the provider must stop its
    underlying work. A provider may end with its own ``complete``; if it raises, or ends
    without one, the registry completes the run.

    Providers may also define ``wants_history = True`` (to be handed earlier turns) and
    ``check_options(options)`` (raise :class:`ValueError` for bad options before the run
    starts); :func:`make_source` uses both when present.
    """

    name: str

    def stream(self, request: ProviderRequest) -> AsyncIterator[Item | Burst]:
        """The events of one run, after the ``user_message``: items, or bursts of them."""
        ...


class ConversationStore(Protocol):
    """Where a provider's conversation state is read from between runs.

    Implemented by both stores (:class:`registry.store.Store`).
    """

    async def resume_id(self, session_id: str) -> str | None:
        """The provider session id the session's latest run announced, if any."""
        ...

    async def turns(self, session_id: str) -> list[Turn]:
        """The session's earlier user prompts and assistant texts, oldest first."""
        ...

    async def fork_origin(self, session_id: str) -> ForkOrigin | None:
        """For a forked session, how its provider continues the source's conversation."""
        ...


class UnknownProvider(RegistryError):
    """A provider name that the server does not offer."""

    code = "UNKNOWN_PROVIDER"

    def __init__(self, name: str, available: Iterable[str]) -> None:
        names = ", ".join(available) or "none"
        super().__init__(f"unknown provider {name!r} (available: {names})")
        self.name = name


class ProviderRegistry:
    """The providers an app offers, by name. The first one is the default."""

    def __init__(self, providers: Iterable[Provider]) -> None:
        self._providers: dict[str, Provider] = {}
        for provider in providers:
            if provider.name in self._providers:
                raise ValueError(f"two providers are named {provider.name!r}")
            self._providers[provider.name] = provider

    def get(self, name: str) -> Provider:
        """The provider called ``name``; :class:`UnknownProvider` if there is none."""
        provider = self._providers.get(name)
        if provider is None:
            raise UnknownProvider(name, self._providers)
        return provider

    def names(self) -> list[str]:
        """Provider names in the order they were given."""
        return list(self._providers)

    @property
    def default(self) -> str | None:
        """The first provider's name, or ``None`` when there are none."""
        return next(iter(self._providers), None)

    def __contains__(self, name: object) -> bool:
        return name in self._providers

    def __len__(self) -> int:
        return len(self._providers)


def check_options(provider: Provider, options: Mapping[str, Any]) -> None:
    """Raise :class:`ValueError` naming the option if ``provider`` refuses ``options``.

    Providers without a ``check_options`` method accept anything here (and may still
    refuse when they run).
    """
    if not isinstance(options, Mapping):
        raise ValueError("options must be an object")
    check = getattr(provider, "check_options", None)
    if check is not None:
        check(options)


async def each_item(stream: AsyncIterator[Item | Burst]) -> AsyncIterator[Item]:
    """A provider's stream one item at a time, bursts taken apart (for consumers other
    than the registry, which publishes a burst in one step)."""
    async for entry in stream:
        if isinstance(entry, list):
            for item in entry:
                yield item
        else:
            yield entry


def make_source(
    provider: Provider, *, options: Mapping[str, Any], store: ConversationStore | None
) -> Source:
    """A registry :data:`~registry.Source` that runs ``provider`` for one run.

    The options are checked now, so a bad option is refused (:class:`ValueError`, naming
    the option) before any run starts. When the source runs it reads the session's resume
    id and, for providers that want it, the earlier turns from ``store``, then streams the
    provider's events.
    """
    check_options(provider, options)
    frozen = dict(options)
    wants_history = bool(getattr(provider, "wants_history", False))

    async def source(context: RunContext) -> AsyncIterator[Item | Burst]:
        resume_id: str | None = None
        history: list[Turn] = []
        fork: ForkOrigin | None = None
        if store is not None:
            resume_id = await store.resume_id(context.session_id)
            if resume_id is None:
                fork = await store.fork_origin(context.session_id)
            if wants_history:
                history = await store.turns(context.session_id)
        request = ProviderRequest(
            session_id=context.session_id,
            run_id=context.run_id,
            content=context.content,
            options=dict(frozen),
            resume_id=resume_id,
            history=history,
            fork=fork,
        )
        events = provider.stream(request)
        try:
            async for item in events:
                yield item
        finally:
            # Close the provider's generator here, in this task, so its cleanup runs now
            # (a no-op when it already ended, e.g. because it was cancelled).
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()

    return source
