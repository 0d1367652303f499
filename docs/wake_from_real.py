"""Does the learned Crafter world begin and end a sleep when the real frames say it must? (docs/results.md: Training
an agent in the learned world, "Where the waking is lost")

    python docs/wake_from_real.py [BUNDLE ...] [--data data/crafter_sleep_heldout] [--split test]
                                  [--before 0,2,5] [--no-presses] [--set KEY=VALUE ...] [--out FILE.json]

Crafter's rules, both read from the inventory's energy count, which the frames show: `sleep` puts the player to
sleep only below full energy (at full it does nothing), and a sleeper wakes on the step after the count is full
again. So from real frames both are no guess. For episodes collected with events (`worldsim collect ...
sleep=0.1`), the learned env starts from 4 real frames and takes the real actions:
- presses: every `sleep` pressed while awake, from the 4 frames up to it. Counted: of the presses that put the
  real player to sleep, how many the learned view greys too; of those at full energy (nothing happens), how
  many it greys anyway.
- wakings: every `wake_up`, from the 4 frames ending k steps before the last sleeping frame (k in --before), the
  real actions up to the waking. Counted: how many it wakes, and in how many a view before the waking step was
  already awake where the real one was grey (woken too soon: k > 0 only).
A view is grey (asleep) when its colour, the mean of max - min over the channels of the map view, is under 10:
the real game's sleeping views are 5-8, its others 12 or more (nights included). --set passes settings to the
learned env (e.g. `snap=false map_memory=false tile_hold=0`: the raw pipeline).
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
ap.add_argument("--data", default="data/crafter_sleep_heldout")
ap.add_argument("--split", default="test")
ap.add_argument("--before", default="0,2,5")
ap.add_argument("--no-presses", action="store_true", help="the wakings only")
ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
ap.add_argument("--out")
args = ap.parse_args()
SETTINGS = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.set)}  # typed: false, 0
torch.set_num_threads(2)
W, VIEW, GREY, SLEEP = 4, 49, 10.0, 6


def colour(frame):
    v = np.asarray(frame, np.float64)[..., :VIEW, :, :]
    return float((v.max(-1) - v.min(-1)).mean())


names = load_manifest(args.data)["env"].get("events")
if not names or "wake_up" not in names:
    raise SystemExit(f"{args.data} has no wake_up events: collect with events (worldsim collect ... sleep=0.1)")
eps = [ep for ep in load_episodes(args.data, split=args.split) if "events" in ep]
wakes = [(ep, int(t)) for ep in eps for t in np.flatnonzero(ep["events"][:, names.index("wake_up")])]
presses = [] if args.no_presses else [(ep, int(t)) for ep in eps for t in np.flatnonzero(ep["actions"] == SLEEP)
                                      if t >= W - 1 and colour(ep["frames"][t]) > GREY]  # while awake, 4 frames before
print(f"{len(wakes)} wakings and {len(presses)} presses while awake in {len(eps)} {args.split} episodes of {args.data}")
out = {"data": args.data, "split": args.split, "settings": SETTINGS, "wakings": len(wakes), "bundles": {}}


def start(env, ep, last, seed):
    """The learned env from the 4 real frames up to frame `last` and the actions between them."""
    env.reset(seed=seed, options={"context_frames": ep["frames"][last - W + 1:last + 1],
                                  "context_actions": ep["actions"][last - W + 1:last]})


for b in args.bundles:
    env = gym.make("worldsim/Crafter-v0", termination_threshold=2.0, **SETTINGS,
                   **({} if b == "crafter" else {"bundle": b}))
    res = out["bundles"][b] = {}
    made = {True: [], False: []}  # real player fell asleep -> the learned view's colour after the press
    for i, (ep, t) in enumerate(presses):
        start(env, ep, t, i)
        made[colour(ep["frames"][t + 1]) <= GREY].append(colour(env.step(SLEEP)[0]))
    asleep, full = (np.array(made[v]) for v in (True, False))
    if presses:
        res["presses"] = {"fell_asleep": len(asleep), "greyed": int((asleep <= GREY).sum()),
                          "colour_after": round(float(asleep.mean()), 1), "at_full_energy": len(full),
                          "greyed_at_full": int((full <= GREY).sum()), "colour_after_full": round(float(full.mean()), 1)}
        print(f"{b}: of {len(asleep)} presses that put the real player to sleep, the learned view greyed on "
              f"{(asleep <= GREY).sum()} (colour after {asleep.mean():.1f}); of {len(full)} at full energy (nothing "
              f"happens), it greyed on {(full <= GREY).sum()} (colour after {full.mean():.1f})", flush=True)
    for k in (int(x) for x in args.before.split(",")):
        rows = []
        for ep, t in wakes:  # transition t: frames[t] (asleep, energy full) -> frames[t + 1] (awake)
            if t - k < W - 1:
                continue
            start(env, ep, t - k, len(rows))
            early = False  # a view made before the waking step that is no longer grey: woken too soon
            for j in range(k + 1):
                obs = env.step(int(ep["actions"][t - k + j]))[0]
                early |= j < k and colour(obs) > GREY and colour(ep["frames"][t - k + j + 1]) <= GREY
            rows.append((colour(ep["frames"][t]), colour(ep["frames"][t + 1]), colour(obs), early))
        r = np.array(rows)
        res[f"wake_{k}"] = w = {
            "n": len(r), "woke": int((r[:, 2] > GREY).sum()), "woke_early": int(r[:, 3].sum()),
            "colour": round(float(r[:, 2].mean()), 1), "real_woke": int((r[:, 1] > GREY).sum()),
            "real_asleep_colour": round(float(r[:, 0].mean()), 1), "real_woken_colour": round(float(r[:, 1].mean()), 1)}
        print(f"{b}, context ending {k} steps before the last sleeping frame: woke {w['woke']} of {w['n']} "
              f"(real {w['real_woke']}), {w['woke_early']} of them before the real waking; view colour {w['colour']} "
              f"(real asleep {w['real_asleep_colour']}, woken {w['real_woken_colour']})", flush=True)
    env.close()
if args.out:
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
