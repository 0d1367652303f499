"""Does the learned Crafter world wake a sleeper when the frames say it must? (docs/results.md: Training an agent in
the learned world, "Where the waking is lost")

    python docs/wake_from_real.py [BUNDLE ...] [--data data/crafter_sleep] [--split test] [--before 0,2,5]
                                  [--set KEY=VALUE ...] [--out FILE.json]

The real game wakes a sleeper on the step after its energy count is full, and that count is drawn in the
inventory, so from the real frames up to the last sleeping one the waking is no guess. For each `wake_up` in the
collection's split (episodes collected with events, e.g. `worldsim collect ... sleep=0.1`), the learned env starts
from the 4 real frames ending k steps before the last sleeping frame (k in --before) and takes the real actions up
to the waking; the map view of the frame it makes then should no longer be grey. Printed per bundle and k: how
many of the wakings it woke (map view colour, mean of max - min over the channels, above 10: the real game's
sleeping views are 5-8, its others 12 or more), the mean colour, and the real frames' for scale. --set passes
settings to the learned env (e.g. `snap=false map_memory=false tile_hold=0`: the raw pipeline).
"""
import argparse
import json

import gymnasium as gym
import numpy as np
import torch
import yaml

import worldsim  # noqa: F401
from worldsim.data import load_episodes, load_manifest

ap = argparse.ArgumentParser()
ap.add_argument("bundles", nargs="*", default=["crafter"])
ap.add_argument("--data", default="data/crafter_sleep")
ap.add_argument("--split", default="test")
ap.add_argument("--before", default="0,2,5")
ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
ap.add_argument("--out")
args = ap.parse_args()
SETTINGS = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.set)}  # typed: false, 0
torch.set_num_threads(2)
W, VIEW, GREY = 4, 49, 10.0


def colour(frame):
    v = np.asarray(frame, np.float64)[..., :VIEW, :, :]
    return float((v.max(-1) - v.min(-1)).mean())


names = load_manifest(args.data)["env"].get("events")
if not names or "wake_up" not in names:
    raise SystemExit(f"{args.data} has no wake_up events: collect with events (worldsim collect ... sleep=0.1)")
eps = [ep for ep in load_episodes(args.data, split=args.split) if "events" in ep]
wakes = [(ep, int(t)) for ep in eps for t in np.flatnonzero(ep["events"][:, names.index("wake_up")])]
print(f"{len(wakes)} wakings in {len(eps)} {args.split} episodes of {args.data}")
out = {"data": args.data, "split": args.split, "settings": SETTINGS, "wakings": len(wakes), "bundles": {}}
for b in args.bundles:
    env = gym.make("worldsim/Crafter-v0", termination_threshold=2.0, **SETTINGS,
                   **({} if b == "crafter" else {"bundle": b}))
    out["bundles"][b] = {}
    for k in (int(x) for x in args.before.split(",")):
        rows = []
        for ep, t in wakes:  # transition t: frames[t] (asleep, energy full) -> frames[t + 1] (awake)
            s = t - k - W + 1
            if s < 0:
                continue
            env.reset(seed=len(rows), options={"context_frames": ep["frames"][s:t - k + 1],
                                               "context_actions": ep["actions"][s:t - k]})
            for j in range(k + 1):
                obs = env.step(int(ep["actions"][t - k + j]))[0]
            rows.append((colour(ep["frames"][t]), colour(ep["frames"][t + 1]), colour(obs)))
        r = np.array(rows)
        res = {"n": len(r), "woke": int((r[:, 2] > GREY).sum()), "colour": round(float(r[:, 2].mean()), 1),
               "real_asleep_colour": round(float(r[:, 0].mean()), 1), "real_woken_colour": round(float(r[:, 1].mean()), 1),
               "real_woke": int((r[:, 1] > GREY).sum())}
        out["bundles"][b][k] = res
        print(f"{b}, context ending {k} steps before the last sleeping frame: woke {res['woke']} of {res['n']} "
              f"(real {res['real_woke']}); view colour {res['colour']} (real asleep {res['real_asleep_colour']}, "
              f"woken {res['real_woken_colour']})", flush=True)
    env.close()
if args.out:
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
