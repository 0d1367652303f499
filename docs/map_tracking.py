"""How long the learned Crafter env's map memory keeps the real player's place, on `worldsim eval`'s first 64
held-out windows (docs/results.md, Crafter: map memory).

    python docs/map_tracking.py

The shipped model rolls out from each window's 4 real context frames driven by the real actions, as `worldsim
eval` does (same windows, same noise); after every step its memory's position (the moves its frames scrolled
by, `MapMemory.scrolled`) is compared with the real player's (the moves the real frames scrolled by,
docs/map_overlap.py). Printed: the share of windows whose positions still agree at horizons 8 and 32, and at
the first step where they part, whether the real move was blocked or the model's was; where the real move
was blocked, whether the model's last frame showed the real tile ahead (mean absolute difference under 8
grey levels over the 7 x 7 pixels) or another one. A minute of CPU.
"""
import collections
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import map_overlap as mo  # noqa: E402  (the real positions, the same windows)

from worldsim.data import episode_clock, index_actions, stack_actions  # noqa: E402
from worldsim.evaluate import _step_of, rollout_starts  # noqa: E402
from worldsim.simulator import WorldSimulator, load_bundle  # noqa: E402

torch.set_num_threads(2)
eps, W, B = mo.eps, mo.W, 32
sim = WorldSimulator(load_bundle("worldsim/assets/crafter"), B, map_memory=True)
rng = np.random.default_rng(1000000)
rollout_starts(eps, W, mo.H, 8, 256, rng)  # the eval draws its windows first, then its noise from the same rng
agree, parted = {8: [], 32: []}, collections.Counter()
for i in range(0, 64, B):
    chunk = mo.starts[i:i + B]
    ctx = np.stack([eps[e]["frames"][s:s + W] for e, s in chunk])
    ctx_a = stack_actions([index_actions(eps[e]["actions"], slice(s, s + W - 1)) for e, s in chunk])
    fut_a = stack_actions([index_actions(eps[e]["actions"], slice(s + W - 1, s + W + 31)) for e, s in chunk])
    sim.reset(range(B), ctx, ctx_a, rng.standard_normal((B, W, *sim.latent_shape)), [episode_clock(eps[e], s + W - 1) for e, s in chunk])
    start, together = sim.map.pos.clone(), np.ones(B, bool)
    shown = ctx[:, -1]  # the frames the model showed last
    for h in range(32):
        before = sim.map.pos.clone()
        res = sim.step(_step_of(fut_a, h), rng.standard_normal((B, *sim.latent_shape)),
                       rng.standard_normal((B, *sim.latent_shape)))
        for j, (e, s) in enumerate(chunk):
            P = mo.track(e)
            real = np.subtract(P[s + W + h], P[s + W - 1])  # (x, y)
            model = (sim.map.pos[j] - start[j]).tolist()  # (row, column)
            same = model == [int(real[1]), int(real[0])]
            if together[j] and not same:
                together[j] = False
                real_moved = P[s + W + h] != P[s + W + h - 1]
                model_moved = bool((sim.map.pos[j] != before[j]).any())
                kind = ("real moved, model's frame stayed" if real_moved and not model_moved else
                        "real move blocked, model's frame scrolled" if model_moved and not real_moved else
                        "both moved, differently")
                parted[kind] += 1
                if kind.startswith("real move blocked"):
                    dx, dy = mo.MOVES[int(fut_a[j, h])]
                    r, c = mo.PLAYER[0] + dy, mo.PLAYER[1] + dx  # the tile the real player could not enter
                    real_tile = mo.tiles(eps[e]["frames"][s + W + h - 1])[r, c]
                    same_tile = np.abs(real_tile - mo.tiles(shown[j])[r, c]).mean() < 8
                    parted["real move blocked, the model's last frame showing the real tile ahead" if same_tile else
                           "real move blocked, the model's last frame showing another tile ahead"] += 1
            if h + 1 in agree:
                agree[h + 1].append(together[j])
        shown = res.frames
for h, v in agree.items():
    print(f"horizon {h}: the model's place is the real player's in {np.mean(v):.0%} of {len(v)} windows")
print("where they first part:")
for kind, n in sorted(parted.items()):
    print(f"  {kind}: {n}")
