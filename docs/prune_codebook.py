"""Drop a codebook's rare entries: `python docs/prune_codebook.py BUNDLE OUT FLOOR DATA [DATA ...]` copies BUNDLE to
OUT without the entries that fewer than FLOOR of the tokens of 20,000 training frames of DATA are nearest to.
Its terrain prior (and token head) are left out; refit the prior after:
`worldsim codebook bundle=OUT "data=[DATA,...]" refit=false terrain=true new_ground=terrain`.
Why: k-means++ gives rare tiles entries, and one-off mixtures of tiles too. In the light bundle's explorer
rollouts a far estimate snapped to such an entry, and the map memory and terrain prior spread it over the
world (docs/results.md, "The game's light, drawn by the env"). A scratch step for now, not a `worldsim codebook`
option: measured on one bundle only.
"""
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from worldsim.checkpoint import bundle_and_training_data
from worldsim.codebook import frame_tokens, nearest, with_codebook

if len(sys.argv) < 5:
    sys.exit(__doc__)
src, dst, floor, data = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
if dst.exists():
    sys.exit(f"{dst} exists; choose another OUT")
shutil.copytree(src, dst)
path, b, eps = bundle_and_training_data(str(dst), data)
frames = np.concatenate([ep["frames"] for ep in eps])
pick = np.sort(np.random.default_rng(1).choice(len(frames), 20000, replace=False))
tokens = frame_tokens(b.codec, frames[pick])
codebook = b.codebook.float().cpu()
_, idx = nearest(tokens, codebook)
counts = np.bincount(idx.numpy(), minlength=len(codebook))
keep = counts >= floor
print(f"{len(tokens)} tokens; entries nearest to fewer than {floor}: {(~keep).sum()} of {len(codebook)} "
      f"(percentiles 1 / 5 / 25 / 50 of the counts: {np.percentile(counts, [1, 5, 25, 50])})")
info = dict(b.meta["codebook"])
for part in ("terrain", "head"):  # fitted on the groups of the entries before
    info.pop(part, None)
info.update(entries=int(keep.sum()), pruned={"floor": floor, "tokens": int(len(tokens)), "dropped": int((~keep).sum())})
with_codebook(dst, codebook[torch.as_tensor(keep)], info, True, None, None, None, {"new_ground": "nearest"})
print(f"{dst}: {keep.sum()} entries kept; refit the terrain prior now")
