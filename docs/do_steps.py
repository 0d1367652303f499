"""What a real step changed that the model's step does not (README, Crafter: terrain prior): every held-out
transition of data/crafter-heldout with noop (0) or do (5) after 4 real frames, stepped by the shipped model
from those frames (as `worldsim eval` scores the heads); for each 7 x 7 tile the real step changed by more than
8 grey levels, whether the model's tile is closer to the real new one than to the old, split into the map
view and the inventory rows. Extra KEY=VALUE arguments go to WorldSimulator (e.g. tile_hold=0 snap=false).

    python docs/do_steps.py
"""
import pathlib
import sys

import numpy as np

from worldsim import DEFAULT_CRAFTER_BUNDLE
from worldsim.data import index_actions, load_episodes, stack_actions
from worldsim.heads import transitions
from worldsim.simulator import WorldSimulator, load_bundle


def value(v):
    return {"true": True, "false": False}.get(v.lower(), v if not v.replace(".", "", 1).isdigit() else float(v))


b = load_bundle(str(DEFAULT_CRAFTER_BUNDLE))
eps = load_episodes(pathlib.Path("data/crafter-heldout"))
W, B = 4, 32
items = [(e, s) for e, s in transitions(eps, W) if int(eps[e]["actions"][s + W - 1]) in (0, 5)]
sim = WorldSimulator(b, B, **{k: value(v) for k, v in (a.split("=", 1) for a in sys.argv[1:])})
rng = np.random.default_rng(0)
shape = sim.latent_shape
stats = {}
for i in range(0, len(items), B):
    chunk = items[i:i + B]
    k = len(chunk)
    chunk = chunk + [chunk[-1]] * (B - k)
    ctx = np.stack([eps[e]["frames"][s:s + W] for e, s in chunk])
    ctx_a = stack_actions([index_actions(eps[e]["actions"], slice(s, s + W - 1)) for e, s in chunk])
    act = stack_actions([index_actions(eps[e]["actions"], s + W - 1) for e, s in chunk])
    sim.reset(range(B), ctx, ctx_a, rng.standard_normal((B, W, *shape)))
    res = sim.step(act, rng.standard_normal((B, *shape)), rng.standard_normal((B, *shape)))
    for j in range(k):
        e, s = chunk[j]
        last, real, model = (x.astype(np.int16) for x in (ctx[j, -1], eps[e]["frames"][s + W], res.frames[j]))
        changed = np.abs(real - last).max(-1)[:63, :63].reshape(9, 7, 9, 7).max(axis=(1, 3)) > 8
        for r, c in zip(*np.nonzero(changed)):
            tile = (slice(7 * r, 7 * r + 7), slice(7 * c, 7 * c + 7))
            closer = np.abs(model[tile] - real[tile]).mean() < np.abs(model[tile] - last[tile]).mean()
            stats.setdefault((int(act[j]), "inventory" if r >= 7 else "map"), [0, 0])[int(closer)] += 1
for (a, part), (no, yes) in sorted(stats.items()):
    print(f"{b.env['action_meanings'][a]:5s} {part:9s}: {no + yes:5d} tiles the real step changed; the model's tile "
          f"closer to the new one in {yes} ({yes / (no + yes):.2f})")
