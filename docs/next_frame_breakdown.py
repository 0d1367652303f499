"""Where a Crafter model's next-frame error comes from, beside copying the last frame.

    python docs/next_frame_breakdown.py [BUNDLE [HELDOUT_DIR]]   (default: the shipped model, data/crafter-heldout)

The same 256 windows as docs/tile_hold_sweep.py. Each real step is classed as scrolled (the world view
moved by one tile: the best one-tile shift of the last frame explains it, outside the revealed strip, at
less than half the unshifted error) or not, and by action. Per class: mean per-frame and pooled PSNR of
the model and of copy-last, the model's PSNR with the revealed strip replaced by the real one, and the
share of the model's squared error in the strip and in tiles that did not change in reality.
"""
import sys
from pathlib import Path

import numpy as np
import torch

from heldout_windows import next_frame_batches, next_frame_starts

from worldsim.autoencoder import tile_layout
from worldsim.data import load_episodes
from worldsim.evaluate import psnr_of_mse
from worldsim.simulator import WorldSimulator, load_bundle

torch.set_num_threads(2)
b = load_bundle(sys.argv[1] if len(sys.argv) > 1 else "worldsim/assets/crafter")
eps = load_episodes(Path(sys.argv[2] if len(sys.argv) > 2 else "data/crafter-heldout"), split="test")
sim = WorldSimulator(b, 32)
starts = next_frame_starts(eps, sim.window)
p, oy, ox = tile_layout(b.ae, *b.env["frame_shape"][:2])
_, h, w = sim.latent_shape
view_rows = 7  # Crafter's world view: the top 7 of the 9 tile rows (the inventory below)
rng = np.random.default_rng(1)
rows = []


def strip_of(last, real):
    """The revealed strip's mask if the view scrolled by one tile, else None."""
    v = (slice(oy, oy + view_rows * p), slice(ox, ox + w * p))
    base = ((real[v] - last[v]) ** 2).mean()
    best = None
    for dy, dx in ((p, 0), (-p, 0), (0, p), (0, -p)):
        d = ((real[v] - np.roll(last, (-dy, -dx), (0, 1))[v]) ** 2)
        keep = np.ones(d.shape[:2], bool)
        keep[-p:] &= dy <= 0
        keep[:p] &= dy >= 0
        keep[:, -p:] &= dx <= 0
        keep[:, :p] &= dx >= 0
        if d[keep].mean() < 0.5 * base:
            best, base = (dy, dx), d[keep].mean()
    if best is None:
        return None
    m = np.zeros(real.shape[:2], bool)
    r0, r1, c0, c1 = oy, oy + view_rows * p, ox, ox + w * p
    m[{p: slice(r1 - p, r1), -p: slice(r0, r0 + p)}.get(best[0], slice(r0, r1)),
      {p: slice(c1 - p, c1), -p: slice(c0, c0 + p)}.get(best[1], slice(c0, c1))] = True
    return m


for ctx, nxt, act, res in next_frame_batches(sim, eps, starts, rng):
    for j in range(sim.B):
        last, real, mod = (x.astype(np.float32) for x in (ctx[j, -1], nxt[j], res.frames[j]))
        strip = strip_of(last, real)
        se = ((mod - real) ** 2).mean(-1)
        still = np.zeros(se.shape, bool)  # pixels of tiles that did not change at all in reality
        t = (np.abs(real - last).sum(-1)[oy:oy + h * p, ox:ox + w * p].reshape(h, p, w, p).sum((1, 3)) == 0)
        still[oy:oy + h * p, ox:ox + w * p] = t.repeat(p, 0).repeat(p, 1)
        fixed = mod.copy()
        if strip is not None:
            fixed[strip] = real[strip]
        rows.append({"action": int(act[j]), "scrolled": strip is not None, "model": se.mean(),
                     "copy": ((last - real) ** 2).mean(), "model_real_strip": ((fixed - real) ** 2).mean(),
                     "in_strip": se[strip].sum() / se.size if strip is not None else 0.0,
                     "in_still": se[still].sum() / se.size})


def report(name, rs):
    if not rs:
        return
    col = {k: np.array([r[k] for r in rs]) for k in rs[0]}
    per, pool = (lambda k: psnr_of_mse(col[k]).mean()), (lambda k: psnr_of_mse(col[k].mean()))
    tot = max(col["model"].sum(), 1e-9)
    print(f"{name:>13s} {len(rs):4d}  per-frame model {per('model'):6.2f} copy {per('copy'):6.2f} "
          f"model+real strip {per('model_real_strip'):6.2f} | pooled model {pool('model'):6.2f} copy {pool('copy'):6.2f}"
          f" | error share: strip {col['in_strip'].sum() / tot:.2f}, unchanged tiles {col['in_still'].sum() / tot:.2f}")


print(f"{'steps':>13s} {'n':>4s}")
report("all", rows)
report("scrolled", [r for r in rows if r["scrolled"]])
report("not scrolled", [r for r in rows if not r["scrolled"]])
for a in sorted({r["action"] for r in rows}):
    report(f"action {a}", [r for r in rows if r["action"] == a])
