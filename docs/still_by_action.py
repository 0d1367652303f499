"""The learned env's unchanged steps by action, beside the real game's (docs/results.md, Crafter: terrain prior): the
shipped model under the explorer for 2,000 steps (seed 1,000,000, as the eval's stability rollout) and the real
held-out episodes of data/crafter-heldout; a step is unchanged when its frame moved by less than 0.05 grey
levels (mean absolute), the eval's measure. Extra KEY=VALUE arguments go to gym.make (e.g. new_ground=nearest).

    python docs/still_by_action.py
"""
import pathlib
import sys

import gymnasium as gym
import numpy as np

import worldsim  # noqa: F401  (registers the envs)
from worldsim.agents import make_agent
from worldsim.data import load_episodes

real, do_tiles, do_pixels = {}, [], []
for ep in load_episodes(pathlib.Path("data/crafter-heldout")):
    frames = ep["frames"].astype(np.int16)
    change = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2, 3))
    for t, (a, c) in enumerate(zip(np.asarray(ep["actions"]).reshape(-1), change)):
        real.setdefault(int(a), []).append(c < 0.05)
        if a == 5:  # "do": how much of the real map view changed, by tile (> 8 grey levels) and by pixel
            d = np.abs(frames[t + 1, :49] - frames[t, :49]).max(-1)
            do_tiles.append(int((d[:, :63].reshape(7, 7, 9, 7).max(axis=(1, 3)) > 8).sum()))
            do_pixels.append(float((d > 0).mean()))
print(f'real "do" steps: {len(do_tiles)}; {sum(n == 0 for n in do_tiles)} change no map tile by more than 8 grey '
      f"levels; the median one changes {np.median(do_pixels):.2f} of the map view's pixels")
env = gym.make("worldsim/Crafter-v0", termination_threshold=2.0, horizon=10 ** 6,
               **dict(a.split("=", 1) for a in sys.argv[1:]))
names = env.unwrapped.action_meanings
agent = make_agent("explorer", env.action_space, seed=1000000)
obs, _ = env.reset(seed=1000000)
agent.reset()
model = {}
for _ in range(2000):
    a = agent.act(obs)
    new = env.step(a)[0]
    model.setdefault(int(a), []).append(np.abs(new.astype(np.int16) - obs).mean() < 0.05)
    obs = new
R, M = sum(map(len, real.values())), sum(map(len, model.values()))
print(f"{'action':18s} real: share of steps / unchanged   model: share of steps / unchanged")
for a in sorted(set(real) | set(model)):
    r, m = real.get(a, []), model.get(a, [])
    print(f"{names[a]:18s} {len(r) / R:6.3f} / {np.mean(r) if r else 0:5.2f}              "
          f"{len(m) / M:6.3f} / {np.mean(m) if m else 0:5.2f}")
