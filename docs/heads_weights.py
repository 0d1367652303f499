"""Refit the reward and termination heads with other loss weights, on the input they read in the env (Crafter).

    python docs/heads_weights.py [BUNDLE]   (default: the shipped model; about 6 minutes on 2 cores)

`worldsim heads` weights achievements 10 (diffusion.reward_pos_weight) and ends 10. This computes the heads'
input once (`worldsim.heads.commit_features`: the commit pass of the frame the model makes from 4 real frames
and the real action) on data/crafter_detour's train and test splits and on data/crafter-heldout, refits copies
of the heads from the bundle's weights for 3,000 steps with each pair of weights, and prints achievements and
ends right / predicted of real on the test split and on the held-out collection. The bundle is not changed.
"""
import copy
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from worldsim.checkpoint import Bundle
from worldsim.data import load_episodes
from worldsim.heads import commit_features

torch.set_num_threads(2)
b = Bundle(Path(sys.argv[1] if len(sys.argv) > 1 else "worldsim/assets/crafter"))
tr = commit_features(b, load_episodes(Path("data/crafter_detour"), split="train"))
sets = {"test split": commit_features(b, load_episodes(Path("data/crafter_detour"), split="test"), seed=1),
        "held-out": commit_features(b, load_episodes(Path("data/crafter-heldout"), split="test"), seed=2)}


def counts(norm, mlp, X, R, T):
    with torch.no_grad():
        o = mlp(norm(X))
    p, t, pt = o[:, 0] > 0.5, R > 0.5, torch.sigmoid(o[:, 1]) > 0.5
    return (f"achievements {int((p & t).sum())} / {int(p.sum())} of {int(t.sum())}, "
            f"ends {int((pt & T).sum())} / {int(pt.sum())} of {int(T.sum())}")


print("shipped |", " | ".join(f"{k}: {counts(b.dit.head_norm, b.dit.heads_mlp, *v)}" for k, v in sets.items()))
X, R, T = tr
for rw, pw in ((10, 10), (3, 3), (1, 3), (1, 1)):
    norm, mlp = copy.deepcopy(b.dit.head_norm), copy.deepcopy(b.dit.heads_mlp)
    params = [p for m in (norm, mlp) for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, 1e-3, weight_decay=0.01)
    g = torch.Generator().manual_seed(0)
    for _ in range(3000):
        idx = torch.randint(len(X), (512,), generator=g)
        o = mlp(norm(X[idx]))
        w = 1 + (rw - 1) * (R[idx].abs() > 0.5).float()
        loss = (F.mse_loss(o[:, 0], R[idx], reduction="none") * w).mean() + F.binary_cross_entropy_with_logits(
            o[:, 1], T[idx].float(), pos_weight=torch.tensor(float(pw)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"achievements weighted {rw}, ends {pw} |",
          " | ".join(f"{k}: {counts(norm, mlp, *v)}" for k, v in sets.items()))
