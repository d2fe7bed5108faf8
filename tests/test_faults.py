"""Bad input, the way a new user gives it: every case answers with exit code 2 and exactly one line on stderr
that names the problem, never a traceback (issue 14, items 3, 16-19 and more).

The table runs in-process (`lstminfer.cli.main`); what can end or abort the process itself (a model file
that calls sys.exit, zero-sized shapes that once aborted ONNX Runtime natively) runs in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _recurrent_files import lstm_proto, save

LOG = Path(__file__).parent / "fixtures" / "trtexec_10.8.0_dynamic.log"
FAST = ["--warmup", "0", "--duration", "0.05", "--iterations", "3"]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One of each kind of wrong file, and a small valid ONNX model to hand them to."""
    d = tmp_path_factory.mktemp("faults")
    (d / "text.txt").write_text("hello\n")
    (d / "garbage.json").write_text("garbage\n")
    (d / "binary.json").write_bytes(b"\x00\x01\x02garbage")
    (d / "not_records.json").write_text(json.dumps({"verify": "x", "bench": 5}))
    keys = ("startEnqMs", "endEnqMs", "startH2dMs", "endH2dMs", "startComputeMs", "endComputeMs", "startD2hMs",
            "endD2hMs")
    (d / "nan_times.json").write_text(json.dumps([{k: float("nan") for k in keys}]))
    (d / "a_directory").mkdir()
    (d / "exits.py").write_text("import sys\nsys.exit(3)\ndef make():\n    pass\n")
    (d / "exits0.py").write_text("import sys\nsys.exit(0)\n")
    (d / "factory.py").write_text("import torch\ndef make():\n    return torch.nn.LSTM(4, 6)\n")
    save(lstm_proto(), d / "lstm.onnx")
    return {p.stem: p for p in d.iterdir()}


