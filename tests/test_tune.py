"""Plan tuning (kernels/rnn/tune.py): the cache, the key, the choice among candidates, and the entry points.

On the CPU the candidates run under Triton's interpreter (TRITON_INTERPRET=1, set below before triton is imported)
and an injected timer stands in for the CUDA-graph timing: a function of the plan, the measurement only, while the
outputs every candidate is checked with come from the real kernels. With a GPU (`gpu` marker): tuning for real,
the tuned plan against float64 PyTorch, and the cache across calls and processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton", reason="triton is not installed (pip install 'lstminfer[gpu]')")

import lstminfer  # noqa: E402
from lstminfer.kernels.rnn import KernelStalled, Plan, clear_tuned_plans, pack_rnn, plan_for, rnn_forward  # noqa: E402
from lstminfer.kernels.rnn import tune as tune_module  # noqa: E402
from lstminfer.kernels.rnn.tune import (  # noqa: E402
    CACHE_FILE,
    TUNE_MIN_GAIN,
    compare_outputs,
    environment_facts,
    tune_key,
    tune_plan,
)
from test_fused import DEVICE, assert_close, make, random_inputs, reference  # noqa: E402

ON_CPU = DEVICE == "cpu"
cpu_only = pytest.mark.skipif(not ON_CPU, reason="runs the candidates under Triton's interpreter (CPU)")


@pytest.fixture(autouse=True)
def _fresh_memory():
    """Each test starts with no plan in memory (files live in each test's tmp_path)."""
    tune_module._MEMORY.clear()
    yield
    tune_module._MEMORY.clear()


def small_call(kind="lstm", seq_len=5, batch=3, with_state=False, seed=0):
    module = make(kind, 8, 16, 2, False, False, seed=seed)
    x, hx = random_inputs(module, seq_len, batch, with_state)
    packed = pack_rnn(module, "cpu")
    h0, c0 = (hx if isinstance(hx, tuple) else (hx, None)) if hx is not None else (None, None)
    return module, packed, x, h0, c0


def timer_of(times):
    """An injected measurement: seconds by the plan's k_chain (the candidates below differ in it), counting calls."""
    calls = []

    def timer(plan):
        calls.append(plan)
        return times[plan.k_chain]

    timer.calls = calls
    return timer


# ---- the choice ----------------------------------------------------------------------------------------------

@cpu_only
def test_the_fastest_candidate_that_agrees_wins_and_every_candidate_says_why(tmp_path):
    _, packed, x, _, _ = small_call()
    timer = timer_of({32: 100e-6, 16: 60e-6, 64: 40e-6, 8: 10e-6})
    lines = []
    result = tune_plan(packed, x, candidates=[dict(k_chain=16), dict(k_chain=64), dict(cudnn=True),
                                              dict(k_chain=64, fast_math=True), dict(k_chain=8, block_c=24),
                                              dict(poll_delay=250)],
                       cache_dir=tmp_path, timer=timer, progress=lines.append)
    default = plan_for(packed, 5, 3)
    assert default.k_chain == 32  # the timer's 100 us
    assert result.plan.k_chain == 64 and result.plan.note == "tuned: k_chain=64"
    assert (result.us, result.default_us, result.cached) == (pytest.approx(40.0), pytest.approx(100.0), False)
    assert result.default == default
    by_label = {tuple(c.overrides.items()): c for c in result.candidates}
    assert by_label[()].us == pytest.approx(100.0) and by_label[()].max_diff == 0.0
    # refused by plan_for (no CUDA device), the same plan as another, raised in the launcher: never timed
    assert by_label[(("cudnn", True),)].skipped.startswith("refused: ValueError: cannot hand this call to cuDNN")
    assert by_label[(("k_chain", 64), ("fast_math", True))].skipped == "the same plan as k_chain=64"
    # a CUDA kernel's field on the stack kernel's plan: the same launch as the default
    assert by_label[(("poll_delay", 250),)].plan.poll_delay == 250
    assert by_label[(("poll_delay", 250),)].skipped == "the same plan as default"
    # 24 gate columns a work item: Triton's arange needs a power of 2, so the launch raises
    assert by_label[(("k_chain", 8), ("block_c", 24))].skipped.startswith("raised InterpreterError")
    assert [p.k_chain for p in timer.calls] == [32, 16, 64]  # each distinct plan that ran timed once
    # one progress line per candidate run, then the choice
    assert len(lines) == 5 and lines[-1].startswith("tune seq 5 x batch 3: chose k_chain=64 (stack, 40.0 us")


@cpu_only
def test_a_candidate_must_beat_the_default_by_the_margin(tmp_path):
    _, packed, x, _, _ = small_call()
    near = timer_of({32: 100e-6, 16: 98e-6})  # 2 %: under TUNE_MIN_GAIN
    result = tune_plan(packed, x, candidates=[dict(k_chain=16)], cache=False, timer=near)
    assert result.plan == plan_for(packed, 5, 3) and result.us == pytest.approx(100.0)
    far = timer_of({32: 100e-6, 16: 90e-6})
    assert tune_plan(packed, x, candidates=[dict(k_chain=16)], cache=False, timer=far).plan.k_chain == 16


@cpu_only
@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")  # the unwritten units' garbage
def test_a_candidate_whose_outputs_are_wrong_is_never_chosen(tmp_path):
    """Two row tiles with one program (the interpreter's single program computes the first tile only): half the
    hidden units are never written, so the outputs are wrong, however fast the timer says the plan is."""
    module, packed, x, _, _ = small_call()
    timer = timer_of({32: 100e-6, 16: 1e-6})
    result = tune_plan(packed, x, candidates=[dict(k_chain=16, r_tiles=2)], cache=False, timer=timer)
    wrong = result.candidates[1]
    assert wrong.plan.r_tiles == 2 and wrong.us is None
    assert "NaN where the reference has none" in wrong.skipped or "over the tolerance 0.0001" in wrong.skipped
    assert result.plan == plan_for(packed, 5, 3) and [p.k_chain for p in timer.calls] == [32]
    got = rnn_forward(packed, x, plan=result.plan)
    assert_close(got, reference(module, x, None), 2e-5)


@cpu_only
def test_a_candidate_whose_timing_raises_is_skipped_with_its_reason(tmp_path):
    _, packed, x, _, _ = small_call()

    def timer(plan):
        if plan.k_chain == 16:
            raise KernelStalled("fused kernel: a persistent program gave up waiting")
        return 100e-6 if plan.k_chain == 32 else 50e-6

    result = tune_plan(packed, x, candidates=[dict(k_chain=16), dict(k_chain=64)], cache=False, timer=timer)
    stalled = result.candidates[1]
    assert stalled.skipped == "raised KernelStalled: fused kernel: a persistent program gave up waiting"
    assert result.plan.k_chain == 64


@cpu_only
def test_nothing_ran_is_one_line(tmp_path):
    _, packed, x, _, _ = small_call()

    def timer(plan):
        raise RuntimeError("no timing today")

    with pytest.raises(ValueError, match=r"^plan tuning: no candidate plan ran at seq 5 x batch 3 \(default: "
                                         r"raised RuntimeError: no timing today\)$"):
        tune_plan(packed, x, candidates=[], cache=False, timer=timer)


def test_compare_outputs_scales_by_the_outputs_size_and_rejects_new_nan():
    want = [torch.tensor([[0.5, -0.25], [0.125, 0.0]], dtype=torch.float64),
            torch.tensor([10.0, -20.0], dtype=torch.float64)]
    assert compare_outputs([w.clone() for w in want], want, 1e-4) == (0.0, "")
    off = [want[0] + 2e-4, want[1]]
    diff, why = compare_outputs(off, want, 1e-4)
    assert diff == pytest.approx(2e-4) and why == ("outputs differ from the reference's by 0.0002 (scaled), over the "
                                                   "tolerance 0.0001")
    # the cell state's 20: a difference of 1e-3 there is 5e-5 of its size
    diff, why = compare_outputs([want[0], want[1] + torch.tensor([0.0, 1e-3])], want, 1e-4)
    assert why == "" and diff == pytest.approx(5e-5)
    nan = want[0].clone()
    nan[1, 1] = float("nan")
    assert compare_outputs([nan, want[1]], want, 1e-4)[1] == "output has NaN where the reference has none"
    # NaN where the reference has NaN too (a NaN input): nothing to compare there
    assert compare_outputs([nan, want[1]], [nan, want[1]], 1e-4) == (0.0, "")
    inf = torch.tensor([float("inf"), 1.0])
    assert compare_outputs([want[0], inf], [want[0], inf], 1e-4) == (0.0, "")
    assert compare_outputs([want[0][:1]], want, 1e-4)[1] == "output has shape (1, 2), the reference's (2, 2)"


# ---- the cache -----------------------------------------------------------------------------------------------

def test_the_key_differs_when_any_of_its_parts_differs():
    module = make("lstm", 8, 16, 2, False, False)
    packed = pack_rnn(module, "cpu")
    facts = environment_facts(torch.device("cpu"))
    assert set(facts) == {"device", "sms", "capability", "torch", "cudnn", "lstminfer", "kernels"}
    base = tune_key(packed, 5, 3, False, facts)
    assert tune_key(packed, 5, 3, False, dict(facts)) == base == tune_key(pack_rnn(module, "cpu"), 5, 3, False, facts)
    keys = [tune_key(packed, 5, 3, False, {**facts, name: "other"}) for name in facts]
    others = [("gru", 8, 16, 2, False, False), ("lstm", 9, 16, 2, False, False), ("lstm", 8, 17, 2, False, False),
              ("lstm", 8, 16, 3, False, False), ("lstm", 8, 16, 2, True, False), ("lstm", 8, 16, 2, False, True)]
    keys += [tune_key(pack_rnn(make(*o), "cpu"), 5, 3, False, facts) for o in others]
    keys += [tune_key(pack_rnn(module, "cpu", torch.bfloat16), 5, 3, False, facts),
             tune_key(packed, 6, 3, False, facts), tune_key(packed, 5, 4, False, facts),
             tune_key(packed, 5, 3, True, facts)]
    assert len(set(keys)) == len(keys) and base not in keys
    assert json.loads(base)["hidden_size"] == 16 and json.loads(base)["h0"] is False


@cpu_only
def test_the_cache_is_read_by_a_fresh_process(tmp_path):
    """Tuned and written here; read in a new Python whose timer fails the test if it is called: the same plan."""
    _, packed, x, _, _ = small_call(with_state=False)
    result = tune_plan(packed, x, candidates=[dict(k_chain=16)], cache_dir=tmp_path,
                       timer=timer_of({32: 100e-6, 16: 50e-6}))
    assert result.plan.k_chain == 16 and (tmp_path / CACHE_FILE).is_file()
    script = f"""
import json, sys
sys.path[:0] = {[p for p in sys.path if p]!r}
from test_fused import make, random_inputs
from lstminfer.kernels.rnn import pack_rnn, tune_plan
module = make("lstm", 8, 16, 2, False, False, seed=0)
x, _ = random_inputs(module, 5, 3, False)
def timer(plan):
    raise AssertionError("timed although cached")
r = tune_plan(pack_rnn(module, "cpu"), x, candidates=[dict(k_chain=16)], cache_dir={str(tmp_path)!r}, timer=timer)
plan = {{k: v for k, v in vars(r.plan).items() if k != "kernel"}}
print(json.dumps({{"cached": r.cached, "us": r.us, "plan": plan}}))
"""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300,
                          cwd=os.path.dirname(__file__))
    assert done.returncode == 0, done.stderr
    read = json.loads(done.stdout.strip().splitlines()[-1])
    assert read["cached"] is True and read["us"] == pytest.approx(50.0)
    assert Plan(**read["plan"]) == result.plan


