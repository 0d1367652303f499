"""What one env-step of the shipped Crafter model costs in arithmetic, and what this CPU can do with it: the
ceiling that the batched speed target meets (docs/results.md, Crafter: speed).

    python docs/compute_budget.py [BATCH]

1. FLOPs of one `worldsim/Crafter-v0` vector-env step at batch BATCH (default 16), fp32 weights (int8's GEMMs
   do the same multiply-adds), counted by torch.utils.flop_counter over the whole step (world model
   passes, decoder), per env-step and by module.
2. This CPU's throughput on the world model's commonest GEMM at that batch (BATCH x 81 tokens, 192 -> 768,
   an MLP's first layer), fp32 `torch.nn.functional.linear` and the int8 dynamic-quantized Linear the shipped
   model runs, best of 5 x 50 calls, at torch's thread count.
3. The env-steps per second that throughput would allow if every FLOP ran at it (nothing else costs time),
   against the target: 2x real Crafter.
"""
import sys
import time
import warnings

import gymnasium as gym
import torch
from torch.utils.flop_counter import FlopCounterMode

import worldsim  # noqa: F401  (registers the envs)

warnings.filterwarnings("ignore")
B = int(sys.argv[1]) if len(sys.argv) > 1 else 16
env = gym.make_vec("worldsim/Crafter-v0", num_envs=B, termination_threshold=2.0, quantize="none")
env.reset(seed=0)
env.action_space.seed(0)
for _ in range(3):
    env.step(env.action_space.sample())
count = FlopCounterMode(display=False, depth=2)
with count:
    env.step(env.action_space.sample())
env.close()
per_step = count.get_total_flops() / B
print(f"batch {B}: {per_step / 1e6:.0f} MFLOP per env-step, by module:")
for name, flops in sorted(count.get_flop_counts().items(), key=lambda kv: -sum(kv[1].values()))[1:6]:
    print(f"  {name:24s} {sum(flops.values()) / B / 1e6:7.1f} MFLOP")


def best_rate(fn, flops):
    fn()
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(50):
            fn()
        times.append((time.perf_counter() - t0) / 50)
    return flops / min(times)


x = torch.randn(B * 81, 192)
lin = torch.nn.Linear(192, 768)
with torch.no_grad():
    fp32 = best_rate(lambda: torch.nn.functional.linear(x, lin.weight, lin.bias), 2 * B * 81 * 192 * 768)
    q = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(lin), {torch.nn.Linear}, dtype=torch.qint8)
    int8 = best_rate(lambda: q(x), 2 * B * 81 * 192 * 768)
print(f"GEMM ({B * 81} x 192 -> 768) on {torch.get_num_threads()} threads: fp32 {fp32 / 1e9:.1f} GFLOP/s, "
      f"int8 dynamic {int8 / 1e9:.1f} GFLOP/s")
for name, rate in (("fp32", fp32), ("int8", int8)):
    print(f"  at {name}'s rate every FLOP of a step: at most {rate / per_step:,.0f} env-steps/s")
