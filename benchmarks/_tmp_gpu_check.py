import os, sys, time
pass
import torch
from lstminfer.kernels.rnn import pack_rnn, rnn_forward, plan_for
torch.manual_seed(0)
def check(kind, I, H, L, bi, bf, T, B, state, path=None):
    cls = torch.nn.LSTM if kind == "lstm" else torch.nn.GRU
    m = cls(I, H, num_layers=L, bidirectional=bi, batch_first=bf).eval()
    D = 2 if bi else 1
    x = torch.randn((B, T, I) if bf else (T, B, I))
    hx = None
    if state:
        h0 = torch.randn(L*D, B, H); c0 = torch.randn(L*D, B, H)
        hx = (h0, c0) if kind == "lstm" else h0
    ref = m.double()(x.double(), None if hx is None else (tuple(t.double() for t in hx) if kind=="lstm" else hx.double()))
    m.float()
    p = pack_rnn(m, 'cuda')
    x = x.cuda()
    hx = None if hx is None else ((hx[0].cuda(), hx[1].cuda()) if kind=='lstm' else hx.cuda())
    args = (None, None) if not state else ((hx[0], hx[1]) if kind == "lstm" else (hx, None))
    plan = plan_for(p, T, B, path=path)
    t0=time.time()
    got = rnn_forward(p, x, *args, plan=plan)
    refs = [ref[0], *(ref[1] if kind=="lstm" else [ref[1]])]
    torch.cuda.synchronize()
    errs = [(g.double().cpu()-r).abs().max().item() for g, r in zip(got, refs)]
    print(kind, I, H, L, bi, bf, T, B, state, plan, ["%.1e"%e for e in errs], "%.1fs"%(time.time()-t0))
check("lstm", 10, 20, 2, True, False, 3, 3, True)
check("gru", 10, 20, 2, True, False, 3, 3, True)
check("lstm", 7, 37, 2, False, True, 9, 2, False)
check("lstm", 7, 37, 2, True, True, 9, 2, True, path="multi-launch")
check("gru", 7, 37, 3, True, False, 9, 5, True, path="multi-launch")
check("lstm", 64, 128, 1, False, False, 100, 1, True)
check("gru", 64, 128, 2, True, True, 20, 3, True)
check("lstm", 33, 300, 2, True, False, 7, 5, True)
check("lstm", 33, 1024, 1, True, False, 5, 2, True)
check("gru", 10, 20, 10, True, False, 100, 3, False)
