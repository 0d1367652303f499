"""What blocked moves cost a Crafter model's next-frame figure: per-frame PSNR by kind of step, beside copy-last.

    python docs/blocked_moves.py [BUNDLE [KEY=VALUE ...]]   (default: the shipped model; eval's settings)

The same held-out windows as `worldsim eval` (data/crafter-heldout, eval's seed, stride and window count; its
horizons fix which starts exist), one generated frame each from real context, with noise of its own (so the
total differs from eval's by the draw). Each step is classed by its action (a move or not) and whether the
real frame changed (mean absolute change from the last frame of at least 1 grey level): a move that left
the frame unchanged was blocked (water, stone, a tree, a table in the way). For each class: its count, the
model's and copy-last's mean PSNR, and its share of the overall gain (sum of model - copy over the class,
divided by all windows), so the classes' shares add up to the gain.
"""
import sys

import numpy as np
import torch

from worldsim.cli import load_config
from worldsim.data import episode_clock, index_actions, stack_actions
from worldsim.evaluate import _opt, _sim_kw, _step_of, heldout_episodes, mse_np, psnr_of_mse, rollout_starts
from worldsim.simulator import WorldSimulator, load_bundle

torch.set_num_threads(2)
bundle = sys.argv[1] if len(sys.argv) > 1 and "=" not in sys.argv[1] else "worldsim/assets/crafter"
cfg = load_config("eval", ["cache_dir=data/crafter-heldout"] + [a for a in sys.argv[1:] if "=" in a])
b = load_bundle(bundle)
eps = heldout_episodes(cfg)
W, H = b.dit.config.context_frames, max(_opt(cfg, "horizons"))
rng = np.random.default_rng(cfg.seed)
starts = rollout_starts(eps, W, H, cfg.stride, cfg.windows, rng)
B = cfg.batch_size
sim = WorldSimulator(b, B, cfg.sampling_steps, **_sim_kw(cfg))
shape = sim.latent_shape
model, copy, change, act = [], [], [], []
for i in range(0, len(starts) - B + 1, B):
    chunk = starts[i:i + B]
    ctx = np.stack([eps[e]["frames"][s:s + W] for e, s in chunk])
    ctx_a = stack_actions([index_actions(eps[e]["actions"], slice(s, s + W - 1)) for e, s in chunk])
    real = np.stack([eps[e]["frames"][s + W] for e, s in chunk])
    a = _step_of(stack_actions([index_actions(eps[e]["actions"], slice(s + W - 1, s + W)) for e, s in chunk]), 0)
    sim.reset(range(B), ctx, ctx_a, rng.standard_normal((B, W, *shape)), [episode_clock(eps[e], s + W - 1) for e, s in chunk])
    gen = sim.step(a, rng.standard_normal((B, *shape)), rng.standard_normal((B, *shape))).frames
    model += list(psnr_of_mse(mse_np(gen, real)))
    copy += list(psnr_of_mse(mse_np(ctx[:, -1], real)))
    change += list(np.abs(real.astype(float) - ctx[:, -1]).mean((1, 2, 3)))
    act += list(np.asarray(a).reshape(B))
model, copy, change, act = map(np.asarray, (model, copy, change, act))
moved, move = change >= 1, (act >= 1) & (act <= 4)  # Crafter: 1-4 are the moves
n = len(model)
print(f"{n} windows: model {model.mean():.2f} dB, copy-last {copy.mean():.2f} dB, gain {model.mean() - copy.mean():+.2f}")
for name, k in (("move, view changed", move & moved), ("move, blocked (unchanged)", move & ~moved),
                ("other, changed", ~move & moved), ("other, unchanged", ~move & ~moved)):
    print(f"{name:>26s}: {k.sum():3d} | model {model[k].mean():6.2f} | copy-last {copy[k].mean():6.2f} "
          f"| share of gain {(model - copy)[k].sum() / n:+.2f} dB")
