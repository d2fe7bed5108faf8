"""The timing harness: trtexec's procedure and definitions, for every backend, on one clock per backend.

Procedure (TensorRT OSS samples/common/sampleInference.cpp): queries run back to back; those that
start within the warm-up (``--warmup`` ms, default 200) are dropped; then queries run until both at
least ``--iterations`` (10) have completed and ``--duration`` (3 s) has passed.  Each query is stamped:

    start_h2d | upload | end_h2d = start_compute | execute | end_compute = start_d2h | download | end_d2h

with CUDA events on the runner's stream for GPU runners (the host clock for CPU runners and for ONNX
Runtime, which synchronizes inside ``run``).  Enqueue time is the host clock around ``execute``; host
latency is the host clock around the whole query, inputs and outputs on the host.  Unlike trtexec we
keep one query in flight, not two, so throughput is 1 / latency and never hides a host gap.
Statistics are pure functions of the stamps (lstminfer.measure.stats); the runner lifetime that calls
`time_queries` is in lstminfer.measure.run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from lstminfer.backends.base import Runner
from lstminfer.errors import UserError
from lstminfer.measure.records import BenchRecord, Point
from lstminfer.measure.stats import QueryRecord, performance_summary


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
        # not (x >= 0) also refuses NaN, which would never end the timing loop
        if not (math.isfinite(self.warmup_ms) and self.warmup_ms >= 0):
            raise UserError(f"--warmup must be a finite number >= 0 ms, got {self.warmup_ms}")
        if not (math.isfinite(self.duration_s) and self.duration_s >= 0):
            raise UserError(f"--duration must be a finite number >= 0 s, got {self.duration_s}")
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


def bench_record(runner: Runner, point: Point, records: Sequence[QueryRecord], config: BenchConfig) -> BenchRecord:
    """The record of one benchmark at `point` (schema in docs/reports.md)."""
    summary = performance_summary(records)
    extra: dict[str, Any] = {"config": asdict(config), **runner.describe_at(point.seq_len, point.batch)}
    if config.keep_raw:
        extra["queries_raw"] = [r.to_dict() for r in records]
    return BenchRecord(
        point, latency_ms=summary.host or summary.latency, throughput_qps=summary.throughput_qps,
        queries=summary.queries, walltime_s=summary.walltime_s, source="lstminfer", clock=_clock_kind(runner),
        total_gpu_compute_s=summary.total_gpu_compute_s, trt_latency_ms=summary.latency,
        gpu_compute_ms=summary.gpu_compute, h2d_ms=summary.h2d, d2h_ms=summary.d2h, enqueue_ms=summary.enqueue,
        times_ms=tuple(r.host_ms for r in records), warnings=tuple(_warnings_for(runner, summary.warnings)),
        data_transfers=not config.no_data_transfers, extra=extra)


def _warnings_for(runner: Runner, warnings: Sequence[str]) -> list[str]:
    """trtexec's warnings speak of a GPU; on the host clock only the instability one means anything."""
    if _clock_kind(runner) == "cuda-events":
        return list(warnings)
    return [w.replace("GPU compute time", "Compute time") for w in warnings if "unstable" in w]
