"""Model repositories, the stream store and the Python-backend model's logic, without a server.

Configs are checked by Triton's own ModelConfig protobuf (tritonclient ships it); the batch-major ONNX
wrapper and the Handler are checked against float64 PyTorch.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from lstminfer.errors import UserError
from lstminfer.model.base import Model
from lstminfer.model.spec import ModelSpec, build_module, preset
from lstminfer.serve import repository as repo
from lstminfer.serve.pymodel import (
    Handler,
    Profile,
    RequestError,
    StreamChunk,
    bucket_for,
    bucket_sizes,
    process_facts,
)
from lstminfer.serve.state import StreamStore, UnknownStream

needs_tritonclient = pytest.mark.skipif(importlib.util.find_spec("tritonclient") is None,
                                        reason="needs tritonclient (pip install 'lstminfer[serve]')")
SPECS = {
    "seed": preset("seed").spec,
    "lstm": ModelSpec("lstm", 6, 8, 2),
    "gru-batch-first": ModelSpec("gru", 5, 7, 2, batch_first=True),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> (Model, ONNX path) for every spec."""
    from lstminfer.onnx.export import export_model

    out = {}
    for name, spec in SPECS.items():
        folder = tmp_path_factory.mktemp(name)
        model = Model(name, spec, build_module(spec, seed=1), seq_len=3, batch=2)
        export_model(model, folder / "model.onnx")
        model.onnx_path = folder / "model.onnx"
        out[name] = model
    return out


def _batch_major_inputs(spec, batch, seq, rng, state=True):
    states = spec.num_layers * spec.num_directions
    feeds = {"input": rng.standard_normal((batch, seq, spec.input_size)).astype(np.float32)}
    if state:
        feeds["h0"] = rng.standard_normal((batch, states, spec.state_size)).astype(np.float32)
        if spec.kind == "lstm":
            feeds["c0"] = rng.standard_normal((batch, states, spec.hidden_size)).astype(np.float32)
    return feeds


def _reference(model, feeds):
    """Float64 PyTorch on batch-major feeds, answered batch-major."""
    spec = model.spec
    tm = {n: a if (n == "input" and spec.batch_first) else a.transpose(1, 0, 2) for n, a in feeds.items()}
    ref = model.reference(tm)
    return {n: a if (n == "output" and spec.batch_first) else a.transpose(1, 0, 2) for n, a in ref.items()}


def _close(got, want, atol=1e-4, rtol=1e-3):
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, atol=atol, rtol=rtol, err_msg=name)


# ---- config.pbtxt -----------------------------------------------------------------------------------------------
def test_to_pbtxt_by_hand():
    text = repo.to_pbtxt({"name": 'a"b', "max_batch_size": 4, "x": {"dims": [-1, 3], "kind": repo.Enum("KIND_CPU")},
                          "y": [{"on": True}], "skipped": None})
    assert text == ('name: "a\\"b"\nmax_batch_size: 4\nx {\n  dims: [ -1, 3 ]\n  kind: KIND_CPU\n}\n'
                    'y [\n  {\n    on: true\n  }\n]\n')


@needs_tritonclient
@pytest.mark.parametrize("name", list(SPECS))
def test_python_configs_parse_into_model_config(tmp_path, name):
    spec = SPECS[name]
    options = repo.ServeOptions(max_batch=16, queue_delay_us=50, instances=2, max_streams=8, idle_timeout_s=2.5)
    served = repo.ServedModel(name=name, model_args={"preset": "seed"}, spec=spec.to_dict())
    written = repo.write_python_models(tmp_path, served, spec, options)
    assert written == ([name] if spec.bidirectional else [name, name + "_stream"])
    stateless = repo.parse_config((tmp_path / name / "config.pbtxt").read_text())
    assert stateless.backend == "python" and stateless.max_batch_size == 16
    assert stateless.dynamic_batching.max_queue_delay_microseconds == 50
    assert [i.name for i in stateless.input] == spec.input_names
    states = spec.num_layers * spec.num_directions
    assert list(stateless.input[1].dims) == [states, spec.state_size]
    assert list(stateless.output[0].dims) == [-1, spec.num_directions * spec.hidden_size]
    assert stateless.instance_group[0].count == 2
    desc = json.loads((tmp_path / name / "1" / "lstminfer.json").read_text())
    assert desc["stream"] is False and desc["model_args"] == {"preset": "seed"}
    assert (tmp_path / name / "1" / "model.py").read_text().count("lstminfer.serve.pymodel") == 2
    if not spec.bidirectional:
        stream = repo.parse_config((tmp_path / f"{name}_stream" / "config.pbtxt").read_text())
        batcher = stream.sequence_batching
        assert batcher.max_sequence_idle_microseconds == 2_500_000
        assert batcher.oldest.max_candidate_sequences == 8
        assert [c.name for c in batcher.control_input] == ["START", "END"]
        assert list(batcher.control_input[0].control[0].fp32_false_true) == [0, 1]
        assert [i.name for i in stream.input] == ["input"] and [o.name for o in stream.output] == ["output"]