@cpu_only
def test_the_second_call_is_served_from_memory_and_a_stale_entry_is_tuned_again(tmp_path):
    _, packed, x, _, _ = small_call()
    timer = timer_of({32: 100e-6, 16: 50e-6})
    first = tune_plan(packed, x, candidates=[dict(k_chain=16)], cache_dir=tmp_path, timer=timer)
    (tmp_path / CACHE_FILE).unlink()  # memory alone serves the next call
    again = tune_plan(packed, x, candidates=[dict(k_chain=16)], cache_dir=tmp_path, timer=timer)
    assert again.cached and again.plan == first.plan and len(timer.calls) == 2
    # an entry whose plan plan_for no longer builds from its overrides (plan.py changed since): tuned again; one of a
    # Plan field that is gone (a field renamed): the same
    memory = tune_module._MEMORY[str(tmp_path / CACHE_FILE)]
    memory[first.key]["plan"]["k_chain"] = 48
    third = tune_plan(packed, x, candidates=[dict(k_chain=16)], cache_dir=tmp_path, timer=timer)
    assert not third.cached and third.plan == first.plan and len(timer.calls) == 4
    memory[first.key]["plan"]["k_chains"] = memory[first.key]["plan"].pop("k_chain")
    fourth = tune_plan(packed, x, candidates=[dict(k_chain=16)], cache_dir=tmp_path, timer=timer)
    assert not fourth.cached and fourth.plan == first.plan and len(timer.calls) == 6
    assert tune_plan(packed, x, candidates=[dict(k_chain=16)], cache_dir=tmp_path, timer=timer).cached
    clear_tuned_plans(tmp_path)
    assert not (tmp_path / CACHE_FILE).exists() and not tune_module._MEMORY


