"""Workers forked from the zygote: who their parent is, how their deaths are learned, and what happens
when the zygote itself is gone.

Each scenario runs in a fresh interpreter, because the zygote may only be forked by a process with
a single thread, which the test runner is not.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.support.model_repository import REPO_ROOT

SCENARIO = r"""
import json, logging, os, signal, sys, threading, time
from pathlib import Path

import numpy as np

from runtimes.contract import RuntimeOptions
from runtimes.raw_tensors import array_of, raw_of
from runtimes.process_host import WorkerProcessHost
from runtimes.zygote import Zygote, start_zygote

logging.basicConfig(level=logging.WARNING, format="%(message)s")
artifact = Path(sys.argv[1])
if sys.argv[2] == "subreaper":
    # Like PID 1 in a container: orphaned workers become this process's children.
    import ctypes

    PR_SET_CHILD_SUBREAPER = 36
    assert ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
rows = np.arange(6, dtype=np.float32).reshape(1, 6)


def parent_and_name(pid):
    name, after = Path(f"/proc/{pid}/stat").read_text().split("(", 1)[1].rsplit(")", 1)
    return int(after.split()[1]), name


def answer(host):
    return array_of(host.infer({"input": [raw_of(rows)]}, [])["input"]).tolist()


def restarted(host, count):
    deadline = time.monotonic() + 30
    while host.restarts < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return host.restarts


def group_and_session(pid):
    return [os.getpgid(pid), os.getsid(pid)]


report = {"groups": {"owner": group_and_session(0)}}
zygote = Zygote.fork()
host = WorkerProcessHost("echo", artifact, RuntimeOptions(), label="echo", zygote=zygote)
report["zygote"] = [zygote.pid, *parent_and_name(zygote.pid)]  # it has named itself by the time it forks
first = host.pid
report["first"] = [first, *parent_and_name(first)]
report["groups"]["zygote"] = group_and_session(zygote.pid)
report["groups"]["forked"] = group_and_session(first)
report["answer"] = answer(host)

os.kill(first, signal.SIGKILL)
report["restarts_after_kill"] = restarted(host, 1)
second = host.pid
report["second"] = [second, *parent_and_name(second)]
report["answer_after_restart"] = answer(host)

# The zygote dies: the worker it forked keeps serving; its death is still noticed, and the worker
# that replaces it is spawned as a new interpreter.
os.kill(zygote.pid, signal.SIGKILL)
os.waitpid(zygote.pid, 0)
report["answer_without_zygote"] = answer(host)
os.kill(second, signal.SIGKILL)
report["restarts_without_zygote"] = restarted(host, 2)
third = host.pid
report["third"] = [third, *parent_and_name(third)]
report["third_command"] = Path(f"/proc/{third}/cmdline").read_bytes().decode().split("\0")
report["groups"]["spawned"] = group_and_session(third)
report["groups"]["pids"] = {"zygote": zygote.pid, "forked": first, "spawned": third}
report["answer_after_spawn"] = answer(host)
host.close()
zygote.close()
report["third_gone"] = not Path(f"/proc/{third}").exists()

# Forking next to running threads is refused, and start_zygote falls back to spawning.
threading.Thread(target=threading.Event().wait, daemon=True).start()
try:
    Zygote.fork()
    report["refused"] = False
except RuntimeError:
    report["refused"] = True
report["start_zygote_with_threads"] = start_zygote()
print(json.dumps(report))
"""


@pytest.fixture(scope="module", params=["plain", "subreaper"])
def report(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> dict[str, Any]:
    """The scenario run by an ordinary process, and by one that inherits orphans as PID 1 does."""
    artifact = tmp_path_factory.mktemp("zygote") / "model.echo.json"
    artifact.write_text(json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 6]}]}))
    command = [sys.executable, "-c", SCENARIO, str(artifact), request.param]
    finished = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    result: dict[str, Any] = json.loads(finished.stdout)
    result["log"] = finished.stderr
    result["mode"] = request.param
    return result


def test_workers_are_children_of_the_zygote_and_named_for_ps(report: dict[str, Any]) -> None:
    zygote_pid, _, zygote_name = report["zygote"]
    assert zygote_name == "turnout-zygote"
    for key in ("first", "second"):
        _, parent, name = report[key]
        assert (parent, name) == (zygote_pid, "turnout-worker")
    assert report["answer"] == report["answer_after_restart"] == [[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]]


def test_zygote_and_workers_have_process_groups_of_their_own_in_the_owners_session(report: dict[str, Any]) -> None:
    # Their own group: a terminal's Ctrl-C or a signal to the gateway's group misses them. The
    # owner's session: under CFS autogroups a session of their own would be a scheduling group of
    # their own, which shrank batches to 3 rows (docs/architecture.md).
    groups = report["groups"]
    owner_group, owner_session = groups["owner"]
    for name, pid in groups["pids"].items():
        group, session = groups[name]
        assert group == pid != owner_group, f"the {name} process is not in a process group of its own"
        assert session == owner_session, f"the {name} process left its owner's session"


def test_a_killed_worker_is_reported_with_its_signal_and_restarted(report: dict[str, Any]) -> None:
    assert report["restarts_after_kill"] == 1
    assert report["second"][0] != report["first"][0]
    assert "exited (killed by signal 9); restarting" in report["log"]


def test_without_the_zygote_workers_keep_serving_and_are_then_spawned(report: dict[str, Any]) -> None:
    assert "the worker zygote" in report["log"] and "exited" in report["log"]
    assert report["answer_without_zygote"] == report["answer_after_spawn"] == report["answer"]
    assert report["restarts_without_zygote"] == 2
    if report["mode"] == "subreaper":
        # The orphan became our child, so we reaped it and know how it ended.
        assert report["log"].count("exited (killed by signal 9); restarting") == 2
    else:
        # Orphaned by the zygote, the dead worker's exit status is unknowable; its death is not.
        assert "exited (exit status unknown); restarting" in report["log"]
    third_pid, parent, _ = report["third"]
    assert "runtimes.worker" in report["third_command"]
    assert parent not in (report["zygote"][0], 0)
    assert report["third_gone"], f"worker {third_pid} outlived its host"


def test_the_zygote_is_refused_once_threads_run(report: dict[str, Any]) -> None:
    assert report["refused"] is True
    assert report["start_zygote_with_threads"] is None
