"""The timing harness: trtexec's procedure and definitions, for every backend, on one clock per backend.

Procedure (TensorRT OSS samples/common/sampleInference.cpp): queries run back to back; those that
start within the warm-up (``--warmup`` ms, default 200) are dropped; then queries run until both at
least ``--iterations`` (10) have completed and ``--duration`` (3 s) has passed.  Each query is stamped:

    start_h2d | upload | end_h2d = start_compute | execute | end_compute = start_d2h | download | end_d2h

with CUDA events on the runner's stream for GPU runners (the host clock for CPU runners and for ONNX
Runtime, which synchronizes inside ``run``).  Enqueue time is the host clock around ``execute``; host
latency is the host clock around the whole query, inputs and outputs on the host.  Unlike trtexec we
keep one query in flight, not two, so throughput is 1 / latency and never hides a host gap.
Statistics are pure functions of the stamps (lstminfer.stats).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from lstminfer.backends.base import BackendChoice, Runner, runner_class
from lstminfer.errors import UserError
from lstminfer.measure.stats import QueryRecord, performance_summary
from lstminfer.model.base import Model


@dataclass
class BenchConfig:
    warmup_ms: float = 200.0
    duration_s: float = 3.0
    iterations: int = 10
    seq_len: int = 1
    batch: int = 1
    precision: str = "fp32"
    no_data_transfers: bool = False
    seed: int = 0
    keep_raw: bool = False  # keep every query's raw stamps in the record

    def __post_init__(self) -> None:
        if self.warmup_ms < 0:
            raise UserError(f"--warmup must be >= 0 ms, got {self.warmup_ms}")
        if self.duration_s < 0:
            raise UserError(f"--duration must be >= 0 s, got {self.duration_s}")
        if self.iterations <= 0:
            raise UserError(f"--iterations must be a positive integer, got {self.iterations}")
        if self.seq_len <= 0 or self.batch <= 0:
            raise UserError(f"--seq-len and --batch must be positive, got {self.seq_len} and {self.batch}")


class _HostClock:
    """Stamps in milliseconds from the host's monotonic clock."""

    def __init__(self) -> None:
        self.origin = time.perf_counter()

    def mark(self) -> Any:
        return time.perf_counter()

    def resolve(self, marks: Sequence[Any]) -> list[float]:
        return [(m - self.origin) * 1000.0 for m in marks]


class _CudaClock:
    """Stamps from CUDA events recorded on the runner's stream, relative to one origin event."""

    def __init__(self, stream: Any) -> None:
        import torch

        self.torch = torch
        self.stream = stream
        self.origin = self.mark()

    def mark(self) -> Any:
        event = self.torch.cuda.Event(enable_timing=True)
        event.record(self.stream)
        return event

    def resolve(self, marks: Sequence[Any]) -> list[float]:
        marks[-1].synchronize()
        return [self.origin.elapsed_time(m) for m in marks]


def _clock_kind(runner: Runner) -> str:
    """CUDA events on the runner's stream where it has one and keeps work asynchronous, else the host clock."""
    if runner.device == "cuda" and runner.stream is not None and not getattr(runner, "host_clock", False):
        return "cuda-events"
    return "host"


def _clock_for(runner: Runner) -> Any:
    return _CudaClock(runner.stream) if _clock_kind(runner) == "cuda-events" else _HostClock()


def time_queries(runner: Runner, inputs: dict[str, np.ndarray], config: BenchConfig,
                 on_query: Callable[[int, float], None] | None = None) -> list[QueryRecord]:
    """Run warm-up then timed queries; return the timed queries' raw stamps."""
    records: list[QueryRecord] = []
    with runner.on_stream():
        clock = _clock_for(runner)
        resident = runner.upload(inputs) if config.no_data_transfers else None
        start = time.perf_counter()
        warm_end = start + config.warmup_ms / 1000.0
        timed_start = None
        while True:
            host0 = time.perf_counter()
            m0 = clock.mark()
            dev_in = resident if resident is not None else runner.upload(inputs)
            m1 = clock.mark()
            enq0 = time.perf_counter()
            dev_out = runner.execute(dev_in)
            enq1 = time.perf_counter()
            m2 = clock.mark()
            if config.no_data_transfers:
                runner.synchronize()
            else:
                runner.download(dev_out)
            m3 = clock.mark()
            runner.synchronize()
            host1 = time.perf_counter()
            if host0 < warm_end:
                continue  # trtexec drops queries that start within the warm-up
            if timed_start is None:
                timed_start = host0
            t0, t1, t2, t3 = clock.resolve([m0, m1, m2, m3])
            records.append(QueryRecord(
                start_enq=t1, end_enq=t1 + (enq1 - enq0) * 1000.0,
                start_h2d=t0, end_h2d=t1, start_compute=t1, end_compute=t2,
                start_d2h=t2, end_d2h=t3, host_ms=(host1 - host0) * 1000.0,
            ))
            if on_query:
                on_query(len(records), host1 - timed_start)
            if len(records) >= config.iterations and host1 - timed_start >= config.duration_s:
                break
    return records


