"""Standing still in the learned Minetest env: from 4 real held-out starts (step 100 of each episode, 4 context
frames), 60 null actions (no key, no camera); the real game keeps its frame, so the model's frame is compared
with the last real one after 1, 5, 20 and 60 steps (148 dB: the same frame, bit for bit). A walk straight
ahead (forward, no camera) from the same starts shows whether a setting freezes a view that should move:
the mean change per step, beside the real game's on held-out steps walking with under 0.5 degrees of camera.

    python docs/still_view.py [NAME=VALUE ...]   (env settings, e.g. tile_hold=0; held-out episodes: data/minetest-heldout)
"""
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

import worldsim  # noqa: F401  (registers the envs)
from worldsim.data import load_episodes
from worldsim.evaluate import psnr_np

torch.set_num_threads(2)
kw = {k: float(v) for k, v in (a.split("=", 1) for a in sys.argv[1:])}
eps = load_episodes(Path("data/minetest-heldout"), split="test")
env = gym.make("worldsim/Minetest-v0", **kw)
null = {k: 0 for k in env.action_space.spaces}
null["camera"] = np.zeros(2, np.float32)
walk = dict(null, forward=1)
for e in range(len(eps)):
    fr = eps[e]["frames"][100:104]
    acts = {k: v[100:103] for k, v in eps[e]["actions"].items()}
    env.reset(seed=1, options={"context_frames": fr, "context_actions": acts})
    out = []
    for t in range(60):
        obs = env.step(null)[0]
        if t + 1 in (1, 5, 20, 60):
            out.append(f"{t + 1}: {psnr_np(obs, fr[-1]):5.1f}")
    last = env.reset(seed=1, options={"context_frames": fr, "context_actions": acts})[0].astype(float)
    change = []
    for t in range(20):
        obs = env.step(walk)[0]
        change.append(np.abs(obs - last).mean())
        last = obs.astype(float)
    print(f"start {e}: standing still, dB against the last real frame after steps " + ", ".join(out)
          + f" | walking straight, mean change per step {np.mean(change):.2f}")
real = [np.abs(ep["frames"][i + 1].astype(float) - ep["frames"][i]).mean() for ep in eps
        for i in range(len(ep["frames"]) - 1) if ep["actions"]["forward"][i] and np.abs(ep["actions"]["camera"][i]).sum() < 0.5]
print(f"real game, walking with under 0.5 degrees of camera: {len(real)} steps, mean change {np.mean(real):.2f}, "
      f"median {np.median(real):.2f}")
