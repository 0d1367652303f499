"""How much does a Minetest model's next frame depend on the camera action?

    python docs/camera_sensitivity.py [BUNDLE [GUIDANCE]]     (default: the shipped model, its guidance)

From each of the bundle's start states, with the same noise, it generates the next frame for the four
probe turns of `worldsim eval` (yaw and pitch +-6 degrees) and prints their mean absolute difference beside
the difference that another noise draw makes for the same turns. A model that ignores the camera shows
less difference between turns than between noise draws.
"""
import sys

import numpy as np
import torch

from worldsim.data import stack_actions
from worldsim.evaluate import _minetest_probe
from worldsim.simulator import WorldSimulator, load_bundle

torch.set_num_threads(1)
b = load_bundle(sys.argv[1] if len(sys.argv) > 1 else "worldsim/assets/minetest", "cpu")
W = b.dit.config.context_frames
turns = stack_actions(list(_minetest_probe(6.0).values()))
B = len(turns["camera"])
sim = WorldSimulator(b, B, None, guidance=float(sys.argv[2]) if len(sys.argv) > 2 else None)
shape = sim.latent_shape
rng = np.random.default_rng(0)
act_d, noise_d = [], []
for s in range(len(b.start_frames)):
    ctx_a = {k: v[s].numpy() for k, v in b.start_actions.items()}
    outs = []
    for _ in range(2):  # two noise draws
        sim.reset(range(B), np.repeat(b.start_frames[s].numpy()[None], B, 0), stack_actions([ctx_a] * B),
                  rng.standard_normal((1, W, *shape)).repeat(B, 0))
        step_noise = rng.standard_normal((1, *shape)).repeat(B, 0)
        outs.append(sim.step(turns, step_noise, np.zeros((B, *shape))).frames.astype(float))
    g = outs[0]
    act_d.append(np.mean([np.abs(g[i] - g[j]).mean() for i in range(B) for j in range(i + 1, B)]))
    noise_d.append(np.abs(outs[0] - outs[1]).mean())
print(f"mean |frame(a) - frame(a')| over camera actions: {np.mean(act_d):.2f} grey levels; "
      f"same action, other noise: {np.mean(noise_d):.2f}")
