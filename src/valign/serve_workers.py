"""`valign serve --workers N`: N processes serving one model on one port.

The parent binds the socket once and starts N workers (the ``spawn`` start method: torch
and a loaded model do not survive ``fork``); each worker loads its own copy of the model
and runs `valign.serve.serve` on the shared socket, so the kernel spreads connections
between them. Everything a worker limits — its queue, the per-client count, the memory
bound — holds per worker; the feedback store is a database, shared by all.

The parent only supervises: a worker that dies is replaced; SIGTERM or SIGINT is passed
on to every worker, each answers its open requests 503 and exits within
``shutdown_seconds``, and whatever is still alive then is killed. Like a single server,
the parent ends by re-raising SIGTERM, so a supervisor above sees it stopped by it.

Example::

    serve_workers(valign.serve.serve, 2, "127.0.0.1", 8000, {"spec": "embedded"}, shutdown_seconds=10)
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from typing import Any, Callable

__all__ = ["serve_workers", "bind_socket"]

log = logging.getLogger("valign.serve")

RESTART_CHECK_SECONDS = 0.5  # how often the parent looks for a dead worker


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` that child processes can inherit.

    Example:
        >>> s = bind_socket("127.0.0.1", 0); s.getsockname()[0]
        '127.0.0.1'
        >>> s.close()
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _worker(serve: Callable[..., None], serve_kwargs: dict[str, Any], sock: socket.socket) -> None:
    serve(**serve_kwargs, sockets=[sock])


def serve_workers(serve: Callable[..., None], workers: int, host: str, port: int, serve_kwargs: dict[str, Any], *, shutdown_seconds: float) -> None:
    """Runs ``workers`` processes, each calling ``serve(**serve_kwargs, sockets=[the
    shared socket])`` (`valign.serve.serve`; passed in, and pickled by name into each
    worker), until SIGTERM or SIGINT; see the module's docstring."""
    sock = bind_socket(host, port)
    context = multiprocessing.get_context("spawn")

    def start() -> multiprocessing.process.BaseProcess:
        process = context.Process(target=_worker, args=(serve, serve_kwargs, sock), name="valign-serve-worker")
        process.start()
        return process

    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        received.append(signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    processes = [start() for _ in range(workers)]
    log.warning("valign serve: %d workers on http://%s:%d (pids %s)", workers, host, port, ", ".join(str(p.pid) for p in processes))
    while not stop.wait(RESTART_CHECK_SECONDS):
        for i, process in enumerate(processes):
            if not process.is_alive():
                log.warning("valign serve: worker %s exited (code %s); starting another", process.pid, process.exitcode)
                processes[i] = start()

    signum = received[0] if received else signal.SIGTERM
    for process in processes:
        if process.is_alive() and process.pid is not None:
            os.kill(process.pid, signum)
    deadline = time.monotonic() + shutdown_seconds
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.is_alive():
            log.warning("valign serve: worker %s did not stop within %.0f s; killing it", process.pid, shutdown_seconds)
            process.kill()
            process.join(5)
    sock.close()
    if signum == signal.SIGTERM:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
