"""What a real step changed that the model's step does not (docs/results.md, Crafter: terrain prior): every held-out
transition of data/crafter-heldout with noop (0) or do (5) after 4 real frames, stepped by the shipped model
from those frames (as `worldsim eval` scores the heads); for each 7 x 7 tile the real step changed by more than
8 grey levels, whether the model's tile is closer to the real new one than to the old, split into the map
view and the inventory rows. Extra KEY=VALUE arguments go to WorldSimulator (e.g. tile_hold=0 snap=false);
bundle=PATH steps another bundle.

    python docs/do_steps.py
"""
import pathlib
import sys

import numpy as np
from omegaconf import OmegaConf

from worldsim import DEFAULT_CRAFTER_BUNDLE
from worldsim.data import load_episodes
from worldsim.heads import step_transitions, transitions
from worldsim.simulator import WorldSimulator, load_bundle


kw = OmegaConf.to_container(OmegaConf.from_dotlist(sys.argv[1:]))  # KEY=VALUE, typed
b = load_bundle(str(kw.pop("bundle", DEFAULT_CRAFTER_BUNDLE)))
eps = load_episodes(pathlib.Path("data/crafter-heldout"))
W, B = 4, 32
items = [(e, s) for e, s in transitions(eps, W) if int(eps[e]["actions"][s + W - 1]) in (0, 5)]
sim = WorldSimulator(b, B, **kw)
stats = {}
for i, (res, k) in zip(range(0, len(items), B), step_transitions(sim, eps, items, np.random.default_rng(0), decode=True)):
    for j, (e, s) in enumerate(items[i:i + k]):
        a = int(eps[e]["actions"][s + W - 1])
        last, real, model = (x.astype(np.int16) for x in (eps[e]["frames"][s + W - 1], eps[e]["frames"][s + W],
                                                         res.frames[j]))
        changed = np.abs(real - last).max(-1)[:63, :63].reshape(9, 7, 9, 7).max(axis=(1, 3)) > 8
        for r, c in zip(*np.nonzero(changed)):
            tile = (slice(7 * r, 7 * r + 7), slice(7 * c, 7 * c + 7))
            closer = np.abs(model[tile] - real[tile]).mean() < np.abs(model[tile] - last[tile]).mean()
            stats.setdefault((a, "inventory" if r >= 7 else "map"), [0, 0])[int(closer)] += 1
for (a, part), (no, yes) in sorted(stats.items()):
    print(f"{b.env['action_meanings'][a]:5s} {part:9s}: {no + yes:5d} tiles the real step changed; the model's tile "
          f"closer to the new one in {yes} ({yes / (no + yes):.2f})")
