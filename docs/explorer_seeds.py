"""Unchanged steps of a Crafter bundle's learned env under the explorer, seed by seed (docs/results.md, Crafter: terrain
prior): for each k, explorer and env seed 1,000,000 + 7,919 k (the seeds of `worldsim eval`'s stability run,
k = 0, and of docs/stability_seeds.py, k = 1, 2, 3), N steps; per block (500 steps, or --block B), the share of
steps that moved the frame by less than 0.05 grey levels (mean absolute, the eval's measure), the mean change and
the map view's saturation (max - min channel per pixel: Crafter's night lowers it). Extra KEY=VALUE arguments go
to gym.make.

    python docs/explorer_seeds.py BUNDLE N K1,K2,... [--block B]      e.g. worldsim/assets/crafter 2000 0,1,2,3
"""
import sys

import gymnasium as gym
import numpy as np
from omegaconf import OmegaConf

import worldsim  # noqa: F401  (registers the envs)
from worldsim.agents import make_agent

args = sys.argv[1:]
block = 500
if "--block" in args:
    i = args.index("--block")
    block = int(args[i + 1])
    del args[i:i + 2]
bundle, n, ks = args[0], int(args[1]), [int(k) for k in args[2].split(",")]
kw = OmegaConf.to_container(OmegaConf.from_dotlist(args[3:]))  # KEY=VALUE, typed
for k in ks:
    seed = 1000000 + 7919 * k
    env = gym.make("worldsim/Crafter-v0", bundle=bundle, termination_threshold=2.0, horizon=n + 1, **kw)
    agent = make_agent("explorer", env.action_space, seed=seed)
    obs, _ = env.reset(seed=seed)
    agent.reset()
    frames = [obs]
    for t in range(n):
        obs = env.step(agent.act(obs))[0]
        frames.append(obs)
    env.close()
    frames = np.array(frames).astype(np.int16)
    change = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2, 3))
    view = frames[1:, :49]
    saturation = (view.max(-1) - view.min(-1)).mean(axis=(1, 2))
    m = len(change) // block * block
    blocks, sat = change[:m].reshape(-1, block), saturation[:m].reshape(-1, block)
    print(k, f"unchanged % per {block}:", [int(100 * (b < 0.05).mean()) for b in blocks],
          "change:", [round(float(b.mean()), 2) for b in blocks], "saturation:", [int(b.mean()) for b in sat], flush=True)
