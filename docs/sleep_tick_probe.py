"""What the tick head draws for a sleeper in the learned Crafter world, with the ticks on.

    python docs/sleep_tick_probe.py [WORLDS=0,1,2,3]

For each world (the shipped env, `reset(seed=world)`): 60 random moves (seeded by the world), `sleep` once, then
150 noops. Prints every 5th step's energy_up probability (`info["tick_prob"]`), the map view's colour (the mean
absolute difference of each pixel's channels from their mean: a sleeper's grey view is near 6-13, a lit day view
above 100), the steps on which energy_up was drawn and on which `wake_up` was paid. The real game raises a
sleeper's energy a point every 11 steps and wakes it when the count is full.
"""
import sys

import gymnasium as gym
import numpy as np
import torch

import worldsim  # noqa: F401  (registers the envs)

torch.set_num_threads(2)
worlds = [int(w) for w in (sys.argv[1] if len(sys.argv) > 1 else "0,1,2,3").split(",")]
env = gym.make("worldsim/Crafter-v0", ticks=True)
names = env.unwrapped.tick_names
up = names.index("energy_up")
for w in worlds:
    obs, _ = env.reset(seed=w)
    rng = np.random.default_rng(w)
    for _ in range(60):
        env.step(int(rng.integers(1, 5)))
    env.step(6)  # sleep
    prob, colour, ups, woke = [], [], [], []
    for t in range(150):
        obs, r, _, _, info = env.step(0)
        view = obs[:49].astype(np.float64)
        colour.append(np.abs(view - view.mean(-1, keepdims=True)).mean())
        prob.append(info["tick_prob"][up])
        if "energy_up" in info["ticks"]:
            ups.append(t + 1)
        if "wake_up" in info.get("events", []):
            woke.append(t + 1)
    print(f"world {w}: energy_up drawn after the press at {ups}; wake_up paid at {woke}")
    print("  p(energy_up), every 5th step:", " ".join(f"{p:.3f}" for p in prob[::5]))
    print("  view colour, every 5th step: ", " ".join(f"{c:.1f}" for c in colour[::5]))
