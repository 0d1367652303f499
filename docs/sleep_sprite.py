"""Does a model trained on canvases that leave a sleeper's grey to the env (`collect grey_sleep=false`, a
bundle's env.sleep) draw the sleep in its one tile, the player's sprite?

    python docs/sleep_sprite.py BUNDLE [BUNDLE ...] [--seeds 12] [--out FILE.json] [KEY=VALUE ...]

Real Crafter sleepers (random moves until the energy count falls below full, `sleep`, noops until the game wakes
the player on a full count; a blow or a death drops the world), drawn as such canvases. For each, three starts
from 4 real canvases, the learned env (light=False: canvases in and out) taking the real action once:
- press: the context ends awake, tired, and the action is `sleep`: the game draws the sleeping sprite;
- mid: 5 steps into the sleep, the count below full: the game keeps the sleeping sprite;
- wake: the last sleeping frame, the count full: the game draws the player awake.
Counted right where `sleeping` (envs/real_crafter.py: the nearest of the player's five sprites) reads the
model's frame as the game's. KEY=VALUE pairs go to the learned env (e.g. snap=false).
"""
import argparse
import json

import gymnasium as gym
import numpy as np
import torch

import worldsim  # noqa: F401
from worldsim.envs.real_crafter import real_sleeper, sleeping

ap = argparse.ArgumentParser()
ap.add_argument("bundles", nargs="+")
ap.add_argument("--seeds", type=int, default=12)
ap.add_argument("--out")
args, extra = ap.parse_known_args()
extra += [b for b in args.bundles if "=" in b]  # KEY=VALUE pairs land among the bundles
args.bundles = [b for b in args.bundles if "=" not in b]
kw = dict(kv.split("=", 1) for kv in extra)
kw = {k: {"true": True, "false": False}.get(v, v) for k, v in kw.items()}


asleep = lambda frame: bool(sleeping(torch.as_tensor(np.asarray(frame))[None])[0])
sleepers = {s: r[:3] for s in range(args.seeds)
            if (r := real_sleeper(s, light=False, grey_sleep=False)) is not None}
out = {"seeds": sorted(sleepers), "env": {k: str(v) for k, v in kw.items()}, "bundles": {}}
for bundle in args.bundles:
    env = gym.make("worldsim/Crafter-v0", bundle=bundle, termination_threshold=2.0, light=False, **kw)
    right = {"press": [], "mid": [], "wake": []}
    for seed, (frames, actions, press) in sleepers.items():
        woke = len(frames) - 1
        for case, last in (("press", press), ("mid", press + 5), ("wake", woke - 1)):
            env.reset(seed=seed, options={"context_frames": frames[last - 3:last + 1],
                                          "context_actions": actions[last - 3:last], "clock": last})
            obs = env.step(int(actions[last]))[0]
            right[case].append(asleep(obs) == asleep(frames[last + 1]))
    env.close()
    out["bundles"][bundle] = {case: f"{sum(v)} of {len(v)}" for case, v in right.items()}
    print(bundle, out["bundles"][bundle])
if args.out:
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
