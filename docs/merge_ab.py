"""One pass a step against two, for the shipped Crafter bundle (heads_input: sample_pair), in one process.

    python docs/merge_ab.py [QUANTIZE=none|int8]

Two simulators of the same bundle step the same actions and noise from the same start states: one commits the
pending frame in its sampling pass (`WorldSimulator.merge`, the default), the other in a pass of its own before
it (the same numbers, `tests/test_simulator.py`). At batch 1, 2, 4, 8 and 16, four blocks each, alternating
(40 steps a block at batch 1, 10 above); prints the medians in ms a step.
"""
import sys
import time

import numpy as np
import torch

from worldsim.simulator import WorldSimulator, load_bundle

torch.set_num_threads(2)
b = load_bundle("worldsim/assets/crafter")
q = sys.argv[1] if len(sys.argv) > 1 else "none"
W = b.dit.config.context_frames
for B in (1, 2, 4, 8, 16):
    sims = [WorldSimulator(b, B, quantize=q) for _ in range(2)]
    sims[1].merge = False
    rng = np.random.default_rng(0)
    shape = sims[0].latent_shape
    idx = np.arange(B) % b.start_frames.shape[0]
    ctx = rng.standard_normal((B, W, *shape))
    for s in sims:
        s.reset(range(B), b.start_frames[idx, :W].numpy(), b.start_actions[idx, :W - 1].numpy(), ctx)
    n = 40 if B == 1 else 10
    acts, noise = rng.integers(0, 17, (4 * n, B)), rng.standard_normal((4 * n, 2, B, *shape))
    ms = [[], []]
    for block in range(4):
        for i, s in enumerate(sims):
            t = time.perf_counter()
            for j in range(block * n, (block + 1) * n):
                s.step(acts[j], noise[j, 0], noise[j, 1])
            ms[i].append((time.perf_counter() - t) / n * 1e3)
    print(f"{q} batch {B}: one pass {np.median(ms[0]):.2f} ms, two passes {np.median(ms[1]):.2f} ms a step", flush=True)
