"""How many of a Crafter model's action-following misses are decided by ground the move reveals.

    python docs/following_ceiling.py [BUNDLE]   (default: the shipped model; data/crafter-heldout's probes)

The same probes and generation as `worldsim eval` (cache_dir/following_probes.npz, counted where the real
outcomes differ; one step of the model per probe action from the same noise). A move that scrolls the view
brings in a strip of ground (one tile wide, at the edge it moves towards) that no context frame shows, so no
model can know it; when the real outcomes differ mostly there, a probe is decided by luck. For each counted
probe of a scrolling move this prints whether the probe is a hit
  - for the model as it is;
  - for the model with that strip made exact (pasted from the real outcome): misses that this turns into hits
    were decided in the strip;
  - for an oracle, the real outcome with that strip replaced by the model's: exact everywhere the context can
    tell, the model's guess where it cannot. Its misses bound what any model that guesses the strip as this one
    does can reach.
A move scrolled when its real outcome matches the last context frame shifted by one tile (7 px, Crafter's
64x64 render: the world view is the top 49 rows, 9 x 7 tiles) better than unshifted.
"""
import sys
from collections import Counter

import numpy as np
import torch

from worldsim.cli import load_config
from worldsim.evaluate import CRAFTER_PROBE, distinct_outcome, probe_steps, psnr_np
from worldsim.simulator import WorldSimulator, load_bundle

torch.set_num_threads(2)
b = load_bundle(sys.argv[1] if len(sys.argv) > 1 else "worldsim/assets/crafter")
cfg = load_config("eval", ["cache_dir=data/crafter-heldout"])
W = b.dit.config.context_frames
names = list(CRAFTER_PROBE)
sim = WorldSimulator(b, len(names), 1)
rng = np.random.default_rng(0)
U, VIEW = 7, 49  # tile size and world-view height in pixels
SHIFT = {"move_left": (0, U), "move_right": (0, -U), "move_up": (U, 0), "move_down": (-U, 0)}  # content moves by
STRIP = {"move_left": np.s_[:VIEW, :U], "move_right": np.s_[:VIEW, 8 * U:], "move_up": np.s_[:U, :],
         "move_down": np.s_[VIEW - U:VIEW, :]}


def scrolled(out, last, name):
    dy, dx = SHIFT[name]
    a, b_ = out[:VIEW].astype(float), last[:VIEW].astype(float)
    H, Wd = a.shape[:2]
    moved = np.abs(a[max(dy, 0):H + min(dy, 0), max(dx, 0):Wd + min(dx, 0)]
                   - b_[max(-dy, 0):H + min(-dy, 0), max(-dx, 0):Wd + min(-dx, 0)]).mean()
    return moved < np.abs(a - b_).mean()


def closest(frame, real):
    return int(np.argmax(psnr_np(frame[None].astype(float), real)))


count = Counter()
for ctx, ctx_a, probe, real, gen in probe_steps(cfg, sim, rng, names, W):
    real = real.astype(float)
    for i, n in enumerate(names):
        if not distinct_outcome(real, i):
            continue  # not counted by the eval either
        hit = closest(gen[i], real) == i
        count["counted"] += 1
        count["hits"] += hit
        if n == "noop" or not scrolled(real[i], ctx[-1], n):  # blocked moves turn the player only
            kind = "noop" if n == "noop" else "move, no scroll"
            count[kind] += 1
            count["hits, " + kind] += hit
            continue
        s = STRIP[n]
        strip_exact = gen[i].astype(float).copy()
        strip_exact[s] = real[i][s]
        oracle = real[i].copy()
        oracle[s] = gen[i][s]
        count["scrolls"] += 1
        count["hits, scroll"] += hit
        count["hits, scroll, strip made exact"] += closest(strip_exact, real) == i
        count["hits, scroll, oracle"] += closest(oracle, real) == i
for k in ("counted", "hits", "noop", "hits, noop", "move, no scroll", "hits, move, no scroll", "scrolls", "hits, scroll",
          "hits, scroll, strip made exact", "hits, scroll, oracle"):
    print(f"{k:>32s}: {count[k]}")
c = count
print(f"following {c['hits'] / c['counted']:.3f}; with the revealed strip made exact "
      f"{(c['hits'] - c['hits, scroll'] + c['hits, scroll, strip made exact']) / c['counted']:.3f}; "
      f"oracle on the scrolls (exact outside the strip, the model's guess inside), the model elsewhere "
      f"{(c['hits'] - c['hits, scroll'] + c['hits, scroll, oracle']) / c['counted']:.3f}")
