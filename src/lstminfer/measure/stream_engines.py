"""Where a stream's state lives between chunks: one engine per kind of backend (see lstminfer.measure.stream).

* ``OrtEngine``: ONNX Runtime with I/O binding, the state as OrtValues on the session's device.
* ``ScriptEngine``: a TorchScript module, the state as torch tensors on its device.
* ``ModuleEngine``: a PyTorch module on ``torch``, ``torch-graph``, ``fused`` (the module accelerated,
  lstminfer.accelerate) or ``fused-graph``: the state in tensors on the device that every step updates in
  place, so a CUDA graph captures the whole step (chunk in, state read and written, outputs out) and a step
  is one copy up, one replay, one copy down.  For models that call their recurrent layers without state,
  each layer is wrapped (``CarriedState``) and carries its own state from chunk to chunk; a fused layer
  writes its new state itself into a second set of buffers, and the two sets swap after each step (one
  graph per set), so the graph has no copy of the state.
* ``RunnerEngine``: any registered backend through its Runner (the state makes a host round trip).
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
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
        previous chunk) and leaves the new state in the buffers the next call starts from (a CUDA graph replays
        both).  The engine points it at the buffers before every step: it reads ``h``/``c`` and writes
        ``h_out``/``c_out``.  A fused layer writes those itself (FusedRNN.forward_into: no copy, so one graph
        node less per state tensor); they are then two buffer sets that the engine swaps after each step (the
        kernel must not write the state it reads).  Other layers' new state is copied into them (then they may
        be the very buffers read: the copy runs after the layer)."""

        def __init__(self, layer: nn.Module):
            super().__init__()
            self.layer = layer
            self.lstm = layer.mode == "LSTM"
            self.h: Any = None  # set by ModuleEngine before every step
            self.c: Any = None
            self.h_out: Any = None
            self.c_out: Any = None
            self.calls = 0  # calls in this step (the engine zeroes it)

        def forward(self, x: Any, hx: Any = None) -> Any:
            if hx is not None or isinstance(x, PackedSequence):  # the model handles this call's state itself
                return self.layer(x, hx)
            self.calls += 1
            if self.calls == 1:  # the stream's previous state
                state = (self.h, self.c) if self.lstm else self.h
                into = getattr(self.layer, "forward_into", None)
                if into is not None:
                    return into(x, state, self.h_out, self.c_out)
            else:  # called again in one step: from the state the first call left
                state = (self.h_out, self.c_out) if self.lstm else self.h_out
            out, new = self.layer(x, state)
            self.h_out.copy_(new[0] if self.lstm else new)
            if self.lstm:
                self.c_out.copy_(new[1])
            return out, new

        def keep(self) -> None:
            """Not called in this step: the state carries over unchanged."""
            if self.calls == 0 and self.h_out is not self.h:
                self.h_out.copy_(self.h)
                if self.lstm:
                    self.c_out.copy_(self.c)

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


class StallWatch:
    """The fused kernel's error words (``lstminfer.fused_layers.fused_workspaces``: a persistent launch that gave
    up a wait sets its word), copied by the step itself into one pinned host array, inside the CUDA graph, and
    read after the synchronize that a chunk needs anyway: a stalled replay raises KernelStalled instead of
    handing out wrong numbers, for the price of a few bytes copied down."""

    def __init__(self, torch: Any, workspaces: list[dict]):
        self.workspaces = [ws for ws in workspaces if "err" in ws]
        self.flags = torch.zeros(len(self.workspaces), dtype=torch.int32,
                                 pin_memory=bool(self.workspaces) and self.workspaces[0]["err"].is_cuda)
        self.view = self.flags.numpy()

    def record(self) -> None:
        """Copy every error word into the flags (on the current stream; inside a capture, one copy node each)."""
        for i, ws in enumerate(self.workspaces):
            self.flags[i:i + 1].copy_(ws["err"], non_blocking=True)

    def check(self) -> None:
        """After the step was waited for: raise KernelStalled if a word was set (the kernel's own check reads and
        clears it)."""
        if self.view.any():
            from lstminfer.kernels.rnn import raise_if_stalled

            self.view[:] = 0
            for ws in self.workspaces:
                raise_if_stalled(ws)


