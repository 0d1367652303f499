"""How long a sleep lasts in the learned Crafter world, from the first frames of real sleeps.

    python docs/sleep_from_real.py [--worlds 8] [--energy 5] [--out FILE.json] [KEY=VALUE ...]

For each world (real Crafter, seeds 1,000,000 on): the player's energy is set to `energy`, it makes 3 random
moves and presses `sleep`; the game then keeps it asleep, raising energy a point every 11 steps, and wakes it the
step after the count is full (11 * (9 - energy) + 1 steps, unless a zombie's blow wakes it first: such worlds are
left out). The learned env (the shipped bundle, KEY=VALUE settings, e.g. `ticks=false`) starts from the 4 real
frames ending on the sleep's first and is given noops for 150 steps. The frames are canvases (the game's frames
before its light, the learned env with light=false), exact where `unlight` gives a lit sleeper's canvas back to
a grey level. Printed per world: the real sleep's length, the learned one's (the steps until `wake_up` is paid, and until the view is no longer a sleeper's grey:
real_crafter.grey_view), and the steps on which the learned energy count rose.
"""
import argparse
import json

import gymnasium as gym
import numpy as np
import torch
import yaml

import worldsim  # noqa: F401
from worldsim.envs.real_crafter import RealCrafterEnv, grey_view

ap = argparse.ArgumentParser()
ap.add_argument("--worlds", type=int, default=8)
ap.add_argument("--energy", type=int, default=5)
ap.add_argument("--out")
ap.add_argument("settings", nargs="*", metavar="KEY=VALUE")
args = ap.parse_intermixed_args()
kw = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.settings)}
torch.set_num_threads(2)
AFTER = 150


def real_sleep(seed):
    """(frames, actions, index of the sleep's first frame, its length in steps) or None (woken by a blow)."""
    env, rng = RealCrafterEnv(canvas=True), np.random.default_rng(seed)
    _, info = env.reset(seed=seed)
    env.game._player.inventory["energy"] = args.energy
    frames, actions = [info["canvas"]], []
    for a in [int(m) for m in rng.integers(1, 5, size=3)] + [6]:
        info = env.step(a)[4]
        frames.append(info["canvas"]), actions.append(a)
    first, slept = len(frames) - 1, 1
    while env.game._player.sleeping:
        _, _, term, _, info = env.step(0)
        frames.append(info["canvas"]), actions.append(0)
        if term:
            return None
        slept += env.game._player.sleeping
    if env.game._player.inventory["energy"] < 9:
        return None  # woken by a blow before the count was full
    return np.stack(frames), np.array(actions), first, slept


env = gym.make("worldsim/Crafter-v0", termination_threshold=2.0, light=False, **kw)
rows = []
seed = 1_000_000
while len(rows) < args.worlds:
    got = real_sleep(seed)
    seed += 1
    if got is None:
        continue
    frames, actions, first, slept = got
    env.reset(seed=seed, options={"context_frames": frames[first - 3:first + 1],
                                  "context_actions": actions[first - 3:first], "clock": first})
    paid, grey_until, rises = -1, -1, []
    for t in range(1, AFTER + 1):
        obs, _, _, _, info = env.step(0)  # canvases (light=false)
        if "energy_up" in info.get("ticks", []):
            rises.append(t)
        if paid < 0 and "wake_up" in info["events"]:
            paid = t
        if grey_until < 0 and not grey_view(torch.as_tensor(obs[None]))[0]:
            grey_until = t
    rows.append({"seed": seed - 1, "real_steps_asleep": int(slept), "learned_wake_up_step": paid,
                 "learned_first_awake_view": grey_until, "learned_energy_rises": rises})
    print(f"world {seed - 1}: real asleep {slept} steps (woke on step {slept}); learned: wake_up at {paid}, "
          f"first awake view at {grey_until}, energy rose at {rises}", flush=True)
env.close()
woke = [r for r in rows if r["learned_wake_up_step"] > 0]
print(f"{len(woke)} of {len(rows)} learned sleepers paid wake_up within {AFTER} steps; "
      f"wake_up minus the real wake: {[r['learned_wake_up_step'] - r['real_steps_asleep'] for r in woke]}")
if args.out:
    with open(args.out, "w") as f:
        json.dump({"energy": args.energy, "settings": kw, "after": AFTER, "worlds": rows}, f, indent=1)
