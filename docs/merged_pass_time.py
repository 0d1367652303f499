"""What merging a step's two world-model passes saves at batch 1: the shipped Crafter world model's commit pass of
one frame and sampling pass of the next (two passes of one frame, as the simulator runs them now) against
`WorldDiT.forward_cached_pair`, the same work in one pass over both frames' tokens. Timing only (the heads are not
read). fp32, alternated 10 times, 50 steps each.

    python docs/merged_pass_time.py
"""
import time

import numpy as np
import torch

from worldsim.simulator import load_bundle

torch.set_num_threads(2)
m = load_bundle("worldsim/assets/crafter").dit
C, h, w = m.config.latent_channels, 9, 9
x = torch.randn(1, 2, C, h, w)
a, has = torch.tensor([[3, 3]]), torch.ones(1, 2, dtype=torch.bool)
levels = torch.tensor([[-1.0, 0.5]])  # c_noise of a commit (the context level) and of a sampling pass
ticks = torch.zeros(1, 2, m.config.ticks)
prev = torch.zeros(1, m.config.dim)
caches = {k: m.new_cache(1, h * w) for k in ("two", "one")}


def two(t):  # frame t-1 committed (the pair heads' commit pass), then frame t sampled
    m.forward_cached(x[:, 0], levels[:, 0], a[:, 0], has[:, 0], caches["two"], t - 1, commit=True, outputs="heads",
                     ticks=ticks[:, 0], prev_features=prev)
    m.forward_cached(x[:, 1], levels[:, 1], a[:, 1], has[:, 1], caches["two"], t, outputs="frame", ticks=ticks[:, 1])


def one(t):
    m.forward_cached_pair(x, levels, a, has, caches["one"], t, ticks=ticks)


res = {"two": [], "one": []}  # ms a step: two passes of one frame, one pass of both
with torch.no_grad():
    t = 1
    for _ in range(5):  # fill the windows
        t += 1
        two(t)
        one(t)
    for r in range(10):
        for k, f in (("two", two), ("one", one)) if r % 2 == 0 else (("one", one), ("two", two)):
            t0 = time.perf_counter()
            for _ in range(50):
                t += 1
                f(t)
            res[k].append((time.perf_counter() - t0) / 50 * 1000)
for k, v in res.items():
    print(f"{k} pass{'es' if k == 'two' else ''}: median {np.median(v):.2f} ms a step", np.round(v, 2))
