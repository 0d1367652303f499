"""Latent codebook: k-means of a bundle's latent tokens, and snapping generated tokens to it.

Why: some games draw their frames from a small set of tiles (Crafter: materials, creatures, the player's four
facings, the inventory's digits), so every real latent token of a tile autoencoder lies near one of a few
thousand points. A one-step sample of the next frame lands between them where the model is unsure, and decodes
as a blend of tiles, re-decoded a little differently every step. Snapping each generated token to its nearest
codebook entry shows a tile the game draws, and the context keeps it, so a small error is corrected at the next
step instead of carried (what discrete-token world models such as IRIS and Genie get from their tokenizer).
A bundle snaps only if it has a codebook and `decode.snap` is on: for a VAE on a 3D game (Minetest) the latents
are not discrete and snapping would throw detail away.

`worldsim codebook bundle=B data=D` fits one for a trained bundle; `worldsim train codebook=K` at export.
k-means is Lloyd's algorithm in a few lines of torch rather than a scikit-learn dependency for one function.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from worldsim.checkpoint import tensors_bytes, write_dir_atomic

CHUNK = 65536  # tokens per distance block: 65536 x 4096 floats is 1 GiB


def nearest(tokens: torch.Tensor, codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens (N, C), codebook (K, C) -> (distance, index) of each token's nearest entry (Euclidean)."""
    dist, idx = [], []
    for i in range(0, len(tokens), CHUNK):
        d = torch.cdist(tokens[i:i + CHUNK], codebook).min(1)
        dist.append(d.values)
        idx.append(d.indices)
    return torch.cat(dist), torch.cat(idx)


def fit_codebook(tokens: torch.Tensor, entries: int, iters: int = 15, seed: int = 0) -> torch.Tensor:
    """k-means of tokens (N, C) -> (entries, C): Lloyd's iterations from a k-means++ start (each new entry drawn
    with probability proportional to its squared distance from the entries so far, so rare tiles get entries
    and no two start in one cluster). An entry left with no token is restarted on a random token."""
    tokens = tokens.float()
    if tokens.ndim != 2 or len(tokens) < entries or entries < 1:
        raise ValueError(f"a codebook of {entries} entries needs at least that many tokens (N, C); "
                         f"got a tensor of shape {tuple(tokens.shape)}")
    g = torch.Generator().manual_seed(seed)
    codebook = torch.empty(entries, tokens.shape[1])
    codebook[0] = tokens[torch.randint(len(tokens), (1,), generator=g)]
    d2 = (tokens - codebook[0]).pow(2).sum(1)
    for k in range(1, entries):
        codebook[k] = tokens[torch.multinomial(d2 + 1e-12, 1, generator=g)]
        d2 = torch.minimum(d2, (tokens - codebook[k]).pow(2).sum(1))
    for _ in range(iters):
        _, idx = nearest(tokens, codebook)
        sums = torch.zeros_like(codebook).index_add_(0, idx, tokens)
        count = torch.bincount(idx, minlength=entries).float()
        restart = tokens[torch.randint(len(tokens), (entries,), generator=g)]
        codebook = torch.where(count[:, None] > 0, sums / count.clamp(min=1)[:, None], restart)
    return codebook


def snap(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Latents (B, C, h, w): each token (the C channels at one grid cell) replaced by its nearest entry."""
    B, C, h, w = z.shape
    _, idx = nearest(z.permute(0, 2, 3, 1).reshape(-1, C).float(), codebook.to(z.device).float())
    return codebook.to(z)[idx].reshape(B, h, w, C).permute(0, 3, 1, 2).contiguous()


def frame_tokens(codec, frames: np.ndarray, batch: int = 256) -> torch.Tensor:
    """Normalised latent tokens (N * h * w, C) of uint8 frames (N, H, W, 3) under a bundle's codec."""
    out = []
    for i in range(0, len(frames), batch):
        z = codec.encode(torch.as_tensor(frames[i:i + batch]))
        out.append(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]))
    return torch.cat(out)


def require_tiles(ae_cfg: dict, where: str) -> None:
    """Snapping is for patch (tile) autoencoders, whose tokens are a game's tiles: a clear error otherwise."""
    if ae_cfg.get("type") != "patch":
        raise ValueError(f"{where}: a latent codebook needs a patch (tile) autoencoder, one latent per tile of the "
                         f"game's grid; this one is {ae_cfg.get('type')!r}")


def with_codebook(path: Path, codebook: torch.Tensor, info: dict, snap_default: bool = True) -> None:
    """Rewrite bundle `path` atomically with `codebook.safetensors` and `decode.snap` in its bundle.json."""
    path = Path(path)
    files = {p.name: p.read_bytes() for p in path.iterdir() if p.is_file()}
    meta = json.loads(files["bundle.json"])
    require_tiles(meta["autoencoder"], str(path))
    C = meta["world_model"]["latent_channels"]
    if codebook.ndim != 2 or codebook.shape[1] != C:
        raise ValueError(f"codebook of shape {tuple(codebook.shape)} does not fit latents of {C} channels")
    meta.setdefault("decode", {})["snap"] = bool(snap_default)
    meta["codebook"] = info
    files["bundle.json"] = json.dumps(meta, indent=1).encode()
    files["codebook.safetensors"] = tensors_bytes({"codebook": codebook.float()})
    write_dir_atomic(path, files)


def codebook_job(cfg):
    """`worldsim codebook bundle=B data=D`: fit B's codebook on frames of D's training split, snap on."""
    from worldsim.checkpoint import Bundle
    from worldsim.data import load_episodes
    from worldsim import ASSETS

    path = ASSETS / cfg.bundle if (ASSETS / str(cfg.bundle) / "bundle.json").exists() else Path(cfg.bundle)
    b = Bundle(path)
    require_tiles(b.meta["autoencoder"], str(path))
    eps = load_episodes(Path(cfg.data), split="train")
    if not eps:
        raise ValueError(f"{cfg.data}: no training episodes")
    frames = np.concatenate([ep["frames"] for ep in eps])
    if tuple(frames.shape[1:]) != tuple(b.env["frame_shape"]):
        raise ValueError(f"{cfg.data}: frames of shape {frames.shape[1:]}, the bundle's are {b.env['frame_shape']}")
    rng = np.random.default_rng(cfg.seed)
    pick = np.sort(rng.choice(len(frames), min(cfg.frames, len(frames)), replace=False))
    tokens = frame_tokens(b.codec, frames[pick])
    codebook = fit_codebook(tokens, cfg.entries, cfg.iters, cfg.seed)
    dist, _ = nearest(tokens, codebook)
    info = {"entries": int(cfg.entries), "frames": int(len(pick)), "tokens": int(len(tokens)), "data": str(cfg.data),
            "mean_distance": round(float(dist.mean()), 4)}
    with_codebook(path, codebook, info, cfg.snap)
    print(f"codebook of {cfg.entries} entries from {len(tokens)} tokens of {len(pick)} frames written to {path} "
          f"(mean distance of a training token to its entry {info['mean_distance']:.3f}); snap={bool(cfg.snap)}")
    return info
