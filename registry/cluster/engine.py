"""Run state in Redis: the scripts of :mod:`.scripts` as typed calls, and the reads.

Every call that cannot reach Redis raises :class:`EngineUnavailable`, a registry error
with a message a client can act on, so a Redis outage is a clear error for new requests,
never a hang or a silent loss.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Any, Literal, NamedTuple, cast

import msgspec
import redis.asyncio as redis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError, ResponseError

from ..errors import RegistryError
from ..events import RunSummary
from . import scripts

StartStatus = Literal["started", "queued", "duplicate", "busy", "full", "noord"]

_summaries = msgspec.json.Decoder(list[RunSummary])


class EngineUnavailable(RegistryError):
    """Redis could not be reached (or refused the call); the request may be retried."""

    code = "INTERNAL"

    def __init__(self, what: str, cause: BaseException) -> None:
        super().__init__(f"run state is unavailable (Redis: {cause}); retry shortly")
        self.what = what


class Timing(NamedTuple):
    """What every state change needs besides its own arguments."""

    lease_ms: int
    """How long a lease key (and a heartbeat) lives in Redis unless renewed: part of the
    configured lease, so that renewal, expiry and the reaper's look together stay within
    it (see :mod:`.upkeep`)."""
    ttl: int
    """Seconds a completed run's state stays in Redis."""
    maxlen: int
    """Events kept per run stream (approximately: trimming is by whole nodes)."""


class StoredEvent(NamedTuple):
    """An event as a run's stream holds it."""

    seq: int
    kind: str
    ts: int
    data: str


