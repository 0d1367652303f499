"""Frame autoencoders and uint8 <-> latent helpers.

Two kinds, picked by preset (configs/autoencoder/*.yaml):
- diffusers' AutoencoderKL (a well-kept VAE) in small presets, 4x downsampling: any game, any frame size.
- `PatchAutoencoder`: one latent vector per p x p tile, for games drawn on a tile grid (Crafter: 7-pixel
  tiles, 64 = 9 * 7 + 1). Why our own: diffusers' autoencoders downsample by powers of two, so their latent
  cells cut Crafter's tiles and a one-tile move becomes a shift of 1.75 latent cells. With one latent per
  tile a move is an exact one-token shift, which the world model's rotary attention copies easily.

Frames (B, H, W, 3) uint8 become latent grids (B, C, h, w) normalised to zero mean, unit variance with
statistics measured on the training data (stored in the checkpoint), which is what the EDM wrapper assumes.
The module-level functions (`encode`, `decode`, `latent_shape`, `training_loss`, `ae_config`,
`build_autoencoder`) work for both kinds, so nothing else needs to know which one a bundle holds.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

PRESETS = {
    # downsampling factor 4 (three blocks): 64x64 frames -> 16x16 latent grids
    "tiny": dict(block_out_channels=(16, 16, 32), layers_per_block=1, norm_num_groups=8, latent_channels=4),
    "small": dict(block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=32, latent_channels=4),
    "base": dict(block_out_channels=(64, 128, 128), layers_per_block=2, norm_num_groups=32, latent_channels=4),
    # one latent per 7x7 Crafter tile: 64x64 frames -> 9x9 latent grids. Width matters most (measured on
    # Crafter, 1,200 steps, 16 channels, an earlier GroupNorm version: width 128 -> 28.4 dB, width 256 ->
    # 33.3 dB held-out, 4 blocks instead of 2: 29.0 dB); this preset reaches 48.0 dB after 4,000 steps
    "tile7": dict(type="patch", patch=7, latent_channels=16, width=256, blocks=2, latent_noise=0.05),
    "tile7_tiny": dict(type="patch", patch=7, latent_channels=4, width=16, blocks=1),
    # any game: one 32-channel latent per 8x8 patch, any frame size divisible by 8 (96x128 -> 32x12x16)
    "patch8": dict(type="patch", patch=8, latent_channels=32, width=256, blocks=2, latent_noise=0.05,
                   frame_size=None),
    "patch8_tiny": dict(type="patch", patch=8, latent_channels=4, width=16, blocks=1, frame_size=None),
}


@dataclass
class PatchAEConfig:
    frame_size: tuple | None  # (H, W): tied to that size, the tile grid (H // patch, W // patch) centred in
    # it and the rest one learned colour (Crafter: 64 = 9 * 7 + 1); None: any size divisible by the patch
    patch: int = 7
    latent_channels: int = 16
    width: int = 256
    blocks: int = 2
    latent_noise: float = 0.05  # Gaussian noise on the (tanh-bounded) latents while training: the decoder
    # learns to read slightly-off latents, which is what the world model's samples are
    type: str = "patch"


class _ChannelNorm(nn.LayerNorm):
    """LayerNorm over channels at each cell. Not GroupNorm: its statistics span the whole frame, so a tile's
    latent would depend on every other tile and a move would no longer be a pure shift."""

    def forward(self, x):
        # contiguous: convolutions on the channels-last view run about half as fast on CPU (measured: a
        # decoder block at batch 1, 1 thread, took 4.3 ms, 1.9 ms with this copy)
        return super().forward(x.movedim(1, -1)).movedim(-1, 1).contiguous()


class _ResBlock(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.norm = _ChannelNorm(d)
        self.conv1 = nn.Conv2d(d, d, 3, padding=1)
        self.conv2 = nn.Conv2d(d, d, 1)

    def forward(self, x):
        return x + self.conv2(F.silu(self.conv1(F.silu(self.norm(x)))))


class PatchAutoencoder(nn.Module):
    """Tile-aligned autoencoder: strided p x p conv -> residual blocks on the tile grid -> tanh latents;
    decoder: residual blocks -> 1x1 conv to p*p*3 values per tile -> pixel shuffle. Pixels outside the
    tile grid (Crafter's last row and column) are one learned colour."""

    def __init__(self, config: PatchAEConfig):
        super().__init__()
        self.config = config
        p, d, c = config.patch, config.width, config.latent_channels
        self.enc_in = nn.Conv2d(3, d, p, stride=p)
        self.enc = nn.Sequential(*[_ResBlock(d) for _ in range(config.blocks)])
        self.enc_out = nn.Sequential(_ChannelNorm(d), nn.SiLU(), nn.Conv2d(d, c, 1))
        self.dec_in = nn.Conv2d(c, d, 3, padding=1)
        self.dec = nn.Sequential(*[_ResBlock(d) for _ in range(config.blocks)])
        self.dec_out = nn.Sequential(_ChannelNorm(d), nn.SiLU(), nn.Conv2d(d, 3 * p * p, 1))
        self.border = nn.Parameter(torch.full((3,), -1.0))

    @property
    def device(self):
        return self.border.device

    @property
    def dtype(self):
        return self.border.dtype

    def _grid(self, H: int, W: int):
        p = self.config.patch
        if self.config.frame_size is None:
            if H % p or W % p or H <= 0 or W <= 0:
                raise ValueError(f"frame size {H}x{W} must be positive multiples of {p} (the autoencoder's patch)")
            return H // p, W // p, 0, 0
        if (H, W) != tuple(self.config.frame_size):
            raise ValueError(f"this patch autoencoder is tied to {tuple(self.config.frame_size)} frames "
                             f"(its tile grid), got {H}x{W}")
        gh, gw = H // p, W // p
        return gh, gw, (H - gh * p) // 2, (W - gw * p) // 2

    def encode_latents(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, C, H//p, W//p) in (-1, 1)."""
        gh, gw, oy, ox = self._grid(*x.shape[-2:])
        p = self.config.patch
        x = x[..., oy: oy + gh * p, ox: ox + gw * p]
        return torch.tanh(self.enc_out(self.enc(self.enc_in(x))))

    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        p = self.config.patch
        H, W = self.config.frame_size or (z.shape[-2] * p, z.shape[-1] * p)
        gh, gw, oy, ox = self._grid(H, W)
        tiles = F.pixel_shuffle(self.dec_out(self.dec(self.dec_in(z))), p)
        if self.config.frame_size is None:
            return tiles
        out = self.border.view(1, 3, 1, 1).expand(z.shape[0], 3, H, W).clone()
        out[..., oy: oy + tiles.shape[-2], ox: ox + tiles.shape[-1]] = tiles
        return out


def make_autoencoder(preset: str = "small", frame_shape=None, **overrides) -> nn.Module:
    """frame_shape: (H, W, ...) of the frames; needed by tile presets (their grid is fixed by the frame size)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown autoencoder preset {preset!r}; choose one of {sorted(PRESETS)}")
    cfg = {**PRESETS[preset], **overrides}
    if cfg.get("type") == "patch":
        if "frame_size" not in cfg:  # tied to the game's frame size (tile presets)
            if frame_shape is None:
                raise ValueError(f"autoencoder preset {preset!r} needs the frame shape")
            cfg["frame_size"] = list(frame_shape[:2])
        return build_autoencoder(cfg)
    n = len(cfg["block_out_channels"])
    from diffusers import AutoencoderKL  # here: importing diffusers' autoencoders took 0.8 s of every env's start
    return AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                         mid_block_add_attention=False, **cfg)


def build_autoencoder(cfg: dict) -> nn.Module:
    """An untrained autoencoder from the config a bundle stores (see `ae_config`)."""
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    if cfg.get("type") == "patch":
        cfg["frame_size"] = tuple(cfg["frame_size"]) if cfg.get("frame_size") else None
        return PatchAutoencoder(PatchAEConfig(**cfg))
    from diffusers import AutoencoderKL  # here, as above
    return AutoencoderKL.from_config(cfg)


def ae_config(ae: nn.Module) -> dict:
    return asdict(ae.config) if isinstance(ae, PatchAutoencoder) else dict(ae.config)


def encode(ae: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Pixels (B, 3, H, W) in [-1, 1] -> raw (unnormalised) latents, deterministic."""
    return ae.encode_latents(x) if isinstance(ae, PatchAutoencoder) else ae.encode(x).latent_dist.mean


def decode(ae: nn.Module, z: torch.Tensor) -> torch.Tensor:
    return ae.decode_latents(z) if isinstance(ae, PatchAutoencoder) else ae.decode(z).sample


def training_loss(ae: nn.Module, x: torch.Tensor, kl_weight: float):
    """(reconstruction loss, total loss) for one batch of pixels: L1 + MSE, plus the KL term (VAE) or
    latent noise (tile autoencoder)."""
    if isinstance(ae, PatchAutoencoder):
        z = ae.encode_latents(x)
        y, reg = ae.decode_latents(z + ae.config.latent_noise * torch.randn_like(z)), 0.0
    else:
        post = ae.encode(x).latent_dist
        y, reg = ae.decode(post.sample()).sample, kl_weight * post.kl().mean()
    rec = (y.float() - x).abs().mean() + ((y.float() - x) ** 2).mean()
    return rec, rec + reg


def tile_layout(ae: nn.Module, H: int, W: int) -> tuple[int, int, int] | None:
    """(patch, row offset, column offset) of the latent cells' pixel tiles in an H x W frame, for a patch
    autoencoder (one latent per tile); None for the VAE, whose latent cells have no tiles of their own."""
    if not isinstance(ae, PatchAutoencoder):
        return None
    _, _, oy, ox = ae._grid(H, W)
    return ae.config.patch, oy, ox


def latent_shape(ae: nn.Module, H: int, W: int) -> tuple[int, int, int]:
    """(C, h, w) of the latent grid for H x W frames; ValueError if the autoencoder can't take that size."""
    if isinstance(ae, PatchAutoencoder):
        gh, gw, _, _ = ae._grid(H, W)
        return ae.config.latent_channels, gh, gw
    f = 2 ** (len(ae.config.block_out_channels) - 1)
    if H % f or W % f or H <= 0 or W <= 0:
        raise ValueError(f"frame size {H}x{W} must be positive multiples of {f} (autoencoder downsampling)")
    return ae.config.latent_channels, H // f, W // f


def to_pixels(frames_u8: torch.Tensor) -> torch.Tensor:
    """(..., H, W, 3) uint8 -> (..., 3, H, W) float in [-1, 1]."""
    return frames_u8.movedim(-1, -3).float() / 127.5 - 1


def to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) float in [-1, 1] -> (..., H, W, 3) uint8."""
    return ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).movedim(-3, -1)


class LatentCodec:
    """Encodes uint8 frames to normalised latents and back, for any leading batch shape."""

    def __init__(self, ae: nn.Module, mean: float = 0.0, std: float = 1.0):
        self.ae, self.mean, self.std = ae, float(mean), float(std)

    @torch.no_grad()
    def encode(self, frames_u8: torch.Tensor) -> torch.Tensor:
        lead = frames_u8.shape[:-3]
        x = to_pixels(frames_u8.reshape(-1, *frames_u8.shape[-3:]).to(self.ae.device)).to(self.ae.dtype)
        z = encode(self.ae, x)
        return ((z.float() - self.mean) / self.std).reshape(*lead, *z.shape[1:])

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        lead = z.shape[:-3]
        x = decode(self.ae, (z.reshape(-1, *z.shape[-3:]) * self.std + self.mean).to(self.ae.dtype))
        return to_uint8(x).reshape(*lead, *x.shape[-2:], 3)
