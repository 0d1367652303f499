"""Where a batch-1 Crafter step's time goes around the world model: wall-clock timers on the simulator's parts.

    python docs/step_outside_model.py [QUANTIZE]   (none or int8; default the bundle's, int8; 300 timed steps)

Prints the step's milliseconds and the milliseconds per step in each timed part. Parts nest: `step_cached` holds
`forward_cached` (the world model's passes: two a step with heads_input "pair"; with "sample_pair", the shipped
bundle's since the 53rd session, one `forward_cached_pair` a step) and the simulator's `project` (snap, keep_off_map,
map.step and its draw_terrain); `_show` (tile hold and decode) and `_light` run after it. docs/step_parts.py
splits the model's passes instead.
"""
import collections
import sys
import time

import gymnasium as gym
import torch

import worldsim  # noqa: F401  (registers the envs)
import worldsim.diffusion as D
import worldsim.model as M
import worldsim.simulator as S

T = collections.defaultdict(float)


def timed(owner, name, key=None):
    f = getattr(owner, name)

    def g(*a, **k):
        t = time.perf_counter()
        r = f(*a, **k)
        T[key or name] += time.perf_counter() - t
        return r
    setattr(owner, name, g)


for n in ("snap", "seed_snap", "sample_snap", "keep_off_map", "draw_terrain"):  # as the simulator imported them
    timed(S, n)
timed(S.MapMemory, "step", "map.step")
for n in ("_show", "_light", "_step"):
    timed(S.WorldSimulator, n)
timed(D.EDM, "step_cached")
timed(M.WorldDiT, "forward_cached")
timed(M.WorldDiT, "forward_cached_pair")
timed(M.WorldDiT, "_rope_at")
torch.set_num_threads(2)
env = gym.make("worldsim/Crafter-v0", quantize=sys.argv[1] if len(sys.argv) > 1 else None)
env.reset(seed=0)
env.action_space.seed(0)
for _ in range(50):
    env.step(env.action_space.sample())
T.clear()
n = 300
t = time.perf_counter()
for _ in range(n):
    env.step(env.action_space.sample())
print(f"{1000 * (time.perf_counter() - t) / n:.2f} ms a step")
for k, v in sorted(T.items(), key=lambda x: -x[1]):
    print(f"{k:>16s} {1000 * v / n:7.3f} ms")
