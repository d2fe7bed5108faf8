"""Where a step of the CUDA persistent kernel goes: per-step globaltimer stamps of every block (plan stamps=True).

    PYTHONPATH=src python3 benchmarks/kernel_stamps.py                      # the default workloads and variants
    PYTHONPATH=src python3 benchmarks/kernel_stamps.py --only U,V --json stamps.json
    PYTHONPATH=src python3 benchmarks/kernel_stamps.py --split --variants default  # also split the compute

Each block's thread 0 writes, for every step s of a layer (cuda_source.py, STAMPS): (a) the step's wait starts,
(b) the block's whole h slice was valid (the last of its warps), (c) the block's h stores of the step were issued
(the last warp). One eager call with stamps after a warm-up call; per workload and plan variant, the medians (and
means) over the layer's blocks and steps of:

    wait      b - a: the delay, the sentinel poll and the read of h (what the exchange costs this block)
    compute   c - b: the product, the block barrier, the cell and the h stores
    period    c_s - c_s-1: one step of one block
    skew      max - min over the blocks of c_s: how far apart the blocks finish a step
    exchange  b of a block at step s minus the latest c at s - 1 of the blocks that produce its h (same direction
              and batch group): how long after the last producer's store the consumer had all of h

beside fused-graph us of the same plan without stamps (CUDA events, median of --iters after --warmup), and the
stamped call's own span (the first a to the last c). globaltimer ticks at a granularity the hardware chooses
(the `tick` column: the smallest step between two distinct stamps seen); the means are the better numbers where
the tick is near the quantities.

The stamps cost time where they are taken: thread 0 gathers every warp's stamps after barrier 1 (FFMA and shared-h
plans) or barrier 2 (A-fragment plans), on warp 0's critical path, so the --split cycles include that bookkeeping
(P fp32's "product" read 568 cycles, ~240 by Nsight Compute's samples). benchmarks/kernel_profile.py places a step
without instrumentation (docs/fused_kernel.md v25).
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import torch
from fused_vs_cudnn import DTYPES, WORKLOADS, graphed, setup, time_calls  # the sibling script (same folder)

from lstminfer.kernels.rnn import pack_rnn, plan_for, raise_if_stalled, rnn_forward

DEFAULT_WORKLOADS = ("U 128->1024 B8 T200 fp16", "V 128->768 B16 T1024 fp16", "Q 256->512 B64 bf16",
                     "S speech 2L bi 80->512 B8 bf16", "P 256->512 B1 fp32", "R 80->1024 B1 T200 fp32",
                     "T 4L 1024->1024 B16 T50 bf16")
# the plan variants: the default, the sentinel poll with the plan's own first-read delay (500 ns with poll_frag,
# else 0) and with 0/150/300 ns, and the producers storing the sentinel row last
VARIANTS = {"default": {}, "sentinel": dict(poll_sentinel=True),
            "sentinel delay 0": dict(poll_sentinel=True, poll_delay=0),
            "sentinel delay 150": dict(poll_sentinel=True, poll_delay=150),
            "sentinel delay 300": dict(poll_sentinel=True, poll_delay=300),
            "sentinel last, delay 150": dict(sentinel_last=True, poll_delay=150)}
# one row a block and 4 units: the sentinel would be all of h (plan_for refuses it); 8 units a block instead
EXTRA = {"P 256->512 B1 fp32": {"8 units": dict(cuda_nb=8), "8 units, sentinel": dict(cuda_nb=8, poll_sentinel=True)}}
QUANTITIES = ("wait", "compute", "period", "skew", "exchange")
# --split: the third stamp's places in clock64 cycles (plan stamps=2 / 3 / 4; exact inside a block), each the quantity
# b -> c of its own call: the product, the product and the barrier after it, all of the compute to the h stores
SPLIT_MODES = {2: "product_cycles", 3: "to_barrier2_cycles", 4: "compute_cycles"}


def step_quantities(stamps: torch.Tensor, dirs: int, tiles: int) -> dict[str, torch.Tensor]:
    """One layer's [blocks, T, 3] int64 ns stamps -> each quantity's samples (ns, float64): see the docstring.
    Block `unit` serves batch group unit // (dirs tiles) and direction (unit // tiles) % dirs (cuda_source.py);
    its producers are the `tiles` blocks of the same group and direction."""
    st = stamps.to(torch.float64)
    a, b, c = st.unbind(-1)
    blocks, steps = a.shape
    latest = c.view(blocks // tiles, tiles, steps).amax(dim=1)  # [group x direction, T]: the producers' last c
    exchange = b[:, 1:] - latest.repeat_interleave(tiles, dim=0)[:, :-1]
    return {"wait": (b - a).flatten(), "compute": (c - b).flatten(), "period": (c[:, 1:] - c[:, :-1]).flatten(),
            "skew": c.amax(dim=0) - c.amin(dim=0), "exchange": exchange.flatten()}


def timer_tick(stamps: torch.Tensor) -> float:
    """The smallest positive difference between two distinct stamps (ns): globaltimer's apparent granularity."""
    values = torch.unique(stamps.flatten())
    steps = values[1:] - values[:-1]
    return float(steps.min()) if steps.numel() else float("nan")


