"""Which block of a world model costs least to drop? (before distilling a shallower student: dit.drop_blocks)

    python docs/drop_block_damage.py [BUNDLE] [DATA] [--out=F.json]
    (defaults: the shipped Crafter bundle, data/sleepless/crafter_canvas's test split; about 1 minute on 2 cores)

48 windows of the collection's test split (seeded), encoded; the last frame noised to sigma_max (the one level
a one-step sampler reads), the context at U(0, context_noise_max), as distillation trains. For the whole model
and for each block dropped (WorldDiT.without_blocks, untrained), prints the denoised last frame's mean squared
error against the whole model's and against the real latent, and the context frames' last-block tokens' squared
error relative to their variance (what the heads read).
"""
import json
import sys
from pathlib import Path

import torch

from worldsim import DEFAULT_CRAFTER_BUNDLE
from worldsim.checkpoint import Bundle
from worldsim.data import WindowDataset, load_episodes

args = [a for a in sys.argv[1:] if not a.startswith("--out")]
out = next((a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--out=")), None)
torch.set_num_threads(2)
torch.manual_seed(0)
b = Bundle(Path(args[0] if args else DEFAULT_CRAFTER_BUNDLE))
dit, edm, codec = b.dit, b.edm, b.codec
eps = load_episodes(Path(args[1] if len(args) > 1 else "data/sleepless/crafter_canvas"), split="test")[:8]
ds = WindowDataset(eps, dit.config.context_frames + 1)
items = [ds[i] for i in torch.randperm(len(ds))[:48]]
with torch.no_grad():
    z = torch.stack([codec.encode(it["frames"]) for it in items])
acts, has = torch.stack([it["actions"] for it in items]), torch.stack([it["has_action"] for it in items])
clock = torch.stack([it["clock"] for it in items])
B, T = z.shape[:2]
g = torch.Generator().manual_seed(1)
sigma = torch.rand(B, T, generator=g) * edm.cfg.context_noise_max
sigma[:, -1] = edm.cfg.sigma_max
x = z + edm._bc(sigma, z) * torch.randn(z.shape, generator=g)
inp, cn = edm.model_input(x, sigma)
ticks = torch.zeros(B, T, dit.config.ticks) if dit.config.ticks else None  # no tick happened
rows = {}
with torch.no_grad():
    ref = dit(inp, cn, acts, has, clock=clock, ticks=ticks)
    den_ref = edm.denoised(x[:, -1], sigma[:, -1], ref.out[:, -1])
    rows["whole"] = {"vs_whole": 0.0, "vs_real": (den_ref - z[:, -1]).pow(2).mean().item(), "features": 0.0}
    for i in range(dit.config.depth):
        o = dit.without_blocks([i])(inp, cn, acts, has, clock=clock, ticks=ticks)
        den = edm.denoised(x[:, -1], sigma[:, -1], o.out[:, -1])
        f, fr = o.features[:, :-1], ref.features[:, :-1]
        rows[f"drop {i}"] = {"vs_whole": (den - den_ref).pow(2).mean().item(),
                             "vs_real": (den - z[:, -1]).pow(2).mean().item(),
                             "features": ((f - fr).pow(2).mean() / fr.var()).item()}
for k, r in rows.items():
    print(f"{k:8s} denoised vs whole {r['vs_whole']:.4f}, vs real {r['vs_real']:.4f}; context tokens {r['features']:.3f}")
if out:
    Path(out).write_text(json.dumps({"bundle": str(b.path), "windows": B, "rows": rows}, indent=1))
