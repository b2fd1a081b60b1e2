"""Running drift in the gateway: the last N served inputs of each model version, compared on demand.

:class:`DriftWindow` is a request observer (:mod:`gateway.serving.observers`). For each model version
that has a reference profile it keeps the last ``size`` input rows in a ring: one fixed array, a
column per feature, written in place, so its memory is ``size x features x 8`` bytes however long the
gateway runs (10,000 rows of 64 features: 5 MiB). The profile is loaded once per version, on the
dispatcher thread the first time the version answers, never on a caller's thread. The statistics
are the batch report's (:func:`gateway.capture.drift.compare`), computed when asked (by the metrics
exporter, next), not per request.

Only answered requests count: a request that failed has no place in what the model served. Shadow
copies never reach observers, so a window holds each served input once.

Sampled once full: while a version's ring fills, every batch is written; once it is full, only
every ``sample_every``-th batch of that version (:data:`DEFAULT_SAMPLE_EVERY`) is, because writing
every batch cost a request more than anything else the metrics do (issue 14: metrics cost at most
3%). The window then holds ``size`` rows drawn from about the last ``sample_every x size`` rows,
whole batches picked by their order of arrival, not by their content; so for inputs whose
distribution holds over that span each statistic is the same in expectation as over the newest
``size`` rows. What it costs: a change in the inputs needs about ``sample_every`` times as many
requests to fill the window (at 4,000 requests a second and the default 10,000 rows, 20 s instead of
2.5 s). ``sample_every=1`` keeps every batch, as before.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow.parquet as pq

from gateway.capture.drift import FeatureDrift, FeatureProfile, compare, profile
from gateway.capture.drift_thresholds import DEFAULT_BINS, REFERENCE_FILE
from gateway.registry.repository import ModelRepository
from gateway.serving.observers import Finished, Route
from runtimes.datatypes import BYTES, numpy_dtype

log = logging.getLogger(__name__)

DEFAULT_WINDOW_ROWS = 10_000
DEFAULT_SAMPLE_EVERY = 8  # once a version's window is full, one batch in this many is written


@dataclass(frozen=True)
class ReferenceProfile:
    """A version's reference, summarised: which input tensor its features are, and each feature's profile."""

    input_name: str
    features: tuple[FeatureProfile, ...]  # in the order of the input tensor's columns

    @classmethod
    def from_parquet(
        cls, path: Path, input_name: str, feature_names: Sequence[str], bins: int = DEFAULT_BINS
    ) -> ReferenceProfile:
        """Read the reference's columns named as the input's features (``feature_names``, in order)."""
        table = pq.read_table(path, columns=list(feature_names))
        return cls(input_name, tuple(profile(name, table.column(name).to_numpy(), bins) for name in feature_names))


# model, version -> the version's reference profile, or None when it has none (then it is not watched).
ProfileSource = Callable[[str, int], ReferenceProfile | None]


def repository_profiles(repository: ModelRepository, bins: int = DEFAULT_BINS) -> ProfileSource:
    """Profiles read from a model repository: ``<root>/<model>/<version>/reference.parquet``.

    A version is watched when its model declares exactly one input of rows of features (``dims`` of
    one fixed length) and the reference file exists; the features are named as the capture names
    them, by ``feature_names`` or else ``<input>_<i>``.
    """
    root = repository.root

    def load(model: str, version: int) -> ReferenceProfile | None:
        path = root / model / str(version) / REFERENCE_FILE
        if not path.is_file():  # first: a version without a reference costs no scan of its model
            return None
        entry = repository.scan_model(model)
        if entry is None or entry.settings is None:
            return None
        inputs = entry.settings.inputs or ()
        if len(inputs) != 1 or len(inputs[0].dims) != 1 or inputs[0].dims[0] < 1:
            return None
        declared = inputs[0]
        names = entry.settings.feature_names or tuple(f"{declared.name}_{i}" for i in range(declared.dims[0]))
        missing = [name for name in names if name not in pq.read_schema(path).names]
        if missing:  # e.g. a config.pbtxt without feature names beside a reference that names them
            log.warning(
                "drift: %s has no column for %d of the features of %s version %d (first: %s); that version is"
                " not watched", path, len(missing), model, version, missing[0],
            )  # fmt: skip
            return None
        return ReferenceProfile.from_parquet(path, declared.name, names, bins)

    return load


class FeatureRing:
    """The last ``size`` rows of a 2-D input, one column per feature, in one preallocated array."""

    def __init__(self, size: int, features: int) -> None:
        if size < 1:
            raise ValueError(f"a window holds at least one row, not {size}")
        self._rows = np.zeros((size, features))
        self._next = 0  # where the next row goes
        self._filled = 0
        self.full = False  # every row written at least once (a field: the observer reads it per batch)

    @property
    def filled(self) -> int:
        return self._filled

    @property
    def nbytes(self) -> int:
        return int(self._rows.nbytes)

    def append(self, block: npt.NDArray[np.generic]) -> None:
        """Write rows in order, overwriting the oldest; at most two slice copies however many rows."""
        size = self._rows.shape[0]
        if block.shape[0] > size:  # only the newest rows would survive anyway
            block = block[-size:]
        count = block.shape[0]
        first = min(count, size - self._next)
        self._rows[self._next : self._next + first] = block[:first]
        self._rows[: count - first] = block[first:]
        self._next = (self._next + count) % size
        self._filled = min(size, self._filled + count)
        self.full = self._filled == size

    def column(self, index: int) -> npt.NDArray[np.float64]:
        """A copy of one feature's values in the window (oldest-first order is not kept: the statistics
        do not depend on it)."""
        copied: npt.NDArray[np.float64] = self._rows[: self._filled, index].copy()
        return copied


class _Watched:
    """One version's reference and ring, with the lock the dispatcher threads and readers share."""

    def __init__(self, reference: ReferenceProfile, size: int) -> None:
        self.reference = reference
        self.features = len(reference.features)
        self.ring = FeatureRing(size, self.features)
        self.lock = threading.Lock()
        # Batches seen since the ring filled; only its dispatcher thread adds (a lost count under a
        # race between threads would only shift which batch is sampled).
        self.batches = 0


