"""TensorRT engines (TensorRT 10/11 Python API, named I/O tensors, ``execute_async_v3``); torch owns memory and streams.

``prepare`` finds or builds the engine (``lstminfer.tensorrt.build.ensure_engine``: cache, sidecar checks), then
allocates one device buffer per I/O tensor sized for the profile's max shapes, and pinned host buffers
to copy through, as trtexec does. Per call: ``upload`` = H2D copies, ``execute`` = ``set_input_shape`` +
the enqueue, ``download`` = D2H copies and the only synchronization. All three run on ``self.stream``.

The profile covers the points the runner was prepared for (``Runner.shapes``: opt the first, max the
largest). Runner options (``bench``/``verify`` pass them through): ``out_dir``/``cache_dir``, ``profile``
(a lstminfer.tensorrt.build.Profile, instead), ``max_seq_len``, ``max_batch``, ``workspace_mb``, ``tf32``
(default on, as in TensorRT; the CLI passes its ``--tf32`` flag, off unless given).

Not yet run against a real TensorRT: see docs/tensorrt.md.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from lstminfer.backends.base import OnnxFileRunner
from lstminfer.errors import UserError
from lstminfer.tensorrt import build as tb


class TensorRTRunner(OnnxFileRunner):
    name: ClassVar[str] = "tensorrt"
    devices: ClassVar[tuple[str, ...]] = ("cuda",)
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "fp16", "bf16")
    install_hint: ClassVar[str] = tb.INSTALL_HINT
    use_cuda_graph: ClassVar[bool] = False

    @classmethod
    def available_impl(cls, device: str) -> tuple[bool, str]:
        if importlib.util.find_spec("tensorrt") is None:
            return False, "the tensorrt package is not installed"
        import torch

        if not torch.cuda.is_available():
            return False, "no CUDA device visible to torch"
        try:
            import tensorrt  # noqa: F401
        except Exception as err:  # a broken install (missing libnvinfer) must not crash the listing
            return False, f"import tensorrt failed: {err}"
        return True, ""

    # ---- life cycle ------------------------------------------------------------------------------
    def prepare_impl(self) -> None:
        import torch

        onnx_path = Path(self.model.onnx_path)
        self.profile = self.options.get("profile") or tb.derive_profile(
            onnx_path, points=self.shapes, max_seq_len=self.options.get("max_seq_len"),
            max_batch=self.options.get("max_batch"))
        out_dir = self.options.get("out_dir") or "lstminfer-out"
        cache_dir = Path(self.options.get("cache_dir") or tb.default_cache_dir(out_dir))
        request = tb.EngineRequest(onnx_path, self.profile, self.precision, cache_dir,
                                   int(self.options.get("workspace_mb") or tb.DEFAULT_WORKSPACE_MB),
                                   bool(self.options.get("tf32", True)))
        self.engine_path, self.sidecar, self.built_now = tb.ensure_engine(request)
        trt = tb.import_tensorrt()
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(tb.read_engine(self.engine_path, self.sidecar))
        if self.engine is None:
            raise UserError(f"TensorRT could not deserialize {self.engine_path} (corrupt, or built by another "
                            "TensorRT); delete it and rerun to rebuild")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if n not in self.input_names]
        self.stream = torch.cuda.Stream()
        self.context = self._new_context()
        # Size every buffer once, for the profile's max shapes (outputs: what the engine infers from them).
        for name in self.input_names:
            shape = self.profile.max.get(name) or tuple(self.engine.get_tensor_shape(name))
            self.context.set_input_shape(name, shape)
        self._dtypes = {n: _torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in names}
        capacity = {n: math.prod(self.context.get_tensor_shape(n)) for n in names}
        self._device = {n: torch.empty(capacity[n], dtype=self._dtypes[n], device="cuda") for n in names}
        self._host = {n: torch.empty(capacity[n], dtype=self._dtypes[n], pin_memory=True) for n in names}
        self._bind(self.context)
        self._shapes: dict[str, tuple[int, ...]] = {}

    def _new_context(self) -> Any:
        context = self.engine.create_execution_context()
        if context is None:
            raise UserError(f"TensorRT could not create an execution context for {self.engine_path} (GPU memory?)")
        return context

    def _bind(self, context: Any) -> None:
        # The buffers never move, so their addresses are set once per context.
        for name, buffer in self._device.items():
            context.set_tensor_address(name, buffer.data_ptr())

    def upload_impl(self, inputs: dict[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
        shapes = {n: tuple(inputs[n].shape) for n in self.input_names}
        self.profile.check(shapes)
        import torch

        for name in self.input_names:
            n = math.prod(shapes[name])
            host = self._host[name][:n]
            host.copy_(torch.from_numpy(np.ascontiguousarray(inputs[name]).reshape(-1)))  # pinned, like trtexec
            self._device[name][:n].copy_(host, non_blocking=True)  # on the current stream: runner.stream
        return shapes

    def execute_impl(self, shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        self._set_shapes(self.context, shapes)
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise UserError(f"TensorRT failed to enqueue {self.engine_path} at {shapes}")
        return {n: tuple(self.context.get_tensor_shape(n)) for n in self.output_names}

    def _set_shapes(self, context: Any, shapes: dict[str, tuple[int, ...]]) -> None:
        if shapes == self._shapes and context is self.context:
            return
        for name, shape in shapes.items():
            if not context.set_input_shape(name, shape):
                raise UserError(f"TensorRT refused shape {shape} for input {name!r} of {self.engine_path}; "
                                f"the engine's profile: {self.profile.describe()}")
        if context is self.context:
            self._shapes = dict(shapes)

    def download_impl(self, out_shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
        views = {}
        for name, shape in out_shapes.items():
            n = math.prod(shape)
            self._host[name][:n].copy_(self._device[name][:n], non_blocking=True)
            views[name] = (n, shape)
        self.stream.synchronize()
        return {name: self._host[name][:n].float().numpy().reshape(shape).copy() for name, (n, shape) in views.items()}

    def close_impl(self) -> None:
        self.context = self.engine = self._runtime = None
        self._device, self._host = {}, {}
        self.stream = None

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"cuda_graph": self.use_cuda_graph}
        if self._prepared:
            info.update({"engine": str(self.engine_path), "engine_built_now": self.built_now,
                         "tensorrt_version": self.sidecar["tensorrt_version"], "tf32": self.sidecar.get("tf32"),
                         "profile": self.sidecar["profile"]})
        return info


class TensorRTGraphRunner(TensorRTRunner):
    """The same engine with its enqueue captured in a CUDA graph, one graph (and context) per input shape."""

    name: ClassVar[str] = "tensorrt-graph"
    use_cuda_graph: ClassVar[bool] = True

    def prepare_impl(self) -> None:
        super().prepare_impl()
        self._graphs: dict[tuple, Any] = {}

    def execute_impl(self, shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        import torch

        key = tuple(sorted(shapes.items()))
        if key not in self._graphs:
            # A graph bakes in the shapes it was captured with, so each shape gets its own context.
            context = self._new_context()
            self._bind(context)
            self._set_shapes(context, shapes)
            context.execute_async_v3(self.stream.cuda_stream)  # TensorRT asks for one enqueue before capture
            self.stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=self.stream):
                if not context.execute_async_v3(self.stream.cuda_stream):
                    raise UserError(f"TensorRT failed to enqueue {self.engine_path} during CUDA graph capture")
            outs = {n: tuple(context.get_tensor_shape(n)) for n in self.output_names}
            self._graphs[key] = (graph, context, outs)
        graph, _, outs = self._graphs[key]
        with torch.cuda.stream(self.stream):
            graph.replay()
        return outs

    def close_impl(self) -> None:
        self._graphs = {}
        super().close_impl()


def _torch_dtype(trt: Any, dtype: Any) -> Any:
    import torch

    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32, trt.int8: torch.int8,
             trt.bool: torch.bool}
    if hasattr(trt, "bfloat16"):
        table[trt.bfloat16] = torch.bfloat16
    if hasattr(trt, "int64"):
        table[trt.int64] = torch.int64
    if dtype not in table:
        raise UserError(f"engine tensor type {dtype} is not supported by lstminfer's TensorRT runner")
    return table[dtype]
