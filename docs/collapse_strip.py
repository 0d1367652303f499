"""Where a long explorer rollout of the shipped Crafter model stops changing (docs/results.md, Crafter: terrain prior):
the stability seed 2 of docs/stability_seeds.py (explorer and env seed 1,000,000 + 2 * 7919), 5,200 steps; finds
the first run of 50 unchanged steps after step 4,000, prints the explorer's actions in the 200 steps from
there, and writes every 50th frame from 300 steps before it to OUT.

    python docs/collapse_strip.py docs/stability_collapse_seed2.png
"""
import collections
import sys

import gymnasium as gym
import numpy as np
from PIL import Image

import worldsim  # noqa: F401  (registers the envs)
from worldsim.agents import make_agent

seed = 1000000 + 7919 * 2
env = gym.make("worldsim/Crafter-v0", termination_threshold=2.0, horizon=10001)
agent = make_agent("explorer", env.action_space, seed=seed)
obs, _ = env.reset(seed=seed)
agent.reset()
frames, acts = [], []
for t in range(5200):
    a = agent.act(obs)
    obs = env.step(a)[0]
    if t >= 4000:
        frames.append(obs)
        acts.append(int(a))
fr = np.array(frames)
change = np.abs(np.diff(fr.astype(np.int16), axis=0)).mean(axis=(1, 2, 3))
first = int(np.argmax(np.convolve(change < 0.05, np.ones(50), "valid") == 50))
names = env.unwrapped.action_meanings
print(f"50 unchanged steps in a row from step {4001 + first}; actions in the next 200:",
      {names[a]: n for a, n in collections.Counter(acts[first:first + 200]).most_common()})
pick = list(range(max(0, first - 300), min(len(fr), first + 200), 50))
print("frames after steps", [4001 + i for i in pick])
strip = np.concatenate([np.pad(fr[i], ((0, 0), (0, 2), (0, 0))) for i in pick], 1)
Image.fromarray(strip).resize((strip.shape[1] * 2, strip.shape[0] * 2), Image.NEAREST).save(sys.argv[1])
