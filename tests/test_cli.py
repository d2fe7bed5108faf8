"""The CLI end to end on the seed model, and every user error as one line with exit code 2."""

from __future__ import annotations

import json
from unittest import mock

import onnx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

FAST = ["--warmup", "0", "--duration", "0.05", "--iterations", "3"]


def test_run_seed_end_to_end(cli, tmp_path):
    out = tmp_path / "out"
    code, stdout, stderr = cli("run", "--out", out, "--json", tmp_path / "all.json", *FAST)
    assert code == 0, stderr
    for name in ("model.onnx", "results.json", "report.md"):
        assert (out / name).is_file()
    results = json.loads((out / "results.json").read_text())
    assert results["model"]["spec"] == {"kind": "lstm", "input_size": 10, "hidden_size": 20, "num_layers": 10,
                                        "bidirectional": True, "batch_first": False, "bias": True, "proj_size": 0}
    assert (results["model"]["seq_len"], results["model"]["batch"]) == (1, 3)
    assert results["machine"]["libraries"]["torch"].startswith("2.")
    backends = {(r["backend"], r["device"]) for r in results["verify"]}
    assert {("torch", "cpu"), ("onnxruntime", "cpu"), ("onnx-reference", "cpu")} <= backends
    assert all(r["passed"] for r in results["verify"] if r.get("skipped") is None)
    bench = {r["backend"]: r for r in results["bench"] if "latency_ms" in r}
    assert {"torch", "onnxruntime"} <= set(bench)
    assert bench["torch"]["seq_len"] == 1 and bench["torch"]["batch"] == 3
    assert len(bench["torch"]["times_ms"]) == bench["torch"]["queries"]
    assert json.loads((tmp_path / "all.json").read_text())["bench"]
    report = (out / "report.md").read_text()
    assert "## Verification" in report and "onnxruntime" in report
    assert "Benchmark of seed" in stdout and "passed" in stdout
    proto = onnx.load(str(out / "model.onnx"))
    assert [n.op_type for n in proto.graph.node].count("LSTM") == 10


def test_verify_json_records(cli, tmp_path):
    code, _, err = cli("verify", "--kind", "gru", "--input-size", "4", "--hidden-size", "6", "--num-layers", "2",
                       "--batch-first", "--points", "1x1,7x2", "--out", tmp_path, "--json", tmp_path / "v.json")
    assert code == 0, err
    records = json.loads((tmp_path / "v.json").read_text())
    torch_recs = [r for r in records if r["backend"] == "torch"]
    assert {(r["seq_len"], r["batch"]) for r in torch_recs} == {(1, 1), (7, 2)}
    assert {r["output"] for r in torch_recs} == {"output", "hn"}


def test_bench_json_and_backend_selection(cli, tmp_path):
    code, out, err = cli("bench", "--preset", "timeseries", "--seq-len", "4", "--batch", "2", "--backends",
                         "onnxruntime", "--out", tmp_path, "--json", tmp_path / "b.json", *FAST)
    assert code == 0, err
    records = json.loads((tmp_path / "b.json").read_text())
    assert [r["backend"] for r in records] == ["onnxruntime"]
    assert records[0]["latency_ms"]["median"] > 0


def test_export_command(cli, tmp_path):
    code, out, err = cli("export", "--exporter", "direct", "-o", tmp_path / "m.onnx", "--json", tmp_path / "e.json")
    assert code == 0, err
    assert "direct exporter" in out
    assert json.loads((tmp_path / "e.json").read_text())["exporter"] == "direct"


def test_backends_lists_unavailable_with_reason(cli, tmp_path):
    code, out, _ = cli("backends", "--json", tmp_path / "b.json")
    rows = json.loads((tmp_path / "b.json").read_text())
    assert code == 0
    by = {(r["backend"], r["device"]): r for r in rows}
    assert by[("torch", "cpu")]["available"] == "yes"
    if not torch.cuda.is_available():
        assert by[("torch-graph", "cuda")]["available"] == "no"
        assert "no CUDA device" in by[("torch-graph", "cuda")]["reason"]


def test_proj_size_runs_torch_only(cli, tmp_path):
    code, out, err = cli("verify", "--input-size", "4", "--hidden-size", "8", "--num-layers", "1", "--proj-size", "3",
                         "--backends", "torch", "--out", tmp_path, "--json", tmp_path / "v.json")
    assert code == 0, err
    assert "no ONNX file" in err
    assert all(r["passed"] for r in json.loads((tmp_path / "v.json").read_text()))


def _factory(tmp_path, body):
    path = tmp_path / "user.py"
    path.write_text("import torch\n" + body)
    return path


