"""Triton kernels for whole nn.LSTM / nn.GRU stacks: every layer, direction and time step in one launch (or, for
hidden 256 and up, one launch per layer). One file per kernel (stack, pipeline, relay, persistent); the
shared pieces in cell, sync, packing, plan and launch; the public entry points fused_rnn (api) and pack_rnn.

Layout of the work (docs/fused_kernel.md has the numbers and which path each size takes):

* One kernel, ``_rnn_stack_kernel``. Grid ``(batch_tiles, programs)``. Every program of a batch tile loops
  over the layers itself. A layer is two phases:
  1. the input projection of all time steps, hoisted out of the recurrence: ``gx = x @ W_ih^T + b`` for
     every (t, b), a small matrix product (``tl.dot``, IEEE fp32, or fp16/bf16 with fp32 accumulation),
     its (column chunk, time tile) work items shared round-robin among the programs. With a single time
     tile (short sequences) each recurrence unit projects its own columns instead, so nobody waits.
  2. the recurrence: one *unit* per (direction, row tile). A unit keeps its slice of ``W_hh^T`` in
     registers for all time steps, whole columns per thread, and multiplies it with ``h`` by
     broadcast-multiply-and-sum (batch rows are few: no tensor cores, and the sum over k stays inside a
     thread); ``c`` stays in registers. When one row tile covers a direction, ``h`` stays on chip too and
     the units never wait for each other inside a layer.
* Gate columns are interleaved (hidden unit, gate) so one split hands each thread i, f, g, o of its units.
* Batch rows are independent: for HP <= 32 and longer sequences a program is one warp for one batch row and
  direction, so each row's steps run on their own multiprocessor (see plan_for).
* A step is a chain of dependent latencies, so on CUDA sigmoid and tanh use ``ex2.approx.ftz`` and
  ``rcp.approx.ftz`` (no range fix-ups around them), the sum over k runs as independent chains of
  ``k_chain`` FMAs, and the next step's projection is read into registers the current one has freed.
* Programs of one batch tile meet at grid barriers (an atomic counter in global memory) after the
  projection and at the end of each layer. When a direction is split over several row tiles, the tiles
  also exchange h every step: the launcher poisons the layer outputs, and a reader polls the words it
  needs (each thread its own words, in PTX) until none is poison; the words are then h. Waiting between
  programs needs every program resident, so it is used on
  CUDA only, with at most one program per multiprocessor; under ``TRITON_INTERPRET=1`` (programs run one
  after another) the plan is always one program per batch tile, which never waits.
* Layer pipeline (``_rnn_pipe_kernel``, short sequences, small hidden sizes): one program per (layer, direction)
  with all its weights in registers from kernel start; it polls the previous layer's output step by step
  (poisoned words again, in two sets used by alternate launches, so no fill between launches).
* Relay (``_rnn_relay_kernel``, the one-warp plan past seq 16): per batch tile one warp per direction
  runs the recurrence of every layer while helper programs project the next layer's input row by row as
  the current layer completes the rows (polled as poisoned words, in two sets used by alternate launches)
  and count their rows done; a unit starts a layer when the count is complete. No grid barrier: a layer
  hands over to the next in ~1.9 us instead of ~4.7.
* Persistent kernel (``persistent.py``, path ``per-layer``, CUDA default from padded hidden 256): per layer
  one projection GEMM and one launch whose programs each keep a slice of W_hh^T on chip for the whole
  sequence and exchange h through the poisoned layer output slab (data as flag), both directions at once.
  Where cuda-bindings and NVRTC are there and the size fits, the same algorithm runs as CUDA C++
  (``cuda_source.py``, compiled and launched by ``cuda_persistent.py``; ``Plan.kernel == "persistent-cuda"``,
  one or two block barriers a step, mma.sync for 16-bit); ``cuda=False`` in the plan keeps the Triton kernel.
* Plan tuning (``tune.py``, opt-in: ``tune_plan``, ``fused_rnn(..., tune=True)``): the default plan and a few
  variants timed in a CUDA graph on the user's GPU, the fastest that agrees with the default's outputs kept, cached
  in memory and in a JSON file.
* ``multi-launch``: sizes whose programs cannot all be resident run the same kernel once per layer for the
  projection and once per (layer, time step) for the recurrence, with ``h`` and ``c`` in global memory.

Padding: each direction's hidden units are padded to ``HP`` (a power of two); padded rows have zero
weights and biases, so their ``h`` and ``c`` stay exactly 0 and the next layer may read them.
"""

from .api import fused_rnn
from .launch import KernelStalled, raise_if_stalled, rnn_forward
from .packing import WIDE_WEIGHTS, PackedRNN, pack_rnn
from .persistent import _rnn_persistent_kernel  # noqa: F401
from .pipeline import _rnn_pipe_kernel  # noqa: F401 (the kernels, for tools that read their compiled code)
from .plan import KERNELS, PATHS, Plan, interpreting, plan_for
from .relay import _rnn_relay_kernel  # noqa: F401
from .stack import _rnn_stack_kernel  # noqa: F401
from .tune import TuneResult, clear_tuned_plans, tune_plan

__all__ = ["KERNELS", "PATHS", "WIDE_WEIGHTS", "KernelStalled", "PackedRNN", "Plan", "TuneResult", "clear_tuned_plans",
           "fused_rnn", "interpreting", "pack_rnn", "plan_for", "raise_if_stalled", "rnn_forward", "tune_plan"]
