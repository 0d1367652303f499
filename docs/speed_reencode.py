"""Step time of the shipped Minetest model with and without `reencode`, timed in one process, interleaved,
best of 5 rounds of 50 steps (this CPU's speed drifts between runs). WorldSimulator only, decode included.

    python docs/speed_reencode.py
"""
import time

import numpy as np
import torch

from worldsim import DEFAULT_MINETEST_BUNDLE
from worldsim.simulator import WorldSimulator, load_bundle

torch.set_num_threads(2)
b = load_bundle(str(DEFAULT_MINETEST_BUNDLE))
for B in (1, 16):
    sims = {}
    for name, re_ in (("without reencode", False), ("reencode", True)):
        sim = WorldSimulator(b, B, reencode=re_)
        rng = np.random.default_rng(0)
        idx = np.arange(B) % len(b.start_frames)
        acts = {k: v[idx].numpy() for k, v in b.start_actions.items()}
        sim.reset(range(B), b.start_frames[idx].numpy(), acts, rng.standard_normal((B, sim.window, *sim.latent_shape)))
        sims[name] = (sim, rng)
    best = {n: float("inf") for n in sims}
    for _ in range(5):
        for name, (sim, rng) in sims.items():
            noise = rng.standard_normal((50, 2, B, *sim.latent_shape))
            t0 = time.perf_counter()
            for i in range(50):
                a = {k: np.zeros(B, np.int64) for k in sim.spec["keys"]}
                a["forward"] = np.ones(B, np.int64)
                a["camera"] = rng.normal(0, 3, (B, 2)).astype(np.float32)
                sim.step(a, noise[i, 0], noise[i, 1])
            best[name] = min(best[name], (time.perf_counter() - t0) / 50)
    print(f"batch {B}: " + ", ".join(f"{n} {1000 * v:.1f} ms per step ({B / v:.1f} env-steps/s)" for n, v in best.items()))
