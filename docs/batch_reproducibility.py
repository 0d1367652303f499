"""Does a world of the vector env give the same frames whatever worlds share its batch?

    python docs/batch_reproducibility.py [BUNDLE] [none|int8] [STEPS]

World 0 with seed 2 runs alone (num_envs=1, seeds [2]) and beside another world (num_envs=2, seeds [2, 5]),
both driven by the same random actions; prints, per step, how many of world 0's pixel values differ and by
how much on average. Default: the shipped Crafter model, int8 (its CPU default), 30 steps.
"""
import sys

import gymnasium as gym
import numpy as np

import worldsim  # noqa: F401  (registers the envs)
from worldsim import DEFAULT_CRAFTER_BUNDLE
from worldsim.agents import make_agent

bundle = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_CRAFTER_BUNDLE
quantize = sys.argv[2] if len(sys.argv) > 2 else "int8"
steps = int(sys.argv[3]) if len(sys.argv) > 3 else 30


def world0(seeds):
    venv = gym.make_vec("worldsim/Crafter-v0", num_envs=len(seeds), bundle=str(bundle), horizon=steps + 1,
                        termination_threshold=2.0, quantize=quantize)
    obs, _ = venv.reset(seed=seeds)
    agent = make_agent("random", venv.single_action_space, seed=2)
    frames = [obs[0]]
    for _ in range(steps):
        a = agent.act(obs[0])
        obs, *_ = venv.step(np.array([a] * len(seeds)))
        frames.append(obs[0])
    return np.stack(frames).astype(np.int16)


d = np.abs(world0([2]) - world0([2, 5])).reshape(steps + 1, -1)
print(f"quantize={quantize}, world 0 alone against beside another, per step from the start frame:")
print("values differing:", (d > 0).sum(1).tolist())
print("mean difference: ", np.round(d.mean(1), 3).tolist())
