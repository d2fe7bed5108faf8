"""Streaming: feed a recurrent model one chunk at a time, carrying its state from each call to the next.

    sess = lstminfer.Session("vad.onnx", backend="onnxruntime", inputs={"sr": 16000})
    for chunk in chunks:                  # chunk: [batch, time, features], as the model takes it
        out = sess.step(chunk)            # the state outputs are fed back as inputs on the next call
    sess.reset()                          # zeros again; `sess.state` reads or sets it

State pairs (input -> output) are found by name (h0->hn, c0->cn, state->stateN, x_in->x_out, equal shapes)
or given (``state=["h0:hn"]``).  ONNX Runtime is stateless (FACTS.md section 2), so the state lives here:
as OrtValues bound with I/O binding (on the GPU for onnxruntime-cuda, never copied to the host between
chunks), as torch tensors on the runner's device for torch and torchscript, and as host arrays for any
other backend.  A bidirectional or reverse layer cannot stream (it needs the future): refused up front.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from lstminfer.errors import UserError
from lstminfer.model.base import Model
from lstminfer.model.spec import ModelSpec, build_module, call_rnn

TORCH_BACKENDS = ("torch", "torchscript")
ORT_BACKENDS = {"onnxruntime": ("CPUExecutionProvider", "cpu"), "onnxruntime-cuda": ("CUDAExecutionProvider", "cuda")}


def _as_model(source: Any, shapes: Any, inputs: dict[str, Any] | None, onnx: Any) -> Model:
    if isinstance(source, Model):
        return source
    if isinstance(source, ModelSpec):
        return Model(name=source.describe(), spec=source, module=build_module(source), seq_len=1, batch=1)
    if isinstance(source, (str, Path)):
        from lstminfer.model.file import load_model_file

        scalars = {k: v for k, v in (inputs or {}).items() if np.ndim(v) == 0}
        arrays = {k: np.asarray(v) for k, v in (inputs or {}).items() if np.ndim(v) > 0}
        # The chunk sizes the sequence and batch dims at each step: nothing to check up front.
        model = load_model_file(source, shapes=shapes, values=scalars, onnx=onnx, validate=False)
        model.arrays.update(arrays)
        return model
    raise UserError(f"Session takes an ONNX or TorchScript path, a ModelSpec or a Model, not {type(source).__name__}")


def state_pairs_of(model: Model, given: Any = None) -> list[tuple[str, str]]:
    """(input, output) pairs: given, else the model's own (a file's found by name, a spec's h0->hn (, c0->cn))."""
    from lstminfer.onnx.inspect import parse_state

    if given:
        return [(p.input, p.output) for p in parse_state(given, model.input_names, model.output_names or None)]
    return [(p.input, p.output) for p in model.state_pairs]


def refuse_unstreamable(model: Model) -> None:
    """A bidirectional (or reverse) recurrence reads the whole sequence: chunks would change its output."""
    why = model.stream_refusal()
    if why:
        raise UserError(f"cannot stream {model.name}: {why}; run whole sequences with `lstminfer verify` / `bench` "
                        "instead")


