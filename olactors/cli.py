"""`olactors` command line: serve, status, install, uninstall, drain, run, logs, why, secret,
token, owner, lock, init, cleanup, bench, simulate, cluster.

Errors a user can cause (bad config, bad path, no worker running) print one
clear line to stderr and exit with status 2; they never show a traceback.
When a running worker answers a request with an error (``install`` of a bad
archive, ``run`` of a failing function), its JSON error goes to stderr and
the exit status is 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._errors import OlactorsError
from .cli_secrets import add_secret_parser, cmd_secret
from .worker_dir import DEFAULT_PATH

if TYPE_CHECKING:
    import httpx

CONNECT_TIMEOUT_S = 5.0


class WorkerNotRunning(OlactorsError):
    code = "not_running"

    def __init__(self, path: Path) -> None:
        super().__init__(f"no worker running at {path} (start it with `olactors serve`)")


def _add_path(p: argparse.ArgumentParser, *, overrides: bool = True) -> None:
    p.add_argument(
        "--path",
        type=Path,
        default=DEFAULT_PATH,
        help=f"worker directory (default: ./{DEFAULT_PATH})",
    )
    if overrides:
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="SECTION.KEY=VALUE",
            help="override one worker.yaml key",
        )


def _add_registry(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--registry",
        metavar="URL",
        help="the shared code store (e.g. http://store:8080); without it, the local worker's",
    )
    p.add_argument(
        "--registry-auth",
        type=Path,
        metavar="FILE",
        help="HTTP basic auth for the store: a file whose first line is user:password",
    )


def build_parser() -> argparse.ArgumentParser:
    summary = " ".join(__doc__.split("\n\n")[0].split())
    parser = argparse.ArgumentParser(prog="olactors", description=summary)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init", help="create a worker directory with documented defaults")
    _add_path(p)

    p = sub.add_parser(
        "serve",
        help="run the worker in the foreground (initialises the worker dir if needed)",
    )
    _add_path(p)

    p = sub.add_parser("status", help="show a running worker's status and stats")
    _add_path(p, overrides=False)
    p.add_argument("--json", action="store_true", help="print the raw JSON")

    p = sub.add_parser(
        "install",
        help="upload a function dir to a running worker's registry, or publish it to "
        "a shared code store (--registry URL)",
    )
    p.add_argument("dir", type=Path, help="function directory (holding f.py)")
    p.add_argument("--name", help="function name (default: the directory's name)")
    p.add_argument("--owner", help="set the function's owner (kept by the worker, not the code)")
    _add_registry(p)
    _add_path(p, overrides=False)
    p.add_argument("--json", action="store_true", help="print what was done as one JSON object")

    p = sub.add_parser(
        "uninstall",
        help="remove a function from a running worker's registry, or from a shared "
        "code store (--registry URL)",
    )
    p.add_argument("name", help="function name")
    _add_registry(p)
    _add_path(p, overrides=False)

    p = sub.add_parser(
        "drain",
        help="take a running worker out of a load balancer's rotation: it still serves "
        "calls, but /healthz answers 503 (--off: back in)",
    )
    p.add_argument("--off", action="store_true", help="stop draining")
    _add_path(p, overrides=False)

    p = sub.add_parser("run", help="invoke a function on a running worker and print its answer")
    p.add_argument("name")
    p.add_argument("json", nargs="?", help="JSON event to send (default: no body)")
    p.add_argument("--method", default="POST", help="HTTP method (default: POST)")
    p.add_argument(
        "--token",
        help="invoke token of a private function (default: $OLACTORS_TOKEN, which keeps it "
        "out of the process list)",
    )
    _add_path(p, overrides=False)

    p = sub.add_parser("logs", help="show a function's recent calls on a running worker")
    p.add_argument("name", help="function name")
    p.add_argument("--request", metavar="ID", help="show this call's full record and output")
    p.add_argument("--errors", action="store_true", help="only failed calls")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new calls")
    p.add_argument("--limit", type=int, default=20, help="calls shown first (default: 20)")
    p.add_argument("--json", action="store_true", help="print JSON lines")
    _add_path(p, overrides=False)

    p = sub.add_parser("why", help="explain in plain words how a call ended")
    p.add_argument("name", help="function name")
    p.add_argument("request_id", help="the call's request id (its X-Request-Id)")
    _add_path(p, overrides=False)

    add_secret_parser(sub, _add_path)
    _add_access_commands(sub)

    p = sub.add_parser(
        "lock", help="resolve a function dir's packages and write its ol.lock (exact versions)"
    )
    p.add_argument("dir", type=Path, help="function directory")
    _add_path(p)

    p = sub.add_parser(
        "cleanup",
        help="remove what a dead worker left behind (serve also does it itself; "
        "refused while a worker runs; safe to repeat)",
    )
    _add_path(p)

    p = sub.add_parser("bench", help="run a benchmark and print its figures")
    bench = p.add_subparsers(dest="bench", required=True)
    b = bench.add_parser("sandbox", help="sandbox create/fork/pause/unpause/destroy latencies")
    b.add_argument("--samples", type=int, default=60)
    b.add_argument("--json", action="store_true", help="print figures as JSON")
    b = bench.add_parser("http", help="HTTP throughput and latency vs. a bare quart-trio app")
    b.add_argument("--seconds", type=float, default=5.0, help="length of each timed run")
    b.add_argument("--json", action="store_true", help="print figures as JSON")
    b = bench.add_parser("imports", help="cold start with and without a zygote (heavy package)")
    b.add_argument("--samples", type=int, default=15, help="never-seen functions per side")
    b.add_argument("--modules", type=int, default=400, help="modules in the generated package")
    b.add_argument("--json", action="store_true", help="print figures as JSON")
    b = bench.add_parser("idle", help="memory kept per function after it idled out")
    b.add_argument("--functions", type=int, default=1000)
    b.add_argument("--json", action="store_true", help="print figures as JSON")
    b = bench.add_parser(
        "cluster",
        help="N real workers (network-namespace hosts) behind HAProxy: consistent hashing vs. "
        "round robin, and the simulation at scale (root)",
    )
    b.add_argument("--workers", type=int, default=3, help="real workers (default: 3)")
    b.add_argument("--calls", type=int, default=200, help="calls per routing (default: 200)")
    b.add_argument("--rate", type=float, default=5.0, help="arrivals per second (default: 5)")
    b.add_argument(
        "--sim-scale",
        type=float,
        default=0.1,
        help="simulation size (1: 100 workers, 10,000 functions, 100,000 calls; default 0.1)",
    )
    b.add_argument("--json", action="store_true", help="print figures as JSON")
    b = bench.add_parser("records", help="worker RSS while it records many calls")
    b.add_argument("--calls", type=int, default=100_000)
    b.add_argument("--functions", type=int, default=10)
    b.add_argument("--output-bytes", type=int, default=1024, help="stdout and stderr per call")
    b.add_argument("--json", action="store_true", help="print figures as JSON")

    from .cluster.commands import add_cluster_parser

    add_cluster_parser(sub)

    p = sub.add_parser(
        "simulate",
        help="run a deterministic simulation scenario (real actors, simulated sandboxes)",
    )
    p.add_argument("scenario", help="a scenario name, policy-study, or list")
    p.add_argument("--seed", type=int, default=1, help="the seed that reproduces the run")
    p.add_argument("--scale", type=float, default=1.0, help="size factor (functions, duration)")
    p.add_argument("--out", type=Path, help="write CSV, JSON, summary (and PNG) here")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    return parser


def _add_access_commands(sub: Any) -> None:
    """``token create|list|revoke`` and ``owner set|unset|list`` (see :mod:`.cli_access`)."""
    p = sub.add_parser("token", help="invoke tokens for private functions (admin)")
    token = p.add_subparsers(dest="action", required=True)
    t = token.add_parser(
        "create",
        help="issue a token for FUNCTION or for an owner's functions (printed once, "
        "stored only as a hash)",
    )
    t.add_argument("function", nargs="?", help="the private function the token invokes")
    t.add_argument("--owner", help="instead: every private function this owner owns")
    t.add_argument("--expires", metavar="DURATION", help="e.g. 30d, 12h, 15m (default: never)")
    t = token.add_parser("list", help="every token: id, function or owner, dates, state")
    t = token.add_parser("revoke", help="revoke a token by its id")
    t.add_argument("id", help="the token's id (from token list or token create)")
    for t in token.choices.values():
        t.add_argument("--json", action="store_true", help="print one JSON object")
        _add_path(t, overrides=False)

    p = sub.add_parser("owner", help="function owners (kept by the worker, shared state)")
    owner = p.add_subparsers(dest="action", required=True)
    o = owner.add_parser("set", help="set FUNCTION's owner to NAME")
    o.add_argument("function")
    o.add_argument("name", help="owner name: letters, digits, '_', '.', '-'")
    o = owner.add_parser("unset", help="clear FUNCTION's owner")
    o.add_argument("function")
    o = owner.add_parser("list", help="every function's owner")
    for o in owner.choices.values():
        o.add_argument("--json", action="store_true", help="print one JSON object")
        _add_path(o, overrides=False)


# ------------------------------------------------------------------ commands
def _cmd_init(args: argparse.Namespace) -> int:
    from .worker_dir import init_worker_dir

    init_worker_dir(args.path, args.overrides, write_overrides=True)
    print(f"initialised worker dir {args.path.resolve()}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from .sock import prepare_worker_process

    # Enter the worker's private mount namespace before anything can start a thread.
    prepare_worker_process()

    from functools import partial

    import trio

    from ._config import load_worker_config
    from .examples import install_examples
    from .serve import serve
    from .worker_dir import init_worker_dir

    path: Path = args.path
    log = logging.getLogger("olactors.cli")
    if not (path / "worker.yaml").is_file():
        init_worker_dir(path, args.overrides)
        log.info("initialised worker dir %s", path.resolve())
    config = load_worker_config(path, args.overrides)
    registry = path / "registry"
    if not config.registry.location and _is_empty_dir(registry):
        names = install_examples(registry)
        log.info("installed example functions into %s: %s", registry, ", ".join(names))
    trio.run(partial(serve, config, path, handle_signals=True))
    return 0


def _is_empty_dir(path: Path) -> bool:
    if not path.exists():
        return True
    return not any(not entry.name.startswith(".") for entry in path.iterdir())


def _cmd_status(args: argparse.Namespace) -> int:
    with _admin_client(args.path) as client:
        status = _admin_call(client, args.path, "GET", "/status", ok_statuses=(200, 503))
        stats = _admin_call(client, args.path, "GET", "/stats")
    if args.json:
        print(json.dumps({"status": status, "stats": stats}, indent=2))
        return 0
    from .serve import read_endpoints

    for line in format_status(args.path.resolve(), status, stats, read_endpoints(args.path)):
        print(line)
    return 0


FUNCTION_COLUMNS = (
    ("calls", "invocations"),
    ("errors", "errors"),
    ("429s", "rejected_429"),
    ("cold", "cold_starts"),
    ("warm", "warm_starts"),
    ("inst", "instances"),
    ("queue", "queue_depth"),
)


def format_status(
    path: Path, status: dict[str, Any], stats: dict[str, Any], endpoints: dict[str, Any] | None
) -> list[str]:
    """A short readable summary of ``GET /status`` and ``GET /stats`` (missing fields skipped)."""
    where = f" (pid {endpoints.get('pid')}, {endpoints.get('public')})" if endpoints else ""
    lines = [f"worker {path}: {status.get('status')}{where}"]
    states = stats.get("sandboxes") or {}
    detail = ", ".join(f"{k} {v}" for k, v in states.items()) if isinstance(states, dict) else ""
    lines.append(
        f"functions: {status.get('functions')}, sandboxes: {status.get('sandboxes')}"
        + (f" ({detail})" if detail else "")
        + f", in flight: {stats.get('in_flight', 0)}"
    )
    memory = stats.get("memory") or {}
    if "used_mb" in memory:
        evictions = (stats.get("evictions") or {}).get("count", 0)
        lines.append(
            f"memory: {memory['used_mb']} of {memory.get('total_mb')} MB reserved, "
            f"evictions: {evictions}"
        )
    registry = stats.get("registry") or {}
    if registry.get("stale_s"):
        lines.append(
            f"code store: unreachable, serving code up to {registry['stale_s']:.0f} s old "
            f"(last answered {registry.get('last_ok_at') or 'never'}: {registry.get('last_error')})"
        )
    latency = stats.get("latency") or {}
    if latency.get("p50_ms") is not None and latency.get("p99_ms") is not None:
        lines.append(f"latency: p50 {latency['p50_ms']:.1f} ms, p99 {latency['p99_ms']:.1f} ms")
    functions = stats.get("functions") or {}
    if isinstance(functions, dict) and functions:
        width = max(8, *(len(name) for name in functions))
        header = f"{'function':{width}} " + " ".join(f"{c:>6}" for c, _ in FUNCTION_COLUMNS)
        lines.append(header + f" {'p50 ms':>8} {'p99 ms':>8}")
        for name, f in functions.items():
            cells = " ".join(f"{f.get(key, '-')!s:>6}" for _, key in FUNCTION_COLUMNS)
            lat = f.get("latency") or {}
            p50, p99 = lat.get("p50_ms"), lat.get("p99_ms")
            times = f"{p50:8.1f} {p99:8.1f}" if p50 is not None and p99 is not None else ""
            lines.append(f"{name:{width}} {cells} {times}".rstrip())
    return lines


def _cmd_install(args: argparse.Namespace) -> int:
    from ._config import load_worker_config
    from ._names import validate_function_name
    from .registry import pack_function_dir

    source: Path = args.dir
    if not source.is_dir():
        raise OlactorsError(f"{source} is not a directory")
    name = args.name or source.resolve().name
    validate_function_name(name)
    if args.owner is not None:
        from .cli_access import check_owner

        check_owner(args.owner)
    data = pack_function_dir(source, load_worker_config(args.path).registry.max_code_mb << 20)
    if args.registry is None and args.registry_auth is not None:
        raise OlactorsError("--registry-auth goes with --registry URL")
    if args.owner is not None:
        # First, so the function is never served without its owner (owners live
        # in the worker's state dir, which the workers of a cluster share).
        with _admin_client(args.path) as client:
            response = _admin_request(
                client, args.path, "PUT", f"/owners/{name}", json={"owner": args.owner}
            )
        if not response.is_success:
            _print_error(response)
            return 1
    owned = f", owner {args.owner}" if args.owner is not None else ""
    if args.registry is not None:
        from .cluster.publish import open_store, publish

        entry = publish(open_store(args.registry, args.registry_auth), name, data)
        if args.json:
            print(
                json.dumps({**entry, "name": name, "registry": args.registry, "owner": args.owner})
            )
        else:
            print(f"published {name} to {args.registry} ({entry['bytes']} bytes packed{owned})")
        return 0
    with _admin_client(args.path) as client:
        response = _admin_request(client, args.path, "POST", f"/registry/{name}", content=data)
    if response.is_success:
        if args.json:
            print(json.dumps({**response.json(), "bytes": len(data), "owner": args.owner}))
        else:
            print(f"installed {name} ({len(data)} bytes packed{owned})")
        return 0
    _print_error(response)
    return 1


def _cmd_uninstall(args: argparse.Namespace) -> int:
    from ._names import validate_function_name

    validate_function_name(args.name)
    if args.registry is not None:
        from .cluster.publish import open_store, unpublish

        unpublish(open_store(args.registry, args.registry_auth), args.name)
        print(f"removed {args.name} from {args.registry}")
        return 0
    if args.registry_auth is not None:
        raise OlactorsError("--registry-auth goes with --registry URL")
    with _admin_client(args.path) as client:
        response = _admin_request(client, args.path, "DELETE", f"/registry/{args.name}")
    if response.is_success:
        print(f"removed {args.name}")
        return 0
    _print_error(response)
    return 1


def _cmd_drain(args: argparse.Namespace) -> int:
    with _admin_client(args.path) as client:
        state = _admin_call(client, args.path, "DELETE" if args.off else "POST", "/drain")
    print(f"worker {args.path.resolve()}: {state['status']}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    import httpx

    from ._names import validate_function_name
    from .serve import read_endpoints

    validate_function_name(args.name)
    method = args.method.upper()
    headers = {}
    body = b""
    if args.json is not None:
        try:
            json.loads(args.json)
        except ValueError as exc:
            raise OlactorsError(f"the event is not valid JSON: {exc}") from None
        body = args.json.encode()
        headers["content-type"] = "application/json"
    token = args.token if args.token is not None else os.environ.get("OLACTORS_TOKEN")
    if token:
        headers["authorization"] = f"Bearer {token}"
    endpoints = read_endpoints(args.path)
    if endpoints is None or "public" not in endpoints:
        raise WorkerNotRunning(args.path)
    url = f"{endpoints['public']}/run/{args.name}"
    try:
        with httpx.Client(timeout=httpx.Timeout(None, connect=CONNECT_TIMEOUT_S)) as client:
            response = client.request(method, url, content=body, headers=headers)
    except httpx.ConnectError:
        raise WorkerNotRunning(args.path) from None
    except httpx.HTTPError as exc:
        raise OlactorsError(f"request to {url} failed: {exc}") from None
    if response.is_success:
        text = response.text
        sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")
        return 0
    _print_error(response)
    return 1


FOLLOW_INTERVAL_S = 1.0


def format_call(record: dict[str, Any]) -> str:
    """One line per call: time, request id, status, duration, cold/warm, cause."""
    cold = record.get("cold")
    reason = record.get("cold_reason")
    start = "cold" + (f"({reason})" if reason else "") if cold else "warm"
    cause = record.get("cause")
    what = cause.get("code", "?") if isinstance(cause, dict) else "-"
    blocked = record.get("blocked_syscalls") or []
    if blocked:
        what += " blocked:" + ",".join(blocked)
    return (
        f"{record.get('started_at', '?')} {record.get('request_id', '?')} "
        f"{record.get('status', '?')} {float(record.get('duration_ms') or 0):.1f}ms {start} {what}"
    )


def format_record(record: dict[str, Any], explanation: str) -> list[str]:
    """The full record of one call, then its output (for ``logs --request``)."""
    lines = [format_call(record)]
    for key, value in record.items():
        if key not in ("stdout", "stderr"):
            lines.append(f"  {key}: {json.dumps(value)}")
    lines.append(f"  why: {explanation}")
    for stream in ("stdout", "stderr"):
        text = record.get(stream) or ""
        lines.append(f"--- {stream} ({len(text)} chars)")
        if text:
            lines.append(text.rstrip("\n"))
    return lines


def _debug_get(client: httpx.Client, worker_dir: Path, path: str) -> httpx.Response:
    """A /debug answer; its JSON error (unknown function or id) raised as one line."""
    response = _admin_request(client, worker_dir, "GET", path)
    if response.is_success:
        return response
    try:
        message = response.json()["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text.strip() or f"HTTP {response.status_code}"
    raise OlactorsError(message)


def _cmd_logs(args: argparse.Namespace) -> int:
    import time

    from ._names import validate_function_name

    validate_function_name(args.name)
    base = f"/debug/{args.name}"
    with _admin_client(args.path) as client:
        if args.request is not None:
            record = _debug_get(client, args.path, f"{base}/{args.request}").json()
            if args.json:
                print(json.dumps(record))
                return 0
            why = _debug_get(client, args.path, f"{base}/{args.request}/error").text.strip()
            print("\n".join(format_record(record, why)))
            return 0
        query = "&errors=1" if args.errors else ""
        seen: dict[str, None] = {}  # the ids printed lately (bounded), oldest first
        limit = max(1, min(args.limit, 1000))
        while True:
            records = _debug_get(client, args.path, f"{base}?limit={limit}{query}").json()
            for record in reversed(records["records"]):  # oldest first
                request_id = record.get("request_id")
                if request_id in seen:
                    continue
                seen[request_id] = None
                print(json.dumps(record) if args.json else format_call(record), flush=True)
            while len(seen) > 4 * 1000:
                del seen[next(iter(seen))]
            if not args.follow:
                return 0
            limit = 1000
            time.sleep(FOLLOW_INTERVAL_S)


def _cmd_why(args: argparse.Namespace) -> int:
    from ._names import validate_function_name

    validate_function_name(args.name)
    with _admin_client(args.path) as client:
        path = f"/debug/{args.name}/{args.request_id}/error"
        print(_debug_get(client, args.path, path).text.strip())
    return 0


def _cmd_lock(args: argparse.Namespace) -> int:
    from ._config import load_worker_config
    from .packages import IndexOptions, lock_function_dir

    source: Path = args.dir
    if not source.is_dir():
        raise OlactorsError(f"{source} is not a directory")
    config = load_worker_config(args.path, args.overrides)
    index = IndexOptions.from_config(config, base_dir=args.path)
    result = lock_function_dir(source, index, config.packages.resolve_timeout_s)
    for pin in result.lock.pins:
        print(f"{pin.name}=={pin.version}")
    declared = result.declaration.source or "no declaration"
    print(f"wrote {result.path} ({len(result.lock.pins)} pinned, from {declared})")
    return 0


def _cmd_cleanup(args: argparse.Namespace) -> int:
    import trio

    from ._config import load_worker_config
    from .worker_dir import cleanup_worker_dir

    if not args.path.is_dir():
        print(f"nothing to clean: {args.path} is not a directory")
        return 0
    config = load_worker_config(args.path, args.overrides)
    done = trio.run(cleanup_worker_dir, args.path, config)
    print("\n".join(done) if done else "nothing to clean")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.bench == "http":
        if args.seconds <= 0:
            raise OlactorsError("--seconds must be > 0")
        from .bench import http

        return http.run(args.seconds, args.json)
    if args.bench == "imports":
        from .bench import imports

        return imports.run(args.samples, args.modules, args.json)
    if args.bench == "idle":
        from .bench import idle

        return idle.run(args.functions, args.json)
    if args.bench == "cluster":
        from .bench import cluster

        return cluster.run(args.workers, args.calls, args.rate, args.sim_scale, args.json)
    if args.bench == "records":
        from .bench import records

        return records.main(args.calls, args.functions, args.output_bytes, args.json)
    if args.samples < 1:
        raise OlactorsError("--samples must be >= 1")
    from .bench import sandbox

    return sandbox.run(args.samples, args.json, None)


# ------------------------------------------------------- admin socket client
def _cmd_cluster(args: argparse.Namespace) -> int:
    from .cluster.commands import run_cluster

    return run_cluster(args)


def _cmd_simulate(args: argparse.Namespace) -> int:
    from simulations import SCENARIOS

    from .simulation import run_scenario
    from .simulation._report import format_summary, write_outputs

    if args.scale <= 0:
        raise OlactorsError(f"--scale must be positive, got {args.scale}")
    if args.scenario == "list":
        for name, make in SCENARIOS.items():
            print(f"{name:16} {make().description.strip().splitlines()[0]}")
        print(f"{'policy-study':16} every eviction policy at several pool sizes")
        print(f"{'cluster-study':16} N workers behind consistent hashing and round robin")
        return 0
    if args.scenario == "policy-study":
        return _simulate_policy_study(args)
    if args.scenario == "cluster-study":
        return _simulate_cluster_study(args)
    if args.scenario not in SCENARIOS:
        known = ", ".join([*SCENARIOS, "policy-study", "cluster-study"])
        raise OlactorsError(f"unknown scenario {args.scenario!r} (known: {known})")
    print(f"simulating {args.scenario} with seed {args.seed} ...", flush=True)
    result = run_scenario(SCENARIOS[args.scenario](args.scale), args.seed, settings=args.set)
    print(format_summary(result))
    if args.out is not None:
        for path in write_outputs(result, args.out):
            print(f"wrote {path}")
    return 0 if result.ok else 1


def _simulate_policy_study(args: argparse.Namespace) -> int:
    from simulations.policy_study import format_study, run_study

    def progress(row) -> None:
        s = row.result.summary
        print(
            f"  pool {row.pool_mb:>6} MB  {row.policy:<10}  cold share {s['cold_start_share']:.4f}"
            f"  evictions {s['evictions']:>5}  ({s['real_s']:.1f} s real,"
            f" digest {row.result.digest})",
            flush=True,
        )

    print(f"policy study with seed {args.seed}, scale {args.scale} ...", flush=True)
    rows = run_study(args.seed, args.scale, progress=progress)
    table = format_study(rows)
    print(table)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"policy-study-{args.seed}.md"
        path.write_text(table + "\n")
        print(f"wrote {path}")
    return 0 if all(r.result.ok for r in rows) else 1


def _simulate_cluster_study(args: argparse.Namespace) -> int:
    from simulations.cluster_study import format_study, run_study

    def progress(row) -> None:
        s = row.result.summary
        print(
            f"  N {row.workers:>3}  {row.routing.value:<20}  cold share {s['cold_start_share']:.4f}"
            f"  p99 {s['p99_ms']} ms  disk/worker {s['package_disk_mb_mean']} MB"
            f"  ({s['real_s']:.1f} s real, digest {row.result.digest})",
            flush=True,
        )

    print(f"cluster study with seed {args.seed}, scale {args.scale} ...", flush=True)
    rows = run_study(args.seed, scale=args.scale, progress=progress)
    table = format_study(rows)
    print(table)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"cluster-study-{args.seed}.md"
        path.write_text(table + "\n")
        print(f"wrote {path}")
    return 0 if all(r.result.ok for r in rows) else 1


def _admin_client(worker_dir: Path) -> httpx.Client:
    import httpx

    from .serve import ADMIN_SOCKET

    socket_path = worker_dir / ADMIN_SOCKET
    if not socket_path.exists():
        raise WorkerNotRunning(worker_dir)
    return httpx.Client(
        transport=httpx.HTTPTransport(uds=str(socket_path)),
        base_url="http://olactors-admin",
        timeout=httpx.Timeout(60.0, connect=CONNECT_TIMEOUT_S),
    )


def _admin_request(
    client: httpx.Client, worker_dir: Path, method: str, path: str, **kwargs: Any
) -> httpx.Response:
    import httpx

    try:
        return client.request(method, path, **kwargs)
    except httpx.ConnectError as exc:
        if _caused_by(exc, PermissionError):
            raise OlactorsError(
                f"permission denied on {worker_dir}/admin.sock (run as the worker's user)"
            ) from None
        raise WorkerNotRunning(worker_dir) from None
    except httpx.HTTPError as exc:
        raise OlactorsError(f"admin request {method} {path} failed: {exc}") from None


def _admin_call(
    client: httpx.Client,
    worker_dir: Path,
    method: str,
    path: str,
    ok_statuses: tuple[int, ...] = (200,),
) -> Any:
    response = _admin_request(client, worker_dir, method, path)
    if response.status_code not in ok_statuses:
        raise OlactorsError(f"{method} {path}: {response.status_code} {response.text.strip()}")
    return response.json()


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _print_error(response: httpx.Response) -> None:
    text = response.text.strip()
    print(text or f"HTTP {response.status_code}", file=sys.stderr)


def _cmd_token(args: argparse.Namespace) -> int:
    from .cli_access import token_command

    return token_command(args)


def _cmd_owner(args: argparse.Namespace) -> int:
    from .cli_access import owner_command

    return owner_command(args)


COMMANDS = {
    "init": _cmd_init,
    "serve": _cmd_serve,
    "status": _cmd_status,
    "install": _cmd_install,
    "uninstall": _cmd_uninstall,
    "drain": _cmd_drain,
    "run": _cmd_run,
    "logs": _cmd_logs,
    "why": _cmd_why,
    "secret": cmd_secret,
    "token": _cmd_token,
    "owner": _cmd_owner,
    "lock": _cmd_lock,
    "cleanup": _cmd_cleanup,
    "bench": _cmd_bench,
    "simulate": _cmd_simulate,
    "cluster": _cmd_cluster,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    default_level = logging.INFO if args.command == "serve" else logging.WARNING
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else default_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return COMMANDS[args.command](args)
    except OlactorsError as exc:
        print(f"olactors {args.command}: {exc.message}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"olactors {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.command == "logs":
            return 0  # the way out of --follow
        raise


if __name__ == "__main__":
    sys.exit(main())