@needs_tritonclient
@pytest.mark.parametrize("platform", ["onnxruntime", "tensorrt"], ids=["ort", "trt"])  # no `tensorrt` keyword
def test_stock_configs_have_implicit_state(platform):
    spec = SPECS["lstm"]
    config = repo.parse_config(repo.to_pbtxt(repo.stock_config("m_stream", spec, repo.ServeOptions(), True, platform)))
    assert config.platform == ("onnxruntime_onnx" if platform == "onnxruntime" else "tensorrt_plan")
    states = config.sequence_batching.state
    assert [(s.input_name, s.output_name) for s in states] == [("h0", "hn"), ("c0", "cn")]
    assert all(s.initial_state[0].zero_data and list(s.dims) == [2, 8] for s in states)
    assert [c.name for c in config.sequence_batching.control_input] == ["START"]
    assert [i.name for i in config.input] == ["input"]
    stateless = repo.parse_config(repo.to_pbtxt(repo.stock_config("m", spec, repo.ServeOptions(), False, platform)))
    assert [i.name for i in stateless.input] == ["input", "h0", "c0"] and not stateless.sequence_batching.state


def test_streams_of_a_bidirectional_model_are_refused(tmp_path):
    served = repo.ServedModel(name="seed", model_args={}, spec=SPECS["seed"].to_dict())
    with pytest.raises(UserError, match="bidirectional"):
        repo.write_python_models(tmp_path, served, SPECS["seed"], repo.ServeOptions(), stream=True)


def test_serve_options_are_checked():
    with pytest.raises(UserError, match="max-batch"):
        repo.ServeOptions(max_batch=0)


# ---- the batch-major ONNX wrapper of the stock repositories -----------------------------------------------------
@needs_tritonclient
@pytest.mark.parametrize("name", list(SPECS))
def test_stock_repository_matches_float64(tmp_path, exported, name):
    import onnxruntime as ort

    model = exported[name]
    spec = model.spec
    written = repo.write_stock_models(tmp_path, name, spec, model.onnx_path, repo.ServeOptions())
    for model_name in written:
        repo.parse_config((tmp_path / model_name / "config.pbtxt").read_text())
    session = ort.InferenceSession(str(tmp_path / name / "1" / "model.onnx"))
    rng = np.random.default_rng(0)
    for batch, seq in ((1, 1), (3, 5)):
        feeds = _batch_major_inputs(spec, batch, seq, rng)
        got = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
        _close(got, _reference(model, feeds))
    if spec.bidirectional:
        return
    # The stream wrapper, its state fed back the way Triton's implicit state does: chunks equal one pass,
    # and START zeroes whatever state comes in.
    stream = ort.InferenceSession(str(tmp_path / f"{name}_stream" / "1" / "model.onnx"))
    names = [o.name for o in stream.get_outputs()]
    feeds = _batch_major_inputs(spec, 2, 7, rng)
    state = {n: rng.standard_normal(a.shape).astype(np.float32) for n, a in feeds.items() if n != "input"}  # junk
    pieces, start = [], 0
    for size in (3, 1, 3):
        chunk = {"input": feeds["input"][:, start:start + size], **state,
                 "START": np.full((2, 1), 1.0 if start == 0 else 0.0, np.float32)}
        out = dict(zip(names, stream.run(None, chunk)))
        state = {"h0": out["hn"], **({"c0": out["cn"]} if spec.kind == "lstm" else {})}
        pieces.append(out["output"])
        start += size
    zero = {n: np.zeros_like(a) for n, a in feeds.items() if n != "input"}
    want = _reference(model, {"input": feeds["input"], **zero})
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), want["output"], atol=1e-4, rtol=1e-3)


