"""Next-frame PSNR of a Crafter model against the tile hold it is shown with.

    python docs/tile_hold_sweep.py [BUNDLE [HELDOUT_DIR]]   (default: the shipped model, data/crafter-heldout)

256 windows (4 real context frames and the real next action, every 4th start of the held-out episodes,
shuffled with seed 0); for each tile hold the same windows and the same noise. Prints the mean of per-frame
PSNR and the PSNR of the pooled MSE, beside copying the last context frame. Then the two scales the
choice is read against: the autoencoder's PSNR when its latents carry Gaussian noise of a given RMS, and how
far real tiles whose pixels change by 20 or more grey levels (mean absolute) move their latent between
consecutive held-out frames.
"""
import sys
from pathlib import Path

import numpy as np
import torch

from heldout_windows import next_frame_batches, next_frame_starts

from worldsim.data import load_episodes
from worldsim.evaluate import mse_np, psnr_of_mse
from worldsim.simulator import WorldSimulator, load_bundle

torch.set_num_threads(2)
b = load_bundle(sys.argv[1] if len(sys.argv) > 1 else "worldsim/assets/crafter")
eps = load_episodes(Path(sys.argv[2] if len(sys.argv) > 2 else "data/crafter-heldout"), split="test")
W, B = b.dit.config.context_frames, 32
starts = next_frame_starts(eps, W)
copy = None
for hold in (0.0, 0.2, 0.5, 0.8):
    sim = WorldSimulator(b, B, tile_hold=hold)
    rng = np.random.default_rng(1)
    model, cp = [], []
    for ctx, nxt, _, res in next_frame_batches(sim, eps, starts, rng):
        model += list(mse_np(res.frames, nxt))
        cp += list(mse_np(ctx[:, -1], nxt))
    m, c = np.array(model), np.array(cp)
    if copy is None:
        copy = c
        print(f"copy last frame: per-frame {psnr_of_mse(c).mean():.2f} dB, pooled {psnr_of_mse(c.mean()):.2f} dB")
    print(f"tile_hold {hold:.1f}: per-frame {psnr_of_mse(m).mean():.2f} dB, pooled {psnr_of_mse(m.mean()):.2f} dB")

frames = torch.as_tensor(np.concatenate([ep["frames"][::37] for ep in eps])[:256])
z = b.codec.encode(frames)
for rms in (0.2, 0.5, 0.8):
    rec = b.codec.decode(z + rms * torch.randn(z.shape, generator=torch.Generator().manual_seed(0)))
    print(f"autoencoder with latent noise {rms}: {psnr_of_mse(mse_np(rec.numpy(), frames.numpy())).mean():.2f} dB")
seq = np.concatenate([ep["frames"][:200] for ep in eps[:6]])
dist = (b.codec.encode(torch.as_tensor(seq[:-1])) - b.codec.encode(torch.as_tensor(seq[1:]))).pow(2).mean(1).sqrt()
p = b.ae.config.patch
tiles = seq[:, :9 * p, :9 * p].reshape(len(seq), 9, p, 9, p, 3).astype(np.int16)
change = np.abs(tiles[1:] - tiles[:-1]).mean(axis=(2, 4, 5))  # (frames, 9, 9) mean absolute pixel change
big = dist.numpy()[change >= 20]
print(f"real tiles changing by >= 20 grey levels ({len(big)}): latent moves, 1st percentile {np.percentile(big, 1):.2f}")
