"""Could the heads read a step's sampling pass instead of its commit pass? Linear probes on both, same transitions.

    python docs/heads_probe_sampling_pass.py [OUT.json]   (default docs/heads_probe_sampling_pass.json; about 4 minutes)

Why ask: merging the commit of frame t-1 into frame t's sampling pass saves 2-3 ms of a batch-1 step
(docs/merged_pass_time.py), but then the reward, termination and event heads can only read the sampling pass of
frame t (its tokens come from noise at sigma_max, the context and the action) beside the commit of frame t-1.
The shipped heads (heads_input="pair") read the commit passes of frames t and t-1.

Every transition of data/crafter_ends_canvas and data/crafter_random_canvas with a death or a nonzero reward, and
3,000 others drawn at random, each stepped once from its 4 real frames by the shipped simulator (heads.step_transitions,
as `worldsim heads` steps them); each pass's last-block tokens averaged. For each label (death; an achievement,
reward >= 0.9; a health loss, reward < 0) and each input, an L2-regularised logistic regression fit on two thirds
and scored (AUROC) on the rest, over 5 random splits: mean and spread.
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from worldsim.data import load_episodes
from worldsim.heads import step_transitions, transition_labels, transitions
from worldsim.simulator import WorldSimulator, load_bundle


def auroc(score: np.ndarray, y: np.ndarray) -> float:
    ranks = np.empty(len(score))
    ranks[np.argsort(score)] = np.arange(1, len(score) + 1)
    n1, n0 = y.sum(), (~y).sum()
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def probe(X: torch.Tensor, y: torch.Tensor, seed: int) -> float:
    idx = torch.randperm(len(X), generator=torch.Generator().manual_seed(seed))
    tr, te = idx[:len(X) * 2 // 3], idx[len(X) * 2 // 3:]
    Xs = (X - X[tr].mean(0)) / (X[tr].std(0) + 1e-6)
    w, b = torch.zeros(X.shape[1], requires_grad=True), torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200)

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(Xs[tr] @ w + b, y[tr].float()) + 1e-3 * w.square().sum()
        loss.backward()
        return loss
    opt.step(closure)
    with torch.no_grad():
        return auroc((Xs[te] @ w + b).numpy(), y[te].numpy().astype(bool))


def main():
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/heads_probe_sampling_pass.json")
    torch.set_num_threads(2)
    b = load_bundle("worldsim/assets/crafter")
    W = b.dit.config.context_frames
    eps = load_episodes(Path("data/crafter_ends_canvas")) + load_episodes(Path("data/crafter_random_canvas"))
    items = transitions(eps, W)
    r, term = transition_labels(eps, items, W)
    rng = np.random.default_rng(0)
    pos = np.flatnonzero((r.numpy() != 0) | term.numpy())
    neg = rng.choice(np.flatnonzero((r.numpy() == 0) & ~term.numpy()), 3000, replace=False)
    sel = rng.permutation(np.concatenate([pos, neg]))
    items, r, term = [items[i] for i in sel], r[sel], term[sel]
    sim = WorldSimulator(b, 16, 1)
    grab, model_pass = {}, sim.dit.forward_cached

    def recorded(*a, **k):  # the sampling pass's tokens (outputs="frame"), averaged
        o = model_pass(*a, **k)
        if k.get("outputs") == "frame":
            grab["sample"] = o.features.float().mean(1)
        return o
    sim.dit.forward_cached = recorded
    S, C, P = [], [], []
    for res, k in step_transitions(sim, eps, items, np.random.default_rng(1)):
        half = res.head_input.shape[1] // 2  # [commit t, commit t-1]
        S.append(grab["sample"][:k])
        C.append(res.head_input[:k, :half])
        P.append(res.head_input[:k, half:])
    S, C, P = torch.cat(S), torch.cat(C), torch.cat(P)
    inputs = {"commit t + commit t-1 (shipped heads' input)": torch.cat([C, P], 1),
              "sample t + commit t-1 (a merged pass's)": torch.cat([S, P], 1),
              "commit t alone": C, "sample t alone": S}
    labels = {"death": term, "achievement (reward >= 0.9)": r >= 0.9, "health loss (reward < 0)": r < 0}
    res = {"transitions": len(items), "deaths": int(term.sum()), "achievements": int((r >= 0.9).sum()),
           "health_losses": int((r < 0).sum()), "auroc": {}}
    for ln, y in labels.items():
        for xn, X in inputs.items():
            a = [probe(X, y, s) for s in range(5)]
            res["auroc"].setdefault(ln, {})[xn] = {"mean": float(np.mean(a)), "std": float(np.std(a))}
            print(f"{ln:28s} {xn:46s} AUROC {np.mean(a):.3f} ± {np.std(a):.3f}")
    out.write_text(json.dumps(res, indent=1))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