# ---- the stream store -------------------------------------------------------------------------------------------
class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_store_idle_timeout_and_bound():
    clock = FakeClock()
    store = StreamStore(max_streams=2, idle_timeout_s=10, clock=clock)
    store.start(1, "a")
    clock.now = 6
    store.start(2, "b")
    clock.now = 12  # stream 1 idle for 12 s: gone; stream 2 for 6 s: kept
    store.start(3, "c")
    assert 1 not in store and store.get(2) == "b" and store.expired == 1 and store.evicted == 0
    store.put(2, "b2")
    clock.now = 20  # stream 3 idle 8 s, stream 2 touched at 12: both alive
    assert store.get(2) == "b2" and store.get(3) == "c"
    store.end(2)
    with pytest.raises(UnknownStream):
        store.get(2)
    with pytest.raises(UnknownStream):
        store.put(2, "x")
    store.start(3, "restart")  # a restart replaces the old state
    assert store.get(3) == "restart" and len(store) == 1
    clock.now = 100
    assert len(store) == 1 and store.purge() == 1 and len(store) == 0


def test_a_full_store_evicts_the_least_recently_used():
    clock = FakeClock()
    store = StreamStore(max_streams=2, idle_timeout_s=10, clock=clock)
    store.start(1, "a")
    store.start(2, "b")
    clock.now = 1
    store.put(1, "a2")  # 2 is now the least recently used
    store.start(3, "c")
    assert len(store) == 2 and 2 not in store and store.get(1) == "a2" and store.evicted == 1


# ---- the Python-backend model's logic -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def ort_runner(exported):
    from lstminfer.backends.base import runner_class

    runners = {}
    for name in ("seed", "lstm", "gru-batch-first"):
        runner = runner_class("onnxruntime")(exported[name])
        runner.prepare()
        runners[name] = runner
    yield runners
    for runner in runners.values():
        runner.close()


@pytest.mark.parametrize("name", ["seed", "gru-batch-first"])
def test_handler_batches_requests_of_equal_length(exported, ort_runner, name):
    model = exported[name]
    handler = Handler(model.spec, ort_runner[name], stream=False)
    rng = np.random.default_rng(1)
    requests = [_batch_major_inputs(model.spec, b, t, rng) for b, t in ((1, 2), (3, 2), (2, 5), (1, 1))]
    calls = []
    infer = handler.runner.infer
    handler.runner.infer = lambda feeds: calls.append(feeds["input"].shape) or infer(feeds)
    try:
        results = handler.infer(requests)
    finally:
        del handler.runner.infer
    assert len(calls) == 3  # lengths 2, 5, 1: the two length-2 requests ran as one batch of 4 rows
    for feeds, got in zip(requests, results):
        _close(got, _reference(model, feeds))


def test_handler_answers_a_bad_request_alone(exported, ort_runner):
    model = exported["lstm"]
    handler = Handler(model.spec, ort_runner["lstm"], stream=False)
    rng = np.random.default_rng(2)
    good = _batch_major_inputs(model.spec, 2, 3, rng)
    flat = {**good, "input": good["input"][0]}
    results = handler.infer([flat, good])
    assert isinstance(results[0], RequestError) and "3-D" in str(results[0])
    _close(results[1], _reference(model, good))


def test_handler_again_repeats_each_backend_call_and_answers_the_first(exported, ort_runner):
    """LSTMINFER_SERVE_PROFILE=2's diagnosis: every backend call made a second time at once on the same arrays
    and timed apart (the back-to-back call inside the stub); the answers are the first call's."""
    model = exported["lstm"]
    handler = Handler(model.spec, ort_runner["lstm"], stream=False)
    handler.profile, handler.again = Profile(), True
    rng = np.random.default_rng(3)
    requests = [_batch_major_inputs(model.spec, b, t, rng) for b, t in ((1, 2), (2, 2), (1, 4))]
    calls = []
    infer = handler.runner.infer
    handler.runner.infer = lambda feeds: calls.append(feeds) or infer(feeds)
    try:
        results = handler.infer(requests)
    finally:
        del handler.runner.infer
    assert len(calls) == 4  # two groups (lengths 2 and 4), each call twice
    assert calls[0] is calls[1] and calls[2] is calls[3] and calls[1] is not calls[2]
    assert handler.backend_s > 0 and handler.again_s > 0
    for feeds, got in zip(requests, results):
        _close(got, _reference(model, feeds))


