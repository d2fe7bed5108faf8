"""trtexec's statistics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lstminfer.measure.stats import QueryRecord, median, percentile, performance_summary, summarize


def test_nearest_rank_percentiles_by_hand():
    values = [float(v) for v in range(1, 11)]  # 1..10
    # index = N - 1 - int((1 - p/100) * N): p90 -> 10-1-int(0.1*10)=8 -> 9.0 ; p99 -> 9-int(0.1)=9 -> 10.0
    assert percentile(values, 90) == 9.0
    assert percentile(values, 95) == 10.0  # 9 - int(0.5) = 9
    assert percentile(values, 99) == 10.0
    assert percentile(values, 50) == 5.0  # 9 - int(5.0) = 4 -> 5.0 (no interpolation)
    assert percentile(values, 0) == 1.0  # 9 - int(10) = -1, clamped at 0
    assert percentile([], 90) == math.inf
    with pytest.raises(ValueError):
        percentile(values, 101)


def test_float32_rank_arithmetic():
    # float32: 0.9f = 0.89999998, (1 - 0.9f) * 100 = 10.000002 -> exclude 10 -> index 89.
    # float64 would give (1 - 0.9) * 100 = 9.999999999999998 -> exclude 9 -> index 90.
    values = list(range(100))
    assert int((1 - 0.9) * 100) == 9
    assert percentile(values, 90) == 89
    assert percentile(values, 99) == 99  # (1 - 0.99f) * 100 = 0.99999905 -> exclude 0


def test_median_even_and_odd():
    assert median([1.0, 2.0, 3.0]) == 2.0
    assert median([1.0, 2.0, 3.0, 10.0]) == 2.5


def test_summarize_by_hand():
    s = summarize([4.0, 1.0, 3.0, 2.0])
    assert (s.min, s.max, s.mean, s.median, s.count) == (1.0, 4.0, 2.5, 2.5, 4)
    # population std of 1..4 = sqrt(1.25); CV = 1.118034 / 2.5 * 100
    assert s.cv == pytest.approx(math.sqrt(1.25) / 2.5 * 100, rel=1e-6)
    assert (s.p90, s.p95, s.p99) == (4.0, 4.0, 4.0)


def test_mean_is_accumulated_in_float32():
    values = [0.1] * 1000
    expected = np.float32(0)
    for _ in values:
        expected = np.float32(expected + np.float32(0.1))
    assert summarize(values).mean == float(np.float32(expected / np.float32(1000)))


def _query(t0: float, h2d: float, compute: float, d2h: float, enq: float) -> QueryRecord:
    return QueryRecord(start_enq=t0 + h2d, end_enq=t0 + h2d + enq, start_h2d=t0, end_h2d=t0 + h2d,
                       start_compute=t0 + h2d, end_compute=t0 + h2d + compute,
                       start_d2h=t0 + h2d + compute, end_d2h=t0 + h2d + compute + d2h,
                       host_ms=h2d + compute + d2h + 0.01)


def test_performance_summary_by_hand():
    records = [_query(t0=2.0 * i, h2d=0.25, compute=1.0 + 0.5 * (i % 2), d2h=0.25, enq=0.5) for i in range(4)]
    s = performance_summary(records)
    # walltime: first H2D start (0) to last D2H end (6 + 0.25 + 1.5 + 0.25 = 8) -> 8 ms; 4 queries
    assert s.walltime_s == pytest.approx(0.008)
    assert s.throughput_qps == pytest.approx(500.0)
    assert s.gpu_compute.mean == 1.25 and s.gpu_compute.median == 1.25
    assert s.latency.min == 1.5 and s.latency.max == 2.0  # per query H2D + compute + D2H
    assert s.total_gpu_compute_s == pytest.approx(0.005)
    assert s.host.median == pytest.approx(1.76, abs=1e-6)
    # CV of compute = 0.25 / 1.25 = 20 % > 2.5 % -> unstable; enqueue 0.5 < 0.8 * 1.25
    assert any("unstable" in w and "20%" in w for w in s.warnings)
    assert not any("Enqueue" in w for w in s.warnings)


def test_warnings_enqueue_and_transfer_bound():
    records = [_query(t0=float(i), h2d=0.5, compute=0.4, d2h=0.5, enq=0.39) for i in range(5)]
    text = " ".join(performance_summary(records).warnings)
    assert "bound by Enqueue Time" in text  # 0.39 > 0.8 * 0.4
    assert "host-to-device" in text and "device-to-host" in text
    assert "unstable" not in text
