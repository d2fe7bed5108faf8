"""The resident streaming kernel (resident_source.py): plan, NVRTC compile, launch, and the host's protocol.

    kernel = ResidentKernel(ResidentWeights.of(module, torch.float32), batch=1, device=0)
    out = kernel.step(x)               # x: [T, B, input] fp32 numpy; out: [T, B, hidden] fp32
    h, c = kernel.state                # [layers, B, hidden] after the chunk
    kernel.load(h0, c0)                # a state set from outside (the first command after a launch)
    kernel.close()                     # STOP, waited for briefly

One launch serves the whole stream: the kernel waits on the GPU for the next command (the protocol is in
resident_source.py and docs/fused_kernel.md).  A chunk is: the chunk written into mapped pinned memory, the
command and its sequence number written after it, a spin on the done word, the outputs read from mapped
pinned memory.  No launch, no copy, no stream synchronize per chunk.  The kernel runs on its own CUDA stream
(created here, non-blocking: torch's pool streams are shared with other callers, and work queued behind a
resident kernel would wait for it).  It leaves by itself after `idle_s` without a command; the next command
then launches it again and loads the last state first.  Every host wait is bounded (`wait_s`): a kernel that
stalls or does not answer raises KernelStalled with the ctl words that say where it stopped.

``cuda.bindings`` comes through cuda_persistent.py (its `_bindings`, `_check`, `_ensure_context` and
`compile_cubin`); without it or without NVRTC, ``available()`` there says why.
"""

from __future__ import annotations

import atexit
import ctypes
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from .cuda_persistent import _bindings, _check, _ensure_context, compile_cubin
from .cuda_persistent import loaded as _loaded
from .launch import KernelStalled
from .resident_source import SOURCE

KERNEL_NAME = b"rnn_resident"
MAX_BATCH = 16
MAX_BLOCKS_DEFAULT = 132  # an H200's multiprocessors: the plan's bound before a device is known
SHARED_LIMIT = 227 * 1024  # dynamic shared memory a block may have on sm_90
THREADS = 256

# ctl words (int32, mapped pinned host memory): the offsets of resident_source.py
CTL_SEQ, CTL_CMD, CTL_T = 0, 1, 2
CTL_DONE, CTL_STATUS, CTL_ERR_BLOCK, CTL_ERR_LAYER, CTL_ERR_STEP, CTL_ERR_WHAT = 32, 33, 34, 35, 36, 37
CTL_ERR_ROW, CTL_ERR_UNIT, CTL_ERR_TAG, CTL_ERR_SEEN, CTL_STARTED = 38, 39, 40, 41, 42
CTL_WORDS = 64
CMD_STEP, CMD_LOAD, CMD_STOP = 1, 2, 3
ST_RUNNING, ST_IDLE, ST_STOPPED, ST_STALLED = 0, 1, 2, 3
DEV_WORDS = 32


@dataclass(frozen=True)
class ResidentConfig:
    """The compile-time constants of one resident kernel variant (the #defines of resident_source.SOURCE)."""

    is_lstm: bool
    layers: int  # NL
    batch: int  # B
    input_size: int  # IN
    hidden: int  # H
    nb: int  # hidden units a block owns, in every layer
    blocks: int  # G
    elem_bits: int  # 32 (fp32) or 16 (fp16 / bf16): the weights; math in fp32
    bf16: bool
    threads: int = THREADS
    fast: bool = True

    @property
    def gates(self) -> int:
        return 4 if self.is_lstm else 3

    @property
    def k_in(self) -> int:
        """KIN: where the h part of a weight row starts (the widest layer input, padded to 8)."""
        widest = self.input_size if self.layers == 1 else max(self.input_size, self.hidden)
        return _round_up(widest, 8)

    @property
    def k_max(self) -> int:
        """KMAX: a weight row's length (x part, then h part), padded to 8 (16-byte rows at 16 bits)."""
        return self.k_in + _round_up(self.hidden, 8)

    def defines(self) -> str:
        values = dict(IS_LSTM=self.is_lstm, NL=self.layers, B=self.batch, IN=self.input_size, H=self.hidden,
                      NB=self.nb, G=self.blocks, NT=self.threads, KIN=self.k_in, KMAX=self.k_max,
                      ELEM_BITS=self.elem_bits, IS_BF16=self.bf16, FAST=self.fast)
        return "".join(f"#define {k} {int(v)}\n" for k, v in values.items())

    def shared_bytes(self) -> int:
        return shared_bytes(self.gates, self.layers, self.batch, self.nb, self.k_max, self.elem_bits)


