"""Plain PyTorch reference implementations of the world model's hot-path operators."""
import torch
import torch.nn.functional as F


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation: x * (1 + scale) + shift (shift/scale broadcast over tokens)."""
    return torch.addcmul(shift, x, 1 + scale)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[..., 2i], x[..., 2i+1]) by angles whose cos/sin are given (last dim = head_dim/2).

    x: (..., L, head_dim); cos/sin broadcastable to (..., L, head_dim/2).
    """
    x1, x2 = x[..., 0::2], x[..., 1::2]
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.flatten(-2)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Scaled dot-product attention; mask is boolean, True = may attend. Shapes (B, H, L, D)."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
