"""Frame autoencoder: diffusers' AutoencoderKL (a well-kept VAE) in small presets, plus uint8 <-> latent helpers.

Frames (B, H, W, 3) uint8 become latent grids (B, C, H/f, W/f) normalised to zero mean, unit variance with
statistics measured on the training data (stored in the checkpoint), which is what the EDM wrapper assumes.
"""
from __future__ import annotations

import torch
from diffusers import AutoencoderKL

PRESETS = {
    # downsampling factor 4 (three blocks): 64x64 frames -> 16x16 latent grids
    "tiny": dict(block_out_channels=(16, 16, 32), layers_per_block=1, norm_num_groups=8, latent_channels=4),
    "small": dict(block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=32, latent_channels=4),
    "base": dict(block_out_channels=(64, 128, 128), layers_per_block=2, norm_num_groups=32, latent_channels=4),
}


def make_autoencoder(preset: str = "small", **overrides) -> AutoencoderKL:
    if preset not in PRESETS:
        raise ValueError(f"unknown autoencoder preset {preset!r}; choose one of {sorted(PRESETS)}")
    cfg = {**PRESETS[preset], **overrides}
    n = len(cfg["block_out_channels"])
    return AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                         mid_block_add_attention=False, **cfg)


def to_pixels(frames_u8: torch.Tensor) -> torch.Tensor:
    """(..., H, W, 3) uint8 -> (..., 3, H, W) float in [-1, 1]."""
    return frames_u8.movedim(-1, -3).float() / 127.5 - 1


def to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) float in [-1, 1] -> (..., H, W, 3) uint8."""
    return ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).movedim(-3, -1)


def downsample_factor(ae: AutoencoderKL) -> int:
    return 2 ** (len(ae.config.block_out_channels) - 1)


class LatentCodec:
    """Encodes uint8 frames to normalised latents and back, for any leading batch shape."""

    def __init__(self, ae: AutoencoderKL, mean: float = 0.0, std: float = 1.0):
        self.ae, self.mean, self.std = ae, float(mean), float(std)

    @torch.no_grad()
    def encode(self, frames_u8: torch.Tensor) -> torch.Tensor:
        lead = frames_u8.shape[:-3]
        x = to_pixels(frames_u8.reshape(-1, *frames_u8.shape[-3:]).to(self.ae.device)).to(self.ae.dtype)
        z = self.ae.encode(x).latent_dist.mean
        return ((z.float() - self.mean) / self.std).reshape(*lead, *z.shape[1:])

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        lead = z.shape[:-3]
        x = self.ae.decode((z.reshape(-1, *z.shape[-3:]) * self.std + self.mean).to(self.ae.dtype)).sample
        return to_uint8(x).reshape(*lead, *x.shape[-2:], 3)
