"""End to end: three real workers in network-namespace hosts behind a real HAProxy, with a
real nginx code store, all from the project's generated configs (olactors.bench.testbed).

One test, in phases, bounded in time and requests; traffic only to addresses
the test network created.  Which worker served a call is read from each
worker's own /stats (answered calls per function); where a call should go is
predicted by the pure ring (olactors._balancing), which mirrors HAProxy.
"""

from __future__ import annotations

import json
import re
import signal
from collections import Counter
from pathlib import Path

import httpx
import pytest
import trio

from olactors._balancing import key_hash
from olactors.bench.netns import python_command
from olactors.bench.testbed import LocalCluster, open_testbed
from olactors.bench.workers import HostedWorker

pytestmark = pytest.mark.root

CACHE_S = 1.0
SETTINGS = [
    f"registry.cache_s={CACHE_S}",
    "queue.max_depth=4",
    "functions.max_instances=2",
]
SLEEPER = """import time

def f(event):
    time.sleep(float((event or {}).get("sleep", 0)))
    return {"ok": True}
"""
VERSIONED = 'def f(event):\n    return {{"version": {version}}}\n'
PRIVATE_YAML = "access: private\n"


def _function(root: Path, name: str, source: str, ol_yaml: str | None = None) -> Path:
    directory = root / name
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "f.py").write_text(source)
    if ol_yaml is not None:
        (directory / "ol.yaml").write_text(ol_yaml)
    return directory


async def _call(
    client: httpx.AsyncClient, url: str, name: str, body: dict | None = None, **kw
) -> httpx.Response:
    return await client.post(f"{url}/run/{name}", json=body or {}, **kw)


async def _no_stream_in_flight(bed: LocalCluster) -> None:
    """Wait until HAProxy serves no stream on any worker (``show stat``'s scur)
    and no worker's health is changing (a status like "UP 1/2": one failed
    check, or "DOWN 1/2"), so the ring it routes by is the settled one."""
    with trio.fail_after(10):
        while True:
            stat = await bed.haproxy.command("show stat")
            rows = [line.split(",") for line in stat.splitlines() if line and line[0] != "#"]
            header = stat.splitlines()[0].lstrip("# ").split(",")
            scur, svname, status = (header.index(k) for k in ("scur", "svname", "status"))
            servers = [row for row in rows if row[svname] not in ("FRONTEND", "BACKEND")]
            if all(row[scur] in ("", "0") and "/" not in row[status] for row in servers):
                return
            await trio.sleep(0.01)


async def _light_call(bed: LocalCluster, client: httpx.AsyncClient, name: str) -> httpx.Response:
    """A call made when HAProxy serves nothing else, so bounded loads count no
    earlier stream (still being released) against the function's home worker."""
    await _no_stream_in_flight(bed)
    return await _call(client, bed.balancer_url, name)


def _balancer_log(bed: LocalCluster) -> str:
    """HAProxy's last log lines (server state changes, where calls went): for
    an assertion's message."""
    lines = (bed.work / "haproxy.log").read_text(errors="replace").splitlines()
    return "\n".join(lines[-40:])


async def _served(bed: LocalCluster) -> dict[str, Counter[str]]:
    """function -> Counter(worker address -> answered calls)."""
    out: dict[str, Counter[str]] = {}
    for w in bed.workers:
        if not w.alive:
            continue
        for name, count in (await bed.invocations(w)).items():
            out.setdefault(name, Counter())[w.address] += count
    return out


def _delta(
    after: dict[str, Counter[str]], before: dict[str, Counter[str]]
) -> dict[str, Counter[str]]:
    out = {}
    for name, counts in after.items():
        diff = counts - before.get(name, Counter())
        if diff:
            out[name] = diff
    return out


async def test_three_workers_behind_haproxy(tmp_path: Path) -> None:
    with trio.fail_after(240):
        await _scenario(tmp_path)