def bench_record(runner: Runner, records: Sequence[QueryRecord], config: BenchConfig) -> dict[str, Any]:
    """The JSON record of one benchmark (schema in docs/reports.md)."""
    summary = performance_summary(records)
    host = summary.host
    rec: dict[str, Any] = {
        "backend": runner.name, "device": runner.device, "precision": config.precision,
        "seq_len": config.seq_len, "batch": config.batch, "source": "lstminfer",
        "clock": _clock_kind(runner),
        "throughput_qps": summary.throughput_qps, "queries": summary.queries, "walltime_s": summary.walltime_s,
        "total_gpu_compute_s": summary.total_gpu_compute_s,
        "latency_ms": host.to_dict() if host else summary.latency.to_dict(),
        "trt_latency_ms": summary.latency.to_dict(), "gpu_compute_ms": summary.gpu_compute.to_dict(),
        "h2d_ms": summary.h2d.to_dict(), "d2h_ms": summary.d2h.to_dict(), "enqueue_ms": summary.enqueue.to_dict(),
        "times_ms": [r.host_ms for r in records], "warnings": _warnings_for(runner, summary.warnings),
        "data_transfers": not config.no_data_transfers,
        "config": asdict(config), **runner.describe(),
    }
    if config.keep_raw:
        rec["queries_raw"] = [r.to_dict() for r in records]
    return rec


def _warnings_for(runner: Runner, warnings: Sequence[str]) -> list[str]:
    """trtexec's warnings speak of a GPU; on the host clock only the instability one means anything."""
    if _clock_kind(runner) == "cuda-events":
        return list(warnings)
    return [w.replace("GPU compute time", "Compute time") for w in warnings if "unstable" in w]


def bench(model: Model, choices: Sequence[BackendChoice], config: BenchConfig, options: dict[str, Any] | None = None,
          progress: Callable[[str, float], None] | None = None) -> list[dict[str, Any]]:
    """Benchmark each backend on the same inputs; a backend that cannot run gives a record with `skipped`."""
    options = options or {}
    inputs = model.make_inputs(config.seq_len, config.batch, np.random.default_rng(config.seed))
    out = []
    for choice in choices:
        cls = runner_class(choice.name)
        runner = cls(model, device=choice.device, precision=config.precision, **options)
        base = {"backend": choice.name, "device": choice.device, "precision": config.precision,
                "seq_len": config.seq_len, "batch": config.batch}
        if cls.self_timed:
            out.append({**base, **runner.benchmark(config)})
            continue
        ok, why = runner.supports()
        if not ok:
            out.append({**base, "skipped": why})
            continue
        try:
            runner.prepare()
            label = runner.label

            def on_query(n: int, elapsed: float, label: str = label) -> None:
                if progress:
                    progress(label, min(elapsed / max(config.duration_s, 1e-9), 1.0))

            records = time_queries(runner, inputs, config, on_query)
            out.append(bench_record(runner, records, config))
        except UserError as err:
            out.append({**base, "error": str(err)})
        finally:
            runner.close()
    return out


def comparison(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median latency per backend and its speedup over `torch` eager on the same device and precision."""
    baseline = {}
    for r in records:
        if r.get("backend") == "torch" and "latency_ms" in r:
            baseline[(r["device"], r["precision"], r["seq_len"], r["batch"])] = r["latency_ms"]["median"]
    rows = []
    for r in records:
        if "latency_ms" not in r:
            continue
        base = baseline.get((r["device"], r["precision"], r["seq_len"], r["batch"]))
        median = r["latency_ms"]["median"]
        rows.append({"backend": r["backend"], "device": r["device"], "precision": r["precision"],
                     "seq_len": r["seq_len"], "batch": r["batch"], "median_ms": median,
                     "gpu_compute_median_ms": r.get("gpu_compute_ms", {}).get("median"),
                     "throughput_qps": r.get("throughput_qps"),
                     "speedup_vs_torch": (base / median) if base and median else None})
    return rows
