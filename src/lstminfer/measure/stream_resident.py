"""``fused-resident``: a plain nn.LSTM / nn.GRU streamed through the resident kernel (kernels/rnn/resident.py).

    sess = lstminfer.Session(torch.nn.LSTM(128, 128), backend="fused-resident")   # on CUDA
    out = sess.step(chunk)         # {"output": ..., "hn": ..., "cn": ...}, state carried as rnn.h / rnn.c

The kernel is launched at the first chunk and stays on the GPU, waiting for the next chunk in mapped pinned
memory: a chunk is no launch, no copy and no stream synchronize (docs/whole_models.md, "Streaming on the GPU").
The state lives on the chip between chunks and in host arrays for the session: `sess.state` reads the state
after the last chunk, and a state set from outside (the first chunk, `reset()`, `sess.state = ...`) is loaded
into the kernel before the next chunk.  A stream-only backend: verify/bench/run keep fused-graph, since a
kernel that holds its multiprocessors between calls has nothing to offer a one-shot call.

What it runs: a module that is exactly nn.LSTM or nn.GRU, unidirectional, without proj_size, whose sizes fit
(resident.plan_resident: 1-16 streams; each block keeps its units' weights of every layer in shared memory);
anything else gets one line naming the reason and pointing at fused-graph.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lstminfer.errors import UserError

RESIDENT = "fused-resident"


def _refuse(why: str) -> UserError:
    return UserError(f"backend {RESIDENT} {why}: use fused-graph")


class ResidentEngine:
    """A Session's engine for fused-resident (the engines' interface: measure/stream_engines.py)."""

    def __init__(self, session: Any, precision: str) -> None:
        model = session.model
        module = model.module
        if module is None:
            raise _refuse(f"runs a PyTorch nn.LSTM / nn.GRU; {model.name} is a file")
        import torch

        if type(module) not in (torch.nn.LSTM, torch.nn.GRU):
            raise _refuse(f"runs a plain nn.LSTM / nn.GRU; {model.name} is a whole model ({type(module).__name__})")
        if module.bidirectional:
            raise _refuse(f"streams unidirectional layers; {model.name} is bidirectional")
        if getattr(module, "proj_size", 0):
            raise _refuse(f"has no projection (proj_size {module.proj_size})")
        from lstminfer.backends.pytorch import torch_dtype

        try:  # the kernels package brings Triton with it
            from lstminfer.kernels.rnn.resident import plan_resident
        except ImportError as err:
            raise _refuse(f"needs the gpu extra (pip install 'lstminfer[gpu]'): {err}") from err

        self.dtype = torch_dtype(precision)
        elem_bits = 32 if self.dtype == torch.float32 else 16
        kind = "lstm" if type(module) is torch.nn.LSTM else "gru"
        try:  # the sizes first (a CPU machine can tell): batch 1 here, the chunk's batch at its first step
            plan_resident(kind, module.input_size, module.hidden_size, module.num_layers, 1, elem_bits)
        except ValueError as err:
            raise _refuse(f"cannot run {model.name}: {err}") from err
        if not str(session.device).startswith("cuda"):
            raise _refuse(f"runs on CUDA only, not {session.device}")
        if not torch.cuda.is_available():
            raise _refuse("needs a CUDA GPU (torch.cuda.is_available() is False here)")
        from lstminfer.kernels.rnn.cuda_persistent import available

        ok, why = available()
        if not ok:
            raise _refuse(f"needs cuda-bindings and NVRTC: {why}")
        self.torch = torch
        self.session = session
        self.module = module
        self.is_lstm = kind == "lstm"
        self.batch_first = module.batch_first
        device = torch.device(session.device)
        self.device_index = device.index if device.index is not None else torch.cuda.current_device()
        self.idle_s: float | None = None  # None: ResidentKernel.idle_s (the tests shorten it)
        self.carried = session.carried
        self.names = self._state_names(session)
        # the module's outputs by the model's names (output, hn, cn; a whole-model wrapping: output_0, ...);
        # with state pairs, the state outputs are the session's, not step()'s
        state_out = {o for _, o in session.pairs}
        self.output_names = [n for n in model.output_names if n not in state_out] or ["output"]
        self.kernel: Any = None
        self.weights: Any = None
        self.current: dict[str, np.ndarray] | None = None  # the state dict the kernel holds on chip

    def _state_names(self, session: Any) -> dict[str, str]:
        """{"h": name, "c": name} of the session's state (carried: rnn.h / rnn.c; else the h0/c0 pair)."""
        if self.carried:
            return {"h": "rnn.h", "c": "rnn.c"} if self.is_lstm else {"h": "rnn.h"}
        names = {}
        for inp, out in session.pairs:
            names["c" if (inp == "c0" or out == "cn") else "h"] = inp
        if set(names) != ({"h", "c"} if self.is_lstm else {"h"}):
            raise _refuse(f"needs the state pairs h0->hn{', c0->cn' if self.is_lstm else ''}, not "
                          f"{', '.join(f'{i}->{o}' for i, o in session.pairs)}")
        return names

    # -- the state (the engines' interface) --
    @property
    def state_names(self) -> list[str]:
        return list(self.names.values())

    def zero_state(self, batch: int) -> dict[str, np.ndarray]:
        shape = (self.module.num_layers, batch, self.module.hidden_size)
        return {name: np.zeros(shape, np.float32) for name in self.names.values()}

    def to_device(self, array: np.ndarray) -> np.ndarray:
        return np.array(array, np.float32)

    def to_host(self, value: np.ndarray) -> np.ndarray:
        return np.array(value)

    # -- one chunk --
    def _kernel_for(self, batch: int) -> Any:
        from lstminfer.kernels.rnn.resident import ResidentKernel, ResidentWeights

        if self.kernel is not None and self.kernel.batch == batch:
            return self.kernel
        if self.kernel is not None:  # another batch: another variant (one resident kernel a session)
            self.kernel.close()
            self.kernel = None
        if self.weights is None:
            self.weights = ResidentWeights.of(self.module, self.dtype, self.torch.device("cuda", self.device_index))
        try:
            self.kernel = ResidentKernel(self.weights, batch, self.device_index, idle_s=self.idle_s)
        except ValueError as err:
            raise _refuse(f"cannot run {self.session.model.name} at batch {batch}: {err}") from err
        self.current = None
        return self.kernel

    def run(self, feeds: dict[str, np.ndarray], state: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        x = feeds[self.session.chunk_input]  # an ndarray in the model's dtype (Session.step)
        if x.dtype != np.float32:
            x = x.astype(np.float32)
        if x.ndim != 3 or x.shape[2] != self.module.input_size:
            raise UserError(f"{RESIDENT}: a chunk is [seq, batch, {self.module.input_size}] "
                            f"({'[batch, seq, ...] with batch_first' if self.batch_first else 'time first'}), "
                            f"not {list(x.shape)}")
        if self.batch_first:
            x = x.transpose(1, 0, 2)
        kernel = self.kernel
        if kernel is None or kernel.batch != x.shape[1]:
            kernel = self._kernel_for(x.shape[1])
        if state is not self.current:  # a state set from outside: the first chunk, reset(), sess.state = ...
            h = state[self.names["h"]]
            c = state[self.names["c"]] if self.is_lstm else None
            expected = (self.module.num_layers, x.shape[1], self.module.hidden_size)
            if h.shape != expected:
                raise UserError(f"{RESIDENT}: the state is {list(h.shape)}, the chunk needs {list(expected)} "
                                "(another batch: reset() first)")
            kernel.load(h, c)
        y = kernel.step(x)  # copied into the pinned buffer from any layout
        h, c = kernel.loaded_state  # the state after the chunk: arrays the kernel never changes in place
        new_state = {self.names["h"]: h}
        if self.is_lstm:
            new_state[self.names["c"]] = c
        self.current = new_state
        values = [y.transpose(1, 0, 2).copy() if self.batch_first else y]
        if self.carried:  # the module's own outputs: output, hn (, cn)
            values += [h.copy(), c.copy()] if self.is_lstm else [h.copy()]
        return dict(zip(self.output_names, values)), new_state

    def close(self) -> None:
        if self.kernel is not None:
            self.kernel.close()
            self.kernel = None
