"""Unchanged steps of a Crafter bundle's learned env under the explorer, seed by seed (README, Crafter: terrain
prior): for each k, explorer and env seed 1,000,000 + 7,919 k (the seeds of `worldsim eval`'s stability run,
k = 0, and of docs/stability_seeds.py, k = 1, 2, 3), N steps; per 500-step block, the share of steps that moved
the frame by less than 0.05 grey levels (mean absolute, the eval's measure) and the mean change. Extra
KEY=VALUE arguments go to gym.make.

    python docs/explorer_seeds.py BUNDLE N K1,K2,...      e.g. worldsim/assets/crafter 2000 0,1,2,3
"""
import sys

import gymnasium as gym
import numpy as np

import worldsim  # noqa: F401  (registers the envs)
from worldsim.agents import make_agent

bundle, n, ks = sys.argv[1], int(sys.argv[2]), [int(k) for k in sys.argv[3].split(",")]
kw = {k: {"true": True, "false": False}.get(v, v) for k, v in (a.split("=", 1) for a in sys.argv[4:])}
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
    change = np.abs(np.diff(np.array(frames).astype(np.int16), axis=0)).mean(axis=(1, 2, 3))
    blocks = change[:len(change) // 500 * 500].reshape(-1, 500)
    print(k, "unchanged % per 500:", [int(100 * (b < 0.05).mean()) for b in blocks],
          "change:", [round(float(b.mean()), 2) for b in blocks], flush=True)
