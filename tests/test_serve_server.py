"""A real Triton Inference Server (the one nvidia-pytriton bundles) on loopback, serving lstminfer models.

One server for the module: the seed model (stateless; bidirectional, so no streams) and a 2-layer LSTM with
streams. Answers are compared with float64 PyTorch. Every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import importlib.util
import threading
import urllib.request

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("tritonclient") is None or importlib.util.find_spec("pytriton") is None,
    reason="needs the serve extra (tritonserver from nvidia-pytriton, tritonclient): pip install 'lstminfer[serve]'")

ATOL, RTOL = 1e-4, 1e-3


def _model(argv):
    from lstminfer.commands.args import ModelArgs, model_from_args
    from lstminfer.commands.serve import model_args_of

    parser = argparse.ArgumentParser()
    ModelArgs().add_to(parser)
    args = parser.parse_args(argv)
    return model_from_args(args), model_args_of(args)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from lstminfer.onnx.export import export_model
    from lstminfer.serve.repository import ServedModel, ServeOptions, write_python_models
    from lstminfer.serve.server import ServerConfig, TritonServer

    root = tmp_path_factory.mktemp("triton")
    models = {}
    for name, argv in (("seed", ["--preset", "seed"]), ("uni", ["--no-bidirectional", "--num-layers", "2"])):
        model, model_args = _model(argv)
        onnx_path = export_model(model, root / f"{name}.onnx").path
        served = ServedModel(name=name, model_args=model_args, spec=model.spec.to_dict())
        # uni with batch buckets (what a GPU gets by default): every test of uni also tests the padding
        options = ServeOptions(max_batch=16, max_streams=8, buckets="on" if name == "uni" else "auto")
        write_python_models(root / "repo", served, model.spec, options, onnx_path)
        models[name] = model
    # A user's ONNX file (a VAD-like GRU with scalar inputs), served as it is; sr and gain filled in by the server.
    from _recurrent_files import export_vad
    from lstminfer.serve.repository import served_tensors

    vad_onnx, _, _ = export_vad(root)
    model, model_args = _model([str(vad_onnx), "--input", "sr=16000", "--input", "gain=1.0"])
    served = ServedModel(name="vad", model_args=model_args, spec=None)
    write_python_models(root / "repo", served, None, ServeOptions(max_streams=8), tensors=served_tensors(model))
    models["vad"] = model
    config = ServerConfig(repository=root / "repo", http_port=0, grpc_port=0, metrics_port=0, exit_timeout_s=2)
    triton = TritonServer(config, log_path=root / "tritonserver.log")
    triton.start(ready_timeout_s=150)
    yield triton, models
    triton.close()


def _client(server, protocol):
    from lstminfer.serve.loadtest import make_client

    triton, _ = server
    url = triton.config.grpc_url if protocol == "grpc" else triton.config.http_url
    return make_client(url, protocol, timeout_s=20)


def _infer(client, protocol, model, arrays, **kwargs):
    from lstminfer.serve.loadtest import _infer_inputs, client_module

    result = client.infer(model, _infer_inputs(client_module(protocol), arrays), **kwargs)
    return result


def _inputs(spec, batch, seq, rng, state=True):
    states = spec.num_layers * spec.num_directions
    arrays = {"input": rng.standard_normal((batch, seq, spec.input_size)).astype(np.float32)}
    if state:
        arrays["h0"] = rng.standard_normal((batch, states, spec.hidden_size)).astype(np.float32)
        arrays["c0"] = rng.standard_normal((batch, states, spec.hidden_size)).astype(np.float32)
    return arrays


def _reference(model, arrays):
    """Float64 PyTorch on batch-major arrays (a spec that is not batch_first), answered batch-major."""
    ref = model.reference({n: a.transpose(1, 0, 2) for n, a in arrays.items()})
    return {n: a.transpose(1, 0, 2) for n, a in ref.items()}


def _zero_state(spec, batch):
    states = spec.num_layers * spec.num_directions
    return {n: np.zeros((batch, states, spec.hidden_size), np.float32) for n in ("h0", "c0")}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_seed_model_matches_float64(server, protocol):
    _, models = server
    model = models["seed"]
    client = _client(server, protocol)
    rng = np.random.default_rng(0)
    try:
        for batch, seq in ((3, 1), (2, 5)):
            arrays = _inputs(model.spec, batch, seq, rng)
            result = _infer(client, protocol, "seed", arrays)
            for name, want in _reference(model, arrays).items():
                np.testing.assert_allclose(result.as_numpy(name), want, atol=ATOL, rtol=RTOL, err_msg=name)
    finally:
        client.close()


def _stream(client, sequence_id, chunk, start=False, end=False):
    result = _infer(client, "http", "uni_stream", {"input": chunk}, sequence_id=sequence_id, sequence_start=start,
                    sequence_end=end)
    return result.as_numpy("output")


def test_two_interleaved_streams_equal_one_pass(server):
    _, models = server
    model = models["uni"]
    client = _client(server, "http")
    rng = np.random.default_rng(1)
    xs = {101: rng.standard_normal((1, 6, 10)).astype(np.float32),
          202: rng.standard_normal((1, 6, 10)).astype(np.float32)}  # the sequence batcher takes one row a request
    got = {101: [], 202: []}
    try:
        for k, (lo, hi) in enumerate(((0, 1), (1, 4), (4, 6))):
            for sid, x in xs.items():
                got[sid].append(_stream(client, sid, x[:, lo:hi], start=k == 0, end=k == 2))
    finally:
        client.close()
    for sid, x in xs.items():
        want = _reference(model, {"input": x, **_zero_state(model.spec, x.shape[0])})["output"]
        np.testing.assert_allclose(np.concatenate(got[sid], axis=1), want, atol=ATOL, rtol=RTOL)


def test_a_stream_ended_and_restarted_starts_from_zero(server):
    _, models = server
    model = models["uni"]
    client = _client(server, "http")
    x = np.random.default_rng(2).standard_normal((1, 4, 10)).astype(np.float32)
    try:
        first = _stream(client, 303, x[:, :2], start=True)
        _stream(client, 303, x[:, 2:], end=True)
        again = _stream(client, 303, x[:, :2], start=True)
        _stream(client, 303, x[:, 2:], end=True)
    finally:
        client.close()
    want = _reference(model, {"input": x[:, :2], **_zero_state(model.spec, 1)})["output"]
    np.testing.assert_allclose(first, want, atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(again, first, atol=1e-6)


def test_malformed_requests_get_clear_errors_and_the_server_keeps_serving(server):
    from tritonclient.utils import InferenceServerException

    _, models = server
    spec = models["seed"].spec
    client = _client(server, "http")
    rng = np.random.default_rng(3)
    good = _inputs(spec, 3, 1, rng)
    cases = {
        "wrong shape": ({**good, "input": good["input"][:, :, :7]}, {}, "seed", r"input.*shape|unexpected shape"),
        "wrong dtype": ({**good, "input": good["input"].astype(np.float64)}, {}, "seed", r"FP64|data-type|datatype"),
        "missing state": ({"input": good["input"], "h0": good["h0"]}, {}, "seed", r"c0|expected 3 inputs"),
        "unknown sequence id": ({"input": good["input"][:1]}, {"sequence_id": 987654}, "uni_stream", "START"),
    }
    try:
        for arrays, kwargs, model, message in cases.values():
            with pytest.raises(InferenceServerException, match=message):
                _infer(client, "http", model, arrays, **kwargs)
        x = good["input"][:1]
        _stream(client, 404, x, start=True, end=True)
        with pytest.raises(InferenceServerException, match="START"):  # a chunk after END
            _stream(client, 404, x)
        result = _infer(client, "http", "seed", good)  # still serving
        np.testing.assert_allclose(result.as_numpy("output"), _reference(models["seed"], good)["output"],
                                   atol=ATOL, rtol=RTOL)
    finally:
        client.close()


def test_load_test_at_concurrency_8_for_5_seconds(server):
    from lstminfer.serve.loadtest import run_level

    triton, _ = server
    client = _client(server, "http")
    before = client.get_inference_statistics("seed")["model_stats"][0]
    record = run_level(triton.config.http_url, "http", "seed", "stateless", 8, seq_len=1, batch=3, duration_s=5.0,
                       warmup_s=0.5, max_requests=200_000, timeout_s=20)
    after = client.get_inference_statistics("seed")["model_stats"][0]
    client.close()
    assert record.failed == 0, record.errors
    assert record.requests > 100 and record.throughput_rps > 0
    lat = record.latency_ms
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    # Triton's dynamic batcher put several requests into one execution at least sometimes.
    inferences = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    assert inferences >= record.requests and executions < inferences


def _successes(server, model):
    client = _client(server, "http")
    try:
        return int(client.get_inference_statistics(model)["model_stats"][0]["inference_stats"]["success"]["count"])
    finally:
        client.close()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_load_test_over_two_processes_counts_exactly(server, protocol):
    """Workers spread over two spawned processes: the merged record counts every request Triton answered (no
    warm-up, so every request is counted: Triton's own success count is the reference), none failed, and
    --max-requests bounds the sum of the processes' shares exactly."""
    from lstminfer.serve.loadtest import run_level

    triton, _ = server
    url = triton.config.grpc_url if protocol == "grpc" else triton.config.http_url
    before = _successes(server, "seed")
    record = run_level(url, protocol, "seed", "stateless", 4, batch=3, duration_s=1.5, warmup_s=0.0,
                       max_requests=200_000, timeout_s=20, processes=2)
    assert record.failed == 0, record.errors
    assert record.requests > 20
    assert _successes(server, "seed") - before == record.requests
    lat = record.latency_ms
    assert 0 < lat["min"] <= lat["p50"] <= lat["p99"] <= lat["max"]
    before = _successes(server, "seed")
    bounded = run_level(url, protocol, "seed", "stateless", 4, batch=3, duration_s=30.0, warmup_s=0.0,
                        max_requests=101, timeout_s=20, processes=2)
    assert (bounded.requests, bounded.failed) == (101, 0)
    assert _successes(server, "seed") - before == 101
    assert bounded.duration_s < 20  # stopped by the count, not the clock


def test_streams_over_two_processes_keep_their_own_sequences(server):
    """Stream workers in two processes (each worker its own sequence ids, whichever process runs it): no
    chunk fails."""
    from lstminfer.serve.loadtest import run_level

    triton, _ = server
    record = run_level(triton.config.http_url, "http", "uni_stream", "stream", 4, duration_s=1.5, warmup_s=0.2,
                       chunks=5, max_requests=50_000, timeout_s=20, first_sequence_id=20_000_000, processes=2)
    assert record.failed == 0, record.errors
    assert record.requests > 20


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_answers_are_checked_against_the_config(server, protocol):
    """The load test's check on real answers: the config's own outputs pass; another shape, dtype or a missing
    output is named (a load test counts such an answer as failed)."""
    import copy

    from lstminfer.serve.loadtest import check_answer, expected_outputs, model_config

    _, models = server
    client = _client(server, protocol)
    try:
        config = model_config(client, "seed", protocol)
        arrays = _inputs(models["seed"].spec, 3, 1, np.random.default_rng(5))
        result = _infer(client, protocol, "seed", arrays)
    finally:
        client.close()
    assert check_answer(result, expected_outputs(config, batch=3)) is None
    assert check_answer(result, expected_outputs(config, batch=2)) == \
        "output output has shape [3, 1, 40], the config says [2, '*', 40]"
    wider, half, more = copy.deepcopy(config), copy.deepcopy(config), copy.deepcopy(config)
    wider["output"][0]["dims"] = [-1, 41]
    assert "has shape [3, 1, 40], the config says [3, '*', 41]" in check_answer(result, expected_outputs(wider, 3))
    half["output"][0]["data_type"] = "TYPE_FP16"
    assert check_answer(result, expected_outputs(half, 3)) == "output output is float32, the config says float16"
    more["output"].append({"name": "extra", "data_type": "TYPE_FP32", "dims": [4]})
    assert check_answer(result, expected_outputs(more, 3)) == "output extra missing from the answer"


def test_stream_load_over_grpc_has_no_failures(server):
    from lstminfer.serve.loadtest import run_level

    triton, _ = server
    record = run_level(triton.config.grpc_url, "grpc", "uni_stream", "stream", 4, duration_s=1.5, warmup_s=0.2,
                       chunks=5, max_requests=50_000, timeout_s=20, first_sequence_id=10_000)
    assert record.failed == 0, record.errors
    assert record.requests > 20


def test_stream_load_of_a_model_file_sends_its_own_chunk_input(server):
    """A file served as it is streams its own chunk input (the VAD's x, not "input"): the load test sends the
    stream model's config inputs, and no chunk fails."""
    from lstminfer.serve.loadtest import run_level

    triton, _ = server
    record = run_level(triton.config.http_url, "http", "vad_stream", "stream", 2, duration_s=1.0, warmup_s=0.2,
                       chunks=4, max_requests=50_000, timeout_s=20, first_sequence_id=30_000_000)
    assert record.failed == 0, record.errors
    assert record.requests > 10


def test_streams_send_one_step_one_row_whatever_the_stateless_shape(server):
    """--seq-len and --batch shape the stateless requests; a stream chunk is one step of one row (the flags'
    help; Triton's sequence batcher takes one row a request), so a sweep with --batch 3 streams without failing."""
    from lstminfer.serve.loadtest import loadtest

    triton, _ = server
    records = loadtest(triton.config.http_url, model="uni", concurrency=[1], streams=[1], seq_len=2, batch=3,
                       duration_s=0.5, warmup_s=0.1, chunks=3, timeout_s=20)
    assert [(r.mode, r.seq_len, r.batch) for r in records] == [("stateless", 2, 3), ("stream", 1, 1)]
    for r in records:
        assert r.failed == 0 and r.requests > 0, (r.mode, r.errors)


def test_health_and_metrics(server):
    triton, _ = server
    with urllib.request.urlopen(f"http://{triton.config.http_url}/v2/health/live", timeout=5) as response:
        assert response.status == 200
    with urllib.request.urlopen(triton.config.metrics_url, timeout=5) as response:
        text = response.read().decode()
    assert 'nv_inference_request_success{model="seed",version="1"}' in text


def test_concurrent_clients_are_answered_in_their_own_order(server):
    """Requests batched together come back to the right client: each answer matches its own reference."""
    _, models = server
    model = models["seed"]
    errors = []

    def worker(seed):
        client = _client(server, "http")
        rng = np.random.default_rng(seed)
        try:
            for _ in range(5):
                arrays = _inputs(model.spec, 1 + seed % 3, 1, rng)
                got = _infer(client, "http", "seed", arrays).as_numpy("hn")
                if not np.allclose(got, _reference(model, arrays)["hn"], atol=ATOL, rtol=RTOL):
                    errors.append(seed)
        except Exception as err:  # reported below, with the thread's seed
            errors.append(f"{seed}: {err}")
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and not any(t.is_alive() for t in threads)


def test_a_model_file_is_served_as_it_is(server):
    """The file's own tensors (no batch-major layout, no Triton batching): stateless against the file's
    float64 reference, and two interleaved streams equal their one-pass reference."""
    _, models = server
    model = models["vad"]
    client = _client(server, "http")
    rng = np.random.default_rng(5)
    fixed = {"sr": np.array(16000, np.int64), "gain": np.array(1.0, np.float32)}
    x = rng.standard_normal((2, 7, 8)).astype(np.float32)
    state = rng.standard_normal((2, 2, 6)).astype(np.float32)
    try:
        result = _infer(client, "http", "vad", {"x": x, "state": state})
        want = model.reference({"x": x, "state": state, **fixed})
        for name in ("prob", "stateN"):
            np.testing.assert_allclose(result.as_numpy(name), want[name], atol=ATOL, rtol=RTOL, err_msg=name)
        xs = {501: rng.standard_normal((1, 6, 8)).astype(np.float32),
              502: rng.standard_normal((1, 6, 8)).astype(np.float32)}
        got = {501: [], 502: []}
        for k, (lo, hi) in enumerate(((0, 2), (2, 3), (3, 6))):
            for sid, xi in xs.items():
                out = _infer(client, "http", "vad_stream", {"x": np.ascontiguousarray(xi[:, lo:hi])},
                             sequence_id=sid, sequence_start=k == 0, sequence_end=k == 2)
                got[sid].append(out.as_numpy("prob"))
    finally:
        client.close()
    for sid, xi in xs.items():
        want = model.reference({"x": xi, "state": np.zeros((2, 1, 6), np.float32), **fixed})["prob"]
        np.testing.assert_allclose(np.concatenate(got[sid], axis=1), want, atol=ATOL, rtol=RTOL)


def test_loadtest_json_makes_a_report(server, cli, tmp_path):
    """`lstminfer loadtest --json` against the real server, then `lstminfer report` on that file: the table
    holds the file's numbers and the load-test plot decodes as a picture with lines in it."""
    import json

    import matplotlib.image

    from lstminfer.report.tables import fmt

    triton, _ = server
    path = tmp_path / "loadtest.json"
    code, out, err = cli("loadtest", triton.config.http_url, "--model", "uni", "--concurrency", "1,2",
                         "--streams", "1,2", "--duration", "0.6", "--warmup", "0.1", "--chunks", "5",
                         "--timeout", "20", "--json", path)
    assert code == 0, (out, err)
    levels = json.loads(path.read_text())["loadtest"]
    assert [(r["mode"], r["concurrency"]) for r in levels] == [("stateless", 1), ("stateless", 2), ("stream", 1),
                                                              ("stream", 2)]
    code, out, err = cli("report", path, "--format", "md", "-o", tmp_path / "report.md")
    assert code == 0, err
    text = (tmp_path / "report.md").read_text()
    for r in levels:
        lat = r["latency_ms"]
        row = (f"| {r['mode']} | {r['model']} | http | {r['seq_len']}x{r['batch']} | {r['concurrency']} | "
               f"{r['requests']} | 0 | {fmt(r['throughput_rps'])} | {fmt(lat['p50'])} | {fmt(lat['p90'])} | "
               f"{fmt(lat['p95'])} | {fmt(lat['p99'])} |")
        assert row in text, row
    image = matplotlib.image.imread(tmp_path / "report-loadtest.png")
    assert image.shape[0] >= 300 and image.shape[1] >= 600
    assert (image[..., :3] < 0.9).any(axis=-1).mean() > 0.01  # not a blank page


def test_the_server_log_has_no_traceback(server):
    """After every test above: the served models said once how they answer, and no answer wrote a traceback
    (under numpy 2, numpy's own DLPack capsule did, one per answer, through the stub's capsule rename)."""
    triton, _ = server
    log = triton.log_path.read_text(errors="replace")
    way = "torch-dlpack" if int(np.__version__.split(".")[0]) >= 2 else "stub"
    assert f"seed: answers through {way} (numpy {np.__version__})" in log
    # uni pads to buckets (--max-batch 16; its streams to --max-streams 8), run at load; seed on a CPU does not
    assert "lstminfer: uni: batch buckets 1,2,4,8,16 run at load (" in log
    assert "lstminfer: uni_stream: batch buckets 1,2,4,8 run at load (" in log
    assert "seed: batch buckets" not in log and "buckets stop" not in log
    assert "Traceback" not in log, log[log.index("Traceback"):][:2000]