def test_process_facts_show_the_threads_the_backend_runs_with(exported):
    """The served process's line: its CPUs, its OS threads and the runner's own thread count (read back from
    ONNX Runtime), so over-subscription in the stub shows in the log."""
    import os

    from lstminfer.backends.base import runner_class

    runner = runner_class("onnxruntime")(exported["lstm"], threads=1)
    runner.prepare()
    try:
        line = process_facts(runner)
    finally:
        runner.close()
    assert line.startswith(f"process {os.getpid()}: cpus {','.join(map(str, sorted(os.sched_getaffinity(0))))}, ")
    assert " OS threads, " in line and "'threads': 1" in line and "CPUExecutionProvider" in line


def test_bucket_sizes():
    assert bucket_sizes(64) == (1, 2, 4, 8, 16, 32, 64)
    assert bucket_sizes(12) == (1, 2, 4, 8, 12)
    assert bucket_sizes(1) == (1,)
    assert [bucket_for(r, (1, 2, 4, 8, 12)) for r in (1, 3, 5, 9, 12, 13)] == [1, 4, 8, 12, 12, 13]
    assert bucket_for(3, ()) == 3


def _recording(runner, calls):
    """The runner's infer, also noting the rows (batch axis) of each call's input."""
    infer = runner.infer
    axis = 0 if runner.model.spec.batch_first else 1
    runner.infer = lambda feeds: calls.append(feeds["input"].shape[axis]) or infer(feeds)


@pytest.mark.parametrize("name", ["seed", "gru-batch-first"])
def test_handler_pads_to_buckets_and_slices_back(exported, ort_runner, name):
    """Rows padded with zero rows up to the next bucket, answers cut back: equal to float64 per request."""
    model = exported[name]
    runner = ort_runner[name]
    handler = Handler(model.spec, runner, stream=False, buckets=bucket_sizes(8))
    rng = np.random.default_rng(4)
    requests = [_batch_major_inputs(model.spec, b, t, rng) for b, t in ((1, 2), (2, 2), (5, 4), (8, 1))]
    calls = []
    _recording(runner, calls)
    try:
        results = handler.infer(requests)
        warm_calls = len(calls)
        seconds, stopped = handler.warm_up(seq_len=2)
    finally:
        del runner.infer
    assert calls[:warm_calls] == [4, 8, 8]  # 1+2 rows -> 4, 5 -> 8, 8 -> 8
    assert calls[warm_calls:] == [1, 2, 4, 8] and seconds > 0 and stopped == ""  # every bucket ran once
    for feeds, got in zip(requests, results):
        assert got["output"].shape[0] == feeds["input"].shape[0]
        _close(got, _reference(model, feeds))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["torch-graph", "fused-graph"])
def test_graph_backend_captures_every_bucket_at_load_and_none_after(exported, backend):
    """What the served model does on a GPU: one CUDA graph per bucket at load, none on the request path."""
    from lstminfer.backends.base import runner_class

    model = exported["lstm"]
    ok, why = runner_class(backend).available("cuda")
    if not ok:
        pytest.skip(f"{backend}: {why}")
    runner = runner_class(backend)(model, device="cuda")
    runner.prepare()
    try:
        handler = Handler(model.spec, runner, stream=False, buckets=bucket_sizes(8))
        handler.warm_up(seq_len=2)
        assert len(runner.graphs) == 4
        rng = np.random.default_rng(6)
        requests = [_batch_major_inputs(model.spec, b, 2, rng) for b in (3, 5, 1)]
        for feeds, got in zip(requests, handler.infer(requests[:2]) + handler.infer(requests[2:])):
            _close(got, _reference(model, feeds), atol=2e-3, rtol=1e-2)  # cuDNN may use TF32
        assert len(runner.graphs) == 4  # 3+5 rows ran as 8, 1 as 1: both captured at load
    finally:
        runner.close()


