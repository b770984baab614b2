"""``olactors cluster ...``: configuration for running several workers.

* ``haproxy-config --bind HOST:PORT --worker HOST:PORT ... [--out FILE]
  [--tls-cert FILE] [--balance hash|roundrobin] [--runtime-socket PATH]``
  writes a haproxy.cfg (see :mod:`olactors.cluster.haproxy`).
* ``nginx-config --listen HOST:PORT --root DIR [--allow CIDR ...]
  [--auth-file F] [--out FILE]`` writes the code store's nginx.conf (see
  :mod:`olactors.cluster.nginx`).
* ``add-worker`` / ``remove-worker --runtime-socket PATH HOST:PORT`` change a
  running HAProxy's workers through its runtime API, with the same server
  name and id a generated config gives that worker.

A file is written whole or not at all (a temporary file renamed into place).
"""

from __future__ import annotations

import argparse
import socket
from pathlib import Path

from .._errors import OlactorsError
from .._files import write_atomically
from ._address import parse_address, server_id
from .haproxy import (
    DEFAULT_RUNTIME_SOCKET,
    Balance,
    HaproxySettings,
    add_server_commands,
    remove_server_commands,
    render_haproxy_config,
)
from .nginx import (
    DEFAULT_MAX_UPLOAD_MB,
    LOOPBACK,
    NginxSettings,
    check_paths,
    render_nginx_config,
)

RUNTIME_TIMEOUT_S = 10.0


def add_cluster_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cluster", help="configure HAProxy and the nginx code store for workers")
    cluster = p.add_subparsers(dest="cluster", required=True)

    c = cluster.add_parser("haproxy-config", help="write a haproxy.cfg routing to the workers")
    c.add_argument("--bind", required=True, metavar="HOST:PORT", help="where HAProxy listens")
    c.add_argument(
        "--worker",
        dest="workers",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="a worker's public address (repeat for each)",
    )
    c.add_argument(
        "--worker-dns",
        metavar="NAME:PORT",
        help="find workers through DNS: every A record of NAME (a Kubernetes headless "
        "Service), in --slots server-template slots",
    )
    c.add_argument("--slots", type=int, default=16, help="--worker-dns slots (default 16)")
    c.add_argument("--out", type=Path, help="write here (default: standard output)")
    c.add_argument("--tls-cert", type=Path, metavar="FILE", help="terminate TLS (PEM cert+key)")
    c.add_argument(
        "--balance",
        choices=[b.value for b in Balance],
        default=Balance.HASH.value,
        help="consistent hashing on the function name (default) or round robin",
    )
    c.add_argument(
        "--balance-factor",
        type=int,
        default=150,
        help="hash-balance-factor: most load a worker takes, %% of the average (default 150)",
    )
    c.add_argument(
        "--runtime-socket",
        type=Path,
        default=DEFAULT_RUNTIME_SOCKET,
        help=f"HAProxy's runtime API socket (default {DEFAULT_RUNTIME_SOCKET})",
    )
    c.add_argument(
        "--check-interval", type=float, default=1.0, help="health check interval, s (default 1)"
    )
    c.add_argument("--retries", type=int, default=2, help="retries of refused calls (default 2)")

    c = cluster.add_parser("nginx-config", help="write an nginx.conf serving the code store")
    c.add_argument("--listen", required=True, metavar="HOST:PORT")
    c.add_argument("--root", required=True, type=Path, help="directory holding <name>.tar.gz")
    c.add_argument(
        "--allow",
        action="append",
        metavar="CIDR",
        help=f"address(es) allowed to PUT/DELETE (default: {' '.join(LOOPBACK)})",
    )
    c.add_argument("--auth-file", type=Path, help="htpasswd file: PUT/DELETE need basic auth")
    c.add_argument(
        "--max-upload-mb",
        type=int,
        default=DEFAULT_MAX_UPLOAD_MB,
        help=f"largest archive accepted (default {DEFAULT_MAX_UPLOAD_MB})",
    )
    c.add_argument("--user", help="user nginx's workers run as (default: the owner of --root)")
    c.add_argument(
        "--no-path-check",
        action="store_true",
        help="do not check that --root and --auth-file exist here (a config for elsewhere)",
    )
    c.add_argument("--out", type=Path, help="write here (default: standard output)")

    for verb, text in (("add-worker", "add"), ("remove-worker", "remove")):
        c = cluster.add_parser(verb, help=f"{text} a worker in a running HAProxy (runtime API)")
        c.add_argument("worker", metavar="HOST:PORT")
        c.add_argument("--runtime-socket", type=Path, default=DEFAULT_RUNTIME_SOCKET)