def shared_bytes(gates: int, layers: int, batch: int, nb: int, k_max: int, elem_bits: int) -> int:
    """A block's dynamic shared memory: weights, the inputs of a step, the gate sums, biases, c and h."""
    rows = gates * nb
    return (elem_bits // 8) * layers * rows * k_max + 4 * (batch * k_max + batch * rows * 2 + layers * rows * 2
                                                           + 2 * layers * batch * nb)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def plan_resident(kind: str, input_size: int, hidden: int, layers: int, batch: int, elem_bits: int = 32,
                  bf16: bool = False, max_blocks: int = MAX_BLOCKS_DEFAULT, nb: int | None = None) -> ResidentConfig:
    """The variant for these sizes: about 32 blocks where the weights fit (NB = hidden / 32, a power of two),
    fewer units a block (more blocks, up to `max_blocks`, one a multiprocessor) where they do not; `nb` forces
    the units a block (benchmarks/stream_gpu.py's sweep).  Raises a one-line ValueError naming the limit a size
    passes."""
    if not 1 <= batch <= MAX_BATCH:
        raise ValueError(f"batch {batch}: the resident kernel runs 1 to {MAX_BATCH} streams side by side")
    gates = 4 if kind == "lstm" else 3
    widest = input_size if layers == 1 else max(input_size, hidden)
    k_max = _round_up(widest, 8) + _round_up(hidden, 8)
    if nb is None:
        nb = 1
        while nb * 2 <= max(1, hidden // 32):
            nb *= 2
        while nb > 1 and shared_bytes(gates, layers, batch, nb, k_max, elem_bits) > SHARED_LIMIT:
            nb //= 2
    need = shared_bytes(gates, layers, batch, nb, k_max, elem_bits)
    blocks = -(-hidden // nb)
    if need > SHARED_LIMIT or blocks > max_blocks:
        raise ValueError(f"{layers}-layer {kind.upper()} {input_size}->{hidden} at batch {batch} in {elem_bits}-bit "
                         f"weights does not fit the resident kernel: each block keeps its units' weights of every "
                         f"layer on chip ({need // 1024} KiB of shared memory at {nb} unit(s) a block, limit "
                         f"{SHARED_LIMIT // 1024} KiB; {blocks} blocks, limit {max_blocks})")
    return ResidentConfig(kind == "lstm", layers, batch, input_size, hidden, nb, blocks, elem_bits,
                          bf16 and elem_bits == 16)


def compile_resident(cfg: ResidentConfig, arch: str = "sm_90") -> tuple[bytes, str]:
    """NVRTC: the variant's cubin for `arch` and ptxas's log (registers, spills)."""
    return compile_cubin(cfg, arch, source=SOURCE, name="rnn_resident")


def loaded(cfg: ResidentConfig, device_index: int) -> Any:
    """The compiled and loaded variant, cached for the process (cuda_persistent.loaded with this kernel)."""
    return _loaded(cfg, device_index, cubin_of=compile_resident, name=KERNEL_NAME, what="the resident kernel",
                   fix="")


@dataclass
class ResidentWeights:
    """A recurrent stack's weights packed for the kernel's blocks, on the device (packed per variant)."""

    kind: str
    input_size: int
    hidden: int
    layers: int
    w_ih: list  # per layer, torch tensors as the module has them (float32 copies on the device)
    w_hh: list
    b_ih: list
    b_hh: list
    dtype: Any  # the weights' element type in the kernel (torch.float32 / float16 / bfloat16)

    @classmethod
    def of(cls, module: Any, dtype: Any, device: Any) -> ResidentWeights:
        """An nn.LSTM / nn.GRU's weights (unidirectional, no projection: the caller checked)."""
        import torch

        kind = "lstm" if module.mode == "LSTM" else "gru"
        gates, hidden = (4 if kind == "lstm" else 3), module.hidden_size
        w_ih, w_hh, b_ih, b_hh = [], [], [], []
        with torch.no_grad():
            for layer in range(module.num_layers):
                w_ih.append(getattr(module, f"weight_ih_l{layer}").detach().to(device, torch.float32).clone())
                w_hh.append(getattr(module, f"weight_hh_l{layer}").detach().to(device, torch.float32).clone())
                zeros = torch.zeros(gates * hidden, device=device)
                b_ih.append(getattr(module, f"bias_ih_l{layer}").detach().to(device, torch.float32).clone()
                            if module.bias else zeros)
                b_hh.append(getattr(module, f"bias_hh_l{layer}").detach().to(device, torch.float32).clone()
                            if module.bias else zeros)
        return cls(kind, module.input_size, hidden, module.num_layers, w_ih, w_hh, b_ih, b_hh, dtype)

    def packed(self, cfg: ResidentConfig) -> tuple[Any, Any]:
        """(wpack [G][NL][ROWS][KMAX] in the weights' dtype, bpack [G][NL][ROWS][2] fp32 words holding values
        of that dtype): block g's rows are gate q's units g NB .. g NB + NB - 1 (row q NB + u), the x part at
        0, the h part at KIN; zeros where a unit is past the hidden size or a layer's input is narrower than
        KIN."""
        import torch

        gates, hidden, nb, blocks = cfg.gates, self.hidden, cfg.nb, cfg.blocks
        padded = nb * blocks
        device = self.w_ih[0].device
        w = torch.zeros(self.layers, gates, padded, cfg.k_max, device=device)
        b = torch.zeros(self.layers, gates, padded, 2, device=device)
        for layer in range(self.layers):
            width = self.w_ih[layer].shape[1]
            w[layer, :, :hidden, :width] = self.w_ih[layer].view(gates, hidden, width)
            w[layer, :, :hidden, cfg.k_in:cfg.k_in + hidden] = self.w_hh[layer].view(gates, hidden, hidden)
            b[layer, :, :hidden, 0] = self.b_ih[layer].view(gates, hidden)
            b[layer, :, :hidden, 1] = self.b_hh[layer].view(gates, hidden)
        w = w.view(self.layers, gates, blocks, nb, cfg.k_max).permute(2, 0, 1, 3, 4)
        b = b.view(self.layers, gates, blocks, nb, 2).permute(2, 0, 1, 3, 4)
        wpack = w.reshape(blocks, self.layers, gates * nb, cfg.k_max).to(self.dtype).contiguous()
        # biases rounded to the weights' precision as the module in that dtype has them, kept as fp32 words
        bpack = b.reshape(blocks, self.layers, gates * nb, 2).to(self.dtype).float().contiguous()
        return wpack, bpack


def _elem(dtype: Any) -> tuple[int, bool]:
    import torch

    return (32, False) if dtype == torch.float32 else (16, dtype == torch.bfloat16)


_LIVE: weakref.WeakSet = weakref.WeakSet()
# taken and released between a chunk's data and its sequence word: a locked instruction, so the data's stores
# (memcpy may use non-temporal ones for large chunks) are visible before the sequence word is
_STORE_FENCE = threading.Lock()


@atexit.register
def _stop_all() -> None:
    """Stop every kernel still resident at exit (the process's CUDA context goes with it)."""
    for kernel in list(_LIVE):
        try:
            kernel.close()
        except Exception:  # exiting: nothing left to report to
            pass


class ResidentKernel:
    """One resident kernel variant and its buffers for a stream of `batch` rows (see the module docstring)."""

    idle_s = 5.0  # no command this long: the kernel leaves (a forgotten session does not hold SMs)
    wait_s = 2.0  # the host's bound on any wait for the kernel
    spin_s = 0.5  # the kernel's bound on a wait for another block's h
    poll_sleep_ns = 100  # block 0's pause between two reads of the command word
    max_chunk = 64  # steps a STEP command carries (longer chunks are cut)
    units_per_block: int | None = None  # NB; None: plan_resident's choice (the benchmark's sweep sets it)

    def __init__(self, weights: ResidentWeights, batch: int, device_index: int, *, idle_s: float | None = None,
                 max_chunk: int | None = None) -> None:
        import torch

        self.torch = torch
        self.weights = weights
        self.batch = batch
        self.device_index = device_index
        if idle_s is not None:
            self.idle_s = idle_s
        if max_chunk is not None:
            self.max_chunk = max_chunk
        elem_bits, bf16 = _elem(weights.dtype)
        sms = torch.cuda.get_device_properties(device_index).multi_processor_count
        self.cfg = plan_resident(weights.kind, weights.input_size, weights.hidden, weights.layers, batch, elem_bits,
                                 bf16, max_blocks=sms, nb=self.units_per_block)
        driver, _ = _bindings()
        self.driver = driver
        with torch.cuda.device(device_index):
            self.kernel = loaded(self.cfg, device_index)
            self.kernel.check_resident(self.cfg.blocks)
            self.wpack, self.bpack = weights.packed(self.cfg)
            cfg, dev = self.cfg, torch.device("cuda", device_index)
            L, B, H, IN = cfg.layers, batch, cfg.hidden, cfg.input_size
            self.xch = torch.zeros(L * 2 * B * H, dtype=torch.int64, device=dev)
            self.stage = torch.zeros(self.max_chunk * B * IN, dtype=torch.float32, device=dev)
            self.dev_words = torch.zeros(DEV_WORDS, dtype=torch.int32, device=dev)
            pinned = dict(pin_memory=True)
            self.ctl_t = torch.zeros(CTL_WORDS, dtype=torch.int32, **pinned)
            self.x_t = torch.zeros(self.max_chunk * B * IN, dtype=torch.float32, **pinned)
            self.y_t = torch.zeros(self.max_chunk * B * H, dtype=torch.float32, **pinned)
            self.state_in_t = torch.zeros(2 * L * B * H, dtype=torch.float32, **pinned)
            self.state_out_t = torch.zeros(2 * L * B * H, dtype=torch.float32, **pinned)
            # the packing and the zeros done before the kernel reads them (this stream only: a device-wide
            # synchronize would wait for every resident kernel, another session's too)
            torch.cuda.current_stream(dev).synchronize()
            self.stream = _check(driver.cuStreamCreate(driver.CUstream_flags.CU_STREAM_NON_BLOCKING),
                                 "cuStreamCreate")
        self.ctl = self.ctl_t.numpy()  # for reading (tests, messages)
        # the same words for the per-chunk path: a memoryview's item is ~40 ns, a numpy scalar's ~1 us, and the
        # spin's period is the host's share of the latency
        self.words = memoryview(self.ctl).cast("B").cast("i")
        self.x = self.x_t.numpy().reshape(self.max_chunk, B, IN)
        self.y = self.y_t.numpy().reshape(self.max_chunk, B, H)
        self.state_in = self.state_in_t.numpy().reshape(2, L, B, H)
        self.state_out = self.state_out_t.numpy().reshape(2, L, B, H)
        self.seq = 0
        self.running = False
        self.launches = 0  # how many times the kernel was launched (the idle relaunch test reads it)
        self.loaded_state: tuple[np.ndarray, np.ndarray] | None = None  # what a relaunch loads first
        _LIVE.add(self)

    # ---- launch ------------------------------------------------------------------------------------------------
    def _device_pointer(self, tensor: Any) -> int:
        """The device's address of a pinned host tensor (the same under unified addressing; asked, not assumed)."""
        driver = self.driver
        return int(_check(driver.cuPointerGetAttribute(
            driver.CUpointer_attribute.CU_POINTER_ATTRIBUTE_DEVICE_POINTER, tensor.data_ptr()),
            "cuPointerGetAttribute(DEVICE_POINTER) of a pinned buffer"))

    def _launch(self) -> None:
        driver, cfg = self.driver, self.cfg
        self._wait_exited()
        self.ctl[:] = 0
        self.seq = 0
        with self.torch.cuda.device(self.device_index):
            _ensure_context(self.device_index)
            # the exchange and the device words start from zeros: no stale tag of an earlier launch matches
            _check(driver.cuMemsetD32Async(self.xch.data_ptr(), 0, self.xch.numel() * 2, self.stream),
                   "cuMemsetD32Async")
            _check(driver.cuMemsetD32Async(self.dev_words.data_ptr(), 0, DEV_WORDS, self.stream), "cuMemsetD32Async")
            values = [(ctypes.c_void_p, self.wpack.data_ptr()), (ctypes.c_void_p, self.bpack.data_ptr()),
                      (ctypes.c_void_p, self.xch.data_ptr()), (ctypes.c_void_p, self.stage.data_ptr()),
                      (ctypes.c_void_p, self.dev_words.data_ptr()),
                      (ctypes.c_void_p, self._device_pointer(self.ctl_t)),
                      (ctypes.c_void_p, self._device_pointer(self.x_t)),
                      (ctypes.c_void_p, self._device_pointer(self.y_t)),
                      (ctypes.c_void_p, self._device_pointer(self.state_in_t)),
                      (ctypes.c_void_p, self._device_pointer(self.state_out_t)),
                      (ctypes.c_longlong, int(self.idle_s * 1e9)), (ctypes.c_longlong, int(self.spin_s * 1e9)),
                      (ctypes.c_int, self.poll_sleep_ns)]
            boxed = [kind(value) for kind, value in values]
            pointers = (ctypes.c_void_p * len(boxed))(*(ctypes.addressof(b) for b in boxed))
            _check(driver.cuLaunchKernel(self.kernel.function, cfg.blocks, 1, 1, cfg.threads, 1, 1,
                                         self.kernel.shared, self.stream, ctypes.addressof(pointers), 0),
                   "cuLaunchKernel(rnn_resident)")
        self.running = True
        self.launches += 1

    def _stream_idle(self) -> bool:
        result = self.driver.cuStreamQuery(self.stream)
        err = result[0] if isinstance(result, tuple) else result
        if int(err) == 0:
            return True
        if err == self.driver.CUresult.CUDA_ERROR_NOT_READY:
            return False
        raise RuntimeError(f"cuStreamQuery on the resident kernel's stream failed: {err}")

    def _wait_exited(self, limit_s: float | None = None) -> None:
        """Wait (bounded) until the last launch has ended."""
        limit = limit_s if limit_s is not None else self.spin_s + self.wait_s
        deadline = time.perf_counter() + limit
        while not self._stream_idle():
            if time.perf_counter() > deadline:
                raise KernelStalled(f"resident kernel: still running {limit:g} s after it was told to stop "
                                    f"({self._words()})")
            time.sleep(0.0005)
        self.running = False

    # ---- commands ----------------------------------------------------------------------------------------------
    def _words(self) -> str:
        c = self.ctl
        return (f"ctl words: seq {c[CTL_SEQ]}, done {c[CTL_DONE]}, status {c[CTL_STATUS]}, started "
                f"{c[CTL_STARTED]}")

    def _stall_message(self) -> str:
        c = self.ctl
        layer = int(c[CTL_ERR_LAYER])
        what = f"layer {layer}'s new h (its input)" if c[CTL_ERR_WHAT] == 1 else f"layer {layer}'s previous h"
        unit = int(c[CTL_ERR_UNIT])
        seen, tag = int(c[CTL_ERR_SEEN]) & 0xffffffff, int(c[CTL_ERR_TAG]) & 0xffffffff  # int32 words, unsigned tags
        return (f"resident kernel: block {c[CTL_ERR_BLOCK]} gave up waiting {self.spin_s:g} s for {what} at step "
                f"{c[CTL_ERR_STEP]} of the chunk: word (row {c[CTL_ERR_ROW]}, unit {unit}), written by block "
                f"{unit // self.cfg.nb}, tag {seen} instead of {tag} "
                "(not every block resident: another kernel holding multiprocessors?); no result returned")

    def _send(self, cmd: int, steps: int = 0) -> None:
        """Write one command (its data already in the pinned buffers) and wait for its done word, bounded.  A
        kernel that left for idleness is launched again, loads the last state and gets the command again."""
        words = self.words
        if not self.running or words[CTL_STATUS] != ST_RUNNING:
            self._relaunch()
        for _attempt in range(2):
            self.seq = (self.seq % 0x7FFFFFFF) + 1
            seq = self.seq
            ctl = words
            ctl[CTL_CMD] = cmd
            ctl[CTL_T] = steps
            if steps * self.batch * self.cfg.input_size >= 16384:
                with _STORE_FENCE:  # a large chunk's copy may have used non-temporal stores
                    pass
            ctl[CTL_SEQ] = seq  # last: the kernel reads the command after it (x86 keeps the stores' order)
            spins = 0
            deadline = 0.0
            while ctl[CTL_DONE] != seq:
                spins += 1
                if spins & 1023:
                    continue
                status = ctl[CTL_STATUS]
                if status == ST_STALLED:
                    message = self._stall_message()
                    self._abandon()
                    raise KernelStalled(message)
                if status == ST_IDLE:  # it left before it saw this command: launch again, send again
                    break
                now = time.perf_counter()
                if deadline == 0.0:
                    deadline = now + self.wait_s
                elif now > deadline:
                    words = self._words()
                    self._abandon()
                    raise KernelStalled(f"resident kernel: no answer to command {cmd} within {self.wait_s:g} s "
                                        f"({words}); no result returned")
            else:
                return
            self._relaunch()
        raise KernelStalled(f"resident kernel: left twice before it saw command {cmd} ({self._words()})")

    def _relaunch(self) -> None:
        self._launch()
        if self.loaded_state is not None:
            self._load(*self.loaded_state)

    def _abandon(self) -> None:
        """After a stall: the kernel's blocks leave within spin_s; the next command launches it again."""
        self.running = False
        try:
            self._wait_exited()
        except KernelStalled:
            pass

    def _load(self, h: np.ndarray, c: np.ndarray | None) -> None:
        self.state_in[0] = h
        if c is not None:
            self.state_in[1] = c
        self._send(CMD_LOAD)

    def load(self, h: np.ndarray, c: np.ndarray | None = None) -> None:
        """Set the state ([layers, batch, hidden] fp32 each; c for an LSTM)."""
        self.loaded_state = (np.array(h, np.float32), None if c is None else np.array(c, np.float32))
        if not self.running:
            self._launch()
        self._load(*self.loaded_state)

    def step(self, x: np.ndarray) -> np.ndarray:
        """Run a chunk x [T, batch, input] (any T; cut into commands of max_chunk steps); returns the last
        layer's h for every step [T, batch, hidden] (a new array) and leaves the state in `state`."""
        if self.loaded_state is None:
            zeros = np.zeros((self.cfg.layers, self.batch, self.cfg.hidden), np.float32)
            self.load(zeros, zeros if self.cfg.is_lstm else None)
        steps = x.shape[0]
        if steps <= self.max_chunk:  # one command (the stream's usual chunk): fewer copies
            self.x[:steps] = x
            self._send(CMD_STEP, steps)  # a stall raises before the state changes
            state = self.state_out.copy()  # one copy; its two halves are never changed in place
            self.loaded_state = (state[0], state[1] if self.cfg.is_lstm else None)
            return self.y[:steps].copy()
        out = np.empty((steps, self.batch, self.cfg.hidden), np.float32)
        before = self.loaded_state
        try:
            for start in range(0, steps, self.max_chunk):
                part = min(self.max_chunk, steps - start)
                self.x[:part] = x[start:start + part]
                self._send(CMD_STEP, part)
                out[start:start + part] = self.y[:part]
                # what a relaunch would load: the state after this command (copies: the next command overwrites)
                self.loaded_state = (self.state_out[0].copy(),
                                     self.state_out[1].copy() if self.cfg.is_lstm else None)
        except KernelStalled:
            self.loaded_state = before  # a chunk cut into commands fails whole: the state before it
            raise
        return out

    @property
    def state(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(h, c or None) after the last command, [layers, batch, hidden] fp32 copies."""
        if self.loaded_state is None:
            zeros = np.zeros((self.cfg.layers, self.batch, self.cfg.hidden), np.float32)
            return zeros, (zeros.copy() if self.cfg.is_lstm else None)
        h, c = self.loaded_state
        return h.copy(), (None if c is None else c.copy())

    def close(self) -> None:
        """STOP, waited for briefly (a kernel that does not leave is left to its idle limit); the stream freed."""
        if getattr(self, "stream", None) is None:
            return
        try:
            if self.running and self.ctl[CTL_STATUS] == ST_RUNNING:
                self.seq = (self.seq % 0x7FFFFFFF) + 1
                self.ctl[CTL_CMD] = CMD_STOP
                self.ctl[CTL_SEQ] = self.seq
            self._wait_exited(limit_s=1.0)
        except KernelStalled:
            return  # still running: keep the stream (destroying it would not stop the kernel)
        finally:
            _LIVE.discard(self)
        _check(self.driver.cuStreamDestroy(self.stream), "cuStreamDestroy")
        self.stream = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # garbage collection at exit: nothing left to report to
            pass
