"""Would a termination head with memory of the episode find Crafter's deaths better? (measured, not built)

    python docs/heads_memory.py FEATURES   (FEATURES: the cache of `docs/heads_weights.py --cache`; a few minutes)

The shipped head reads one step's commit-pass features, and the model sees 4 frames, so it cannot time a zombie's
blows (one every 6 steps). DIAMOND's reward/end model is recurrent over the episode. This trains a GRU (64 units)
over each episode's sequence of the same features, from its first transition, on the train splits of
data/crafter_detour and data/crafter_ends (ends weighted 1, 800 steps of 32 episodes), and prints the figures of
`worldsim eval` (`end_scores`) on the three held-out sets. Caveat: the features come from real context at every
step; in the env they would come from the model's own rollout.
"""
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from worldsim.data import load_episodes
from worldsim.evaluate import end_scores
from worldsim.heads import transitions

torch.set_num_threads(2)
torch.manual_seed(0)
feats = torch.load(sys.argv[1])
SETS = {"detour_train": ("data/crafter_detour", "train"), "ends_train": ("data/crafter_ends", "train"),
        "detour_test": ("data/crafter_detour", "test"), "ends_test": ("data/crafter_ends", "test"),
        "heldout": ("data/crafter-heldout", "test")}


def sequences(k, W=4):
    """(features (L, dim), ends (L,)) per episode, in the cache's order (`transitions`, the shipped model's W)."""
    X, _, T = feats[k]
    episode = torch.tensor([e for e, _ in transitions(load_episodes(Path(SETS[k][0]), split=SETS[k][1]), W)])
    return [(X[episode == e], T[episode == e].float()) for e in range(int(episode.max()) + 1)]


class RecurrentEndHead(nn.Module):
    def __init__(self, dim, hidden=64):
        super().__init__()
        self.norm, self.inp = nn.LayerNorm(dim), nn.Linear(dim, hidden)
        self.gru, self.out = nn.GRU(hidden, hidden, batch_first=True), nn.Linear(2 * hidden, 1)

    def forward(self, x):  # (B, L, dim) -> end logits (B, L); the step's own input beside the memory
        z = F.silu(self.inp(self.norm(x)))
        return self.out(torch.cat([self.gru(z)[0], z], -1))[..., 0]


train = sequences("detour_train") + sequences("ends_train")
head = RecurrentEndHead(train[0][0].shape[1])
opt = torch.optim.AdamW(head.parameters(), 1e-3, weight_decay=0.01)
rng = np.random.default_rng(0)
for step in range(800):
    idx = rng.choice(len(train), 32, replace=False)
    L = max(len(train[i][0]) for i in idx)
    X, T, M = torch.zeros(32, L, train[0][0].shape[1]), torch.zeros(32, L), torch.zeros(32, L)
    for j, i in enumerate(idx):
        n = len(train[i][0])
        X[j, :n], T[j, :n], M[j, :n] = train[i][0], train[i][1], 1
    loss = (F.binary_cross_entropy_with_logits(head(X), T, reduction="none") * M).sum() / M.sum()
    opt.zero_grad()
    loss.backward()
    opt.step()
print(f"{len(train)} training episodes, loss at the end {loss.item():.4f}")
with torch.no_grad():
    for k in ("detour_test", "ends_test", "heldout"):
        seqs = sequences(k)
        p = np.concatenate([torch.sigmoid(head(x[None]))[0].numpy() for x, _ in seqs])
        t = np.concatenate([e.numpy() > 0.5 for _, e in seqs])
        e = end_scores(p, t, np.repeat(np.arange(len(seqs)), [len(x) for x, _ in seqs]))
        ne = e["near_real_ends"]
        print(f"  {k:12s} ends {e['ends']}, expected {e['expected_ends']:.1f}, expected recall "
              f"{e['expected_recall']:.3f}, precision {e['expected_precision']:.3f}, AUROC {e['auroc']:.3f}; an end "
              f"in the last {ne['window']} steps {ne['chance_per_end']:.2f}, elsewhere "
              f"{ne['expected_ends_elsewhere_per_1000']:.2f} per 1,000 steps")
