"""Shared fixtures: markers that skip with a reason, and a CLI runner."""

from __future__ import annotations

import shutil

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
def cli(capsys: pytest.CaptureFixture[str]):
    """Run `lstminfer ARGS...` in-process: returns (exit code, stdout, stderr)."""
    from lstminfer.cli import main

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
