"""How a sleep ends, in the learned Crafter world and in the real game: why does a PPO agent trained in the
learned world seldom sleep? (docs/results.md: Training an agent in the learned world)

    python docs/sleep_spells.py [BUNDLE] [--worlds 8] [--walk 60] [--after 80] [--then noop|moves] [--no-real]
                                [--out FILE.json] [--strip FILE.png] [KEY=VALUE ...]

KEY=VALUE pairs go to the learned env (e.g. `map_memory=false snap=false tile_hold=0`: the raw pipeline).

Each world walks at random (moves only) for `walk` steps, so the player is tired (real Crafter: energy falls a
point every 30 steps awake, and `sleep` does nothing at full energy), presses `sleep` once, then noops for
`after` steps (`--then moves`: random moves instead); the real game keeps a sleeper asleep until its energy is full, whatever the action, and pays
`wake_up` then. Learned: one vector env from its shipped start states (seed 0); real: worldsim/RealCrafter-v0
from world seeds 1,000,000 on, the same random moves. Printed per world: the step after the press on which
`wake_up` was paid (real: also the steps the player slept), the step on which the inventory's energy count first
changed (the real game wakes a sleeper the step after it reaches full; it rises a point per 11 steps asleep, on
a counter the frames do not show), and the map view's brightness (mean grey level of
its 7 tile rows), its colour and how many worlds' views are grey (asleep) before the press and at offsets after it.
--strip writes an image: for each of the first 4 worlds a real row and a learned row, frames before the press and
at STRIP_OFFSETS after it.
"""
import argparse
import json

import gymnasium as gym
import numpy as np
import torch
import yaml
from PIL import Image

import worldsim  # noqa: F401

ap = argparse.ArgumentParser()
ap.add_argument("bundle", nargs="?", default="crafter")
ap.add_argument("--worlds", type=int, default=8)
ap.add_argument("--walk", type=int, default=60)
ap.add_argument("--after", type=int, default=80)
ap.add_argument("--then", choices=["noop", "moves"], default="noop")
ap.add_argument("--no-real", action="store_true", help="the learned world only")
ap.add_argument("--out")
ap.add_argument("--strip", help="PNG: real and learned frames of the first 4 worlds around the press")
ap.add_argument("settings", nargs="*", help="KEY=VALUE for the learned env")
args = ap.parse_intermixed_args()  # settings may follow the flags
if args.bundle and "=" in args.bundle:  # settings given without a bundle
    args.settings, args.bundle = [args.bundle] + args.settings, "crafter"

SETTINGS = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.settings)}  # typed: false, 0, 0.5, nearest
torch.set_num_threads(2)
SLEEP, VIEW = 6, 49  # action ids; the map view is the frame's top 7 tile rows (7 px each)
OFFSETS = [1, 2, 5, 10, 20, 30, 40, 60, 80]
STRIP_OFFSETS = [t for t in (0, 1, 5, 10, 12, 15, 20, 40, 80) if t <= args.after]  # and one before the press
shots = {}  # name -> (worlds, offsets, H, W, 3) for --strip
moves = np.random.default_rng(0).integers(1, 5, size=(args.walk, args.worlds))
then = (np.zeros((args.after + 1, args.worlds), int) if args.then == "noop"
        else np.random.default_rng(1).integers(1, 5, size=(args.after + 1, args.worlds)))


def energy_tile(frames):  # the inventory's energy count: its first row's fourth tile (health, food, drink, energy)
    return np.asarray(frames, np.float64)[..., VIEW:VIEW + 7, 21:28, :]


def ticked(frames, at_press):  # the energy tile differs from the press's frame (a count drawn anew: 26 grey levels)
    return np.abs(energy_tile(frames) - at_press).mean(axis=(-3, -2, -1)) > 8


def view_light(frames):
    """Per world: the map view's mean grey level, and its colour (mean of max - min over the channels; the real
    game draws a sleeper's view in grey: colour 5-8 in data/crafter_sleep's 1,699 sleeping frames, 12 or more in
    its 15,266 others, nights included)."""
    v = np.asarray(frames, np.float64)[..., :VIEW, :, :]
    return np.stack([v.mean(axis=(-3, -2, -1)), (v.max(-1) - v.min(-1)).mean(axis=(-2, -1))], -1)


