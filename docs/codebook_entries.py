"""Which real tiles a codebook entry stands for: `python docs/codebook_entries.py BUNDLE OUT.png DATA[,DATA...]
[entries=E1,E2,...] [seed=S steps=N KEY=VALUE ...]`.

For each entry: how many tokens of 20,000 training frames of DATA are nearest to it (the sample
docs/prune_codebook.py counts), how far its nearest real token is, its group (the token head's and terrain prior's)
and how many tokens the whole group holds. OUT.png: a row per entry, up to 12 real tiles whose tokens are nearest
to it. With seed and steps it first runs the explorer rollout docs/light_seeds.py runs (that seed, N steps;
KEY=VALUE go to gym.make, e.g. fresh_window=1) and prints the entries the simulator committed for the last frame's
map view; the four around the player join the list. Why: the light bundle's explorer worlds froze walled in by
tiles the real game never put there (docs/results.md, "The ground under the player").
"""
import sys

import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image

from worldsim.checkpoint import bundle_and_training_data
from worldsim.codebook import frame_tokens, nearest


bundle, out, data = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
kw = OmegaConf.to_container(OmegaConf.from_dotlist(sys.argv[4:]))  # KEY=VALUE, typed
entries = [int(e) for e in str(kw.pop("entries", "")).split(",") if e != ""]
seed, steps = kw.pop("seed", None), kw.pop("steps", None)
if seed is not None:
    import gymnasium as gym

    import worldsim  # noqa: F401  (registers the envs)
    from worldsim.agents import make_agent

    kw.setdefault("light_noise", "mean")
    env = gym.make("worldsim/Crafter-v0", bundle=bundle, termination_threshold=2.0, horizon=steps + 1, **kw)
    agent = make_agent("explorer", env.action_space, seed=seed)
    obs, _ = env.reset(seed=seed)
    agent.reset()
    for t in range(steps):
        obs, *_ = env.step(agent.act(obs))
    sim = env.unwrapped.sim
    z = sim.prev[0].float()
    C, h, w = z.shape
    _, idx = nearest(z.permute(1, 2, 0).reshape(-1, C), sim.bundle.codebook.float())
    grid = idx.view(h, w)
    print(f"seed {seed}, after step {steps}: the entries committed for the map view (the player at row 3, column 4)")
    print(grid[:7])
    entries += [int(grid[r, c]) for r, c in ((2, 4), (4, 4), (3, 3), (3, 5)) if int(grid[r, c]) not in entries]
    env.close()
path, b, eps = bundle_and_training_data(bundle, data)
frames = np.concatenate([ep["frames"] for ep in eps])
pick = np.sort(np.random.default_rng(1).choice(len(frames), min(20000, len(frames)), replace=False))
tokens = frame_tokens(b.codec, frames[pick])
cb = b.codebook.float().cpu()
_, idx = nearest(tokens, cb)
counts = np.bincount(idx.numpy(), minlength=len(cb))
groups = b.codebook_groups
gh, gw = b.codec.encode(torch.as_tensor(frames[:1])).shape[-2:]
tile = frames.shape[1] // gh
grid = idx.view(len(pick), gh, gw)
rows = []
print(f"{len(tokens)} tokens of {len(pick)} training frames")
for e in entries:
    near_real = float(torch.cdist(cb[e:e + 1], tokens).min())
    g = "" if groups is None else (f"; group {int(groups[e])} of {int(groups.max()) + 1}, "
                                   f"{int(counts[(groups == groups[e]).numpy()].sum())} tokens in all")
    print(f"entry {e}: nearest to {counts[e]} tokens; its nearest real token at {near_real:.3f}{g}")
    hits = (grid == e).nonzero().tolist()[:12]
    tiles = [frames[pick[n]][r * tile:(r + 1) * tile, c * tile:(c + 1) * tile] for n, r, c in hits]
    rows.append(np.concatenate(tiles + [np.zeros((tile, tile, 3), np.uint8)] * (12 - len(tiles)), 1))
if rows:
    Image.fromarray(np.concatenate(rows, 0).repeat(8, 0).repeat(8, 1)).save(out)
    print(f"written to {out}: per entry, real tiles nearest to it")
