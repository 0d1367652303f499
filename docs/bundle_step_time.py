"""Milliseconds per step of two Crafter bundles through the Gymnasium API, alternating, at batch 1 and 16.

    python docs/bundle_step_time.py BUNDLE_A BUNDLE_B [RUNS]

Each run steps each bundle with random actions (best of 3 timings of 60 steps at batch 1, 10 at batch 16), the
two in turn, so this VM's drift between hours falls on both alike. The quick A/B for two bundles of one world
model (`worldsim bench` gives the figures the README's table quotes).
"""
import sys
import time

import gymnasium as gym
import torch

import worldsim  # noqa: F401

torch.set_num_threads(2)


def ms_per_step(bundle, B, n):
    env = (gym.make_vec("worldsim/Crafter-v0", num_envs=B, bundle=bundle) if B > 1
           else gym.make("worldsim/Crafter-v0", bundle=bundle))
    env.reset(seed=0)
    env.action_space.seed(0)
    for _ in range(5):
        env.step(env.action_space.sample())
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(n):
            env.step(env.action_space.sample())
        best = min(best, (time.perf_counter() - t) / n)
    env.close()
    return best * 1e3


a, b = sys.argv[1], sys.argv[2]
for run in range(int(sys.argv[3]) if len(sys.argv) > 3 else 2):
    for B, n in ((1, 60), (16, 10)):
        print(f"batch {B}: {a} {ms_per_step(a, B, n):.2f} ms, {b} {ms_per_step(b, B, n):.2f} ms", flush=True)
