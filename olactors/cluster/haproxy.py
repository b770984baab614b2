"""A complete haproxy.cfg (HAProxy 2.6) for workers behind one balancer.

``render_haproxy_config(HaproxySettings(...))`` returns the text that
``olactors cluster haproxy-config`` writes; ``haproxy -f FILE`` starts from it
as it is.  What it sets up, and why:

* **Routing**: ``balance hash path,field(3,/)`` hashes the function name (the
  ``<name>`` of ``/run/<name>/...``) with ``hash-type consistent`` and
  ``hash-balance-factor`` (consistent hashing with bounded loads: no worker
  takes more than factor% of the average concurrent calls, so a hot function
  spills to the next worker on the ring).  Or ``balance roundrobin``.
* **Stable server ids** derived from each worker's address
  (:func:`~olactors.cluster._address.server_id`): HAProxy places servers on
  the ring by id, so several HAProxy instances, or one that adds a worker at
  run time with the same id, map every function alike.
* **Health checks**: ``GET /healthz`` every ``check_interval_s``, each given
  ``check_timeout_s`` to answer, down after 2 failures (a draining worker
  answers 503 at once), up after 2 successes.
* **Retries only for calls that never ran** (:mod:`olactors._balancer`): every
  request is marked with ``X-Olactors-Balancer``; ``retry-on conn-failure
  503`` with ``option redispatch 1`` sends a refused call (``503
  overloaded``) or a failed connection to another worker (``option
  http-buffer-request``: HAProxy replays only a request it had whole when it
  sent it, so it waits for the body first); a function's own
  503 arrives as 500 + ``X-Olactors-Status: 503`` (not retried) and the
  ``http-response`` rules put the 503 back for the client.  HAProxy buffers a
  request to retry it: a body larger than ``tune.bufsize`` is never retried.
* **Request ids**: a client's valid ``X-Request-Id`` (``[A-Za-z0-9._-]{1,64}``)
  is kept; otherwise HAProxy sets a uuid, which the worker keeps as the call's
  id; the access log shows it.
* **Runtime API**: ``stats socket`` (admin level) at ``runtime_socket`` for
  ``add server`` / ``del server`` (see :func:`add_server_commands`).
* Errors HAProxy answers itself (no worker reachable, a worker that died
  mid-call, a timeout) use the worker's JSON error shape.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from .._balancer import (
    BALANCER_HEADER,
    HELD_STATUS,
    REFUSED_HEADER,
    RETRIED_STATUS,
    STATUS_HEADER,
)
from .._errors import OlactorsError
from ._address import Address, server_ids, server_name

BACKEND = "olactors_workers"
FRONTEND = "olactors"
REQUEST_ID_PATTERN = "^[A-Za-z0-9._-]{1,64}$"
DEFAULT_RUNTIME_SOCKET = Path("/run/olactors-haproxy.sock")

#: HAProxy's own error answers, in the worker's JSON error shape.
HAPROXY_ERRORS = {
    502: ("worker_failed", "the worker closed the connection or answered garbage"),
    503: ("no_worker_available", "no worker could take the call"),
    504: ("worker_timeout", "the worker did not answer in time"),
}


class Balance(Enum):
    HASH = "hash"
    ROUNDROBIN = "roundrobin"


@dataclass(frozen=True, slots=True)
class HaproxySettings:
    bind: Address
    workers: list[Address]
    #: Workers found through DNS (every A record of this name, e.g. a Kubernetes
    #: headless Service), in ``slots`` server-template slots.
    worker_dns: Address | None = None
    slots: int = 16
    balance: Balance = Balance.HASH
    tls_cert: Path | None = None
    runtime_socket: Path = DEFAULT_RUNTIME_SOCKET
    #: ``hash-balance-factor``: a worker takes at most this % of the average load.
    balance_factor: int = 150
    check_interval_s: float = 1.0
    #: How long a health check may take (``timeout check``): a worker busy
    #: starting sandboxes on a loaded machine answers /healthz late, not never.
    check_timeout_s: float = 2.0
    #: Retries of a refused call or failed connection, each on another worker.
    retries: int = 2
    #: Longest a call may take (runtime + queue wait + init, at the worker's maxima).
    server_timeout_s: float = 1200.0
    extra_comment: list[str] = field(default_factory=list)


def _ms(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}"


def _error_line(status: int) -> str:
    code, message = HAPROXY_ERRORS[status]
    body = (
        f'{{"error":"{code}","message":"{message} (from the balancer)",'
        f'"request_id":"%[var(txn.request_id)]"}}'
    )
    return (
        f"    http-error status {status} content-type application/json lf-string '{body}'"
        " hdr X-Request-Id %[var(txn.request_id)]"
    )


def check_settings(settings: HaproxySettings) -> None:
    """Refuse settings HAProxy would reject or that break the contract."""
    if not settings.workers and settings.worker_dns is None:
        raise OlactorsError("at least one --worker HOST:PORT (or --worker-dns NAME:PORT) is needed")
    if settings.worker_dns is not None and not 1 <= settings.slots <= 1024:
        raise OlactorsError("--slots must be in 1..1024")
    if len(set(settings.workers)) != len(settings.workers):
        raise OlactorsError("a worker is listed twice")
    if not 101 <= settings.balance_factor <= 10000:
        raise OlactorsError("the balance factor is a percentage above 100 (e.g. 125 to 200)")
    if settings.retries < 0 or settings.retries > 10:
        raise OlactorsError("retries must be in 0..10")
    if min(settings.check_interval_s, settings.check_timeout_s, settings.server_timeout_s) <= 0:
        raise OlactorsError("intervals and timeouts must be positive")
    check_config_word(str(settings.runtime_socket), "--runtime-socket")
    if settings.tls_cert is not None:
        check_config_word(str(settings.tls_cert), "--tls-cert")


#: What haproxy.cfg reads in an unquoted word as something else: the end of the
#: word or line, a comment, a quote, an escape.
_UNSAFE_IN_WORD = frozenset("\"'\\#")


def check_config_word(text: str, flag: str) -> None:
    """Refuse a path the config would split or cut short (HAProxy would not
    start from it, or read the rest as more configuration)."""
    if not text:
        raise OlactorsError(f"{flag} is empty")
    for c in text:
        if c.isspace() or not c.isprintable() or c in _UNSAFE_IN_WORD:
            raise OlactorsError(f"{flag} {text!r}: haproxy.cfg cannot hold {c!r} in a path")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def server_line(address: Address, server_id: int) -> str:
    """One worker's ``server`` line (the same words ``add server`` takes)."""
    return f"{server_name(address)} {address} id {server_id} check"


