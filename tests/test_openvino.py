"""The OpenVINO backend: fp32 really is f32, bf16/fp16 within their tolerances, one compiled model per shape,
throughput mode's slices, and what a user sees when OpenVINO is missing or cannot read the file."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from lstminfer.backends.base import list_backends, select_backends
from lstminfer.errors import BackendUnavailable
from lstminfer.measure.bench import BenchConfig
from lstminfer.measure.records import Point
from lstminfer.measure.run import measure
from lstminfer.measure.verify import TOLERANCES, References
from lstminfer.model.base import Model
from lstminfer.model.spec import ModelSpec, build_module, preset
from lstminfer.onnx.export import export_model

ov = pytest.importorskip("openvino", reason='needs OpenVINO (pip install "lstminfer[cpu]")')

from lstminfer.backends import openvino as ov_backend  # noqa: E402
from lstminfer.backends.openvino import OpenVinoRunner  # noqa: E402

CAPABILITIES = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
# Small points keep the presets' real weights (speech: 2 x bi-LSTM 80->512) but not their long sequences.
POINTS = [(1, 2), (6, 3)]


def _preset_model(tmp_path, name: str) -> Model:
    p = preset(name)
    model = Model(name, p.spec, build_module(p.spec), seq_len=4, batch=2)
    export_model(model, tmp_path / f"{name}.onnx")
    return model


def _small_model(tmp_path, kind: str = "lstm", batch_first: bool = False) -> Model:
    spec = ModelSpec(kind, 3, 5, 2, bidirectional=True, batch_first=batch_first)
    model = Model("small", spec, build_module(spec), seq_len=4, batch=2)
    export_model(model, tmp_path / "m.onnx")
    return model


def verify(model: Model, points, precision: str = "fp32", **options) -> list[dict]:
    """What `lstminfer verify --backends openvino` records, as the dicts written to results.json."""
    target = Point("openvino", "cpu", precision)
    records = measure(model, [target], References(model), points, [], BenchConfig(), options).verify
    return [r.to_dict() for r in records]


def _errors(records):
    return max(r["max_abs_err"] for r in records)


@pytest.mark.parametrize("name", ["seed", "speech", "timeseries"])
def test_presets_pass_verify_at_fp32(tmp_path, name):
    records = verify(_preset_model(tmp_path, name), POINTS)
    assert records and all(r["passed"] for r in records), [r for r in records if not r["passed"]]
    assert {r["inference_precision"] for r in records} == {"f32"}  # read back from the compiled model
    assert _errors(records) < TOLERANCES["fp32"].atol


@pytest.mark.skipif("BF16" not in CAPABILITIES, reason="this CPU has no bf16 (OpenVINO computes f32 anyway)")
def test_fp32_tolerance_catches_openvino_default_bf16(tmp_path, monkeypatch):
    """What the f32 hint prevents: compiled with the CPU's default bf16, fp32 verification fails."""
    monkeypatch.setitem(ov_backend.HINTS, "fp32", "bf16")
    records = verify(_preset_model(tmp_path, "seed"), POINTS)
    assert {r["inference_precision"] for r in records} == {"bf16"}
    assert not all(r["passed"] for r in records)


@pytest.mark.parametrize(("precision", "hint", "capability"), [("bf16", "bf16", "BF16"), ("fp16", "f16", "FP16")])
def test_reduced_precision_within_its_tolerance(tmp_path, precision, hint, capability):
    if capability not in CAPABILITIES:
        pytest.skip(f"this CPU has no {precision} ({', '.join(CAPABILITIES)})")
    records = verify(_preset_model(tmp_path, "timeseries"), POINTS, precision=precision)
    assert all(r["passed"] for r in records)
    assert {r["inference_precision"] for r in records} == {hint}
    assert _errors(records) > TOLERANCES["fp32"].atol  # the reduced precision really ran


def test_precision_the_cpu_lacks_is_a_skip(tmp_path, monkeypatch):
    monkeypatch.setattr(ov.Core, "get_property", lambda self, device, name: ["FP32", "INT8"])
    runner = OpenVinoRunner(_small_model(tmp_path), precision="bf16")
    ok, why = runner.supports()
    assert not ok and "no bf16" in why


def test_one_compiled_model_per_shape_reused_across_shape_changes(tmp_path):
    model = _small_model(tmp_path, batch_first=True)
    rng = np.random.default_rng(3)
    runner = OpenVinoRunner(model)
    runner.prepare([(5, 2), (1, 2)])  # the points it will serve: compiled here, outside any timing
    assert runner.describe()["compiled_models"] == 2
    compiles = []
    compile_model = runner.core.compile_model
    runner.core.compile_model = lambda m, *a, **k: compiles.append(m) or compile_model(m, *a, **k)
    shapes = [(1, 2), (5, 2), (1, 2), (5, 3), (5, 2), (1, 2), (5, 3)]
    for seq_len, batch in shapes:
        inputs = model.make_inputs(seq_len, batch, rng)
        outputs = runner.infer(inputs)
        for name, want in model.reference(inputs).items():
            np.testing.assert_allclose(outputs[name], want, atol=1e-4, rtol=1e-3)
    assert len(compiles) == 1  # only (5, 3) was new: compiled once, then reused
    assert compiles[0].is_dynamic() is False  # static shapes, the fast path
    assert runner.describe()["compiled_models"] == 3
    runner.close()