class DriftWindow:
    """A request observer keeping a sliding window of served inputs per model version."""

    needs_request_id = False

    def __init__(
        self, profiles: ProfileSource, size: int = DEFAULT_WINDOW_ROWS, sample_every: int = DEFAULT_SAMPLE_EVERY
    ) -> None:
        if sample_every < 1:
            raise ValueError(f"sample_every is at least 1 (every batch), not {sample_every}")
        self._profiles = profiles
        self._size = size
        self._sample_every = sample_every
        self._watched: dict[tuple[str, int], _Watched | None] = {}  # None: no reference, not watched
        self._loading = threading.Lock()

    def wants(self, route: Route | None) -> bool:
        # On the request path: one dict lookup. A version not seen yet is wanted until its profile says.
        return route is not None and self._watched.get((route.model, route.version), True) is not None

    def observe(self, finished: Sequence[Finished]) -> None:
        # Once per batch, so nothing here costs a Python call per request: whether a version's batch
        # is sampled is decided once per call, and its requests' inputs are joined and written into
        # the ring at once (one array, one ring write) instead of one by one.
        sampled: dict[tuple[str, int], _Watched | None] = {}  # None: not watched, or not this batch
        parts: dict[tuple[str, int, str], list[bytes | memoryview]] = {}  # (model, version, datatype)
        for request in finished:
            route = request.route
            if request.error is not None or route is None or request.inputs is None:
                continue
            key = (route.model, route.version)
            if key in sampled:
                watched = sampled[key]
            else:
                watched = self._watched[key] if key in self._watched else self._watched_for(*key)
                if watched is not None and watched.ring.full:  # full: keep every sample_every-th batch
                    watched.batches += 1
                    if watched.batches % self._sample_every:
                        watched = None
                sampled[key] = watched
            if watched is None:
                continue
            tensor = request.inputs.get(watched.reference.input_name)
            if tensor is None or tensor.datatype == BYTES:
                continue
            parts.setdefault((*key, tensor.datatype), []).append(tensor.data)
        for (model, version, datatype), data in parts.items():
            watched = sampled[(model, version)]
            assert watched is not None
            # [rows, features], the batch axis first; each request's rows in the order they came
            rows = np.frombuffer(b"".join(data), dtype=numpy_dtype(datatype)).reshape(-1, watched.features)
            with watched.lock:
                watched.ring.append(rows)

    def rows(self, model: str, version: int) -> int:
        watched = self._watched.get((model, version))
        return 0 if watched is None else watched.ring.filled

    def watched_versions(self) -> list[tuple[str, int]]:
        return sorted(key for key, watched in self._watched.items() if watched is not None)

    def statistics(self, model: str, version: int, *, ks_pvalue: bool = True) -> list[FeatureDrift] | None:
        """Each feature's drift over the window against the reference; None with no rows or no reference.
        ``ks_pvalue=False``: without the KS p-value (see :func:`compare`)."""
        watched = self._watched.get((model, version))
        if watched is None:
            return None
        with watched.lock:  # copy under the lock, compute outside it: observers are not held up
            if watched.ring.filled == 0:
                return None
            columns = [watched.ring.column(index) for index in range(len(watched.reference.features))]
        pairs = zip(watched.reference.features, columns, strict=True)
        return [compare(feature, values, ks_pvalue=ks_pvalue) for feature, values in pairs]

    def _watched_for(self, model: str, version: int) -> _Watched | None:
        key = (model, version)
        if key in self._watched:
            return self._watched[key]
        with self._loading:
            if key not in self._watched:
                self._watched[key] = self._load(model, version)
        return self._watched[key]

    def _load(self, model: str, version: int) -> _Watched | None:
        try:
            reference = self._profiles(model, version)
        except Exception:  # a broken reference file stops this version's watching, never the gateway
            log.exception("drift: no reference profile for %s version %d", model, version,
                          extra={"model": model, "version": version})  # fmt: skip
            return None
        return None if reference is None else _Watched(reference, self._size)
