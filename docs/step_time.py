"""Milliseconds per step of the shipped env through the Gymnasium API, at batch 1 and 16 (best of 3 runs).

    python docs/step_time.py [crafter|minetest]
    python docs/step_time.py crafter BUNDLE_A BUNDLE_B [RUNS] [KEY=VALUE ...]

For comparing two versions of the code in alternation on this VM, whose speed drifts by a third between
hours: run it on one commit, then the other, several times over (`git checkout COMMIT -- kernels worldsim`).
With two bundles it steps them in turn, RUNS times (default 2; random actions, best of 3 timings of 60 steps at
batch 1 and 10 at batch 16), so the drift falls on both alike: the quick A/B for two bundles of one world model.
KEY=VALUE pairs go to both envs (e.g. `quantize=none`: fp32, the issue's speed target; the default is the bundles'
int8); A.KEY=VALUE or B.KEY=VALUE to one of them only (one bundle two ways: `worldsim/assets/crafter
worldsim/assets/crafter A.ticks=false`). `worldsim bench` gives the figures the README's table quotes.
"""
import sys
import time

import gymnasium as gym
import yaml

import worldsim  # noqa: F401  (registers the envs)


def ms_per_step(name, B, n, warm, bundle=None, side=None):
    kw = dict(SETTINGS) if bundle is None else {**SETTINGS, **SIDE.get(side, {}), "bundle": bundle}
    env = (gym.make_vec(f"worldsim/{name}-v0", num_envs=B, **kw) if B > 1
           else gym.make(f"worldsim/{name}-v0", **kw))
    env.reset(seed=0)
    env.action_space.seed(0)
    for _ in range(warm):
        env.step(env.action_space.sample())
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(n):
            env.step(env.action_space.sample())
        best = min(best, (time.perf_counter() - t) / n)
    env.close()
    return best * 1e3


SETTINGS, SIDE = {}, {"A": {}, "B": {}}
for k, v in (x.split("=", 1) for x in sys.argv[1:] if "=" in x):
    side, _, key = k.rpartition(".")
    (SIDE[side] if side in SIDE else SETTINGS)[key if side in SIDE else k] = yaml.safe_load(v)
argv = [x for x in sys.argv if "=" not in x]
name = (argv[1] if len(argv) > 1 else "crafter").capitalize()
if len(argv) > 3:
    a, b = argv[2], argv[3]
    for _ in range(int(argv[4]) if len(argv) > 4 else 2):
        for B, n in ((1, 60), (16, 10)):
            print(f"batch {B}: A {ms_per_step(name, B, n, 5, a, 'A'):.2f} ms, B {ms_per_step(name, B, n, 5, b, 'B'):.2f} ms",
                  flush=True)
else:
    res = [f"batch {B}: {ms_per_step(name, B, 60 if B == 1 else 15, 10):.2f} ms/step" for B in (1, 16)]
    print(name, *res, sep="  ")
