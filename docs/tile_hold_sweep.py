"""Next-frame PSNR of a Crafter model against the tile hold it is shown with.

    python docs/tile_hold_sweep.py [BUNDLE [HELDOUT_DIR]]   (default: the shipped model, data/crafter-heldout)

256 windows (4 real context frames and the real next action, every 4th start of the held-out episodes,
shuffled with seed 0); for each tile hold the same windows and the same noise. Prints the mean of per-frame
PSNR and the PSNR of the pooled MSE, beside copying the last context frame.
"""
import sys
from pathlib import Path

import numpy as np
import torch

from worldsim.data import index_actions, load_episodes, stack_actions
from worldsim.evaluate import mse_np, psnr_of_mse
from worldsim.simulator import WorldSimulator, load_bundle

torch.set_num_threads(2)
b = load_bundle(sys.argv[1] if len(sys.argv) > 1 else "worldsim/assets/crafter")
eps = load_episodes(Path(sys.argv[2] if len(sys.argv) > 2 else "data/crafter-heldout"), split="test")
W, B = b.dit.config.context_frames, 32
starts = [(e, s) for e, ep in enumerate(eps) for s in range(0, len(ep["frames"]) - W - 1, 4)]
np.random.default_rng(0).shuffle(starts)
starts = starts[:256]
copy = None
for hold in (0.0, 0.2, 0.5, 0.8):
    sim = WorldSimulator(b, B, tile_hold=hold)
    rng = np.random.default_rng(1)
    model, cp = [], []
    for i in range(0, len(starts) - B + 1, B):
        ch = starts[i:i + B]
        ctx = np.stack([eps[e]["frames"][s:s + W] for e, s in ch])
        ctx_a = stack_actions([index_actions(eps[e]["actions"], slice(s, s + W - 1)) for e, s in ch])
        nxt = np.stack([eps[e]["frames"][s + W] for e, s in ch])
        act = np.array([eps[e]["actions"][s + W - 1] for e, s in ch])
        sim.reset(range(B), ctx, ctx_a, rng.standard_normal((B, W, *sim.latent_shape)))
        res = sim.step(act, rng.standard_normal((B, *sim.latent_shape)), rng.standard_normal((B, *sim.latent_shape)))
        model += list(mse_np(res.frames, nxt))
        cp += list(mse_np(ctx[:, -1], nxt))
    m, c = np.array(model), np.array(cp)
    if copy is None:
        copy = c
        print(f"copy last frame: per-frame {psnr_of_mse(c).mean():.2f} dB, pooled {psnr_of_mse(c.mean()):.2f} dB")
    print(f"tile_hold {hold:.1f}: per-frame {psnr_of_mse(m).mean():.2f} dB, pooled {psnr_of_mse(m.mean()):.2f} dB")
