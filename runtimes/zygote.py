"""Starts worker processes by forking a zygote: a small process forked before the gateway has threads.

A worker started as ``python -m runtimes.worker`` is a fresh interpreter. It imports numpy and
onnxruntime again, and it lives at other virtual addresses than the gateway, so each switch between
the two finds the branch predictors trained on the other process's layout. A worker forked from the
zygote has its imports done and shares the gateway's layout for everything loaded before the zygote
was forked, the interpreter above all. ``docs/architecture.md`` has the measurements.

The zygote is forked first thing, while the process has one thread, because forking a process that
runs gRPC's threads is unsafe. It then only does three things: it forks a worker for each request
(receiving the worker's sockets with SCM_RIGHTS), it reaps workers, and it reports each exit status
back, because only a parent can learn how its child ended. It is in its own process group, so a
terminal's Ctrl-C does not reach it. It exits when the gateway's end of its socket closes, for
whatever reason.

Zygote and workers stay in the gateway's session (a process group, not a session of their own):
Linux's CFS autogroups are per session, and a worker in a session of its own became a scheduling
group of its own, weighed against all of the gateway's threads together. On one CPU it then ran
the moment it had work, the batching thread after it, and batches shrank to about 3 rows at 64 in
flight. ``docs/architecture.md`` has the measurements.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import select
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from typing import NoReturn

log = logging.getLogger(__name__)

_MESSAGE_BYTES = 4096
WORKER_NAME = b"turnout-worker"
ZYGOTE_NAME = b"turnout-zygote"


class ForkedWorker:
    """A worker forked by the zygote, with the part of ``subprocess.Popen`` the hosts use."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._exited = threading.Event()

    def _exit(self, returncode: int | None) -> None:
        self.returncode = returncode
        self._exited.set()

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit status as ``Popen.wait`` gives it (negative: killed by that signal)."""
        if not self._exited.wait(timeout):
            raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout or 0.0)
        return self.returncode

    def kill(self) -> None:
        if not self._exited.is_set():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)


class ZygoteGone(RuntimeError):
    """The zygote exited, so workers must be started another way."""


class Zygote:
    """The gateway's side: asks the zygote for workers and hears how each one ended."""

    def __init__(self, control: socket.socket, pid: int) -> None:
        self._control = control
        self.pid = pid
        self._launch_lock = threading.Lock()  # one launch at a time: replies come back in order
        self._launched: queue.SimpleQueue[ForkedWorker | None] = queue.SimpleQueue()
        self._workers: dict[int, ForkedWorker] = {}
        self._gone = False
        self._closing = False
        self._reader: threading.Thread | None = None

    @classmethod
    def fork(cls) -> Zygote:
        """Fork the zygote now. Call it while this process has a single thread."""
        if threading.active_count() > 1:
            raise RuntimeError("the zygote must be forked before any thread starts")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            ours.close()
            _zygote_main(theirs)
        theirs.close()
        return cls(ours, pid)

    def launch(self, fds: Sequence[int]) -> ForkedWorker:
        """Fork a worker serving ``fds`` (its socket, then optionally a listening socket)."""
        with self._launch_lock:
            if self._gone:
                raise ZygoteGone("the zygote has exited")
            if self._reader is None:
                self._reader = threading.Thread(target=self._read, name="zygote-reader", daemon=True)
                self._reader.start()
            try:
                socket.send_fds(self._control, [json.dumps({"fds": len(fds)}).encode()], list(fds))
            except OSError as error:
                raise ZygoteGone(f"the zygote has exited ({error})") from None
            worker = self._launched.get()
        if worker is None:
            raise ZygoteGone("the zygote exited while forking a worker")
        return worker

    def _read(self) -> None:
        while True:
            try:
                message = self._control.recv(_MESSAGE_BYTES)
            except OSError:
                message = b""
            if not message:
                break
            reply = json.loads(message)
            if "forked" in reply:
                # Registered here, before the next message is read, so that an exit is never missed.
                worker = ForkedWorker(int(reply["forked"]))
                self._workers[worker.pid] = worker
                self._launched.put(worker)
            elif "exited" in reply:
                exited = self._workers.pop(int(reply["exited"]), None)
                if exited is not None:
                    exited._exit(int(reply["returncode"]))
        self._gone = True
        if not self._closing:
            log.error("the worker zygote (pid %d) exited; workers are started as new interpreters now", self.pid)
        self._launched.put(None)
        for orphan in self._workers.values():
            threading.Thread(target=_await_orphan, args=(orphan,), name="orphan-watch", daemon=True).start()

    def close(self) -> None:
        """Stop the zygote; workers it forked keep running until their owners close their sockets."""
        self._closing = True
        # shutdown, not just close: it wakes our reader's recv and tells the zygote at once.
        with contextlib.suppress(OSError):
            self._control.shutdown(socket.SHUT_RDWR)
        self._control.close()
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)