def run_cluster(args: argparse.Namespace) -> int:
    if args.cluster == "haproxy-config":
        settings = HaproxySettings(
            bind=parse_address(args.bind, "--bind"),
            workers=[parse_address(w, "--worker") for w in args.workers],
            worker_dns=None
            if args.worker_dns is None
            else parse_address(args.worker_dns, "--worker-dns"),
            slots=args.slots,
            balance=Balance(args.balance),
            tls_cert=_existing_file(args.tls_cert, "--tls-cert"),
            runtime_socket=args.runtime_socket,
            balance_factor=args.balance_factor,
            check_interval_s=args.check_interval,
            retries=args.retries,
        )
        _emit(render_haproxy_config(settings), args.out)
        return 0
    if args.cluster == "nginx-config":
        nginx = NginxSettings(
            listen=parse_address(args.listen, "--listen"),
            root=args.root if args.no_path_check else args.root.resolve(),
            allow=args.allow or list(LOOPBACK),
            auth_file=args.auth_file
            if args.no_path_check or args.auth_file is None
            else args.auth_file.resolve(),
            max_upload_mb=args.max_upload_mb,
            user=args.user,
        )
        if not args.no_path_check:
            check_paths(nginx)
        elif args.user is None:
            raise OlactorsError("--no-path-check needs --user (the root is not here to ask)")
        _emit(render_nginx_config(nginx), args.out)
        return 0
    address = parse_address(args.worker, "worker")
    if args.cluster == "add-worker":
        commands = add_server_commands(address, server_id(address))
    else:
        commands = remove_server_commands(address)
    for command in commands:
        answer = runtime_command(args.runtime_socket, command)
        if answer:
            print(answer)
    return 0


def _existing_file(path: Path | None, flag: str) -> Path | None:
    if path is not None and not path.is_file():
        raise OlactorsError(f"{flag} {path} is not a file")
    return None if path is None else path.resolve()


def _emit(text: str, out: Path | None) -> None:
    if out is None:
        print(text, end="")
        return
    out = out.resolve()
    try:
        write_atomically(out, text.encode(), mode=0o644)
    except OSError as exc:
        raise OlactorsError(f"--out {out}: {exc.strerror} ({out.parent})") from None
    print(f"wrote {out}")


#: What HAProxy's runtime API answers when each command we send succeeds (it has
#: no status codes: any other answer is its error message).
_SUCCESS = {
    "add server": "New server registered.",
    "del server": "Server deleted.",
    "enable health": "",
    "enable server": "",
    "set server": "",
}


def runtime_command(socket_path: Path, command: str) -> str:
    """Send one command (one of :data:`_SUCCESS`'s) to HAProxy's runtime API;
    its answer.  Any answer but the command's success raises OlactorsError."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(RUNTIME_TIMEOUT_S)
            sock.connect(str(socket_path))
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    except OSError as exc:
        raise OlactorsError(f"HAProxy runtime API at {socket_path}: {exc}") from None
    answer = b"".join(chunks).decode(errors="replace").strip()
    verb = " ".join(command.split()[:2])
    if answer != _SUCCESS[verb]:
        raise OlactorsError(f"HAProxy refused {command!r}: {answer}")
    return answer
