"""PyTorch eager (CPU and CUDA) and CUDA-graph runners."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from lstminfer.backends.base import Runner, torch_settings
from lstminfer.backends.cuda_graph import GraphReplay
from lstminfer.cudnn_rnn import flatten_rnn

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def torch_dtype(precision: str) -> Any:
    import torch

    return getattr(torch, DTYPES[precision])


def cuda_available() -> tuple[bool, str]:
    import torch

    if not torch.cuda.is_available():
        return False, "no CUDA device (this torch build or machine has none)"
    return True, ""


class TorchTensors:
    """Runner mixin: host arrays -> tensors on the runner's device and dtype, outputs back as float32 arrays.

    Pageable copies (no per-call pinning, which would cost a host allocation per query), on the current
    stream, which `Runner.infer` and `bench` make the runner's own.
    """

    def upload_impl(self, inputs: dict[str, np.ndarray]) -> list[Any]:
        import torch

        return [torch.from_numpy(np.ascontiguousarray(inputs[n])).to(self.device, self.dtype, non_blocking=True)
                for n in self.model.input_names]

    def download_impl(self, device_outputs: list[Any]) -> dict[str, np.ndarray]:
        return {n: t.float().cpu().numpy() for n, t in zip(self.model.output_names, device_outputs)}


class TorchDevices(Runner):
    """A torch backend: on the CPU, or on a CUDA device when this torch build sees one."""

    devices = ("cpu", "cuda")
    install_hint = "pip install torch (a CUDA build for the cuda device)"

    @classmethod
    def available_impl(cls, device: str) -> tuple[bool, str]:
        return cuda_available() if device == "cuda" else (True, "")


class TorchRunner(TorchTensors, TorchDevices):
    """The model as PyTorch runs it: nn.LSTM / nn.GRU (cuDNN on CUDA), eager."""

    name = "torch"
    precisions = ("fp32", "fp16", "bf16")
    not_applicable = "no PyTorch module for this model (an ONNX file: use onnxruntime or tensorrt)"

    @classmethod
    def applies_to(cls, model: Any) -> bool:
        return model.module is not None

    def supports_impl(self) -> tuple[bool, str]:
        if self.device == "cpu" and self.precision == "fp16":
            return False, "fp16 RNNs are not implemented on the CPU in PyTorch; use bf16 or a GPU"
        return True, ""

    @property
    def tf32(self) -> bool:
        return bool(self.options.get("tf32", False)) and self.device == "cuda" and self.precision == "fp32"

    def prepare_impl(self) -> None:
        import torch

        self.dtype = torch_dtype(self.precision)
        self.module = copy.deepcopy(self.model.module).to(device=self.device, dtype=self.dtype).eval()
        for sub in self.module.modules():
            if isinstance(sub, torch.nn.RNNBase):
                flatten_rnn(sub)  # one contiguous weight buffer, as cuDNN wants (bf16 too: cudnn_rnn.py)
        if self.device == "cuda":
            self.stream = torch.cuda.Stream()

    def settings(self) -> Any:
        """Process-wide, so entered by prepare and restored by close: fp32 means IEEE fp32 (PyTorch lets cuDNN
        RNNs use TF32 by default, errors near 1e-3), and --threads for torch's CPU intra-op pool."""
        return torch_settings(tf32=self.tf32 if self.device == "cuda" else None,
                              threads=self.options.get("threads") if self.device == "cpu" else None)

    def execute_impl(self, device_inputs: list[Any]) -> list[Any]:
        import torch

        with torch.inference_mode():
            return self.model.call_module(self.module, device_inputs)

    def close_impl(self) -> None:
        self.module = None

    def describe(self) -> dict[str, Any]:
        import torch

        out: dict[str, Any] = {"tf32": self.tf32} if self.device == "cuda" else {}
        if self.device == "cuda":
            out["cudnn"] = torch.backends.cudnn.version()
        else:
            out["threads"] = torch.get_num_threads()  # read back: what this runner runs with
        return out


class TorchGraphRunner(GraphReplay, TorchRunner):
    """cuDNN's kernels captured once per input shape in a CUDA graph, then replayed."""

    name = "torch-graph"
    devices = ("cuda",)

    def capture_target(self, static_inputs: list[Any]) -> list[Any]:
        return TorchRunner.execute_impl(self, static_inputs)
