"""A model repository on disk in Triton's layout: ``<repo>/<model>/<version>/<artifact>``.

Scanning only reads the directory tree; it never builds a path from a caller's string without
checking the name first, so a request cannot reach outside the repository. A model's settings come
from Turnout's ``model.yaml`` or, without one, from Triton's ``config.pbtxt``; with both, model.yaml
wins and a warning says so.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

from gateway.registry.model_settings import MODEL_SETTINGS_FILE, ModelSettings, SettingsInvalid, read_model_settings
from gateway.registry.triton_config import CONFIG_FILE, parse_config
from runtimes.catalog import find_artifact

log = logging.getLogger(__name__)

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
# Triton ignores version directories whose names are not numbers or start with 0.
_VERSION_NAME = re.compile(r"^[1-9][0-9]{0,17}$")
_REQUESTED_VERSION = re.compile(r"[0-9]{1,18}")  # fullmatch; [0-9] is ASCII only, unlike \d


def version_number(text: str) -> int | None:
    """A version named by a caller, or None unless it is 1 to 18 ASCII digits.

    Not ``str.isdigit``: it accepts "²" and other digits ``int`` refuses, and any length, where
    ``int`` refuses more than 4,300 digits; both raised past the checks.
    """
    return int(text) if _REQUESTED_VERSION.fullmatch(text) else None


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
        # The repository is rescanned every few seconds: each config.pbtxt is parsed, and its notes
        # logged, once per content it has, and the model.yaml-wins warning once while both exist.
        self._lock = threading.Lock()
        self._triton_read: dict[str, tuple[bytes, ModelSettings | str]] = {}  # settings or why not
        self._both_files: set[str] = set()

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
            settings, error = self._read_settings(name, directory), None
        except SettingsInvalid as problem:
            settings, error = None, str(problem)
        filename = settings.model_filename if settings is not None else None
        versions = {}
        for child in directory.iterdir():
            if child.is_dir() and _VERSION_NAME.match(child.name):
                artifact = find_artifact(child, filename)
                stat = artifact.stat() if artifact else None
                fingerprint = (stat.st_size, stat.st_mtime_ns) if stat else None
                versions[int(child.name)] = VersionEntry(int(child.name), child, artifact, fingerprint)
        return ModelEntry(name, directory, settings, error, versions)

    def _read_settings(self, name: str, directory: Path) -> ModelSettings:
        """The model's settings: model.yaml if present, else config.pbtxt, else the defaults."""
        has_yaml = (directory / MODEL_SETTINGS_FILE).is_file()
        has_pbtxt = (directory / CONFIG_FILE).is_file()
        self._warn_when_both(name, has_yaml and has_pbtxt)
        if has_yaml or not has_pbtxt:
            return read_model_settings(directory)
        return self._read_triton_config(name, directory / CONFIG_FILE)

    def _warn_when_both(self, name: str, both: bool) -> None:
        with self._lock:
            first_time = both and name not in self._both_files
            if both:
                self._both_files.add(name)
            else:
                self._both_files.discard(name)
        if first_time:
            log.warning(
                "model %r has both %s and %s: serving with %s (Turnout's own, more specific); %s is not read",
                name, MODEL_SETTINGS_FILE, CONFIG_FILE, MODEL_SETTINGS_FILE, CONFIG_FILE,
            )

    def _read_triton_config(self, name: str, path: Path) -> ModelSettings:
        """config.pbtxt's settings, parsed (and its notes logged) only when its content changed."""
        try:
            content = path.read_bytes()
        except OSError as error:
            raise SettingsInvalid(f"{CONFIG_FILE}: cannot be read: {error}") from None
        with self._lock:
            known = self._triton_read.get(name)
        if known is not None and known[0] == content:
            result = known[1]
        else:
            result = self._parse_triton_config(name, content)
            with self._lock:
                self._triton_read[name] = (content, result)
        if isinstance(result, str):
            raise SettingsInvalid(result)  # a fresh one each time: a re-raised one keeps growing its traceback
        return result

    @staticmethod
    def _parse_triton_config(name: str, content: bytes) -> ModelSettings | str:
        try:
            parsed = parse_config(content.decode("utf-8"), name)
        except UnicodeDecodeError as error:
            problem = f"{CONFIG_FILE}: is not UTF-8 text: {error}"
        except SettingsInvalid as error:
            problem = str(error)
        else:
            if parsed.not_acted_on:
                log.warning(
                    "model %r: %s fields Turnout does not act on: %s",
                    name, CONFIG_FILE, ", ".join(parsed.not_acted_on),
                )
            return parsed.settings
        log.error("model %r cannot be served: %s", name, problem)
        return problem

    def scan(self) -> dict[str, ModelEntry]:
        entries = (self.scan_model(name) for name in self.model_names())
        return {entry.name: entry for entry in entries if entry is not None}
