"""The held-out next-frame windows the docs/ scripts share (imported by them, not run on its own)."""
import numpy as np

from worldsim.data import episode_clock, index_actions, stack_actions


def next_frame_starts(eps, W: int, n: int = 256, stride: int = 4, seed: int = 0) -> list:
    """(episode, start) of up to n windows of W context frames and one next frame, every `stride`-th start,
    shuffled with `seed`."""
    starts = [(e, s) for e, ep in enumerate(eps) for s in range(0, len(ep["frames"]) - W - 1, stride)]
    np.random.default_rng(seed).shuffle(starts)
    return starts[:n]


def next_frame_batches(sim, eps, starts, rng):
    """Per batch of sim.B windows: (context frames, real next frames, next actions, the model's step), each
    batch reset from its real context and stepped once on the real action, noise drawn from rng."""
    W, B, shape = sim.window, sim.B, sim.latent_shape
    for i in range(0, len(starts) - B + 1, B):
        ch = starts[i:i + B]
        ctx = np.stack([eps[e]["frames"][s:s + W] for e, s in ch])
        ctx_a = stack_actions([index_actions(eps[e]["actions"], slice(s, s + W - 1)) for e, s in ch])
        nxt = np.stack([eps[e]["frames"][s + W] for e, s in ch])
        act = np.array([eps[e]["actions"][s + W - 1] for e, s in ch])
        sim.reset(range(B), ctx, ctx_a, rng.standard_normal((B, W, *shape)), [episode_clock(eps[e], s + W - 1) for e, s in ch])
        yield ctx, nxt, act, sim.step(act, rng.standard_normal((B, *shape)), rng.standard_normal((B, *shape)))
