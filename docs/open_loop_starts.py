"""Open loop of the learned Minetest env from 8 real held-out starts (steps 0 and 200 of each episode in
data/minetest-heldout), driven by the real actions for 32 steps: mean per-frame PSNR against the real frames
at horizons 1, 4, 8, 16, 32 for each setting, and a grid (the model's frames at those horizons for the first
two episodes' starts, one row per setting, the real frames after the first setting's rows).

    python docs/open_loop_starts.py BUNDLE '{"NAME": {ENV SETTINGS}, ...}' GRID.png
    e.g. python docs/open_loop_starts.py worldsim/assets/minetest '{"off": {"reencode": false}, "on": {}}' g.png
"""
import json
import sys
from pathlib import Path

import gymnasium as gym
import imageio.v2 as imageio
import numpy as np
import torch

import worldsim  # noqa: F401  (registers the envs)
from worldsim.data import load_episodes

torch.set_num_threads(2)
bundle, variants, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
eps = load_episodes(Path("data/minetest-heldout"), split="test")
H, SHOW = 32, (1, 4, 8, 16, 32)


def pad(f):
    return np.pad(f, ((0, 2), (0, 2), (0, 0)), constant_values=255)


rows = []
for name, kw in variants.items():
    env = gym.make("worldsim/Minetest-v0", bundle=bundle, **kw)
    psnr, n = np.zeros(H), 0
    for e in range(len(eps)):
        fr, A = eps[e]["frames"], eps[e]["actions"]
        for s in (0, 200):
            env.reset(seed=1, options={"context_frames": fr[s:s + 4],
                                       "context_actions": {k: v[s:s + 3] for k, v in A.items()}})
            model, real = [], []
            for t in range(H):
                obs = env.step({k: v[s + 3 + t] for k, v in A.items()})[0]
                mse = ((obs.astype(float) - fr[s + 4 + t]) ** 2).mean()
                psnr[t] += 10 * np.log10(255 ** 2 / max(mse, 1e-10))
                if t + 1 in SHOW:
                    model.append(obs)
                    real.append(fr[s + 4 + t])
            n += 1
            if e < 2:
                rows.append(np.concatenate([pad(f) for f in model], 1))
                if name == next(iter(variants)):
                    rows.append(np.concatenate([pad(f) for f in real], 1))
    env.close()
    print(name, " ".join(f"h{h} {psnr[h - 1] / n:.2f}" for h in SHOW), "dB")
imageio.imwrite(out, np.concatenate(rows, 0))
