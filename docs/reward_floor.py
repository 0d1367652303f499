"""The reward head's small values, on real frames and in the model's own rollouts, per reward floor.

    worldsim rollout episodes=16 steps=500 batch_size=16 seed=100 reward_floor=0 out=ROLLOUTS
    python docs/reward_floor.py ROLLOUTS [BUNDLE] [--real data/crafter-heldout] [--floors 0 0.2 0.3 0.5]

On every held-out real transition after W real frames (read as the env reads it: the commit pass of the frame
the model makes, `worldsim.heads.commit_features`, about 2.5 minutes here) the head's values kept by each floor
are summed beside the real rewards; in the rollouts (made with reward_floor=0, so their rewards are the head's
values) the return per 200 steps each floor gives, beside the real explorer's on the held-out episodes.
"""
import argparse

import numpy as np
import torch

from worldsim import DEFAULT_CRAFTER_BUNDLE
from worldsim.checkpoint import Bundle
from worldsim.data import load_episodes
from worldsim.heads import commit_features

ap = argparse.ArgumentParser()
ap.add_argument("rollouts")
ap.add_argument("bundle", nargs="?", default=DEFAULT_CRAFTER_BUNDLE)
ap.add_argument("--real", default="data/crafter-heldout")
ap.add_argument("--floors", type=float, nargs="+", default=[0, 0.2, 0.3, 0.5])
args = ap.parse_args()

b = Bundle(args.bundle)
real = load_episodes(args.real)
feats, rewards, _ = commit_features(b, real)
with torch.no_grad():
    head = b.dit.heads_mlp(b.dit.head_norm(feats))[:, 0].numpy()
rewards = rewards.numpy()
rolled = np.concatenate([ep["rewards"] for ep in load_episodes(args.rollouts)])
every = np.concatenate([ep["rewards"] for ep in real])  # all real steps, for the explorer's return
print(f"real: {len(rewards)} transitions after {b.dit.config.context_frames} frames, rewards summing to "
      f"{rewards.sum():.2f}; the explorer's return {200 * every.sum() / len(every):.2f} per 200 steps "
      f"({200 * (every > 0.5).sum() / len(every):.2f} achievements)")
print(f"rollouts: {len(rolled)} steps ({args.rollouts})")
for f in args.floors:
    kept = np.where(np.abs(head) < f, 0.0, head)
    r = np.where(np.abs(rolled) < f, 0.0, rolled)
    print(f"floor {f:4.2f}: real frames, the head's kept values sum to {kept.sum():6.2f}; rollouts return "
          f"{200 * r.sum() / len(r):5.2f} per 200 steps")
