"""The Python worker: runs an app's tasks for an LQSM server.

    lqsm-py worker -A proj.tasks:app --pool processes --concurrency 4
    python -m lqsm worker -A proj.tasks:app

It registers the app's task names as the handlers it serves, and speaks the poll
protocol of docs/PROTOCOL.md. SIGTERM or Ctrl-C drains (no new tasks; running ones
finish); a second one stops them.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import Dict, List, Optional

from ..arguments import memory_mib as parse_memory
from . import _execution
from .._server import tls_context
from ._agent import Agent, Fatal, default_name, memory_mib
from ._loading import AppNotFound, load_app
from ._pools import make_pool

__all__ = ["main", "run_worker"]


def _pair(text: str) -> "tuple[str, str]":
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"`{text}` is not KEY=VALUE")
    return key, value


def _memory(text: str) -> int:
    try:
        return parse_memory(text if not text.isdigit() else int(text))
    except (TypeError, ValueError) as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lqsm-py", description="LQSM's Python worker")
    commands = parser.add_subparsers(dest="command", required=True)
    worker = commands.add_parser("worker", help="run an app's tasks for an LQSM server")
    worker.add_argument("-A", "--app", required=True, help="the app, as MODULE:ATTRIBUTE (e.g. proj.tasks:app)")
    worker.add_argument(
        "--server",
        action="append",
        help="a server's URL (repeatable: the worker moves to the next one when one cannot be reached) "
        "[default: $LQSM_SERVER (comma-separated), else the app's URLs]",
    )
    worker.add_argument("--token", help="a token of role worker [default: $LQSM_TOKEN]")
    worker.add_argument("--token-file", help="read the token from this file")
    worker.add_argument(
        "--ca-file",
        default=os.environ.get("LQSM_CA_FILE"),
        help="PEM CA certificates trusted for https:// servers besides the system's [default: $LQSM_CA_FILE]",
    )
    worker.add_argument("--pool", default="threads", choices=["threads", "processes", "asyncio"])
    worker.add_argument(
        "-c", "--concurrency", type=int, default=None, help="tasks at once [default: the cpus, 100 for asyncio]"
    )
    worker.add_argument("-n", "--name", default=None, help="the worker's name [default: lqsm-py-PID]")
    worker.add_argument("--cpus", type=float, default=None, help="cpu cores offered [default: this machine's]")
    worker.add_argument("--memory", type=_memory, default=None, help="memory offered, e.g. 4G [default: this machine's]")
    worker.add_argument("--label", action="append", type=_pair, default=[], help="KEY=VALUE jobs select on (repeatable)")
    worker.add_argument(
        "-Q",
        "--queues",
        default="",
        help="run only the jobs of these queues and those under them, comma-separated, "
        "e.g. root.emails,root.reports [default: every queue]",
    )
    worker.add_argument("--max-tasks-per-child", type=int, default=0, help="processes pool: replace a child after N tasks")
    worker.add_argument(
        "--max-memory-per-child", type=int, default=0, help="processes pool: replace a child whose peak memory passed N KiB"
    )
    worker.add_argument(
        "--stop-grace", type=float, default=10.0, help="seconds a stopped task has to end before it is killed"
    )
    worker.add_argument("--poll-wait", type=float, default=2.0, help="longest wait of one poll, seconds")
    worker.add_argument("-l", "--loglevel", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    return parser


def run_worker(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.loglevel).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # One line per HTTP request is noise at INFO: the worker logs what matters itself.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        app = load_app(args.app)
    except AppNotFound as e:
        print(f"lqsm-py: {e}", file=sys.stderr)
        return 2
    if not app.tasks:
        print(f"lqsm-py: {args.app} declares no tasks: nothing to serve", file=sys.stderr)
        return 2
    token = args.token or os.environ.get("LQSM_TOKEN")
    if args.token_file:
        with open(args.token_file) as f:
            token = f.read().strip()
    urls = args.server or (
        [u for u in os.environ["LQSM_SERVER"].split(",") if u] if os.environ.get("LQSM_SERVER") else app._server.urls
    )
    concurrency = args.concurrency or (100 if args.pool == "asyncio" else os.cpu_count() or 1)
    if concurrency < 1:
        print("lqsm-py: --concurrency takes 1 or more", file=sys.stderr)
        return 2
    pool = make_pool(
        args.pool, concurrency, args.stop_grace, args.app, args.max_tasks_per_child, args.max_memory_per_child
    )
    if args.pool != "processes":
        # Tasks run in this process: what they print and log goes to their results.
        _execution.install_capture()
    labels: Dict[str, str] = dict(args.label)
    try:
        tls_context(args.ca_file)
    except ValueError as e:
        print(f"lqsm-py: --ca-file: {e}", file=sys.stderr)
        return 2
    agent = Agent(
        app.tasks,
        pool,
        urls,
        token,
        args.name or default_name(),
        args.cpus if args.cpus is not None else float(os.cpu_count() or 1),
        args.memory if args.memory is not None else memory_mib(),
        labels,
        queues=[q.strip() for q in args.queues.split(",") if q.strip()],
        ca_file=args.ca_file,
        poll_wait=args.poll_wait,
    )
    logging.getLogger("lqsm.worker").info(
        "serving %d tasks of %s with %d %s; server %s",
        len(app.tasks),
        args.app,
        concurrency,
        pool.name,
        ", ".join(urls),
    )
    try:
        asyncio.run(agent.run())
    except Fatal as e:
        logging.getLogger("lqsm.worker").error("%s", e)
        return 1
    logging.getLogger("lqsm.worker").info("stopped: %s", dict(agent.summary))
    return 0


def main() -> None:
    sys.exit(run_worker())
