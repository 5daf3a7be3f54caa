"""SharedCalls: concurrent calls with equal keys run once and share the result; a failed or
cancelled first call leaves the others to call again."""

from __future__ import annotations

import anyio
import pytest

from registry.store.shared import SharedCalls


class Gate:
    """A call that counts itself and returns only once the test opens it."""

    def __init__(self, fail_first: bool = False) -> None:
        self.calls = 0
        self.started = anyio.Event()
        self.open = anyio.Event()
        self.fail_first = fail_first

    async def __call__(self) -> list[int]:
        self.calls += 1
        call = self.calls
        self.started.set()
        await self.open.wait()
        if self.fail_first and call == 1:
            raise RuntimeError("the first call fails")
        return [call]


async def test_equal_keys_at_the_same_time_run_once_and_share_the_result() -> None:
    shared: SharedCalls[str, list[int]] = SharedCalls()
    gate = Gate()
    results: list[list[int]] = []

    async def call() -> None:
        results.append(await shared.run("k", gate))

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(call)
        await gate.started.wait()
        await anyio.wait_all_tasks_blocked()
        assert len(shared) == 1
        gate.open.set()
    assert gate.calls == 1
    assert results == [[1], [1], [1]]
    assert results[0] is results[1] is results[2]
    assert len(shared) == 0


async def test_other_keys_and_later_calls_run_on_their_own() -> None:
    shared: SharedCalls[str, list[int]] = SharedCalls()
    gate = Gate()
    gate.open.set()
    async with anyio.create_task_group() as tg:
        tg.start_soon(shared.run, "a", gate)
        tg.start_soon(shared.run, "b", gate)
    assert gate.calls == 2
    assert await shared.run("a", gate) == [3]


async def test_a_failed_first_call_is_its_callers_error_and_the_others_call_again() -> None:
    shared: SharedCalls[str, list[int]] = SharedCalls()
    gate = Gate(fail_first=True)
    outcomes: list[object] = []

    async def call() -> None:
        try:
            outcomes.append(await shared.run("k", gate))
        except RuntimeError as exc:
            outcomes.append(str(exc))

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(call)
        await gate.started.wait()
        await anyio.wait_all_tasks_blocked()
        gate.open.set()
    # The first failed; of the two that waited, one called again and the other shared it.
    assert gate.calls == 2
    assert outcomes == ["the first call fails", [2], [2]]


async def test_a_cancelled_first_caller_leaves_the_others_to_call_again() -> None:
    shared: SharedCalls[str, list[int]] = SharedCalls()
    gate = Gate()
    results: list[list[int]] = []

    async def follower() -> None:
        results.append(await shared.run("k", gate))

    async with anyio.create_task_group() as tg:
        with anyio.CancelScope() as first:
            async with anyio.create_task_group() as leader:
                leader.start_soon(shared.run, "k", gate)
                await gate.started.wait()
                tg.start_soon(follower)
                await anyio.wait_all_tasks_blocked()
                first.cancel()
        gate.open.set()
    assert gate.calls == 2
    assert results == [[2]]


@pytest.mark.parametrize("count", [2, 5])
async def test_every_caller_gets_the_result_however_many_wait(count: int) -> None:
    shared: SharedCalls[int, list[int]] = SharedCalls()
    gate = Gate()
    results: list[list[int]] = []

    async def call() -> None:
        results.append(await shared.run(7, gate))

    async with anyio.create_task_group() as tg:
        for _ in range(count):
            tg.start_soon(call)
        await anyio.wait_all_tasks_blocked()
        gate.open.set()
    assert results == [[1]] * count
