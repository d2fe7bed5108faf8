"""--threads: applied to every CPU backend, read back from each runtime, recorded in every record, and the
process-wide torch setting restored when the runner closes."""

from __future__ import annotations

import json

import pytest
import torch

from lstminfer.backends.onnxrt import OrtCpuRunner, physical_cores
from lstminfer.backends.pytorch import TorchRunner
from lstminfer.measure.bench import BenchConfig
from lstminfer.measure.records import Point
from lstminfer.measure.run import measure
from lstminfer.measure.verify import References
from lstminfer.model.base import Model
from lstminfer.model.spec import ModelSpec, build_module
from lstminfer.onnx.export import export_model

FAST = ("--warmup", "0", "--duration", "0.02", "--iterations", "3")


def _model(tmp_path) -> Model:
    spec = ModelSpec("lstm", 3, 5, 1, batch_first=True)
    model = Model("small", spec, build_module(spec), seq_len=4, batch=2)
    export_model(model, tmp_path / "m.onnx")
    return model


def _cpu_backends() -> list[str]:
    names = ["torch", "onnxruntime"]
    try:
        import openvino  # noqa: F401

        names.append("openvino")
    except ImportError:
        pass
    return names


def test_torch_threads_applied_read_back_and_restored(tmp_path):
    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    runner = TorchRunner(_model(tmp_path), threads=wanted)
    runner.prepare()
    assert torch.get_num_threads() == wanted
    assert runner.describe()["threads"] == wanted
    runner.close()
    assert torch.get_num_threads() == before


def test_onnxruntime_threads_read_back_from_the_session(tmp_path):
    model = _model(tmp_path)
    runner = OrtCpuRunner(model, threads=1)
    runner.prepare()
    assert runner.session.get_session_options().intra_op_num_threads == 1
    assert runner.describe()["threads"] == 1
    default = OrtCpuRunner(model)
    default.prepare()
    assert default.describe()["threads"] == physical_cores()  # ORT's 0: one thread per physical core


def test_physical_cores_counts_cores_not_hyperthreads():
    # 2 sockets x 2 cores x 2 hyperthreads: 8 processors, 4 physical cores
    cpuinfo = "".join(f"processor\t: {i}\nphysical id\t: {i // 4}\ncore id\t\t: {i % 4 // 2}\n\n" for i in range(8))
    assert physical_cores(cpuinfo) == 4


def test_openvino_threads_read_back_from_the_compiled_model(tmp_path):
    pytest.importorskip("openvino", reason='needs OpenVINO (pip install "lstminfer[cpu]")')
    from lstminfer.backends.openvino import OpenVinoRunner

    runner = OpenVinoRunner(_model(tmp_path), threads=1)
    runner.prepare()
    assert runner.describe()["threads"] == 1
    assert runner.config["INFERENCE_NUM_THREADS"] == 1


def test_every_verify_and_bench_record_carries_the_threads(tmp_path):
    model = _model(tmp_path)
    before = torch.get_num_threads()
    targets = [Point(name, "cpu", "fp32") for name in _cpu_backends()]
    timing = BenchConfig(warmup_ms=0, duration_s=0.02, iterations=3)
    result = measure(model, targets, References(model), [(2, 2)], [(3, 2)], timing,
                     options={"threads": 1, "cpu_mode": "latency"})
    for records in (result.verify, result.bench):
        rows = [r.to_dict() for r in records]
        assert {r["backend"] for r in rows} == set(_cpu_backends())
        assert all(r["threads"] == 1 for r in rows), [(r["backend"], r.get("threads"), r.get("error")) for r in rows]
    assert torch.get_num_threads() == before


def test_cli_threads_flag_reaches_the_records(cli, tmp_path):
    backends = ",".join(_cpu_backends())
    code, _, err = cli("bench", "--preset", "timeseries", "--seq-len", "3", "--batch", "2", "--backends", backends,
                       "--threads", "1", "--out", tmp_path, "--json", tmp_path / "b.json", *FAST)
    assert code == 0, err
    records = json.loads((tmp_path / "b.json").read_text())
    assert [r["threads"] for r in records] == [1] * len(_cpu_backends())
    if "openvino" in backends:
        assert next(r for r in records if r["backend"] == "openvino")["cpu_mode"] == "latency"


def test_cli_threads_must_be_positive(cli, tmp_path):
    code, _, err = cli("bench", "--backends", "torch", "--threads", "0", "--out", tmp_path, *FAST)
    assert code == 2
    assert "--threads" in err and "positive integer" in err and len(err.strip().splitlines()) == 1
