"""Trying every action from one saved state of the shipped Crafter model: one env going back 17 times, against
one vector env of 17 worlds stepping all of them in one batched step (README: Save, branch and go back).

    python docs/branch_speed.py [REPEATS]   (default 5; prints the best of the repeats, and the state's size)
"""
import sys
import time

import gymnasium as gym
import numpy as np
import torch

import worldsim  # noqa: F401

torch.set_num_threads(2)
repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 5
env = gym.make("worldsim/Crafter-v0").unwrapped
env.reset(seed=0)
for a in [1, 1, 3, 5, 3, 2, 4, 4, 5, 1]:
    env.step(a)
n = env.action_space.n
venv = gym.make_vec("worldsim/Crafter-v0", num_envs=n)
venv.reset(seed=0)


def best(fn):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * min(times)


state = env.get_state()
get_ms = best(env.get_state)
set_ms = best(lambda: env.set_state(state))


def one_env():
    for a in range(n):
        env.set_state(state)
        env.step(a)


def vector_env():
    venv.set_state(state)
    venv.step(np.arange(n))


one_env(), vector_env()  # warm up
print(f"state {state.nbytes / 2**20:.2f} MiB; get_state {get_ms:.2f} ms, set_state {set_ms:.2f} ms "
      f"(best of {repeats})")
print(f"all {n} actions from one state: one env going back {best(one_env):.1f} ms, "
      f"a vector env of {n} in one step {best(vector_env):.1f} ms")
