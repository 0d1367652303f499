"""How much of the real view h steps ahead the last context frame showed, on `worldsim eval`'s windows.

    python docs/horizon_overlap.py

An estimate from the actions alone (each move shifts the 9x7 view by one tile; blocked moves are counted
as moves, since the episodes do not record the player's position): the share of the view h steps on that
was in the last context view, over the eval's 256 held-out windows (data/crafter-heldout, its seed and
stride). A second of CPU.
"""
from pathlib import Path

import numpy as np

from worldsim.data import load_episodes
from worldsim.evaluate import rollout_starts

eps = load_episodes(Path("data/crafter-heldout"), split="test")
W, H = 4, 64  # the shipped model's context; the eval's longest horizon (it picks windows that fit it)
starts = rollout_starts(eps, W, H, 8, 256, np.random.default_rng(1000000))  # as `worldsim eval` draws them
MOVES = {1: (-1, 0), 2: (1, 0), 3: (0, -1), 4: (0, 1)}  # move_left, move_right, move_up, move_down
for h in (8, 32, 64):
    overlap = []
    for e, s in starts:
        x = y = 0
        for a in eps[e]["actions"][s + W - 1: s + W - 1 + h]:
            dx, dy = MOVES.get(int(a), (0, 0))
            x, y = x + dx, y + dy
        overlap.append(max(0, 9 - abs(x)) * max(0, 7 - abs(y)) / 63)
    overlap = np.array(overlap)
    print(f"horizon {h}: the view shares {overlap.mean():.0%} of its tiles with the last context view on average; "
          f"nothing in {(overlap == 0).mean():.0%} of the windows")
