"""cuDNN's bf16 LSTM with its weights as PyTorch leaves them against flattened (lstminfer.cudnn_rnn.flatten_rnn).

nn.LSTM.flatten_parameters() skips bf16, so cuDNN compacts the weights on every bf16 call; the benchmark's
cuDNN baseline and the torch backends now flatten bf16 too. This prints both, eager and in a CUDA graph, for
issue 12's bf16 workloads (fused_vs_cudnn.py's WORKLOADS and a few grid points), so the change of baseline is on
record (docs/benchmarks.md).

    PYTHONPATH=src python3 benchmarks/cudnn_flatten.py --iters 20
"""

from __future__ import annotations

import argparse
import copy
import dataclasses

import torch
from fused_vs_cudnn import WORKLOADS, Workload, graphed, setup, time_calls

from lstminfer.cudnn_rnn import flatten_rnn, in_one_chunk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    torch.backends.cudnn.allow_tf32 = False
    grid = [Workload(f"grid h{h} b{b} 1L uni bf16", h, h, 1, False, 100, b, "bf16", float("nan"))
            for h, b in ((64, 1), (128, 8), (256, 8), (512, 64), (1024, 64))]
    workloads = [dataclasses.replace(w, precision="bf16", name=w.name.replace("fp32", "bf16"))
                 for w in WORKLOADS if w.precision in ("bf16", "fp32")] + grid
    seen = set()
    print("| workload | as PyTorch leaves it: eager / graph us | flattened: eager / graph us | graph speed-up |")
    print("|---|---|---|---|")
    for w in workloads:
        key = (w.input_size, w.hidden_size, w.num_layers, w.bidirectional, w.seq_len, w.batch)
        if key in seen:
            continue
        seen.add(key)
        module, x, h0, c0, _ = setup(w, with_ref=False)
        dev, dtype = torch.device("cuda"), torch.bfloat16
        xd, h0d, c0d = (t.to(dev, dtype) for t in (x, h0, c0))
        stream = torch.cuda.Stream()
        times = []
        for flatten in (False, True):
            cudnn = copy.deepcopy(module).to(dev, dtype)
            assert flatten_rnn(cudnn) if flatten else not in_one_chunk(cudnn)
            with torch.inference_mode():
                fn = lambda m=cudnn, a=xd, h=h0d, c=c0d: m(a, (h, c))  # noqa: E731
                times.append((time_calls(fn, args.warmup, args.iters, stream),
                              time_calls(graphed(fn, stream), args.warmup, args.iters, stream)))
        (e0, g0), (e1, g1) = times
        print(f"| {w.name} | {e0:.1f} / {g0:.1f} | {e1:.1f} / {g1:.1f} | {g0 / g1:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
