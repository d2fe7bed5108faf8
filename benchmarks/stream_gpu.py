"""GPU streaming latency of issue 15's two targets, each backend beside torch eager, in one run (< 2 minutes).

    python benchmarks/stream_gpu.py [--chunks 2000] [--batch 1] [--json stream_gpu.json]

1. one step of a 1-layer LSTM 128->128 at batch 1 (the state carried between chunks): target <= 30 us host
   latency with fused-graph;
2. the VAD-sized whole model of examples/vad.py (a 1x1 convolution 40->128, that LSTM, a linear head), one
   32 ms frame per chunk: target <= 60 us with fused-graph.

Host latency is what `lstminfer stream` measures: the host clock around Session.step() (the chunk copied up
from pinned memory, the step run or replayed, the outputs copied down and waited for), nearest-rank
percentiles of `--chunks` timed chunks after `--warmup-chunks` untimed ones.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np
import torch

import lstminfer
from lstminfer.measure.stream import stream_one

BACKENDS = ("torch", "torch-graph", "fused", "fused-graph")
TARGETS_US = {"lstm": 30.0, "vad": 60.0}  # issue 15, fused-graph on the H200
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def models() -> dict[str, tuple]:
    torch.manual_seed(0)
    spec = importlib.util.spec_from_file_location("vad_example", EXAMPLES / "vad.py")
    vad = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(vad)
    return {"lstm": torch.nn.LSTM(128, 128).eval(), "vad": vad.vad()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=2000, help="timed chunks per backend (default 2000)")
    parser.add_argument("--warmup-chunks", type=int, default=200)
    parser.add_argument("--batch", type=int, default=1, help="streams side by side (default 1)")
    parser.add_argument("--json", default=None, metavar="FILE", help="every record, with every chunk's time")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("stream_gpu.py needs a CUDA GPU")
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, batch {args.batch}, "
          f"{args.chunks} chunks after {args.warmup_chunks}; host latency per chunk in us")
    print(f"{'model':6} {'backend':12} {'median':>8} {'p90':>8} {'p99':>8} {'vs torch':>9} {'target':>7}")
    records = []
    for label, source in models().items():
        eager = None
        for backend in BACKENDS:
            session = lstminfer.Session(source, backend=backend, device="cuda")
            rec = stream_one(session, 1, args.chunks, args.warmup_chunks, args.batch, 32.0,
                             np.random.default_rng(0))
            session.close()
            lat = {k: rec["latency_ms"][k] * 1000.0 for k in ("median", "p90", "p99")}
            eager = eager or lat["median"]
            target = TARGETS_US[label] if backend == "fused-graph" else None
            verdict = "" if target is None else ("met" if lat["median"] <= target else "MISSED")
            print(f"{label:6} {backend:12} {lat['median']:8.1f} {lat['p90']:8.1f} {lat['p99']:8.1f} "
                  f"{eager / lat['median']:8.2f}x {f'<= {target:g}' if target else '':>7} {verdict}")
            records.append({"model": label, "backend": backend, **rec})
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
