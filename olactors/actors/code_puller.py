"""The CodePuller actor: a function's code, as an immutable snapshot.

``pull(name)`` answers a :class:`FunctionCode` whose ``code_dir``
(``<worker>/run/code/<name>/<version>/``) never changes while it exists.
The registry (``registry.location``: "" = ``<worker>/registry``, a directory
path (relative to the worker dir, as :func:`olactors.registry.registry_path`
decides for the admin uploads too), or an ``http(s)://`` base URL serving
``<base>/<name>.tar.gz``) is checked for a name at most once per
``registry.cache_s``; within that window a pull answers the last outcome
(the code, or the error) with no I/O. A check compares the registry's state
with the last one seen: a directory's fingerprint, an archive's
(size, mtime_ns, inode) and then its sha256, an HTTP conditional GET
(``If-None-Match`` / ``If-Modified-Since``; not after an answer whose
``Date`` was within its ``Last-Modified`` second, see :func:`_http_token`).
Content that changed is
snapshotted (copied or safely unpacked, in a thread) into a hidden
temporary directory, validated and renamed into place, so a half-made
snapshot is never visible. The puller never writes to the registry.

Versions are content digests: 16 hex digits of a directory fingerprint, of
an archive's sha256, or of an HTTP body's sha256.

Errors: :class:`FunctionNotFound` (no such function), :class:`BadFunction`
(500: the new code is broken; earlier snapshots stay), and
:class:`RegistryUnavailable` (502), except that when the registry cannot be
read and a version is cached, that version is served and a warning logged.
While the registry cannot be read, a function that stops (``forget``) keeps
its last good version, so it is still served when the function is called
again during the outage.  :meth:`CodePullerRef.registry_health` says when
the registry last answered (``/stats`` ``registry``).

Snapshots are deleted only by ``release`` (an old version no instance uses;
the current version is never deleted) and ``forget`` (the function stopped),
and all of ``run/code`` at start and exit. Work for one name (checks,
releases, forgets) runs in order in a task of its own, so names never wait
for each other; concurrent pulls of one name share one check.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import shutil
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, BinaryIO, Protocol
from urllib.parse import urlsplit, urlunsplit

import httpx
import trio

from .._config import Config
from .._errors import (
    BadFunction,
    FunctionNotFound,
    OlactorsError,
    RegistryUnavailable,
)
from .._function_config import FunctionConfig
from .._names import validate_function_name
from ..registry import (
    LocalRegistry,
    fingerprint_dir,
    registry_path,
    safe_unpack,
    snapshot_dir,
    validate_function_dir,
)
from ._calls import ActorGone, Reply, ask

log = logging.getLogger("olactors.code")

#: An HTTP answer larger than this many times the code limit (plus slack for
#: tar headers) cannot unpack under the limit; it is refused while reading.
_HTTP_BODY_FACTOR = 2
_HTTP_BODY_SLACK = 16 << 20
_PRUNE_MIN = 256


@dataclass(frozen=True, slots=True)
class FunctionCode:
    """One version of a function's code: ``code_dir`` is an immutable snapshot."""

    name: str
    version: str
    code_dir: Path
    config: FunctionConfig


@dataclass(frozen=True, slots=True)
class RegistryHealth:
    """When the registry last answered a check, in trio time (None: never yet),
    and whether the latest check found it unreachable (then ``failing_since``
    and ``last_error`` say since when and why)."""

    last_ok: float | None
    failing_since: float | None
    failures: int
    last_error: str | None


# ------------------------------------------------------------------ messages
NOT_RUNNING = "code puller is not running"


@dataclass(frozen=True, slots=True)
class PullCode:
    name: str
    reply: Reply[Any]


@dataclass(frozen=True, slots=True)
class ForgetFunction:
    name: str
    reply: Reply[Any]


@dataclass(frozen=True, slots=True)
class ReleaseVersion:
    name: str
    version: str
    reply: Reply[Any]


CodePullerMessage = PullCode | ForgetFunction | ReleaseVersion


