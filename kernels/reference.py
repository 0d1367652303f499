"""Plain PyTorch reference implementations of the world model's hot-path operators."""
import torch
import torch.nn.functional as F


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation: x * (1 + scale) + shift (shift/scale broadcast over tokens)."""
    return torch.addcmul(shift, x, 1 + scale)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[..., 2i], x[..., 2i+1]) by angles whose cos/sin are given (last dim = head_dim/2).

    x: (..., L, head_dim); cos/sin broadcastable to (..., L, head_dim/2).
    Each pair is one complex number times e^(i angle): one complex multiply instead of slicing the even and
    odd halves, four products and a stack, which on CPU cost 4x (batch 1) to 16x (batch 16) more time and
    gave the same values bit for bit (tests/test_model.py checks it against that form).
    """
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(xc * torch.complex(cos.float(), sin.float())).flatten(-2).to(x.dtype)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Scaled dot-product attention; mask is boolean, True = may attend. Shapes (B, H, L, D)."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
