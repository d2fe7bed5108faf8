"""ONNX Runtime runners, one per execution provider (CPU; CUDA and TensorRT with onnxruntime-gpu)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from lstminfer.backends.base import OnnxFileRunner
from lstminfer.errors import UserError
from lstminfer.onnx.load import _ort_message


def _ort() -> Any:
    import onnxruntime

    return onnxruntime


class OrtRunner(OnnxFileRunner):
    """An InferenceSession on the model's ONNX file with one execution provider.

    ONNX Runtime synchronizes inside ``run``, so its GPU runners are timed with the host clock
    (``host_clock = True``): compute time includes ORT's own copies and synchronization.
    """

    provider: ClassVar[str] = "CPUExecutionProvider"
    host_clock: ClassVar[bool] = True
    install_hint = "pip install onnxruntime"

    @classmethod
    def available_impl(cls, device: str) -> tuple[bool, str]:
        try:
            ort = _ort()
        except ImportError:
            return False, "onnxruntime is not installed"
        if cls.provider not in ort.get_available_providers():
            providers = ", ".join(ort.get_available_providers())
            return False, f"{cls.provider} is not in this onnxruntime build ({providers})"
        if device == "cuda":
            from lstminfer.backends.pytorch import cuda_available

            return cuda_available()
        return True, ""

    def provider_options(self) -> dict[str, Any]:
        return {}

    def session_options(self) -> Any:
        opts = _ort().SessionOptions()
        opts.log_severity_level = 4  # a refusal becomes our one-line error, not also ORT's log line
        if self.device == "cpu" and self.options.get("threads"):
            opts.intra_op_num_threads = int(self.options["threads"])
        return opts

    def prepare_impl(self) -> None:
        ort = _ort()
        try:
            self.session = ort.InferenceSession(
                str(self.model.onnx_path), sess_options=self.session_options(),
                providers=[(self.provider, self.provider_options())],
            )
        except Exception as err:  # a file ORT refuses (layout=1, an op it lacks): one line, wherever it is used
            raise UserError(f"ONNX Runtime refuses {self.model.onnx_path}: {_ort_message(err)}") from err
        self.output_names = [o.name for o in self.session.get_outputs()]

    def execute_impl(self, device_inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self.session.run(self.output_names, device_inputs)
        return dict(zip(self.output_names, outs))

    def download_impl(self, device_outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: np.asarray(v, dtype=np.float32) if np.issubdtype(np.asarray(v).dtype, np.floating) else v
                for k, v in device_outputs.items()}

    def close_impl(self) -> None:
        self.session = None

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"provider": self.provider, "onnxruntime": _ort().__version__}
        if self.device == "cpu" and self._prepared:
            # Read back; 0 is ORT's default, one intra-op thread per physical core.
            out["threads"] = self.session.get_session_options().intra_op_num_threads or physical_cores()
        return out


def physical_cores(cpuinfo: str | None = None) -> int:
    """Physical cores as /proc/cpuinfo lists them (ONNX Runtime's default intra-op thread count)."""
    try:
        text = cpuinfo if cpuinfo is not None else Path("/proc/cpuinfo").read_text()
    except OSError:
        return os.cpu_count() or 1
    cores, physical = set(), "0"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "physical id":
            physical = value.strip()
        elif key.strip() == "core id":
            cores.add((physical, value.strip()))
    return len(cores) or os.cpu_count() or 1


class OrtCpuRunner(OrtRunner):
    name = "onnxruntime"
    devices = ("cpu",)


class OrtCudaRunner(OrtRunner):
    name = "onnxruntime-cuda"
    devices = ("cuda",)
    provider = "CUDAExecutionProvider"
    install_hint = "pip install onnxruntime-gpu (instead of onnxruntime)"


class OrtTensorrtRunner(OrtRunner):
    """The TensorRT execution provider with explicit profiles and caches, so no engine is rebuilt mid-run."""

    name = "onnxruntime-trt"
    devices = ("cuda",)
    provider = "TensorrtExecutionProvider"
    precisions = ("fp32", "fp16", "bf16")
    install_hint = 'pip install onnxruntime-gpu "lstminfer[tensorrt]"'

    def provider_options(self) -> dict[str, Any]:
        from lstminfer.tensorrt.build import default_cache_dir, derive_profile, ort_tensorrt_provider_options

        profile = derive_profile(self.model.onnx_path, points=self.shapes)
        cache_dir = default_cache_dir(self.options.get("out_dir") or Path(self.model.onnx_path).parent)
        return ort_tensorrt_provider_options(self.model.onnx_path, profile, cache_dir, precision=self.precision)
