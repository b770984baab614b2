"""`olactors` command line: init, cleanup, bench.

Errors a user can cause (bad config, bad path) print one clear line to stderr
and exit with status 2; they never show a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ._errors import OlactorsError
from .worker_dir import DEFAULT_PATH


def _add_path(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--path",
        type=Path,
        default=DEFAULT_PATH,
        help=f"worker directory (default: ./{DEFAULT_PATH})",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one worker.yaml key",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="olactors", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init", help="create a worker directory with documented defaults")
    _add_path(p)

    p = sub.add_parser("cleanup", help="remove what a dead worker left behind (safe to repeat)")
    _add_path(p)

    p = sub.add_parser("bench", help="run a benchmark and print its figures")
    bench = p.add_subparsers(dest="bench", required=True)
    b = bench.add_parser("sandbox", help="sandbox create/fork/pause/unpause/destroy latencies")
    b.add_argument("--samples", type=int, default=60)
    b.add_argument("--json", action="store_true", help="print figures as JSON")
    return parser


def _cmd_init(args: argparse.Namespace) -> int:
    from .worker_dir import init_worker_dir

    init_worker_dir(args.path, args.overrides)
    print(f"initialised worker dir {args.path.resolve()}")
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
    if args.samples < 1:
        raise OlactorsError("--samples must be >= 1")
    from .bench import sandbox

    return sandbox.run(args.samples, args.json, None)


COMMANDS = {"init": _cmd_init, "cleanup": _cmd_cleanup, "bench": _cmd_bench}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
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


if __name__ == "__main__":
    sys.exit(main())