class CodePullerRef:
    """The handle of a running code puller. Every method raises
    :class:`OlactorsError` ("code puller is not running") if the actor is
    gone, never hangs; cancelling a call is safe."""

    def __init__(
        self, inbox: trio.MemorySendChannel[CodePullerMessage], puller: _CodePuller
    ) -> None:
        self._inbox = inbox
        self._puller = puller

    async def pull(self, name: str) -> FunctionCode:
        """The current code of ``name`` (see the module docstring for errors)."""
        code, _ = await self.pull_until(name)
        return code

    async def pull_until(self, name: str) -> tuple[FunctionCode, float]:
        """Like :meth:`pull`, with the trio time until which this answer stands:
        the registry is not checked again before it (``registry.cache_s``
        after the check behind the answer), so a caller may reuse the code
        until then without asking."""
        validate_function_name(name)
        code, until = await self._call(PullCode(name, Reply()))
        return code, until

    async def forget(self, name: str) -> None:
        """The function stopped: drop all state for ``name`` and delete its
        snapshots. Pulls issued earlier still get their answer first."""
        validate_function_name(name)
        await self._call(ForgetFunction(name, Reply()))

    async def release(self, name: str, version: str) -> None:
        """No instance uses ``version`` any more: delete its snapshot (a no-op
        for the current version or an unknown one)."""
        validate_function_name(name)
        await self._call(ReleaseVersion(name, version, Reply()))

    def cached_names(self) -> int:
        """How many names have a current version cached."""
        return self._puller.cached_names()

    def registry_health(self) -> RegistryHealth:
        """When the registry last answered, and whether it fails now (a read of
        the actor's state: no message)."""
        return self._puller.health()

    async def _call(self, message: CodePullerMessage) -> Any:
        try:
            return await ask(self._inbox, message)
        except ActorGone:
            raise ActorGone(NOT_RUNNING) from None


# ------------------------------------------------------------------ state
@dataclass(frozen=True, slots=True)
class CheckResult:
    """One observed state of a function in the registry."""

    token: tuple  # what identifies that state at the source (compared, not interpreted)
    version: str
    config: FunctionConfig | None = None
    error: BadFunction | None = None


@dataclass(frozen=True, slots=True)
class Known:
    """What a check may rely on (a copy: checks run outside the actor's loop)."""

    current: FunctionCode | None
    seen: CheckResult | None
    versions: frozenset[str]


@dataclass(slots=True)
class _Check:
    epoch: int
    waiters: list[Reply] = field(default_factory=list)


@dataclass(slots=True)
class _Release:
    version: str
    reply: Reply[Any]


@dataclass(slots=True)
class _Forget:
    reply: Reply[Any]


@dataclass(slots=True)
class _Entry:
    current: FunctionCode | None = None  # newest good version (its snapshot is kept)
    seen: CheckResult | None = None  # last registry state observed
    versions: set[str] = field(default_factory=set)  # snapshots on disk
    outcome: FunctionCode | OlactorsError | None = None  # what pulls get in the window
    checked_at: float = 0.0
    jobs: deque[_Check | _Release | _Forget] = field(default_factory=deque)
    running: bool = False
    joinable: _Check | None = None  # the check new pulls wait on
    epoch: int = 0  # bumped by forget: older checks no longer update the cache

    def idle(self) -> bool:
        return not self.jobs and self.current is None and not self.versions


class CodeSource(Protocol):
    """Where code comes from: the registry (a directory or HTTP) or, in
    simulations, an in-memory stand-in.  ``check`` may raise
    FunctionNotFound or RegistryUnavailable; ``discard`` deletes a snapshot
    (``version`` None: every snapshot of ``name``)."""

    async def check(self, name: str, known: Known) -> CheckResult: ...

    async def discard(self, name: str, version: str | None) -> None: ...


