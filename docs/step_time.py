"""Milliseconds per step of the shipped env through the Gymnasium API, at batch 1 and 16 (best of 3 runs).

    python docs/step_time.py [crafter|minetest]

For comparing two versions of the code in alternation on this VM, whose speed drifts by a third between
hours: run it on one commit, then the other, several times over (`git checkout COMMIT -- kernels worldsim`).
`worldsim bench` gives the figures the README's table quotes; this is the quick A/B for a code change.
"""
import sys
import time

import gymnasium as gym

import worldsim  # noqa: F401  (registers the envs)

name = (sys.argv[1] if len(sys.argv) > 1 else "crafter").capitalize()
res = []
for B in (1, 16):
    env = gym.make_vec(f"worldsim/{name}-v0", num_envs=B) if B > 1 else gym.make(f"worldsim/{name}-v0")
    env.reset(seed=0)
    env.action_space.seed(0)
    for _ in range(10):
        env.step(env.action_space.sample())
    best, n = float("inf"), 60 if B == 1 else 15
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(n):
            env.step(env.action_space.sample())
        best = min(best, (time.perf_counter() - t) / n)
    env.close()
    res.append(f"batch {B}: {best * 1e3:.2f} ms/step")
print(name, *res, sep="  ")