async def _scenario(tmp_path: Path) -> None:
    src = tmp_path / "functions"
    settings = [*SETTINGS, f"state.dir={tmp_path / 'state'}"]  # shared: tokens hold everywhere
    async with open_testbed(tmp_path / "bed", 3, settings) as bed:
        # Published once, through the store: one with the CLI, the rest with its library.
        sleeper = _function(src, "sleeper", SLEEPER)
        done = await trio.run_process(
            python_command(
                "install", str(sleeper), "--name", "sleeper", "--registry", bed.store_url
            ),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        names = [f"fn{i:02d}" for i in range(24)]
        for name in names:
            await bed.publish_async(name, _function(src, "plain", "def f(event):\n    return 1\n"))
        await bed.publish_async("hot", sleeper)
        await bed.publish_async("upd", _function(src, "upd", VERSIONED.format(version=1)))
        ring = bed.ring()

        # A fresh connection per call: on a reused client connection HAProxy answers
        # a call whose worker closed the connection before answering (a crash, or
        # the worker closing an idle keep-alive connection just as HAProxy reuses
        # it) by closing the client's connection, unanswered and unlogged (HTTP's
        # "not processed: you may retry"); on a fresh one, with 502 worker_failed.
        limits = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=60.0, limits=limits) as client:
            url = bed.balancer_url

            # 1. Light load: every function sticks to the worker the ring names.
            # Light means one call at a time: HAProxy has released the previous
            # call's stream before the next arrives (else bounded loads count it
            # and may skip the home worker, as they should under real load).
            before = await _served(bed)
            for _ in range(3):
                for name in names[:12]:
                    r = await _light_call(bed, client, name)
                    assert r.status_code == 200, r.text
            light = _delta(await _served(bed), before)
            for name in names[:12]:
                assert len(light[name]) == 1, (name, light[name], _balancer_log(bed))
                (address,) = light[name]
                assert bed.ids[address] == ring.owner(key_hash(name)), (name, _balancer_log(bed))
            assert len({a for n in names[:12] for a in light[n]}) == 3  # all three used

            # 2. Load on one hot function: it spills to a second worker (bounded
            # loads), and calls a worker refused before running (its queue of 4
            # full) are retried on another worker; a client sees 503 overloaded
            # only when every try was refused.
            before = await _served(bed)
            refused_before = await _refused(bed, "hot")
            async with trio.open_nursery() as nursery:
                answers: list[int] = []
                texts: list[str] = []
                rids: list[str] = []

                async def hot() -> None:
                    r = await _call(client, url, "hot", {"sleep": 0.4})
                    answers.append(r.status_code)
                    texts.append(r.text)
                    rids.append(r.headers["x-request-id"])

                for _ in range(20):  # more than three workers hold (2 instances + 4 queued each)
                    nursery.start_soon(hot)
            overloaded = [t for status, t in zip(answers, texts, strict=True) if status != 200]
            assert all(json.loads(t)["error"] == "overloaded" for t in overloaded), overloaded
            spread = _delta(await _served(bed), before)["hot"]
            assert len(spread) >= 2, spread
            assert await _refused(bed, "hot") > refused_before  # workers did refuse
            # HAProxy's log: refused calls were retried (on other workers), and a
            # client saw 503 only after every try (1 + retries 2) was refused.
            retries = _retries(bed)
            tried = {rid: retries[rid] for rid in rids}
            assert any(tried.values()), tried
            for status, rid in zip(answers, rids, strict=True):
                if status != 200:
                    assert tried[rid] == 2, (rid, tried)
            assert answers.count(200) >= 12, answers

            # 3. SIGKILL a worker under load: its functions move; every request
            # gets an answer; only calls it had in hand may fail (502 from the
            # balancer, never retried: they may have run).
            owner = bed.worker_by_id(ring.owner(key_hash("sleeper")))
            owned = [n for n in names if ring.owner(key_hash(n)) == bed.ids[owner.address]]
            results: list[tuple[str, int, str]] = []
            async with trio.open_nursery() as nursery:

                async def load(task: int) -> None:
                    for i in range(8):
                        name = "sleeper" if i % 2 else owned[(task + i) % len(owned)]
                        r = await _call(client, url, name, {"sleep": 0.15})
                        results.append((name, r.status_code, r.text))

                for task in range(4):
                    nursery.start_soon(load, task)
                await trio.sleep(0.5)
                owner.signal(signal.SIGKILL)
            assert len(results) == 32  # none lost, none hanging (the scope bounds it)
            failed = [r for r in results if r[1] != 200]
            assert len(failed) <= 4, failed  # at most the calls in hand at the kill
            for _, status, text in failed:
                assert status == 502 and json.loads(text)["error"] == "worker_failed", text
            await owner.wait()
            owner.cleanup()  # what the killed worker left (cgroups, mounts)
            await bed.wait_server_down(owner)
            survivors = [w for w in bed.workers if w.alive]
            before = await _served(bed)
            for name in owned[:4]:
                assert (await _light_call(bed, client, name)).status_code == 200
            moved = _delta(await _served(bed), before)
            alive_ring = bed.ring(survivors)
            for name in owned[:4]:
                assert len(moved[name]) == 1, (name, moved[name], _balancer_log(bed))
                (address,) = moved[name]
                assert bed.ids[address] == alive_ring.owner(key_hash(name)), _balancer_log(bed)

            # 4. A code update published once is served by every worker within
            # registry.cache_s + 1 s (each asked directly).
            for w in survivors:
                r = await _call(client, w.url, "upd")
                assert r.json() == {"version": 1}
            await bed.publish_async("upd", _function(src, "upd", VERSIONED.format(version=2)))
            published = trio.current_time()
            seen: dict[str, float] = {}
            with trio.fail_after(CACHE_S + 1.0 + 2.0):  # the bound, plus slack for the calls
                while len(seen) < len(survivors):
                    for w in survivors:
                        if w.address not in seen:
                            r = await _call(client, w.url, "upd")
                            if r.json() == {"version": 2}:
                                seen[w.address] = trio.current_time() - published
                    await trio.sleep(0.05)
            assert max(seen.values()) <= CACHE_S + 1.0, seen

            # 5. A worker added at run time (runtime API) takes over the functions
            # the ring now gives it, about a share of them, and nothing else moves.
            added = await bed.add_worker()
            live = [w for w in bed.workers if w.alive]
            await bed.wait_servers_up(len(live))
            new_ring = bed.ring(live)
            before = await _served(bed)
            for name in names:
                assert (await _light_call(bed, client, name)).status_code == 200
            after = _delta(await _served(bed), before)
            taken = {n for n in names if added.address in after[n]}
            predicted = {n for n in names if new_ring.owner(key_hash(n)) == bed.ids[added.address]}
            assert taken == predicted, (taken, predicted, _balancer_log(bed))
            assert 0.1 <= len(taken) / len(names) <= 0.6, taken
            for name in names:
                assert len(after[name]) == 1, (name, after[name], _balancer_log(bed))
                (address,) = after[name]
                assert bed.ids[address] == new_ring.owner(key_hash(name)), _balancer_log(bed)

            # 6. A draining worker receives no new calls.
            drained = _busiest(after, live)
            await bed.admin(drained, "POST", "/drain")
            await bed.wait_server_down(drained)
            before = await bed.invocations(drained)
            for name in names:
                assert (await _call(client, url, name)).status_code == 200
            assert await bed.invocations(drained) == before

            # 7. A token issued once works through the balancer on whichever worker answers.
            await _token_phase(bed, client, src, [w for w in live if w is not drained])