@cpu_only
def test_a_corrupt_cache_file_is_ignored_with_one_warning_and_rewritten(tmp_path):
    _, packed, x, _, _ = small_call()
    path = tmp_path / CACHE_FILE
    path.write_text('{"schema": 1, "plans": {')  # a write cut short by hand
    with pytest.warns(UserWarning) as caught:
        result = tune_plan(packed, x, candidates=[dict(k_chain=16)], cache_dir=tmp_path,
                           timer=timer_of({32: 100e-6, 16: 50e-6}))
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and messages[0].startswith(f"lstminfer: ignoring the unreadable plan cache {path} (")
    assert not result.cached
    written = json.loads(path.read_text())
    assert written["schema"] == 1 and written["plans"][result.key]["overrides"] == {"k_chain": 16}


@cpu_only
def test_a_failed_write_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    _, packed, x, _, _ = small_call()
    timer = timer_of({32: 100e-6, 16: 50e-6})
    tune_plan(packed, x, candidates=[dict(k_chain=16)], cache_dir=tmp_path, timer=timer)
    path = tmp_path / CACHE_FILE
    before = path.read_bytes()

    def no_disk(fd):  # the disk fails after the new contents went to the temporary file
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_disk)
    _, packed2, x2, _, _ = small_call(seq_len=4)
    with pytest.warns(UserWarning, match="cannot write the plan cache .* the tuned plan is kept in memory only"):
        result = tune_plan(packed2, x2, candidates=[dict(k_chain=16)], cache_dir=tmp_path, timer=timer)
    monkeypatch.undo()
    assert path.read_bytes() == before and result.key not in json.loads(before)["plans"]
    assert tune_plan(packed2, x2, candidates=[dict(k_chain=16)], cache_dir=tmp_path, timer=timer).cached  # memory


