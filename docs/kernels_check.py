"""The fused Triton kernels (worldsim.kernels, kernels=triton) against the references on a real GPU, where Triton
compiles them (the tests run them in its interpreter on CPU): each op on the shipped Crafter model's shapes in
fp32 and bf16, then the learned env stepped with each from the same seed and actions.

    python docs/kernels_check.py [DEVICE] [BATCH] [STEPS]      (default: cuda 64 20)

Prints each op's largest difference, and per step the PSNR of the fused run's frames against the reference's
(identical frames print inf; the sampler's noise is seeded, so differences come from the kernels' float sums).
"""
import sys

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F

import worldsim  # noqa: F401  (registers the envs)
from worldsim import kernels
from worldsim.kernels.reference import apply_rope, modulate
from worldsim.model import Rotary3D

device = sys.argv[1] if len(sys.argv) > 1 else "cuda"
batch = int(sys.argv[2]) if len(sys.argv) > 2 else 64
steps = int(sys.argv[3]) if len(sys.argv) > 3 else 20
kernels.use("triton")
from worldsim.kernels import triton_ops as ops  # noqa: E402  (the module use() imported)
g = torch.Generator(device=device).manual_seed(0)
env = gym.make_vec("worldsim/Crafter-v0", num_envs=batch, device=device, termination_threshold=2.0)
cfg = env.unwrapped.sim.dit.config
D, H = cfg.dim, cfg.heads
hd, N, T = D // H, 81, 4
for dtype in (torch.float32, torch.bfloat16):
    x = torch.randn(batch, T, N, D, device=device, generator=g).to(dtype)
    y = torch.randn(batch, T, N, D, device=device, generator=g).to(dtype)
    shift, scale, gate = (0.5 * torch.randn(batch, T, 1, 3 * D, device=device, generator=g)).to(dtype).chunk(3, -1)
    want = modulate(F.layer_norm(x.float(), (D,), eps=1e-6), shift.float(), scale.float())
    e1 = (ops.ln_modulate(x, shift, scale, 1e-6).float() - want).abs().max().item()
    xn, h = ops.ln_modulate(x, shift, scale, 1e-6, gate=gate, y=y)
    xw = x.float() + gate.float() * y.float()
    e2 = max((xn.float() - xw).abs().max().item(),
             (h.float() - modulate(F.layer_norm(xw, (D,), eps=1e-6), shift.float(), scale.float())).abs().max().item())
    cos, sin = Rotary3D(hd).to(device)(torch.arange(T), 9, 9)
    q = torch.randn(batch, T * N, 3, H, hd, device=device, generator=g).to(dtype).permute(2, 0, 3, 1, 4)[0]
    w = torch.rand(hd, device=device, generator=g) + 0.5
    e3 = (ops.rms_rope(q, w, cos, sin, 1e-6).float() - apply_rope(F.rms_norm(q.float(), (hd,), w, 1e-6), cos, sin)).abs().max().item()
    print(f"{str(dtype)[6:]}: ln_modulate {e1:.2e}, residual_ln_modulate {e2:.2e}, rms_rope {e3:.2e} (largest |difference|)")

frames = {}
for name in ("torch", "triton"):
    kernels.use(name)
    obs, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)
    run = [obs]
    with torch.no_grad():
        for _ in range(steps):
            obs, *_ = env.step(rng.integers(0, env.single_action_space.n, batch))
            run.append(obs)
    frames[name] = np.stack(run).astype(np.float64)
mse = ((frames["torch"] - frames["triton"]) ** 2).mean(axis=(1, 2, 3, 4))
psnr = np.where(mse > 0, 10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-12)), np.inf)
print("PSNR of triton's frames against torch's, per step:", " ".join(f"{p:.1f}" for p in psnr))
