"""Does a collected Minetest dataset carry the camera action in its frames, at the right tick?

For each held-out episode: the horizontal shift between consecutive frames (`worldsim.evaluate.phase_shift`),
correlated with the yaw action at lags -1..2. Lag 0 (action t against frames t -> t+1) should be the
strongest; the others are non-zero only because the explorer's camera persists from tick to tick.

    python docs/camera_alignment.py [DATA_DIR] [EPISODES]
"""
import sys
from pathlib import Path

import numpy as np

from worldsim.data import load_episodes
from worldsim.evaluate import phase_shift


def main(root="data/minetest", n=3):
    for e in load_episodes(Path(root), split="test")[: int(n)]:
        f, yaw = e["frames"].astype(np.float32), np.asarray(e["actions"]["camera"])[:, 1]
        s = np.array([phase_shift(f[t], f[t + 1])[1] for t in range(len(yaw))])
        corr = {lag: np.corrcoef(yaw[max(0, -lag):len(yaw) - max(0, lag)], s[max(0, lag):len(s) + min(0, lag)])[0, 1]
                for lag in (-1, 0, 1, 2)}
        print(f"seed {e.get('seed', '?')}: corr(yaw action t, shift of frames t+lag -> t+lag+1): "
              + "  ".join(f"lag {k:+d} {v:+.3f}" for k, v in corr.items()))


if __name__ == "__main__":
    main(*sys.argv[1:])
