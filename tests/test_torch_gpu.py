"""PyTorch on CUDA: eager and CUDA-graph runners verified against float64, timed with CUDA events."""

from __future__ import annotations

import pytest

from lstminfer.backends.base import BackendChoice
from lstminfer.measure.bench import BenchConfig
from lstminfer.measure.records import Point, from_dict
from lstminfer.measure.records import verdicts as keyed_verdicts
from lstminfer.measure.run import measure
from lstminfer.measure.verify import References
from lstminfer.model.base import Model
from lstminfer.model.spec import build_module, preset

pytestmark = pytest.mark.gpu

CUDA = [BackendChoice("torch", "cuda", True, "", ""), BackendChoice("torch-graph", "cuda", True, "", "")]
FUSED = [BackendChoice("fused", "cuda", True, "", ""), BackendChoice("fused-graph", "cuda", True, "", "")]


def verify(model, choices, points, precision="fp32", options=None, onnx_reference=False):
    targets = [Point(c.name, c.device, precision) for c in choices]
    records = measure(model, targets, References(model), points, [], BenchConfig(), options).verify
    return [r.to_dict() for r in records]


def verdicts(records):
    return {key.label: v for key, v in keyed_verdicts(from_dict(r, "verify") for r in records).items()}


def bench(model, choices, config):
    targets = [Point(c.name, c.device, config.precision) for c in choices]
    records = measure(model, targets, References(model), [], [(config.seq_len, config.batch)], config).bench
    return [r.to_dict() for r in records]


def _seed():
    p = preset("seed")
    return Model("seed", p.spec, build_module(p.spec), seq_len=p.seq_len, batch=p.batch)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_cuda_runners_verify(precision):
    records = verify(_seed(), CUDA, [(1, 3), (64, 3), (5, 4)], precision=precision, onnx_reference=False)
    v = verdicts(records)
    assert v == {"torch[cuda]": "passed", "torch-graph[cuda]": "passed"}, v
    if precision == "fp32":
        assert all(r["tf32"] is False for r in records)
        assert max(r["max_abs_err"] for r in records) < 1e-5  # IEEE fp32, not TF32 (~1e-3)


def test_tf32_is_recorded_and_looser():
    records = verify(_seed(), CUDA[:1], [(64, 3)], options={"tf32": True}, onnx_reference=False)
    assert all(r["tf32"] is True and r["atol"] == 5e-3 for r in records)


def test_cuda_bench_uses_events():
    config = BenchConfig(warmup_ms=50, duration_s=0.2, iterations=20, seq_len=1, batch=3)
    records = bench(_seed(), CUDA, config)
    for r in records:
        assert r["clock"] == "cuda-events" and r["tf32"] is False
        assert 0 < r["gpu_compute_ms"]["median"] <= r["latency_ms"]["median"]
        assert r["h2d_ms"]["median"] > 0 and r["d2h_ms"]["median"] > 0


def test_fused_runners_verify_through_the_runner_interface():
    """Runner.infer at several shapes: catches copies or reads racing the kernel on another stream."""
    pytest.importorskip("triton")
    records = verify(_seed(), FUSED, [(1, 3), (1, 5), (64, 3), (1, 3)], onnx_reference=False)
    v = verdicts(records)
    assert v == {"fused[cuda]": "passed", "fused-graph[cuda]": "passed"}, v
