"""Walking away and back, as a picture: the real Crafter game and the learned env with and without its map
memory, from the same real context and the same moves (docs/results.md, Crafter: map memory).

    python docs/walkback_strip.py OUT.png [STARTS] [STEPS]

For each start k (held-out world seed 1,000,000 + 7919 * (k + 1)): 12 explorer steps in the real game, the
last 4 frames the context; then STEPS (default 8) move_left and STEPS move_right in the real game and in
`worldsim/Crafter-v0` (the shipped model) reset from that context, once with map_memory=false and once with
its default (on). One block of rows per start (real, memory off, memory on; every second step), and each row's
last-vs-first PSNR of the map view (the 7 x 9 tiles above the inventory) printed: the real game comes back
to its first view unless a move was blocked (how many of its moves out scrolled its view is printed too,
read from its frames as docs/map_overlap.py reads them).
"""
import sys
from pathlib import Path

import gymnasium as gym
import imageio.v2 as imageio
import numpy as np
import torch

import worldsim  # noqa: F401  (registers the envs)
from worldsim.agents import make_agent
from worldsim.evaluate import psnr_np

sys.path.insert(0, str(Path(__file__).parent))
from map_overlap import scrolled  # noqa: E402

torch.set_num_threads(2)
out = sys.argv[1]
starts = int(sys.argv[2]) if len(sys.argv) > 2 else 3
steps = int(sys.argv[3]) if len(sys.argv) > 3 else 8
moves = [1] * steps + [2] * steps  # move_left, then move_right
blocks = []
for k in range(starts):
    real = gym.make("worldsim/RealCrafter-v0")
    obs, _ = real.reset(seed=1_000_000 + 7919 * (k + 1))
    agent = make_agent("explorer", real.action_space, seed=k)
    agent.reset()
    frames, acts = [obs], []
    for _ in range(12):
        acts.append(agent.act(obs))
        obs = real.step(acts[-1])[0]
        frames.append(obs)
    ctx, ctx_a = np.stack(frames[-4:]), np.array(acts[-3:])
    rows = [[ctx[-1]] + [real.step(a)[0] for a in moves]]
    real.close()
    for mem in (False, None):
        env = gym.make("worldsim/Crafter-v0", **({"map_memory": mem} if mem is not None else {}))
        first, _ = env.reset(seed=k, options={"context_frames": ctx, "context_actions": ctx_a})
        rows.append([first] + [env.step(a)[0] for a in moves])
        env.close()
    out_moves = sum(scrolled(rows[0][i], rows[0][i + 1], -1, 0) for i in range(steps))
    print(f"start {k}: the real view scrolled on {out_moves} of its {steps} moves out")
    for name, row in zip(("real", "memory off", "memory on"), rows):
        print(f"start {k}, {name:10s}: last vs first map view {psnr_np(row[-1][:49], row[0][:49]):6.2f} dB")
    blocks.append(np.concatenate([np.concatenate([np.pad(f, ((1, 1), (1, 1), (0, 0)), constant_values=255)
                                                  for f in row[::2]], 1) for row in rows], 0))
img = np.concatenate([np.pad(b, ((0, 6), (0, 0), (0, 0)), constant_values=255) for b in blocks], 0)
imageio.imwrite(out, img.repeat(2, 0).repeat(2, 1))
print(f"written to {out}")
