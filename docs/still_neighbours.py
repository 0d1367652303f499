"""How often the four tiles around a Crafter player who stays put change, in a learned rollout and in the game.

`python docs/still_neighbours.py ROLLOUT.npz DATA` reads a rollout that `docs/explorer_rollout.py` wrote (the frames
the model drew, canvases under the env's light, and the explorer's actions) and a real collection made with
canvas=true (e.g. data/crafter-heldout). It counts the steps on which the player stayed on its tile: the view
did not scroll (the map view's mean change under 1.5 grey levels). It splits them into `do` and place steps,
whose facing tile may change in the game, and the rest (noops, blocked moves, crafting, sleep). For each kind it
prints the share of steps on which a tile beside the player (above, below, left, right) changed by more than 10
grey levels on average. In the game that is a mob walking by, or for `do`/place the facing tile. A learned world
that redraws the ground around a still player walls it in: docs/results.md, "The freeze: history in the cache".
"""
import glob
import json
import sys
from collections import Counter

import numpy as np

TILE, ROWS, COLS = 7, 7, 9  # Crafter's 64 x 64 frame: a 9 x 7 tile map view of 7-pixel tiles, the player at its centre
PLAYER = (3, 4)
NEIGHBOURS = [(PLAYER[0] - 1, PLAYER[1]), (PLAYER[0] + 1, PLAYER[1]), (PLAYER[0], PLAYER[1] - 1),
              (PLAYER[0], PLAYER[1] + 1)]
DO, PLACE = 5, (7, 8, 9, 10)


def still_steps(frames: np.ndarray, actions: np.ndarray, keep_step: bool = False):
    """Per step t (frame t-1 -> t, made by actions[t]) on which the view did not scroll: (kind, a neighbour changed),
    and t with keep_step."""
    f = frames.astype(np.int16)
    view = np.abs(np.diff(f[:, :ROWS * TILE, :COLS * TILE], axis=0)).mean(axis=(1, 2, 3))
    out = []
    for t in range(1, len(f)):
        if view[t - 1] >= 1.5:
            continue
        d = [np.abs(f[t, r * TILE:(r + 1) * TILE, c * TILE:(c + 1) * TILE]
                    - f[t - 1, r * TILE:(r + 1) * TILE, c * TILE:(c + 1) * TILE]).mean() for r, c in NEIGHBOURS]
        a = int(actions[t])
        out.append(("do or place" if a == DO or a in PLACE else "other", max(d) > 10) + ((t,) if keep_step else ()))
    return out


def report(name, rows):
    for kind in ("do or place", "other"):
        hits = [c for k, c in rows if k == kind]
        print(f"  {name:8s} {kind:12s}: {len(hits):6d} still steps, a neighbour changed on "
              f"{np.mean(hits) if hits else float('nan'):.3f}")


roll = np.load(sys.argv[1])
# the rollout's actions[t] made frames[t]; an episode's actions[t] makes canvas[t + 1]
report("learned", still_steps(roll["frames"], roll["actions"]))
real, why = [], Counter()
names = json.loads(open(f"{sys.argv[2]}/manifest.json").read())["env"].get("events", [])
for path in sorted(glob.glob(f"{sys.argv[2]}/episodes/*.npz")):
    ep = np.load(path)
    if "canvas" not in ep:
        sys.exit(f"{path}: collect with canvas=true")
    rows = still_steps(ep["canvas"], np.concatenate([[0], ep["actions"]]), keep_step=True)
    real += [(k, c) for k, c, _ in rows]
    if "events" in ep:  # what the game did on the still do/place steps that changed a tile beside the player
        why.update(",".join(names[i] for i in np.nonzero(ep["events"][t - 1])[0]) or "no event"
                   for k, c, t in rows if k == "do or place" and c)
report("real", real)
if why:
    print("  real do/place steps that changed a tile beside the player, by the game's event on that step:",
          dict(why.most_common()))