def test_throughput_mode_splits_the_batch_over_requests_in_flight(tmp_path):
    model = _small_model(tmp_path, kind="gru", batch_first=True)
    runner = OpenVinoRunner(model, cpu_mode="throughput")
    runner.prepare()
    facts = runner.describe()
    assert facts["cpu_mode"] == "throughput" and facts["inference_precision"] == "f32"
    inputs = model.make_inputs(7, 5, np.random.default_rng(1))
    outputs = runner.infer(inputs)
    for name, want in model.reference(inputs).items():
        np.testing.assert_allclose(outputs[name], want, atol=1e-4, rtol=1e-3)
    requests = runner.describe()["requests_in_flight"]
    assert requests == min(facts["optimal_requests"], 5)
    if facts["num_streams"] > 1:  # one stream per core here: each slice on its own stream
        assert requests > 1
    runner.close()


def test_absent_openvino_is_listed_with_its_install_line(monkeypatch, cli, tmp_path):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` raises ImportError
    row = next(c for c in list_backends() if c.name == "openvino")
    assert not row.available and row.reason == "openvino is not installed"
    assert 'pip install "lstminfer[cpu]"' in row.install_hint
    with pytest.raises(BackendUnavailable, match=r"openvino\[cpu\] is unavailable: openvino is not installed; pip"):
        select_backends(["openvino"])
    code, out, _ = cli("backends", "--json", tmp_path / "b.json")
    assert code == 0 and "lstminfer[cpu]" in (tmp_path / "b.json").read_text()


def test_default_selection_includes_openvino_when_installed(tmp_path):
    model = _small_model(tmp_path)
    assert "openvino" in [c.name for c in select_backends(None, "cpu", model)]


@pytest.mark.parametrize(("content", "reason"), [
    (b"not an onnx file", "Model can't be parsed"),
    (None, "No conversion rule found for operations: lstminfer.test.Nope"),
])
def test_file_openvino_cannot_read_gets_a_one_line_reason(tmp_path, content, reason):
    path = tmp_path / "bad.onnx"
    if content is None:  # valid ONNX with an operator OpenVINO has no conversion for
        import onnx
        from onnx import TensorProto, helper

        x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["s", "b", 3])
        y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["s", "b", 3])
        node = helper.make_node("Nope", ["input"], ["output"], domain="lstminfer.test")
        graph = helper.make_graph([node], "g", [x], [y])
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                          helper.make_opsetid("lstminfer.test", 1)]), path)
    else:
        path.write_bytes(content)
    spec = ModelSpec("lstm", 3, 3, 1)
    model = Model("bad", spec, build_module(spec), onnx_path=path, seq_len=2, batch=1)
    records = verify(model, [(2, 1)])
    assert len(records) == 1 and records[0]["passed"] is False
    error = records[0]["error"]
    assert error == f"OpenVINO cannot read {path}: {reason}"
    assert "\n" not in error


def test_run_verifies_and_benchmarks_openvino_with_its_facts(cli, tmp_path):
    out = tmp_path / "out"
    code, _, err = cli("run", "--kind", "gru", "--input-size", "4", "--hidden-size", "6", "--batch-first",
                       "--seq-len", "5", "--batch", "3", "--points", "1x3,5x3,9x2", "--device", "cpu",
                       "--cpu-mode", "throughput", "--out", out, "--warmup", "0", "--duration", "0.05",
                       "--iterations", "3")
    assert code == 0, err
    results = json.loads((out / "results.json").read_text())
    checked = [r for r in results["verify"] if r["backend"] == "openvino"]
    assert checked and all(r["passed"] for r in checked)
    assert {r["inference_precision"] for r in checked} == {"f32"}
    (timed,) = [r for r in results["bench"] if r["backend"] == "openvino"]
    assert timed["latency_ms"]["median"] > 0 and timed["cpu_mode"] == "throughput"
    assert timed["compiled_models"] >= 2  # 5x3 (compiled for the bench, sliced) and the verify points


def test_a_users_file_with_integer_inputs_verifies(cli, tmp_path):
    from _recurrent_files import export_vad

    onnx_path, _, _ = export_vad(tmp_path)  # int64 `sr`, a scalar `gain`, an If node, state [2, batch, H]
    code, _, err = cli("verify", onnx_path, "--backends", "openvino", "--input", "sr=16000", "--points", "16x1,9x3",
                       "--out", tmp_path / "out", "--json", tmp_path / "v.json")
    assert code == 0, err
    records = json.loads((tmp_path / "v.json").read_text())
    assert records and all(r["passed"] and r["inference_precision"] == "f32" for r in records)
