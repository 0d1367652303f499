"""What a cache rebuild saves by computing only its newest frame's outputs (`WorldDiT.forward(newest=True)`):
the shipped Crafter bundle's rebuild pass (4 context frames, keys and values of every frame and layer), timed
with and without it, interleaved in one process (medians of 30 calls each).

    python docs/rebuild_newest.py [BATCH ...]    (default 1 16; fp32 and int8 each)

docs/results.md, "The light drawn by the env, shipped".
"""
import json
import statistics
import sys
import time

import gymnasium as gym
import torch

import worldsim  # noqa: F401  (registers the envs)

out = {}
for B in [int(b) for b in sys.argv[1:]] or [1, 16]:
    for q in ("none", "int8"):
        env = gym.make_vec("worldsim/Crafter-v0", num_envs=B, quantize=q) if B > 1 else \
            gym.make("worldsim/Crafter-v0", quantize=q)
        env.reset(seed=0)
        for _ in range(5):
            env.step(env.action_space.sample())
        sim = env.unwrapped.sim
        z = sim.win_z  # the window a rebuild reads: (B, 4, C, h, w), as committed
        W = z.shape[1]
        inp, c_noise = sim.edm.model_input(z, torch.full(z.shape[:2], sim.context_noise))
        acts = torch.zeros(B, W, dtype=torch.long)
        has = torch.ones(B, W, dtype=torch.bool)
        has[:, 0] = False
        ticks = torch.zeros(B, W, sim.model_ticks) if sim.model_ticks else None
        times = torch.arange(sim.time - W + 1, sim.time + 1)
        ms = {False: [], True: []}
        with torch.no_grad():
            for r in range(35):
                for newest in (False, True):
                    t = time.perf_counter()
                    sim.dit(inp, c_noise, acts, has, times=times, return_kv=True, ticks=ticks, context_only=True,
                            newest=newest)
                    if r >= 5:
                        ms[newest].append((time.perf_counter() - t) * 1e3)
        env.close()
        key = f"batch {B}, {q}"
        out[key] = {"all frames ms": round(statistics.median(ms[False]), 2),
                    "newest ms": round(statistics.median(ms[True]), 2)}
        print(key, out[key], flush=True)
print(json.dumps(out))
