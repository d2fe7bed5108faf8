"""onnxruntime --cpu-mode throughput: the batch cut into groups of at most 4 rows, run at the same time on
sessions of their own with the intra-op threads divided among them, and joined back. Checked against the
float64 reference and latency mode, with states, ragged batches, the plan read back, and a file it refuses."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lstminfer.backends.batch import batch_axes, group_sizes, join_rows, split_rows
from lstminfer.backends.onnxrt import OrtCpuRunner, physical_cores
from lstminfer.errors import UserError
from lstminfer.measure.bench import BenchConfig
from lstminfer.measure.records import Point
from lstminfer.measure.run import measure
from lstminfer.measure.verify import TOLERANCES, References
from lstminfer.model.base import Model
from lstminfer.model.file import load_model_file
from lstminfer.model.spec import ModelSpec, build_module
from lstminfer.onnx.export import export_model

FP32 = TOLERANCES["fp32"]


def _model(tmp_path, kind: str = "lstm", batch_first: bool = True, hidden: int = 6) -> Model:
    """Speech's structure (2 bidirectional layers, states in and out) at a size that runs in milliseconds."""
    spec = ModelSpec(kind, 4, hidden, 2, bidirectional=True, batch_first=batch_first)
    model = Model(f"small-{kind}", spec, build_module(spec), seq_len=5, batch=8)
    export_model(model, tmp_path / f"{kind}-{batch_first}.onnx")
    return model


def _run(model: Model, inputs: dict, **options) -> tuple[dict, dict]:
    """Outputs of one query and the facts recorded at its shape, from a fresh runner."""
    runner = OrtCpuRunner(model, **options)
    first = model.input_names[0]
    axis = batch_axes(model, [first])[first]
    seq_len, batch = inputs[first].shape[1 - axis], inputs[first].shape[axis]
    runner.prepare([(seq_len, batch)])
    try:
        return runner.infer(inputs), runner.describe_at(seq_len, batch)
    finally:
        runner.close()


@pytest.mark.parametrize(("kind", "batch_first", "batch", "rows"), [
    ("lstm", True, 8, [4, 4]),
    ("lstm", False, 7, [4, 3]),  # not a multiple of the group size
    ("gru", False, 8, [4, 4]),
])
def test_throughput_equals_latency_and_the_float64_reference(tmp_path, kind, batch_first, batch, rows):
    model = _model(tmp_path, kind, batch_first)
    inputs = model.make_inputs(5, batch, np.random.default_rng(batch))
    assert set(model.output_names) > {"output"}  # the states come back too: hn (and cn), batch on axis 1
    fast, facts = _run(model, inputs, cpu_mode="throughput", threads=2)
    latency, _ = _run(model, inputs, cpu_mode="latency", threads=2)
    assert facts["row_groups"] == rows and facts["cpu_mode"] == "throughput"
    want = model.reference(inputs)
    for name in model.output_names:
        assert fast[name].shape == want[name].shape
        np.testing.assert_allclose(fast[name], want[name], atol=FP32.atol, rtol=FP32.rtol)
        np.testing.assert_allclose(fast[name], latency[name], atol=1e-6, rtol=1e-5)


def test_batch_of_four_or_fewer_is_one_group_on_the_latency_session(tmp_path):
    model = _model(tmp_path)
    runner = OrtCpuRunner(model, cpu_mode="throughput", threads=2)
    runner.prepare([(5, 4), (5, 3)])
    assert runner.group_sessions == {}  # nothing but the one session was made
    for batch in (4, 3, 1):
        inputs = model.make_inputs(5, batch, np.random.default_rng(batch))
        latency, _ = _run(model, inputs, cpu_mode="latency", threads=2)
        out = runner.infer(inputs)
        for name in model.output_names:
            np.testing.assert_array_equal(out[name], latency[name])  # the same session config: bit for bit
        facts = runner.describe_at(5, batch)
        assert facts["row_groups"] == [batch] and facts["group_threads"] == [2]
    runner.close()


@pytest.mark.parametrize(("threads", "batch", "rows", "group_threads"), [
    (3, 8, [4, 4], [2, 1]),  # the threads add up to --threads, the remainder to the first group
    (4, 9, [3, 3, 3], [2, 1, 1]),  # ceil(9 / 4) = 3 groups, rows as even as they go
    (2, 13, [7, 6], [1, 1]),  # more groups than threads: one group per thread (one thread has nothing to split)
    (8, 16, [4, 4, 4, 4], [2, 2, 2, 2]),
])
def test_threads_divided_among_the_groups_read_back_from_each_session(tmp_path, threads, batch, rows, group_threads):
    model = _model(tmp_path)
    runner = OrtCpuRunner(model, cpu_mode="throughput", threads=threads)
    runner.prepare([(2, batch)])  # sessions for the points to serve are made here, outside any timing
    facts = runner.describe_at(2, batch)
    assert facts["row_groups"] == rows and facts["threads"] == threads
    assert facts["group_threads"] == group_threads  # read back from the sessions, not the plan
    assert [s.get_session_options().intra_op_num_threads
            for s in runner.group_sessions[tuple(group_threads)]] == group_threads
    inputs = model.make_inputs(2, batch, np.random.default_rng(0))
    want = model.reference(inputs)
    out = runner.infer(inputs)
    for name in model.output_names:
        np.testing.assert_allclose(out[name], want[name], atol=FP32.atol, rtol=FP32.rtol)
    runner.close()
    assert runner.pool is None and runner.group_sessions == {}


