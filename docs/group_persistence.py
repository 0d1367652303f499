"""How often a codebook tile group stays where it was from one real step to the next: `python docs/group_persistence.py
BUNDLE DATA [EPISODES]` (a Crafter bundle with a codebook and env.map; the first EPISODES episodes of DATA, 60 by
default). Each step of each episode is aligned as the simulator's map memory aligns it (`MapMemory.scrolled` on the
snapped real latents), and for every map cell that both frames show, the group it held is compared with the group the
same world place holds one step later. It prints the groups with the lowest share kept, and the spread of that share
over all tokens. Why: the map memory keeps every cell as ground, so a mob the model draws stands there again when the
view comes back; telling mobile tiles from ground by how they move in real episodes would let the memory leave them
out (docs/results.md, "The ground under the player").
"""
import sys
from pathlib import Path

import numpy as np
import torch

from worldsim.codebook import encode_frames, nearest
from worldsim.data import load_episodes
from worldsim.simulator import MapMemory, load_bundle

b = load_bundle(sys.argv[1])
if b.codebook_groups is None or "map" not in b.env:
    sys.exit(f"{sys.argv[1]}: needs a codebook with groups (`worldsim codebook ... terrain=true`) and env.map")
eps = load_episodes(Path(sys.argv[2]))[:int(sys.argv[3]) if len(sys.argv) > 3 else 60]
cb, groups = b.codebook.float(), b.codebook_groups
G = int(groups.max()) + 1
seen, kept = torch.zeros(G), torch.zeros(G)
for ep in eps:
    z = encode_frames(b.codec, ep["frames"])
    T, C, h, w = z.shape
    idx = nearest(z.permute(0, 2, 3, 1).reshape(-1, C).float(), cb)[1]
    zs, g = cb[idx].view(T, h, w, C).permute(0, 3, 1, 2), groups[idx].view(T, h, w)
    mem = MapMemory(b.env["map"], b.dit.config.action_spec["n"], T - 1, (C, h, w), "cpu")
    a = torch.as_tensor(np.asarray(ep["actions"]), dtype=torch.long).reshape(-1)[:T - 1]
    step = torch.where(mem.scrolled(zs[1:], zs[:-1], a)[:, None], mem.move[a], 0)
    src = mem.offset[None] + step[:, None, None]  # where each cell was in the last view
    inside = (src[..., 0] >= 0) & (src[..., 0] < h) & (src[..., 1] >= 0) & (src[..., 1] < w)
    sr, sc = src[..., 0].clamp(0, h - 1), src[..., 1].clamp(0, w - 1)
    both = inside & mem.cells[None] & mem.cells[sr, sc]
    before = g[:-1][torch.arange(T - 1)[:, None, None].expand_as(sr), sr, sc]
    seen += torch.bincount(before[both], minlength=G)[:G].float()
    kept += torch.bincount(before[both & (before == g[1:])], minlength=G)[:G].float()
share = kept / seen.clamp(min=1)
shown = torch.nonzero(seen >= 50)[:, 0]
low = shown[torch.argsort(share[shown])][:15]
print(f"{len(eps)} episodes; groups seen at least 50 times, lowest share kept: "
      f"{[(int(i), int(seen[i]), round(float(share[i]), 3)) for i in low]}")
per_token = np.repeat(share.numpy(), seen.numpy().astype(int))
print("share kept by the token's group, percentiles 1 / 5 / 10 / 50 over all tokens:",
      [round(float(x), 3) for x in np.percentile(per_token, [1, 5, 10, 50])])
