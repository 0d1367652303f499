"""Does a Crafter bundle refuse moves after a still context? One step from real held-out context, per move.

`python docs/still_context_moves.py BUNDLE DATA [KEY=VALUE ...]` takes every move of DATA's episodes (a collection
made with canvas=true, e.g. worldsim eval's data/crafter-heldout) with four real frames before it, resets the
simulator from those frames (and their canvases, for a bundle under the env's light) and steps the real move.
It splits them by whether the three context steps left the frame unchanged (a still context: a blocked player,
a noop) and whether the real game scrolled, and prints the share the model scrolled (canvas change over 1.5).
KEY=VALUE go to the simulator (e.g. light=false). docs/results.md, "The freeze: history in the cache".
"""
import glob
import sys
from pathlib import Path

import numpy as np
import torch

from worldsim.checkpoint import Bundle
from worldsim.data import episode_clock
from worldsim.simulator import WorldSimulator

MOVES, B = (1, 2, 3, 4), 32
bundle, data = Bundle(Path(sys.argv[1])), sys.argv[2]
kw = {k: v == "true" if v in ("true", "false") else v for k, v in (a.split("=", 1) for a in sys.argv[3:])}
eps = [dict(np.load(f)) for f in sorted(glob.glob(f"{data}/episodes/*.npz"))]
if not eps or any("canvas" not in ep for ep in eps):
    sys.exit(f"{data}: needs episodes collected with canvas=true")
items = []  # (episode, index of the frame the move makes, still context, the game scrolled)
for e, ep in enumerate(eps):
    ch = np.abs(np.diff(ep["canvas"].astype(np.int16), axis=0)).mean(axis=(1, 2, 3))
    items += [(e, t, bool((ch[t - 4:t - 1] < 0.05).all()), bool(ch[t - 1] > 1.5))
              for t in range(4, len(ep["frames"])) if int(ep["actions"][t - 1]) in MOVES]
sim = WorldSimulator(bundle, B, **kw)
shape, rng, res = sim.latent_shape, np.random.default_rng(0), []
for i in range(0, len(items) - B + 1, B):
    chunk = items[i:i + B]
    ctx = np.stack([eps[e]["frames"][t - 4:t] for e, t, _, _ in chunk])
    canvas = np.stack([eps[e]["canvas"][t - 4:t] for e, t, _, _ in chunk]) if sim.canvas_model else None
    sim.reset(range(B), ctx, np.stack([eps[e]["actions"][t - 4:t - 1] for e, t, _, _ in chunk]),
              rng.standard_normal((B, 4, *shape)), [episode_clock(eps[e], t - 1) for e, t, _, _ in chunk],
              canvas=canvas)
    with torch.no_grad():
        r = sim.step(np.array([eps[e]["actions"][t - 1] for e, t, _, _ in chunk]), rng.standard_normal((B, *shape)),
                     rng.standard_normal((B, *shape)))
    drawn, key = (r.canvas, "canvas") if r.canvas is not None else (r.frames, "canvas" if sim.canvas_model else "frames")
    for k, (e, t, still, real) in enumerate(chunk):
        res.append((still, real, np.abs(drawn[k].astype(np.int16) - eps[e][key][t - 1]).mean() > 1.5))
res = np.array(res)
print(f"{sys.argv[1]} {kw}: {len(res)} moves of {len(eps)} episodes")
for still in (False, True):
    for real in (True, False):
        s = res[(res[:, 0] == still) & (res[:, 1] == real)]
        print(f"  context {'still ' if still else 'moving'}, the game {'scrolled' if real else 'blocked '}: "
              f"{len(s):5d} moves, the model scrolled {s[:, 2].mean() if len(s) else float('nan'):.2f}")
