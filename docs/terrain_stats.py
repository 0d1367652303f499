"""Why the terrain prior (docs/results.md, Crafter: terrain prior): how much new ground real scrolls bring into a view
that is mostly one tile, against what the token head expects in the model's own rollout. A few minutes.

    python docs/terrain_stats.py data/crafter_detour data/crafter-heldout

Real: every move of the collections' episodes whose view scrolled (as the map memory decides it); by how
uniform the view was before (the share of its 9 x 7 map cells in its commonest codebook group), the cells of
the new strip in another group. Uniform views: the share of real frames whose view is that uniform.
Model: the shipped model with new_ground=nearest (the freeze) under the explorer, 1,500 steps; on each step
whose frame scrolled, the token head's expected number of strip cells outside the view's commonest group
(the sum over the strip of 1 - p(that group)), by the same uniformity.
"""
import pathlib
import sys

import gymnasium as gym
import numpy as np
import torch

import worldsim  # noqa: F401  (registers the envs)
from worldsim import DEFAULT_CRAFTER_BUNDLE
from worldsim.agents import make_agent
from worldsim.codebook import cell_features, encode_frames, entry_index, nearest
from worldsim.data import load_episodes
from worldsim.diffusion import EDM
from worldsim.simulator import MapMemory, load_bundle

BINS = ((0.0, 0.8), (0.8, 0.95), (0.95, 1.01))


def bin_of(share):
    return next(i for i, (lo, hi) in enumerate(BINS) if lo <= share < hi)


b = load_bundle(str(DEFAULT_CRAFTER_BUNDLE))
G, cb, desc = b.codebook_groups, b.codebook.float(), b.env["map"]
view = torch.zeros(9, 9, dtype=torch.bool)
view[:7] = True  # the map view above the inventory, the player's tile included (as the eval's frames show it)

# real scrolls
real = [[0, 0, 0] for _ in BINS]  # scrolls, strip cells in another group, strips with any
shares = []
for d in sys.argv[1:]:
    for ep in load_episodes(pathlib.Path(d)):
        with torch.no_grad():
            z = encode_frames(b.codec, ep["frames"])
        T, C, h, w = z.shape
        idx = nearest(z.permute(0, 2, 3, 1).reshape(-1, C).float(), cb)[1]
        zs, g = cb[idx].view(T, h, w, C).permute(0, 3, 1, 2), G[idx].view(T, h, w)
        mem = MapMemory(desc, 17, T - 1, (C, h, w), "cpu")
        a = torch.as_tensor(np.asarray(ep["actions"]), dtype=torch.long).reshape(-1)[:T - 1]
        moved = mem.scrolled(zs[1:], zs[:-1], a)
        step = torch.where(moved[:, None], mem.move[a], 0)
        new = mem.new_cells(step)
        for t in range(T):
            gv = g[t][view]
            shares.append(float((gv == gv.mode().values).float().mean()))
        for t in torch.nonzero(new.flatten(1).any(1))[:, 0].tolist():
            gv = g[t][view]
            common = gv.mode().values
            k = bin_of(float((gv == common).float().mean()))
            other = int((g[t + 1][new[t]] != common).sum())
            real[k][0] += 1
            real[k][1] += other
            real[k][2] += other > 0
shares = np.array(shares)
print(f"real frames: {len(shares)}; share whose view has its commonest group on >= 0.8 / 0.95 / 0.98 of its cells: "
      f"{(shares >= 0.8).mean():.3f} / {(shares >= 0.95).mean():.3f} / {(shares >= 0.98).mean():.3f}")

# the token head in the model's own rollout: the sampling pass's features reach the snap through `project`
model = [[0, 0.0] for _ in BINS]
plain = EDM.step_cached


def step_cached(self, *args, project=None, **kw):
    def spy(z, centre, features):
        out = project(z, centre, features)
        sim = env.unwrapped.sim
        if sim.map is not None and bool(sim.map.pos[0].ne(pos_before[0]).any()):  # the frame scrolled
            strip = sim.reveal_cells[int(action[0])]
            gv = G[entry_index(out[0].permute(1, 2, 0)[view], cb)]
            common = gv.mode().values
            C, h, w = z.shape[1:]
            p = sim.bundle.token_head(cell_features(features[:1], h, w), z[0].permute(1, 2, 0).reshape(-1, C)).softmax(-1)
            k = bin_of(float((gv == common).float().mean()))
            model[k][0] += 1
            model[k][1] += float((1 - p[strip.reshape(-1), common]).sum())
        return out
    return plain(self, *args, project=spy if project is not None else None, **kw)


EDM.step_cached = step_cached
env = gym.make("worldsim/Crafter-v0", new_ground="nearest", termination_threshold=2.0, horizon=10 ** 6)
sim = env.unwrapped.sim
sim.reveal_cells = torch.zeros(17, 9, 9, dtype=torch.bool)
for act, cells in b.env["reveal"].items():
    for r, c in cells:
        sim.reveal_cells[int(act), r, c] = True
agent = make_agent("explorer", env.action_space, seed=0)
obs, _ = env.reset(seed=0)
agent.reset()
action, pos_before = [0], [None]
with torch.no_grad():
    for _ in range(1500):
        action[0] = agent.act(obs)
        pos_before[0] = sim.map.pos[0].clone()
        obs = env.step(action[0])[0]
for (lo, hi), (n, cells, strips), (m, expect) in zip(BINS, real, model):
    print(f"view's commonest group on [{lo:.2f}, {min(hi, 1):.2f}) of it: real {n} scrolls, {cells / max(n, 1):.2f} "
          f"new cells of another group per strip ({strips / max(n, 1):.2f} with any); model (token head) {m} scrolls, "
          f"{expect / max(m, 1):.2f} expected")
