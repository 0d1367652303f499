"""Can the reward and termination heads read the sampling pass instead of the commit pass? (Crafter)

    python docs/sample_pass_heads.py [BUNDLE]   (default: the shipped model; about 5 minutes on 2 cores)

Why ask: each step runs two world-model passes, one that samples frame t (its input is noise at the top
sigma) and one that commits it to the KV cache (its input is the sampled frame, lightly noised); the heads
read the commit pass. Committing frame t inside the pass that samples t+1 would save one pass's overhead
(about 3 ms of a 14 ms step at batch 1), but then the reward of step t would come a step late unless the
heads read the sampling pass. This measures what such heads would get:
  - the bundle's heads on commit-pass features (the last frame at the context noise level), as shipped;
  - the same heads on sampling-pass features (the last frame pure noise at the top sigma);
  - new heads (the same layers, started from the shipped ones) trained on sampling-pass features of the
    training split of data/crafter_detour for 3,000 steps, the shipped heads' losses.
Scored on every window of data/crafter_detour's test split and data/crafter-heldout (reward > 0.5 is an
achievement; termination probability > 0.5), as precision and recall counts.
"""
import copy
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from worldsim.data import load_episodes
from worldsim.simulator import load_bundle

torch.set_num_threads(2)
torch.manual_seed(0)
b = load_bundle(sys.argv[1] if len(sys.argv) > 1 else "worldsim/assets/crafter")
dit, edm, codec = b.dit, b.edm, b.codec
W = dit.config.context_frames
level, top = edm.cfg.context_noise, edm.sampling_sigmas(1)[0]
g = torch.Generator().manual_seed(0)


@torch.no_grad()
def features(eps, last_sigma):
    """Each window of W + 1 frames: the last block's mean token of its last frame, with that frame at
    last_sigma (its input noise at that level, the context at the context noise level), and its reward and
    termination."""
    out_f, rew, term = [], [], []
    for ep in eps:
        z = codec.encode(torch.as_tensor(ep["frames"]))
        acts = torch.as_tensor(ep["actions"])
        ends = list(range(W + 1, len(acts) + 1))  # frame s, entered by action s - 1
        for i in range(0, len(ends), 64):
            ss = ends[i:i + 64]
            zz = torch.stack([z[s - W:s + 1] for s in ss])
            aa = torch.stack([acts[s - W - 1:s] for s in ss])
            sig = torch.full(zz.shape[:2], level)
            sig[:, -1] = last_sigma
            x = zz + level * torch.randn(zz.shape, generator=g)  # the commit pass: every frame lightly noised
            if last_sigma != level:  # the sampling pass: the last frame is noise alone
                x[:, -1] = last_sigma * torch.randn(zz[:, -1].shape, generator=g)
            inp, c_noise = edm.model_input(x, sig)
            out_f.append(dit(inp, c_noise, aa, torch.ones(sig.shape, dtype=torch.bool)).features[:, -1].mean(1))
            rew += [float(ep["rewards"][s - 1]) for s in ss]
            term += [bool(ep["terminated"][s - 1]) for s in ss]
    return torch.cat(out_f), torch.tensor(rew), torch.tensor(term)


def score(tag, norm, mlp, X, R, T):
    with torch.no_grad():
        o = mlp(norm(X))
    p, t = o[:, 0] > 0.5, R > 0.5
    pt = torch.sigmoid(o[:, 1]) > 0.5
    print(f"{tag:44s} reward: {int(t.sum())} achievements, {int(p.sum())} predicted, {int((p & t).sum())} right | "
          f"termination: {int(T.sum())} ends, {int(pt.sum())} predicted, {int((pt & T).sum())} right")


held = load_episodes(Path("data/crafter_detour"), split="test") + load_episodes(Path("data/crafter-heldout"), split="test")
commit, sample = features(held, level), features(held, top)
print(f"{len(commit[0])} held-out windows")
score("shipped heads, commit pass (as shipped)", dit.head_norm, dit.heads_mlp, *commit)
score("shipped heads, sampling pass", dit.head_norm, dit.heads_mlp, *sample)
X, R, T = features(load_episodes(Path("data/crafter_detour"), split="train"), top)
norm, mlp = copy.deepcopy(dit.head_norm), copy.deepcopy(dit.heads_mlp)
params = [p for m in (norm, mlp) for p in m.parameters()]
for p in params:
    p.requires_grad_(True)
opt = torch.optim.AdamW(params, 1e-3, weight_decay=0.01)
for it in range(3000):
    idx = torch.randint(len(X), (512,), generator=g)
    o = mlp(norm(X[idx]))
    w = 1 + (edm.cfg.reward_pos_weight - 1) * (R[idx].abs() > 0.5).float()
    loss = (F.mse_loss(o[:, 0], R[idx], reduction="none") * w).mean() + 0.1 * F.binary_cross_entropy_with_logits(
        o[:, 1], T[idx].float(), pos_weight=torch.tensor(10.0))
    opt.zero_grad()
    loss.backward()
    opt.step()
score(f"new heads on the sampling pass ({len(X)} windows)", norm, mlp, *sample)
