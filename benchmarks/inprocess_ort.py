"""The compute yardstick: onnxruntime called in-process in a tight loop on the digits model; prints JSON.

No gRPC, no queue, no process boundary: the most any server could get out of this model on this
core. Session options match Turnout's defaults (one intra-op and one inter-op thread).

    python benchmarks/inprocess_ort.py --duration-s 2 --batches 1 32
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO_ROOT / "examples" / "models" / "digits" / "2" / "model.onnx"


def open_session(model: Path, intra_op_threads: int, inter_op_threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    return ort.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"])


def measure(session: ort.InferenceSession, batch: int, duration_s: float, warmup_s: float) -> dict[str, Any]:
    """Call ``session.run`` on one ``batch``-row input until ``duration_s`` has passed."""
    name = session.get_inputs()[0].name
    features = session.get_inputs()[0].shape[1]
    feed = {name: np.random.default_rng(0).integers(0, 17, size=(batch, features)).astype(np.float32)}
    warm_until = time.perf_counter() + warmup_s
    while time.perf_counter() < warm_until:
        session.run(None, feed)
    latencies: list[int] = []
    started = time.perf_counter()
    end = started + duration_s
    now = started
    while now < end:
        before = time.perf_counter_ns()
        session.run(None, feed)
        latencies.append(time.perf_counter_ns() - before)
        now = time.perf_counter()
    elapsed = now - started
    ordered = np.sort(np.asarray(latencies))
    return {
        "batch": batch,
        "calls": len(latencies),
        "calls_per_s": round(len(latencies) / elapsed, 1),
        "inferences_per_s": round(len(latencies) * batch / elapsed, 1),
        "latency_us": {
            "p50": round(float(np.percentile(ordered, 50)) / 1e3, 2),
            "p99": round(float(np.percentile(ordered, 99)) / 1e3, 2),
            "mean": round(float(ordered.mean()) / 1e3, 2),
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="ONNX file (default: digits version 2)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--duration-s", type=float, default=2.0, help="measured time per batch size")
    parser.add_argument("--warmup-s", type=float, default=0.3)
    parser.add_argument("--intra-op-threads", type=int, default=1)
    parser.add_argument("--inter-op-threads", type=int, default=1)
    args = parser.parse_args(argv)
    session = open_session(args.model, args.intra_op_threads, args.inter_op_threads)
    results = [measure(session, batch, args.duration_s, args.warmup_s) for batch in args.batches]
    print(json.dumps({"model": str(args.model), "onnxruntime": ort.__version__, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
