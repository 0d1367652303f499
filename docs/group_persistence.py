"""How often a codebook tile group, and a tile, stays where it was from one real step to the next: `python
docs/group_persistence.py BUNDLE DATA [EPISODES]` (a Crafter bundle with a codebook and env.map; the first EPISODES
episodes of DATA, 60 by default; frames without light, e.g. a canvas collection, since the night's noise changes
every lit tile). Each step of each episode is aligned as the simulator's map memory aligns it (`MapMemory.scrolled`
on the snapped real latents). For every map cell that both frames show it compares the group the world place held
with the group it holds one step later, and the tile's pixels then and now (changed: over 10 grey levels, mean
absolute). It prints the groups with the lowest share kept and the spread of that share over all tokens; then per
entry (the entry of the tile before the step) the share of steps on which the tile changed, its spread over all
tokens, a few entries (ENTRIES=e1,e2,... in the environment) and how many entries change on over a fifth of their
steps. Why: the map memory keeps every cell as ground, so a mob the model draws stands there again when the
view comes back; telling mobile tiles from ground by how they move in real episodes would let the memory leave them
out (docs/results.md, "The ground under the player").
"""
import os
import sys
from pathlib import Path

import numpy as np
import torch

from worldsim.codebook import aligned_steps
from worldsim.data import load_episodes
from worldsim.simulator import load_bundle

b = load_bundle(sys.argv[1])
if b.codebook_groups is None or "map" not in b.env:
    sys.exit(f"{sys.argv[1]}: needs a codebook with groups (`worldsim codebook ... terrain=true`) and env.map")
eps = load_episodes(Path(sys.argv[2]))[:int(sys.argv[3]) if len(sys.argv) > 3 else 60]
cb, groups = b.codebook.float(), b.codebook_groups
G = int(groups.max()) + 1
K = len(cb)
seen, kept = torch.zeros(G), torch.zeros(G)
e_seen, e_changed = torch.zeros(K), torch.zeros(K)
for ep in eps:
    e, e_next, changed, both = aligned_steps(b.codec, cb, ep, b.env["map"], b.dit.config.action_spec["n"])
    before = groups[e]  # the group each place held, and holds one step later
    seen += torch.bincount(before[both], minlength=G)[:G].float()
    kept += torch.bincount(before[both & (before == groups[e_next])], minlength=G)[:G].float()
    e_seen += torch.bincount(e[both], minlength=K)[:K].float()
    e_changed += torch.bincount(e[both & changed], minlength=K)[:K].float()
share = kept / seen.clamp(min=1)
shown = torch.nonzero(seen >= 50)[:, 0]
low = shown[torch.argsort(share[shown])][:15]
print(f"{len(eps)} episodes; groups seen at least 50 times, lowest share kept: "
      f"{[(int(i), int(seen[i]), round(float(share[i]), 3)) for i in low]}")
per_token = np.repeat(share.numpy(), seen.numpy().astype(int))
print("share kept by the token's group, percentiles 1 / 5 / 10 / 50 over all tokens:",
      [round(float(x), 3) for x in np.percentile(per_token, [1, 5, 10, 50])])
rate = e_changed / e_seen.clamp(min=1)
per_token = np.repeat(rate.numpy(), e_seen.numpy().astype(int))
print("the tile changed, by the entry it held: percentiles 50 / 90 / 95 / 99 over all tokens:",
      [round(float(x), 3) for x in np.percentile(per_token, [50, 90, 95, 99])])
for e in [int(x) for x in os.environ.get("ENTRIES", "").split(",") if x]:
    print(f"  entry {e}: seen {int(e_seen[e])}, changed on {float(rate[e]):.3f}")
mobile = (e_seen >= 20) & (rate > 0.2)
print(f"entries seen at least 20 times that changed on over a fifth of their steps: {int(mobile.sum())} of "
      f"{int((e_seen >= 20).sum())}, holding {float(e_seen[mobile].sum() / e_seen.sum()):.3f} of the tokens")
top = torch.nonzero(mobile)[:, 0][torch.argsort(-e_seen[mobile])][:16]
print("the 16 of them seen most often (for docs/codebook_entries.py entries=...):", ",".join(str(int(e)) for e in top))