def _await_orphan(worker: ForkedWorker) -> None:
    """Without the zygote, notice that a worker ended, and reap it if it was handed to us."""
    try:
        pidfd = os.pidfd_open(worker.pid)
    except ProcessLookupError:
        worker._exit(None)
        return
    try:
        select.select([pidfd], [], [])
    finally:
        os.close(pidfd)
    # Orphans go to PID 1, which is this gateway in a container: then it must reap them, and learns
    # how they ended after all.
    returncode = None
    with contextlib.suppress(ChildProcessError):
        pid, status = os.waitpid(worker.pid, os.WNOHANG)
        if pid == worker.pid:
            returncode = os.waitstatus_to_exitcode(status)
    worker._exit(returncode)


def _name_process(name: bytes) -> None:
    # What ps, top and the tests show; the command line stays the gateway's.
    with contextlib.suppress(OSError), open("/proc/self/comm", "wb") as comm:
        comm.write(name)


def _live_then_exit(what: str, life: Callable[[], None]) -> NoReturn:
    """Run a forked child's whole ``life``; it must never return into the code it was forked from."""
    code = 0
    try:
        life()
    except BaseException:
        code = 1
        with contextlib.suppress(Exception):
            log.exception("%s failed", what)
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os._exit(code)


def _leave_terminal_group() -> None:
    """Move this process into a process group of its own, in the same session.

    A terminal's Ctrl-C and a signal sent to the gateway's group then miss it. It also makes this a
    background group of the terminal, and a background write stops the writer with SIGTTOU where the
    terminal has ``tostop`` set; ignoring SIGTTOU lets a worker's log line through instead.
    """
    os.setpgid(0, 0)
    signal.signal(signal.SIGTTOU, signal.SIG_IGN)


def _zygote_main(control: socket.socket) -> NoReturn:
    """The zygote's whole life, in the forked child."""

    def life() -> None:
        _leave_terminal_group()
        _name_process(ZYGOTE_NAME)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        wake_read, wake_write = os.pipe()
        os.set_blocking(wake_write, False)
        _close_other_fds(keep={0, 1, 2, control.fileno(), wake_read, wake_write})
        _preload()
        signal.set_wakeup_fd(wake_write)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        _fork_and_reap(control, wake_read, wake_write)

    _live_then_exit("the worker zygote", life)


def _preload() -> None:
    # Imported once here, so every forked worker starts with them in memory.
    import numpy  # noqa: F401

    import runtimes.worker  # noqa: F401

    with contextlib.suppress(ImportError):
        import onnxruntime  # noqa: F401


def _close_other_fds(keep: set[int]) -> None:
    # The gateway's other descriptors (a reserved port, the state database) must not live on in workers.
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)


def _fork_and_reap(control: socket.socket, wake_read: int, wake_write: int) -> None:
    while True:
        readable, _, _ = select.select([control.fileno(), wake_read], [], [])
        if wake_read in readable:  # a SIGCHLD: drain the wake-up; the reaping below sees the exits
            with contextlib.suppress(BlockingIOError, InterruptedError):
                os.read(wake_read, 512)
        if control.fileno() in readable:
            message, fds, _, _ = socket.recv_fds(control, _MESSAGE_BYTES, 4)
            if not message:
                return  # the gateway is gone
            pid = os.fork()
            if pid == 0:
                _become_worker(control, wake_read, wake_write, fds)
            for fd in fds:
                os.close(fd)
            control.send(json.dumps({"forked": pid}).encode())
        _reap(control)


def _reap(control: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        control.send(json.dumps({"exited": pid, "returncode": os.waitstatus_to_exitcode(status)}).encode())


def _become_worker(control: socket.socket, wake_read: int, wake_write: int, fds: list[int]) -> NoReturn:
    def life() -> None:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        control.close()
        os.close(wake_read)
        os.close(wake_write)
        _leave_terminal_group()  # as a spawned worker does: group signals aimed at the gateway miss it
        _name_process(WORKER_NAME)
        from runtimes.worker import run

        run(fds[0], fds[1] if len(fds) > 1 else None)

    _live_then_exit("a forked worker", life)


def start_zygote() -> Zygote | None:
    """Fork the zygote if this process can still do so safely; None (workers will be spawned) if not."""
    if threading.active_count() > 1:
        log.warning("threads are already running, so workers will be started as new interpreters")
        return None
    try:
        return Zygote.fork()
    except OSError as error:
        log.warning("could not fork the worker zygote (%s); workers will be started as new interpreters", error)
        return None
