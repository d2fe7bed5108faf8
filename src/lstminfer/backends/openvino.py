"""Intel OpenVINO on the CPU: the exported ONNX file compiled once per input shape.

What is special about it (FACTS.md section 8):
* OpenVINO reads the ONNX file with its dynamic dims, but a model reshaped to static shapes runs about
  1.7x faster on the seed model, so each new set of input shapes gets its own compiled model, kept like
  the CUDA-graph runners keep their graphs (``compiles`` counts them, recorded as ``compiled_models``).
* On a CPU with bf16 units the CPU plugin computes in bf16 unless told otherwise: "fp32" is compiled
  with ``INFERENCE_PRECISION_HINT=f32`` and the precision is read back from the compiled model and
  recorded (``inference_precision``); a precision other than the one asked for is an error, not a row.
* ``cpu_mode``: ``latency`` (the default: one infer request, all threads on it) or ``throughput``
  (OpenVINO's THROUGHPUT hint makes several streams; the query's batch is split into one slice per
  stream, the slices run as that many infer requests in flight, and the outputs are joined).
* ``threads``: ``INFERENCE_NUM_THREADS``; read back and recorded (``threads``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lstminfer.backends.base import OnnxFileRunner
from lstminfer.backends.batch import CPU_MODES, batch_axes, group_sizes, join_rows, split_rows
from lstminfer.errors import UserError

INSTALL = 'pip install "lstminfer[cpu]" (or: pip install openvino)'
HINTS = {"fp32": "f32", "fp16": "f16", "bf16": "bf16"}
CAPABILITY = {"fp16": "FP16", "bf16": "BF16"}


def _ov() -> Any:
    import openvino

    return openvino


def _host_copy(data: np.ndarray) -> np.ndarray:
    """A copy (the request's buffer is reused by its next query); floating outputs as float32."""
    return np.array(data, dtype=np.float32 if np.issubdtype(data.dtype, np.floating) else data.dtype)


def _reason(err: BaseException) -> str:
    """The last line of OpenVINO's message that is not C++ location or framing (its reason)."""
    framing = ("Exception from", "Check '", "FrontEnd API failed", "Summary:")
    lines = [line.strip(" -") for line in str(err).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(framing)]
    return (useful or lines or [type(err).__name__])[-1]


class OpenVinoRunner(OnnxFileRunner):
    name = "openvino"
    devices = ("cpu",)
    precisions = ("fp32", "fp16", "bf16")
    install_hint = INSTALL

    @classmethod
    def available_impl(cls, device: str) -> tuple[bool, str]:
        try:
            _ov()
        except ImportError:
            return False, "openvino is not installed"
        return True, ""

    @property
    def cpu_mode(self) -> str:
        return self.options.get("cpu_mode") or "latency"

    @property
    def threads(self) -> int | None:
        return self.options.get("threads") or None

    def supports_impl(self) -> tuple[bool, str]:
        ok, why = super().supports_impl()
        if not ok:
            return ok, why
        if self.cpu_mode not in CPU_MODES:
            return False, f"cpu mode {self.cpu_mode!r} is not one of {', '.join(CPU_MODES)}"
        if self.precision in CAPABILITY:
            caps = _ov().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
            if CAPABILITY[self.precision] not in caps:
                return False, (f"this CPU has no {self.precision} compute (OpenVINO's CPU capabilities: "
                               f"{', '.join(caps)})")
        return True, ""

    # ---- life cycle -----------------------------------------------------------------------------------
    def prepare_impl(self) -> None:
        ov = _ov()
        self.core = ov.Core()
        path = self.model.onnx_path
        try:  # the ONNX frontend itself: Core.read_model would also try (and log) every other frontend
            onnx_frontend = ov.frontend.FrontEndManager().load_by_framework("onnx")
            self.source = onnx_frontend.convert(onnx_frontend.load(str(path)))
        except Exception as err:  # OpenVINO raises with a multi-line C++ trace
            raise UserError(f"OpenVINO cannot read {path}: {_reason(err)}") from None
        self.config: dict[str, Any] = {
            "PERFORMANCE_HINT": self.cpu_mode.upper(),
            "INFERENCE_PRECISION_HINT": HINTS[self.precision],
        }
        if self.threads:
            self.config["INFERENCE_NUM_THREADS"] = int(self.threads)
        self.input_names = [i.get_any_name() for i in self.source.inputs]
        self.output_names = [o.get_any_name() for o in self.source.outputs]
        self.batch_axes = batch_axes(self.model, self.input_names + self.output_names)
        # One compile of the model as read (dynamic dims) tells what this config runs: the precision, the
        # threads and the number of streams, before any query.  Queries get static-shape compiles.
        self.properties = self._read_back(self._compile(self.source))
        self.compiled: dict[tuple, Any] = {}  # slice shapes -> compiled model
        self.requests: dict[tuple, list[Any]] = {}  # query shapes -> infer requests, one per slice
        # The points this runner will serve (Runner.prepare(shapes)) are compiled now, outside any timing;
        # other shapes are compiled on first use.
        rng = np.random.default_rng(0)
        for seq_len, batch in getattr(self, "shapes", ()):
            self._requests_for(self._arrays(self.model.make_inputs(seq_len, batch, rng)))

    @property
    def compiles(self) -> int:
        """Static-shape models compiled so far (one per distinct slice shape)."""
        return len(self.compiled) if self._prepared else 0

    def _compile(self, model: Any) -> Any:
        try:
            return self.core.compile_model(model, "CPU", self.config)
        except Exception as err:
            raise UserError(f"OpenVINO cannot compile {self.model.onnx_path}: {_reason(err)}") from None

    def _read_back(self, compiled: Any) -> dict[str, Any]:
        ran = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        if ran != HINTS[self.precision]:
            raise UserError(f"OpenVINO compiled {self.precision} as {ran}; refusing to record it as {self.precision}")
        return {
            "inference_precision": ran,
            "threads": int(compiled.get_property("INFERENCE_NUM_THREADS")),
            "num_streams": int(compiled.get_property("NUM_STREAMS")),
            "optimal_requests": int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")),
        }

    def _compiled_for(self, shapes: tuple) -> Any:
        if shapes not in self.compiled:
            model = self.source.clone()
            model.reshape({name: _ov().PartialShape(list(shape)) for name, shape in shapes})
            self.compiled[shapes] = self._compile(model)
        return self.compiled[shapes]

    def _slices(self, arrays: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        """The query itself (latency), or its batch cut into one slice per stream (throughput)."""
        streams = self.properties["optimal_requests"]
        if self.cpu_mode != "throughput" or self.batch_axes is None or streams <= 1:
            return [arrays]
        first = self.input_names[0]
        batch = arrays[first].shape[self.batch_axes[first]]
        return split_rows(arrays, self.batch_axes, group_sizes(batch, streams))

    def _arrays(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {n: np.ascontiguousarray(inputs[n]) for n in self.input_names}  # dtypes as the file wants

    def _requests_for(self, arrays: dict[str, np.ndarray]) -> tuple[list[Any], list[dict[str, np.ndarray]]]:
        """The query's slices and their infer requests (compiling each new slice shape once)."""
        slices = self._slices(arrays)
        key = tuple(tuple((n, a.shape) for n, a in part.items()) for part in slices)
        if key not in self.requests:
            self.requests[key] = [self._compiled_for(shapes).create_infer_request() for shapes in key]
        return self.requests[key], slices

    def upload_impl(self, inputs: dict[str, np.ndarray]) -> tuple[list[Any], list[dict[str, np.ndarray]]]:
        return self._requests_for(self._arrays(inputs))

    def execute_impl(self, device_inputs: tuple[list[Any], list[dict[str, np.ndarray]]]) -> list[Any]:
        requests, slices = device_inputs
        if len(requests) == 1:
            requests[0].infer(slices[0], share_inputs=True)
            return requests
        for request, part in zip(requests, slices):
            request.start_async(part, share_inputs=True)
        for request in requests:
            request.wait()
        return requests

    def download_impl(self, requests: list[Any]) -> dict[str, np.ndarray]:
        parts = [{n: _host_copy(r.get_tensor(n).data) for n in self.output_names} for r in requests]
        return join_rows(parts, self.batch_axes)  # one part: as it is

    def close_impl(self) -> None:
        self.requests, self.compiled = {}, {}
        self.source = self.core = None

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"openvino": _ov().get_version().split("-")[0], "cpu_mode": self.cpu_mode}
        if self._prepared:
            out.update(self.properties)
            out["compiled_models"] = self.compiles
            out["requests_in_flight"] = max((len(r) for r in self.requests.values()), default=1)
        return out
