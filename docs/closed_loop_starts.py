"""Closed loop of the learned Minetest env from 8 real held-out starts (4 context frames each) under random
walk, dig and look actions: the frame's mean and pixel spread after 50, 150 and 300 steps, and with a PNG
path a grid: one row per start, its last real context frame, then the model's frame every 25 steps.

    python docs/closed_loop_starts.py BUNDLE [GRID.png] [NAME=VALUE ...]   (held-out episodes: data/minetest-heldout)

NAME=VALUE: env settings, e.g. reencode=true detail_carry=1.0 (numbers, true/false).
"""
import sys
from pathlib import Path

import gymnasium as gym
import imageio.v2 as imageio
import numpy as np
import torch

import worldsim  # noqa: F401  (registers the envs)
from worldsim.data import load_episodes

torch.set_num_threads(2)
bundle = sys.argv[1]
args = [a for a in sys.argv[2:] if "=" not in a]
kw = {k: {"true": True, "false": False}.get(v.lower(), None if v.lower() in ("none", "null") else v)
      for k, v in (a.split("=", 1) for a in sys.argv[2:] if "=" in a)}
kw = {k: float(v) if isinstance(v, str) else v for k, v in kw.items()}
eps = load_episodes(Path("data/minetest-heldout"), split="test")
env = gym.make("worldsim/Minetest-v0", bundle=bundle, **kw)
rng = np.random.default_rng(0)
rows = []
for e in range(len(eps)):
    for s in (0, 200):
        fr = eps[e]["frames"][s:s + 4]
        acts = {k: v[s:s + 3] for k, v in eps[e]["actions"].items()}
        obs, _ = env.reset(seed=1, options={"context_frames": fr, "context_actions": acts})
        out, row = [], [fr[-1]]
        for t in range(300):
            a = {"forward": int(rng.random() < 0.7), "attack": int(rng.random() < 0.3),
                 "jump": int(rng.random() < 0.1), "camera": rng.normal(0, 3, 2).astype(np.float32)}
            obs = env.step(a)[0]
            if t + 1 in (50, 150, 300):
                # spread as `worldsim eval` measures it: each channel's spread over the frame, averaged (until
                # 2026-12-03 this printed obs.std(), over all values, which counts a flat coloured frame's
                # channel differences as spread)
                spread = obs.reshape(-1, 3).std(0).mean()
                out.append(f"t{t + 1}: mean {obs.mean():5.1f} spread {spread:4.1f}")
            if (t + 1) % 25 == 0:
                row.append(obs)
        rows.append(np.concatenate([np.pad(f, ((0, 2), (0, 2), (0, 0)), constant_values=255) for f in row], 1))
        print(f"ep {e} start {s} (real mean {fr[-1].mean():5.1f}): " + " | ".join(out))
if args:
    imageio.imwrite(args[0], np.concatenate(rows, 0))
