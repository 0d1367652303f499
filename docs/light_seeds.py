"""Explorer rollouts of a Crafter bundle, one frame every 250 steps per seed, as rows of one strip:
`python docs/light_seeds.py BUNDLE STEPS SEEDS OUT.png [KEY=VALUE ...]` (SEEDS comma-separated; KEY=VALUE go to
gym.make, e.g. light=false, fresh_window=1). Each seed's env and explorer are seeded as `worldsim eval`'s stability
rollout seeds them (seed 1000000 is the eval's), with the termination threshold off and the night's noise at its
mean. It prints, per seed and 500 steps, the share of steps that left the model's drawn frame unchanged (under the
env's light, its canvas) and the mean change per step, and writes them beside OUT.png as OUT.json.
docs/results.md, "The game's light, drawn by the env" and "The freeze: history in the cache".
"""
import json
import sys

import gymnasium as gym
import numpy as np
from omegaconf import OmegaConf
from PIL import Image

import worldsim  # noqa: F401  (registers the envs)
from worldsim.agents import make_agent


bundle, steps, seeds, out = sys.argv[1], int(sys.argv[2]), [int(s) for s in sys.argv[3].split(",")], sys.argv[4]
kw = OmegaConf.to_container(OmegaConf.from_dotlist(sys.argv[5:]))  # KEY=VALUE, typed
kw.setdefault("light_noise", "mean")
rows, per_500 = [], {}
for seed in seeds:
    env = gym.make("worldsim/Crafter-v0", bundle=bundle, termination_threshold=2.0, horizon=steps + 1, **kw)
    agent = make_agent("explorer", env.action_space, seed=seed)
    obs, _ = env.reset(seed=seed)
    agent.reset()
    kept, drawn = [], []
    for t in range(steps):
        obs, _, _, _, info = env.step(agent.act(obs))
        drawn.append(info.get("canvas", obs))  # what the model drew: under the env's light, the canvas
        if t % 250 == 0:
            kept.append(obs)
    env.close()
    change = np.abs(np.diff(np.stack(drawn).astype(np.int16), axis=0)).mean(axis=(1, 2, 3))
    per_500[seed] = [[round(float((change[s:s + 500] < 0.05).mean()), 2), round(float(change[s:s + 500].mean()), 2)]
                     for s in range(0, len(change), 500)]
    print(f"seed {seed}: {steps} steps; unchanged share and change per 500 steps: {per_500[seed]}")
    rows.append(np.concatenate(kept, 1))
Image.fromarray(np.concatenate(rows, 0)).save(out)
with open(out.rsplit(".", 1)[0] + ".json", "w") as f:
    json.dump({"bundle": bundle, "steps": steps, "settings": kw, "unchanged_and_change_per_500": per_500}, f, indent=1)
print(f"written to {out}")
