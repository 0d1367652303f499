"""The batch-1 world model's small operations timed alone on this CPU, each beside the alternatives tried for it
(docs/results.md, "Batch-1 speed: q and k together"), and the q and k path against two rms_rope calls inside
the shipped env.

    python docs/cpu_op_timings.py [ops|env|all]   (default all; ops about 2 minutes, env about 3)

ops: microseconds a call (median of a few thousand after a warm-up, 2 threads) at the shipped Crafter model's
shapes: 81 tokens of 192, 3 heads of 64, 405 keys (4 context frames and the frame itself), a 9 x 9 grid of 256
channels in the decoder.
env: the shipped env, fp32, 12 blocks of 100 random-action steps each way, the q and k path (kernels.qkv_norm_rope)
swapped with the two rms_rope calls it replaced every block; medians of the blocks' ms a step.
"""
import copy
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

import worldsim.kernels as K


def us(f, n=2000):
    for _ in range(50):
        f()
    t = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - t) / n * 1e6


def two_rms_rope(qkv, wq, wk, cos, sin, eps):
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    return K.rms_rope(q, wq, cos, sin, eps), K.rms_rope(k, wk, cos, sin, eps), v


@torch.no_grad()
def ops():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from worldsim.model import Rotary3D, TanhGELU
    from worldsim.simulator import load_bundle

    g = torch.Generator().manual_seed(0)
    N, D, H, hd = 81, 192, 3, 64
    qkv = torch.randn(1, N, 3, H, hd, generator=g)
    wq, wk = torch.rand(hd, generator=g) + 0.5, torch.rand(hd, generator=g) + 0.5
    cos, sin = Rotary3D(hd).at_time(7, 9, 9)
    print(f"q and k: two rms_rope calls {us(lambda: two_rms_rope(qkv, wq, wk, cos, sin, 1e-6)):.0f} us, "
          f"qkv_norm_rope {us(lambda: K.qkv_norm_rope(qkv, wq, wk, cos, sin, 1e-6)):.0f} us")

    q, k, v = (torch.randn(1, H, L, hd, generator=g) for L in (N, 405, 405))
    s = hd ** -0.5

    def by_hand():
        return torch.bmm(torch.bmm((q * s).view(H, N, hd), k.view(H, 405, hd).mT).softmax(-1), v.view(H, 405, hd))

    def math_backend():
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(q, k, v)
    print(f"attention, 81 queries over 405 keys: scaled_dot_product_attention "
          f"{us(lambda: F.scaled_dot_product_attention(q, k, v)):.0f} us, matmul-softmax-matmul {us(by_hand):.0f} us, "
          f"its math backend {us(math_backend):.0f} us")

    x = torch.randn(1, 1, N, D, generator=g)
    fc1, gelu = torch.nn.Linear(D, 4 * D), TanhGELU()
    packed = torch.ops.mkldnn._reorder_linear_weight(fc1.weight, 1)
    print(f"MLP's first layer and GELU: torch {us(lambda: gelu(fc1(x))):.0f} us, oneDNN fused "
          f"{us(lambda: torch.ops.mkldnn._linear_pointwise(x, fc1.weight, fc1.bias, 'gelu', [], 'tanh')):.0f} us, "
          f"its weights prepacked "
          f"{us(lambda: torch.ops.mkldnn._linear_pointwise(x, packed, fc1.bias, 'gelu', [], 'tanh')):.0f} us")
    mkl = torch.ops.mkl._mkl_reorder_linear_weight(fc1.weight, N)
    x2 = x.view(N, D)
    print(f"linear 192 -> 768: torch {us(lambda: fc1(x2)):.0f} us, MKL packed "
          f"{us(lambda: torch.ops.mkl._mkl_linear(x2, mkl, fc1.weight, fc1.bias, N)):.0f} us")

    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qlin = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(torch.nn.Linear(D, 3 * D)),
                                                      {torch.nn.Linear}, dtype=torch.qint8)[0]
    op, pp = torch.ops.quantized.linear_dynamic.default, qlin._packed_params._packed_params
    print(f"int8 linear 192 -> 576: torch.ao's module {us(lambda: qlin(x)):.0f} us, its op called directly "
          f"{us(lambda: op(x, pp, True)):.0f} us")

    conv = load_bundle("worldsim/assets/crafter").ae.dec[0].conv1  # the decoder's 3 x 3, 256 -> 256
    y = torch.randn(1, 256, 9, 9, generator=g)
    w = conv.weight.reshape(256, -1)
    yl = y.contiguous(memory_format=torch.channels_last)
    from torch.utils import mkldnn
    mk = mkldnn.to_mkldnn(copy.deepcopy(conv))
    ym = y.to_mkldnn()
    print(f"decoder 3x3 conv on 9x9x256: torch {us(lambda: conv(y), 1000):.0f} us, unfold and addmm "
          f"{us(lambda: torch.addmm(conv.bias, F.unfold(y, 3, padding=1)[0].t(), w.t()), 1000):.0f} us, channels-last "
          f"{us(lambda: conv(yl), 1000):.0f} us, oneDNN-prepacked {us(lambda: mk(ym), 1000):.0f} us")
    qkv16 = torch.randn(16, N, 3, H, hd, generator=g)
    print(f"q and k at batch 16: two rms_rope calls {us(lambda: two_rms_rope(qkv16, wq, wk, cos, sin, 1e-6), 500):.0f}"
          f" us, qkv_norm_rope {us(lambda: K.qkv_norm_rope(qkv16, wq, wk, cos, sin, 1e-6), 500):.0f} us")


def env():
    import gymnasium as gym

    import worldsim.model as M

    gym_env = gym.make("worldsim/Crafter-v0", quantize="none")
    gym_env.reset(seed=0)
    gym_env.action_space.seed(0)
    for _ in range(50):
        gym_env.step(gym_env.action_space.sample())
    paths = {"two rms_rope calls": two_rms_rope, "qkv_norm_rope": K.qkv_norm_rope}
    ms = {name: [] for name in paths}
    for r in range(12):
        for name in (list(paths) if r % 2 == 0 else list(paths)[::-1]):
            M.qkv_norm_rope = paths[name]  # what Attention calls
            t = time.perf_counter()
            for _ in range(100):
                gym_env.step(gym_env.action_space.sample())
            ms[name].append((time.perf_counter() - t) * 10)
    M.qkv_norm_rope = K.qkv_norm_rope
    for name, v in ms.items():
        print(f"env step, fp32, {name}: median {np.median(v):.2f} ms (blocks {min(v):.1f} to {max(v):.1f})")


if __name__ == "__main__":
    torch.set_num_threads(2)
    what = sys.argv[1] if len(sys.argv) > 1 else "all"
    if what not in ("ops", "env", "all"):
        raise SystemExit(f"usage: python docs/cpu_op_timings.py [ops|env|all], got {what!r}")
    if what in ("ops", "all"):
        ops()
    if what in ("env", "all"):
        env()