def learned():
    kw = dict(SETTINGS) if args.bundle == "crafter" else {"bundle": args.bundle, **SETTINGS}
    venv = gym.make_vec("worldsim/Crafter-v0", num_envs=args.worlds, termination_threshold=2.0, **kw)
    venv.reset(seed=0)
    wake = venv.unwrapped.event_names.index("wake_up")
    for a in moves:
        obs = venv.step(a)[0]
    before, frames = view_light(obs), [obs]
    curve, woke, tick = [], np.full(args.worlds, -1), np.full(args.worlds, -1)
    for t in range(args.after + 1):
        obs, _, _, _, info = venv.step(np.full(args.worlds, SLEEP) if t == 0 else then[t])
        curve.append(view_light(obs))
        woke[(woke < 0) & info["events"][:, wake]] = t
        if t == 0:
            at_press = energy_tile(obs)
        tick[(tick < 0) & ticked(obs, at_press)] = t
        if t in STRIP_OFFSETS:
            frames.append(obs)
    venv.close()
    shots["learned"] = np.stack(frames, 1)
    return before, np.array(curve), woke, None, tick


def real():
    before, curves, woke, slept, real_frames, ticks = [], [], [], [], [], []
    for i in range(args.worlds):
        env = gym.make("worldsim/RealCrafter-v0")
        env.reset(seed=1_000_000 + i)
        player = env.unwrapped.game._player
        for a in moves[:, i]:
            obs = env.step(int(a))[0]
        before.append(view_light(obs))
        frames = [obs]
        curve, w, n, k = [], -1, 0, -1
        obs, _, _, _, info = env.step(SLEEP)  # t = 0: the press
        base, at_press = info["achievements"]["wake_up"], energy_tile(obs)
        curve.append(view_light(obs))
        frames.append(obs)
        n += player.sleeping
        for t in range(1, args.after + 1):
            obs, _, term, _, info = env.step(int(then[t, i]))
            curve.append(view_light(obs))
            if t in STRIP_OFFSETS:
                frames.append(obs)
            n += player.sleeping
            if w < 0 and info["achievements"]["wake_up"] > base:
                w = t
            if k < 0 and ticked(obs, at_press):
                k = t
            if term:  # died in its sleep: the rest of the curve repeats its last frame
                curve += [curve[-1]] * (args.after - t)
                frames += [frames[-1]] * (len(STRIP_OFFSETS) + 1 - len(frames))
                break
        curves.append(curve), woke.append(w), slept.append(n), ticks.append(k)
        real_frames.append(frames)
        env.close()
    shots["real"] = np.array(real_frames)
    return np.array(before), np.array(curves).transpose(1, 0, 2), np.array(woke), np.array(slept), np.array(ticks)


out = {"worlds": args.worlds, "walk": args.walk, "after": args.after, "then": args.then, "settings": SETTINGS}
for name, fn in ((("real", real),) if not args.no_real else ()) + ((args.bundle, learned),):
    before, curve, woke, slept, tick = fn()
    out[name] = {"wake_up_step": woke.tolist(), "slept_steps": None if slept is None else slept.tolist(),
                 "energy_tick_step": tick.tolist(),
                 "brightness_before": round(float(before[..., 0].mean()), 1),
                 "brightness_after": {t: round(float(curve[t][..., 0].mean()), 1) for t in OFFSETS if t <= args.after},
                 "colour_before": round(float(before[..., 1].mean()), 1),
                 "colour_after": {t: round(float(curve[t][..., 1].mean()), 1) for t in OFFSETS if t <= args.after},
                 "grey_views_after": {t: int((curve[t][..., 1] < 10).sum()) for t in OFFSETS if t <= args.after}}
    print(name, json.dumps(out[name]), flush=True)
if args.out:
    json.dump(out, open(args.out, "w"), indent=1)
if args.strip:  # rows: real, learned, for each of the first 4 worlds (learned only with --no-real); 2x nearest
    rows = [np.concatenate(list(shots[k][i]), 1) for i in range(min(4, args.worlds)) for k in ("real", "learned")
            if k in shots]
    img = np.concatenate(rows, 0).repeat(2, 0).repeat(2, 1)
    Image.fromarray(img).save(args.strip)
    print("strip:", args.strip, "columns: before the press, then", STRIP_OFFSETS, "steps after it")