# ------------------------------------------------------------------ actor
async def run_code_puller(
    config: Config,
    worker_dir: Path,
    *,
    source: CodeSource | None = None,
    task_status=trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the code puller until cancelled; ``nursery.start`` returns its
    :class:`CodePullerRef`. With the registry as source (``source`` None),
    ``<worker_dir>/run/code`` is emptied at start and removed on exit;
    callers still waiting then get an error."""
    code_root = worker_dir / "run" / "code"
    send, receive = trio.open_memory_channel[CodePullerMessage](0)
    puller: _CodePuller | None = None
    opened = nullcontext(source) if source is not None else _open_source(config, worker_dir)
    try:
        async with opened as code_source:
            async with trio.open_nursery() as nursery:
                puller = _CodePuller(config, code_root, code_source, nursery)
                with receive:
                    task_status.started(CodePullerRef(send, puller))
                    async for message in receive:
                        puller.handle(message)
                nursery.cancel_scope.cancel()
    finally:
        if puller is not None:
            puller.close()


class _CodePuller:
    """The actor's state. ``handle`` runs in the actor's loop and never waits;
    per-name work runs in ``_work`` tasks in the actor's nursery."""

    def __init__(
        self, config: Config, code_root: Path, source: CodeSource, nursery: trio.Nursery
    ) -> None:
        self._cache_s = config.registry.cache_s
        self._code_root = code_root
        self._source = source
        self._nursery = nursery
        self._entries: dict[str, _Entry] = {}
        self._prune_at = _PRUNE_MIN
        self._last_ok: float | None = None
        self._failing_since: float | None = None
        self._failures = 0
        self._last_error: str | None = None

    def health(self) -> RegistryHealth:
        return RegistryHealth(self._last_ok, self._failing_since, self._failures, self._last_error)

    def _registry_answered(self, ok: bool, error: str | None = None) -> None:
        now = trio.current_time()
        if ok:
            self._last_ok = now
            self._failing_since = None
            self._last_error = None
            return
        self._failures += 1
        self._last_error = error
        if self._failing_since is None:
            self._failing_since = now

    def cached_names(self) -> int:
        return sum(1 for entry in self._entries.values() if entry.current is not None)

    def handle(self, message: CodePullerMessage) -> None:
        entry = self._entries.get(message.name)
        if entry is None:
            self._maybe_prune()
            entry = self._entries[message.name] = _Entry()
        if isinstance(message, PullCode):
            now = trio.current_time()
            until = entry.checked_at + self._cache_s
            if entry.outcome is not None and now < until:
                _reply(message.reply, entry.outcome, until)
                return
            if entry.joinable is None:
                entry.joinable = _Check(entry.epoch)
                self._enqueue(message.name, entry, entry.joinable)
            entry.joinable.waiters.append(message.reply)
        elif isinstance(message, ReleaseVersion):
            self._enqueue(message.name, entry, _Release(message.version, message.reply))
        elif self._failing_since is not None and entry.current is not None:
            # The registry is unreachable: keep the last good version, to serve
            # it should the function be called again before the registry is back.
            message.reply.send(None)
        else:
            entry.epoch += 1
            entry.outcome = None
            entry.joinable = None
            self._enqueue(message.name, entry, _Forget(message.reply))

    def close(self) -> None:
        """The actor is ending: every caller still waiting gets an error."""
        for entry in self._entries.values():
            for job in entry.jobs:
                for reply in job.waiters if isinstance(job, _Check) else [job.reply]:
                    reply.close(NOT_RUNNING)
        self._entries.clear()

    def _enqueue(self, name: str, entry: _Entry, job: _Check | _Release | _Forget) -> None:
        entry.jobs.append(job)
        if not entry.running:
            entry.running = True
            self._nursery.start_soon(self._work, name, entry)

    def _maybe_prune(self) -> None:
        """Drop entries holding only an expired error (names looked up and not
        found, say), once the table has doubled since the last prune."""
        if len(self._entries) < self._prune_at:
            return
        now = trio.current_time()
        for name, entry in list(self._entries.items()):
            if entry.idle() and now >= entry.checked_at + self._cache_s:
                del self._entries[name]
        self._prune_at = max(_PRUNE_MIN, 2 * len(self._entries))

    async def _work(self, name: str, entry: _Entry) -> None:
        try:
            while entry.jobs:
                job = entry.jobs[0]
                if isinstance(job, _Check):
                    await self._check(name, entry, job)
                elif isinstance(job, _Release):
                    await self._release(name, entry, job)
                else:
                    await self._forget(name, entry, job)
                entry.jobs.popleft()
        finally:
            entry.running = False
        if entry.idle() and entry.outcome is None and self._entries.get(name) is entry:
            del self._entries[name]

    async def _check(self, name: str, entry: _Entry, job: _Check) -> None:
        known = Known(entry.current, entry.seen, frozenset(entry.versions))
        result: CheckResult | None = None
        try:
            result = await self._source.check(name, known)
            # A check finishing while the actor stops must not hand out a snapshot
            # that is about to be deleted: waiters get the shutdown error instead.
            await trio.lowlevel.checkpoint_if_cancelled()
        except OlactorsError as exc:
            failure = exc
        if result is not None or isinstance(failure, FunctionNotFound):
            self._registry_answered(True)
        elif isinstance(failure, RegistryUnavailable):
            self._registry_answered(False, failure.message)
        stale = job.epoch != entry.epoch  # a forget was queued while checking
        outcome: FunctionCode | OlactorsError
        if result is not None:
            outcome = self._accept(name, entry, result, stale)
        elif isinstance(failure, RegistryUnavailable) and entry.current is not None and not stale:
            log.warning("%s; serving cached version %s", failure.message, entry.current.version)
            outcome = entry.current
        else:
            outcome = failure
        now = trio.current_time()
        if not stale:
            entry.outcome = outcome
            entry.checked_at = now
        until = now + self._cache_s if not stale else now
        if entry.joinable is job:
            entry.joinable = None
        for reply in job.waiters:
            _reply(reply, outcome, until)
        job.waiters.clear()

    def _accept(
        self, name: str, entry: _Entry, result: CheckResult, stale: bool
    ) -> FunctionCode | BadFunction:
        if not stale:
            entry.seen = result
        if result.error is not None:
            log.warning("%s", result.error.message)
            return result.error
        current = entry.current
        if current is not None and current.version == result.version:
            return current
        assert result.config is not None
        code = FunctionCode(
            name, result.version, self._code_root / name / result.version, result.config
        )
        if not stale:
            entry.current = code
            entry.versions.add(result.version)
        return code

    async def _release(self, name: str, entry: _Entry, job: _Release) -> None:
        current = entry.current
        keep = current is not None and current.version == job.version
        if job.version in entry.versions and not keep:
            await self._source.discard(name, job.version)
            entry.versions.discard(job.version)
        _reply(job.reply, None)

    async def _forget(self, name: str, entry: _Entry, job: _Forget) -> None:
        await self._source.discard(name, None)
        entry.current = None
        entry.seen = None
        entry.versions.clear()
        _reply(job.reply, None)


def _reply(reply: Reply[Any], value: Any, until: float | None = None) -> None:
    """Answer with ``value`` (a pull: with ``until``), or raise it at the
    caller if it is an error (a cached error is raised afresh each time: no
    traceback carried over)."""
    if isinstance(value, BaseException):
        reply.fail(value.with_traceback(None))
    else:
        reply.send(value if until is None else (value, until))


def _reset_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o755)


