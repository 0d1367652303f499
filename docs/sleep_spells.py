"""How a sleep ends, in the learned Crafter world and in the real game: why does a PPO agent trained in the
learned world seldom sleep? (docs/results.md: Training an agent in the learned world)

    python docs/sleep_spells.py [BUNDLE] [--worlds 8] [--walk 60] [--after 80] [--then noop|moves] [--no-real]
                                [--out FILE.json] [KEY=VALUE ...]

KEY=VALUE pairs go to the learned env (e.g. `map_memory=false snap=false tile_hold=0`: the raw pipeline).

Each world walks at random (moves only) for `walk` steps, so the player is tired (real Crafter: energy falls a
point every 30 steps awake, and `sleep` does nothing at full energy), presses `sleep` once, then noops for
`after` steps (`--then moves`: random moves instead); the real game keeps a sleeper asleep until its energy is full, whatever the action, and pays
`wake_up` then. Learned: one vector env from its shipped start states (seed 0); real: worldsim/RealCrafter-v0
from world seeds 1,000,000 on, the same random moves. Printed per world: the step after the press on which
`wake_up` was paid (real: also the steps the player slept), and the map view's brightness (mean grey level of
its 7 tile rows) before the press and at offsets after it.
"""
import argparse
import json

import gymnasium as gym
import numpy as np
import torch
import yaml

import worldsim  # noqa: F401

ap = argparse.ArgumentParser()
ap.add_argument("bundle", nargs="?", default="crafter")
ap.add_argument("--worlds", type=int, default=8)
ap.add_argument("--walk", type=int, default=60)
ap.add_argument("--after", type=int, default=80)
ap.add_argument("--then", choices=["noop", "moves"], default="noop")
ap.add_argument("--no-real", action="store_true", help="the learned world only")
ap.add_argument("--out")
ap.add_argument("settings", nargs="*", help="KEY=VALUE for the learned env")
args = ap.parse_args()
if args.bundle and "=" in args.bundle:  # settings given without a bundle
    args.settings, args.bundle = [args.bundle] + args.settings, "crafter"

SETTINGS = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.settings)}  # typed: false, 0, 0.5, nearest
torch.set_num_threads(2)
SLEEP, VIEW = 6, 49  # action ids; the map view is the frame's top 7 tile rows (7 px each)
OFFSETS = [1, 2, 5, 10, 20, 30, 40, 60, 80]
moves = np.random.default_rng(0).integers(1, 5, size=(args.walk, args.worlds))
then = (np.zeros((args.after + 1, args.worlds), int) if args.then == "noop"
        else np.random.default_rng(1).integers(1, 5, size=(args.after + 1, args.worlds)))


def bright(frames):
    return np.asarray(frames, np.float64)[..., :VIEW, :, :].mean(axis=(-3, -2, -1))


def learned():
    kw = dict(SETTINGS) if args.bundle == "crafter" else {"bundle": args.bundle, **SETTINGS}
    venv = gym.make_vec("worldsim/Crafter-v0", num_envs=args.worlds, termination_threshold=2.0, **kw)
    venv.reset(seed=0)
    wake = venv.unwrapped.event_names.index("wake_up")
    for a in moves:
        obs = venv.step(a)[0]
    before = bright(obs)
    curve, woke = [], np.full(args.worlds, -1)
    for t in range(args.after + 1):
        obs, _, _, _, info = venv.step(np.full(args.worlds, SLEEP) if t == 0 else then[t])
        curve.append(bright(obs))
        woke[(woke < 0) & info["events"][:, wake]] = t
    venv.close()
    return before, np.array(curve), woke, None


def real():
    before, curves, woke, slept = [], [], [], []
    for i in range(args.worlds):
        env = gym.make("worldsim/RealCrafter-v0")
        env.reset(seed=1_000_000 + i)
        player = env.unwrapped.game._player
        for a in moves[:, i]:
            obs = env.step(int(a))[0]
        before.append(bright(obs))
        curve, w, n = [], -1, 0
        obs, _, _, _, info = env.step(SLEEP)  # t = 0: the press
        base = info["achievements"]["wake_up"]
        curve.append(bright(obs))
        n += player.sleeping
        for t in range(1, args.after + 1):
            obs, _, term, _, info = env.step(int(then[t, i]))
            curve.append(bright(obs))
            n += player.sleeping
            if w < 0 and info["achievements"]["wake_up"] > base:
                w = t
            if term:  # died in its sleep: the rest of the curve repeats its last frame
                curve += [curve[-1]] * (args.after - t)
                break
        curves.append(curve), woke.append(w), slept.append(n)
        env.close()
    return np.array(before), np.array(curves).T, np.array(woke), np.array(slept)


out = {"worlds": args.worlds, "walk": args.walk, "after": args.after, "then": args.then, "settings": SETTINGS}
for name, fn in ((("real", real),) if not args.no_real else ()) + ((args.bundle, learned),):
    before, curve, woke, slept = fn()
    out[name] = {"wake_up_step": woke.tolist(), "slept_steps": None if slept is None else slept.tolist(),
                 "brightness_before": round(float(before.mean()), 1),
                 "brightness_after": {t: round(float(curve[t].mean()), 1) for t in OFFSETS if t <= args.after}}
    print(name, json.dumps(out[name]), flush=True)
if args.out:
    json.dump(out, open(args.out, "w"), indent=1)
