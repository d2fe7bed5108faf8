"""GPU streaming latency of issue 15's two targets, each backend beside torch eager, in one run (< 2 minutes).

    python benchmarks/stream_gpu.py [--chunks 2000] [--batch 1] [--json stream_gpu.json]

1. one step of a 1-layer LSTM 128->128 at batch 1 (the state carried between chunks): target <= 30 us host
   latency with fused-graph, and with fused-resident (the kernel that stays on the GPU between chunks);
2. the VAD-sized whole model of examples/vad.py (a 1x1 convolution 40->128, that LSTM, a linear head), one
   32 ms frame per chunk: target <= 60 us with fused-graph.

Host latency is what `lstminfer stream` measures: the host clock around Session.step() (the chunk copied up
from pinned memory, the step run or replayed, the outputs copied down and waited for), nearest-rank
percentiles of `--chunks` timed chunks after `--warmup-chunks` untimed ones.

A second table splits a chunk's median into its parts, each timed on its own (`--chunks` times): the
engine's run (Session.step without the session's bookkeeping), for the graph backends the replay waited for
(the copies are inside the graph: chunk up, step, outputs down), the replay alone without the wait (the host
cost of launching the graph), and the replay's GPU time (CUDA events on the engine's stream around it); for
fused-resident the engine's run and the kernel's round trip alone (the chunk into mapped memory, the command,
the spin on the done word, the outputs read).

A list of the nodes of the VAD's captured chunk graph on torch-graph and fused-graph follows (their kinds and
kernel names, capture order); then a third table puts fused-resident beside fused-graph on that LSTM at batch 1
and 8, chunks of 1 and 10 steps; a fourth times fused-resident's one-step chunk at batch 1 with 1, 2, 4 and 8
hidden units a block (128, 64, 32 and 16 blocks; the plan's default is 4).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import torch

import lstminfer
from lstminfer.measure.stream import stream_one

BACKENDS = ("torch", "torch-graph", "fused", "fused-graph")
RESIDENT = "fused-resident"  # stream-only, a plain nn.LSTM / nn.GRU: the lstm model's rows only
TARGETED = ("fused-graph", RESIDENT)
RESIDENT_GRID = [(batch, chunk) for batch in (1, 8) for chunk in (1, 10)]
RESIDENT_NB = (1, 2, 4, 8)  # hidden units a block of the resident kernel (LSTM 128: 128 to 16 blocks)
TARGETS_US = {"lstm": 30.0, "vad": 60.0}  # issue 15, fused-graph on the H200
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def models() -> dict[str, tuple]:
    torch.manual_seed(0)
    spec = importlib.util.spec_from_file_location("vad_example", EXAMPLES / "vad.py")
    vad = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(vad)
    return {"lstm": torch.nn.LSTM(128, 128).eval(), "vad": vad.vad()}


def parts(session: lstminfer.Session, shape: list[int], count: int) -> dict[str, float | str]:
    """Median microseconds of a chunk's parts (see the module docstring), timed after the stream ran."""
    engine = session._engine
    chunk = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    feeds = {session.chunk_input: chunk}
    if session.backend == RESIDENT:
        kernel = engine.kernel
        steps = np.ascontiguousarray(chunk if not engine.batch_first else chunk.transpose(1, 0, 2))
        return {"run": _median_us(lambda: engine.run(feeds, engine.current), count),
                "kernel": _median_us(lambda: kernel.step(steps), count)}
    out: dict[str, float | str] = {"run": _median_us(lambda: engine.run(feeds, engine.buffers), count)}
    step = engine.last
    if step is None:  # an eager backend
        return out
    out["replay_wait"] = _median_us(lambda: engine.replay(step), count)
    out["copies"] = "in graph" if step.staged else "around"

    def launch() -> None:
        with engine.on_stream:
            step.graph.replay()

    out["launch"] = _median_us(launch, count, after=engine.stream.synchronize)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    gpu = []
    for _ in range(count):
        with engine.on_stream:
            start.record()
            step.graph.replay()
            end.record()
        end.synchronize()
        gpu.append(start.elapsed_time(end) * 1000.0)
    out["gpu"] = float(np.median(gpu))
    return out