@pytest.mark.parametrize("args, message", [
    (["verify", "--preset", "nope"], "invalid choice: 'nope'"),
    (["verify", "--backends", "nosuch"], "unknown backend 'nosuch'"),
    (["verify", "--backends", "torch-graph", "--device", "cpu"], "backend 'torch-graph' has no device 'cpu'"),
    (["bench", "--hidden-size", "0"], "argument --hidden-size: must be a positive integer, got '0'"),
    (["bench", "--seq-len", "-2"], "argument --seq-len: must be a positive integer, got '-2'"),
    (["verify", "--points", "3"], "is not SEQxBATCH"),
    (["verify", "--weights", "w.pt"], "--weights needs --model"),
    (["bench", "--iterations", "0"], "argument --iterations: must be a positive integer, got '0'"),
    (["export", "--input-size", "4", "--hidden-size", "8", "--proj-size", "2"], "cannot export an LSTM with proj_size"),
])
def test_user_errors_are_one_line_exit_2(cli, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(*args)
    assert code == 2
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_unavailable_backend_by_name(cli, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    code, _, err = cli("verify", "--backends", "torch-graph", "--out", tmp_path)
    assert code == 2 and "backend torch-graph[cuda] is unavailable: no CUDA device" in err


def test_model_factory_errors(cli, tmp_path):
    good = _factory(tmp_path, "def make():\n    return torch.nn.LSTM(4, 6)\n")
    code, _, err = cli("verify", "--model", f"{good}:nothere", "--out", tmp_path)
    assert code == 2 and "has no callable 'nothere'" in err
    bad = tmp_path / "bad.py"
    bad.write_text("def make():\n    return 'not a module'\n")
    code, _, err = cli("verify", "--model", f"{bad}:make", "--out", tmp_path)
    assert code == 2 and "returned str, not a torch.nn.Module" in err
    code, _, err = cli("verify", "--model", f"{good}:make", "--input-size", "5", "--out", tmp_path)
    assert code == 2 and "--input-size 5 does not match the model's input_size 4" in err
    weights = tmp_path / "w.pt"
    torch.save(torch.nn.LSTM(4, 7).state_dict(), weights)
    code, _, err = cli("verify", "--model", f"{good}:make", "--weights", weights, "--out", tmp_path)
    assert code == 2 and "does not fit the model" in err


def test_user_model_verifies(cli, tmp_path):
    path = _factory(tmp_path, "def make():\n    return torch.nn.LSTM(4, 6, num_layers=2, batch_first=True)\n")
    weights = tmp_path / "w.pt"
    torch.save(torch.nn.LSTM(4, 6, num_layers=2, batch_first=True).state_dict(), weights)
    code, out, err = cli("verify", "--model", f"{path}:make", "--weights", weights, "--out", tmp_path / "o",
                         "--json", tmp_path / "v.json")
    assert code == 0, err
    records = json.loads((tmp_path / "v.json").read_text())
    assert {r["backend"] for r in records} >= {"torch", "onnxruntime", "onnx-reference"}


def test_unwritable_out(cli, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = cli("run", "--out", blocker / "sub", *FAST)
    assert code == 2 and "cannot create output directory" in err


def test_interrupt_exits_130_without_half_written_files(cli, tmp_path):
    out = tmp_path / "out"
    with mock.patch("lstminfer.commands.core.measure", side_effect=KeyboardInterrupt):
        code, _, err = cli("run", "--out", out, *FAST)
    assert code == 130 and "interrupted" in err
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_verification_failure_exits_1(cli, tmp_path):
    from lstminfer.measure.verify import Tolerance

    with mock.patch.dict("lstminfer.measure.verify.TOLERANCES", {"fp32": Tolerance(0.0, 0.0)}):
        code, out, _ = cli("verify", "--kind", "lstm", "--input-size", "3", "--hidden-size", "4", "--num-layers", "3",
                           "--backends", "onnxruntime", "--out", tmp_path)
    assert code == 1 and "FAILED" in out


# ---- the checked numbers every flag uses (commands/values.py) -----------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), st.integers(-10**12, 10**12).map(str),
                 st.text(max_size=6)))
def test_checked_numbers_accept_exactly_the_finite_values_in_range(text):
    import argparse
    import math

    from lstminfer.commands.values import non_negative_float, positive_float, positive_int, seed_int

    def expected(kind, ok):
        try:
            value = kind(text)
        except ValueError:
            return None
        return value if math.isfinite(value) and ok(value) else None

    for parse, kind, ok in ((positive_float, float, lambda v: v > 0), (non_negative_float, float, lambda v: v >= 0),
                            (positive_int, int, lambda v: v > 0), (seed_int, int, lambda v: 0 <= v < 2**32)):
        want = expected(kind, ok)
        if want is None:
            with pytest.raises(argparse.ArgumentTypeError):
                parse(text)
        else:
            assert parse(text) == want


def test_no_command_redefines_a_flag():
    """sweep once replaced the single-value --seq-len/--batch/--precision with conflict_handler="resolve"."""
    import argparse

    from lstminfer.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert {name for name, p in commands.items() if p.conflict_handler != "error"} == set()
    sweep = {a.dest: a for a in commands["sweep"]._actions}
    assert sweep["seq_lens"].option_strings == ["--seq-len"] and "seq_len" not in sweep
    assert parser.parse_args(["sweep", "--seq-len", "1,16", "--precision", "fp32,fp16"]).precisions == (
        "fp32", "fp16")