FLAT = ""  # the key of the pinned buffer that several outputs share (an output name is never empty)


@dataclass(eq=False)
class CapturedStep:
    """One chunk shape's CUDA graph and the buffers it reads and writes.  With ``staged`` the graph itself
    copies the chunk up from the pinned input buffers and the outputs (and the stall flags) down into the
    pinned output buffers; without it (a torch that refuses copies in a capture) the copies run around it."""

    graph: Any
    inputs: dict[str, np.ndarray]  # numpy views of the pinned input buffers: a chunk is written here
    outputs: dict[str, np.ndarray]  # numpy views of the pinned output buffers: read after the replay
    staged: bool
    # (destination, source) tensor pairs: the copies the graph makes itself when staged, else the ones run
    # around the replay; they also keep every buffer the graph points at alive as long as the graph
    copies_up: list[tuple[Any, Any]]
    copies_down: list[tuple[Any, Any]]
    stalls: StallWatch | None
    parity: int = 0  # the state set the graph reads (ModuleEngine.sets)
    other: CapturedStep | None = None  # with two state sets: the same chunk shape's graph that reads the other


class ModuleEngine:
    """torch, torch-graph, fused, fused-graph on the model's PyTorch module (see the module docstring).

    The state is the session's pairs (the forward takes and returns it) or, with ``carried``, each recurrent
    layer's own (names ``PATH.h`` / ``PATH.c``; with fused layers in two sets that swap after each step, see
    CarriedState, and per chunk shape a graph for each set).  Everything runs on the engine's own CUDA stream
    (made current for the call and restored: the caller's other work is never waited for).  A graphed chunk is:
    the chunk written into a pinned buffer, one replay (which copies it up, runs the step, writes the state and
    copies the outputs down into pinned buffers), one stream synchronize, one numpy copy of each output.  The
    returned arrays are copies, so they stay valid after the next step overwrites the pinned buffers.  The eager
    backends copy through the same pinned buffers around the module call.
    """

    keep_graphs = False  # keep each captured cudaGraph_t for graph_nodes() (benchmarks/stream_gpu.py; tests)

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
        # no parameter needs a gradient: a graph replay needs no no_grad context per chunk
        module = module.to(self.device, self.dtype).eval().requires_grad_(False)
        self.module, self.wrappers = carry_state(module) if carried else (module, {})
        self.state_out = {o: i for i, o in session.pairs}
        self.input_names, self.output_names = model.input_names, model.output_names  # fixed: read once
        # The state every step reads (self.buffers) and the one it writes: two sets swapped after each step where a
        # carried layer's kernel writes its new state itself (CarriedState), else one set updated in place.
        fused = any(hasattr(m, "forward_into") for m in self.module.modules())
        self.swapping = fused and bool(self.wrappers or self.state_out)
        self.buffers: dict[str, Any] = {}
        self.sets: list[dict[str, Any]] = [self.buffers, {} if self.swapping else self.buffers]
        self.parity = 0  # self.buffers is self.sets[self.parity]
        self.graphed = name.endswith("-graph")
        self.graphs: dict[tuple, CapturedStep] = {}
        self.last: CapturedStep | None = None  # the step the last chunk replayed (benchmarks/stream_gpu.py)
        self.cuda = self.device == "cuda"
        self.stream = torch.cuda.Stream() if self.cuda else None
        self.on_stream = OnStream(torch, self.stream) if self.cuda else contextlib.nullcontext()
        self.staged = True  # copies inside the graph until a capture refuses them
        self.pinned: dict[tuple, tuple[Any, np.ndarray]] = {}  # eager CUDA: (pinned tensor, its numpy view)

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
        # on the engine's stream, which the step's copy into the buffers follows (a blocking copy: done on return)
        with self.on_stream:
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
        for name, value in state.items():
            buf = self.buffers.get(name)
            if buf is value:
                continue
            if buf is not None and buf.shape == value.shape:
                buf.copy_(value)
                continue
            for buffers in self.sets:
                buffers[name] = value.clone()
            self.graphs.clear()
            self.last = None

    def _point(self) -> None:
        """The carried layers read the current state set and write the other (the same one without swapping)."""
        read, write = self.buffers, self.sets[1 - self.parity]
        for path, w in self.wrappers.items():
            w.h, w.h_out = read[f"{path}.h"], write[f"{path}.h"]
            w.c, w.c_out = read.get(f"{path}.c"), write.get(f"{path}.c")
            w.calls = 0

    def _swap(self) -> None:
        """After a step: the state it wrote is the one the next step reads."""
        if self.swapping:
            self._flip()

    # -- one step --
    def _step(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """The model on device inputs; the state outputs in the buffers; the other outputs.  With two sets the
        state is read from the current one and written into the other, by the fused layers themselves where they
        compute it (CarriedState, state_into), else copied; with one set it is copied in place after the model.
        No swap here (run() swaps after the step)."""
        self._point()
        read, write = self.buffers, self.sets[1 - self.parity]
        tensors = [inputs[n] if n in inputs else read[n] for n in self.input_names]
        if self.swapping and self.state_out:  # the fused layers write the state they return into `write`
            from lstminfer.fused_layers import state_into

            with state_into([(read[name], write[name]) for name in self.state_out.values()]):
                values = dict(zip(self.output_names, self.session.model.call_module(self.module, tensors)))
        else:
            values = dict(zip(self.output_names, self.session.model.call_module(self.module, tensors)))
        for w in self.wrappers.values():
            w.keep()
        state = {name: values[out] for out, name in self.state_out.items()}
        if self.swapping and any(v is not write[n] and any(v is b for b in write.values()) for n, v in state.items()):
            state = {n: v.clone() for n, v in state.items()}  # one set's buffer returned as another's state
        for name, value in state.items():
            if value is not write[name]:
                write[name].copy_(value)
        return {n: v for n, v in values.items() if n not in self.state_out}

    def _to_compute(self, tensors: dict[str, Any]) -> dict[str, Any]:
        """Float inputs in the precision the module computes in (no copy when they already are)."""
        return {n: t.to(self.dtype) if t.is_floating_point() else t for n, t in tensors.items()}

    def _pinned(self, key: tuple, shape: tuple, dtype: Any) -> tuple[Any, np.ndarray]:
        entry = self.pinned.get(key)
        if entry is None:
            host = self.torch.empty(shape, dtype=dtype, pin_memory=True)
            entry = self.pinned[key] = (host, host.numpy())
        return entry

    def _eager(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self.torch
        if not self.cuda:
            inputs = {n: torch.from_numpy(np.ascontiguousarray(a)).to(self.device, self._dtype_of(a))
                      for n, a in feeds.items()}
            return {n: self.to_host(v) for n, v in self._step(inputs).items()}
        inputs = {}
        for name, array in feeds.items():
            host, view = self._pinned(("in", name, array.shape, array.dtype.str), array.shape,
                                      _torch_dtype(torch, array.dtype))
            view[...] = array
            inputs[name] = host.to(self.device, non_blocking=True)
        hosts = {}
        with IeeeFp32(torch):  # PyTorch lets cuDNN RNNs use TF32 by default: fp32 means IEEE (docs/verify.md)
            values = self._step(self._to_compute(inputs))
        for name, value in values.items():
            host, view = self._pinned(("out", name, tuple(value.shape)), tuple(value.shape), _host_dtype(torch, value))
            host.copy_(value, non_blocking=True)
            hosts[name] = view
        self.stream.synchronize()
        return {n: v.copy() for n, v in hosts.items()}

    def _capture(self, feeds: dict[str, np.ndarray]) -> CapturedStep:
        """One graph per chunk shape: warmed up twice outside the capture (compilation, the kernels' scratch
        buffers), the state put back as it was, then the step captured with its copies (or, where the capture
        refuses them, without: the copies then run around the replay)."""
        torch = self.torch
        pinned_in = {n: torch.zeros(a.shape, dtype=_torch_dtype(torch, a.dtype), pin_memory=True)
                     for n, a in feeds.items()}
        landing = {n: torch.zeros(a.shape, dtype=t.dtype, device=self.device) for (n, a), t in
                   zip(feeds.items(), pinned_in.values())}
        # both sets put back: a warm-up writes the set it does not read
        saved = [(buffers, {n: b.clone() for n, b in buffers.items()}) for buffers in self.sets[:1 + self.swapping]]
        try:
            with IeeeFp32(torch):  # what a graph runs is fixed at capture: IEEE fp32 in cuDNN and cuBLAS
                for _ in range(2):
                    values = self._step(self._to_compute(landing))
                self.stream.synchronize()
                pinned_out = self._pinned_outputs(values)
                stalls = self._stall_watch()
                step = None
                if self.staged:
                    try:
                        step = self._capture_step(pinned_in, landing, pinned_out, stalls, staged=True)
                    except RuntimeError as err:  # an older torch refusing a host copy in a capture
                        import sys

                        print(f"lstminfer: copies inside the CUDA graph refused ({str(err).splitlines()[0]}); "
                              "copying around the replay instead", file=sys.stderr)
                        self.staged = False
                if step is None:
                    step = self._capture_step(pinned_in, landing, pinned_out, stalls, staged=False)
        finally:
            for buffers, values in saved:
                for name, buf in buffers.items():
                    buf.copy_(values[name])
            self.stream.synchronize()
        return step

    def _capture_sets(self, feeds: dict[str, np.ndarray]) -> CapturedStep:
        """A chunk shape's graph, and with two state sets the one that reads the other set too (step.other), both
        at the first chunk of the shape: the next chunk replays at once."""
        step = self._capture(feeds)
        step.parity = self.parity
        if self.swapping:
            self._flip()
            try:
                step.other = self._capture(feeds)
            finally:
                self._flip()
            step.other.parity, step.other.other = 1 - self.parity, step
        return step

    def _flip(self) -> None:
        self.parity ^= 1
        self.buffers = self.sets[self.parity]

    def _capture_step(self, pinned_in: dict[str, Any], landing: dict[str, Any], pinned_out: dict[str, Any],
                      stalls: StallWatch | None, staged: bool) -> CapturedStep:
        torch = self.torch
        graph = torch.cuda.CUDAGraph(keep_graph=True) if self.keep_graphs else torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self.stream):
            if staged:
                for name, host in pinned_in.items():
                    landing[name].copy_(host, non_blocking=True)
            outs = self._step(self._to_compute(landing))
            device_out = {n: v if v.dtype == pinned_out[n].dtype else v.to(pinned_out[n].dtype)
                          for n, v in outs.items()}
            if staged:
                flat = pinned_out.get(FLAT)
                if flat is not None:  # several float outputs: one gather kernel, one copy down
                    flat.copy_(torch.cat([v.reshape(-1) for v in device_out.values()]), non_blocking=True)
                else:
                    for name, value in device_out.items():
                        pinned_out[name].copy_(value, non_blocking=True)
                if stalls is not None:
                    stalls.record()
        if self.keep_graphs:
            graph.instantiate()
        copies_up = [(landing[n], host) for n, host in pinned_in.items()]
        copies_down = [(pinned_out[n], value) for n, value in device_out.items()]  # views keep FLAT's memory
        return CapturedStep(graph, {n: t.numpy() for n, t in pinned_in.items()},
                            {n: t.numpy() for n, t in pinned_out.items() if n != FLAT}, staged, copies_up,
                            copies_down, stalls)

    def _pinned_outputs(self, values: dict[str, Any]) -> dict[str, Any]:
        """A pinned host buffer per output.  Several float outputs (an LSTM's output, hn, cn) share one flat
        buffer, the FLAT entry, so that the graph copies them down in one copy instead of one each: every copy
        node waits for the one before it, a few microseconds each."""
        torch = self.torch
        if len(values) < 2 or not all(v.is_floating_point() for v in values.values()):
            return {n: torch.zeros(tuple(v.shape), dtype=_host_dtype(torch, v), pin_memory=True)
                    for n, v in values.items()}
        flat = torch.zeros(sum(v.numel() for v in values.values()), dtype=torch.float32, pin_memory=True)
        out, start = {FLAT: flat}, 0
        for name, value in values.items():
            out[name] = flat[start:start + value.numel()].view(tuple(value.shape))
            start += value.numel()
        return out

    def _stall_watch(self) -> StallWatch | None:
        """The fused layers' error words (persistent launches only; the other kernels have none)."""
        from lstminfer.fused_layers import fused_workspaces

        watch = StallWatch(self.torch, fused_workspaces(self.module))
        return watch if watch.workspaces else None

    def replay(self, step: CapturedStep) -> None:
        """One replay on the engine's stream, waited for (the inputs already in step.inputs)."""
        if step.staged:
            with self.on_stream:
                step.graph.replay()
        else:
            with self.on_stream:
                for device, host in step.copies_up:
                    device.copy_(host, non_blocking=True)
                step.graph.replay()
                for host, device in step.copies_down:
                    host.copy_(device, non_blocking=True)
                if step.stalls is not None:
                    step.stalls.record()
        self.stream.synchronize()
        if step.stalls is not None:
            step.stalls.check()

    def run(self, feeds: dict[str, np.ndarray], state: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        if state is not self.buffers:  # a state set from outside (the first step, reset, Session.state = ...)
            with self.on_stream:
                self._bind(state)
        if not (self.graphed and self.cuda):
            with self.on_stream, self.torch.no_grad():  # as measured before (a graph needs none: fixed at capture)
                outputs = self._eager(feeds)
            self._swap()
            return outputs, self.buffers
        key = tuple((n, a.shape) for n, a in feeds.items())
        step = self.graphs.get(key)
        if step is None:
            with self.on_stream:
                step = self.graphs[key] = self._capture_sets(feeds)
        if step.parity != self.parity:
            step = step.other
        for name, array in feeds.items():
            step.inputs[name][...] = array
        self.replay(step)
        self.last = step
        self._swap()
        return {n: a.copy() for n, a in step.outputs.items()}, self.buffers

    def close(self) -> None:
        self.module, self.graphs, self.buffers, self.pinned, self.last = None, {}, {}, {}, None
        self.sets = [self.buffers, self.buffers]


def _graph_query() -> tuple[Any, Any, Any]:
    """(driver, runtime, checked): cuda-bindings' modules and a function that raises on an error result."""
    from cuda.bindings import driver, runtime

    def checked(result: tuple) -> Any:
        err, *values = result
        if int(err) != 0:
            raise RuntimeError(f"CUDA graph query failed: {err}")
        return values[0] if len(values) == 1 else values

    return driver, runtime, checked


def _listed_nodes(graph: Any) -> list[Any]:
    """The nodes of a kept CUDA graph in the order cudaGraphGetNodes lists them."""
    _, runtime, checked = _graph_query()
    raw = graph.raw_cuda_graph()
    _, count = checked(runtime.cudaGraphGetNodes(raw, numNodes=0))
    nodes, count = checked(runtime.cudaGraphGetNodes(raw, numNodes=count))
    return list(nodes[:count])


def graph_nodes(graph: Any) -> list[tuple[str, str]]:
    """The nodes of a CUDA graph captured by a ModuleEngine with ``keep_graphs`` set (``step.graph``), in the order
    cudaGraphGetNodes lists them: (kind, kernel name) each, the kind "kernel", "memcpy", "memset", ... and the name
    "" for other kinds or where the driver does not give it.  Every node of a chunk's graph waits for the one
    before it (one stream captured), so each costs its launch latency: this counts them.  Needs cuda-bindings
    (``pip install "lstminfer[gpu]"``)."""
    driver, runtime, checked = _graph_query()
    kinds = {runtime.cudaGraphNodeType.cudaGraphNodeTypeKernel: "kernel",
             runtime.cudaGraphNodeType.cudaGraphNodeTypeMemcpy: "memcpy",
             runtime.cudaGraphNodeType.cudaGraphNodeTypeMemset: "memset",
             runtime.cudaGraphNodeType.cudaGraphNodeTypeHost: "host",
             runtime.cudaGraphNodeType.cudaGraphNodeTypeGraph: "child_graph",
             runtime.cudaGraphNodeType.cudaGraphNodeTypeEmpty: "empty",
             runtime.cudaGraphNodeType.cudaGraphNodeTypeWaitEvent: "wait_event",
             runtime.cudaGraphNodeType.cudaGraphNodeTypeEventRecord: "event_record"}
    out = []
    for node in _listed_nodes(graph):
        kind = checked(runtime.cudaGraphNodeGetType(node))
        name = ""
        if kind == runtime.cudaGraphNodeType.cudaGraphNodeTypeKernel:
            err, params = driver.cuGraphKernelNodeGetParams(driver.CUgraphNode(init_value=int(node)))
            if int(err) == 0 and int(params.func):
                err, found = driver.cuFuncGetName(driver.CUfunction(init_value=int(params.func)))
                if int(err) == 0:
                    name = found.decode() if isinstance(found, bytes) else str(found)
        out.append((kinds.get(kind, str(kind)), name))
    return out


def memcpy_nodes(graph: Any) -> list[tuple[int, int, int]]:
    """The copy nodes of a kept CUDA graph (as graph_nodes lists them, the other kinds left out): (destination
    address, source address, bytes) each, from cudaGraphMemcpyNodeGetParams, so that a test can tell a copy into
    a stream's state buffers from the model's own (tests/test_stream_state_out.py).  A captured 1-d copy is one
    row: the address is the pitched pointer plus its position; bytes is the extent's volume."""
    _, runtime, checked = _graph_query()

    def address(pitched: Any, pos: Any) -> int:
        return int(pitched.ptr) + int(pos.x) + int(pitched.pitch) * (int(pos.y) + int(pitched.ysize) * int(pos.z))

    out = []
    for node in _listed_nodes(graph):
        if checked(runtime.cudaGraphNodeGetType(node)) != runtime.cudaGraphNodeType.cudaGraphNodeTypeMemcpy:
            continue
        params = checked(runtime.cudaGraphMemcpyNodeGetParams(node))
        extent = params.extent
        out.append((address(params.dstPtr, params.dstPos), address(params.srcPtr, params.srcPos),
                    int(extent.width) * max(1, int(extent.height)) * max(1, int(extent.depth))))
    return out


class OnStream:
    """`stream` made the current stream for a block, the caller's restored after: torch.cuda.stream() without its
    checks for a stream on another device, which cost microseconds a chunk (the engine's stream is on the
    current device).  Made once, entered per call; not re-entrant."""

    def __init__(self, torch: Any, stream: Any):
        self.cuda, self.stream = torch.cuda, stream

    def __enter__(self) -> None:
        self.previous = self.cuda.current_stream()
        self.cuda.set_stream(self.stream)

    def __exit__(self, *exc: object) -> None:
        self.cuda.set_stream(self.previous)


class IeeeFp32:
    """TF32 off in cuDNN and cuBLAS for a block, restored after (a class: a generator context manager costs
    microseconds a chunk).  fp32 means IEEE fp32 (PyTorch lets cuDNN RNNs use TF32 by default: docs/verify.md)."""

    def __init__(self, torch: Any):
        self.backends = torch.backends

    def __enter__(self) -> None:
        cudnn, matmul = self.backends.cudnn, self.backends.cuda.matmul
        self.saved = (cudnn.allow_tf32, matmul.allow_tf32)
        if any(self.saved):
            cudnn.allow_tf32 = matmul.allow_tf32 = False

    def __exit__(self, *exc: object) -> None:
        if any(self.saved):
            self.backends.cudnn.allow_tf32, self.backends.cuda.matmul.allow_tf32 = self.saved


def _torch_dtype(torch: Any, dtype: np.dtype) -> Any:
    return torch.from_numpy(np.empty(0, dtype)).dtype


def _host_dtype(torch: Any, value: Any) -> Any:
    """Outputs come back as float32 (whatever the precision), other dtypes as they are."""
    return torch.float32 if value.is_floating_point() else value.dtype