def test_the_cache_directory_comes_from_the_argument_then_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("LSTMINFER_CACHE_DIR", str(tmp_path / "env"))
    assert tune_module.cache_path() == tmp_path / "env" / CACHE_FILE
    assert tune_module.cache_path(tmp_path / "arg") == tmp_path / "arg" / CACHE_FILE
    monkeypatch.delenv("LSTMINFER_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert tune_module.cache_path() == tmp_path / "xdg" / "lstminfer" / CACHE_FILE


# ---- the entry points ----------------------------------------------------------------------------------------

@cpu_only
def test_tuning_off_a_cuda_device_is_a_one_line_value_error():
    module, packed, x, _, _ = small_call()
    for call in (lambda: tune_plan(packed, x), lambda: lstminfer.fused_rnn(module, x, tune=True),
                 lambda: lstminfer.tune_plan(packed, x)):
        with pytest.raises(ValueError, match=r"^plan tuning times the kernels on a CUDA device; this call runs "
                                             r"under TRITON_INTERPRET=1: tune on a GPU, or leave tune off") as err:
            call()
        assert "\n" not in str(err.value)
    assert lstminfer.clear_tuned_plans is clear_tuned_plans


@cpu_only
def test_the_cli_takes_fused_tune_and_says_in_one_line_that_it_needs_a_gpu(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # fused:cpu available (the cli fixture runs without the interpreter)
    fast = ["--warmup", "0", "--duration", "0.05", "--iterations", "3"]
    code, out, err = cli("bench", "--backends", "fused:cpu", "--fused-tune", "--out", tmp_path, *fast)
    assert code == 2
    last = err.strip().splitlines()[-1]
    assert last == ("lstminfer: error: nothing was benchmarked: fused[cpu]: plan tuning (fused_tune, --fused-tune) "
                    "times the kernels on a CUDA device; drop it to run the fused kernel under the interpreter")
    code, out, err = cli("bench", "--backends", "torch,fused:cpu", "--fused-tune", "--out", tmp_path,
                         "--json", tmp_path / "b.json", *fast)
    assert code == 0, err
    records = {r["backend"]: r for r in json.loads((tmp_path / "b.json").read_text())}
    assert records["torch"]["latency_ms"]["median"] > 0
    assert records["fused"]["skipped"].startswith("plan tuning (fused_tune, --fused-tune) times the kernels")


def test_the_flag_reaches_the_runner_options():
    from lstminfer.cli import build_parser
    from lstminfer.commands.args import BackendArgs

    args = build_parser().parse_args(["bench", "--fused-tune"])
    assert BackendArgs.parse(args).runner_options()["fused_tune"] is True
    args = build_parser().parse_args(["run"])
    assert BackendArgs.parse(args).runner_options()["fused_tune"] is False


# ---- GPU: tuning for real ------------------------------------------------------------------------------------

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("precision,atol", [("fp32", 1e-4), ("bf16", 8e-2)])
def test_gpu_tuned_plan_matches_float64_and_is_cached_across_calls_and_processes(tmp_path, precision, atol):
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    module = make("lstm", 64, 256, 1, False, False)
    x, (h0, c0) = random_inputs(module, 20, 8, True)
    packed = pack_rnn(module, "cuda", dtype)
    args = [t.to("cuda", dtype) for t in (x, h0, c0)]
    lines = []
    result = tune_plan(packed, *args, cache_dir=tmp_path, warmup=2, iters=10, progress=lines.append)
    assert not result.cached and result.us is not None and result.us > 0
    timed = [c for c in result.candidates if c.us is not None and not c.skipped]
    assert timed and timed[0].overrides == {} and result.default_us == timed[0].us  # the default ran: the reference
    fastest = min(timed, key=lambda c: c.us)
    if fastest.us < timed[0].us * (1 - TUNE_MIN_GAIN):
        assert result.us == fastest.us and result.plan.note.startswith("tuned: ")
    else:
        assert result.plan == result.default and result.us == timed[0].us
    assert len(lines) == len([c for c in result.candidates if c.plan and not c.skipped.startswith("the same")]) + 1
    # the chosen plan, and every candidate the tolerance let through, against float64
    want = reference(module, x, (h0, c0))
    assert_close([t.cpu() for t in rnn_forward(packed, *args, plan=result.plan)], want, atol)
    for c in timed:
        assert_close([t.cpu() for t in rnn_forward(packed, *args, plan=c.plan)], want, atol)

    calls = []
    again = tune_plan(packed, *args, cache_dir=tmp_path, timer=lambda plan: calls.append(plan) or 1.0)
    assert again.cached and again.plan == result.plan and calls == []
    script = f"""
import sys
sys.path[:0] = {[p for p in sys.path if p]!r}
import torch
from test_fused import make, random_inputs
from lstminfer.kernels.rnn import pack_rnn, tune_plan
module = make("lstm", 64, 256, 1, False, False)
x, (h0, c0) = random_inputs(module, 20, 8, True)
args = [t.to("cuda", {dtype}) for t in (x, h0, c0)]
def timer(plan):
    raise AssertionError("timed although cached")
r = tune_plan(pack_rnn(module, "cuda", {dtype}), *args, cache_dir={str(tmp_path)!r}, timer=timer)
print(r.cached, repr(r.plan))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                          cwd=os.path.dirname(__file__))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == f"True {result.plan!r}"


@pytest.mark.gpu
@gpu
def test_gpu_fused_rnn_tune_and_the_runner_option(tmp_path, monkeypatch):
    from lstminfer.backends.fused import FusedGraphRunner
    from lstminfer.model.base import Model
    from lstminfer.model.spec import spec_of_module

    monkeypatch.setenv("LSTMINFER_CACHE_DIR", str(tmp_path))
    module = make("gru", 32, 128, 2, True, True)
    x, h0 = random_inputs(module, 12, 4, True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out, hn = lstminfer.fused_rnn(module.cuda(), x.cuda(), h0.cuda(), tune=True)
    assert not [w for w in caught if "plan cache" in str(w.message)]  # a fresh directory: nothing to warn about
    module.cpu()
    assert_close([out.cpu(), hn.cpu()], reference(module, x, h0), 1e-4)
    assert (tmp_path / CACHE_FILE).is_file()

    model = Model(name="gru", spec=spec_of_module(module), module=module, seq_len=12, batch=4)
    lines = []
    runner = FusedGraphRunner(model, device="cuda", precision="fp32", fused_tune=True,
                              progress=lambda what, fraction: lines.append(what))
    inputs = model.make_inputs(12, 4, np.random.default_rng(0))
    with runner:
        facts = runner.describe_at(12, 4)
        outputs = runner.infer(inputs)
    assert facts["tuned"]["cached"] is True and lines == []  # fused_rnn above tuned this shape (h0 given)
    assert facts["tuned"]["default"]["kernel"] == plan_for(pack_rnn(module, "cuda"), 12, 4).kernel
    expected = model.reference(inputs)
    for name in model.output_names:
        assert np.abs(outputs[name] - expected[name]).max() <= 1e-4, name
