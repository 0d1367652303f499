"""What a bundle's codebook costs in fidelity: held-out frames encoded, each token snapped to its nearest entry,
decoded, against the autoencoder alone (every 3rd frame of the first 6 held-out episodes).

    python docs/codebook_fidelity.py [BUNDLE=worldsim/assets/crafter] [DATA=data/crafter-heldout]
"""
import sys
from pathlib import Path

import numpy as np
import torch

from worldsim.codebook import snap
from worldsim.data import load_episodes
from worldsim.simulator import load_bundle

bundle = sys.argv[1] if len(sys.argv) > 1 else "worldsim/assets/crafter"
data = sys.argv[2] if len(sys.argv) > 2 else "data/crafter-heldout"
b = load_bundle(bundle)
frames = torch.as_tensor(np.concatenate([ep["frames"][::3] for ep in load_episodes(Path(data))[:6]]))
z = b.codec.encode(frames)


def psnr(x):
    mse = ((x.float() - frames.float()) ** 2).mean(dim=(1, 2, 3)).clamp(min=1e-10)
    return (10 * torch.log10(255 ** 2 / mse)).mean().item(), (10 * torch.log10(255 ** 2 / mse.mean())).item()


print(f"{len(frames)} frames; PSNR per-frame mean / pooled: autoencoder %.2f / %.2f dB" % psnr(b.codec.decode(z)),
      "; snapped to the codebook %.2f / %.2f dB" % psnr(b.codec.decode(snap(z, b.codebook))))
