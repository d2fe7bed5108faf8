"""A TorchScript file (torch.jit.load) run as a PyTorch backend, on the CPU or a GPU."""

from __future__ import annotations

from typing import Any

import numpy as np

from lstminfer.backends.pytorch import TorchDevices


class TorchScriptRunner(TorchDevices):
    """The user's scripted or traced module, eager, inputs mapped to forward's arguments by name."""

    name = "torchscript"
    precisions = ("fp32",)
    not_applicable = "not a TorchScript model (give a .pt file saved with torch.jit.save)"

    @classmethod
    def applies_to(cls, model: Any) -> bool:
        return model.script_path is not None

    def prepare_impl(self) -> None:
        import torch

        from lstminfer.onnx.torchscript import load_torchscript, script_args

        self.module = load_torchscript(self.model.script_path, self.device)
        self.arguments = script_args(self.module)
        if self.device == "cuda":
            self.stream = torch.cuda.Stream()

    def upload_impl(self, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
        import torch

        return {n: torch.from_numpy(np.ascontiguousarray(a)).to(self.device, non_blocking=True)
                for n, a in inputs.items()}

    def execute_impl(self, device_inputs: dict[str, Any]) -> list[Any]:
        import torch

        from lstminfer.onnx.torchscript import flatten_outputs, script_inputs

        with torch.inference_mode():
            return flatten_outputs(self.module(*script_inputs(self.arguments, self.model.input_names, device_inputs)))

    def download_impl(self, device_outputs: list[Any]) -> dict[str, np.ndarray]:
        names = self.model.name_outputs(len(device_outputs))
        return {n: t.detach().float().cpu().numpy() if t.is_floating_point() else t.cpu().numpy()
                for n, t in zip(names, device_outputs)}

    def close_impl(self) -> None:
        self.module = None