def test_default_threads_are_ort_default_divided(tmp_path):
    runner = OrtCpuRunner(_model(tmp_path), cpu_mode="throughput")
    runner.prepare([(2, 8)])
    cores = physical_cores()
    facts = runner.describe_at(2, 8)
    assert facts["threads"] == cores and sum(facts["group_threads"]) == cores
    assert facts["row_groups"] == ([4, 4] if cores > 1 else [8])
    runner.close()


def test_verify_records_pass_with_the_plan(tmp_path):
    """What `lstminfer verify --backends onnxruntime --cpu-mode throughput` records."""
    model = _model(tmp_path, "lstm", batch_first=False)
    target = Point("onnxruntime", "cpu", "fp32")
    result = measure(model, [target], References(model), [(6, 8), (1, 7), (4, 2)], [], BenchConfig(),
                     {"threads": 2, "cpu_mode": "throughput"})
    records = [r.to_dict() for r in result.verify]
    assert records and all(r["passed"] for r in records), records
    groups = {(r["seq_len"], r["batch"]): r["row_groups"] for r in records}
    assert groups == {(6, 8): [4, 4], (1, 7): [4, 3], (4, 2): [2]}
    assert {r["cpu_mode"] for r in records} == {"throughput"}


def test_cli_bench_records_the_mode_groups_and_threads(cli, tmp_path):
    code, _, err = cli("bench", "--kind", "lstm", "--input-size", "4", "--hidden-size", "6", "--num-layers", "2",
                       "--bidirectional", "--seq-len", "3", "--batch", "8", "--backends", "onnxruntime",
                       "--cpu-mode", "throughput", "--threads", "2", "--out", tmp_path, "--json", tmp_path / "b.json",
                       "--warmup", "0", "--duration", "0.02", "--iterations", "3")
    assert code == 0, err
    (record,) = json.loads((tmp_path / "b.json").read_text())
    assert record["cpu_mode"] == "throughput" and record["threads"] == 2
    assert record["row_groups"] == [4, 4] and record["group_threads"] == [1, 1]


def test_a_file_without_known_batch_axes_gets_a_one_line_reason(tmp_path):
    path = _model(tmp_path).onnx_path
    model = load_model_file(path)  # the same graph, but as a user's file: no spec, so no known batch axes
    runner = OrtCpuRunner(model, cpu_mode="throughput")
    ok, why = runner.supports()
    assert not ok
    assert why == ("cpu mode throughput cuts the batch, and the batch axis of every input and output is known "
                   "only for lstminfer's own models, not this one; use --cpu-mode latency")
    with pytest.raises(UserError, match=r"^backend onnxruntime cannot run this model: cpu mode throughput cuts"):
        runner.prepare()
    assert OrtCpuRunner(model, cpu_mode="latency").supports() == (True, "")


def test_cli_on_a_file_says_why_in_one_line_and_exits_2(cli, tmp_path):
    path = _model(tmp_path).onnx_path
    code, _, err = cli("verify", path, "--backends", "onnxruntime", "--cpu-mode", "throughput", "--out", tmp_path / "o")
    assert code == 2
    assert err.strip().splitlines()[-1] == (
        "lstminfer: error: nothing was verified: onnxruntime[cpu]: cpu mode throughput cuts the batch, and the "
        "batch axis of every input and output is known only for lstminfer's own models, not this one; use "
        "--cpu-mode latency")


def test_an_unknown_cpu_mode_is_refused(tmp_path):
    ok, why = OrtCpuRunner(_model(tmp_path), cpu_mode="fastest").supports()
    assert (ok, why) == (False, "cpu mode 'fastest' is not one of latency, throughput")


def test_split_and_join_rows_round_trip_on_every_batch_axis():
    spec = ModelSpec("lstm", 3, 2, 1, batch_first=True)
    model = Model("m", spec, build_module(spec))
    axes = batch_axes(model, ["input", "h0", "c0", "output", "hn", "cn"])
    assert axes == {"input": 0, "output": 0, "h0": 1, "c0": 1, "hn": 1, "cn": 1}
    assert batch_axes(model, ["input", "not-a-tensor-of-the-spec"]) is None
    rng = np.random.default_rng(0)
    arrays = {"input": rng.standard_normal((7, 2, 3)), "h0": rng.standard_normal((1, 7, 2))}
    parts = split_rows(arrays, axes, group_sizes(7, 2))
    assert [p["input"].shape[0] for p in parts] == [4, 3] and [p["h0"].shape[1] for p in parts] == [4, 3]
    assert all(p["h0"].flags.c_contiguous for p in parts)  # ORT and OpenVINO take contiguous buffers
    joined = join_rows(parts, axes)
    for name, array in arrays.items():
        np.testing.assert_array_equal(joined[name], array)
    assert group_sizes(9, 3) == [3, 3, 3] and group_sizes(2, 5) == [1, 1] and group_sizes(5, 1) == [5]
