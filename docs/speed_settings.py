"""Step time of a shipped model under several inference settings, timed in one process, interleaved, best of
5 rounds of 50 steps (this CPU's speed drifts between runs). WorldSimulator only, decode included.

    python docs/speed_settings.py minetest reencode=false reencode=true
    python docs/speed_settings.py crafter snap=false snap=true

Each KEY=VALUE is one setting (a WorldSimulator argument; true/false, or a number), or warp_kind=shift|rotation
(the world model's warp, same weights):

    python docs/speed_settings.py minetest warp_kind=shift warp_kind=rotation

Minetest steps walk forward while turning; with `turning` they only turn (no key: the view memory's case):

    python docs/speed_settings.py minetest turning view_memory=0 view_memory=32
"""
import copy
import sys
import time

import numpy as np
import torch
from omegaconf import OmegaConf

from worldsim import DEFAULT_CRAFTER_BUNDLE, DEFAULT_MINETEST_BUNDLE
from worldsim.simulator import WorldSimulator, load_bundle

torch.set_num_threads(2)
game, settings = sys.argv[1], [a.split("=", 1) for a in sys.argv[2:] if "=" in a]
walk = "turning" not in sys.argv[2:]
b = load_bundle(str({"crafter": DEFAULT_CRAFTER_BUNDLE, "minetest": DEFAULT_MINETEST_BUNDLE}[game]))
dict_actions = isinstance(b.start_actions, dict)
for B in (1, 16):
    sims = {}
    for k, v in settings:
        if k == "warp_kind":  # the same weights warping another way (a world model setting, not the simulator's)
            bk = copy.copy(b)
            bk.dit = b.dit.with_warp_kind(v).eval()
            sim = WorldSimulator(bk, B)
        else:
            sim = WorldSimulator(b, B, **OmegaConf.to_container(OmegaConf.from_dotlist([f"{k}={v}"])))
        rng = np.random.default_rng(0)
        idx = np.arange(B) % len(b.start_frames)
        acts = {k: v[idx].numpy() for k, v in b.start_actions.items()} if dict_actions else b.start_actions[idx].numpy()
        sim.reset(range(B), b.start_frames[idx].numpy(), acts, rng.standard_normal((B, sim.window, *sim.latent_shape)))
        sims[f"{k}={v}"] = (sim, rng)
    best = {n: float("inf") for n in sims}
    for _ in range(5):
        for name, (sim, rng) in sims.items():
            noise = rng.standard_normal((50, 2, B, *sim.latent_shape))
            t0 = time.perf_counter()
            for i in range(50):
                if dict_actions:  # walk forward, turning (or only turn)
                    a = {k: np.zeros(B, np.int64) for k in sim.spec["keys"]}
                    a["forward"] = np.full(B, int(walk), np.int64)
                    a["camera"] = rng.normal(0, 3, (B, 2)).astype(np.float32)
                else:  # Crafter: the four moves
                    a = rng.integers(1, 5, B)
                sim.step(a, noise[i, 0], noise[i, 1])
            best[name] = min(best[name], (time.perf_counter() - t0) / 50)
    print(f"batch {B}: " + ", ".join(f"{n} {1000 * v:.1f} ms per step ({B / v:.1f} env-steps/s)" for n, v in best.items()))
