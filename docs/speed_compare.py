"""Batch-1 and batch-16 step time of several inference settings, timed in one process, interleaved, best
of 5 rounds (this CPU's speed drifts between runs: the bench's real-Crafter figure moved 572 -> 866 steps/s
between four back-to-back runs). WorldSimulator only (decode included), 100 steps per round.

    python docs/speed_compare.py [OTHER_BUNDLE=runs/distill/bundle]
"""
import sys
import time

import numpy as np
import torch

from worldsim import DEFAULT_CRAFTER_BUNDLE
from worldsim.simulator import WorldSimulator, load_bundle

torch.set_num_threads(2)
other = sys.argv[1] if len(sys.argv) > 1 else "runs/distill/bundle"
settings = {"shipped (its guidance)": (str(DEFAULT_CRAFTER_BUNDLE), None),
            "shipped, int8": (str(DEFAULT_CRAFTER_BUNDLE), "int8"),
            f"{other} (its guidance)": (other, None),
            f"{other}, int8": (other, "int8")}
for B in (1, 16):
    sims = {}
    for name, (path, q) in settings.items():
        b = load_bundle(path)
        sim = WorldSimulator(b, B, quantize=q)
        rng = np.random.default_rng(0)
        idx = np.arange(B) % len(b.start_frames)
        sim.reset(range(B), b.start_frames[idx].numpy(), b.start_actions[idx].numpy(),
                  rng.standard_normal((B, sim.window, *sim.latent_shape)))
        sims[name] = (sim, rng)
    best = {n: float("inf") for n in sims}
    for _ in range(5):
        for name, (sim, rng) in sims.items():
            acts = rng.integers(5, size=(100, B))
            noise = rng.standard_normal((100, 2, B, *sim.latent_shape))
            t0 = time.perf_counter()
            for i in range(100):
                sim.step(acts[i], noise[i, 0], noise[i, 1])
            best[name] = min(best[name], (time.perf_counter() - t0) / 100)
    for name, dt in best.items():
        print(f"batch {B:>2d}  {name:<40s} {1e3 * dt:6.1f} ms/step  {B / dt:7.1f} env-steps/s")
