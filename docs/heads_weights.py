"""Refit the reward and termination heads with other loss weights and training sets, on the input they read in
the env, and score them as the env uses them (Crafter).

    python docs/heads_weights.py [--cache FILE] [BUNDLE]   (default: the shipped model; on 2 cores the features
                                                            take about 25 minutes, the six refits about 10)

The heads' input is computed once per collection (`worldsim.heads.commit_features`: the commit pass of the frame
the model makes from 4 real frames and the real action) for the train splits of data/crafter_detour and
data/crafter_ends and for three held-out sets: their test splits and data/crafter-heldout (`--cache FILE` keeps
them). Copies of the bundle's heads are refit for 3,000 steps (as `worldsim heads`) with achievements weighted
1, 2 or 3 and ends weighted 1 (calibrated: the env draws each step's end from the probability), and are
reported beside the bundle's own heads: achievements right / predicted of real; the termination figures of
`worldsim eval` (`worldsim.evaluate.end_scores`); and, per held-out episode (each ends in a death), the chance
that a drawn end falls in the 6 steps before the real death (a zombie strikes every 6 steps while it stays
next to the player, and the model sees 4 frames) against the expected ends per 1,000 steps elsewhere.
The bundle is not changed.
"""
import copy
import sys
from pathlib import Path

import torch

from worldsim.checkpoint import Bundle
from worldsim.data import load_episodes
from worldsim.evaluate import end_scores
from worldsim.heads import commit_features, refit_heads, transitions

torch.set_num_threads(2)
args = sys.argv[1:]
cache = None
if args[:1] == ["--cache"]:
    cache, args = Path(args[1]), args[2:]
b = Bundle(Path(args[0] if args else "worldsim/assets/crafter"))
SETS = {"detour_train": ("data/crafter_detour", "train", 0), "ends_train": ("data/crafter_ends", "train", 3),
        "detour_test": ("data/crafter_detour", "test", 1), "ends_test": ("data/crafter_ends", "test", 4),
        "heldout": ("data/crafter-heldout", "test", 2)}
eps = {k: load_episodes(Path(d), split=s) for k, (d, s, _) in SETS.items()}
if cache is not None and cache.exists():
    feats = torch.load(cache)
else:
    feats = {k: commit_features(b, eps[k], seed=seed) for k, (_, _, seed) in SETS.items()}
    if cache is not None:
        torch.save(feats, cache)


def score(norm, mlp, k):
    X, R, T = feats[k]
    with torch.no_grad():
        o = mlp(norm(X))
    a, t = o[:, 0] > 0.5, R > 0.5
    episode = [e for e, _ in transitions(eps[k], b.dit.config.context_frames)]  # commit_features' order
    e = end_scores(torch.sigmoid(o[:, 1]).numpy(), T.numpy(), episode)
    ne = e["near_real_ends"]
    return (f"achievements {int((a & t).sum())}/{int(a.sum())} of {int(t.sum())}; ends {e['ends']}, expected "
            f"{e['expected_ends']:.1f}, expected recall {e['expected_recall']:.3f}, precision "
            f"{e['expected_precision']:.3f}, AUROC {e['auroc']:.3f}; an end in the last {ne['window']} steps "
            f"{ne['chance_per_end']:.2f}, elsewhere {ne['expected_ends_elsewhere_per_1000']:.2f} per 1,000 steps")


def report(name, norm, mlp):
    print(name)
    for k in ("detour_test", "ends_test", "heldout"):
        print(f"  {k:12s} {score(norm, mlp, k)}")
    sys.stdout.flush()


report("bundle's heads", b.dit.head_norm, b.dit.heads_mlp)
saved = copy.deepcopy(b.dit.head_norm.state_dict()), copy.deepcopy(b.dit.heads_mlp.state_dict())
for train in (["detour_train"], ["detour_train", "ends_train"]):
    X, R, T = (torch.cat([feats[k][i] for k in train]) for i in range(3))
    for aw in (1, 2, 3):
        b.dit.head_norm.load_state_dict(saved[0]), b.dit.heads_mlp.load_state_dict(saved[1])
        refit_heads(b, X, R, T, steps=3000, achievement_weight=aw, end_weight=1)
        report(f"refit on {' + '.join(train)} ({len(X)} transitions, {int(T.sum())} ends), achievements {aw}, ends 1",
               b.dit.head_norm, b.dit.heads_mlp)
