"""What merging a step's two world-model passes would save at batch 1: the shipped Crafter world model's sampling
pass and its commit pass (two passes of one frame, as the simulator runs them now) against one pass over the frame
twice (a model with heads_input="window": one copy attends to itself alone and is committed, the other attends to
the window), the work of a pass that commits frame t-1 while it samples frame t. Timing only: the second model's
heads are not trained. fp32, alternated 10 times, 50 calls each.

    python docs/merged_pass_time.py
"""
import time

import numpy as np
import torch

from worldsim.simulator import load_bundle

torch.set_num_threads(2)
b = load_bundle("worldsim/assets/crafter")
pair = b.dit
win = pair.with_heads_input("window").eval()  # its commit pass runs the frame twice (see the docstring)
C, h, w = pair.config.latent_channels, 9, 9
x = torch.randn(1, C, h, w)
a, has = torch.tensor([3]), torch.ones(1, dtype=torch.bool)
cn, cl = torch.tensor([0.5]), torch.tensor([-1.0])  # a sampling and a commit noise level (c_noise)
ticks = torch.zeros(1, pair.config.ticks)
res = {"two": [], "one": []}  # ms a step: two passes of one frame, one pass of the frame twice
with torch.no_grad():
    caches = {k: m.new_cache(1, 81) for k, m in (("two", pair), ("one", win))}
    for t in range(4):
        for k, m in (("two", pair), ("one", win)):
            m.forward_cached(x, cl, a, has, caches[k], t, commit=True, ticks=ticks,
                             prev_features=torch.zeros(1, pair.config.dim) if k == "two" else None)
    prev = torch.zeros(1, pair.config.dim)
    def two(t):
        pair.forward_cached(x, cn, a, has, caches["two"], t, outputs="frame", ticks=ticks)
        pair.forward_cached(x, cl, a, has, caches["two"], t, commit=True, outputs="heads", ticks=ticks,
                            prev_features=prev)
    def one(t):
        win.forward_cached(x, cn, a, has, caches["one"], t, commit=True, outputs="all", ticks=ticks)
    t = 10
    for r in range(10):
        for k, f in (("two", two), ("one", one)) if r % 2 == 0 else (("one", one), ("two", two)):
            t0 = time.perf_counter()
            for _ in range(50):
                t += 1; f(t)
            res[k].append((time.perf_counter() - t0) / 50 * 1000)
for k, v in res.items(): print(f"{k} pass{'es' if k == 'two' else ''}: median {np.median(v):.2f} ms a step", np.round(v, 2))
