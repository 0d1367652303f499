"""Fused Triton versions of the block's memory-bound steps, for inference on a GPU.

Written here because no library we depend on fuses these for a DiT: adaLN's LayerNorm + per-frame
modulation (with the gated residual before it), and the attention's QK RMSNorm + 3D RoPE. In eager PyTorch
each is 3-5 kernels, each reading and writing the whole activation; here each is one pass over it, and at
batch 1 one launch instead of several. They have no backward: training uses the references in
``reference.py``, and ``worldsim.kernels`` sends a call here only when no gradient is wanted.

Everything is computed in fp32 after loading (also what makes them run under ``TRITON_INTERPRET=1``, where
the tests check them against the references on CPU) and stored in the input's dtype.
"""
import torch
import triton
import triton.language as tl


@triton.jit
def _ln_modulate_kernel(x_ptr, y_ptr, gate_ptr, shift_ptr, scale_ptr, x_out_ptr, out_ptr,
                        D, N, stride_cond, eps,
                        HAS_RESIDUAL: tl.constexpr, BLOCK_D: tl.constexpr):
    # one program per token row; its frame's modulation vectors are row // N
    row = tl.program_id(0).to(tl.int64)  # int64 offsets: a big batch's rows * D passes 2**31
    cond = row // N
    offs = tl.arange(0, BLOCK_D)
    m = offs < D
    x = tl.load(x_ptr + row * D + offs, mask=m, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:  # x + gate * y, the block's gated residual, stored as the new residual stream
        y = tl.load(y_ptr + row * D + offs, mask=m, other=0.0).to(tl.float32)
        g = tl.load(gate_ptr + cond * stride_cond + offs, mask=m, other=0.0).to(tl.float32)
        x = x + g * y
        tl.store(x_out_ptr + row * D + offs, x.to(x_out_ptr.dtype.element_ty), mask=m)
    mean = tl.sum(x, axis=0) / D
    xc = tl.where(m, x - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=0) / D + eps)
    shift = tl.load(shift_ptr + cond * stride_cond + offs, mask=m, other=0.0).to(tl.float32)
    scale = tl.load(scale_ptr + cond * stride_cond + offs, mask=m, other=0.0).to(tl.float32)
    out = xc * rstd * (1.0 + scale) + shift
    tl.store(out_ptr + row * D + offs, out.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def _rms_rope_kernel(x_ptr, w_ptr, cos_ptr, sin_ptr, out_ptr,
                     H, L, stride_b, stride_h, stride_l, HALF, eps,
                     BLOCK: tl.constexpr):
    # one program per (batch, head, token) row of head_dim = 2 * HALF values, read as (even, odd) pairs
    pid = tl.program_id(0).to(tl.int64)
    tok = pid % L
    bh = pid // L
    base = x_ptr + (bh // H) * stride_b + (bh % H) * stride_h + tok * stride_l
    i = tl.arange(0, BLOCK)
    m = i < HALF
    ev = tl.load(base + 2 * i, mask=m, other=0.0).to(tl.float32)
    od = tl.load(base + 2 * i + 1, mask=m, other=0.0).to(tl.float32)
    r = 1.0 / tl.sqrt((tl.sum(ev * ev, axis=0) + tl.sum(od * od, axis=0)) / (2 * HALF) + eps)
    ev = ev * r * tl.load(w_ptr + 2 * i, mask=m, other=0.0).to(tl.float32)
    od = od * r * tl.load(w_ptr + 2 * i + 1, mask=m, other=0.0).to(tl.float32)
    c = tl.load(cos_ptr + tok * HALF + i, mask=m, other=1.0)
    s = tl.load(sin_ptr + tok * HALF + i, mask=m, other=0.0)
    out = out_ptr + pid * 2 * HALF
    tl.store(out + 2 * i, (ev * c - od * s).to(out_ptr.dtype.element_ty), mask=m)
    tl.store(out + 2 * i + 1, (ev * s + od * c).to(out_ptr.dtype.element_ty), mask=m)


def _warps(block: int) -> int:
    return max(1, min(8, block // 256))


def ln_modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float,
                gate: torch.Tensor | None = None, y: torch.Tensor | None = None):
    """LayerNorm (no affine) of x's last dim, then x * (1 + scale) + shift, in one pass.

    x: (B, T, N, D); shift, scale (and gate): (B, T, 1, D), one vector per frame (views of the adaLN output
    are fine: rows of any stride, last dim contiguous). With gate and y: x is first replaced by
    x + gate * y, and (that new x, the modulated norm) is returned; else the modulated norm alone.
    """
    B, T, N, D = x.shape
    x = x.contiguous()
    conds = [t.reshape(B * T, D) for t in ((shift, scale) if gate is None else (shift, scale, gate))]
    stride = conds[0].stride(0)
    if any(t.stride(0) != stride or t.stride(1) != 1 for t in conds):
        conds = [t.contiguous() for t in conds]
        stride = D
    out = torch.empty_like(x)
    block = triton.next_power_of_2(D)
    if gate is None:
        _ln_modulate_kernel[(B * T * N,)](x, x, x, conds[0], conds[1], x, out, D, N, stride, eps,
                                          HAS_RESIDUAL=False, BLOCK_D=block, num_warps=_warps(block))
        return out
    x_new = torch.empty_like(x)
    _ln_modulate_kernel[(B * T * N,)](x, y.contiguous(), conds[2], conds[0], conds[1], x_new, out, D, N, stride,
                                      eps, HAS_RESIDUAL=True, BLOCK_D=block, num_warps=_warps(block))
    return x_new, out


def rms_rope(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, eps: float):
    """RMSNorm of x's last dim (times weight), then the rotary embedding, in one pass.

    x: (B, H, L, head_dim), last dim contiguous (the qkv split's permuted view is read in place);
    cos, sin: (L, head_dim / 2). Returns a contiguous (B, H, L, head_dim) tensor.
    """
    B, H, L, hd = x.shape
    if x.stride(3) != 1:
        x = x.contiguous()
    out = torch.empty((B, H, L, hd), dtype=x.dtype, device=x.device)
    half = hd // 2
    block = triton.next_power_of_2(half)
    _rms_rope_kernel[(B * H * L,)](x, weight.contiguous(), cos.float().contiguous(), sin.float().contiguous(), out,
                                   H, L, x.stride(0), x.stride(1), x.stride(2), half, eps,
                                   BLOCK=block, num_warps=1)
    return out
