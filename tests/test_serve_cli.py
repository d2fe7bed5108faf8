"""`lstminfer serve` as a user runs it: a real server in a child process, SIGTERM, one-line start-up errors."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

has_serve_extra = importlib.util.find_spec("tritonclient") is not None and importlib.util.find_spec("pytriton")
needs_serve_extra = pytest.mark.skipif(not has_serve_extra, reason="needs the serve extra (tritonserver from "
                                       "nvidia-pytriton, tritonclient): pip install 'lstminfer[serve]'")


def _descendants(pid: int) -> set[int]:
    """Every live process below `pid`, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@needs_serve_extra
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process tree from /proc")
def test_serve_answers_then_sigterm_leaves_no_process(tmp_path):
    info_path = tmp_path / "serve.json"
    command = [sys.executable, "-m", "lstminfer", "serve", "--no-bidirectional", "--num-layers", "1",
               "--hidden-size", "8", "--name", "tiny",
               "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", "--json", str(info_path),
               "--log", str(tmp_path / "tritonserver.log"), "--ready-timeout", "120"]
    # With the execute profile on: its lines reach the log when the models unload at SIGTERM.
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "LSTMINFER_SERVE_PROFILE": "1"})
    try:
        deadline = time.monotonic() + 150
        while not info_path.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert info_path.exists(), f"serve did not come up: {proc.poll()} {proc.stderr.read() if proc.poll() else ''}"
        info = json.loads(info_path.read_text())
        assert info["models"] == ["tiny", "tiny_stream"] and info["http"].startswith("127.0.0.1:")
        assert (info["device"], info["instances"]) == ("cpu", 1)  # --instances auto on a CPU

        import tritonclient.http as httpclient

        client = httpclient.InferenceServerClient(info["http"], network_timeout=20)
        x = httpclient.InferInput("input", [1, 3, 10], "FP32")
        x.set_data_from_numpy(np.ones((1, 3, 10), np.float32))
        result = client.infer("tiny_stream", [x], sequence_id=5, sequence_start=True, sequence_end=True)
        assert result.as_numpy("output").shape == (1, 3, 8)
        client.close()

        below = _descendants(proc.pid)
        assert len(below) >= 2  # tritonserver and the stubs of its two models
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "stopped" in out
        assert "backend onnxruntime on cpu, 1 instance each (auto)" in out
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in below) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [p for p in below if _alive(p)]
        log = (tmp_path / "tritonserver.log").read_text(errors="replace")
        # one request, one execution, to the stream model; none to the stateless one
        assert "lstminfer: tiny_stream: profile: executions of 1-1 requests: 1, 1.0 requests each; " in log
        assert "lstminfer: tiny: profile: no execution" in log
        # Triton made the one instance per model it was told to (its own line per instance: NAME_group_index)
        made = sorted(line.split("ModelInstanceInitialize: ")[1].split()[0] for line in log.splitlines()
                      if "TRITONBACKEND_ModelInstanceInitialize: " in line)
        assert made == ["tiny_0_0", "tiny_stream_0_0"], made
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


@needs_serve_extra
def test_a_taken_port_is_one_line_exit_2(cli):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        code, out, err = cli("serve", "--http-port", port, "--grpc-port", "0", "--metrics-port", "0")
    assert code == 2
    assert f"port {port} on 127.0.0.1 is taken" in err and "--http-port" in err
    assert len(err.strip().splitlines()) == 1


def test_serve_without_the_extra_is_one_line_exit_2(cli, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pytriton" else real(name, *a))
    code, out, err = cli("serve", "--http-port", "0")
    assert code == 2
    assert "not installed" in err and "lstminfer[serve]" in err and len(err.strip().splitlines()) == 1


@needs_serve_extra
def test_a_server_that_fails_to_start_is_one_line(tmp_path):
    """A model whose config Triton refuses: the server exits and the error names the model and the log."""
    from lstminfer.errors import UserError
    from lstminfer.serve.server import ServerConfig, TritonServer

    broken = tmp_path / "repo" / "broken"
    (broken / "1").mkdir(parents=True)
    (broken / "config.pbtxt").write_text('name: "broken"\nbackend: "python"\nmax_batch_size: 1\n'
                                         'input [ { name: "x" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
                                         'output [ { name: "y" data_type: TYPE_FP32 dims: [ 1 ] } ]\n')
    (broken / "1" / "model.py").write_text("raise ImportError('no such thing')\n")
    config = ServerConfig(repository=tmp_path / "repo", http_port=0, grpc_port=0, metrics_port=0)
    server = TritonServer(config, log_path=tmp_path / "log")
    with pytest.raises(UserError) as caught:
        server.start(ready_timeout_s=60)
    message = str(caught.value)
    assert "broken" in message and "no such thing" in message and str(tmp_path / "log") in message
    assert "\n" not in message and server.process is None


@needs_serve_extra
def test_loadtest_without_a_server_is_one_line(cli):
    from lstminfer.serve.server import free_port

    code, _, err = cli("loadtest", f"127.0.0.1:{free_port()}", "--concurrency", "1", "--duration", "1")
    assert code == 2 and "cannot reach a Triton server" in err and len(err.strip().splitlines()) == 1


def test_import_lstminfer_stays_light():
    code = ("import sys, lstminfer, lstminfer.serve.server, lstminfer.serve.repository, lstminfer.serve.loadtest, "
            "lstminfer.serve.state, lstminfer.serve.pymodel; "
            "print([m for m in ('numpy', 'torch', 'tritonclient', 'pytriton', 'onnx') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@needs_serve_extra
def test_a_precision_the_backend_lacks_is_refused_before_the_server_starts(cli):
    code, _, err = cli("serve", "--precision", "fp16", "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0")
    assert code == 2 and "backend onnxruntime cannot serve seed: precision fp16" in err
    assert len(err.strip().splitlines()) == 1


def test_a_stock_repository_of_a_model_file_is_refused_in_one_line(cli, tmp_path):
    code, _, err = cli("export", "--preset", "timeseries", "-o", tmp_path / "gru.onnx")
    assert code == 0, err
    code, _, err = cli("export-triton", tmp_path / "gru.onnx", "-o", tmp_path / "repo", "--platform", "onnxruntime")
    assert code == 2 and "--platform python" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("command", ["serve", "export-triton", "loadtest"])
def test_every_flag_has_help_and_its_default(command):
    """`--help` of the serve commands: no flag without a help text, and every non-trivial default stated in it."""
    import argparse

    from lstminfer.commands import serve

    parser = argparse.ArgumentParser()
    serve.register(parser.add_subparsers())
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    for action in sub._actions:
        if not action.option_strings or action.dest == "help":
            continue
        flag = action.option_strings[-1]
        assert action.help, f"{command} {flag} has no help"
        if action.default not in (None, False) and action.dest not in serve.PATH_ARGS and flag.startswith("--"):
            shown = {1_000_000: "1000000"}.get(action.default, f"{action.default:g}" if isinstance(
                action.default, float) else str(action.default))
            if flag in MODEL_FLAGS:  # the model group is every command's: its defaults come from the preset
                continue
            assert shown in action.help, f"{command} {flag}: default {action.default!r} not in {action.help!r}"
        if action.nargs != 0 and action.choices is None:  # not QUEUE_DELAY_US: a metavar that says what it takes
            assert action.metavar or "_" not in action.dest, f"{command} {flag} shows its dest in capitals"


MODEL_FLAGS = {"--seed", "--preset", "--kind", "--input-size", "--hidden-size", "--num-layers", "--bidirectional",
               "--batch-first", "--bias", "--seq-len", "--batch", "--no-state"}
