"""SafeSandbox rules, tested against a fake raw sandbox (no root, virtual time)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from olactors._causes import Cause, CauseCode, released
from olactors._errors import SandboxDead, SandboxStateError
from olactors._records import NO_OUTPUT, CallOutput
from olactors.sock import (
    EventHub,
    Invocation,
    InvocationResult,
    SafeSandbox,
    SandboxCallUsage,
    SandboxDestroyed,
    SandboxState,
    SandboxUsage,
)


class FakeRawSandbox:
    """A raw sandbox for unit tests: records calls, can be told to fail or hang."""

    def __init__(self, sid: str, is_leaf: bool = True) -> None:
        self.id = sid
        self.is_leaf = is_leaf
        self.calls: list[str] = []
        self.fail_next: str | None = None
        self.invoke_time = 0.0
        self.active = 0
        self.max_active = 0

    async def _op(self, name: str) -> None:
        self.calls.append(name)
        if self.fail_next == name:
            raise OSError(f"{name} broke")

    async def invoke(self, request: Invocation) -> InvocationResult:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await self._op("invoke")
            await trio.sleep(self.invoke_time)
            return InvocationResult(200, (), request.body)
        finally:
            self.active -= 1

    def call_output(self) -> CallOutput:
        return NO_OUTPUT

    async def freeze(self) -> None:
        await self._op("freeze")

    async def thaw(self) -> None:
        await self._op("thaw")

    async def release(self, cause: Cause) -> None:
        await self._op("release")

    def usage(self) -> SandboxUsage:
        return SandboxUsage(memory_bytes=1)

    def call_usage(self) -> SandboxCallUsage:
        return SandboxCallUsage(memory_peak_bytes=1)

    async def diagnose(self, error: BaseException | None) -> Cause:
        return Cause.of(CauseCode.UNKNOWN, error=f"diagnosed: {error}")


DIAGNOSED = Cause.of(CauseCode.UNKNOWN, error="diagnosed: freeze broke")


@pytest.fixture
def autojump_clock():
    return trio.testing.MockClock(autojump_threshold=0)


async def test_calls_are_serialised(autojump_clock):
    raw = FakeRawSandbox("a")
    raw.invoke_time = 1.0
    sb = SafeSandbox(raw, EventHub(), None)
    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(sb.invoke, Invocation(body=b"x"))
    assert raw.max_active == 1
    assert raw.calls == ["invoke"] * 5


async def test_any_error_destroys_and_later_calls_are_harmless():
    raw = FakeRawSandbox("a")
    hub = EventHub()
    events = hub.subscribe()
    sb = SafeSandbox(raw, hub, None)
    raw.fail_next = "freeze"
    with pytest.raises(SandboxDead, match="diagnosed: freeze broke") as info:
        await sb.pause()
    assert info.value.cause == DIAGNOSED
    assert sb.state is SandboxState.DEAD
    assert raw.calls == ["freeze", "release"]
    for op in (sb.pause, sb.unpause):
        with pytest.raises(SandboxDead):
            await op()
    await sb.destroy(released("again"))
    assert raw.calls == ["freeze", "release"]  # released exactly once
    event = events.receive_nowait()
    assert isinstance(event, SandboxDestroyed) and event.cause == DIAGNOSED
    assert sb.death_cause == DIAGNOSED
    assert sb.usage() == SandboxUsage()  # nothing to report after release


async def test_invoke_refused_while_paused():
    sb = SafeSandbox(FakeRawSandbox("a"), EventHub(), None)
    await sb.pause()
    with pytest.raises(SandboxStateError):
        await sb.invoke(Invocation())
    assert sb.state is SandboxState.PAUSED
    await sb.unpause()
    assert (await sb.invoke(Invocation(body=b"ok"))).body == b"ok"


async def test_cancelled_invoke_destroys(autojump_clock):
    raw = FakeRawSandbox("a")
    raw.invoke_time = 10
    sb = SafeSandbox(raw, EventHub(), None)
    with trio.move_on_after(1):
        await sb.invoke(Invocation())
    assert sb.state is SandboxState.DEAD
    assert raw.calls[-1] == "release"
    killed = Cause.of(CauseCode.SIGNAL, signal="SIGKILL", sender="worker")
    assert sb.death_cause == killed  # the caller's own cancel: the worker killed it


async def test_the_runtime_limit_destroys_with_cause_timeout(autojump_clock):
    raw = FakeRawSandbox("a")
    raw.invoke_time = 10
    sb = SafeSandbox(raw, EventHub(), None)
    assert (await sb.invoke(Invocation(body=b"x"), limit_s=20)).body == b"x"
    start = trio.current_time()
    with pytest.raises(SandboxDead) as info:
        await sb.invoke(Invocation(), limit_s=2)
    assert trio.current_time() - start == 2
    timeout = Cause.of(CauseCode.TIMEOUT, limit_s=2)
    assert info.value.cause == sb.death_cause == timeout
    assert raw.calls[-1] == "release"


async def test_zygote_released_only_after_last_child():
    hub = EventHub()
    zygote = SafeSandbox(FakeRawSandbox("z", is_leaf=False), hub, None)
    kids = []
    for i in range(3):
        zygote.child_added()
        kids.append(SafeSandbox(FakeRawSandbox(f"c{i}"), hub, zygote))
    await zygote.destroy(released("early"))
    assert zygote.state is SandboxState.DEAD and not zygote.released
    await kids[0].destroy(released("x"))
    await kids[1].destroy(released("x"))
    assert not zygote.released and zygote.live_children == 1
    await kids[2].destroy(released("x"))
    assert zygote.released and zygote.raw.calls == ["release"]


async def test_closed_subscriber_is_dropped():
    hub = EventHub()
    gone = hub.subscribe()
    kept = hub.subscribe()
    gone.close()
    sb = SafeSandbox(FakeRawSandbox("a"), hub, None)
    await sb.destroy(released("bye"))
    assert isinstance(kept.receive_nowait(), SandboxDestroyed)