# ------------------------------------------------------------------ sources
@asynccontextmanager
async def _open_source(config: Config, worker_dir: Path) -> AsyncIterator[CodeSource]:
    """The registry as a source; snapshots live in ``<worker_dir>/run/code``,
    emptied now and removed on exit."""
    code_root = worker_dir / "run" / "code"
    await trio.to_thread.run_sync(_reset_dir, code_root)
    try:
        location = config.registry.location
        max_bytes = config.registry.max_code_mb << 20
        path = registry_path(location, worker_dir)
        if path is None:
            async with httpx.AsyncClient(timeout=config.registry.timeout_s) as client:
                yield _HttpSource(client, location.rstrip("/"), code_root, max_bytes)
        else:
            yield _LocalSource(LocalRegistry(path, max_bytes), code_root)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(shutil.rmtree, code_root, True)


class _Snapshots:
    """Deleting snapshots under ``code_root`` (in a thread)."""

    _code_root: Path

    async def discard(self, name: str, version: str | None) -> None:
        path = self._code_root / name
        await trio.to_thread.run_sync(
            shutil.rmtree, path if version is None else path / version, True
        )


class _LocalSource(_Snapshots):
    def __init__(self, registry: LocalRegistry, code_root: Path) -> None:
        self._registry = registry
        self._code_root = code_root

    async def check(self, name: str, known: Known) -> CheckResult:
        return await trio.to_thread.run_sync(self._check_sync, name, known)

    def _check_sync(self, name: str, known: Known) -> CheckResult:
        registry = self._registry
        try:
            found = registry.find(name)
            if found is None:
                raise FunctionNotFound(f"no function {name!r} in the registry")
            kind, path = found
            if kind == "dir":
                version = fingerprint_dir(path)
                return _materialize(
                    self._code_root,
                    name,
                    ("dir", version),
                    version,
                    known,
                    lambda tmp: snapshot_dir(path, tmp, registry.max_bytes),
                )
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                token = ("archive", st.st_size, st.st_mtime_ns, st.st_ino)
                if known.seen is not None and known.seen.token == token:
                    version = known.seen.version
                else:
                    version = _sha256_file(f)
                return _materialize(
                    self._code_root,
                    name,
                    token,
                    version,
                    known,
                    lambda tmp: safe_unpack(f, tmp, registry.max_bytes),
                )
        except OSError as exc:
            raise RegistryUnavailable(
                f"cannot read function {name!r} from the registry {registry.path}: {exc}"
            ) from None


