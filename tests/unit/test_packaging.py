"""What ``pip install -e .`` installs is enough to serve; test and stub-generation tools stay extras;
CI runs the README's own test command."""

from __future__ import annotations

import subprocess
import sys
import tomllib

from tests.support.model_repository import REPO_ROOT

# Everything `turnout serve` and the operator commands import, whatever the worker mode.
SERVING_MODULES = (
    "gateway.cli",
    "gateway.app",
    "gateway.process.supervisor",
    "gateway.client.commands",
    "gateway.client.health",
    "runtimes.worker",
    "runtimes.zygote",
    "runtimes.broker",
    "runtimes.process_host",
    "runtimes.shared_host",
    "runtimes.inprocess_host",
    "runtimes.onnxrt",
)
# Installed only by the dev, test and examples extras.
NOT_FOR_SERVING = ("grpc_tools", "pytest", "hypothesis", "tritonclient", "onnx", "mypy", "ruff", "sklearn", "skl2onnx")


# Makes the extras look uninstalled: grpc, for one, imports grpc_tools when it finds it.
_HIDE_EXTRAS = """
import importlib, importlib.abc, sys

class HideExtras(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {hidden!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, HideExtras())
for name in {modules!r}:
    importlib.import_module(name)
print("imported")
"""


def test_the_serving_path_needs_nothing_from_the_extras() -> None:
    script = _HIDE_EXTRAS.format(hidden=NOT_FOR_SERVING, modules=SERVING_MODULES)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout.strip()) == (0, "imported"), done.stderr


def test_grpcio_tools_is_for_regenerating_stubs_only() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    names = [requirement.split("=")[0].split(">")[0].strip() for requirement in project["dependencies"]]
    assert "grpcio-tools" not in names
    extras = project["optional-dependencies"]
    assert any(requirement.startswith("grpcio-tools==") for requirement in extras["dev"])
    assert "turnout[dev]" in extras["test"], "the tests regenerate the stubs to check them"


def readme_commands() -> list[str]:
    """The commands of the README's 'Two commands' block, without comments."""
    text = (REPO_ROOT / "README.md").read_text()
    block = text.split("## Two commands", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_ci_runs_exactly_the_readmes_test_command_in_a_fresh_environment() -> None:
    setup, test = readme_commands()
    assert setup.startswith("python3 -m venv .venv && .venv/bin/pip install -e . && "), "any python3, no extras"
    script = (REPO_ROOT / ".ci" / "run").read_text().splitlines()
    assert script[-1] == test and "[test]" in test
    assert "python3 -m venv --clear .venv" in script and "set -euo pipefail" in script
