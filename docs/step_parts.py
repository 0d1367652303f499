"""Where a Crafter step's time goes: wall-clock timers around the world model's parts, through the Gymnasium API.

    python docs/step_parts.py [BATCH]   (default 1; 20 timed steps after 10 warm-up steps)

Prints the step's milliseconds and, per step, the milliseconds spent in each timed part (parts nest: "block"
holds "attn", which holds "attention", the scaled dot-product call, and so on).
"""
import collections
import sys
import time

import gymnasium as gym

import worldsim  # noqa: F401  (registers the envs)
import worldsim.model as mm

B = int(sys.argv[1]) if len(sys.argv) > 1 else 1
T = collections.defaultdict(float)


def timed(owner, name, key):
    f = getattr(owner, name)

    def g(*a, **k):
        t = time.perf_counter()
        r = f(*a, **k)
        T[key] += time.perf_counter() - t
        return r
    setattr(owner, name, g)


for n in ("attention", "rms_rope", "ln_modulate", "residual_ln_modulate", "rearrange"):  # the model's kernels (worldsim.kernels)
    timed(mm, n, n)
timed(mm.KVCache, "write_scratch", "write_scratch")
env = gym.make_vec("worldsim/Crafter-v0", num_envs=B) if B > 1 else gym.make("worldsim/Crafter-v0")
sim = env.unwrapped.sim


def hook(m, key):
    def pre(mod, inp):
        mod._t0 = time.perf_counter()

    def post(mod, inp, out):
        T[key] += time.perf_counter() - mod._t0
    m.register_forward_pre_hook(pre)
    m.register_forward_hook(post)


for blk in sim.dit.blocks:
    for key, m in (("block", blk), ("attn", blk.attn), ("qkv", blk.attn.qkv), ("proj", blk.attn.proj),
                   ("ada", blk.ada), ("fc1", blk.mlp[0]),
                   ("gelu", blk.mlp[1]), ("fc2", blk.mlp[2])):
        hook(m, key)
timed(type(sim.codec), "decode", "decode")
env.reset(seed=0)
env.action_space.seed(0)
for _ in range(10):
    env.step(env.action_space.sample())
T.clear()
t, n = time.perf_counter(), 20
for _ in range(n):
    env.step(env.action_space.sample())
print(f"batch {B}: {(time.perf_counter() - t) / n * 1e3:.2f} ms per step;",
      ", ".join(f"{k} {v / n * 1e3:.2f}" for k, v in sorted(T.items(), key=lambda kv: -kv[1])))
