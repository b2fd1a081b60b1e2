"""Loading a repository: different models load side by side up to ``--model-load-threads``, one model's
versions one after another in order, and the progress is logged (each load, then a summary).

The model manager runs here as the gateway wires it, with real ONNX models in-process; only the host
factory is slowed down, as a large model or a slow disk would.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.registry.repository import ModelRepository
from gateway.serving.model_manager import ModelManager
from runtimes.contract import ModelHost, RuntimeOptions
from runtimes.inprocess_host import InProcessHost
from tests.support.model_repository import identity_model, save_version

LOAD_S = 0.2  # each host takes this long to start


@dataclass
class SlowHosts:
    """A host factory whose hosts take LOAD_S to start; it records how many start at once, and in what order."""

    active: int = 0
    most_at_once: int = 0
    order: list[str] = field(default_factory=list)  # labels, as each load finishes
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, kind: str, artifact: Path, options: RuntimeOptions, label: str) -> ModelHost:
        with self.lock:
            self.active += 1
            self.most_at_once = max(self.most_at_once, self.active)
        try:
            time.sleep(LOAD_S)
            return InProcessHost(kind, artifact, options)
        finally:
            with self.lock:
                self.active -= 1
                self.order.append(label)


def repository(root: Path, models: int, versions: tuple[int, ...] = (1,)) -> Path:
    for index in range(models):
        name = f"m{index}"
        for version in versions:
            save_version(root / "models", name, version, identity_model("FP32"))
        if len(versions) > 1:
            (root / "models" / name / "model.yaml").write_text("version_policy: {all: {}}\n")
    return root / "models"


@pytest.fixture
def managers() -> Iterator[list[ModelManager]]:
    made: list[ModelManager] = []
    yield made
    for manager in made:
        manager.close()


def started(models: Path, hosts: SlowHosts, load_threads: int, made: list[ModelManager]) -> ModelManager:
    manager = ModelManager(
        ModelRepository(models), hosts, RuntimeOptions(1, 1), poll_interval_s=0, drain_timeout_s=5,
        load_threads=load_threads,
    )  # fmt: skip
    made.append(manager)
    manager.start()
    return manager


def test_different_models_load_side_by_side_up_to_the_bound(tmp_path: Path, managers: list[ModelManager]) -> None:
    hosts = SlowHosts()
    manager = started(repository(tmp_path, models=5), hosts, load_threads=2, made=managers)
    assert manager.every_model_ready()
    assert hosts.most_at_once == 2, "two models at a time, never more"


def test_one_load_thread_loads_one_model_at_a_time(tmp_path: Path, managers: list[ModelManager]) -> None:
    hosts = SlowHosts()
    manager = started(repository(tmp_path, models=3), hosts, load_threads=1, made=managers)
    assert manager.every_model_ready() and hosts.most_at_once == 1


def test_the_versions_of_one_model_load_in_order(tmp_path: Path, managers: list[ModelManager]) -> None:
    hosts = SlowHosts()
    manager = started(repository(tmp_path, models=2, versions=(1, 2, 3)), hosts, load_threads=4, made=managers)
    assert manager.ready_versions("m0") == manager.ready_versions("m1") == {1, 2, 3}
    assert hosts.most_at_once == 2, "the two models side by side, each one version at a time"
    for model in ("m0", "m1"):
        loaded = [label for label in hosts.order if label.startswith(f"{model}/")]
        assert loaded == [f"{model}/{version}#0" for version in (1, 2, 3)]


def test_each_load_and_a_summary_are_logged(
    tmp_path: Path, managers: list[ModelManager], caplog: pytest.LogCaptureFixture
) -> None:
    models = repository(tmp_path, models=1)
    (models / "broken" / "1").mkdir(parents=True)
    (models / "broken" / "1" / "model.onnx").write_bytes(b"not an onnx model")
    with caplog.at_level(logging.INFO):
        started(models, SlowHosts(), load_threads=2, made=managers)
    about = [(r.__dict__.get("model"), r.__dict__.get("version"), r.getMessage()) for r in caplog.records]
    assert {(model, version, message.split(" ")[0]) for model, version, message in about} >= {
        ("m0", 1, "loading"), ("broken", 1, "loading"), ("m0", 1, "version")
    }  # fmt: skip
    ready = next(message for model, _, message in about if model == "m0" and "READY" in message)
    assert ready.startswith("version 1 of model 'm0' is READY, loaded in 0.")
    failed = next(r for r in caplog.records if r.__dict__.get("model") == "broken" and r.levelno == logging.ERROR)
    assert "version 1 of model 'broken' failed to load in " in failed.getMessage()
    summary = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("loaded 1 of 2 models in "))
    assert "; failed: broken (version 1: " in summary
