"""Where a learned-env step's time goes: `python docs/step_profile.py DEVICE BATCH [STEPS] [KEY=VALUE ...]` steps the
shipped Crafter env (gymnasium.make / make_vec, random actions) under cProfile and prints the functions with the
most cumulative time and with the most time of their own (on CUDA a host read that waits for the GPU shows up
as time in the call that reads). Extra KEY=VALUE
arguments go to the env (e.g. amp=bf16 map_memory=false snap=false).

    python docs/step_profile.py cpu 16
    python docs/step_profile.py cuda 1 50 amp=bf16
"""
import cProfile
import pstats
import sys
import time

import gymnasium as gym
import torch
from omegaconf import OmegaConf

import worldsim  # noqa: F401  (registers the envs)

device, batch = sys.argv[1], int(sys.argv[2])
steps = int(sys.argv[3]) if len(sys.argv) > 3 and "=" not in sys.argv[3] else 20
kw = OmegaConf.to_container(OmegaConf.from_dotlist([a for a in sys.argv[3:] if "=" in a]))
kw = {"device": device, "termination_threshold": 2.0, **kw}
env = gym.make("worldsim/Crafter-v0", **kw) if batch == 1 else gym.make_vec("worldsim/Crafter-v0", num_envs=batch, **kw)
env.reset(seed=0)
env.action_space.seed(0)
sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
for _ in range(5):
    env.step(env.action_space.sample())
sync()
acts = [env.action_space.sample() for _ in range(steps)]
prof = cProfile.Profile()
t0 = time.perf_counter()
prof.enable()
for a in acts:
    env.step(a)
sync()
prof.disable()
dt = time.perf_counter() - t0
print(f"{device} batch {batch} {kw}: {1000 * dt / steps:.1f} ms/step, {batch * steps / dt:.0f} env-steps/s (profiled)")
pstats.Stats(prof).sort_stats("cumulative").print_stats(28)
pstats.Stats(prof).sort_stats("tottime").print_stats(12)