def render_haproxy_config(settings: HaproxySettings) -> str:
    check_settings(settings)
    ids = server_ids(settings.workers)
    bind = f"    bind {settings.bind}"
    if settings.tls_cert is not None:
        bind += f" ssl crt {settings.tls_cert}"
    if settings.balance is Balance.HASH:
        balance = [
            "    # The function name: the third field of /run/<name>/... (no name: round robin).",
            "    balance hash path,field(3,/)",
            "    hash-type consistent",
            f"    hash-balance-factor {settings.balance_factor}",
        ]
    else:
        balance = ["    balance roundrobin"]
    inter = _ms(settings.check_interval_s)
    # Workers named by DNS: resolved at start if possible (else the server waits
    # down) and again while running, from the host's resolv.conf.
    named = settings.worker_dns is not None or any(
        not _is_ip(address.host) for address in settings.workers
    )
    resolvers = [
        "resolvers system",
        "    parse-resolv-conf",
        "    hold valid 5s",
        "    hold obsolete 5s",
        "",
    ]
    dns = " init-addr last,libc,none resolvers system" if named else ""
    lines = [
        "# haproxy.cfg for olactors workers, written by `olactors cluster haproxy-config`.",
        "# Start it as it is: haproxy -f THIS_FILE",
        *(f"# {c}" for c in settings.extra_comment),
        "",
        "global",
        "    log stdout format raw local0 info",
        "    maxconn 4096",
        "    # The runtime API: add server / del server / set server (olactors cluster",
        "    # add-worker / remove-worker speak it).",
        f"    stats socket {settings.runtime_socket} mode 600 level admin",
        "    stats timeout 30s",
        "",
        *(resolvers if named else []),
        "defaults",
        "    mode http",
        "    log global",
        "    timeout connect 2s",
        "    timeout client 60s",
        "    timeout http-request 10s",
        f"    timeout server {_ms(settings.server_timeout_s)}ms",
        "    timeout queue 10s",
        f"    timeout check {_ms(settings.check_timeout_s)}ms",
        *(_error_line(status) for status in sorted(HAPROXY_ERRORS)),
        "",
        f"frontend {FRONTEND}",
        bind,
        "    # Keep a client's own valid request id, else make a uuid: the worker keeps",
        "    # X-Request-Id as the call's id, and a retry on another worker sends the same.",
        "    http-request set-var(txn.request_id) req.hdr(X-Request-Id)"
        " if { req.hdr_cnt(X-Request-Id) eq 1 }"
        f" {{ req.hdr(X-Request-Id) -m reg {REQUEST_ID_PATTERN} }}",
        "    http-request set-var(txn.request_id) uuid() unless { var(txn.request_id) -m found }",
        "    http-request set-header X-Request-Id %[var(txn.request_id)]",
        "    unique-id-format %[var(txn.request_id)]",
        "    # The mark that makes workers answer by the retry contract (a client's is replaced).",
        f"    http-request set-header {BALANCER_HEADER} 1",
        "    option forwardfor",
        '    log-format "%ci:%cp [%tr] %ft %b/%s %TR/%Tw/%Tc/%Tr/%Ta %ST %B %tsc'
        ' %ac/%fc/%bc/%sc/%rc %sq/%bq rid=%ID %{+Q}r"',
        f"    default_backend {BACKEND}",
        "",
        f"backend {BACKEND}",
        *balance,
        "    option httpchk",
        "    http-check send meth GET uri /healthz ver HTTP/1.1 hdr Host olactors",
        "    http-check expect status 200",
        f"    default-server inter {inter}ms fastinter {inter}ms downinter {inter}ms"
        f" fall 2 rise 2{dns}",
        "    # Retry only calls that never ran: a failed connection, or a worker's refusal",
        f"    # ({RETRIED_STATUS} overloaded), each time on another worker.",
        f"    retry-on conn-failure {RETRIED_STATUS}",
        f"    retries {settings.retries}",
        "    option redispatch 1",
        "    # Read the whole request (body too) before sending it: HAProxy retries only a",
        "    # request it holds entirely, and a POST whose body came in a later packet was",
        "    # sent on before it arrived, so its refusal reached the client unretried.",
        "    option http-buffer-request",
        "    # A new connection to the worker for every call: a kept-alive one the worker",
        "    # closes as idle (after its 5 s) while HAProxy sends on it loses that call",
        "    # unanswered (a closed connection is not a retryable conn-failure then).",
        "    option http-server-close",
        f"    # A function's own {RETRIED_STATUS} arrives as {HELD_STATUS} + {STATUS_HEADER}"
        " (not retried);",
        "    # these rules run after the retry decision and give the client its status back.",
        f"    http-response set-status {RETRIED_STATUS}"
        f" if {{ status {HELD_STATUS} }} {{ res.hdr({STATUS_HEADER}) -m str {RETRIED_STATUS} }}",
        f"    http-response del-header {STATUS_HEADER}",
        f"    http-response del-header {REFUSED_HEADER}",
        *(f"    server {server_line(address, ids[address])}" for address in settings.workers),
        *_template_lines(settings),
        "",
    ]
    return "\n".join(lines)


def _template_lines(settings: HaproxySettings) -> list[str]:
    dns = settings.worker_dns
    if dns is None:
        return []
    return [
        f"    # Workers from DNS: each A record of {dns.host} fills a slot (w1-w{settings.slots})",
        "    # a slot keeps its address while the name still lists it, so the ring stays put.",
        f"    server-template w 1-{settings.slots} {dns} check resolve-prefer ipv4 init-addr none",
    ]


def add_server_commands(address: Address, server_id: int) -> list[str]:
    """Runtime API commands that add a worker to a running HAProxy (a dynamic
    server starts in maintenance with its checks off)."""
    name = f"{BACKEND}/{server_name(address)}"
    return [
        f"add server {name} {address} id {server_id} check",
        f"enable health {name}",
        f"enable server {name}",
    ]


def remove_server_commands(address: Address) -> list[str]:
    """Runtime API commands that remove a worker: drain it (no new calls), put it
    in maintenance, delete it (refused by HAProxy while it still has connections)."""
    name = f"{BACKEND}/{server_name(address)}"
    return [f"set server {name} state maint", f"del server {name}"]
