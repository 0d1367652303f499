"""Sleeps in the stability rollout: does a sleep in the learned Crafter world end?

    python docs/sleep_rollout.py [STEPS=10000] [--out FILE.json] [KEY=VALUE ...]

The eval's stability rollout, step for step (the shipped env, explorer and world seed 1,000,000 as `worldsim eval`
runs them, the night's noise at its mean; KEY=VALUE settings go to the env, e.g. `ticks=false`). Each step's
canvas is read for a sleeper (real_crafter.grey_view, the map view mostly a sleeper's grey) and the energy ticks
and `wake_up` events are counted. Printed: each sleep (a run of sleeping frames: its first step, its length,
whether `wake_up` was paid at its end), and per 1,000 steps the share of steps asleep and the energy falls and
rises. The real game: energy falls a point per 30 steps awake and rises a point per 11 asleep; a sleep lasts
until the count is full.
"""
import argparse
import json

import gymnasium as gym
import numpy as np
import torch
import yaml

import worldsim  # noqa: F401
from worldsim.agents import make_agent
from worldsim.envs.real_crafter import grey_view

ap = argparse.ArgumentParser()
ap.add_argument("steps", nargs="?", type=int, default=10000)
ap.add_argument("--out")
ap.add_argument("settings", nargs="*", metavar="KEY=VALUE")
args = ap.parse_intermixed_args()
kw = {"light_noise": "mean", **{k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.settings)}}
torch.set_num_threads(2)
SEED, BLOCK = 1_000_000, 1000
env = gym.make("worldsim/Crafter-v0", termination_threshold=2.0, horizon=args.steps + 1, **kw)
agent = make_agent("explorer", env.action_space, seed=SEED)
obs, _ = env.reset(seed=SEED)
agent.reset()
names = env.unwrapped.tick_names
asleep = np.zeros(args.steps, bool)
woke = np.zeros(args.steps, bool)
falls, rises = np.zeros(args.steps, bool), np.zeros(args.steps, bool)
for t in range(args.steps):
    obs, _, _, _, info = env.step(agent.act(obs))
    asleep[t] = bool(grey_view(torch.as_tensor(info["canvas"][None]))[0])
    woke[t] = "wake_up" in info.get("events", [])
    ticks = info.get("ticks", [])
    falls[t], rises[t] = "energy_down" in ticks, "energy_up" in ticks
env.close()
edges = np.flatnonzero(np.diff(np.concatenate([[0], asleep.astype(int), [0]])))
spells = []
for s, e in zip(edges[::2], edges[1::2]):  # steps s .. e-1 asleep
    spells.append({"start": int(s) + 1, "steps": int(e - s), "ended": bool(e < args.steps),
                   "wake_up": bool(woke[max(e - 1, 0):min(e + 2, args.steps)].any())})
blocks = [{"steps": f"{b + 1}-{min(b + BLOCK, args.steps)}", "asleep": round(float(asleep[b:b + BLOCK].mean()), 3),
           "energy_falls": int(falls[b:b + BLOCK].sum()), "energy_rises": int(rises[b:b + BLOCK].sum()),
           "wake_up": int(woke[b:b + BLOCK].sum())} for b in range(0, args.steps, BLOCK)]
out = {"steps": args.steps, "settings": kw, "tick_types": names, "sleeps": spells, "blocks": blocks,
       "asleep_share": round(float(asleep.mean()), 4), "longest_sleep": max((s["steps"] for s in spells), default=0)}
for s in spells:
    print(f"sleep from step {s['start']}: {s['steps']} steps, " + ("ended" if s["ended"] else "to the end")
          + (", wake_up paid" if s["wake_up"] else ""))
for b in blocks:
    print(f"steps {b['steps']:>11}: asleep {b['asleep']:.1%}, energy falls {b['energy_falls']}, rises "
          f"{b['energy_rises']}, wake_up {b['wake_up']}")
print(f"{len(spells)} sleeps, longest {out['longest_sleep']} steps, asleep {out['asleep_share']:.1%} of steps")
if args.out:
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