# (arguments, what the one line must say); {name} is one of the files above.
CASES = [
    # 16: tracebacks before
    (["verify", "--seed", "-1"], "argument --seed: must be an integer from 0 to 4294967295, got '-1'"),
    (["bench", "--seed", "1.5"], "argument --seed: '1.5' is not an integer"),
    (["verify", "--hidden-size", "100000"], "of memory"),
    (["verify", "--points", "1x3,100000000x3"], "at seq 100000000 x batch 3 needs at least"),
    (["sweep", "--seq-len", "1,100000000", "--batch", "1,100000"], "at seq 100000000 x batch 100000 needs at least"),
    (["export", "--num-layers", "1", "--no-bidirectional", "--seq-len", "100000000", "--batch", "100000"],
     "of memory"),
    (["import-trtexec", LOG, "--times", "{garbage}"], "garbage.json is not valid JSON"),
    (["import-trtexec", LOG, "--times", "{binary}"], "binary.json is not valid JSON"),
    (["import-trtexec", "{binary}"], "binary.json"),
    (["import-trtexec", "{nan_times}"], "query 0 has a time that is not a finite number"),
    (["import-trtexec", LOG, "--times", "{nan_times}"], "query 0 has a time that is not a finite number"),
    (["report", "{binary}"], "binary.json"),
    (["report", "{not_records}"], "not_records.json"),
    # 17: non-finite and out-of-range numbers
    (["bench", "--duration", "nan"], "argument --duration: must be a non-negative finite number, got 'nan'"),
    (["run", "--duration", "inf"], "argument --duration: must be a non-negative finite number, got 'inf'"),
    (["sweep", "--duration", "nan"], "argument --duration: must be a non-negative finite number, got 'nan'"),
    (["bench", "--warmup", "-1"], "argument --warmup: must be a non-negative finite number, got '-1'"),
    (["bench", "--iterations", "0"], "argument --iterations: must be a positive integer, got '0'"),
    (["verify", "--threads", "0"], "argument --threads: must be a positive integer, got '0'"),
    (["export", "--proj-size", "-1"], "argument --proj-size: must be a non-negative integer, got '-1'"),
    (["verify", "--num-layers", "nan"], "argument --num-layers: 'nan' is not an integer"),
    (["stream", "{lstm}", "--chunk", "2", "--chunk-ms", "nan"],
     "argument --chunk-ms: must be a positive finite number, got 'nan'"),
    (["stream", "{lstm}", "--chunk", "0"], "argument --chunk: must be a positive integer, got '0'"),
    (["stream", "{lstm}", "--chunk", "2", "--warmup-chunks", "-1"],
     "argument --warmup-chunks: must be a non-negative integer, got '-1'"),
    (["stream", "{lstm}", "--chunk", "2", "--batch", "0"], "argument --batch: must be a positive integer"),
    (["import-trtexec", LOG, "--seq-len", "0"], "argument --seq-len: must be a positive integer, got '0'"),
    (["import-trtexec", LOG, "--batch", "-3"], "argument --batch: must be a positive integer, got '-3'"),
    (["trtexec-cmd", "{lstm}", "--duration", "nan"], "argument --duration: must be a non-negative finite number"),
    (["trtexec-cmd", "{lstm}", "--workspace", "0"], "argument --workspace: must be a positive integer"),
    (["build", "{lstm}", "--max-seq-len", "-5"], "argument --max-seq-len: must be a positive integer"),
    (["sweep", "--seq-len", "1,0"], "argument --seq-len: must be a positive integer, got '0'"),
    (["sweep", "--batch", "1,x"], "argument --batch: 'x' is not an integer"),
    (["sweep", "--precision", "fp32,fp8"], "argument --precision: 'fp32,fp8' must be a comma-separated list"),
    (["loadtest", "127.0.0.1:1", "--duration", "nan"], "argument --duration: must be a positive finite number"),
    (["loadtest", "127.0.0.1:1", "--timeout", "inf"], "argument --timeout: must be a positive finite number"),
    (["serve", "--http-port", "70000"], "argument --http-port: must be an integer from 0 to 65535, got '70000'"),
    (["serve", "--idle-timeout", "nan"], "argument --idle-timeout: must be a positive finite number"),
    (["export-triton", "-o", "{a_directory}", "--max-batch", "0"], "argument --max-batch: must be a positive integer"),
    # 18: a model file that ends the process, or is not a model
    (["verify", "--model", "{exits}:make"], "called sys.exit(3)"),
    (["verify", "--model", "{a_directory}/x.py:make"], "does not exist"),
    # 19: messages that mislead
    (["verify", "--model", "{factory}:make", "--weights", "{text}"],
     "is not a file torch.save writes (neither its zip archive nor a pickle)"),
    (["verify", "{lstm}", "--inputs", "{text}"], "is not a .npz file (the zip archive numpy.savez writes)"),
    (["verify", "{lstm}", "--inputs", "{a_directory}"], "a_directory is a directory, not a .npz file"),
    (["verify", "{a_directory}"], "a_directory is a directory, not a model file"),
    (["stream", "{a_directory}", "--chunk", "1"], "a_directory is a directory, not a model file"),
    (["inspect", "{a_directory}"], "a_directory is a directory, not a model file"),
    # model flags that do not go together
    (["export", "--kind", "gru", "--proj-size", "2"], "proj_size is an LSTM option"),
    (["verify", "--preset", "speech", "--proj-size", "512"], "proj_size (512) must be smaller than hidden_size"),
    (["verify", "{lstm}", "--preset", "seed"], "give a model FILE or --preset, not both"),
    (["verify", "--shapes", "X:1x2x3"], "--shapes applies to a model FILE"),
    # more: every other kind of value and file a flag takes
    (["verify", "--points", "0x3"], "--points: '0x3' must be SEQxBATCH with positive sizes"),
    (["verify", "--backends", "torch:tpu"], "backend 'torch' has no device 'tpu'"),
    (["verify", "{lstm}", "--input", "X=abc"], "'abc' is not a number"),
    (["verify", "{lstm}", "--input", "X=nan"], "'nan' is not a finite number"),
    (["stream", "{lstm}", "--chunk", "2", "--input", "X=-inf"], "'-inf' is not a finite number"),
    (["stream", "{lstm}", "--chunk", "2", "--state", "nope:hn"], "the model has no input 'nope'"),
    (["verify", "{text}"], "text.txt is not an ONNX file"),
    (["trtexec-cmd", "{text}"], "text.txt is not a readable ONNX file"),
    (["import-trtexec", "{a_directory}"], "a_directory"),
    (["report", "{a_directory}"], "a_directory holds no results"),
    (["verify", "--points", "1x1", "--json", "{a_directory}"], "--json {a_directory} is a directory"),
    # 3: zero-sized dims never reach a runtime (the native abort runs in a subprocess below)
    (["verify", "{lstm}", "--shapes", "X:0x2x3"], "X"),
]


