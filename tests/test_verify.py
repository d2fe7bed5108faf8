"""Verification: the comparison rule by hand, and a wrong backend is caught."""

from __future__ import annotations

import numpy as np
import pytest

from lstminfer.backends import base
from lstminfer.backends.base import BackendChoice
from lstminfer.backends.pytorch import TorchRunner
from lstminfer.errors import UserError
from lstminfer.measure.bench import BenchConfig
from lstminfer.measure.records import Point, Skip, VerifyRecord, verdicts
from lstminfer.measure.run import measure
from lstminfer.measure.verify import (
    REL_FLOOR,
    References,
    Tolerance,
    affordable_points,
    check_onnx_reference,
    compare,
    oracle_points,
    parse_points,
)
from lstminfer.model.base import Model, default_points
from lstminfer.model.spec import ModelSpec, build_module
from lstminfer.onnx.export import export_model


def test_compare_fails_only_when_both_tolerances_are_exceeded():
    tol = Tolerance(atol=0.1, rtol=0.1)
    ref = np.array([10.0, 0.0])
    assert compare(np.array([10.5, 0.0]), ref, tol).passed  # abs 0.5 > atol but rel 0.05 < rtol
    assert compare(np.array([10.0, 0.09]), ref, tol).passed  # rel huge but abs 0.09 < atol
    r = compare(np.array([12.0, 0.0]), ref, tol)  # abs 2 > 0.1 and 2 > 0.1 * 10
    assert not r.passed and r.max_abs_err == 2.0 and r.max_rel_err == pytest.approx(0.2)


def test_relative_error_has_a_floor():
    r = compare(np.array([1e-6]), np.array([0.0]), Tolerance(1, 1))
    assert r.max_rel_err == pytest.approx(1e-6 / REL_FLOOR)


def test_nan_must_match_nan():
    tol = Tolerance(1e-3, 1e-3)
    assert compare(np.array([np.nan, 1.0]), np.array([np.nan, 1.0]), tol).passed
    r = compare(np.array([np.nan, 1.0]), np.array([0.0, 1.0]), tol)
    assert not r.passed and "NaN" in r.error
    assert not compare(np.array([1.0]), np.array([1.0, 2.0]), tol).passed


def test_default_points_include_seq1_the_model_shape_and_a_long_one():
    points = default_points(1, 3)
    assert (1, 3) in points and max(s for s, _ in points) >= 64 and len({b for _, b in points}) == 2
    assert parse_points("1x3, 64x2") == [(1, 3), (64, 2)]
    with pytest.raises(UserError, match="is not SEQxBATCH"):
        parse_points("1by3")
    with pytest.raises(UserError, match="positive sizes"):
        parse_points("0x3")


class _NoisyRunner(TorchRunner):
    """A backend with a bug: adds 1e-3 to every output."""

    name = "noisy"
    devices = ("cpu",)

    def download_impl(self, device_outputs):
        return {k: v + 1e-3 for k, v in super().download_impl(device_outputs).items()}


@pytest.fixture
def noisy_backend(monkeypatch):
    monkeypatch.setitem(base.BACKENDS, "noisy", f"{__name__}:_NoisyRunner")
    return BackendChoice("noisy", "cpu", True, "", "")


def verify(model, choices, points, precision="fp32", seed=0, onnx_reference=True):
    """What `lstminfer verify` measures: the onnx.reference row, then every backend through one lifetime."""
    references = References(model, seed)
    records = check_onnx_reference(model, references, points) if onnx_reference else []
    targets = [Point(c.name, c.device, precision) for c in choices]
    return records + measure(model, targets, references, points, [], BenchConfig(seed=seed)).verify


def _small_model(tmp_path, kind="lstm", with_state=True):
    spec = ModelSpec(kind, 3, 5, 2, bidirectional=True)
    model = Model("small", spec, build_module(spec), seq_len=4, batch=2, with_state=with_state)
    export_model(model, tmp_path / "m.onnx")
    return model


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_every_backend_against_float64(tmp_path, noisy_backend, kind):
    model = _small_model(tmp_path, kind)
    choices = [BackendChoice("torch", "cpu", True, "", ""), BackendChoice("onnxruntime", "cpu", True, "", ""),
               noisy_backend]
    records = verify(model, choices, [(1, 2), (9, 3)], seed=5)
    v = {key.label: verdict for key, verdict in verdicts(records).items()}
    assert v["torch[cpu]"] == "passed" and v["onnxruntime[cpu]"] == "passed" and v["onnx-reference[cpu]"] == "passed"
    assert v["noisy[cpu]"] == "FAILED"
    outputs = {r.output for r in records if r.point.backend == "torch"}
    assert outputs == set(model.output_names)
    for r in records:
        for key in ("backend", "device", "precision", "seq_len", "batch", "output", "max_abs_err", "max_rel_err",
                    "passed"):
            assert key in r.to_dict()
    noisy = [r for r in records if r.point.backend == "noisy"]
    assert all(r.max_abs_err == pytest.approx(1e-3, rel=1e-2) for r in noisy)
    oracle = [r for r in records if r.point.backend == "onnx-reference"]
    assert max(r.max_abs_err for r in oracle) < 1e-12


def test_unsupported_precision_is_a_skip_with_reason(tmp_path):
    model = _small_model(tmp_path)
    records = verify(model, [BackendChoice("onnxruntime", "cpu", True, "", "")], [(2, 2)], precision="bf16",
                     onnx_reference=False)
    assert isinstance(records[0], Skip) and records[0].to_dict()["passed"] is None
    assert "precision bf16 not supported" in records[0].reason


def test_bf16_torch_cpu_within_bf16_tolerance(tmp_path):
    model = _small_model(tmp_path)
    records = verify(model, [BackendChoice("torch", "cpu", True, "", "")], [(3, 2)], precision="bf16",
                     onnx_reference=False)
    assert all(isinstance(r, VerifyRecord) and r.passed for r in records)
    assert max(r.max_abs_err for r in records) > 1e-4  # bf16 really ran (not fp32)


def test_long_default_points_are_cut_to_the_reference_budget_and_said():
    spec = ModelSpec("lstm", 80, 512, 2, bidirectional=True, batch_first=True)  # the speech preset's sizes
    model = Model("speech", spec, None, seq_len=200, batch=8)
    points, notes = affordable_points(model, default_points(200, 8))
    assert points == [(1, 8), (200, 1)]  # 200x8 alone is 14e9 multiply-adds: ~12 s of float64 here
    assert len(notes) == 1 and "200x8, 1600x8, 200x10 reduced" in notes[0] and "--points" in notes[0]
    tiny = Model("tiny", ModelSpec("lstm", 3, 5, 1), None, seq_len=4, batch=2)
    assert affordable_points(tiny, default_points(4, 2)) == (default_points(4, 2), [])


def test_the_oracle_row_leaves_out_points_it_would_be_slowest_at_and_says_so():
    spec = ModelSpec("lstm", 80, 512, 2, bidirectional=True, batch_first=True)
    model = Model("speech", spec, None, seq_len=200, batch=8)
    points, notes = oracle_points(model, [(1, 8), (200, 1)])
    assert points == [(1, 8)] and len(notes) == 1 and "leaves out 200x1" in notes[0]
    assert oracle_points(model, [(200, 1), (300, 1)])[0] == [(200, 1)]  # never empty: the cheapest stays
    tiny = Model("tiny", ModelSpec("lstm", 3, 5, 1), None, seq_len=4, batch=2)
    assert oracle_points(tiny, default_points(4, 2)) == (default_points(4, 2), [])