class Session:
    """A recurrent model run chunk by chunk, its state carried between calls (see the module docstring).

    source: an ONNX or TorchScript path, a ModelSpec (built with seed 0), or a Model.  backend: torch,
    torchscript, onnxruntime, onnxruntime-cuda, or any registered backend (state then makes a host round
    trip).  inputs: fixed values for extra inputs (e.g. {"sr": 16000}); step() keyword arguments override
    them per call.  state: "in:out" pairs when the names do not show them.  shapes: trtexec-style
    ``name:AxB`` for state dims the chunk does not determine.
    """

    def __init__(self, source: Any, backend: str = "onnxruntime", *, device: str | None = None,
                 state: Any = None, inputs: dict[str, Any] | None = None, shapes: Any = None,
                 onnx: str | Path | None = None, precision: str = "fp32"):
        self.model = _as_model(source, shapes, inputs, onnx)
        refuse_unstreamable(self.model)
        self.backend = backend
        self.device = device or ("cuda" if backend.endswith("-cuda") else "cpu")
        self.pairs = state_pairs_of(self.model, state)
        if not self.pairs:
            raise UserError(f"found no recurrent state in {self.model.name} (inputs "
                            f"{', '.join(self.model.input_names)}; outputs {', '.join(self.model.output_names)}): "
                            "give the pairs with --state IN:OUT")
        self.state_inputs = [i for i, _ in self.pairs]
        self.fixed = dict(inputs or {})
        free = [n for n in self.model.input_names if n not in self.state_inputs and n not in self.fixed]
        if not free:
            raise UserError(f"no input is left for the chunk: {', '.join(self.model.input_names)} are all state or "
                            "fixed inputs")
        self.chunk_input = free[0]
        self.other_inputs = free[1:]
        self._engine = _engine_for(self, precision)
        self._state: dict[str, Any] | None = None

    # ---- the state ----------------------------------------------------------------------------------
    def _zero_state(self, chunk: np.ndarray) -> dict[str, np.ndarray]:
        model = self.model
        if model.spec is not None:
            batch = chunk.shape[0] if model.spec.batch_first else chunk.shape[1]
            shapes = model.spec.shapes(1, batch)
            return {n: np.zeros(shapes[n], np.float32) for n in self.state_inputs}
        info = {i.name: i for i in model.inputs}
        chunk_info = info[self.chunk_input]
        bindings = dict(model.bindings)
        if chunk_info.dims is not None and len(chunk_info.dims) == chunk.ndim:
            for d, size in zip(chunk_info.dims, chunk.shape):
                if isinstance(d, str):
                    bindings[d] = size
        out = {}
        for name in self.state_inputs:
            if name in model.arrays:
                out[name] = np.array(model.arrays[name])
                continue
            if name in model.shapes:
                out[name] = np.zeros(model.shapes[name], np.dtype(info[name].dtype))
                continue
            dims = info[name].dims
            unset = [f"dim {a} ({d})" for a, d in enumerate(dims or []) if isinstance(d, str) and d not in bindings]
            if dims is None or unset:
                raise UserError(f"cannot size the initial state {name!r}: {', '.join(unset) or 'no shape'} not set by "
                                f"the chunk; give it with --shapes {name}:AxB")
            shape = tuple(d if isinstance(d, int) else bindings[d] for d in dims)
            out[name] = np.zeros(shape, np.dtype(info[name].dtype))
        return out

    @property
    def state(self) -> dict[str, np.ndarray] | None:
        """The state that the next step() feeds in, as host arrays (None before the first step)."""
        if self._state is None:
            return None
        return {n: self._engine.to_host(v) for n, v in self._state.items()}

    @state.setter
    def state(self, value: dict[str, np.ndarray] | None) -> None:
        if value is None:
            self._state = None
            return
        unknown = sorted(set(value) - set(self.state_inputs))
        missing = sorted(set(self.state_inputs) - set(value))
        if unknown or missing:
            raise UserError(f"state must have exactly {', '.join(self.state_inputs)} "
                            f"(unknown: {', '.join(unknown) or '-'}; missing: {', '.join(missing) or '-'})")
        self._state = {n: self._engine.to_device(np.asarray(v)) for n, v in value.items()}

    def reset(self) -> None:
        """Start a new stream: the next step() begins from a zero state."""
        self._state = None

    # ---- one chunk --------------------------------------------------------------------------------------
    def step(self, chunk: Any, **extra: Any) -> dict[str, np.ndarray]:
        """Run one chunk; returns every non-state output as a host array.  The state outputs become the
        state inputs of the next call."""
        chunk = np.asarray(chunk)
        unknown = sorted(set(extra) - set(self.model.input_names))
        if unknown:
            raise UserError(f"step(): the model has no input {', '.join(unknown)} "
                            f"(inputs: {', '.join(self.model.input_names)})")
        feeds = {**self.fixed, **extra, self.chunk_input: chunk}
        missing = [n for n in self.other_inputs if n not in feeds]
        if missing:
            raise UserError(f"step(): give {', '.join(missing)} as keyword arguments or in Session(inputs=...)")
        if self._state is None:
            self.state = self._zero_state(chunk)
        host = {n: np.asarray(v, dtype=self._dtype(n, v)) for n, v in feeds.items()}
        outputs, new_state = self._engine.run(host, self._state)
        self._state = new_state
        return outputs

    def _dtype(self, name: str, value: Any) -> Any:
        info = {i.name: i for i in self.model.inputs}.get(name)
        if info is not None:
            return np.dtype(info.dtype)
        return np.asarray(value).dtype if np.asarray(value).dtype.kind != "f" else np.float32

    def close(self) -> None:
        self._engine.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- engines: where the state lives -------------------------------------------------------------------------