_LOG_LINE = re.compile(r" \d+/\d+/\d+/\d+/\+?(\d+) \d+/\d+ rid=(\S+) ")  # "+": redispatched


def _retries(bed: LocalCluster) -> dict[str, int]:
    """Request id -> retries, from HAProxy's access log (its %rc field)."""
    text = (bed.work / "haproxy.log").read_text(errors="replace")
    return {m.group(2): int(m.group(1)) for m in _LOG_LINE.finditer(text)}


async def _refused(bed: LocalCluster, name: str) -> int:
    total = 0
    for w in bed.workers:
        if w.alive:
            stats = await bed.admin(w, "GET", "/stats")
            total += stats["functions"].get(name, {}).get("rejected_429", 0)
    return total


def _busiest(after: dict[str, Counter[str]], workers: list[HostedWorker]) -> HostedWorker:
    totals: Counter[str] = Counter()
    for counts in after.values():
        totals.update(counts)
    return max(workers, key=lambda w: totals[w.address])


async def _token_phase(
    bed: LocalCluster, client: httpx.AsyncClient, src: Path, serving: list[HostedWorker]
) -> None:
    ring = bed.ring(serving)
    private = []
    for i in range(40):  # private functions until two serving workers own one each
        name = f"priv{i:02d}"
        owner = ring.owner(key_hash(name))
        if owner not in {ring.owner(key_hash(p)) for p in private}:
            private.append(name)
        if len(private) == 2:
            break
    assert len(private) == 2
    for name in private:
        await bed.publish_async(
            name, _function(src, name, "def f(event):\n    return 7\n", PRIVATE_YAML)
        )
    tokens = {}
    for name in private:  # issued once, on one worker: the state dir is shared
        created = await bed.admin(serving[0], "POST", "/tokens", json={"function": name})
        tokens[name] = created["token"]
    with trio.fail_after(CACHE_S + 5.0):
        for name in private:
            while True:
                r = await _call(
                    client,
                    bed.balancer_url,
                    name,
                    headers={"Authorization": f"Bearer {tokens[name]}"},
                )
                if r.status_code == 200:
                    break
                assert r.status_code in (401, 403), r.text
                await trio.sleep(0.1)
    for name in private:
        r = await _call(client, bed.balancer_url, name)
        assert r.status_code == 401, r.text