@pytest.mark.parametrize("buckets", [(), (1, 2, 4)], ids=["unpadded", "buckets"])
def test_handler_streams_interleaved_restart_and_errors(exported, ort_runner, buckets):
    """With buckets, 3 rows of streams run as 4: the zero row's state goes nowhere."""
    model = exported["lstm"]
    spec = model.spec
    handler = Handler(spec, ort_runner["lstm"], stream=True, max_streams=4, idle_timeout_s=60, buckets=buckets)
    rng = np.random.default_rng(3)
    xs = {7: rng.standard_normal((1, 6, spec.input_size)).astype(np.float32),
          9: rng.standard_normal((2, 6, spec.input_size)).astype(np.float32)}
    got = {7: [], 9: []}
    for k in range(3):  # both streams in every call: one batch of 3 rows, each with its own state
        chunks = [StreamChunk(s, k == 0, k == 2, xs[s][:, 2 * k:2 * k + 2]) for s in (7, 9)]
        for s, out in zip((7, 9), handler.step(chunks)):
            got[s].append(out["output"])
    for s, x in xs.items():
        zero = {n: np.zeros(a.shape, np.float32) for n, a in _batch_major_inputs(spec, x.shape[0], 1, rng).items()
                if n != "input"}
        want = _reference(model, {"input": x, **zero})["output"]
        np.testing.assert_allclose(np.concatenate(got[s], axis=1), want, atol=1e-4, rtol=1e-3)
    assert len(handler.store) == 0  # both ended
    after_end = handler.step([StreamChunk(7, False, False, xs[7][:, :2])])[0]
    assert isinstance(after_end, RequestError) and "START" in str(after_end)
    first = handler.step([StreamChunk(7, True, False, xs[7][:, :2])])[0]["output"]
    np.testing.assert_allclose(first, got[7][0], atol=1e-6)  # a restart begins from zero state
    wrong_rows = handler.step([StreamChunk(7, False, False, xs[9][:, :2])])[0]
    assert isinstance(wrong_rows, RequestError) and "started with 1" in str(wrong_rows)
    # Two chunks of one stream in one call run in order.
    a, b = handler.step([StreamChunk(5, True, False, xs[7][:, :2]), StreamChunk(5, False, True, xs[7][:, 2:4])])
    np.testing.assert_allclose(np.concatenate([a["output"], b["output"]], axis=1),
                               np.concatenate(got[7][:2], axis=1), atol=1e-6)


# ---- export-triton and loadtest arguments, through the CLI ------------------------------------------------------
@needs_tritonclient
def test_export_triton_python_and_onnxruntime(cli, tmp_path):
    code, out, err = cli("export-triton", "--no-bidirectional", "--num-layers", "2", "-o", tmp_path / "py",
                         "--name", "small", "--instances", "3")
    assert code == 0, err
    assert (tmp_path / "py" / "small_stream" / "1" / "model.onnx").is_file()
    desc = json.loads((tmp_path / "py" / "small" / "1" / "lstminfer.json").read_text())
    assert desc["backend"] == "onnxruntime" and desc["model_args"]["num_layers"] == 2
    for name in ("small", "small_stream"):  # an explicit count is kept as it is
        assert _instance_groups(tmp_path / "py" / name) == [(3, "KIND_CPU")]
    # --instances auto (the default) on a GPU: 2 KIND_GPU instances (written here without a GPU: the stock
    # repository needs none to be written).
    code, out, err = cli("export-triton", "--no-bidirectional", "--num-layers", "2", "-o", tmp_path / "ort",
                         "--platform", "onnxruntime", "--max-batch", "8", "--device", "cuda",
                         "--json", tmp_path / "ort.json")
    assert code == 0, err
    record = json.loads((tmp_path / "ort.json").read_text())
    assert record["models"] == ["seed", "seed_stream"]
    for name in record["models"]:
        config = repo.parse_config((tmp_path / "ort" / name / "config.pbtxt").read_text())
        assert config.max_batch_size == 8
        assert _instance_groups(tmp_path / "ort" / name) == [(2, "KIND_GPU")]


def _instance_groups(model_dir) -> list[tuple[int, str]]:
    """(count, kind name) of each instance group of a written model's config."""
    groups = repo.parse_config((model_dir / "config.pbtxt").read_text()).instance_group
    return [(g.count, type(g).Kind.Name(g.kind)) for g in groups]


