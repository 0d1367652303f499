"""One block of the shipped Crafter world model (fp32) in a batch-1 step's pass of two frames (forward_cached_pair's
"merged" attention), eager against its two pure parts compiled by torch.compile (inductor): the adaLN norm, QKV
projection, QK norm and RoPE; and the output projection, gated residual, second norm and MLP. The attention and
its KV-cache writes stay eager between them. Microseconds a call, medians of 10 alternated runs of 200 calls.

    python docs/compile_block_time.py [cpp]

cpp: inductor's C++ wrapper (options={"cpp_wrapper": True}), which calls its kernels without Python in between.
Why measured: the step's small operations cost several milliseconds at batch 1 and compiling fuses them; on this
project's 2-core EPYC (2026-12-07, 55th session) it did not pay (docs/results.md, "The conditioning kept per frame").
"""
import statistics
import sys
import time

import gymnasium as gym
import torch
import torch.nn.functional as F

import worldsim  # noqa: F401  (registers the envs)
from worldsim.kernels import attention

torch.set_grad_enabled(False)


def attn_in(x, shift1, scale1, w, b, qw, kw, cos, sin, heads: int, eps: float, rms_eps: float):
    B, T, N, D = x.shape
    hd = D // heads
    h = F.layer_norm(x, (D,), eps=eps) * (1 + scale1) + shift1
    q, k, v = F.linear(h, w, b).reshape(B, T * N, 3, heads, hd).permute(2, 0, 3, 1, 4)

    def norm_rope(t, weight):  # RoPE on (even, odd) pairs in real arithmetic (inductor has no complex kernels)
        t = F.rms_norm(t, (hd,), weight, rms_eps)
        a, c = t[..., 0::2], t[..., 1::2]
        return torch.stack([a * cos - c * sin, a * sin + c * cos], -1).flatten(-2)
    return norm_rope(q, qw), norm_rope(k, kw), v


def block_out(x, o, gate1, shift2, scale2, gate2, pw, pb, w1, b1, w2, b2, eps: float):
    B, T, N, D = x.shape
    x = x + gate1 * F.linear(o.transpose(1, 2).reshape(B, T, N, D), pw, pb)
    h = F.layer_norm(x, (D,), eps=eps) * (1 + scale2) + shift2
    return x + gate2 * F.linear(F.gelu(F.linear(h, w1, b1), approximate="tanh"), w2, b2)


opts = {"cpp_wrapper": True} if "cpp" in sys.argv[1:] else {}
c_in, c_out = (torch.compile(f, dynamic=False, options=opts) for f in (attn_in, block_out))
env = gym.make("worldsim/Crafter-v0", quantize="none")
env.reset(seed=0)
sim = env.unwrapped.sim
dit, cache, blk = sim.dit, sim.cache, sim.dit.blocks[0]
N, D = cache.N, dit.config.dim
g = torch.Generator().manual_seed(0)
x, c = torch.randn(1, 2, N, D, generator=g), torch.randn(1, 2, D, generator=g)
mods = blk.ada(c)
side = int(round(N ** 0.5))
cos, sin = (torch.cat(t) for t in zip(dit._rope_at(9, side, side), dit._rope_at(10, side, side)))


def eager():
    return blk(x, c, cos, sin, cache=cache, layer=0, commit_slot=1, alone="merged", mod=mods)[0]


def compiled():
    shift1, scale1, gate1, shift2, scale2, gate2 = mods[:, :, None].chunk(6, dim=-1)
    at = blk.attn
    q, k, v = c_in(x, shift1, scale1, at.qkv.weight, at.qkv.bias, at.q_norm.weight, at.k_norm.weight, cos, sin,
                   at.heads, blk.norm1.eps, at.q_norm.eps)
    out_c = attention(q[:, :, :N], k[:, :, :N], v[:, :, :N], None)
    cache.write_slot(0, 1, k[:, :, :N], v[:, :, :N])
    out = torch.cat([out_c, attention(q[:, :, N:], *cache.write_scratch(0, k[:, :, N:], v[:, :, N:]),
                                      cache.attn_mask(1))], 2)
    return c_out(x, out, gate1, shift2, scale2, gate2, at.proj.weight, at.proj.bias, blk.mlp[0].weight,
                 blk.mlp[0].bias, blk.mlp[2].weight, blk.mlp[2].bias, blk.norm2.eps)


print(f"largest difference from eager: {(eager() - compiled()).abs().max().item():.2e}")
for _ in range(50):
    eager(), compiled()
times = {"eager": [], "compiled": []}
for _ in range(10):
    for name, f in (("eager", eager), ("compiled", compiled)):
        t = time.perf_counter()
        for _ in range(200):
            f()
        times[name].append((time.perf_counter() - t) / 200 * 1e6)
for name, ts in times.items():
    print(f"{name}{' (cpp wrapper)' if opts and name == 'compiled' else ''}: median {statistics.median(ts):.0f} us "
          f"({min(ts):.0f} to {max(ts):.0f})")
