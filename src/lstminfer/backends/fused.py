"""Our own backend: the whole nn.LSTM / nn.GRU stack in one Triton kernel (lstminfer.kernels.rnn), or for hidden
256 and up per layer a GEMM and one persistent launch (CUDA C++ compiled by NVRTC where cuda-bindings is there,
else Triton; the record's `kernel` says which: persistent-cuda or persistent).

`fused` launches the kernel eagerly; `fused-graph` captures the launch in a CUDA graph per input shape and
replays it. Triton is an optional extra (`pip install "lstminfer[gpu]"`): this module imports it only when
a runner is prepared or `fused_rnn` is called. On the CPU the kernel runs under Triton's interpreter
(TRITON_INTERPRET=1), which is for tests, not speed.

Runner options (``bench``/``verify`` pass them through): ``fused_tune`` (``--fused-tune``) tunes the plan of every
shape the runner serves at prepare time, so timing excludes it (kernels/rnn/tune.py; records say so under
``tuned``), and ``progress`` (the CLI's step log) gets one line per candidate plan.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from lstminfer.backends.base import Runner
from lstminfer.backends.cuda_graph import GraphReplay
from lstminfer.backends.pytorch import TorchTensors, cuda_available, torch_dtype

INTERPRETER_REASON = "CPU runs need TRITON_INTERPRET=1 (Triton's interpreter); use a CUDA GPU"
TUNE_ON_CPU_REASON = ("plan tuning (fused_tune, --fused-tune) times the kernels on a CUDA device; drop it to run the "
                      "fused kernel under the interpreter")


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _plain_rnn(module: Any) -> Any:
    """The module itself when it is a plain nn.LSTM / nn.GRU, else None."""
    import torch

    return module if type(module) in (torch.nn.LSTM, torch.nn.GRU) else None


def fused_rnn(module_or_weights: Any, x: Any, hx: Any = None, precision: str | None = None,
              workspace: dict | None = None, tune: bool = False) -> tuple[Any, Any]:
    """`lstminfer.kernels.rnn.fused_rnn` (the public entry point lives with the kernels; triton imported here
    on first call)."""
    from lstminfer.kernels.rnn import fused_rnn as kernel_fused_rnn

    return kernel_fused_rnn(module_or_weights, x, hx, precision=precision, workspace=workspace, tune=tune)


class FusedRunner(TorchTensors, Runner):
    """The fused Triton kernel, launched eagerly on `self.stream`."""

    name = "fused"
    devices = ("cuda", "cpu")
    precisions = ("fp32", "fp16", "bf16")
    install_hint = 'pip install "lstminfer[gpu]"'

    @classmethod
    def available_impl(cls, device: str) -> tuple[bool, str]:
        if importlib.util.find_spec("triton") is None:
            return False, "triton is not installed"
        if device == "cpu":
            return (True, "") if _interpreting() else (False, INTERPRETER_REASON)
        ok, why = cuda_available()
        if not ok:
            return ok, why
        if _interpreting():
            return False, "TRITON_INTERPRET=1 is set: unset it to run the kernel on the GPU"
        return True, ""

    not_applicable = "no PyTorch module for this model (the fused kernel reads nn.LSTM / nn.GRU weights)"

    @classmethod
    def applies_to(cls, model: Any) -> bool:
        return model.module is not None

    def supports_impl(self) -> tuple[bool, str]:
        spec = self.model.spec
        if _plain_rnn(self.model.module) is None:  # a whole model: lstminfer.accelerate swaps its layers
            from lstminfer.fused_layers import fusable

            return fusable(self.model.module)
        if spec.proj_size:
            return False, "LSTM proj_size (projections) is not supported by the fused kernel"
        if self.options.get("fused_tune") and self.device != "cuda":
            return False, TUNE_ON_CPU_REASON
        return True, ""

    def prepare_impl(self) -> None:
        import torch

        from lstminfer.kernels.rnn import pack_rnn

        self.dtype = torch_dtype(self.precision)
        self.whole = None
        if _plain_rnn(self.model.module) is None:
            from lstminfer.fused_layers import accelerate

            self.whole = accelerate(self.model.module, self.precision).to(self.device, self.dtype)
            self.packed = None
        else:
            self.packed = pack_rnn(self.model.module, self.device, self.dtype)
        self.workspace: dict = {}
        if self.device == "cuda":
            self.stream = torch.cuda.Stream()
        self.tuned: dict[tuple[int, int], Any] = {}  # (seq_len, batch) -> TuneResult
        if self.options.get("fused_tune") and self.packed is not None:
            self._tune()

    def _tune(self) -> None:
        """The tuned plan of every shape this runner serves (kernels/rnn/tune.py), from the cache where it has them;
        inputs of the model's own kind (random, with h0/c0 where the model feeds them)."""
        import numpy as np

        from lstminfer.kernels.rnn import tune_plan

        log = self.options.get("progress")
        rng = np.random.default_rng(0)
        for seq_len, batch in self.shapes:
            x, *state = TorchTensors.upload_impl(self, self.model.make_inputs(seq_len, batch, rng))
            h0 = state[0] if state else None
            c0 = state[1] if len(state) > 1 else None
            self.tuned[(seq_len, batch)] = tune_plan(self.packed, x, h0, c0,
                                                     progress=(lambda line: log(line, None)) if log else None)

    def _run(self, device_inputs: list[Any], workspace: dict) -> list[Any]:
        from lstminfer.kernels.rnn import rnn_forward

        if self.whole is not None:  # each fused layer keeps its scratch buffers per input shape
            return self.model.call_module(self.whole, device_inputs)
        x, *state = device_inputs
        h0 = state[0] if state else None
        c0 = state[1] if len(state) > 1 else None
        plan = None  # plan_for's, inside rnn_forward
        if self.tuned:  # fused_tune: the shape's tuned plan (looked up only then: this is the timed call)
            seq_len, batch = (x.shape[1], x.shape[0]) if self.packed.batch_first else (x.shape[0], x.shape[1])
            plan = self.plan(seq_len, batch)
        # a stalled persistent launch is raised at download (an eager check would wait for every kernel)
        return list(rnn_forward(self.packed, x, h0, c0, plan=plan, workspace=workspace, check=False))

    def _workspaces(self) -> list[dict]:
        return [self.workspace]

    def download_impl(self, device_outputs: Any) -> Any:
        from lstminfer.kernels.rnn import raise_if_stalled

        for workspace in self._workspaces():
            raise_if_stalled(workspace)
        return super().download_impl(device_outputs)

    def execute_impl(self, device_inputs: list[Any]) -> list[Any]:
        return self._run(device_inputs, self.workspace)  # on the current stream: the runner's (Runner.on_stream)

    def close_impl(self) -> None:
        self.packed = None
        self.workspace = {}
        self.tuned = {}

    def plan(self, seq_len: int, batch: int) -> Any:
        """The plan that serves (seq_len, batch): the tuned one where fused_tune tuned it, else plan_for's."""
        from lstminfer.kernels.rnn import plan_for

        tuned = self.tuned.get((seq_len, batch))
        return tuned.plan if tuned else plan_for(self.packed, seq_len, batch)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"tf32": False, "kernel_module": "lstminfer.kernels.rnn"}
        if self._prepared and self.whole is not None:
            out["fused_layers"] = self.whole.lstminfer_summary.replaced
            if self.options.get("fused_tune"):
                out["tune_skipped"] = "a whole model's fused layers keep their default plans (fused_tune tunes plain " \
                                      "nn.LSTM / nn.GRU models)"
        elif self._prepared:
            spec = self.model.spec
            out["hidden_padded"] = self.packed.hidden_padded
            out["interpreter"] = self.device == "cpu"
            out["num_directions"] = spec.num_directions
            if self.device == "cuda":
                from lstminfer.kernels.rnn.cuda_persistent import available

                ok, why = available()  # the CUDA persistent kernel, or why the Triton one serves instead
                out["cuda_kernel"] = "available" if ok else why
        return out

    def describe_at(self, seq_len: int, batch: int) -> dict[str, Any]:
        out = self.describe()
        if self._prepared and self.whole is None:
            # which kernel serves this point and how it is launched (kernel, path, tiles, programs)
            out.update(self.plan(seq_len, batch).describe())
            tuned = self.tuned.get((seq_len, batch))
            if tuned is not None:  # the plan tuning chose: its time, the default's, the default plan
                out["tuned"] = tuned.summary()
        return out


class FusedGraphRunner(GraphReplay, FusedRunner):
    """The fused kernel's launch captured once per input shape in a CUDA graph, then replayed."""

    name = "fused-graph"
    devices = ("cuda",)

    def prepare_impl(self) -> None:
        self.workspaces: dict[tuple, dict] = {}  # each graph owns its scratch buffers
        super().prepare_impl()

    def _workspaces(self) -> list[dict]:
        if self.whole is None:
            return list(self.workspaces.values())
        from lstminfer.fused_layers import fused_workspaces

        # a whole model's fused layers keep their own workspaces; a replay cannot check them while capturing
        return fused_workspaces(self.whole)

    def capture_target(self, static_inputs: list[Any]) -> list[Any]:
        return self._run(static_inputs, self.workspaces.setdefault(tuple(t.shape for t in static_inputs), {}))
