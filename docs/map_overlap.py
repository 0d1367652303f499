"""Where the real Crafter view h steps on comes from, on `worldsim eval`'s held-out windows: the ground kept in
view since the last context frame, ground the context frames showed that left the view and came back (what
the map memory brings back; docs/results.md, Crafter: map memory), ground first seen during the h steps, and new ground.

    python docs/map_overlap.py

The player's moves are read from the real frames: a move step scrolled the 9 x 7 tile view if the next frame
matches the last one scrolled better than unscrolled (the player's tile left out; a tie, a field of one tile,
counts as scrolled). Data: data/crafter-heldout, the eval's seed, stride and 256 windows. Seconds of CPU.
"""
from pathlib import Path

import numpy as np

from worldsim.data import load_episodes
from worldsim.evaluate import rollout_starts

eps = load_episodes(Path("data/crafter-heldout"), split="test")
W, H = 4, 64  # the shipped model's context; the eval's longest horizon (it picks windows that fit it)
starts = rollout_starts(eps, W, H, 8, 256, np.random.default_rng(1000000))  # as `worldsim eval` draws them
MOVES = {1: (-1, 0), 2: (1, 0), 3: (0, -1), 4: (0, 1)}  # move_left, move_right, move_up, move_down: (dx, dy)
PLAYER = (3, 4)  # row, column of the player's tile in the view


def tiles(frame):  # (7, 9, 7, 7, 3): the map view's 7-pixel tiles
    return frame[:49, :63].reshape(7, 7, 9, 7, 3).transpose(0, 2, 1, 3, 4).astype(np.int16)


def scrolled(f0, f1, dx, dy) -> bool:
    a, b = tiles(f0), tiles(f1)
    err = {}
    for sx, sy in ((dx, dy), (0, 0)):
        diff = []
        for r in range(7):
            for c in range(9):
                r0, c0 = r + sy, c + sx  # the last view's tile this one shows, if it scrolled by (sx, sy)
                if 0 <= r0 < 7 and 0 <= c0 < 9 and PLAYER not in ((r, c), (r0, c0)) \
                        and 0 <= r + dy < 7 and 0 <= c + dx < 9:  # the same tiles for both hypotheses
                    diff.append(np.abs(b[r, c] - a[r0, c0]).mean())
        err[(sx, sy)] = np.mean(diff)
    return err[(dx, dy)] <= err[(0, 0)]


positions = {}


def track(e):
    if e not in positions:
        f, acts, p = eps[e]["frames"], eps[e]["actions"], [(0, 0)]
        for t in range(len(f) - 1):
            dx, dy = MOVES.get(int(acts[t]), (0, 0))
            moved = (dx or dy) and scrolled(f[t], f[t + 1], dx, dy)
            p.append((p[-1][0] + dx, p[-1][1] + dy) if moved else p[-1])
        positions[e] = p
    return positions[e]


def view(p):
    return {(p[0] + c, p[1] + r) for r in range(7) for c in range(9)}


def main():
    for h in (8, 32, 64):
        kinds = np.zeros(4)
        for e, s in starts:
            P = track(e)
            context = set().union(*[view(P[s + i]) for i in range(W)])
            kept, seen = view(P[s + W - 1]), set()
            for k in range(1, h):
                v = view(P[s + W - 1 + k])
                kept &= v
                seen |= v
            for t in view(P[s + W - 1 + h]):
                kinds[0 if t in kept else 1 if t in context else 2 if t in seen else 3] += 1
        kinds /= kinds.sum()
        print(f"horizon {h}: kept in view {kinds[0]:.1%}, from the context and back {kinds[1]:.1%}, "
              f"first seen on the way {kinds[2]:.1%}, new {kinds[3]:.1%}")


if __name__ == "__main__":
    main()