class _HttpSource(_Snapshots):
    def __init__(
        self, client: httpx.AsyncClient, base: str, code_root: Path, max_bytes: int
    ) -> None:
        self._client = client
        self._base = base
        # What messages name: the URL without a user:password in it (a 404's
        # message reaches any caller of the public port).
        parts = urlsplit(base)
        self._shown_base = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
        self._code_root = code_root
        self._max_bytes = max_bytes
        self._max_body = _HTTP_BODY_FACTOR * max_bytes + _HTTP_BODY_SLACK

    async def check(self, name: str, known: Known) -> CheckResult:
        url = f"{self._base}/{name}.tar.gz"
        shown = f"{self._shown_base}/{name}.tar.gz"
        seen = known.seen
        headers = {}
        if seen is not None and seen.token[0] == "http":
            _, etag, last_modified = seen.token
            if etag:
                headers["If-None-Match"] = etag
            if last_modified:
                headers["If-Modified-Since"] = last_modified
        try:
            async with self._client.stream("GET", url, headers=headers) as response:
                status = response.status_code
                if status == 304 and headers and seen is not None:
                    return seen
                if status == 404:
                    raise FunctionNotFound(f"no function {name!r} in the registry ({shown})")
                if status != 200:
                    raise RegistryUnavailable(f"registry answered HTTP {status} for {shown}")
                body = await self._read_body(response, name, shown)
                token = _http_token(response.headers)
        except httpx.HTTPError as exc:
            detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise RegistryUnavailable(f"registry unreachable at {shown}: {detail}") from None
        version = hashlib.sha256(body).hexdigest()[:16]
        return await trio.to_thread.run_sync(
            _materialize,
            self._code_root,
            name,
            token,
            version,
            known,
            lambda tmp: safe_unpack(body, tmp, self._max_bytes),
        )

    async def _read_body(self, response: httpx.Response, name: str, url: str) -> bytes:
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > self._max_body:
                raise BadFunction(
                    f"function {name!r}: the registry's archive at {url} is larger than "
                    f"{self._max_body} bytes, too large to unpack under registry.max_code_mb"
                )
            chunks.append(chunk)
        return b"".join(chunks)


def _http_token(headers: httpx.Headers) -> tuple[str, str | None, str | None]:
    """The validators to send next time, or none when they cannot be trusted.

    Servers such as nginx derive the ETag from the file's mtime in whole
    seconds and its size, so a second upload of the same size within the
    second the file was read in keeps the ETag and Last-Modified, and a
    conditional GET would answer 304 for new code. A response whose ``Date``
    is not later than its ``Last-Modified`` is such a "racily clean" read (as
    git calls it): its validators are dropped, so the next check fetches the
    body and compares its digest. Once the server's clock has passed the
    file's second, later changes show in the validators.
    """
    etag = headers.get("etag")
    last_modified = headers.get("last-modified")
    if last_modified is not None:
        modified = _http_date(last_modified)
        served = _http_date(headers.get("date"))
        if modified is None or served is None or served <= modified:
            return ("http", None, None)
    return ("http", etag, last_modified)


def _http_date(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _sha256_file(f: BinaryIO) -> str:
    digest = hashlib.sha256()
    while chunk := f.read(1 << 16):
        digest.update(chunk)
    f.seek(0)
    return digest.hexdigest()[:16]


def _materialize(
    code_root: Path,
    name: str,
    token: tuple,
    version: str,
    known: Known,
    make: Callable[[Path], None],
) -> CheckResult:
    """The result for ``version``: reuse what is known, else snapshot it with
    ``make`` into a hidden directory, validate, rename into place (runs in a
    thread). A broken version gives a result carrying its error."""
    current, seen = known.current, known.seen
    if current is not None and version == current.version:
        return CheckResult(token, version, current.config)
    if seen is not None and seen.error is not None and version == seen.version:
        return CheckResult(token, version, error=seen.error)
    target = code_root / name / version
    if version in known.versions:
        return CheckResult(token, version, validate_function_dir(target))
    temp = code_root / name / f".tmp-{version}-{secrets.token_hex(4)}"
    try:
        temp.mkdir(parents=True)
        os.chmod(temp.parent, 0o755)
        os.chmod(temp, 0o755)
        make(temp)
        config = validate_function_dir(temp)
        if target.exists():
            shutil.rmtree(target)
        os.rename(temp, target)
    except BadFunction as exc:
        error = BadFunction(f"function {name!r} in the registry is broken: {exc.message}")
        return CheckResult(token, version, error=error)
    except OSError as exc:
        raise OlactorsError(f"cannot make a snapshot of function {name!r}: {exc}") from None
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return CheckResult(token, version, config)
