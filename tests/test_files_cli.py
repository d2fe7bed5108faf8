"""`lstminfer inspect | verify | bench | run | stream FILE`: a user's own ONNX / TorchScript file through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from _recurrent_files import FEATURES, export_vad, if_proto, lstm_proto, no_rnn_proto, save

FAST = ("--warmup", "0", "--duration", "0", "--iterations", "3")
SCALARS = ("--input", "sr=16000", "--input", "gain=1")


@pytest.fixture(scope="module")
def vad(tmp_path_factory):
    return export_vad(tmp_path_factory.mktemp("vad"))


def _one_line_error(code: int, err: str, phrase: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("lstminfer: error: ")]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]), err  # notes may come first
    assert phrase in errors[0], errors[0]


# ---- inspect --------------------------------------------------------------------------------------------------------
def test_inspect_table(cli, vad):
    code, out, _ = cli("inspect", vad[0])
    assert code == 0
    for text in ("opset ai.onnx 17", "[batch, time, 8]", "LSTM", "main graph", "state pairs: state -> stateN",
                 "onnx.reference float64 oracle: yes", "polygraphy inspect capability",
                 "ONNX Runtime CPU session: created"):
        assert text in out, text


def test_inspect_json(cli, vad, tmp_path):
    code, out, _ = cli("inspect", vad[0], "--json", "-")
    assert code == 0
    data = json.loads(out)
    assert data["recurrent"][0]["hidden_size"] == 6
    assert data["state_pairs"] == [{"input": "state", "output": "stateN", "found_by": "name"}]
    assert data["oracle"] == {"applicable": True, "reason": ""}
    code, _, _ = cli("inspect", vad[0], "--json", tmp_path / "info.json")
    assert code == 0 and json.loads((tmp_path / "info.json").read_text())["inputs"][0]["name"] == "x"


def test_inspect_subgraphs_and_capability(cli, tmp_path):
    code, out, _ = cli("inspect", save(if_proto(), tmp_path / "if.onnx"))
    assert code == 0 and "If 'pick' then_branch" in out and "If 'pick' else_branch" in out
    code, out, _ = cli("inspect", save(lstm_proto(layout=1), tmp_path / "bf.onnx"), "--json", "-")
    caps = json.loads(out)["recurrent"][0]["capability"]
    assert caps["onnxruntime"].startswith("no: layout=1") and caps["tensorrt"].startswith("no: layout=1")
    assert caps["onnx-reference"] == "yes"  # onnx 1.23 implements layout=1 (test_file_classes.py)
    assert json.loads(out)["onnxruntime_cpu_session"].startswith("refused: Batchwise recurrent operations")


def test_inspect_no_recurrent_node(cli, tmp_path):
    code, out, err = cli("inspect", save(no_rnn_proto(), tmp_path / "plain.onnx"))
    assert code == 0 and "no recurrent node" in err


# ---- verify / bench / run --------------------------------------------------------------------------------------------
def test_verify_onnx_file(cli, vad, tmp_path):
    code, out, err = cli("verify", vad[0], *SCALARS, "--backends", "onnxruntime", "--out", tmp_path,
                         "--json", tmp_path / "v.json")
    assert code == 0, err
    assert "against onnx.reference-float64" in out
    records = json.loads((tmp_path / "v.json").read_text())
    assert {r["reference"] for r in records} == {"onnx.reference-float64"}
    assert {(r["seq_len"], r["batch"]) for r in records} == {(16, 1), (64, 1), (16, 3)}
    assert all(r["passed"] for r in records)


def test_verify_names_the_onnxruntime_reference(cli, tmp_path):
    path = save(lstm_proto(clip=0.5), tmp_path / "clip.onnx")
    code, out, err = cli("verify", path, "--backends", "onnxruntime", "--out", tmp_path)
    assert code == 1, err  # ONNX Runtime compared with itself verifies nothing
    assert "against onnxruntime-cpu-fp32" in out and "clip" in err and "unverified" in err
    code, out, err = cli("verify", path, "--backends", "onnxruntime", "--out", tmp_path, "--allow-unverified")
    assert code == 0, err


def test_verify_no_recurrent_node_still_runs(cli, tmp_path):
    code, out, err = cli("verify", save(no_rnn_proto(), tmp_path / "plain.onnx"), "--backends", "onnxruntime",
                         "--out", tmp_path)
    assert code == 0 and "no recurrent node" in err and "passed" in out


def test_verify_torchscript_against_its_onnx_export(cli, vad, tmp_path):
    code, out, err = cli("verify", vad[1], "--onnx", vad[0], *SCALARS, "--backends", "torchscript,onnxruntime",
                         "--out", tmp_path, "--json", tmp_path / "v.json")
    assert code == 0, err
    records = json.loads((tmp_path / "v.json").read_text())
    assert {r["backend"] for r in records if r["passed"]} == {"torchscript", "onnxruntime"}


def test_bench_and_run_a_file(cli, vad, tmp_path):
    code, _, err = cli("bench", vad[0], *SCALARS, "--backends", "onnxruntime", *FAST, "--out", tmp_path,
                       "--json", tmp_path / "b.json")
    assert code == 0, err
    (record,) = json.loads((tmp_path / "b.json").read_text())
    assert record["backend"] == "onnxruntime" and record["queries"] >= 3
    code, out, err = cli("run", vad[0], *SCALARS, "--backends", "onnxruntime", *FAST, "--out", tmp_path / "run")
    assert code == 0, err
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["verify"] and results["bench"] and (tmp_path / "run" / "report.md").is_file()


# ---- stream ---------------------------------------------------------------------------------------------------------
def test_stream_reports_percentiles_and_real_time_factor(cli, vad, tmp_path):
    code, out, err = cli("stream", vad[0], "--backends", "onnxruntime", "--chunk", "4", "--chunks", "12",
                         "--warmup-chunks", "2",
                         "--chunk-ms", "32", *SCALARS, "--json", tmp_path / "s.json")
    assert code == 0, err
    assert "RTF" in out
    (record,) = json.loads((tmp_path / "s.json").read_text())
    assert record["backend"] == "onnxruntime" and record["chunk_shape"] == [1, 4, FEATURES]
    times = np.asarray(record["times_ms"], np.float32)
    assert len(times) == 12
    assert record["latency_ms"]["median"] == pytest.approx(float(np.median(times)), rel=1e-6)
    assert record["real_time_factor"] == pytest.approx(float(np.median(times)) / 32, rel=1e-6)
    assert record["state"] == ["state:stateN"]


def test_stream_torchscript_file(cli, vad, tmp_path):
    code, out, err = cli("stream", vad[1], "--onnx", vad[0], "--chunk", "2", "--chunks", "3", *SCALARS,
                         "--backends", "torchscript", "--json", tmp_path / "s.json")
    assert code == 0, err
    assert json.loads((tmp_path / "s.json").read_text())[0]["backend"] == "torchscript"


def test_stream_torchscript_without_onnx(cli, vad, tmp_path):
    args = ("stream", vad[1], "--chunk", "4", "--chunks", "3", *SCALARS, "--state", "state:output1")
    code, _, err = cli(*args)
    _one_line_error(code, err, "the chunk input 'x' has no shape in the file: give it with --seq-axis x:AXIS and "
                               "one chunk's shape with --shapes")
    code, _, err = cli(*args, "--shapes", "x:2x4x8,state:2x2x6", "--json", tmp_path / "s.json")
    assert code == 0, err
    assert json.loads((tmp_path / "s.json").read_text())[0]["chunk_shape"] == [2, 4, 8]


def test_stream_refuses_bidirectional(cli, tmp_path):
    code, _, err = cli("stream", save(lstm_proto(direction="bidirectional"), tmp_path / "bi.onnx"), "--chunk", "2")
    _one_line_error(code, err, "cannot stream")


# ---- bad input: one line, exit 2, no traceback ---------------------------------------------------------------------
def _bad_files(tmp_path, vad):
    text = tmp_path / "text.onnx"
    text.write_text("hello\n")
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(vad[0].read_bytes()[:300])
    broken = lstm_proto()
    broken.graph.node[0].input[1] = "W_missing"
    notpt = tmp_path / "model.pt"
    notpt.write_text("not a zip")
    return {"text": text, "cut": cut, "checker": save(broken, tmp_path / "broken.onnx"), "notpt": notpt}


@pytest.mark.parametrize("command", ["verify", "bench", "inspect"])
@pytest.mark.parametrize("which, phrase", [
    ("text", "is not an ONNX file"), ("cut", "is truncated"), ("checker", "fails onnx.checker"),
])
def test_bad_onnx_files(cli, vad, tmp_path, command, which, phrase):
    path = _bad_files(tmp_path, vad)[which]
    code, _, err = cli(command, path, *(() if command == "inspect" else ("--out", tmp_path)))
    _one_line_error(code, err, phrase)


def test_torchscript_file_that_is_not_one(cli, vad, tmp_path):
    code, _, err = cli("verify", _bad_files(tmp_path, vad)["notpt"], "--out", tmp_path)
    _one_line_error(code, err, "is not a TorchScript file")


@pytest.mark.parametrize("args, phrase", [
    (("--shapes", "y:1x2x8"), "--shapes names 'y', which the model does not have"),
    (("--shapes", "x:1x2"), "input 'x' has rank 3"),
    (("--input", "volume=3"), "--input names 'volume'"),
    (("--state", "state:nope"), "the model has no output 'nope'"),
    (("--preset", "seed"), "give a model FILE or --preset, not both"),
])
def test_bad_flags_for_a_file(cli, vad, tmp_path, args, phrase):
    code, _, err = cli("verify", vad[0], *args, "--out", tmp_path)
    _one_line_error(code, err, phrase)


@pytest.mark.parametrize("arrays, phrase", [
    ({"xx": np.ones((1, 2, FEATURES), np.float32)}, "--inputs names 'xx'"),
    ({"x": np.ones((1, 2, FEATURES), np.float64)}, "array 'x' is float64, the model's input is float32"),
    ({"x": np.ones((1, 2, 3), np.float32)}, "dim 2 is fixed at 8 in the graph, got 3"),
])
def test_bad_npz_for_a_file(cli, vad, tmp_path, arrays, phrase):
    np.savez(tmp_path / "in.npz", **arrays)
    code, _, err = cli("verify", vad[0], "--inputs", tmp_path / "in.npz", "--out", tmp_path)
    _one_line_error(code, err, phrase)


def test_file_flags_need_a_file(cli, tmp_path):
    code, _, err = cli("verify", "--shapes", "x:1x2", "--out", tmp_path)
    _one_line_error(code, err, "--shapes applies to a model FILE")


def test_layout_1_with_clip_has_no_reference(cli, tmp_path):
    path = save(lstm_proto(layout=1, clip=0.5), tmp_path / "bf.onnx")
    code, _, err = cli("verify", path, "--backends", "onnxruntime", "--out", tmp_path)
    _one_line_error(code, err, "ONNX Runtime refuses it: Batchwise recurrent operations (layout == 1) are not "
                               "supported")
