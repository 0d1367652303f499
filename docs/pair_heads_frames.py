"""Do heads that read the frame pair (heads_input="pair") leave the learned world's frames as they were?

    python docs/pair_heads_frames.py BUNDLE_A BUNDLE_B [--steps 300] [--seeds 0,1,2,3] [--out F.json] [KEY=VALUE ...]

Both bundles' envs are stepped side by side from the same seed with the same random actions (the wrappers left
out, so an end drawn by one bundle's heads does not stop the walk), and their frames are compared step by step.
Why: a "pair" commit pass runs one copy of the frame where the "window" one ran two, so its keys come from a
matrix product over half the rows; they should agree to float rounding, and the frames, snapped to the
codebook, exactly; but int8 (the shipped default) quantizes each matrix product's input with one scale for all
its rows, so there the keys depend on the other copy's values too (`quantize=none` leaves that out).
KEY=VALUE settings go to both envs. Prints per seed the steps whose frames are identical, the first that is
not and the largest difference.
"""
import argparse
import json

import gymnasium as gym
import numpy as np

import yaml

import worldsim  # noqa: F401

ap = argparse.ArgumentParser()
ap.add_argument("a")
ap.add_argument("b")
ap.add_argument("--steps", type=int, default=300)
ap.add_argument("--seeds", default="0,1,2,3")
ap.add_argument("--out")
ap.add_argument("settings", nargs="*", metavar="KEY=VALUE")
args = ap.parse_intermixed_args()
kw = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.settings)}
out = {"a": args.a, "b": args.b, "steps": args.steps, "settings": kw, "seeds": {}}
for seed in map(int, args.seeds.split(",")):
    envs = [gym.make("worldsim/Crafter-v0", bundle=p, **kw).unwrapped for p in (args.a, args.b)]
    obs = [e.reset(seed=seed)[0] for e in envs]
    rng = np.random.default_rng(seed)
    same, worst = int(np.array_equal(*obs)), int(np.abs(obs[0].astype(int) - obs[1]).max())
    first = None if worst == 0 else 0
    for t in range(1, args.steps + 1):
        a = int(rng.integers(17))
        obs = [e.step(a)[0] for e in envs]
        d = int(np.abs(obs[0].astype(int) - obs[1]).max())
        same += d == 0
        worst = max(worst, d)
        if d and first is None:
            first = t
    out["seeds"][seed] = {"identical_frames": same, "of": args.steps + 1, "first_different": first,
                          "largest_difference": worst}
    print(seed, out["seeds"][seed], flush=True)
if args.out:
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