def _median_us(call, count: int, after=None) -> float:
    """Median host time of `call` in us; `after` (untimed) runs after each call."""
    times = []
    for _ in range(count):
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1e6)
        if after is not None:
            after()
    return float(np.median(times))


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
    print(f"{'model':6} {'backend':14} {'median':>8} {'p90':>8} {'p99':>8} {'vs torch':>9} {'target':>7}")
    records = []
    for label, source in models().items():
        eager = None
        for backend in BACKENDS + ((RESIDENT,) if label == "lstm" else ()):
            session = lstminfer.Session(source, backend=backend, device="cuda")
            rec = stream_one(session, 1, args.chunks, args.warmup_chunks, args.batch, 32.0,
                             np.random.default_rng(0))
            rec["parts_us"] = parts(session, rec["chunk_shape"], args.chunks)
            session.close()
            lat = {k: rec["latency_ms"][k] * 1000.0 for k in ("median", "p90", "p99")}
            eager = eager or lat["median"]
            target = TARGETS_US[label] if backend in TARGETED else None
            verdict = "" if target is None else ("met" if lat["median"] <= target else "MISSED")
            print(f"{label:6} {backend:14} {lat['median']:8.1f} {lat['p90']:8.1f} {lat['p99']:8.1f} "
                  f"{eager / lat['median']:8.2f}x {f'<= {target:g}' if target else '':>7} {verdict}")
            records.append({"model": label, "backend": backend, **rec})
    print("\nwhere a chunk's time goes (median us, each part timed on its own): Session.step = engine.run + "
          "the session's bookkeeping; the graph backends' run = the replay waited for + writing the chunk into "
          "pinned memory + copying the outputs out of it")
    print(f"{'model':6} {'backend':14} {'step':>8} {'run':>8} {'replay+wait':>12} {'launch':>8} {'GPU':>8} "
          f"{'kernel':>8} copies")
    for rec in records:
        part = rec["parts_us"]
        cells = " ".join(f"{part[k]:{width}.1f}" if k in part else f"{'-':>{width}}"
                         for k, width in (("run", 8), ("replay_wait", 12), ("launch", 8), ("gpu", 8), ("kernel", 8)))
        print(f"{rec['model']:6} {rec['backend']:14} {rec['latency_ms']['median'] * 1000.0:8.1f} {cells} "
              f"{part.get('copies', '')}")
    graph_nodes_table(models()["vad"])
    records += resident_grid(models()["lstm"], args)
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=1))


def graph_nodes_table(vad) -> None:
    """The nodes of the VAD's graphed one-frame chunk on each graph backend: every node waits for the one before
    it, a few microseconds each (measure.stream_engines.graph_nodes; needs cuda-bindings)."""
    from collections import Counter

    from lstminfer.measure.stream_engines import graph_nodes

    print("\nnodes of the VAD's graphed chunk (batch 1, one frame), in capture order")
    for backend in ("torch-graph", "fused-graph"):
        session = lstminfer.Session(vad, backend=backend, device="cuda")
        session._engine.keep_graphs = True
        session.step(np.zeros((1, 1, 40), np.float32))
        try:
            nodes = graph_nodes(session._engine.last.graph)
        except (ImportError, RuntimeError) as err:
            print(f"{backend:14} cannot list the nodes: {err}")
            continue
        finally:
            session.close()
        kinds = ", ".join(f"{n} {k}" for k, n in Counter(k for k, _ in nodes).items())
        print(f"{backend:14} {len(nodes):3d} nodes ({kinds}): "
              + " | ".join(f"{k} {name[:48]}" if name else k for k, name in nodes))


def resident_grid(lstm, args) -> list[dict]:
    """fused-resident beside fused-graph on the LSTM: batch 1 and 8, chunks of 1 and 10 steps."""
    print("\nfused-resident beside fused-graph, LSTM 128->128: host latency per chunk (us) and per step")
    print(f"{'backend':14} {'batch':>5} {'chunk':>5} {'median':>8} {'p90':>8} {'p99':>8} {'per step':>9}")
    records = []
    for batch, chunk in RESIDENT_GRID:
        for backend in TARGETED:
            session = lstminfer.Session(lstm, backend=backend, device="cuda")
            rec = stream_one(session, chunk, args.chunks, args.warmup_chunks, batch, 32.0 * chunk,
                             np.random.default_rng(0))
            session.close()
            lat = {k: rec["latency_ms"][k] * 1000.0 for k in ("median", "p90", "p99")}
            print(f"{backend:14} {batch:5d} {chunk:5d} {lat['median']:8.1f} {lat['p90']:8.1f} {lat['p99']:8.1f} "
                  f"{lat['median'] / chunk:9.2f}")
            records.append({"model": "lstm", "backend": backend, "grid": True, **rec})
    from lstminfer.kernels.rnn.resident import ResidentKernel

    print("\nfused-resident, LSTM 128->128, batch 1, one-step chunks: hidden units a block (us)")
    print(f"{'units':>5} {'blocks':>6} {'median':>8} {'p90':>8} {'p99':>8}")
    try:
        for nb in RESIDENT_NB:
            ResidentKernel.units_per_block = nb
            session = lstminfer.Session(lstm, backend=RESIDENT, device="cuda")
            rec = stream_one(session, 1, args.chunks, args.warmup_chunks, 1, 32.0, np.random.default_rng(0))
            blocks = session._engine.kernel.cfg.blocks
            session.close()
            lat = {k: rec["latency_ms"][k] * 1000.0 for k in ("median", "p90", "p99")}
            print(f"{nb:5d} {blocks:6d} {lat['median']:8.1f} {lat['p90']:8.1f} {lat['p99']:8.1f}")
            records.append({"model": "lstm", "backend": RESIDENT, "units_per_block": nb, **rec})
    finally:
        ResidentKernel.units_per_block = None
    return records


if __name__ == "__main__":
    main()
