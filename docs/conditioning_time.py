"""Microseconds a call of the world model's batch-1 conditioning (WorldDiT._conditioning) for one step's pass of two
frames (the pending commit and the new frame, forward_cached_pair), over 2,000 steps of random play: each step's
action and the one before it (17 actions), a tick on the new frame 5 % of the time.

    python docs/conditioning_time.py [TREE]

TREE: a checkout of another version put first on the path (`git worktree add /tmp/base COMMIT`), to compare the
memo kept per pass (before 2026-12-07, 55th session: a key per pair of actions, so random play computed most
steps afresh) with the memo kept per frame. Prints the mean of two passes over the same 2,000 calls (the first
fills the memo) and how many calls computed the conditioning.
"""
import sys
import time

if len(sys.argv) > 1:
    sys.path.insert(0, sys.argv[1])

import gymnasium as gym
import numpy as np
import torch

import worldsim

torch.set_grad_enabled(False)
env = gym.make("worldsim/Crafter-v0", quantize="none")
env.reset(seed=0)
dit = env.unwrapped.sim.dit
rng = np.random.default_rng(0)
c_noise = torch.tensor([[-2.0, 1.2]])  # the commit's noise level and the one-step sampler's, as a step passes them
has = torch.ones(1, 2, dtype=torch.bool)
clock = torch.tensor([[5, 6]])
calls, prev = [], 0
for _ in range(2000):
    a = int(rng.integers(17))
    ticks = torch.zeros(1, 2, dit.config.ticks)
    if rng.random() < 0.05:
        ticks[0, 1, rng.integers(dit.config.ticks)] = 1
    calls.append((torch.tensor([[prev, a]]), ticks))
    prev = a
computed = [0]
cond = dit._cond


def counted(*a, **k):
    computed[0] += 1
    return cond(*a, **k)


dit._cond = counted
print(worldsim.__file__)
for run in ("first pass", "second pass"):
    computed[0] = 0
    t = time.perf_counter()
    for a, tk in calls:
        dit._conditioning(c_noise, a, has, clock, tk)
    print(f"{run}: {(time.perf_counter() - t) / len(calls) * 1e6:.0f} us a call, computed in {computed[0]} of "
          f"{len(calls)}")
