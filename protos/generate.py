"""Regenerate the Python protobuf/gRPC stubs from the .proto files in protos/.

Every ``protos/<path>.proto`` is compiled to ``gateway/wire/<path>_pb2.py``,
``<path>_pb2_grpc.py`` and ``<path>_pb2.pyi``. The proto directory is mounted
under the virtual path ``gateway/wire`` (``-Igateway/wire=protos``),
so the imports protoc writes into the generated code are package-absolute
(``from gateway.wire import inference_pb2``) and nested protos such as
``protos/turnout/v1/rollouts.proto`` land in ``gateway/wire/turnout/v1/``.
Every package directory on the way gets an ``__init__.py``.

A proto may also be compiled a second time under another package (:data:`DERIVED`):
``model_config.proto`` is the wire's (package ``inference``) and, as
``turnout/triton/model_config.proto`` under the package ``turnout.triton``, the model
registry's schema for ``config.pbtxt``. The copy is made in a temporary directory at
generation time, so the schema has one source.

Needs grpcio-tools, the ``dev`` extra (``pip install -e '.[dev]'``). Usage, from anywhere::

    python protos/generate.py          # write the stubs into the checkout
    python protos/generate.py --check  # exit 1 and list files that are stale

``--check`` generates into a temporary directory and compares byte for byte
with what is in the checkout; it never modifies the checkout.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = REPO_ROOT / "protos"
WIRE_PACKAGE = Path("gateway", "wire")
INIT_TEXT = (
    '"""Generated protobuf and gRPC stubs; regenerate with python protos/generate.py; do not edit."""\n'
)
GENERATED_SUFFIXES = ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi")
# Derived proto (relative to protos/) -> (its source, the source's package, the derived package).
DERIVED: dict[Path, tuple[Path, str, str]] = {
    Path("turnout", "triton", "model_config.proto"): (Path("model_config.proto"), "inference", "turnout.triton"),
}


def find_protos(proto_dir: Path = PROTO_DIR) -> list[Path]:
    """Return every .proto file under ``proto_dir``, relative to it, sorted."""
    return sorted(p.relative_to(proto_dir) for p in proto_dir.rglob("*.proto"))


def derive(proto_dir: Path) -> None:
    """Write every :data:`DERIVED` proto into ``proto_dir`` (a copy of protos/), its package renamed."""
    for target, (source, package, renamed) in DERIVED.items():
        text = (proto_dir / source).read_text(encoding="utf-8")
        declaration = f"\npackage {package};\n"
        if text.count(declaration) != 1:
            raise RuntimeError(f"{source} must declare `package {package};` exactly once to be derived")
        derived = proto_dir / target
        derived.parent.mkdir(parents=True, exist_ok=True)
        derived.write_text(text.replace(declaration, f"\npackage {renamed};\n"), encoding="utf-8")


def run_protoc(protos: Sequence[Path], proto_dir: Path, out_dir: Path) -> None:
    """Compile ``protos`` (paths relative to ``proto_dir``) into ``out_dir``.

    Raises ``RuntimeError`` with protoc's output if compilation fails.
    """
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{WIRE_PACKAGE.as_posix()}={proto_dir.as_posix()}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--pyi_out={out_dir}",
        *((proto_dir / p).as_posix() for p in protos),
    ]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"protoc failed ({result.returncode}):\n{result.stdout}{result.stderr}")


def package_dirs(protos: Sequence[Path]) -> list[Path]:
    """The wire package and every sub-package the given protos (relative to protos/) map to."""
    packages = {WIRE_PACKAGE}
    for proto in protos:
        for depth in range(1, len(proto.parent.parts) + 1):
            packages.add(WIRE_PACKAGE.joinpath(*proto.parent.parts[:depth]))
    return sorted(packages)


def expected_outputs(protos: Sequence[Path]) -> list[Path]:
    """Every file generation should produce, relative to the output directory."""
    files = [package / "__init__.py" for package in package_dirs(protos)]
    for proto in protos:
        stem = WIRE_PACKAGE / proto.with_suffix("")
        files.extend(stem.with_name(stem.name + suffix) for suffix in GENERATED_SUFFIXES)
    return sorted(files)


def write_init_files(protos: Sequence[Path], out_dir: Path) -> None:
    """Create ``__init__.py`` in the wire package and every sub-package a proto maps to."""
    for package in package_dirs(protos):
        init = out_dir / package / "__init__.py"
        init.parent.mkdir(parents=True, exist_ok=True)
        if not init.exists() or init.read_text(encoding="utf-8") != INIT_TEXT:
            init.write_text(INIT_TEXT, encoding="utf-8")


def generate(out_dir: Path) -> list[Path]:
    """Generate all stubs under ``out_dir``; return the generated files relative to it."""
    with tempfile.TemporaryDirectory(prefix="turnout-proto-sources-") as sources:
        proto_dir = Path(sources)
        shutil.copytree(PROTO_DIR, proto_dir, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
        derive(proto_dir)
        protos = find_protos(proto_dir)
        if not protos:
            raise RuntimeError(f"no .proto files under {PROTO_DIR}")
        run_protoc(protos, proto_dir, out_dir)
    write_init_files(protos, out_dir)
    expected = expected_outputs(protos)
    missing = [rel.as_posix() for rel in expected if not (out_dir / rel).is_file()]
    if missing:
        raise RuntimeError(f"protoc did not produce: {', '.join(missing)}")
    return expected


def _committed_generated_files() -> set[Path]:
    """Files in the checkout's wire package that this script would own."""
    wire = REPO_ROOT / WIRE_PACKAGE
    if not wire.is_dir():
        return set()
    return {
        p.relative_to(REPO_ROOT)
        for p in wire.rglob("*")
        if p.is_file() and (p.name == "__init__.py" or p.name.endswith(GENERATED_SUFFIXES))
    }


def check() -> list[str]:
    """Return a description of every generated file that is missing, different or stale."""
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="turnout-protos-") as tmp:
        tmp_dir = Path(tmp)
        expected = generate(tmp_dir)
        for rel in expected:
            committed = REPO_ROOT / rel
            if not committed.is_file():
                problems.append(f"missing: {rel.as_posix()}")
            elif not filecmp.cmp(tmp_dir / rel, committed, shallow=False):
                problems.append(f"differs: {rel.as_posix()}")
    for rel in sorted(_committed_generated_files() - set(expected)):
        problems.append(f"stale (no .proto produces it): {rel.as_posix()}")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--check",
        action="store_true",
        help="do not write; exit 1 listing generated files that differ from the checkout",
    )
    args = parser.parse_args(argv)
    try:
        if args.check:
            problems = check()
            if problems:
                print("generated stubs are out of date; run: python protos/generate.py", file=sys.stderr)
                for problem in problems:
                    print(f"  {problem}", file=sys.stderr)
                return 1
            print("generated stubs are up to date")
            return 0
        generated = generate(REPO_ROOT)
        for rel in generated:
            print(rel.as_posix())
        for rel in sorted(_committed_generated_files() - set(generated)):
            print(f"warning: stale (no .proto produces it), delete it: {rel.as_posix()}", file=sys.stderr)
        return 0
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
