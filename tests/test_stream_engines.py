"""The streaming engines' own logic that runs on CPU: the stall watch that guards graph replays of the fused
kernel, the TF32 switch around a step, the session's returned arrays staying the caller's, and which scratch
workspaces belong to a model's fused layers."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import lstminfer
from lstminfer.measure.stream_engines import IeeeFp32, StallWatch


def _kernel_stalled():
    """The kernel's own error type (imported late: Triton reads TRITON_INTERPRET when it is imported)."""
    pytest.importorskip("triton", reason="triton is not installed (pip install 'lstminfer[gpu]')")
    from lstminfer.kernels.rnn import KernelStalled

    return KernelStalled


def test_stall_watch_raises_once_for_a_set_error_word_and_clears_it():
    KernelStalled = _kernel_stalled()
    words = [{"err": torch.zeros(1, dtype=torch.int32)}, {"key": "a kernel without an error word"},
             {"err": torch.zeros(1, dtype=torch.int32)}]
    watch = StallWatch(torch, words)
    assert [ws is words[0] or ws is words[2] for ws in watch.workspaces] == [True, True]
    watch.record()
    watch.check()  # nothing set: no error
    words[2]["err"].fill_(1)  # what a persistent program that gave up its wait writes
    watch.record()
    assert watch.view.tolist() == [0, 1]
    with pytest.raises(KernelStalled, match="gave up waiting"):
        watch.check()
    assert int(words[2]["err"]) == 0 and watch.view.tolist() == [0, 0]
    watch.record()
    watch.check()  # the next step starts clean


def test_stall_watch_reads_the_copy_not_the_word():
    """The check reads what record() copied (the flags the graph copies down), not the device word itself."""
    KernelStalled = _kernel_stalled()
    words = [{"err": torch.zeros(1, dtype=torch.int32)}]
    watch = StallWatch(torch, words)
    words[0]["err"].fill_(1)
    watch.check()  # not recorded yet: nothing seen
    watch.record()
    with pytest.raises(KernelStalled):
        watch.check()


@pytest.mark.parametrize("before", [(True, True), (False, True), (False, False)])
def test_ieee_fp32_turns_tf32_off_and_restores_it(before):
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (cudnn.allow_tf32, matmul.allow_tf32)
    try:
        cudnn.allow_tf32, matmul.allow_tf32 = before
        with pytest.raises(ValueError), IeeeFp32(torch):
            assert (cudnn.allow_tf32, matmul.allow_tf32) == (False, False)
            raise ValueError("restored on the way out of an error too")
        assert (cudnn.allow_tf32, matmul.allow_tf32) == before
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = saved


def _torch_stream(steps: int) -> tuple[torch.nn.LSTM, lstminfer.Session, np.ndarray]:
    """A small LSTM, its torch (CPU) session and `steps` one-step chunks of input."""
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(3, 5).eval()
    x = np.random.default_rng(0).standard_normal((steps, 1, 3)).astype(np.float32)
    return lstm, lstminfer.Session(lstm, backend="torch"), x


def _float64(lstm: torch.nn.LSTM, x: np.ndarray) -> np.ndarray:
    """The whole sequence in one pass, in float64: the reference the chunks are checked against."""
    with torch.no_grad():
        return lstm.double()(torch.from_numpy(x).double())[0].numpy()


def test_returned_arrays_stay_the_callers_after_the_next_step():
    lstm, session, x = _torch_stream(2)
    first = session.step(x[:1])
    kept = {n: a.copy() for n, a in first.items()}
    second = session.step(x[1:])
    for name, array in first.items():
        np.testing.assert_array_equal(array, kept[name])
        assert not np.shares_memory(array, second[name])
    np.testing.assert_allclose(np.concatenate([first["output"], second["output"]]), _float64(lstm, x), atol=1e-6)


def test_fused_workspaces_are_the_models_own_one_per_shape():
    """Under Triton's interpreter, in a fresh process (Triton reads TRITON_INTERPRET when it is imported)."""
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    code = """
import torch, lstminfer
from lstminfer.fused_layers import fused_workspaces
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LSTM(4, 6))
fast, other = lstminfer.accelerate(model), lstminfer.accelerate(torch.nn.GRU(4, 6))
assert fused_workspaces(fast) == []
with torch.no_grad():
    fast(torch.randn(5, 2, 3)); fast(torch.randn(5, 2, 3)); other(torch.randn(5, 2, 4))
    assert len(fused_workspaces(fast)) == 1 and len(fused_workspaces(other)) == 1
    fast(torch.randn(1, 2, 3))  # another shape: its own scratch buffers
spaces = fused_workspaces(fast)
assert len(spaces) == 2 and all(s for s in spaces), spaces
assert not any(s is t for s in spaces for t in fused_workspaces(other))
assert fused_workspaces(torch.nn.LSTM(4, 6)) == []
"""
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "TRITON_INTERPRET": "1"},
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_kept_state_stays_the_callers_after_other_steps():
    """What a server does per stream: keep session.state, run another stream (reset, step), set it back."""
    lstm, session, x = _torch_stream(3)
    session.step(x[:1])
    kept = session.state
    session.reset()  # another stream starts from zeros and runs a chunk
    session.step(x[2:])
    session.state = kept
    resumed = session.step(x[1:2])
    np.testing.assert_allclose(resumed["output"], _float64(lstm, x[:2])[1:2], atol=1e-6)
