"""A model host that runs the runtime in a worker process, and restarts that worker if it dies.

A crash fails only the batch in flight (``HostUnavailable``); a watcher thread notices the exit,
starts a new worker and reloads the model, and ``infer`` calls made meanwhile wait for it (up to
``restart_wait_s``) instead of failing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import runtimes
from runtimes.contract import (
    ArtifactInvalid,
    FailureCallback,
    HostUnavailable,
    RuntimeFailure,
    RuntimeOptions,
    Signature,
)
from runtimes.ipc import ChannelClosed, channel_pair, recv_frame, send_frame
from runtimes.raw_tensors import RawTensor, RawTensors
from runtimes.worker_protocol import Kind, loaded_signature, result_tensors, send_batch, send_load
from runtimes.zygote import Zygote, ZygoteGone

log = logging.getLogger(__name__)


class WorkerProcess(Protocol):
    """What a host needs of a worker process: ``subprocess.Popen`` or a worker the zygote forked."""

    pid: int

    def wait(self, timeout: float | None = None) -> int | None: ...

    def kill(self) -> None: ...


def _spawn(fds: list[int]) -> WorkerProcess:
    env = dict(os.environ)
    # The worker imports `runtimes` from wherever this process found it, installed or not.
    package_root = str(Path(runtimes.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    extra = ["--listen-fd", str(fds[1])] if len(fds) > 1 else []
    return subprocess.Popen(
        [sys.executable, "-m", "runtimes.worker", "--fd", str(fds[0]), *extra],
        pass_fds=fds,
        env=env,
        # A terminal's Ctrl-C or a group-wide SIGTERM must reach only the gateway, which then
        # drains in-flight requests before stopping its workers itself. A process group of its own
        # does that; a session of its own would also make it a CFS autogroup of its own (zygote.py).
        process_group=0,
    )


class _Worker:
    """One running worker process and our end of its socket."""

    def __init__(self, label: str, listener: socket.socket | None, zygote: Zygote | None) -> None:
        self.label = label
        if zygote is not None:
            try:
                self.process, self.sock = self._start(listener, zygote.launch)
                return
            except ZygoteGone:  # the zygote's reader has said so in the log
                pass
        # A fresh socket pair: a zygote that died mid-launch may have forked a worker on the old one.
        self.process, self.sock = self._start(listener, _spawn)

    @staticmethod
    def _start(
        listener: socket.socket | None, launch: Callable[[list[int]], WorkerProcess]
    ) -> tuple[WorkerProcess, socket.socket]:
        ours, theirs = channel_pair()
        fds = [theirs.fileno(), *([listener.fileno()] if listener is not None else [])]
        try:
            return launch(fds), ours
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()

    def load(self, kind: str, artifact: Path, options: RuntimeOptions) -> Signature:
        try:
            send_load(self.sock, kind, str(artifact), options)
            frame = recv_frame(self.sock)
        except (OSError, ChannelClosed) as error:
            raise ArtifactInvalid(f"worker exited while loading {artifact.name} ({self.exit_reason()})") from error
        return loaded_signature(frame)

    def infer(self, inputs: Mapping[str, Sequence[RawTensor]], output_names: Sequence[str]) -> RawTensors:
        send_batch(self.sock, inputs, output_names)
        return result_tensors(recv_frame(self.sock))

    def exit_reason(self) -> str:
        try:
            code = self.process.wait(0.5)  # a dead peer may not be reaped yet
        except subprocess.TimeoutExpired:
            return "still running"
        if code is None:
            return "exit status unknown"
        return f"killed by signal {-code}" if code < 0 else f"exit status {code}"

    def stop(self, timeout_s: float) -> None:
        with contextlib.suppress(OSError):  # it may be dead already
            send_frame(self.sock, Kind.SHUTDOWN)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.sock.close()


_MAX_RESTART_DELAY_S = 5.0


class WorkerProcessHost:
    """Hosts one model in a worker process that is restarted when it dies."""

    def __init__(
        self,
        kind: str,
        artifact: Path,
        options: RuntimeOptions,
        *,
        label: str = "",
        restart_wait_s: float = 30.0,
        listener: socket.socket | None = None,
        zygote: Zygote | None = None,
    ) -> None:
        """``listener``: a listening socket every incarnation of the worker also accepts other
        gateway processes on (see :mod:`runtimes.broker`); it stays open across restarts.
        ``zygote``: fork workers from it (see :mod:`runtimes.zygote`); without one they are spawned."""
        self._kind, self._artifact, self._options = kind, artifact, options
        self._listener = listener
        self._zygote = zygote
        self._label = label or artifact.parent.name
        self._restart_wait_s = restart_wait_s
        self._call_lock = threading.Lock()  # one batch at a time through the socket
        self._life_lock = threading.Lock()  # orders close() against a restart in progress
        self._ready = threading.Event()
        self._closing = False
        self._worker: _Worker | None = None
        self.restarts = 0
        # Why its worker died and cannot be started again (its model file gone or damaged); None while
        # it serves or is restarting as usual. Callers are then answered at once, not after a wait.
        self.failure: str | None = None
        self._on_failure: FailureCallback | None = None
        self._closed = threading.Event()  # wakes a restart loop that is waiting to try again
        self.signature = self._start()

    @property
    def pid(self) -> int | None:
        worker = self._worker
        return worker.process.pid if worker else None

    def _start(self) -> Signature:
        worker = _Worker(self._label, self._listener, self._zygote)
        try:
            signature = worker.load(self._kind, self._artifact, self._options)
        except BaseException:
            worker.stop(timeout_s=1.0)
            raise
        with self._life_lock:
            if self._closing:  # closed while this worker was loading: it must not outlive the host
                worker.stop(timeout_s=1.0)
                raise HostUnavailable(f"host for {self._label} is closed")
            self._worker = worker
        self._ready.set()
        threading.Thread(target=self._watch, args=(worker,), name=f"watch-{self._label}", daemon=True).start()
        return signature

    def _watch(self, worker: _Worker) -> None:
        worker.process.wait()
        if self._closing or self._worker is not worker:
            return
        self._ready.clear()
        self._worker = None
        log.warning("worker for %s exited (%s); restarting", self._label, worker.exit_reason())
        # Take the call lock so the socket is not closed under a batch still being read.
        with self._call_lock:
            worker.sock.close()
        self._restart()

    def _restart(self) -> None:
        delay = 0.1
        while not self._closing:
            try:
                self._start()
            except HostUnavailable:
                return
            except ArtifactInvalid as error:
                # The model file is gone or damaged: no restart can work until it is back. Say so once,
                # answer callers at once (they would wait for a worker that is not coming), and keep
                # trying now and then in case the file returns.
                if self.failure is None:
                    log.error("worker for %s cannot be restarted: %s; retrying every %.0fs", self._label, error,
                              _MAX_RESTART_DELAY_S)  # fmt: skip
                    self.failure = f"its worker died and cannot be restarted: {error}"
                    self._ready.set()
                    self._tell_failure(self.failure)
                delay = _MAX_RESTART_DELAY_S
            except RuntimeFailure as error:
                log.error("restarting worker for %s failed: %s; retrying in %.1fs", self._label, error, delay)
                delay = min(delay * 2, _MAX_RESTART_DELAY_S)
            else:
                self.restarts += 1
                if self.failure is not None:
                    self.failure = None
                    self._tell_failure(None)
                log.warning("worker for %s is serving again (restart %d)", self._label, self.restarts)
                return
            if self._closed.wait(delay):
                return

    def watch_failure(self, callback: FailureCallback) -> None:
        self._on_failure = callback

    def _tell_failure(self, failure: str | None) -> None:
        callback = self._on_failure
        if callback is not None:
            try:
                callback(failure)
            except Exception:  # the watcher's problem; the restart loop goes on
                log.exception("the failure watcher of %s failed", self._label)

    def infer(self, inputs: Mapping[str, Sequence[RawTensor]], output_names: Sequence[str]) -> RawTensors:
        # is_set() first: Event.wait runs a Condition's Python code even when the event is set.
        if not self._ready.is_set() and not self._ready.wait(self._restart_wait_s):
            raise HostUnavailable(f"worker for {self._label} is restarting")
        with self._call_lock:
            worker = self._worker
            if worker is None:
                failure = self.failure
                why = f"{self._label}: {failure}" if failure else f"worker for {self._label} is restarting"
                raise HostUnavailable(why)
            try:
                return worker.infer(inputs, output_names)
            except (OSError, ChannelClosed):
                # Later batches wait for the restart instead of meeting the dead socket too; the
                # watcher sets _ready again once the new worker has loaded the model.
                with self._life_lock:
                    if self._worker is worker and not self._closing:
                        self._ready.clear()
                raise HostUnavailable(
                    f"worker process {worker.process.pid} for {self._label} died during the batch "
                    f"({worker.exit_reason()}); it is being restarted"
                ) from None

    def close(self) -> None:
        with self._life_lock:
            self._closing = True
            self._closed.set()
            self._ready.clear()
            worker, self._worker = self._worker, None
        if worker is not None:
            with self._call_lock:
                worker.stop(timeout_s=5.0)
