"""The revisit probe as a picture: a full 360-degree turn in the real game and in the learned env with and
without its view memory, from the same real context (docs/results.md, Minetest: view memory).

    python docs/revisit_strip.py OUT.png [TRIALS] [SEED] [VIDEO.mp4]

As `worldsim eval env=minetest` does it: a held-out world (seed SEED + 104729 * (k + 1), SEED default
1,000,000), 8 explorer steps, 13 still ticks (the last 4 are the context), then 24 turns of 15 degrees of yaw
and one still tick in the real game; the learned env (`worldsim/Minetest-v0`, the shipped model) resets from
that context and turns the same way, once with view_memory=0 and once with the bundle's default. One block
of rows per trial (real, memory off, memory on; the first view, then every third turn, then the last), and the
last-vs-first PSNR of each row printed. With VIDEO.mp4, every step of every trial side by side (real, memory
off, memory on) at 5 frames per second, each view enlarged 2x.
"""
import sys

import gymnasium as gym
import imageio.v2 as imageio
import numpy as np
import torch
from PIL import Image

import worldsim  # noqa: F401  (registers the envs)
from worldsim.agents import make_agent
from worldsim.data import stack_actions
from worldsim.envs import minerl_actions
from worldsim.envs.real_minetest import RealMinetestEnv
from worldsim.evaluate import psnr_np

torch.set_num_threads(2)
out, trials = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 2
seed = int(sys.argv[3]) if len(sys.argv) > 3 else 1_000_000
video = sys.argv[4] if len(sys.argv) > 4 else None
W, n, settle = 4, 24, 10
turn = minerl_actions.noop()
turn["camera"] = np.array([0.0, 360.0 / n], np.float32)
models = {"memory off": gym.make("worldsim/Minetest-v0", view_memory=0), "memory on": gym.make("worldsim/Minetest-v0")}
real = RealMinetestEnv()
blocks, clips = [], []
try:
    for k in range(trials):
        agent = make_agent("explorer", real.action_space, seed=seed + k)
        obs, _ = real.reset(seed=seed + 104729 * (k + 1))
        for _ in range(8):
            obs = real.step(agent.act(obs))[0]
        frames = [obs] + [real.step(minerl_actions.noop())[0] for _ in range(settle + W - 1)]
        ctx = np.stack(frames[-W:])
        rows = {"real": [real.step(turn)[0] for _ in range(n)]}
        rows["real"][-1] = real.step(minerl_actions.noop())[0]
        for name, env in models.items():
            env.reset(seed=k, options={"context_frames": ctx,
                                       "context_actions": stack_actions([minerl_actions.noop() for _ in range(W - 1)])})
            rows[name] = [env.step(turn)[0] for _ in range(n)]
        for name, seq in rows.items():
            print(f"trial {k}: {name:>10s} last vs first {psnr_np(seq[-1], ctx[-1]):6.2f} dB, "
                  f"half-way {psnr_np(seq[n // 2 - 1], ctx[-1]):6.2f} dB")
            blocks.append(np.concatenate([ctx[-1]] + seq[2:n - 1:3] + [seq[-1]], axis=1))
        clips += [np.concatenate([ctx[-1]] * 3, axis=1)] * 3 + [np.concatenate([rows[r][i] for r in rows], axis=1)
                                                                for i in range(n)]
finally:
    real.close()
    for env in models.values():
        env.close()
Image.fromarray(np.concatenate(blocks, axis=0)).save(out)
print(f"written to {out}")
if video:
    imageio.mimwrite(video, [f.repeat(2, 0).repeat(2, 1) for f in clips], fps=5, macro_block_size=1)
    print(f"written to {video}")
