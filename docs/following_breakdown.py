"""Where a Crafter model's action-following misses are: by the kind of probe and by what decided them.

    python docs/following_breakdown.py [BUNDLE [KEY=VALUE ...]]   (default: the shipped model; data/crafter-heldout's probes)

The same probes as `worldsim eval` (cache_dir/following_probes.npz, counted where the real outcomes differ),
one step of the model per probe action from the same noise. Each counted probe is classed by its real
outcome: noop; a move whose view visibly scrolled (mean absolute change from the last context frame over 8
grey levels); or any other move (blocked, or a scroll over uniform ground that only turns the player), and
as night when the last context frame's world view is desaturated (mean max-min channel spread under 85
grey levels: Crafter's night lowers saturation). For each miss, whether the frame was closer to the wrong
outcome in the player's own tile or in the rest of the frame.
"""
import sys
from collections import Counter

import numpy as np
import torch
from omegaconf import OmegaConf

from worldsim.cli import load_config
from worldsim.evaluate import CRAFTER_PROBE, distinct_outcome, probe_steps, psnr_np
from worldsim.simulator import WorldSimulator, load_bundle

torch.set_num_threads(2)
b = load_bundle(sys.argv[1] if len(sys.argv) > 1 else "worldsim/assets/crafter")
kw = OmegaConf.to_container(OmegaConf.from_dotlist(sys.argv[2:]))  # KEY=VALUE, typed
cfg = load_config("eval", ["cache_dir=data/crafter-heldout"])
W = b.dit.config.context_frames
names = list(CRAFTER_PROBE)
sim = WorldSimulator(b, len(names), 1, **kw)
rng = np.random.default_rng(0)
player = np.zeros((64, 64), bool)
player[21:28, 28:35] = True  # the player's tile: the centre of the 9x7 world view
hits, misses = Counter(), Counter()
for ctx, ctx_a, probe, real, gen in probe_steps(cfg, sim, rng, names, W):
    real = real.astype(float)
    view = ctx[-1][:49].astype(float)
    night = (view.max(-1) - view.min(-1)).mean() < 85
    for i, n in enumerate(names):
        if not distinct_outcome(real, i):
            continue  # not counted by the eval either
        kind = "noop" if i == 0 else ("scroll" if np.abs(real[i] - ctx[-1]).mean() > 8 else "other move")
        kind += ", night" if night else ", day"
        closest = int(np.argmax(psnr_np(gen[i][None], real)))
        hits[kind] += closest == i
        if closest != i:
            se = lambda a, m: ((gen[i].astype(float) - real[a]) ** 2).mean(-1)[m].sum()
            in_tile = se(i, player) - se(closest, player) > se(i, ~player) - se(closest, ~player)
            misses[(kind, "player tile" if in_tile else "rest of frame")] += 1
total = Counter({k: hits[k] + sum(v for (kk, _), v in misses.items() if kk == k) for k in hits})
for k in sorted(total):
    print(f"{k:>18s}: {hits[k]:3d} of {total[k]:3d} = {hits[k] / total[k]:.3f}")
for part in ("day", "night"):
    h = sum(v for k, v in hits.items() if k.endswith(part))
    t = sum(v for k, v in total.items() if k.endswith(part))
    print(f"{part:>18s}: {h:3d} of {t:3d} = {h / max(t, 1):.3f}")
print("misses decided in: " + ", ".join(f"{k[0]} / {k[1]}: {v}" for k, v in sorted(misses.items())))
