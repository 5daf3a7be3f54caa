"""runwire's core: runs, seqs, replay buffers, subscriptions, eviction and the store.

Knows nothing of HTTP, WebSockets or any provider. Create a :class:`MemoryRegistry`
(optionally with a store) and pass it to whatever serves clients.
"""

from .clock import Clock, ManualClock, SystemClock
from .errors import QueueFull, RegistryError, RunInProgress, ShuttingDown, UnknownRun
from .events import (
    COMPLETE,
    SESSION_CREATED,
    USER_MESSAGE,
    Emit,
    Event,
    ForkOrigin,
    Position,
    RunSummary,
    Turn,
)
from .hooks import NullPersistence, Persistence
from .memory import (
    MemoryRegistry,
    Notice,
    Policy,
    RegistryStats,
    RunNotice,
    SessionDeleted,
    StartResult,
)
from .protocol import LocalRegistry, RunRegistry
from .sessions import RunContext, Source
from .subscription import Lagged, SubscribeInfo, Subscription, SubscriptionClosed

__all__ = [
    "COMPLETE",
    "SESSION_CREATED",
    "USER_MESSAGE",
    "Clock",
    "Emit",
    "Event",
    "ForkOrigin",
    "Lagged",
    "LocalRegistry",
    "ManualClock",
    "MemoryRegistry",
    "Notice",
    "NullPersistence",
    "Persistence",
    "Policy",
    "Position",
    "QueueFull",
    "RegistryError",
    "RegistryStats",
    "RunContext",
    "RunInProgress",
    "RunNotice",
    "RunRegistry",
    "RunSummary",
    "SessionDeleted",
    "ShuttingDown",
    "Source",
    "StartResult",
    "SubscribeInfo",
    "Subscription",
    "SubscriptionClosed",
    "SystemClock",
    "Turn",
    "UnknownRun",
]
