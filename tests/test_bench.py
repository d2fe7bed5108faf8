"""The timing harness: trtexec's procedure on a fake clock-free backend and on torch CPU."""

from __future__ import annotations

import time

import numpy as np
import pytest

from lstminfer.backends import base
from lstminfer.backends.base import BackendChoice, Runner
from lstminfer.errors import UserError
from lstminfer.measure.bench import BenchConfig, time_queries
from lstminfer.measure.records import Point, speedups
from lstminfer.measure.run import measure
from lstminfer.measure.verify import References
from lstminfer.model.base import Model
from lstminfer.model.spec import ModelSpec, build_module


class _SleepRunner(Runner):
    """Computes nothing; each stage sleeps a known time, so the stamps can be checked."""

    name = "sleep"

    def upload_impl(self, inputs):
        time.sleep(0.001)
        return inputs

    def execute_impl(self, device_inputs):
        time.sleep(0.004)
        return {"output": np.zeros(1, np.float32)}

    def download_impl(self, device_outputs):
        time.sleep(0.001)
        return device_outputs


def _model():
    spec = ModelSpec("lstm", 3, 4, 1)
    return Model("tiny", spec, build_module(spec), seq_len=2, batch=1)


def test_warmup_duration_and_iterations():
    runner = _SleepRunner(_model())
    runner.prepare()
    config = BenchConfig(warmup_ms=20, duration_s=0.05, iterations=3)
    t0 = time.perf_counter()
    records = time_queries(runner, {"input": np.zeros(1)}, config)
    elapsed = time.perf_counter() - t0
    assert elapsed >= 0.07  # warm-up + duration
    assert records[0].start_h2d >= 20.0 - 1e-6  # queries starting in the 20 ms warm-up were dropped
    assert len(records) >= 3
    for r in records:
        # sleeps last at least as long as asked (a loaded machine only makes them longer)
        assert r.h2d_ms >= 0.9 and r.compute_ms >= 3.9 and r.d2h_ms >= 0.9
        assert r.latency_ms == pytest.approx(r.h2d_ms + r.compute_ms + r.d2h_ms)
        assert r.host_ms >= r.latency_ms - 1e-6
        assert r.enqueue_ms >= 3.9
    # queries do not overlap: each starts after the previous one ended
    assert all(b.start_h2d >= a.end_d2h for a, b in zip(records, records[1:]))


def test_iterations_win_over_a_short_duration():
    runner = _SleepRunner(_model())
    records = time_queries(runner, {}, BenchConfig(warmup_ms=0, duration_s=0, iterations=7))
    assert len(records) == 7


def test_no_data_transfers_skips_copies():
    runner = _SleepRunner(_model())
    records = time_queries(runner, {}, BenchConfig(warmup_ms=0, duration_s=0, iterations=4, no_data_transfers=True))
    assert all(r.h2d_ms < 0.5 and r.d2h_ms < 0.5 for r in records)


def bench(model, choices, config):
    """What `lstminfer bench` measures: every backend at the config's shape, one runner lifetime each."""
    targets = [Point(c.name, c.device, config.precision) for c in choices]
    return measure(model, targets, References(model, config.seed), [], [(config.seq_len, config.batch)],
                   config).bench


def test_bench_records_and_comparison(monkeypatch):
    monkeypatch.setitem(base.BACKENDS, "sleep", f"{__name__}:_SleepRunner")
    model = _model()
    config = BenchConfig(warmup_ms=0, duration_s=0.02, iterations=5, seq_len=2, batch=1)
    choices = [BackendChoice("torch", "cpu", True, "", ""), BackendChoice("sleep", "cpu", True, "", "")]
    records = bench(model, choices, config)
    for r in (rec.to_dict() for rec in records):
        for key in ("backend", "device", "precision", "seq_len", "batch", "throughput_qps", "latency_ms", "times_ms"):
            assert key in r
        lat = r["latency_ms"]
        assert set(lat) >= {"min", "max", "mean", "median", "p90", "p95", "p99"}
        assert lat["min"] <= lat["median"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert len(r["times_ms"]) == r["queries"] >= 5
        assert lat["min"] == pytest.approx(min(r["times_ms"]), rel=1e-6)
        assert r["throughput_qps"] == pytest.approx(r["queries"] / r["walltime_s"])
    speedup = {point.backend: value for point, value in speedups(records).items()}
    assert speedup["torch"] == 1.0
    expected = records[0].latency_ms.median / records[1].latency_ms.median
    assert speedup["sleep"] == pytest.approx(expected)


def test_bad_config():
    with pytest.raises(UserError, match="--iterations must be a positive integer"):
        BenchConfig(iterations=0)
    with pytest.raises(UserError, match="--duration must be a finite number"):
        BenchConfig(duration_s=float("nan"))  # NaN >= 0 is False but so is NaN < 0: it used to hang the loop
    with pytest.raises(UserError, match="--warmup must be a finite number"):
        BenchConfig(warmup_ms=float("inf"))
    with pytest.raises(UserError, match="--seq-len and --batch must be positive"):
        BenchConfig(seq_len=0)
