"""The CPU table of docs/cpu.md: presets x CPU backends x threads, and why ONNX Runtime's LSTM falls behind.

Every cell is lstminfer's own `bench` (trtexec's procedure, host clock; the median host latency of one
query, inputs and outputs on the host) of one runner, which sets its threads and restores them on close.
Machines are shared and noisy: the table runs ROUNDS interleaved passes over all cells and keeps each
cell's best median (an interferer only ever adds time). Prints markdown; `--json` keeps every record.

    benchmarks/cpu_table.sh            # the wrapper: makes OpenVINO importable offline, then runs this
    python3 benchmarks/cpu_table.py --threads default,1,2 --rounds 2 --duration 0.5
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lstminfer.backends.base import runner_class
from lstminfer.errors import UserError
from lstminfer.measure.bench import BenchConfig, time_queries
from lstminfer.measure.stats import performance_summary
from lstminfer.measure.store import machine_info
from lstminfer.model.base import Model
from lstminfer.model.spec import build_module, preset
from lstminfer.onnx.export import export_model

# (label, backend, cpu_mode)
VARIANTS = [("torch", "torch", None), ("onnxruntime", "onnxruntime", "latency"),
            ("onnxruntime throughput", "onnxruntime", "throughput"),
            ("openvino", "openvino", "latency"), ("openvino throughput", "openvino", "throughput")]
LABELS = ", ".join(v[0] for v in VARIANTS)


def default_threads() -> list[int | None]:
    """None (each runtime's default), then 1, 2, 4, ... up to the cores, and the cores themselves."""
    cores = os.cpu_count() or 1
    counts = [1]
    while counts[-1] * 2 < cores:
        counts.append(counts[-1] * 2)
    return [None, *dict.fromkeys([*counts, cores])]


def parse_threads(text: str) -> list[int | None]:
    return [None if t.strip() == "default" else int(t) for t in text.split(",") if t.strip()]


def versions() -> str:
    import onnxruntime
    import torch

    parts = [f"torch {torch.__version__}", f"onnxruntime {onnxruntime.__version__}"]
    try:
        import openvino

        parts.append(f"openvino {openvino.get_version().split('-')[0]}")
    except ImportError:
        parts.append("openvino not installed")
    return ", ".join(parts)


def preset_model(name: str, out: Path) -> Model:
    p = preset(name)
    model = Model(name, p.spec, build_module(p.spec), seq_len=p.seq_len, batch=p.batch)
    export_model(model, out / f"{name}.onnx")
    return model


def time_cell(model: Model, backend: str, mode: str | None, threads: int | None, config: BenchConfig) -> dict:
    """One runner's lifetime: prepare, trtexec's timing loop, the facts it records (threads read back), close."""
    runner = runner_class(backend)(model, device="cpu", precision="fp32", threads=threads, cpu_mode=mode or "latency")
    ok, why = runner.supports()
    if not ok:
        return {"skipped": why}
    inputs = model.make_inputs(config.seq_len, config.batch, np.random.default_rng(config.seed))
    try:
        runner.prepare()
        summary = performance_summary(time_queries(runner, inputs, config))
        return {"latency_ms": summary.host.to_dict(), "queries": summary.queries,
                **runner.describe_at(config.seq_len, config.batch)}  # with the throughput plan's groups
    except UserError as err:
        return {"error": str(err)}
    finally:
        runner.close()


def table(presets: list[str], threads: list[int | None], config: dict, rounds: int, out: Path,
          only: list[str] | None = None) -> tuple[str, list]:
    variants = [v for v in VARIANTS if runner_class(v[1]).available("cpu")[0] and (not only or v[0] in only)]
    records: list[dict] = []
    best: dict[tuple, dict] = {}
    for name in presets:
        model = preset_model(name, out)
        bench_config = BenchConfig(seq_len=model.seq_len, batch=model.batch, **config)
        cells = [(label, backend, mode, t) for t in threads for label, backend, mode in variants
                 if not (mode == "throughput" and t == 1)]  # one thread is one stream: same as latency
        for round_ in range(rounds):
            for label, backend, mode, t in cells:
                record = time_cell(model, backend, mode, t, bench_config)
                record.update(preset=name, variant=label, threads_requested=t, round=round_)
                record.pop("times_ms", None)
                records.append(record)
                key = (name, label, t)
                if "error" in record or "skipped" in record:
                    best.setdefault(key, record)
                elif key not in best or record["latency_ms"]["median"] < best[key]["latency_ms"]["median"]:
                    best[key] = record
                print(f"  {name} {label} threads={t or 'default'} round {round_ + 1}: "
                      f"{_cell(record)}", file=sys.stderr, flush=True)
    head = ["preset", "backend", *[f"threads {t}" if t else "threads: default (N)" for t in threads], "fastest at"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    summary = []
    for name in presets:
        cell_ms = {k: r["latency_ms"]["median"] for k, r in best.items() if k[0] == name and "latency_ms" in r}
        fastest = min(cell_ms, key=cell_ms.get) if cell_ms else None
        for label, _, mode in variants:
            row = [name, label]
            for t in threads:
                r = best.get((name, label, t))
                text = "" if r is None else _cell(r)
                if r is not None and t is None and "threads" in r:
                    text += f" ({r['threads']})"  # the default, read back
                if r is not None and mode == "throughput" and "group_threads" in r and len(r["group_threads"]) > 1:
                    text += f" [{'+'.join(map(str, r['group_threads']))}]"  # onnxruntime's row groups' threads
                if fastest == (name, label, t):
                    text = f"**{text}**"
                row.append(text)
            row_ms = {k: v for k, v in cell_ms.items() if k[1] == label}
            row.append(_fastest_label(min(row_ms, key=row_ms.get)) if row_ms else "")
            lines.append("| " + " | ".join(row) + " |")
        if fastest:
            r = best[fastest]
            summary.append(f"- {name} (seq {model_shape(name)}): fastest is {fastest[1]} at "
                           f"{_fastest_label(fastest)}: {cell_ms[fastest]:.4g} ms "
                           f"(threads read back: {r.get('threads')})")
    return "\n".join(lines) + "\n\n" + "\n".join(summary), records


def model_shape(name: str) -> str:
    p = preset(name)
    return f"{p.seq_len} x batch {p.batch}"


def _fastest_label(key: tuple) -> str:
    return f"{key[2]} thread{'s' if key[2] > 1 else ''}" if key[2] else "its default threads"


def _cell(record: dict) -> str:
    if "skipped" in record:
        return "skipped"
    if "error" in record:
        return "error: " + record["error"][:60]
    return f"{record['latency_ms']['median']:.4g}"


# ---- why ONNX Runtime's LSTM is slow on many cores -----------------------------------------------------
def ort_probe(out: Path, duration_s: float) -> str:
    """Speech preset: ORT's time by node type, its graph optimization levels, and batch 4 vs 8.

    ONNX Runtime's CPU LSTM partitions the *batch* across threads when batch > 4 (hidden > 256), so each
    thread streams the whole recurrent weight matrix every step; at batch <= 4 it splits the GEMM itself.
    If that is the cause, ORT's time per batch row jumps between batch 4 and 5 and torch's does not.
    """
    import onnxruntime as ort
    import torch

    p = preset("speech")
    model = Model("speech", p.spec, build_module(p.spec), seq_len=p.seq_len, batch=p.batch)
    path = out / "speech_probe.onnx"
    export_model(model, path)
    lines = ["| probe (speech, seq 200, default threads) | ms |", "|---|---|"]

    def median_ms(fn, seconds: float = duration_s) -> float:
        fn()
        times, end = [], time.perf_counter() + seconds
        while len(times) < 5 or time.perf_counter() < end:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000.0)
        return float(np.median(times))

    sessions = {}
    for level in ("ORT_DISABLE_ALL", "ORT_ENABLE_ALL"):
        opts = ort.SessionOptions()
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        sessions[level] = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feeds = {b: model.make_inputs(p.seq_len, b, np.random.default_rng(0)) for b in (4, 5, 8)}
    for level, session in sessions.items():
        lines.append(f"| onnxruntime, batch 8, graph optimization {level} | "
                     f"{median_ms(lambda s=session: s.run(None, feeds[8])):.4g} |")
    session = sessions["ORT_ENABLE_ALL"]
    for batch, feed in feeds.items():
        args = [torch.from_numpy(feed[n]) for n in model.input_names]
        with torch.inference_mode():
            torch_ms = median_ms(lambda a=args: model.module(a[0], (a[1], a[2])))
        ort_ms = median_ms(lambda f=feed: session.run(None, f))
        lines.append(f"| batch {batch}: onnxruntime / torch (per batch row: {ort_ms / batch:.3g} / "
                     f"{torch_ms / batch:.3g}) | {ort_ms:.4g} / {torch_ms:.4g} |")
    # speech is batch_first: the batch is axis 0 of `input`, axis 1 of h0 / c0
    halves = [{n: np.ascontiguousarray(a[:, rows] if n in ("h0", "c0") else a[rows]) for n, a in feeds[8].items()}
              for rows in (slice(0, 4), slice(4, 8))]
    split_ms = median_ms(lambda: [session.run(None, h) for h in halves])
    lines.append(f"| batch 8 as two runs of batch 4 (ONNX Runtime's GEMM-split path) | {split_ms:.4g} |")
    lines.append(f"| share of onnxruntime's time in its LSTM nodes (profiler, batch 8) | "
                 f"{_lstm_share(path, feeds[8], out):.1%} |")
    return "\n".join(lines)


def _lstm_share(path: Path, feed: dict, out: Path) -> float:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.enable_profiling = True
    opts.profile_file_prefix = str(out / "ort_profile")
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    for _ in range(3):
        session.run(None, feed)
    events = json.loads(Path(session.end_profiling()).read_text())
    kernel = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    total = sum(e["dur"] for e in kernel)
    return sum(e["dur"] for e in kernel if e["args"].get("op_name") == "LSTM") / max(total, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="seed,timeseries,speech")
    parser.add_argument("--threads", default=None, help="comma list, 'default' = each runtime's own "
                        "(default: default,1,2,4,... up to the cores)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved passes; each cell keeps its best median")
    parser.add_argument("--duration", type=float, default=0.5, help="timed seconds per cell and round")
    parser.add_argument("--warmup", type=float, default=100.0, help="warm-up ms per cell and round")
    parser.add_argument("--variants", default=None, help=f"comma list of rows to run (default: all of {LABELS})")
    parser.add_argument("--no-probe", action="store_true", help="skip the ONNX Runtime probe")
    parser.add_argument("--json", default=None, help="write every record here")
    args = parser.parse_args(argv)
    threads = parse_threads(args.threads) if args.threads else default_threads()
    presets = [p for p in args.presets.split(",") if p]
    only = [v.strip() for v in args.variants.split(",")] if args.variants else None
    unknown = sorted(set(only or ()) - {v[0] for v in VARIANTS})
    if unknown:
        parser.error(f"--variants: unknown {', '.join(unknown)} (choose from {LABELS})")
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        text, records = table(presets, threads, {"warmup_ms": args.warmup, "duration_s": args.duration},
                              args.rounds, out, only)
        probe = "" if args.no_probe or "speech" not in presets else ort_probe(out, args.duration)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"CPU: {machine_info()['cpu']}, {os.cpu_count()} logical CPUs; {versions()}; "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; load average {load:.2f} at the end; "
          f"{time.time() - started:.0f} s")
    print(f"command: benchmarks/cpu_table.sh {' '.join(argv if argv is not None else sys.argv[1:])}".rstrip())
    print("median host latency (ms), best of", args.rounds, "rounds; fp32; (N) = threads read back for the default;"
          " bold = fastest for the preset\n")
    print(text)
    if probe:
        print("\n" + probe)
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