def test_export_triton_errors_are_one_line(cli, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    code, _, err = cli("export-triton", "-o", tmp_path / "full")
    assert code == 2 and "not empty" in err and len(err.strip().splitlines()) == 1
    for bad in ("0", "two"):
        code, _, err = cli("export-triton", "-o", tmp_path / "new", "--instances", bad)
        assert code == 2 and len(err.strip().splitlines()) == 1
        assert f"--instances: must be a positive integer or auto, got '{bad}'" in err
    if importlib.util.find_spec("tensorrt") is None:
        code, _, err = cli("export-triton", "--num-layers", "1", "-o", tmp_path / "trt", "--platform", "tensorrt")
        assert code == 2 and "TensorRT is not installed" in err and len(err.strip().splitlines()) == 1


def test_loadtest_argument_errors(cli):
    code, _, err = cli("loadtest", "127.0.0.1", "--concurrency", "1")
    assert code == 2 and "needs a port" in err
    code, _, err = cli("loadtest", "127.0.0.1:1", "--concurrency", "0")
    assert code == 2 and "nothing to run" in err
    code, _, err = cli("loadtest", "127.0.0.1:1", "--duration", "0")
    assert code == 2 and "--duration" in err


@needs_tritonclient
def test_a_model_file_is_written_as_it_is(tmp_path):
    import argparse

    from _recurrent_files import export_vad
    from lstminfer.commands.args import ModelArgs, model_from_args

    vad_onnx, _, _ = export_vad(tmp_path)
    parser = argparse.ArgumentParser()
    ModelArgs().add_to(parser)
    model = model_from_args(parser.parse_args([str(vad_onnx), "--input", "sr=16000", "--input", "gain=1.0"]))
    tensors = repo.served_tensors(model)
    assert tensors.fixed == {"sr": 16000, "gain": 1.0} and tensors.state_pairs == [("state", "stateN")]
    served = repo.ServedModel(name="vad", model_args={}, spec=None)
    assert repo.write_python_models(tmp_path / "r", served, None, repo.ServeOptions(), tensors=tensors) == [
        "vad", "vad_stream"]
    stateless = repo.parse_config((tmp_path / "r" / "vad" / "config.pbtxt").read_text())
    assert stateless.max_batch_size == 0 and not stateless.HasField("dynamic_batching")
    assert [(i.name, list(i.dims)) for i in stateless.input] == [("x", [-1, -1, 8]), ("state", [2, -1, 6])]
    stream = repo.parse_config((tmp_path / "r" / "vad_stream" / "config.pbtxt").read_text())
    assert [i.name for i in stream.input] == ["x"] and [o.name for o in stream.output] == ["prob"]
    desc = json.loads((tmp_path / "r" / "vad" / "1" / "lstminfer.json").read_text())
    assert desc["batched"] is False and desc["fixed"] == {"sr": 16000, "gain": 1.0}
    # Without sr given, the client sends it: a scalar travels as [1].
    model = model_from_args(parser.parse_args([str(vad_onnx), "--input", "gain=1.0"]))
    sr = next(t for t in repo.served_tensors(model).inputs if t.name == "sr")
    assert sr.dims == (1,) and sr.data_type == "TYPE_INT64"


def test_model_py_finds_the_lstminfer_that_wrote_it(tmp_path):
    """The Python-backend stub ignores PYTHONPATH: a source checkout run as PYTHONPATH=src (the GPU machine's
    way) served nothing until model.py named where lstminfer lies. Checked with an interpreter that has
    neither PYTHONPATH nor site-packages (-I -S), from another folder."""
    import subprocess
    import sys

    import lstminfer
    from lstminfer.serve.repository import model_py

    (tmp_path / "model.py").write_text(model_py())
    code = ("import runpy; g = runpy.run_path('model.py'); import lstminfer; "
            "print(g['TritonPythonModel'].__module__, lstminfer.__file__)")
    done = subprocess.run([sys.executable, "-I", "-S", "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    module, where = done.stdout.split()
    assert module == "lstminfer.serve.pymodel" and where == lstminfer.__file__


def test_unbatched_streams_on_torch_keep_their_own_state():
    """A model served as it is streams through one Session whose state is swapped per sequence id: on torch (CPU)
    the kept state must not be the engine's live buffers, which the other stream's chunk overwrites."""
    import torch

    from lstminfer.measure.stream import _as_model
    from lstminfer.serve.pymodel import FeedsChunk, UnbatchedHandler

    torch.manual_seed(0)
    lstm = torch.nn.LSTM(3, 5).eval()
    handler = UnbatchedHandler(_as_model(lstm, None, None, None), stream=True, backend="torch", device="cpu",
                               precision="fp32", backend_options={}, fixed={}, outputs={"output": "float32"},
                               ranks={})
    x = np.random.default_rng(0).standard_normal((2, 2, 1, 1, 3)).astype(np.float32)  # stream, chunk, seq, batch
    try:
        answers = [handler.step([FeedsChunk(s + 1, k == 0, k == 1, {"input": x[s, k]}) for s in range(2)])
                   for k in range(2)]  # the two streams' chunks interleaved
    finally:
        handler.close()
    with torch.no_grad():
        lstm.double()
        for s in range(2):
            want, _ = lstm(torch.from_numpy(x[s].reshape(2, 1, 3)).double())
            got = np.concatenate([answers[k][s]["output"] for k in range(2)])
            np.testing.assert_allclose(got, want.numpy(), atol=1e-6)
