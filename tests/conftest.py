"""Shared fixtures: markers that skip with a reason, and a CLI runner; how many pytest-xdist workers run the suite."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def _tensorrt() -> bool:
    try:
        import tensorrt  # noqa: F401

        return True
    except ImportError:
        return False


# ---- pytest-xdist (pyproject.toml's addopts: -n auto) -------------------------------------------------------------
# Serial where a CUDA device is visible: the persistent kernels spin-wait for programs that must all be resident on
# the GPU at once, so two workers launching them on one GPU could stall each other (docs/fused_kernel.md).  This
# holds for an explicit -n too; `-n 0` runs serially anywhere.

MAX_WORKERS = 8  # each worker imports torch, Triton, ONNX Runtime and OpenVINO


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    # runs before pytest-xdist's own pytest_cmdline_main (tryfirst, registered later), which reads numprocesses
    if getattr(config.option, "numprocesses", None) and _cuda():
        config.option.numprocesses = 0


def _cpus() -> int:
    """The CPUs this process may run on, capped by a container's CPU quota (cgroup v2 cpu.max, v1 cfs_quota_us),
    which the affinity mask does not show."""
    cpus = len(os.sched_getaffinity(0))
    cgroup = Path("/sys/fs/cgroup")
    for quota_file, period_file in (("cpu.max", None), ("cpu/cpu.cfs_quota_us", "cpu/cpu.cfs_period_us")):
        try:
            fields = (cgroup / quota_file).read_text().split()
            if period_file:
                fields += (cgroup / period_file).read_text().split()
            quota, period = int(fields[0]), int(fields[1])  # "max" (no quota) and v1's -1 fall through
        except (OSError, ValueError, IndexError):
            continue
        if quota > 0:
            return max(1, min(cpus, quota // period))
    return cpus


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """`-n auto`: one worker per CPU this process may use, at most MAX_WORKERS; PYTEST_XDIST_AUTO_NUM_WORKERS
    still overrides (pytest-xdist's own hook reads it)."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None
    return min(_cpus(), MAX_WORKERS)


def pytest_configure(config: pytest.Config) -> None:
    """In a worker, torch and the processes the tests start (OMP_NUM_THREADS, unless set) compute on one thread:
    with every worker's OpenMP pool on every core, the spinning threads took turns and a torch-heavy test ran ten
    times slower. Tests that set the threads themselves still do, from this count."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        import torch

        torch.set_num_threads(1)


def pytest_report_header(config: pytest.Config) -> str | None:
    if getattr(config.option, "numprocesses", None) == 0 and _cuda():
        return "xdist: serial, a CUDA device is visible (tests/conftest.py)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    no_gpu = pytest.mark.skip(reason="needs a CUDA GPU (run on the device: pytest -m gpu)")
    no_trt = pytest.mark.skip(reason="needs NVIDIA TensorRT (pip install 'lstminfer[tensorrt]' on a GPU machine)")
    has_gpu, has_trt = _cuda(), _tensorrt()
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(no_gpu)
        if "tensorrt" in item.keywords and not has_trt:
            item.add_marker(no_trt)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    """Run `lstminfer ARGS...` in-process: returns (exit code, stdout, stderr). As on a user's machine: without
    TRITON_INTERPRET, which test modules of the fused kernels set for the whole process when they are collected (a
    CPU would otherwise add the interpreted fused kernel to every run); a test of that backend sets it again."""
    from lstminfer.cli import main

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)

    def run(*args: str) -> tuple[int, str, str]:
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse exits on usage errors
            code = exc.code if isinstance(exc.code, int) else 2
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def has_trtexec() -> bool:
    return shutil.which("trtexec") is not None