def _engine_for(session: Session, precision: str) -> Any:
    name = session.backend
    model = session.model
    if name in ORT_BACKENDS:
        if model.onnx_path is None:
            if model.module is None:
                raise UserError(f"backend {name} needs an ONNX file: give --onnx FILE.onnx with a TorchScript file")
            from lstminfer.onnx.export import export_model

            session._tmp = tempfile.TemporaryDirectory(prefix="lstminfer-session-")
            export_model(model, Path(session._tmp.name) / "model.onnx")
        return _OrtEngine(session, *ORT_BACKENDS[name])
    if name in TORCH_BACKENDS:
        return _TorchEngine(session, name)
    return _RunnerEngine(session, name, precision)


class _OrtEngine:
    """ONNX Runtime with I/O binding: state outputs are bound on the session's device and fed back as is."""

    def __init__(self, session: Session, provider: str, device: str):
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


class _TorchEngine:
    """nn.LSTM / nn.GRU (a spec or --model) or a TorchScript module; state as torch tensors on the device."""

    def __init__(self, session: Session, name: str):
        import copy

        import torch

        from lstminfer.backends.base import select_backends

        select_backends([f"{name}:{session.device}"])
        self.torch = torch
        self.session = session
        model = session.model
        self.device = session.device
        if name == "torchscript":
            if model.script_path is None:
                raise UserError("backend torchscript needs a TorchScript file (.pt saved with torch.jit.save)")
            from lstminfer.onnx.torchscript import load_torchscript

            self.module = load_torchscript(model.script_path, self.device)
        else:
            if model.module is None:
                raise UserError(f"backend torch needs a PyTorch module; {model.name} is a file: "
                                "use onnxruntime (or torchscript for a .pt file)")
            self.module = copy.deepcopy(model.module).to(self.device).eval()
        self.script = name == "torchscript"
        self.state_out = {o: i for i, o in session.pairs}

    def to_device(self, array: np.ndarray) -> Any:
        return self.torch.from_numpy(np.ascontiguousarray(array)).to(self.device)

    def to_host(self, value: Any) -> np.ndarray:
        return value.detach().cpu().numpy()

    def run(self, feeds: dict[str, np.ndarray], state: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        torch = self.torch
        model = self.session.model
        tensors = {n: torch.from_numpy(np.ascontiguousarray(a)).to(self.device) for n, a in feeds.items()}
        tensors.update(state)
        with torch.inference_mode():
            if self.script:
                from lstminfer.onnx.torchscript import flatten_outputs, script_args, script_inputs

                outs = flatten_outputs(self.module(*script_inputs(script_args(self.module), model.input_names,
                                                                  tensors)))
                model.name_outputs(len(outs))
            else:
                outs = call_rnn(self.module, model.spec.kind, [tensors[n] for n in model.input_names])
        values = dict(zip(model.output_names, outs))
        outputs = {n: v.detach().cpu().numpy() for n, v in values.items() if n not in self.state_out}
        new_state = {self.state_out[n]: v.clone() for n, v in values.items() if n in self.state_out}
        return outputs, new_state

    def close(self) -> None:
        self.module = None


class _RunnerEngine:
    """Any registered backend through its Runner: the state makes a host round trip each chunk."""

    def __init__(self, session: Session, name: str, precision: str):
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
