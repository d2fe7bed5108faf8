"""trtexec's performance statistics, as pure functions of per-query records.

Definitions follow TensorRT OSS ``samples/common/sampleReporting.cpp`` (``getPerformanceResult``,
``findPercentile``, ``findMedian``, ``findCoeffOfVariance``, ``printPerformanceReport``):

* values are float32 (trtexec stores times as ``float`` milliseconds) and sorted ascending per metric;
* percentile p: nearest rank, index ``N - 1 - int((1 - p/100) * N)`` computed in float32, clamped at 0;
* median: the middle value, or the mean of the two middle ones;
* mean: float32 accumulation over the sorted values, divided by N;
* coefficient of variance: population standard deviation / mean * 100 (float32 accumulation);
* Latency of a query = H2D + GPU compute + D2H of that query (float32, summed per query, then summarized);
* throughput = queries / total host walltime, walltime = the D2H end of the query that started its H2D
  last minus the first H2D start (trtexec sorts its trace by H2D start), all in float32.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

PERCENTILES = (90.0, 95.0, 99.0)
# GPU compute CV above this prints "GPU compute time is unstable" (TensorRT 10.13.2 on; 1.0 before).
UNSTABLE_CV_PERCENT = 2.5


@dataclass(frozen=True)
class QueryRecord:
    """Raw stamps of one query, milliseconds on one clock (CUDA events or the host clock)."""

    start_enq: float
    end_enq: float
    start_h2d: float
    end_h2d: float
    start_compute: float
    end_compute: float
    start_d2h: float
    end_d2h: float
    host_ms: float = math.nan  # host clock around the whole query, inputs and outputs on the host

    @property
    def h2d_ms(self) -> float:
        return self.end_h2d - self.start_h2d

    @property
    def compute_ms(self) -> float:
        return self.end_compute - self.start_compute

    @property
    def d2h_ms(self) -> float:
        return self.end_d2h - self.start_d2h

    @property
    def enqueue_ms(self) -> float:
        return self.end_enq - self.start_enq

    @property
    def latency_ms(self) -> float:
        """trtexec's Latency: H2D + GPU compute + D2H of this query, added in float32 in that order
        (``InferenceTime::latency`` in sampleReporting.h)."""
        f32 = np.float32
        return float(f32(f32(f32(self.h2d_ms) + f32(self.compute_ms)) + f32(self.d2h_ms)))

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class Summary:
    """min/max/mean/median/p90/p95/p99 and CV (%) of one metric, in milliseconds."""

    min: float
    max: float
    mean: float
    median: float
    p90: float
    p95: float
    p99: float
    cv: float
    count: int

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """trtexec's findPercentile on values already sorted ascending (nearest rank, no interpolation)."""
    n = len(sorted_values)
    if n == 0:
        return math.inf
    if not 0.0 <= p <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {p}")
    exclude = int(np.float32(np.float32(1.0) - np.float32(p) / np.float32(100.0)) * np.float32(n))
    return float(sorted_values[max(n - 1 - exclude, 0)])


def median(sorted_values: Sequence[float]) -> float:
    n = len(sorted_values)
    if n == 0:
        return math.inf
    m = n // 2
    if n % 2:
        return float(sorted_values[m])
    return float(np.float32((np.float32(sorted_values[m - 1]) + np.float32(sorted_values[m])) / np.float32(2)))


def _f32_sum(values: Iterable[np.float32]) -> np.float32:
    acc = np.float32(0.0)
    for v in values:
        acc = np.float32(acc + v)
    return acc


def summarize(values: Iterable[float]) -> Summary:
    """Summary of one metric exactly as trtexec computes it (float32 throughout)."""
    data = np.sort(np.asarray(list(values), dtype=np.float32))
    n = len(data)
    if n == 0:
        raise ValueError("cannot summarize an empty list of times")
    mean = np.float32(_f32_sum(data) / np.float32(n))
    variance = np.float32(_f32_sum(np.float32(v - mean) * np.float32(v - mean) for v in data) / np.float32(n))
    cv = float(np.float32(np.sqrt(variance) / mean * np.float32(100.0))) if mean != 0 else 0.0
    return Summary(
        min=float(data[0]), max=float(data[-1]), mean=float(mean), median=median(data),
        p90=percentile(data, 90.0), p95=percentile(data, 95.0), p99=percentile(data, 99.0),
        cv=cv, count=n,
    )


@dataclass(frozen=True)
class PerformanceSummary:
    """trtexec's `=== Performance summary ===` block, plus our host latency."""

    queries: int
    throughput_qps: float
    walltime_s: float
    total_gpu_compute_s: float
    latency: Summary  # trtexec's Latency (H2D + compute + D2H)
    enqueue: Summary
    h2d: Summary
    gpu_compute: Summary
    d2h: Summary
    host: Summary | None  # host clock end to end (None for imported trtexec results)
    warnings: tuple[str, ...]

    def to_dict(self) -> dict:
        out = asdict(self)
        out["warnings"] = list(self.warnings)
        return out


def performance_summary(records: Sequence[QueryRecord], unstable_cv: float = UNSTABLE_CV_PERCENT) -> PerformanceSummary:
    if not records:
        raise ValueError("no timed queries")
    # trtexec sorts its trace by H2D start; walltime = the last query's D2H end - the first's H2D start.
    # Throughput and totals are float32 expressions there (printEpilog), so they are here.
    ordered = sorted(records, key=lambda r: r.start_h2d)
    f32, n = np.float32, len(records)
    walltime_ms = f32(ordered[-1].end_d2h - ordered[0].start_h2d)
    gpu = summarize(r.compute_ms for r in records)
    host_values = [r.host_ms for r in records if not math.isnan(r.host_ms)]
    summary = PerformanceSummary(
        queries=n,
        throughput_qps=float(f32(f32(n) / walltime_ms) * f32(1000)) if walltime_ms > 0 else math.inf,
        walltime_s=float(walltime_ms / f32(1000)),
        total_gpu_compute_s=float(f32(f32(gpu.mean) * f32(n)) / f32(1000)),
        latency=summarize(r.latency_ms for r in records),
        enqueue=summarize(r.enqueue_ms for r in records),
        h2d=summarize(r.h2d_ms for r in records),
        gpu_compute=gpu,
        d2h=summarize(r.d2h_ms for r in records),
        host=summarize(host_values) if len(host_values) == len(records) else None,
        warnings=(),
    )
    return PerformanceSummary(**{**summary.__dict__, "warnings": tuple(performance_warnings(summary, unstable_cv))})


def performance_warnings(s: PerformanceSummary, unstable_cv: float = UNSTABLE_CV_PERCENT) -> list[str]:
    """trtexec's printed warnings (printPerformanceReport), worded as trtexec words them."""
    out = []
    if s.enqueue.median > 0.8 * s.gpu_compute.median:
        out.append("Throughput may be bound by Enqueue Time rather than GPU Compute and the GPU may be under-utilized.")
    if s.gpu_compute.median > 0 and s.h2d.median >= s.gpu_compute.median:
        out.append("Throughput may be bound by host-to-device transfers for the inputs rather than GPU Compute "
                   "and the GPU may be under-utilized.")
    if s.gpu_compute.median > 0 and s.d2h.median >= s.gpu_compute.median:
        out.append("Throughput may be bound by device-to-host transfers for the outputs rather than GPU Compute "
                   "and the GPU may be under-utilized.")
    if s.gpu_compute.cv > unstable_cv:
        out.append(f"GPU compute time is unstable, with coefficient of variance = {s.gpu_compute.cv:g}%.")
    return out
