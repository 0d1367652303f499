"""Do an explorer rollout's still stretches follow sleeps? Per seed and 500 steps, driven as
`docs/light_seeds.py` drives them (the eval's explorer seeding, termination off, the night's noise at its mean):
the share of steps that left the drawn frame (the canvas) unchanged, the share of grey map views (colour, the
mean max - min over the channels of the top 7 tile rows, under 30: the real game's sleeping views have 5-8, its
others 12 or more, the learned world's sleeping views 11-28), the mean colour, and the steps that pressed `sleep`.

    python docs/freeze_cause.py BUNDLE STEPS SEEDS OUT.json     (BUNDLE "crafter": the shipped one)

docs/results.md, "Context frames that attend to themselves alone".
"""
import json
import sys

import gymnasium as gym
import numpy as np

import worldsim  # noqa: F401  (registers the envs)
from worldsim.agents import make_agent

bundle, steps, seeds = sys.argv[1], int(sys.argv[2]), [int(s) for s in sys.argv[3].split(",")]
VIEW, SLEEP = 49, 6  # the map view's rows (7 tile rows of 7 px); the sleep action
res = {}
for seed in seeds:
    env = gym.make("worldsim/Crafter-v0", **({} if bundle == "crafter" else {"bundle": bundle}),
                   termination_threshold=2.0, horizon=steps + 1, light_noise="mean")
    agent = make_agent("explorer", env.action_space, seed=seed)
    obs, _ = env.reset(seed=seed)
    agent.reset()
    acts, canv = [], []
    for t in range(steps):
        a = agent.act(obs)
        obs, _, _, _, info = env.step(a)
        acts.append(a)
        canv.append(info.get("canvas", obs))
    env.close()
    c, acts = np.stack(canv).astype(np.int16), np.array(acts)
    change = np.abs(np.diff(c, axis=0)).mean(axis=(1, 2, 3))
    v = c[:, :VIEW]
    colour = (v.max(-1) - v.min(-1)).mean(axis=(1, 2))
    rows = []
    for s in range(0, steps, 500):
        rows.append({"from": s, "unchanged": round(float((change[s:s + 500] < 0.05).mean()), 2),
                     "grey": round(float((colour[s:s + 500] < 30).mean()), 2),
                     "colour": round(float(colour[s:s + 500].mean()), 1),
                     "sleep_presses": [int(i) for i in np.nonzero(acts[s:s + 500] == SLEEP)[0] + s]})
    res[seed] = rows
    print(bundle, seed, json.dumps(rows), flush=True)
with open(sys.argv[4], "w") as f:
    json.dump({"bundle": bundle, "steps": steps, "per_500": res}, f, indent=1)
