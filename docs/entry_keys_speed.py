"""What keeping each codebook's sorted hash keys saves a Crafter step (`codebook._entry_keys`, 2026-12-07):

    python docs/entry_keys_speed.py [ROUNDS] [--out FILE.json]

The shipped env at batch 1 takes the same 300 random actions from the same reset, with the keys made on every
lookup (as before) and kept per codebook tensor (now), one after the other in each round, in one process (this
VM's speed drifts between hours). Prints ms per step per round and the medians."""
import argparse
import json
import statistics
import time

import gymnasium as gym
import torch

import worldsim  # noqa: F401  (registers the envs)
import worldsim.codebook as cbm

ap = argparse.ArgumentParser()
ap.add_argument("rounds", nargs="?", type=int, default=4)
ap.add_argument("--out")
args = ap.parse_args()
kept = cbm._entry_keys


def made_each_time(cb):  # the lookup before: hash and sort the codebook on every call
    probe = torch.linspace(1.0, 2.0, cb.shape[1], dtype=torch.float64, device=cb.device)
    keys = (cb.double() * probe).sum(-1)
    order = keys.argsort()
    return probe, keys[order], order


env = gym.make("worldsim/Crafter-v0", termination_threshold=2.0)
env.reset(seed=0)
env.action_space.seed(0)
acts = [env.action_space.sample() for _ in range(300)]
for _ in range(10):  # warm-up
    env.step(0)
ms = {"made_each_time": [], "kept": []}
for _ in range(args.rounds):
    for name, f in (("made_each_time", made_each_time), ("kept", kept)):
        cbm._entry_keys = f
        env.reset(seed=0)
        t = time.perf_counter()
        for a in acts:
            env.step(a)
        ms[name].append(round((time.perf_counter() - t) / len(acts) * 1e3, 2))
cbm._entry_keys = kept
out = {"ms_per_step": ms, "median": {k: statistics.median(v) for k, v in ms.items()}, "threads": torch.get_num_threads()}
print(json.dumps(out))
if args.out:
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
