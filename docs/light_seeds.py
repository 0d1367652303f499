"""Explorer rollouts of a Crafter bundle, one frame every 250 steps per seed, as rows of one strip:
`python docs/light_seeds.py BUNDLE STEPS SEEDS OUT.png [KEY=VALUE ...]` (SEEDS comma-separated; KEY=VALUE go to
gym.make, e.g. light=false). Each seed's env and explorer are seeded as `worldsim eval`'s stability rollout seeds
them (seed 1000000 is the eval's), with the termination threshold off and the night's noise at its mean.
docs/results.md, "The game's light, drawn by the env".
"""
import sys

import gymnasium as gym
import numpy as np
from PIL import Image

import worldsim  # noqa: F401  (registers the envs)
from worldsim.agents import make_agent

bundle, steps, seeds, out = sys.argv[1], int(sys.argv[2]), [int(s) for s in sys.argv[3].split(",")], sys.argv[4]
kw = {k: (v == "true" if v in ("true", "false") else v) for k, v in (a.split("=", 1) for a in sys.argv[5:])}
kw.setdefault("light_noise", "mean")
rows = []
for seed in seeds:
    env = gym.make("worldsim/Crafter-v0", bundle=bundle, termination_threshold=2.0, horizon=steps + 1, **kw)
    agent = make_agent("explorer", env.action_space, seed=seed)
    obs, _ = env.reset(seed=seed)
    agent.reset()
    kept = []
    for t in range(steps):
        obs, *_ = env.step(agent.act(obs))
        if t % 250 == 0:
            kept.append(obs)
    env.close()
    rows.append(np.concatenate(kept, 1))
    print(f"seed {seed}: {steps} steps")
Image.fromarray(np.concatenate(rows, 0)).save(out)
print(f"written to {out}")