def make_plan(w, overrides: dict):
    """The workload's packed module and its plan with `overrides` (ValueError where the options do not apply)."""
    dtype = DTYPES[w.precision]
    module = setup(w, with_ref=False)[0]
    packed = pack_rnn(module, torch.device("cuda"), dtype)
    plan = plan_for(packed, w.seq_len, w.batch, **overrides)
    if plan.kernel != "persistent-cuda":
        raise ValueError(f"the plan runs the {plan.kernel} kernel ({plan.note}): no stamps")
    return packed, plan


def measure(w, packed, plan, args) -> dict:
    """Fused-graph us of the plan without stamps, then one eager call with stamps after a warm-up call."""
    dev = torch.device("cuda")
    dtype = DTYPES[w.precision]
    _, x, h0, c0, _ = setup(w, with_ref=False)
    xd, h0d, c0d = (t.to(dev, dtype) for t in (x, h0, c0))
    stream = torch.cuda.Stream()
    workspace: dict = {}
    run = lambda p, ws: rnn_forward(packed, xd, h0d, c0d, plan=p, workspace=ws, check=False)  # noqa: E731
    with torch.cuda.stream(stream):
        plain = run(plan, workspace)
    stream.synchronize()
    raise_if_stalled(workspace)
    graph_us = time_calls(graphed(lambda: run(plan, workspace), stream), args.warmup, args.iters, stream)
    raise_if_stalled(workspace)

    def stamped_call(mode):
        """The outputs and the layer's stamps of one eager call stamped in `mode`, after a warm-up call (the
        stamped variant's compile and load)."""
        ws: dict = {}
        stamped_plan = dataclasses.replace(plan, stamps=mode)
        with torch.cuda.stream(stream):
            run(stamped_plan, ws)
            outputs = run(stamped_plan, ws)
        stream.synchronize()
        raise_if_stalled(ws)
        return outputs, ws["stamps"][args.layer].cpu()

    stamped, stamps = stamped_call(True)
    same = all(torch.equal(s, p) for s, p in zip(stamped, plain))
    samples = step_quantities(stamps, packed.num_directions, plan.r_tiles)
    row = {"workload": w.name, "plan": plan.describe(), "fused_graph_us": graph_us, "layer": args.layer,
           "stamped_span_us": float(stamps[..., 2].max() - stamps[..., 0].min()) / 1000.0,
           "steps": w.seq_len, "timer_tick_ns": timer_tick(stamps), "outputs_equal_without_stamps": same}
    for name, values in samples.items():
        row[f"{name}_median_ns"] = float(values.median())
        row[f"{name}_mean_ns"] = float(values.mean())
    for mode, name in SPLIT_MODES.items() if args.split else ():
        # the same call stamped in cycles with the third stamp moved (cuda_source.py STAMPS 2 / 3 / 4): b -> c is the
        # product alone, the product and the block barrier after it, or the whole compute (medians of separate calls)
        compute = step_quantities(stamped_call(mode)[1], packed.num_directions, plan.r_tiles)["compute"]
        row[f"{name}_median"] = float(compute.median())
        row[f"{name}_mean"] = float(compute.mean())
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated prefixes of fused_vs_cudnn's workload names "
                                                   "(default: " + ", ".join(DEFAULT_WORKLOADS) + ")")
    parser.add_argument("--variants", default="", help="comma-separated variant names (default: all of "
                                                       + ", ".join(VARIANTS) + ")")
    parser.add_argument("--layer", type=int, default=0, help="the layer whose stamps are summarized (default 0)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--json", metavar="FILE", default="", help="write every row's medians and means (ns)")
    parser.add_argument("--split", action="store_true",
                        help="also split the compute, in clock64 cycles (exact inside a block): three more stamped "
                             "calls, b -> the end of the product (`product_cycles`), -> past the barrier after it "
                             "(`to_barrier2_cycles`), -> the h stores (`compute_cycles`)")
    args = parser.parse_args()
    only = [p.strip() for p in args.only.split(",") if p.strip()]
    picked = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in picked if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}: use names from {list(VARIANTS)}")
    workloads = [w for w in WORKLOADS if (any(w.name.startswith(p) for p in only) if only
                                          else w.name in DEFAULT_WORKLOADS)]
    if not workloads:
        parser.error(f"--only {args.only!r} names no workload: use prefixes of {[w.name for w in WORKLOADS]}")
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}; stamps of layer {args.layer}, medians "
          f"(means) over blocks and steps in ns; fused-graph us without stamps, median of {args.iters}")
    quantities = QUANTITIES + (tuple(SPLIT_MODES.values()) if args.split else ())
    unit = {q: "" if q in SPLIT_MODES.values() else "_ns" for q in quantities}  # the split's are cycles
    print("| workload | variant | fused-graph us | stamped span us | span / step ns | "
          + " | ".join(quantities) + " | tick ns | same output | plan |")
    print("|" + "---|" * (8 + len(quantities)))
    rows = []
    for w in workloads:
        variants = {k: v for k, v in VARIANTS.items() if not picked or k in picked}
        variants.update(EXTRA.get(w.name, {}) if not picked else {})
        seen: dict = {}
        for name, overrides in variants.items():
            try:
                if args.layer >= w.num_layers:
                    raise ValueError(f"--layer {args.layer}: the workload has {w.num_layers} layer(s)")
                packed, plan = make_plan(w, overrides)
                key = json.dumps(plan.describe(), sort_keys=True)
                if key in seen:  # e.g. "sentinel" and "sentinel delay 0" where the plan's delay is 0
                    print(f"| {w.name} | {name} | same plan as {seen[key]} |" + " |" * 10, flush=True)
                    continue
                seen[key] = name
                row = measure(w, packed, plan, args)
            except Exception as err:  # a variant refused or failed is reported, not fatal
                print(f"| {w.name} | {name} | failed: {type(err).__name__}: {str(err)[:160]} |" + " |" * 10,
                      flush=True)
                continue
            row["variant"] = name
            rows.append(row)
            cells = " | ".join(f"{row[f'{q}_median{unit[q]}']:.0f} ({row[f'{q}_mean{unit[q]}']:.0f})"
                               for q in quantities)
            plan_text = " ".join(f"{k}={v}" for k, v in row["plan"].items() if k not in ("kernel", "path"))
            print(f"| {w.name} | {name} | {row['fused_graph_us']:.1f} | {row['stamped_span_us']:.1f} "
                  f"| {1000 * row['stamped_span_us'] / row['steps']:.0f} | {cells} | {row['timer_tick_ns']:.0f} "
                  f"| {'yes' if row['outputs_equal_without_stamps'] else 'NO'} | {plan_text} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
