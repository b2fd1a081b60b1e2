"""A model repository on disk in Triton's layout: ``<repo>/<model>/<version>/<artifact>``.

Scanning only reads the directory tree; it never builds a path from a caller's string without
checking the name first, so a request cannot reach outside the repository.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from gateway.registry.model_settings import ModelSettings, SettingsInvalid, read_model_settings
from runtimes.catalog import find_artifact

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
# Triton ignores version directories whose names are not numbers or start with 0.
_VERSION_NAME = re.compile(r"^[1-9][0-9]{0,17}$")


def valid_model_name(name: str) -> bool:
    return bool(_MODEL_NAME.match(name)) and ".." not in name


@dataclass(frozen=True, slots=True)
class VersionEntry:
    """One version directory and the artifact in it, if any."""

    version: int
    directory: Path
    artifact: Path | None
    fingerprint: tuple[int, int] | None  # (size, mtime_ns) of the artifact: a change means a new file


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """One model directory: its settings (or why they are invalid) and its versions."""

    name: str
    directory: Path
    settings: ModelSettings | None
    settings_error: str | None
    versions: dict[int, VersionEntry] = field(default_factory=dict)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ModelRepository:
    """Reads the model directories under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def model_names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and valid_model_name(p.name))

    def scan_model(self, name: str) -> ModelEntry | None:
        """The model called ``name``, or None when the repository has no such model."""
        if not valid_model_name(name):
            return None
        directory = self.root / name
        if not directory.is_dir():
            return None
        try:
            settings, error = read_model_settings(directory), None
        except SettingsInvalid as problem:
            settings, error = None, str(problem)
        versions = {}
        for child in directory.iterdir():
            if child.is_dir() and _VERSION_NAME.match(child.name):
                artifact = find_artifact(child)
                stat = artifact.stat() if artifact else None
                fingerprint = (stat.st_size, stat.st_mtime_ns) if stat else None
                versions[int(child.name)] = VersionEntry(int(child.name), child, artifact, fingerprint)
        return ModelEntry(name, directory, settings, error, versions)

    def scan(self) -> dict[str, ModelEntry]:
        entries = (self.scan_model(name) for name in self.model_names())
        return {entry.name: entry for entry in entries if entry is not None}