class Engine:
    """Typed access to run state in one Redis server, under key prefix ``prefix``."""

    def __init__(self, client: redis.Redis, *, prefix: str, proc: str, timing: Timing) -> None:
        self.client = client
        self.prefix = prefix
        self.proc = proc
        self.timing = timing
        self._scripts: dict[str, AsyncScript] = {
            name: client.register_script(getattr(scripts, name))
            for name in (
                "START",
                "APPEND",
                "FINISH",
                "ABORT",
                "REAP",
                "RENEW",
                "ORPHANS",
                "SETTLED",
                "WATCH",
                "DELETE",
                "RUNS",
                "SEED_ORD",
                "RESTORE",
            )
        }

    def key(self, kind: str, name: str) -> str:
        """The key (or channel) ``P:kind:name``."""
        return f"{self.prefix}:{kind}:{name}"

    @property
    def notice_channel(self) -> str:
        return f"{self.prefix}:notice"

    async def _run(self, name: str, *args: str | int) -> Any:
        return await self._call(name, self._scripts[name](args=[self.prefix, *args]))

    async def _call(self, what: str, call: Awaitable[Any]) -> Any:
        try:
            return await call
        except ResponseError:
            # A script error is a bug, not an outage: let it show as one.
            raise
        except (RedisError, OSError) as exc:
            raise EngineUnavailable(what, exc) from exc

    # State changes ----------------------------------------------------------------------

    async def start(
        self,
        *,
        run_id: str,
        session_id: str,
        owner: str,
        provider: str,
        ts: int,
        user_message: str,
        client_msg_id: str | None,
        policy: str,
        queue_limit: int,
        orphan_data: str,
        interrupt_data: str,
    ) -> tuple[StartStatus, str]:
        """Start, queue or find a run (see ``START``); ``noord`` asks for :meth:`seed_ord`."""
        t = self.timing
        status, found = await self._run(
            "START",
            run_id,
            session_id,
            owner,
            provider,
            ts,
            t.lease_ms,
            self.proc,
            user_message,
            client_msg_id or "",
            t.maxlen,
            t.ttl,
            policy,
            queue_limit,
            orphan_data,
            interrupt_data,
        )
        return status, found

    async def append(
        self,
        run_id: str,
        session_id: str,
        ts: int,
        kinds: Sequence[str],
        data: Sequence[str],
        *,
        min_seq: int = 0,
    ) -> tuple[int, str, int]:
        """Append a batch to the run (``run_id`` ``""``: the session's running run); the
        first seq, the run, and how many seqs Redis had forgotten and were skipped (it came
        back with older data: numbering goes on after ``min_seq``, the highest seq the caller
        knows was handed out). ``(0, "", 0)`` when the run is not running."""
        first, found, skipped = await self._run(
            "APPEND",
            run_id,
            session_id,
            ts,
            self.timing.maxlen,
            min_seq,
            msgspec.json.encode(list(kinds)).decode(),
            *data,
        )
        return int(first), found, int(skipped)

    async def finish(
        self, run_id: str, ts: int, data: str, outcome: str, *, min_seq: int = 0
    ) -> int:
        """End a running run (and start the session's next queued one); the complete's seq,
        or 0 when it was not running. The seq is past ``min_seq`` (see :meth:`append`)."""
        t = self.timing
        return int(
            await self._run(
                "FINISH", run_id, ts, data, outcome, t.ttl, t.maxlen, t.lease_ms, min_seq
            )
        )

    async def abort(
        self,
        session_id: str,
        ts: int,
        data: str,
        outcome: str,
        *,
        clear_queue: bool,
        known: tuple[str, int] | None = None,
    ) -> tuple[str, int] | None:
        """End the session's running run; ``(run_id, last_seq)`` or ``None``. ``known``:
        the running run and the highest seq of it the caller holds (see :meth:`append`)."""
        t = self.timing
        run_id, min_seq = known if known is not None else ("", 0)
        found = await self._run(
            "ABORT",
            session_id,
            ts,
            data,
            outcome,
            t.ttl,
            t.maxlen,
            t.lease_ms,
            "1" if clear_queue else "0",
            run_id,
            min_seq,
        )
        return (found[0], int(found[1])) if found else None

    async def reap(self, run_id: str, ts: int, data: str, *, min_seq: int = 0) -> int:
        """End a run whose lease is gone; its complete's seq, or 0."""
        t = self.timing
        return int(
            await self._run(
                "REAP", run_id, ts, data, t.ttl, t.maxlen, t.lease_ms, self.proc, min_seq
            )
        )

    async def renew(self, leases: Sequence[tuple[str, str]]) -> list[str]:
        """Renew this process's heartbeat and its runs' leases ((session, run) pairs);
        returns the runs whose lease is gone."""
        flat = [value for pair in leases for value in pair]
        lost = await self._run("RENEW", self.timing.lease_ms, self.proc, *flat)
        return [str(run_id) for run_id in lost]

    async def orphans(self) -> tuple[list[tuple[str, str]], list[str]]:
        """Running runs whose lease is gone ((run, session) pairs), and completed runs
        whose process died before writing their end (now this process's to write)."""
        orphans, claimed = await self._run("ORPHANS", self.proc)
        pairs = [(orphans[i], orphans[i + 1]) for i in range(0, len(orphans), 2)]
        return pairs, [str(run_id) for run_id in claimed]

    async def settled(self, run_ids: Sequence[str]) -> None:
        """These runs' ends are written to the database."""
        if run_ids:
            await self._run("SETTLED", self.proc, *run_ids)

    async def watch(self, counts: dict[str, int]) -> None:
        """This process's live subscriptions per session (0 to forget one)."""
        flat = [str(value) for pair in counts.items() for value in pair]
        await self._run("WATCH", self.proc, self.timing.lease_ms, *flat)

    async def delete(self, session_id: str, owner: str, ts: int, data: str) -> list[str]:
        """A deleted session: end its runs, drop its keys, tell every process. Returns the
        runs it ended."""
        t = self.timing
        ended = await self._run("DELETE", session_id, owner, ts, data, t.ttl, t.maxlen, t.lease_ms)
        return [str(run_id) for run_id in ended]

    async def unsettled(self, run_ids: Sequence[str]) -> list[str]:
        """Those of the runs whose end is not yet written to the database."""
        key = f"{self.prefix}:unsettled"
        found = await self._call("unsettled", self.client.hmget(key, list(run_ids)))
        return [run_id for run_id, owner in zip(run_ids, found, strict=True) if owner]

    async def restore_end(
        self, run: RunSummary, *, owner: str, seq: int, ts: int, data: str, ord: int | None
    ) -> int:
        """Put back a run Redis lost, as ended by ``data`` at ``seq`` (see ``RESTORE``)."""
        return int(
            await self._run(
                "RESTORE",
                run.run_id,
                run.session_id,
                owner,
                run.provider,
                run.started_at or ts,
                seq,
                ts,
                data,
                self.timing.ttl,
                ord if ord is not None else 0,
            )
        )

    async def seed_ord(self, value: int) -> None:
        """Raise the start-order counter to at least ``value``."""
        await self._run("SEED_ORD", value)

    # Reads ------------------------------------------------------------------------------

    async def runs(self, owner: str, status: Literal["running", "all"]) -> list[RunSummary]:
        """The owner's run summaries (``all``: also queued, and completed within the TTL)."""
        text = await self._run("RUNS", owner, status)
        summaries = _summaries.decode(text)
        summaries.sort(key=lambda s: (s.started_at is None, s.started_at or 0))
        return summaries

    async def run(self, run_id: str) -> dict[str, str] | None:
        """A run's hash, or ``None`` when Redis no longer has it."""
        found = await self._call("run", self.client.hgetall(self.key("run", run_id)))
        return cast(dict[str, str], found) or None

    async def running_run_id(self, session_id: str) -> str | None:
        found = await self._call(
            "session", self.client.hget(self.key("ses", session_id), "running")
        )
        return cast(str | None, found)

    async def session_runs(self, session_id: str) -> list[str]:
        """The session's newest run ids, oldest first."""
        found = await self._call(
            "session runs", self.client.lrange(self.key("sruns", session_id), 0, -1)
        )
        return cast(list[str], found)

    async def events(self, run_id: str, after_seq: int, *, limit: int) -> list[StoredEvent]:
        """Up to ``limit`` events of the run's stream after ``after_seq``."""
        entries = cast(
            list[tuple[str, dict[str, str]]],
            await self._call(
                "events",
                self.client.xrange(self.key("ev", run_id), f"0-{after_seq + 1}", "+", count=limit),
            ),
        )
        return [
            StoredEvent(int(entry_id[2:]), fields["k"], int(fields["t"]), fields["d"])
            for entry_id, fields in entries
        ]


def summary_of(run_id: str, fields: dict[str, str], subscribers: int = 0) -> RunSummary:
    """A run summary from a run's hash."""
    return RunSummary(
        run_id=run_id,
        session_id=fields["session_id"],
        provider=fields.get("provider", ""),
        status=fields.get("status", "running"),  # type: ignore[arg-type]
        started_at=_int(fields.get("started_at")),
        completed_at=_int(fields.get("completed_at")),
        last_seq=_int(fields.get("last_seq")) or 0,
        subscribers=subscribers,
        outcome=fields.get("outcome") or None,  # type: ignore[arg-type]
    )


def _int(value: str | None) -> int | None:
    return int(value) if value else None
