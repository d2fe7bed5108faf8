"""Where a stream's state lives between chunks: one engine per kind of backend (see lstminfer.measure.stream).

* ``OrtEngine``: ONNX Runtime with I/O binding, the state as OrtValues on the session's device.
* ``ScriptEngine``: a TorchScript module, the state as torch tensors on its device.
* ``ModuleEngine``: a PyTorch module on ``torch``, ``torch-graph``, ``fused`` (the module accelerated,
  lstminfer.accelerate) or ``fused-graph``: the state in tensors on the device that every step updates in
  place, so a CUDA graph captures the whole step (chunk in, state read and written, outputs out) and a step
  is one copy up, one replay, one copy down.  For models that call their recurrent layers without state,
  each layer is wrapped (``CarriedState``) and carries its own state from chunk to chunk.
* ``RunnerEngine``: any registered backend through its Runner (the state makes a host round trip).
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import numpy as np

from lstminfer.errors import UserError

MODULE_BACKENDS = ("torch", "torch-graph", "fused", "fused-graph")
ORT_BACKENDS = {"onnxruntime": ("CPUExecutionProvider", "cpu"), "onnxruntime-cuda": ("CUDAExecutionProvider", "cuda")}


class OrtEngine:
    """ONNX Runtime with I/O binding: state outputs are bound on the session's device and fed back as is."""

    def __init__(self, session: Any, provider: str, device: str):
        import onnxruntime as ort

        from lstminfer.backends.base import select_backends

        select_backends([session.backend])  # unavailable here -> one-line error with the install hint
        self.ort = ort
        self.session = session
        self.device = device
        opts = ort.SessionOptions()
        opts.log_severity_level = 4  # a refusal becomes our one-line error, not ORT's log line
        try:
            self.sess = ort.InferenceSession(str(session.model.onnx_path), sess_options=opts, providers=[provider])
        except Exception as err:
            from lstminfer.onnx.load import _ort_message

            raise UserError(f"ONNX Runtime refuses {session.model.name}: {_ort_message(err)}") from err
        self.output_names = [o.name for o in self.sess.get_outputs()]
        self.state_out = {o: i for i, o in session.pairs}

    def to_device(self, array: np.ndarray) -> Any:
        return self.ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device, 0)

    def to_host(self, value: Any) -> np.ndarray:
        return value.numpy()

    def run(self, feeds: dict[str, np.ndarray], state: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        binding = self.sess.io_binding()
        for name, array in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        for name, value in state.items():
            binding.bind_ortvalue_input(name, value)
        for name in self.output_names:
            binding.bind_output(name, self.device if name in self.state_out else "cpu")
        try:
            self.sess.run_with_iobinding(binding)
        except Exception as err:
            from lstminfer.onnx.load import _ort_message

            raise UserError(f"ONNX Runtime cannot run this chunk: {_ort_message(err)}") from err
        values = dict(zip(self.output_names, binding.get_outputs()))
        outputs = {n: v.numpy() for n, v in values.items() if n not in self.state_out}
        new_state = {self.state_out[n]: v for n, v in values.items() if n in self.state_out}
        return outputs, new_state

    def close(self) -> None:
        self.sess = None


class ScriptEngine:
    """A TorchScript module; the state as torch tensors on its device."""

    def __init__(self, session: Any):
        import torch

        from lstminfer.backends.base import select_backends
        from lstminfer.onnx.torchscript import load_torchscript

        select_backends([f"torchscript:{session.device}"])
        if session.model.script_path is None:
            raise UserError("backend torchscript needs a TorchScript file (.pt saved with torch.jit.save)")
        self.torch = torch
        self.session = session
        self.device = session.device
        self.module = load_torchscript(session.model.script_path, self.device)
        self.state_out = {o: i for i, o in session.pairs}

    def to_device(self, array: np.ndarray) -> Any:
        return self.torch.from_numpy(np.ascontiguousarray(array)).to(self.device)

    def to_host(self, value: Any) -> np.ndarray:
        return value.detach().cpu().numpy()

    def run(self, feeds: dict[str, np.ndarray], state: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        from lstminfer.onnx.torchscript import flatten_outputs, script_args, script_inputs

        torch = self.torch
        model = self.session.model
        tensors = {n: torch.from_numpy(np.ascontiguousarray(a)).to(self.device) for n, a in feeds.items()}
        tensors.update(state)
        with torch.inference_mode():
            outs = flatten_outputs(self.module(*script_inputs(script_args(self.module), model.input_names, tensors)))
        values = dict(zip(model.name_outputs(len(outs)), outs))
        outputs = {n: v.detach().cpu().numpy() for n, v in values.items() if n not in self.state_out}
        new_state = {self.state_out[n]: v.clone() for n, v in values.items() if n in self.state_out}
        return outputs, new_state

    def close(self) -> None:
        self.module = None


class RunnerEngine:
    """Any registered backend through its Runner: the state makes a host round trip each chunk."""

    def __init__(self, session: Any, name: str, precision: str):
        from lstminfer.backends.base import runner_class, select_backends

        select_backends([f"{name}:{session.device}"])
        self.runner = runner_class(name)(session.model, device=session.device, precision=precision)
        self.runner.prepare()
        self.state_out = {o: i for i, o in session.pairs}

    def to_device(self, array: np.ndarray) -> np.ndarray:
        return array

    def to_host(self, value: np.ndarray) -> np.ndarray:
        return np.array(value)

    def run(self, feeds: dict[str, np.ndarray], state: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        values = self.runner.infer({**feeds, **state})
        outputs = {n: v for n, v in values.items() if n not in self.state_out}
        return outputs, {self.state_out[n]: v for n, v in values.items() if n in self.state_out}

    def close(self) -> None:
        self.runner.close()


# ---- a PyTorch module, eager or replayed from a CUDA graph ----------------------------------------------------
def _carried_state_class() -> Any:
    from torch import nn
    from torch.nn.utils.rnn import PackedSequence

    class CarriedState(nn.Module):
        """A recurrent layer that, called without hx, starts from the state its last call left (a stream's
        previous chunk) and writes the new state back in place (a CUDA graph replays both)."""

        def __init__(self, layer: nn.Module):
            super().__init__()
            self.layer = layer
            self.lstm = layer.mode == "LSTM"
            self.h: Any = None  # set by ModuleEngine before every step
            self.c: Any = None

        def forward(self, x: Any, hx: Any = None) -> Any:
            if hx is not None or isinstance(x, PackedSequence):  # the model handles this call's state itself
                return self.layer(x, hx)
            out, new = self.layer(x, (self.h, self.c) if self.lstm else self.h)
            self.h.copy_(new[0] if self.lstm else new)
            if self.lstm:
                self.c.copy_(new[1])
            return out, new

    return CarriedState


def carry_state(module: Any) -> tuple[Any, dict[str, Any]]:
    """Wrap every recurrent layer of `module` in a CarriedState: (module, {path: wrapper})."""
    from lstminfer.fused_layers import recurrent

    CarriedState = _carried_state_class()
    wrappers = {}
    for path, layer in list(module.named_modules()):
        if recurrent(layer):
            wrappers[path or "rnn"] = wrapper = CarriedState(layer)
            if not path:
                return wrapper, wrappers
            parent, _, attr = path.rpartition(".")
            setattr(module.get_submodule(parent), attr, wrapper)
    return module, wrappers


class ModuleEngine:
    """torch, torch-graph, fused, fused-graph on the model's PyTorch module (see the module docstring).

    The state is the session's pairs (the forward takes and returns it) or, with ``carried``, each recurrent
    layer's own (names ``PATH.h`` / ``PATH.c``).  On CUDA the chunk goes up and the outputs come down
    through pinned host buffers on the engine's stream: a step's host latency is those copies and the work.
    """

    def __init__(self, session: Any, name: str, precision: str, carried: bool):
        import torch

        from lstminfer.backends.base import select_backends
        from lstminfer.backends.pytorch import torch_dtype

        select_backends([f"{name}:{session.device}"])
        model = session.model
        if model.module is None:
            raise UserError(f"backend {name} needs a PyTorch module; {model.name} is a file: use onnxruntime (or "
                            "torchscript for a .pt file)")
        self.torch, self.session, self.device = torch, session, session.device
        self.dtype = torch_dtype(precision)
        module = copy.deepcopy(model.module)
        if name.startswith("fused"):
            from lstminfer.fused_layers import accelerate

            module = accelerate(module, precision)
        self.module, self.wrappers = carry_state(module.to(self.device, self.dtype).eval()) if carried else (
            module.to(self.device, self.dtype).eval(), {})
        self.state_out = {o: i for i, o in session.pairs}
        self.input_names, self.output_names = model.input_names, model.output_names  # fixed: read once
        self.buffers: dict[str, Any] = {}
        self.graphed = name.endswith("-graph")
        self.graphs: dict[tuple, tuple[Any, dict[str, Any], dict[str, Any]]] = {}
        self.cuda = self.device == "cuda"
        self.stream = torch.cuda.Stream() if self.cuda else None
        self.pinned: dict[tuple, Any] = {}

    # -- the state --
    @property
    def state_names(self) -> list[str]:
        """The carried state's names (PATH.h, PATH.c per recurrent layer)."""
        return [f"{p}.{s}" for p, w in self.wrappers.items() for s in ("hc" if w.lstm else "h")]

    def zero_state(self, batch: int) -> dict[str, np.ndarray]:
        out = {}
        for path, w in self.wrappers.items():
            layer = w.layer
            width = getattr(layer, "proj_size", 0) or layer.hidden_size
            directions = 2 if layer.bidirectional else 1
            out[f"{path}.h"] = np.zeros((layer.num_layers * directions, batch, width), np.float32)
            if w.lstm:
                out[f"{path}.c"] = np.zeros((layer.num_layers * directions, batch, layer.hidden_size), np.float32)
        return out

    def to_device(self, array: np.ndarray) -> Any:
        # on the engine's stream, which the step's copy into the buffers follows
        with self.torch.cuda.stream(self.stream) if self.cuda else contextlib.nullcontext():
            return self.torch.from_numpy(np.ascontiguousarray(array)).to(self.device, self._dtype_of(array))

    def to_host(self, value: Any) -> np.ndarray:
        if self.cuda:
            self.stream.synchronize()
        return value.detach().float().cpu().numpy() if value.is_floating_point() else value.cpu().numpy()

    def _dtype_of(self, array: np.ndarray) -> Any:
        return self.dtype if array.dtype.kind == "f" else None

    def _bind(self, state: dict[str, Any]) -> None:
        """Copy a state set from outside into the buffers every step reads (new shapes: new buffers, and the
        graphs captured with the old ones are dropped)."""
        if state is self.buffers:  # what the last step returned: nothing to do (every step but the first)
            return
        for name, value in state.items():
            buf = self.buffers.get(name)
            if buf is value:
                continue
            if buf is not None and buf.shape == value.shape:
                buf.copy_(value)
                continue
            self.buffers[name] = value.clone()
            self.graphs.clear()
        for path, w in self.wrappers.items():
            w.h = self.buffers[f"{path}.h"]
            w.c = self.buffers.get(f"{path}.c")

    # -- one step --
    def _step(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """The model on device inputs; the state outputs copied into the buffers; the other outputs."""
        tensors = [inputs[n] if n in inputs else self.buffers[n] for n in self.input_names]
        values = dict(zip(self.output_names, self.session.model.call_module(self.module, tensors)))
        for out, name in self.state_out.items():
            self.buffers[name].copy_(values[out])
        return {n: v for n, v in values.items() if n not in self.state_out}

    def _ieee(self) -> Any:
        """fp32 means IEEE fp32 for the step (PyTorch lets cuDNN RNNs use TF32 by default: docs/verify.md)."""
        from lstminfer.backends.base import torch_settings

        return torch_settings(tf32=False) if self.cuda else contextlib.nullcontext()

    def _upload(self, feeds: dict[str, np.ndarray], static: dict[str, Any] | None) -> dict[str, Any]:
        torch = self.torch
        out = {}
        for name, array in feeds.items():
            if self.cuda:
                key = ("in", name, array.shape, array.dtype.str)
                host = self.pinned.get(key)
                if host is None:
                    host = self.pinned[key] = torch.empty(array.shape, dtype=torch.from_numpy(array[:0]).dtype,
                                                          pin_memory=True)
                host.numpy()[...] = array
                dst = static[name] if static else torch.empty(array.shape, dtype=self._dtype_of(array) or host.dtype,
                                                              device=self.device)
                dst.copy_(host, non_blocking=True)
                out[name] = dst
            else:
                out[name] = torch.from_numpy(np.ascontiguousarray(array)).to(self.device, self._dtype_of(array))
        return out

    def _download(self, values: dict[str, Any]) -> dict[str, np.ndarray]:
        if not self.cuda:
            return {n: self.to_host(v) for n, v in values.items()}
        torch = self.torch
        hosts = {}
        for name, value in values.items():
            key = ("out", name, tuple(value.shape))
            host = self.pinned.get(key)
            if host is None:
                host = self.pinned[key] = torch.empty(value.shape, dtype=torch.float32, pin_memory=True)
            host.copy_(value, non_blocking=True)
            hosts[name] = host
        self.stream.synchronize()
        return {n: h.numpy().copy() for n, h in hosts.items()}

    def _capture(self, feeds: dict[str, np.ndarray]) -> tuple[Any, dict[str, Any], dict[str, Any]]:
        """One graph per chunk shape: warmed up twice outside the capture (compilation, the kernels' scratch
        buffers), the state put back as it was, then the step captured."""
        torch = self.torch
        static = {n: torch.zeros(a.shape, dtype=self._dtype_of(a) or torch.from_numpy(a[:0]).dtype,
                                 device=self.device) for n, a in feeds.items()}
        saved = {n: b.clone() for n, b in self.buffers.items()}
        for _ in range(2):
            self._step(static)
        self.stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self.stream):
            static_out = self._step(static)
        for name, buf in self.buffers.items():
            buf.copy_(saved[name])
        return graph, static, static_out

    def run(self, feeds: dict[str, np.ndarray], state: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        torch = self.torch
        on_stream = torch.cuda.stream(self.stream) if self.cuda else contextlib.nullcontext()
        with torch.no_grad(), on_stream:
            self._bind(state)
            if not self.graphed:
                with self._ieee():
                    return self._download(self._step(self._upload(feeds, None))), self.buffers
            key = tuple((n, a.shape) for n, a in feeds.items())
            if key not in self.graphs:
                with self._ieee():
                    self.graphs[key] = self._capture(feeds)
            graph, static, static_out = self.graphs[key]
            self._upload(feeds, static)
            graph.replay()
            return self._download(static_out), self.buffers

    def close(self) -> None:
        self.module, self.graphs, self.buffers, self.pinned = None, {}, {}, {}
