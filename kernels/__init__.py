"""Hot-path operators used by the world model.

Every op has a plain PyTorch reference (`reference.py`). The block's memory-bound steps also have fused
Triton versions (`triton_ops.py`) for inference on a GPU, chosen with ``use("triton")`` or the environment
variable ``WORLDSIM_KERNELS=triton`` (``worldsim bench kernels=triton``). The default is ``torch``: the
fused versions are checked against the references (on CPU under ``TRITON_INTERPRET=1``, tests/test_kernels.py),
but their speed on a GPU has not been measured yet. A call that needs a gradient, or whose tensors are on
the CPU (outside the interpreter), always takes the reference.
"""
import os

import torch
import torch.nn.functional as F

from .reference import apply_rope, attention, modulate

__all__ = ["apply_rope", "attention", "modulate", "ln_modulate", "residual_ln_modulate", "rms_rope",
           "qkv_norm_rope", "use", "check", "backend"]

BACKENDS = ("torch", "triton")
_backend = "torch"
_triton = None  # the triton_ops module, imported on first use


def check(name: str) -> str:
    """A kernels name, or a clear error naming the choices."""
    if name not in BACKENDS:
        raise ValueError(f"kernels must be one of {', '.join(BACKENDS)}, got {name!r}")
    return name


def use(name: str) -> str:
    """Select the kernels ("torch" or "triton") for every later call; returns the previous choice."""
    global _backend, _triton
    check(name)
    if name == "triton" and _triton is None:
        try:
            from . import triton_ops
        except ImportError as e:
            raise ImportError(f"kernels=triton needs the triton package ({e}); install it with "
                              "`pip install 'worldsim[gpu]'` (a CUDA build of torch usually brings it)") from e
        _triton = triton_ops
    prev, _backend = _backend, name
    return prev


def backend() -> str:
    return _backend


def _fused(*tensors) -> bool:
    if _backend != "triton":
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    return all(t.is_cuda for t in tensors) or os.environ.get("TRITON_INTERPRET") == "1"


def _per_frame(x, *conds) -> bool:
    """x (B, T, N, D) with each cond (B, T, 1, D): the layout the fused LayerNorm kernel reads."""
    return x.dim() == 4 and all(c.shape == (x.shape[0], x.shape[1], 1, x.shape[3]) for c in conds)


def ln_modulate(x, shift, scale, eps: float):
    """modulate(layer_norm(x), shift, scale): adaLN's normalise-then-modulate (LayerNorm without affine)."""
    if _fused(x, shift, scale) and _per_frame(x, shift, scale):
        return _triton.ln_modulate(x, shift, scale, eps)
    return modulate(F.layer_norm(x, x.shape[-1:], eps=eps), shift, scale)


def residual_ln_modulate(x, gate, y, shift, scale, eps: float):
    """(x + gate * y, ln_modulate(x + gate * y, shift, scale)): a gated residual and the next norm."""
    if _fused(x, gate, y, shift, scale) and _per_frame(x, gate, shift, scale) and y.shape == x.shape:
        return _triton.ln_modulate(x, shift, scale, eps, gate=gate, y=y)
    x = x + gate * y
    return x, modulate(F.layer_norm(x, x.shape[-1:], eps=eps), shift, scale)


def rms_rope(x, weight, cos, sin, eps: float):
    """apply_rope(rms_norm(x) * weight, cos, sin): the attention's QK norm and rotary embedding."""
    if (_fused(x, weight, cos, sin) and x.dim() == 4 and cos.shape == sin.shape == (x.shape[2], x.shape[3] // 2)
            and x.shape[3] % 2 == 0):
        return _triton.rms_rope(x, weight, cos, sin, eps)
    return apply_rope(F.rms_norm(x, x.shape[-1:], weight, eps), cos, sin)


_turn_memo = [None]


def _turn(cos, sin):
    """The rotation e^(i angle) as complex (L, 1, 1, hd/2), kept for the last cos, sin tables seen (the model
    passes the same tables to every layer of a pass, and a step's passes share them)."""
    held = _turn_memo[0]
    if held is None or held[0] is not cos or held[1] is not sin or held[2] != (cos._version, sin._version):
        held = _turn_memo[0] = (cos, sin, (cos._version, sin._version),
                                torch.complex(cos.float(), sin.float())[:, None, None])
    return held[3]


def qkv_norm_rope(qkv, q_weight, k_weight, cos, sin, eps: float):
    """The attention's inputs from its qkv projection: qkv (B, L, 3, H, head_dim) -> q, k, v (B, H, L, head_dim),
    q and k through rms_rope (each with its own norm weight), v as it is.

    Where no gradient is wanted and the tensors are fp32 (the CPU's inference), q and k are normed and rotated
    together, in place, on one fresh tensor: the norm without its weight, times both weights stacked, times the
    rotation as complex numbers. The same values bit for bit as two rms_rope calls (tests/test_kernels.py), in
    less time at batch 1: those calls were about twenty small ops, each mostly call overhead (this project's
    2-core EPYC, `python docs/cpu_op_timings.py ops`: 191 against 121 us for q and k of 81 tokens, 3 heads of 64)."""
    if _fused(qkv, q_weight, k_weight, cos, sin) or qkv.dtype != torch.float32 or (
            torch.is_grad_enabled() and qkv.requires_grad) or qkv.shape[-1] % 2:
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        return rms_rope(q, q_weight, cos, sin, eps), rms_rope(k, k_weight, cos, sin, eps), v
    B, L, _, H, hd = qkv.shape
    qk = F.rms_norm(qkv[:, :, :2], (hd,), None, eps)  # a fresh (B, L, 2, H, hd) tensor
    qk.mul_(torch.stack([q_weight, k_weight]).to(qk.dtype)[:, None])
    turn = _turn(cos, sin)
    torch.view_as_complex(qk.view(B, L, 2, H, hd // 2, 2)).mul_(turn)
    q, k = qk.permute(2, 0, 3, 1, 4)
    return q, k, qkv[:, :, 2].transpose(1, 2)


if os.environ.get("WORLDSIM_KERNELS"):
    use(os.environ["WORLDSIM_KERNELS"])