@pytest.mark.parametrize("args, message", CASES, ids=[" ".join(Path(str(a)).name for a in args) for args, _ in CASES])
def test_bad_input_is_one_line_exit_2(cli, files, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)  # nothing a refused command might write lands in the repository
    json_flag = [] if "--json" in args else ["--json", tmp_path / "out.json"]
    code, out, err = cli(*[str(a).format(**files) for a in args], *json_flag)
    assert code == 2, (code, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert message.format(**files) in lines[0]
    assert "Traceback" not in err and not (tmp_path / "out.json").exists()


def _subprocess(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    return subprocess.run([sys.executable, "-m", "lstminfer", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, message", [
    (["verify", "--model", "{exits0}:make"], "called sys.exit(0)"),  # exit code 0 and silence before
    (["verify", "{lstm}", "--shapes", "X:5x0x3", "--backends", "onnxruntime"], "X"),  # aborted natively before
    (["verify", "{lstm}", "--shapes", "X:0x2x3", "--backends", "onnxruntime"], "X"),  # "passed" before
])
def test_process_ending_inputs_in_a_subprocess(files, tmp_path, args, message):
    done = _subprocess(*[a.format(**files) for a in args], cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert "Traceback" not in done.stderr


# ---- --debug and --json - (item 24) -------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_traceback_and_keeps_exit_2(cli, where):
    args = ["verify", "--hidden-size", "100000"]
    code, _, err = cli(*(["--debug", *args] if where == "before" else [*args, "--debug"]))
    assert code == 2
    assert "Traceback" in err and "UserError" in err
    assert err.strip().splitlines()[-1].startswith("lstminfer: error: ") and "of memory" in err


def test_json_dash_is_stdout_for_verify(cli, tmp_path):
    code, out, err = cli("verify", "--kind", "gru", "--input-size", "3", "--hidden-size", "4", "--num-layers", "1",
                         "--no-bidirectional", "--points", "2x1", "--backends", "torch", "--out", tmp_path,
                         "--json", "-")
    assert code == 0, err
    records = json.loads(out)  # stdout is the JSON and nothing else
    assert {(r["backend"], r["seq_len"], r["batch"]) for r in records} == {("torch", 2, 1), ("onnx-reference", 2, 1)}
    assert "Verification" in err and not (tmp_path / "-").exists()


@pytest.mark.parametrize("args", [["backends"], ["import-trtexec", LOG], ["inspect", "{lstm}"]])
def test_json_dash_is_stdout_for_every_command(cli, files, args):
    code, out, err = cli(*[str(a).format(**files) for a in args], "--json", "-")
    assert code == 0, err
    assert json.loads(out)
    assert err.strip()  # the tables went to stderr


# ---- a model that is not what the flags say (item 22) -------------------------------------------------------------
def test_size_flags_modify_the_preset(cli, tmp_path):
    import onnx

    code, out, err = cli("export", "--no-bidirectional", "--exporter", "direct", "-o", tmp_path / "m.onnx")
    assert code == 0, err
    assert out.splitlines()[0] == ("model: seed with bidirectional=False: 10-layer LSTM 10->20, seq 1 x batch 3, "
                                   "h0/c0 given")
    nodes = [n for n in onnx.load(str(tmp_path / "m.onnx")).graph.node if n.op_type == "LSTM"]
    assert len(nodes) == 10  # the seed model's ten layers, each one direction
    assert all(a.s == b"forward" for n in nodes for a in n.attribute if a.name == "direction")


def test_every_command_prints_its_model(cli, files, tmp_path):
    code, out, _ = cli("verify", "--preset", "timeseries", "--hidden-size", "8", "--seq-len", "3", "--batch", "2",
                       "--points", "3x2", "--backends", "torch", "--out", tmp_path)
    assert code == 0
    assert "model: timeseries with hidden_size=8: 1-layer GRU 32->8 batch_first, seq 3 x batch 2" in out
    code, out, _ = cli("stream", files["lstm"], "--chunk", "2", "--chunks", "2", "--warmup-chunks", "0",
                       "--backends", "onnxruntime")
    assert code == 0
    assert out.splitlines()[0].startswith(f"model: {files['lstm']}: inputs X, h0, c0")


# ---- help text (item 26) ------------------------------------------------------------------------------------------
def _subparsers() -> dict:
    import argparse

    from lstminfer.cli import build_parser

    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


@pytest.mark.parametrize("command", ["export", "verify", "bench", "run", "sweep", "stream", "inspect", "build",
                                     "trtexec-cmd", "import-trtexec", "backends", "report"])
def test_every_flag_has_help(command):
    missing = [a.option_strings[0] for a in _subparsers()[command]._actions if a.option_strings and not a.help]
    assert not missing


def test_help_names_the_defaults(capsys):
    from lstminfer.cli import main

    for command in ("run", "trtexec-cmd"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "(default ./lstminfer-out)" in text
        assert "warm-up time in ms" in text and "minimum timed seconds (default 3)" in text


def test_run_names_its_plots_in_its_last_line(cli, tmp_path):
    code, out, err = cli("run", "--kind", "lstm", "--num-layers", "1", "--no-bidirectional", "--backends", "torch",
                         "--out", tmp_path, *FAST)
    assert code == 0, err
    last = out.strip().splitlines()[-1]
    plots = sorted(p.name for p in tmp_path.glob("*.png"))
    assert plots and all(name in last for name in plots)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_asked_for_on_a_machine_without_it(cli, tmp_path):
    code, _, err = cli("verify", "--device", "cuda", "--kind", "gru", "--num-layers", "1", "--out", tmp_path)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_bug_is_a_traceback_and_exit_3_not_a_failed_verification(cli, tmp_path):
    from unittest import mock

    with mock.patch("lstminfer.commands.core.list_backends", side_effect=ZeroDivisionError("a bug")):
        code, _, err = cli("backends")
    assert code == 3
    assert "Traceback" in err and "ZeroDivisionError: a bug" in err
    assert err.strip().splitlines()[-1].startswith("lstminfer: internal error (a bug in lstminfer)")
