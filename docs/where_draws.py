"""Where `snap=sample` draws, and what it costs there, on the shipped Crafter model (docs/results.md: draw rules).

    python docs/where_draws.py [BUNDLE]     (default: the shipped one)

The 256 held-out next-frame windows (docs/heldout_windows.py), stepped once with nearest snap and once with
snap=sample from the same noise (fp32); how many tokens the head leaves under `certain`. Tokens are split
into the strip a move reveals (the view's edge row or column on the side of the move, on steps whose frame
changed by more than 8 grey levels) and the rest; for each: how many sampled tokens differ from the nearest
entry, and the squared error they add; and how many of those show the same picture anyway. About a minute
on the 2-core EPYC.
"""
import sys
from pathlib import Path

import numpy as np
import torch

from heldout_windows import next_frame_batches, next_frame_starts
from worldsim import DEFAULT_CRAFTER_BUNDLE, simulator
from worldsim import codebook as cbm
from worldsim.data import load_episodes
from worldsim.simulator import WorldSimulator, load_bundle

torch.set_num_threads(2)
b = load_bundle(sys.argv[1] if len(sys.argv) > 1 else str(DEFAULT_CRAFTER_BUNDLE))
eps = load_episodes(Path("data/crafter-heldout"), split="test")
starts = next_frame_starts(eps, b.dit.config.context_frames, n=256)
EDGE = {1: (slice(0, 7), 0), 2: (slice(0, 7), 8), 3: (0, slice(0, 9)), 4: (6, slice(0, 9))}  # left right up down
unsure = []  # per batch: tokens whose likeliest group is under `certain` (the ones the shipped rule draws)


def counting_sample_snap(z, features, codebook, groups, head, noise, certain):
    tok = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]).float()
    p = head(cbm.cell_features(features, *z.shape[2:]), tok).softmax(-1)
    unsure.append((int((p.max(-1).values < certain).sum()), len(tok)))
    return cbm.sample_snap(z, features, codebook, groups, head, noise, certain)


simulator.sample_snap = counting_sample_snap
runs = {}
for mode in ("nearest", "sample"):
    sim = WorldSimulator(b, 32, snap=mode, quantize="none")
    runs[mode] = [(ctx[:, -1], nxt, act, r.frames, r.latents.clone())  # latents: the simulator reuses the tensor
                  for ctx, nxt, act, r in next_frame_batches(sim, eps, starts, np.random.default_rng(0))]
added = {"strip": 0.0, "elsewhere": 0.0}
differ = {"strip": 0, "elsewhere": 0}
tokens = {"strip": 0, "elsewhere": 0}
alike = []  # per view token drawn otherwise: does its tile as shown correlate above 0.9 with nearest snap's?
for (last, nxt, act, f_near, z_near), (_, _, _, f_samp, z_samp) in zip(runs["nearest"], runs["sample"]):
    d = ((z_near - z_samp).abs().sum(1) > 1e-6).numpy()  # (B, 9, 9) tokens the draw changed

    def tile_err(f, i):  # squared error per 7x7 tile of the 9x9 grid
        return ((f[i, :63, :63].astype(float) - nxt[i, :63, :63]) ** 2).reshape(9, 7, 9, 7, 3).mean((1, 3, 4))
    for i, a in enumerate(act):
        strip = np.zeros((9, 9), bool)
        if int(a) in EDGE and np.abs(nxt[i].astype(float) - last[i]).mean() > 8:
            strip[EDGE[int(a)]] = True
        extra = tile_err(f_samp, i) - tile_err(f_near, i)
        for y, x in zip(*np.nonzero(d[i][:7])):  # view tiles drawn otherwise: the same picture, or another tile?
            t_near, t_samp = (f[i, 7 * y:7 * y + 7, 7 * x:7 * x + 7].astype(float).ravel() for f in (f_near, f_samp))
            t_near, t_samp = t_near - t_near.mean(), t_samp - t_samp.mean()
            norm = np.sqrt((t_near ** 2).sum() * (t_samp ** 2).sum())
            alike.append(bool(norm == 0 or (t_near * t_samp).sum() / norm > 0.9))
        for name, m in (("strip", strip), ("elsewhere", ~strip)):
            added[name] += float(extra[m].sum())
            differ[name] += int(d[i][m].sum())
            tokens[name] += int(m.sum())
print("tokens under `certain` per batch of 32 windows: " + ", ".join(f"{u} of {n}" for u, n in unsure))
for name in added:
    print(f"{name}: {differ[name]} of {tokens[name]} tokens drawn other than the nearest entry, "
          f"added squared error {added[name]:.0f} ({added[name] / sum(added.values()):.0%})")
print(f"of the {len(alike)} view tokens drawn otherwise, {np.mean(alike):.0%} show a tile that correlates above 0.9 "
      f"with nearest snap's (near-alike entries; tile hold keeps pixels within 0.5)")
