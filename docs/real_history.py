"""Does history in the KV cache hurt when the history is real? `python docs/real_history.py BUNDLE DATA [STEPS]`
walks a Crafter bundle teacher-forced along real held-out episodes: reset from each episode's first four frames,
then at every step sample the next frame (one step, the model's raw sample, no snap or memories) from the real
action, and commit the real frame's latent, not the sample. Two caches side by side, same noise:
- `cache`: as the simulator keeps it, each committed frame's keys computed attending to the frames before it,
  so after a few steps the window carries history from before it (4 layers x 4 frames reach 16 steps back);
- `rebuilt`: rebuilt from the last four committed frames after every commit (`fresh_window=1`), as a reset
  builds it and as training saw it.
It prints the mean per-frame PSNR of the decoded sample against the real frame per block of steps after the
reset, for both and for copying the last frame. If the `cache` column falls below `rebuilt` as the history
grows, the model cannot read real history either, and training on windows longer than its attention window
(so context keys carry history, as in a rollout) is the fix to try; if not, only a rollout's own drifted
history hurts (docs/results.md, "The freeze: history in the cache"). A bundle whose `env.light` is set reads
the collection's canvases (collect with canvas=true).
"""
import pathlib
import sys

import numpy as np
import torch

from worldsim.data import load_episodes
from worldsim.simulator import WorldSimulator, context_clock, load_bundle

bundle_path, data = sys.argv[1], pathlib.Path(sys.argv[2])
STEPS = int(sys.argv[3]) if len(sys.argv) > 3 else 60
BLOCK = 5
torch.manual_seed(0)
b = load_bundle(bundle_path)
canvas = bool(b.env.get("light"))
eps = [e for e in load_episodes(data) if len(e["actions"]) >= STEPS + 4]
if canvas and any("canvas" not in e for e in eps):
    sys.exit(f"{data}: this bundle reads canvases; collect with canvas=true")
frames = np.stack([(e["canvas"] if canvas else e["frames"])[:STEPS + 4] for e in eps])  # (B, T, H, W, 3)
actions = np.stack([np.asarray(e["actions"][:STEPS + 3]) for e in eps])  # actions[t] makes frames[t + 1]
B, W = len(eps), 4
sim = WorldSimulator(b, B, quantize="none", snap=False, map_memory=False, tile_hold=0, ticks=False)
edm, dit, codec, level = sim.edm, sim.dit, sim.codec, sim.context_noise
if dit.config.context_frames != W:
    sys.exit(f"this script assumes a window of {W} frames; the model's is {dit.config.context_frames}")
real_z = codec.encode(torch.as_tensor(frames))  # (B, T, C, h, w)
C, h, w = real_z.shape[2:]
ticks = torch.zeros(B, dit.config.ticks) if dit.config.ticks else None
gen = torch.Generator().manual_seed(0)
noises = [(torch.randn(B, C, h, w, generator=gen), torch.randn(B, C, h, w, generator=gen)) for _ in range(STEPS)]
ctx0 = torch.randn(B, W, C, h, w, generator=gen)


def psnr(x, y):
    mse = ((x.astype(np.float64) - y.astype(np.float64)) ** 2).mean(axis=(1, 2, 3))
    return 10 * np.log10(255 ** 2 / np.maximum(mse, 1e-10))


def run(rebuild: bool) -> np.ndarray:
    sim.reset(range(B), frames[:, :W], actions[:, :W - 1], ctx0.numpy(), canvas=frames[:, :W] if canvas else None)
    prev, prev_ctx = real_z[:, W - 1].clone(), sim.prev_ctx.clone()
    win = [real_z[:, i] + level * ctx0[:, i] for i in range(W)]  # committed latents, as the reset noised them
    out = np.zeros((STEPS, B))
    for k in range(STEPS):
        t, i = sim.time + 1, W + k  # the new frame's time and its index in the episode
        a = torch.as_tensor(actions[:, i - 1])
        got = {}

        def teacher(z, centre, features):  # keep the sample to score; commit the real frame
            got["z"] = z
            return real_z[:, i]

        clock = torch.as_tensor(np.full(B, i), dtype=torch.long)
        _, zc, _, _ = edm.step_cached(dit, sim.cache, t, a, prev, prev_ctx, noises[k][0], noises[k][1], level, 1,
                                      sim.guidance, project=teacher, clock=clock, ticks=ticks)
        sim.time, prev, prev_ctx = t, real_z[:, i], zc
        win = win[1:] + [zc]
        if rebuild:  # as fresh_window=1: the cache from the last W committed frames alone, the oldest's action unread
            z = torch.stack(win, 1)
            acts = torch.as_tensor(actions[:, i - W:i])  # the actions into frames i-W+1 .. i
            acts = torch.cat([torch.zeros_like(acts[:, :1]), acts[:, 1:]], 1)
            has = torch.ones(B, W, dtype=torch.bool)
            has[:, 0] = False
            edm.prefill(dit, sim.cache, range(B), z, acts, has, torch.arange(t - W + 1, t + 1), torch.zeros_like(z),
                        level, clock=torch.as_tensor(context_clock(np.full(B, i), W)),
                        ticks=None if ticks is None else torch.zeros(B, W, ticks.shape[1]))
        out[k] = psnr(codec.decode(got["z"]).numpy(), frames[:, i])
    return out


cache, rebuilt = run(False), run(True)
copy = np.stack([psnr(frames[:, W + k - 1], frames[:, W + k]) for k in range(STEPS)])
print(f"{bundle_path} on {data}: {B} episodes, {STEPS} teacher-forced steps after a reset from 4 real frames; "
      f"mean per-frame PSNR (dB; an exact frame capped at 100)")
print(f"{'steps after reset':>18s} {'cache':>7s} {'rebuilt':>8s} {'copy-last':>10s}")
cap = lambda x: np.minimum(x, 100).mean()  # noqa: E731
for s in range(0, STEPS, BLOCK):
    j = slice(s, s + BLOCK)
    print(f"{f'{s + 1}-{s + BLOCK}':>18s} {cap(cache[j]):7.2f} {cap(rebuilt[j]):8.2f} {cap(copy[j]):10.2f}")
print(f"{'all':>18s} {cap(cache):7.2f} {cap(rebuilt):8.2f} {cap(copy):10.2f}")
