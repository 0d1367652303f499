"""The world model: an action-conditioned, frame-causal latent diffusion transformer (DiT).

Read top to bottom: action encoder -> 3D rotary positions -> transformer block (adaLN-Zero, one
modulation per frame) -> final layer -> the model (sequence forward for training and prefill, cached
single-frame forward for inference) -> KV cache. Sizes are named in configs/model/*.yaml.

Tokens are spacetime patches of the autoencoder's latent grid. A token attends to every token of its own
frame and of the previous `context_frames` frames, never to a later frame (frame-causal, sliding window).
Each frame carries its own noise level and its own action (the action that led to it), both injected
through adaLN, so one sequence can mix clean context and noisy targets (diffusion forcing).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from einops import rearrange

from worldsim.kernels import apply_rope, attention, ln_modulate, qkv_norm_rope, residual_ln_modulate, rms_rope

# --------------------------------------------------------------------------------------------------
# Actions: a JSON-able spec of a Gymnasium space, so the model knows nothing about any one game.
# --------------------------------------------------------------------------------------------------


def space_to_spec(space: gym.Space) -> dict:
    """Describe an action space as a JSON-able dict (stored in the model config)."""
    if isinstance(space, gym.spaces.Discrete):
        return {"type": "discrete", "n": int(space.n)}
    if isinstance(space, gym.spaces.MultiBinary):
        return {"type": "multi_binary", "n": int(np.prod(space.n))}
    if isinstance(space, gym.spaces.MultiDiscrete):
        return {"type": "multi_discrete", "nvec": [int(n) for n in np.ravel(space.nvec)]}
    if isinstance(space, gym.spaces.Box):
        low, high = space.low.ravel().astype(float), space.high.ravel().astype(float)
        scale = float(np.max(np.abs(np.concatenate([low, high]))))
        spec = {"type": "box", "dim": int(np.prod(space.shape)), "scale": scale}
        if not (np.all(low == -scale) and np.all(high == scale)):  # bounds kept where they are not +-scale
            spec.update(low=low.tolist(), high=high.tolist())
        return spec
    if isinstance(space, gym.spaces.Dict):
        return {"type": "dict", "keys": {k: space_to_spec(s) for k, s in space.spaces.items()}}
    raise TypeError(f"unsupported action space {space!r}: use Discrete, MultiBinary, MultiDiscrete, Box or Dict")


def spec_to_space(spec: dict) -> gym.Space:
    """The Gymnasium action space a spec describes (space_to_spec's inverse; a Box is 1-D, as the model takes it)."""
    kind = spec["type"]
    if kind == "discrete":
        return gym.spaces.Discrete(spec["n"])
    if kind == "multi_binary":
        return gym.spaces.MultiBinary(spec["n"])
    if kind == "multi_discrete":
        return gym.spaces.MultiDiscrete(spec["nvec"])
    if kind == "box":
        s = spec["scale"]
        return gym.spaces.Box(np.array(spec.get("low", [-s] * spec["dim"]), np.float32),
                              np.array(spec.get("high", [s] * spec["dim"]), np.float32), (spec["dim"],), np.float32)
    if kind == "dict":
        return gym.spaces.Dict({k: spec_to_space(v) for k, v in spec["keys"].items()})
    raise ValueError(f"unknown action spec type {kind!r}")


def actions_to_tensor(spec: dict, actions, device=None):
    """Batch of actions (array-like, leading dims (B,) or (B, T)) -> tensor(s) the encoder takes."""
    kind = spec["type"]
    if kind == "dict":
        return {k: actions_to_tensor(s, actions[k], device) for k, s in spec["keys"].items()}
    if kind in ("discrete", "multi_discrete"):
        return torch.as_tensor(np.asarray(actions), dtype=torch.long, device=device)
    return torch.as_tensor(np.asarray(actions, dtype=np.float32), device=device)


class FourierFeatures(nn.Module):
    """Continuous scalars -> sin/cos features at fixed log-spaced frequencies (a 2 and a 20 degree turn differ)."""

    def __init__(self, in_dim: int, num_freqs: int = 8):
        super().__init__()
        self.register_buffer("freqs", (2.0 ** torch.arange(num_freqs)) * math.pi, persistent=False)
        self.out_dim = in_dim * (2 * num_freqs + 1)

    def forward(self, x):  # (..., in_dim) scaled to about [-1, 1]
        ang = x[..., None] * self.freqs
        return torch.cat([x, ang.sin().flatten(-2), ang.cos().flatten(-2)], dim=-1)


class ClockEncoder(nn.Module):
    """A game's clock (its step count since the game began, per frame) -> one embedding per frame, periodic in
    `period` steps: sin/cos of the day's phase at harmonics 1..n, then a linear map that starts at zero.
    Why: a day-night cycle is a function of the clock that a few context frames cannot tell (how dark it is,
    not whether dusk or dawn comes next; the flat middle of day and night gives no trend), and periodic
    features carry it past the ends of the episodes trained on (docs/results.md, "Light")."""

    def __init__(self, period: int, dim: int, harmonics: int = 8):
        super().__init__()
        if not (isinstance(period, int) and period >= 2):
            raise ValueError(f"clock_period must be an integer number of steps >= 2 (a day's length), got {period!r}")
        self.period = period
        self.register_buffer("harm", torch.arange(1, harmonics + 1, dtype=torch.float64), persistent=False)
        self.embed = nn.Linear(2 * harmonics, dim)

    def forward(self, clock: torch.Tensor) -> torch.Tensor:
        """clock: int (B, T) steps -> (B, T, dim). The phase is taken exactly in integers first, so a clock
        of millions of steps embeds as precisely as one of ten."""
        phase = torch.remainder(clock.long(), self.period).double() * (2 * math.pi / self.period)
        ang = phase[..., None] * self.harm.to(clock.device)
        return self.embed(torch.cat([ang.sin(), ang.cos()], dim=-1).to(self.embed.weight.dtype))


class TickHead(nn.Module):
    """Each tick type's logit on the next step, from the newest frame's pooled features, the action of that step
    and the steps since each type last happened. Why the last: a game's hidden clock (Crafter's hunger) ticks a
    fixed number of steps after its last tick, which no window of a few frames shows; the env counts them.
    The steps since are read one-hot (0 .. horizon, the last bucket "long ago"), not as a number: a clock's
    tick is a spike at one count (Crafter's food falls 26 steps after its last fall, 84 % of the time on
    held-out steps), which a scaled number fed to the MLP smoothed to 24 % (docs/results.md, Ticks)."""

    def __init__(self, dim: int, ticks: int, horizon: int = 64):
        super().__init__()
        self.horizon = horizon
        # its own norm, not the reward heads' head_norm: `worldsim heads` refits those and must leave this be
        self.norm = nn.LayerNorm(dim)
        self.net = nn.Sequential(nn.Linear(2 * dim + ticks * (horizon + 1), dim), nn.SiLU(), nn.Linear(dim, dim),
                                 nn.SiLU(), nn.Linear(dim, ticks))

    def forward(self, features, action_emb, since):
        """features (the frame's pooled last-block tokens), action_emb: (..., dim); since: int (..., ticks)
        -> (..., ticks) logits."""
        # one-hot by scatter: F.one_hot checks its input's range first (two reductions), about half again the time
        since = since.long().clamp(0, self.horizon)
        s = features.new_zeros(*since.shape, self.horizon + 1).scatter_(-1, since[..., None], 1.0).flatten(-2)
        x = torch.cat([self.norm(features), action_emb, s], dim=-1)
        return self.net(x.to(self.net[0].weight.dtype))


class ActionEncoder(nn.Module):
    """One embedding per frame from any supported action space; frames with no action get a learned null."""

    def __init__(self, spec: dict, dim: int, _root: bool = True):
        super().__init__()
        self.spec, kind = spec, spec["type"]
        if kind == "discrete":
            self.embed = nn.Embedding(spec["n"], dim)
        elif kind == "multi_binary":  # sum of the embeddings of the pressed keys
            self.embed = nn.Linear(spec["n"], dim, bias=False)
        elif kind == "multi_discrete":
            self.embed = nn.ModuleList(nn.Embedding(n, dim) for n in spec["nvec"])
        elif kind == "box":
            self.fourier = FourierFeatures(spec["dim"])
            self.embed = nn.Sequential(nn.Linear(self.fourier.out_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        elif kind == "dict":
            # a list, not a ModuleDict: MineRL's key names ("forward", "hotbar.1") are not valid module names
            self.embed = nn.ModuleList(ActionEncoder(s, dim, _root=False) for s in spec["keys"].values())
        else:
            raise ValueError(f"unknown action spec type {kind!r}")
        self.null = nn.Parameter(torch.zeros(dim)) if _root else None

    def _embed(self, a):
        kind = self.spec["type"]
        if kind == "discrete":
            return self.embed(a)
        if kind == "multi_binary":
            return self.embed(a.float())
        if kind == "multi_discrete":
            return sum(e(a[..., i]) for i, e in enumerate(self.embed))
        if kind == "box":
            return self.embed(self.fourier(a.float() / self.spec["scale"]))
        return sum(enc._embed(a[k]) for k, enc in zip(self.spec["keys"], self.embed))

    def forward(self, actions, has_action: torch.Tensor) -> torch.Tensor:
        """actions: leading dims (B, T) [+ per-space dims]; has_action: bool (B, T). -> (B, T, dim)."""
        return torch.where(has_action[..., None], self._embed(actions), self.null)


def shift_latents(z: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """z: (N, C, h, w); shift: (N, 2) content displacement (dy, dx) in grid_sample's normalised units (the
    frame's height or width is 2), so one shift fits every frame size. Bilinear; edges repeat into the gap."""
    theta = torch.zeros(z.shape[0], 2, 3, device=z.device, dtype=z.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, 0, 2], theta[:, 1, 2] = -shift[:, 1], -shift[:, 0]  # out(p) = in(p - d)
    grid = F.affine_grid(theta, list(z.shape), align_corners=False)
    return F.grid_sample(z, grid, mode="bilinear", padding_mode="border", align_corners=False)


def rotate_view(z: torch.Tensor, angles: torch.Tensor, matrix: torch.Tensor,
                zoom: torch.Tensor | None = None) -> torch.Tensor:
    """z: (N, C, h, w) a pinhole camera's view (pixels or latents); angles: (N, 2) [pitch, yaw] turns in
    the action's units (degrees); matrix: the fitted 2x2 shift per unit (rows pitch, yaw; columns dy, dx in
    grid_sample's normalised units) -> the view after the camera turned, by the rotation's homography.

    Why not the shift: a shift per degree is the image centre's small-angle motion. A pinhole camera moves a
    point at x (in focal lengths from the centre) by (1 + x^2) times the centre's motion, so at the edges of
    a 90-degree view a turn moves the image twice as far as in its middle, and the shift misplaces the edges
    on every turn. The matrix's diagonal read per radian is the focal length in normalised units (the centre
    moves f * angle), so the rotation needs nothing more than the fit. Bilinear; edges repeat into the gap.
    zoom: (N,) optional magnification about the centre after the turn (a step forward: > 1)."""
    return project_view(z, camera_rotation(angles), matrix, zoom)[0]


def camera_rotation(angles: torch.Tensor) -> torch.Tensor:
    """(N, 2) [pitch, yaw] in degrees -> (N, 3, 3) yaw @ pitch: a ray of the turned view (x right, y down,
    z ahead) -> the same ray in the view before the turn. A camera whose turns from a start sum to
    (pitch, yaw) is at camera_rotation of those sums (yaw about the world's vertical, then pitch)."""
    a = angles.float() * (math.pi / 180)
    cp, sp, cy, sy = a[:, 0].cos(), a[:, 0].sin(), a[:, 1].cos(), a[:, 1].sin()
    one, zero = torch.ones_like(cp), torch.zeros_like(cp)
    yaw = torch.stack([torch.stack([cy, zero, sy], -1), torch.stack([zero, one, zero], -1),
                       torch.stack([-sy, zero, cy], -1)], -2)
    pitch = torch.stack([torch.stack([one, zero, zero], -1), torch.stack([zero, cp, sp], -1),
                         torch.stack([zero, -sp, cp], -1)], -2)
    return yaw @ pitch


def project_view(z: torch.Tensor, rotation: torch.Tensor, matrix: torch.Tensor,
                 zoom: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """z: (N, C, h, w) a view; rotation: (N, 3, 3) a ray of the new view -> that ray in z's camera; matrix,
    zoom: as in `rotate_view` -> (the new view sampled from z, edges repeated into the gap; (N, h, w) bool:
    the cells whose ray lands inside z's view, in front of its camera)."""
    grid, inside = view_grid(rotation, matrix, *z.shape[-2:], zoom, z.device)
    return F.grid_sample(z, grid.to(z.dtype), mode="bilinear", padding_mode="border", align_corners=False), inside


def view_grid(rotation: torch.Tensor, matrix: torch.Tensor, h: int, w: int, zoom: torch.Tensor | None = None,
              device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each cell of an h x w view turned by `rotation` ((N, 3, 3), or (N, h, w, 3, 3): one per cell)
    comes from in the view before the turn, in grid_sample's normalised units -> ((N, h, w, 2) grid, (N, h, w)
    bool: inside that view and in front of its camera; cells behind it get a grid point outside)."""
    deg = math.pi / 180
    fy, fx = -float(matrix[0, 0]) / deg, -float(matrix[1, 1]) / deg  # signed: their sign is the turn's direction
    rays = _view_rays(h, w, fy, fx, str(device or rotation.device))  # (h, w, 3): x right, y down, z ahead
    if zoom is not None:  # the output pixel at x came from x / zoom of the turned view
        scale = torch.stack([1 / zoom.float(), 1 / zoom.float(), torch.ones_like(zoom.float())], -1).to(rays.device)
        rays = rays * scale[:, None, None, :]  # (N, h, w, 3)
    rot = rotation.float().to(rays.device)
    if rot.dim() == 3:
        rot = rot[:, None, None]
    src = (rot @ rays[..., None])[..., 0]  # (N, h, w, 3)
    ahead = src[..., 2] > 1e-6
    depth = torch.where(ahead, src[..., 2], torch.ones_like(src[..., 2]))
    grid = torch.stack([fx * src[..., 0] / depth, fy * src[..., 1] / depth], -1)
    inside = ahead & (grid.abs() <= 1).all(-1)
    return torch.where(ahead[..., None], grid, torch.full_like(grid, 2.0)), inside


@functools.lru_cache(maxsize=32)
def _view_rays(h: int, w: int, fy: float, fx: float, device: str) -> torch.Tensor:
    """The rays through an h x w view's pixel centres (grid_sample's, align_corners=False), in focal lengths;
    cached: a rollout asks for the same ones every step."""
    ys = (torch.arange(h, dtype=torch.float64) + 0.5) / h * 2 - 1
    xs = (torch.arange(w, dtype=torch.float64) + 0.5) / w * 2 - 1
    Y, X = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([X / fx, Y / fy, torch.ones_like(X)], -1).float().to(device)


WARP_KINDS = ("shift", "rotation")


# --------------------------------------------------------------------------------------------------
# 3D rotary positions (time, row, column): no learned position table, so frame size is not baked in.
# --------------------------------------------------------------------------------------------------


class Rotary3D(nn.Module):
    """Splits the head dim into (time, row, column) parts and rotates each by its own position.

    Time uses integer frequencies m_i / period, and angles are computed as 2*pi*((m_i * t) mod period) /
    period in integer arithmetic: keys cached at absolute time t stay exact however long a rollout runs
    (only time differences below the period matter, and the window is far shorter).
    """

    def __init__(self, head_dim: int, time_period: int = 4096, theta: float = 10000.0):
        super().__init__()
        self.d_time = 2 * (head_dim // 8)
        self.d_space = 2 * ((head_dim - self.d_time) // 4)
        self.time_period = time_period
        n_t = self.d_time // 2
        ideal = theta ** (-torch.arange(n_t, dtype=torch.float64) * 2 / self.d_time)  # rad per frame
        m = torch.clamp(torch.round(ideal * time_period / (2 * math.pi)), min=1).long()
        self.register_buffer("time_mult", m, persistent=False)
        n_s = self.d_space // 2
        self.register_buffer("space_freq", (theta ** (-torch.arange(n_s, dtype=torch.float64) * 2 / self.d_space)).float(),
                             persistent=False)
        self.n_pass = head_dim // 2 - n_t - 2 * n_s  # pairs left unrotated

    def forward(self, times: torch.Tensor, h: int, w: int):
        """times: int64 (T,) absolute frame indices -> cos, sin of shape (T*h*w, head_dim/2)."""
        dev = self.time_mult.device
        times = times.to(dev).long()
        phase = (times[:, None] * self.time_mult[None, :]) % self.time_period  # exact integers
        a_t = phase.double() * (2 * math.pi / self.time_period)
        rows = torch.arange(h, device=dev, dtype=torch.float32)[:, None] * self.space_freq
        cols = torch.arange(w, device=dev, dtype=torch.float32)[:, None] * self.space_freq
        T = times.shape[0]
        ang = torch.cat([
            a_t.float()[:, None, None, :].expand(T, h, w, -1),
            rows[None, :, None, :].expand(T, h, w, -1),
            cols[None, None, :, :].expand(T, h, w, -1),
            torch.zeros(T, h, w, self.n_pass, device=dev),
        ], dim=-1).reshape(T * h * w, -1)
        return ang.cos(), ang.sin()

    def at_time(self, time: int, h: int, w: int):
        """forward's cos, sin for the one frame at `time`, the same values: the row, column and unrotated parts
        are kept per (h, w) and only the time pairs are computed (forward is a dozen small ops, the spatial part
        most of them; a batch-1 step asks once)."""
        key = (h, w, self.time_mult.device)
        held = getattr(self, "_space", None)
        if held is None or held[0] != key:
            cos, sin = self(torch.tensor([0]), h, w)
            held = self._space = (key, cos, sin)
        phase = (int(time) * self.time_mult) % self.time_period
        a_t = (phase.double() * (2 * math.pi / self.time_period)).float()
        n_t = len(a_t)
        cos, sin = held[1].clone(), held[2].clone()
        cos[:, :n_t], sin[:, :n_t] = a_t.cos(), a_t.sin()
        return cos, sin

    def time_shift(self, delta: int):
        """cos, sin (1, head_dim/2) that move a rotated key from time t to t + delta: its time pairs turn by
        delta's angles, its row, column and unrotated pairs stay (row 0, column 0 rotate by nothing)."""
        return self(torch.tensor([int(delta)]), 1, 1)


CONTEXT_ATTENTION = ("window", "frame")
HEADS_INPUT = ("window", "pair", "sample_pair")
PAIR_INPUTS = ("pair", "sample_pair")  # heads that read a frame beside the frame before it


def frame_causal_mask(T: int, N: int, window: int, device=None, alone: int = 0) -> torch.Tensor:
    """Boolean (T*N, T*N): a token of frame i may attend to frames i-window .. i (all their tokens); a token of
    one of the first `alone` frames only to its own frame's tokens (context_attention="frame")."""
    f = torch.arange(T, device=device)
    allowed = (f[:, None] >= f[None, :]) & (f[:, None] - f[None, :] <= window)
    allowed &= (f[:, None] >= alone) | (f[:, None] == f[None, :])
    return allowed.repeat_interleave(N, 0).repeat_interleave(N, 1)


# --------------------------------------------------------------------------------------------------
# Transformer block with adaLN-Zero, one modulation vector per frame.
# --------------------------------------------------------------------------------------------------


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        # QK-norm keeps attention logits bounded when training with high learning rates (as in SD3 / ViT-22B).
        self.q_norm = nn.RMSNorm(dim // heads, eps=1e-6)
        self.k_norm = nn.RMSNorm(dim // heads, eps=1e-6)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, cos, sin, mask=None, cache: "KVCache | None" = None, layer: int = 0, commit_slot=None,
                return_kv: bool = False, alone: bool | str = False, newest: bool = False):
        B, T, N, D = x.shape
        # "b t n (three h d) -> three b h (t n) d" by reshape and permute: einops' call costs more than the
        # op itself at batch 1
        qkv = self.qkv(x).reshape(B, T * N, 3, self.heads, D // self.heads)
        if newest:  # only the newest frame's queries (tokens are frame-major): every frame's keys still come out
            q, k, v = qkv.permute(2, 0, 3, 1, 4)
            mask = None if mask is None else mask[-N:]
            T = 1
            q, k = (rms_rope(q[:, :, -N:], self.q_norm.weight, cos[-N:], sin[-N:], self.q_norm.eps),
                    rms_rope(k, self.k_norm.weight, cos, sin, self.k_norm.eps))
        else:
            q, k, v = qkv_norm_rope(qkv, self.q_norm.weight, self.k_norm.weight, cos, sin, self.q_norm.eps)
        kv = (k, v) if return_kv else None
        if cache is None:
            out = attention(q, k, v, mask)
        elif alone == "only":  # heads_input="pair" or "sample_pair", a commit pass: the frame attends to itself alone,
            # and those keys are committed (no copy attending to the window: the heads read this one)
            out = attention(q, k, v, None)
            cache.write_slot(layer, commit_slot, k, v)
        elif alone == "merged":  # forward_cached_pair: frame 0 of each row attends to itself alone and its keys are
            # committed, then frame 1 attends to the window (which now holds frame 0) and itself
            out_c = attention(q[:, :, :N], k[:, :, :N], v[:, :, :N], None)
            cache.write_slot(layer, commit_slot, k[:, :, :N], v[:, :, :N])
            out = torch.cat([out_c, attention(q[:, :, N:], *cache.write_scratch(layer, k[:, :, N:], v[:, :, N:]),
                                              cache.attn_mask(B))], 2)
        elif alone:  # context_attention="frame", a commit pass of the batch stacked twice (forward_cached): the
            # first copy attends to its own tokens alone and its keys are committed; the second, the one read,
            # attends to the window and itself as any new frame does, before the commit overwrites the oldest slot
            n = B // 2
            out_w = attention(q[n:], *cache.write_scratch(layer, k[n:], v[n:]), cache.attn_mask(n))
            out = torch.cat([attention(q[:n], k[:n], v[:n], None), out_w])
            cache.write_scratch(layer, k[:n], v[:n])
            cache.commit(layer, commit_slot)
        else:  # one new frame: write its keys/values into the scratch slot, attend over window + itself
            out = attention(q, *cache.write_scratch(layer, k, v), cache.attn_mask(q.shape[0]))
            if commit_slot is not None:
                cache.commit(layer, commit_slot)
        return self.proj(out.transpose(1, 2).reshape(B, T, N, D)), kv


@functools.lru_cache(8)
def _gelu_constants(dtype):
    """TanhGELU's two constants as 0-dim CPU tensors of the input's dtype: a Python number in an in-place op is
    converted to one at every call (two small ops of the MLP's dozen at batch 1); the values are the same."""
    return (torch.tensor(0.044715 * TanhGELU.K, dtype=dtype), torch.tensor(TanhGELU.K, dtype=dtype))


class TanhGELU(nn.Module):
    """GELU's tanh form, 0.5 x (1 + tanh(u)) with u = sqrt(2 / pi) (x + 0.044715 x^3), as nn.GELU(approximate="tanh")
    computes it; on the CPU written as x * sigmoid(2u), the same function (1 + tanh(u) = 2 sigmoid(2u)), in place
    where no gradient is wanted. Why: torch's CPU tanh is slow; on this project's 2-core CPU the module took 120 µs
    on a (81, 768) tensor, a batch-1 step's MLP, and this form 70, the values within 5e-7. No weights: a bundle
    saved with either loads in the other."""

    K = 2 * math.sqrt(2 / math.pi)

    def forward(self, x):
        if x.device.type != "cpu":  # one fused kernel there
            return F.gelu(x, approximate="tanh")
        if torch.is_grad_enabled() and x.requires_grad:  # the same operations in the same order, out of place
            return torch.sigmoid((x * x * (0.044715 * self.K) + self.K) * x) * x
        a, k = _gelu_constants(x.dtype)
        u = x * x
        u.mul_(a).add_(k).mul_(x)
        return u.sigmoid_().mul_(x)


class DiTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), TanhGELU(), nn.Linear(hidden, dim))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x, c, cos, sin, newest: bool = False, mod=None, **attn_kw):
        """x: (B, T, N, D) tokens; c: (B, T, D) per-frame conditioning. newest: only the newest frame's tokens
        come out (B, 1, N, D), attending as before, and the keys/values of all T frames. mod: self.ada(c)
        computed already (forward_cached keeps it for conditionings it has seen)."""
        shift1, scale1, gate1, shift2, scale2, gate2 = (self.ada(c) if mod is None else mod)[:, :, None].chunk(6, dim=-1)
        # modulate(norm(x)) and the gated residual before the second norm are one fused pass each with
        # kernels=triton (worldsim.kernels); the default computes them as written in the references
        a, kv = self.attn(ln_modulate(x, shift1, scale1, self.norm1.eps), cos, sin, newest=newest, **attn_kw)
        if newest:
            x, gate1, shift2, scale2, gate2 = (t[:, -1:] for t in (x, gate1, shift2, scale2, gate2))
        x, h = residual_ln_modulate(x, gate1, a, shift2, scale2, self.norm2.eps)
        x = x + gate2 * self.mlp(h)
        return x, kv


class FinalLayer(nn.Module):
    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.linear = nn.Linear(dim, out_dim)

    def forward(self, x, c, mod=None):
        shift, scale = (self.ada(c) if mod is None else mod)[:, :, None].chunk(2, dim=-1)
        return self.linear(ln_modulate(x, shift, scale, self.norm.eps))


# --------------------------------------------------------------------------------------------------
# The model.
# --------------------------------------------------------------------------------------------------


@dataclass
class ModelOutput:
    out: torch.Tensor  # (B, T, C, h, w) raw network output F (the EDM wrapper turns it into a denoised latent)
    reward: torch.Tensor  # (B, T) predicted reward of the transition into each frame
    term_logit: torch.Tensor  # (B, T) logit that the episode terminated on entering each frame
    kv: list | None = None  # per layer (k, v) of shape (B, H, T*N, d), when asked for (cache prefill)
    features: torch.Tensor | None = None  # (B, T, N, dim) the last block's tokens (a codebook token head reads them)
    event_logits: torch.Tensor | None = None  # (B, T, events) logit of each event on entering each frame (events > 0)
    reward_logits: torch.Tensor | None = None  # (B, T, len(reward_values)) logit of each reward value (reward_values)
    head_input: torch.Tensor | None = None  # (B, 2 * dim) what heads_input="sample_pair" heads read (`pair_heads`)


class WorldDiT(ModelMixin, ConfigMixin):
    """Frame-causal latent DiT with per-frame noise level and action (adaLN-Zero), reward and termination heads.

    warp_action (optional): a 2-component Box key of a Dict action space (MineRL's "camera") whose effect is
    mostly a shift of the whole image. Each frame then also reads its previous frame (as context: lightly
    noised) shifted by `action @ warp_matrix` (grid_sample's normalised units per action unit, fitted to the
    data by `worldsim train`), beside its own latent. Why: a 6 degree turn moves a Minetest view by 6-8 px,
    under one 16 px token, and a model left to infer that shift from the action embedding alone ignored the
    camera; given the shifted frame, following the camera is copying what is in front of it.
    warp_kind "rotation" warps by the camera rotation the same matrix implies (`rotate_view`) instead of
    shifting: exact at every pixel of a pinhole view, where the shift is exact only at its centre. warp_zoom
    ({Discrete key: magnification}, rotation only) also magnifies the view about its centre on steps with
    that key pressed: a step forward brings what is ahead closer, mostly a zoom for a view of distant things.

    context_attention "window" (default): every frame attends to the `context_frames` frames before it and
    itself, so a context frame's keys carry what the frames before it showed, and through them everything
    before: a cache that keeps them holds the rollout's whole history, which froze long Crafter rollouts
    (docs/results.md, "The freeze: history in the cache"). "frame": a context frame attends to its own tokens
    only and only the frame being made (a sequence's last frame) attends to the window, so a context frame's
    keys depend on that frame alone and a cache holds no history at no cost (no rebuild, `fresh_window=0`).

    heads_input "window" (default): the reward, termination, event and reward-class heads read the mean last-block
    token of a frame attending to the window, which with context_attention="frame" takes a second copy of the
    frame in each step's commit pass. "pair" (context_attention="frame" only): they read the mean tokens of the
    frame and of the frame before it, each attending to itself alone, as their keys are committed: the commit pass
    is one copy of the frame that attends to nothing else. Why: that copy was a third of the tokens a step runs
    (docs/results.md, "Heads that read the frame pair"); the pair still shows what changed (an item counted up,
    a cow gone), which is what a reward is paid for. `worldsim heads heads_input=pair` fits them.
    "sample_pair" (context_attention="frame", no warp input): the mean token of the frame's last sampling pass
    (attending to the window) beside that of the frame before's commit (attending to itself alone). Why: the
    simulator then commits frame t-1 in the same pass as it samples frame t (`forward_cached_pair`), one pass a
    step where "pair" runs two, and the heads still come with the step they score (docs/results.md, "One pass a
    step"). In a training forward only the last frame's heads read that input (`EDM._head_losses`).
    """

    @register_to_config
    def __init__(self, action_spec: dict, latent_channels: int = 4, patch_size: int = 2, dim: int = 256,
                 depth: int = 6, heads: int = 4, mlp_ratio: float = 4.0, context_frames: int = 4,
                 time_period: int = 4096, warp_action: str | None = None, warp_matrix: list | None = None,
                 warp_kind: str = "shift", warp_zoom: dict | None = None, clock_period: int | None = None,
                 events: int = 0, reward_values: list | None = None, ticks: int = 0,
                 context_attention: str = "window", heads_input: str = "window"):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        if context_attention not in CONTEXT_ATTENTION:
            raise ValueError(f"context_attention must be one of {CONTEXT_ATTENTION}, got {context_attention!r}")
        if heads_input not in HEADS_INPUT:
            raise ValueError(f"heads_input must be one of {HEADS_INPUT}, got {heads_input!r}")
        if heads_input in PAIR_INPUTS and context_attention != "frame":
            raise ValueError(f"heads_input={heads_input!r} reads frames attending to themselves alone, which only "
                             "context_attention='frame' computes")
        if heads_input == "sample_pair" and warp_action is not None:
            raise ValueError("heads_input='sample_pair' commits the frame before in the sampling pass, which a warp "
                             "input (the frame before, warped) cannot be read in")
        p, C = patch_size, latent_channels
        if warp_action is not None:
            sub = action_spec.get("keys", {}).get(warp_action, {}) if action_spec["type"] == "dict" else {}
            if sub.get("type") != "box" or sub.get("dim") != 2:
                raise ValueError(f"warp_action={warp_action!r} must name a 2-component Box key of a Dict action "
                                 f"space; this one is {action_spec}")
            M = torch.tensor(warp_matrix if warp_matrix is not None else [[0.0, 0.0], [0.0, 0.0]], dtype=torch.float32)
            if M.shape != (2, 2) or not torch.isfinite(M).all():
                raise ValueError(f"warp_matrix must be 2x2 finite numbers, got {warp_matrix}")
            if warp_kind not in WARP_KINDS:
                raise ValueError(f"warp_kind must be one of {WARP_KINDS}, got {warp_kind!r}")
            keys = action_spec.get("keys", {})
            for key, z in (warp_zoom or {}).items():
                if keys.get(key, {}).get("type") != "discrete" or not (isinstance(z, (int, float)) and 0.5 < z < 2):
                    raise ValueError(f"warp_zoom maps Discrete keys of the action space to a magnification per "
                                     f"step in (0.5, 2); got {key!r}: {z!r}")
            if warp_zoom and warp_kind != "rotation":
                raise ValueError("warp_zoom works with warp_kind='rotation' (a zoom about the view's centre)")
            if warp_kind == "rotation" and (M[0, 0] == 0 or M[1, 1] == 0):
                raise ValueError(f"warp_kind='rotation' reads the warp matrix's diagonal as focal lengths; "
                                 f"it needs both nonzero, got {warp_matrix}")
            self.register_buffer("warp_shift", M, persistent=False)  # stored in the config, not the weights
        self.patch_in = nn.Linear(C * p * p * (2 if warp_action else 1), dim)
        self.sigma_proj = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.sigma_embed = TimestepEmbedding(256, dim)
        self.action_embed = ActionEncoder(action_spec, dim)
        self.clock_embed = ClockEncoder(clock_period, dim) if clock_period else None
        # ticks: changes of the game's counts that its frames cannot foretell (Crafter's food, drink, energy and
        # health, moved by hidden hunger, thirst and fatigue clocks), given per frame as 0/1, like an action;
        # the env draws them (TickHead) and the frame shows them. Why: a model left to guess them draws their
        # mean, "no change", and in its world nobody gets hungry (docs/results.md, "The inventory's clock").
        if not (isinstance(ticks, int) and ticks >= 0):
            raise ValueError(f"ticks must be a count of tick types >= 0, got {ticks!r}")
        self.tick_embed = nn.Linear(ticks, dim, bias=False) if ticks else None
        self.tick_head = TickHead(dim, ticks) if ticks else None
        self.rope = Rotary3D(dim // heads, time_period)
        self.blocks = nn.ModuleList(DiTBlock(dim, heads, mlp_ratio) for _ in range(depth))
        self.final = FinalLayer(dim, C * p * p)
        head_dim = dim * (2 if heads_input in PAIR_INPUTS else 1)  # pair: the frame's mean token, then its previous one's
        self.head_norm = nn.LayerNorm(head_dim)
        # reward, termination, then one logit per event (events > 0: the game's achievements, fit by `worldsim
        # heads events=true`; the env pays each one's first time in an episode, as the game does), then one logit
        # per reward value (reward_values: the rest of the reward as classes, `worldsim heads reward_classes=true`;
        # the env draws one, as the game pays whole health points, where a regression pays averages)
        n_values = len(reward_values or [])
        self.heads_mlp = nn.Sequential(nn.Linear(head_dim, dim), nn.SiLU(), nn.Linear(dim, 2 + int(events) + n_values))
        self._init_weights()

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for blk in self.blocks:  # adaLN-Zero: every block starts as the identity
            nn.init.zeros_(blk.ada[-1].weight)
            nn.init.zeros_(blk.ada[-1].bias)
        nn.init.zeros_(self.final.ada[-1].weight)
        nn.init.zeros_(self.final.ada[-1].bias)
        nn.init.zeros_(self.final.linear.weight)
        nn.init.zeros_(self.final.linear.bias)
        nn.init.normal_(self.sigma_embed.linear_1.weight, std=0.02)
        nn.init.normal_(self.sigma_embed.linear_2.weight, std=0.02)
        if self.clock_embed is not None:  # the clock starts unread, so adding it to a trained model changes nothing
            nn.init.zeros_(self.clock_embed.embed.weight)
        if self.tick_embed is not None:  # likewise the ticks
            nn.init.zeros_(self.tick_embed.weight)

    # ---- helpers ---------------------------------------------------------------------------------
    def _cond(self, c_noise, actions, has_action, clock=None, ticks=None):
        B, T = has_action.shape
        s = self.sigma_embed(self.sigma_proj(c_noise.reshape(-1).float()).to(self.patch_in.weight.dtype))
        c = s.reshape(B, T, -1) + self.action_embed(actions, has_action)
        if self.clock_embed is not None:
            if clock is None:
                raise ValueError(f"this world model reads the game's clock (clock_period={self.config.clock_period}):"
                                 " pass clock, each frame's step count since the game began")
            c = c + self.clock_embed(torch.as_tensor(clock, device=c.device).reshape(B, T))
        if self.tick_embed is not None:
            if ticks is None:
                raise ValueError(f"this world model shows the game's ticks ({self.config.ticks} types): pass ticks, "
                                 "0/1 per frame and type, which of them happened on the step into each frame")
            c = c + self.tick_embed(torch.as_tensor(ticks, device=c.device).reshape(B, T, -1).to(c.dtype))
        return c

    def _tokens(self, x):
        p = self.config.patch_size
        return rearrange(x, "b t c (h p1) (w p2) -> b t (h w) (c p1 p2)", p1=p, p2=p)

    def _untokens(self, y, h, w):
        p = self.config.patch_size
        return rearrange(y, "b t (h w) (c p1 p2) -> b t c (h p1) (w p2)", h=h // p, w=w // p, p1=p, p2=p)

    def warped_previous(self, prev, actions, has_action):
        """prev: (B, T, C, h, w) each frame's previous frame -> shifted by that frame's warp action. A frame
        without its action (the first, or hidden for guidance) gets its previous frame unshifted."""
        k = self.config.warp_action
        if prev is None:
            raise ValueError(f"this world model reads the previous frame shifted by the {k!r} action: pass prev")
        cam = actions[k].to(prev.dtype)
        cam = torch.where(has_action[..., None], cam, torch.zeros_like(cam))
        if self.config.warp_kind == "rotation":
            zoom = None
            if self.config.warp_zoom:  # each pressed key's magnification; a frame without its action: none
                zoom = torch.ones(cam.shape[:-1], dtype=torch.float32, device=cam.device)
                for key, f in self.config.warp_zoom.items():
                    zoom = zoom * torch.where(actions[key].to(zoom.device) > 0, float(f), 1.0)
                zoom = torch.where(has_action, zoom, torch.ones_like(zoom)).flatten()
            return rotate_view(prev.flatten(0, 1), cam.flatten(0, 1), self.warp_shift,
                               zoom).unflatten(0, prev.shape[:2])
        shift = cam @ self.warp_shift.to(prev.dtype)
        return shift_latents(prev.flatten(0, 1), shift.flatten(0, 1)).unflatten(0, prev.shape[:2])

    def _with_warp(self, x, prev, actions, has_action, warped=None):
        """x, prev: (B, T, C, h, w) -> x and each frame's warped previous frame (or `warped`, the same already
        computed), channel-stacked."""
        if self.config.warp_action is None:
            return x
        if warped is None:
            warped = self.warped_previous(None if prev is None else prev.to(x.dtype), actions, has_action)
        return torch.cat([x, warped.to(x.dtype)], dim=2)

    def with_warp(self, action: str, matrix, kind: str = "shift") -> "WorldDiT":
        """This model with the warp input added (see the class docstring). The new input weights start at
        zero, so it computes exactly what it did until training puts them to use."""
        if self.config.warp_action is not None:
            raise ValueError(f"this world model already warps by {self.config.warp_action!r}")
        new = self._reconfigured(warp_action=action, warp_matrix=[[float(v) for v in row] for row in matrix],
                                 warp_kind=kind)
        sd = self.state_dict()
        sd["patch_in.weight"] = torch.cat([sd["patch_in.weight"], torch.zeros_like(sd["patch_in.weight"])], dim=1)
        new.load_state_dict(sd)
        return new.train(self.training)

    def with_warp_kind(self, kind: str, zoom: dict | None = None) -> "WorldDiT":
        """This model, same weights, warping by `kind` ("shift" or "rotation") with the same fitted matrix, and
        with rotation optionally zooming by `zoom` ({Discrete key: magnification per step when pressed})."""
        if self.config.warp_action is None:
            raise ValueError("this world model has no warp input to change")
        new = self._reconfigured(warp_kind=kind, warp_zoom=dict(zoom) if zoom else None)
        new.load_state_dict(self.state_dict())
        return new.train(self.training)

    def with_clock(self, period: int) -> "WorldDiT":
        """This model with the clock input added (ClockEncoder); its weights start at zero, so it computes
        exactly what it did until training puts them to use."""
        if self.config.clock_period:
            raise ValueError(f"this world model already reads a clock (clock_period={self.config.clock_period})")
        new = self._reconfigured(clock_period=int(period))
        sd = {**self.state_dict(), **{f"clock_embed.{k}": v for k, v in new.clock_embed.state_dict().items()}}
        new.load_state_dict(sd)
        return new.train(self.training)

    def with_ticks(self, n: int) -> "WorldDiT":
        """This model with the ticks input added (n tick types); its weights start at zero, so it computes
        exactly what it did until training puts them to use."""
        if self.config.ticks:
            raise ValueError(f"this world model already shows ticks ({self.config.ticks} types)")
        new = self._reconfigured(ticks=int(n))
        sd = {**self.state_dict(), **{f"tick_embed.{k}": v for k, v in new.tick_embed.state_dict().items()},
              **{f"tick_head.{k}": v for k, v in new.tick_head.state_dict().items()}}
        new.load_state_dict(sd)
        return new.train(self.training)

    def without_ticks(self) -> "WorldDiT":
        """This model without its ticks input and tick head. It computes what it computed when no tick happened
        (the input has no bias), so a fine-tune that does not train ticks, or reads data without counters,
        starts from it; the head is fit again on the new model (`worldsim ticks`)."""
        new = self._reconfigured(ticks=0)
        new.load_state_dict({k: v for k, v in self.state_dict().items() if not k.startswith(("tick_embed.", "tick_head."))})
        return new.train(self.training)

    def without_blocks(self, drop) -> "WorldDiT":
        """This model with the blocks at indices `drop` removed, the others' weights kept in order (layer
        dropping, as BK-SDM does to a diffusion U-Net): a shallower, faster model to distil from this one
        (`worldsim train dit.drop_blocks=[i] dit.distill_guidance=1`). Each block is a residual update, so the
        rest still computes much of what it did; which block costs least is measured, not assumed."""
        drop = sorted({int(i) for i in drop})
        depth = self.config.depth
        if not drop or drop[0] < 0 or drop[-1] >= depth or len(drop) >= depth:
            raise ValueError(f"drop_blocks={drop}: indices of blocks to remove from a model of depth {depth}, "
                             "leaving at least one")
        keep = [i for i in range(depth) if i not in drop]
        new = self._reconfigured(depth=len(keep))
        sd = {}
        for k, v in self.state_dict().items():
            if k.startswith("blocks."):
                i, rest = k[len("blocks."):].split(".", 1)
                if int(i) in drop:
                    continue
                k = f"blocks.{keep.index(int(i))}.{rest}"
            sd[k] = v
        new.load_state_dict(sd)
        return new.train(self.training)

    def with_heads_input(self, mode: str) -> "WorldDiT":
        """This model, same weights, with its heads reading `mode` (HEADS_INPUT, see the class docstring).
        Going from "window" to a pair, the heads' first layer keeps its weights for the frame's half and starts
        blind to the previous frame's (zero weights); the norm now spans both halves. Between "pair" and
        "sample_pair" the heads are kept as they are. Either way the heads are a start for `worldsim heads` to
        refit, not the heads before."""
        if mode == self.config.heads_input:
            return self
        new = self._reconfigured(heads_input=mode)
        sd = self.state_dict()
        D = self.config.dim
        w, b = sd["heads_mlp.0.weight"], sd["heads_mlp.0.bias"]
        nw, nb = sd["head_norm.weight"], sd["head_norm.bias"]
        if mode in PAIR_INPUTS and self.config.heads_input in PAIR_INPUTS:
            pass  # the same input's shape: the same heads
        elif mode in PAIR_INPUTS:
            sd["heads_mlp.0.weight"] = torch.cat([w, torch.zeros_like(w)], 1)
            sd["head_norm.weight"], sd["head_norm.bias"] = torch.cat([nw, torch.ones_like(nw)]), torch.cat([nb, torch.zeros_like(nb)])
        else:  # back to one frame: its half of the pair
            sd["heads_mlp.0.weight"] = w[:, :D].clone()
            sd["head_norm.weight"], sd["head_norm.bias"] = nw[:D].clone(), nb[:D].clone()
        sd["heads_mlp.0.bias"] = b
        new.load_state_dict(sd)
        return new.train(self.training)

    def with_context_attention(self, mode: str) -> "WorldDiT":
        """This model, same weights, with context frames attending as `mode` says (see the class docstring): a
        fine-tune from a "window" model to "frame" starts from what the window model learnt."""
        new = self._reconfigured(context_attention=mode)
        new.load_state_dict(self.state_dict())
        return new.train(self.training)

    def _reconfigured(self, **changes) -> "WorldDiT":
        """A new model (fresh weights) with this one's config but for `changes`, on its device; fp32 like every
        model here (load_state_dict keeps that)."""
        cfg = {k: v for k, v in self.config.items() if not k.startswith("_")}
        return WorldDiT(**{**cfg, **changes}).to(self.device)

    def head_input(self, pooled, prev_pooled=None):
        """What the heads read, from pooled (B, T, dim) each frame's mean last-block token: that, or with
        heads_input="pair" or "sample_pair" each frame's beside its previous frame's (prev_pooled (B, dim): the
        frame before the first; None: the first frame's previous is unknown, zeros, and a training loss leaves it
        out)."""
        if self.config.heads_input == "window":
            return pooled
        first = torch.zeros_like(pooled[:, :1]) if prev_pooled is None else prev_pooled[:, None].to(pooled.dtype)
        return torch.cat([pooled, torch.cat([first, pooled[:, :-1]], 1)], -1)

    def _heads(self, x, prev_pooled=None):
        return self._head_mlp(self.head_input(x.mean(dim=2), prev_pooled))

    def _head_mlp(self, x):
        r = self.heads_mlp(self.head_norm(x))
        K = 2 + int(self.config.events)
        return (r[..., 0], r[..., 1], (r[..., 2:K] if self.config.events else None),
                (r[..., K:] if self.config.reward_values else None))

    def tick_logits(self, pooled, actions, has_action, since):
        """Each tick type's logit on a step: pooled (..., dim) the mean of the last block's tokens of the frame
        it starts from (ModelOutput.features averaged over its tokens), the step's actions and has_action (...),
        since int (..., ticks)."""
        if self.tick_head is None:
            raise ValueError("this world model has no ticks (ticks=0)")
        return self.tick_head(pooled, self.action_embed(actions, has_action), since)

    def _check_size(self, h, w):
        p = self.config.patch_size
        if h % p or w % p:
            raise ValueError(f"latent grid {h}x{w} is not divisible by patch_size={p}")

    # ---- sequence forward: training, full recompute, cache prefill --------------------------------
    def forward(self, x, c_noise, actions, has_action, times=None, return_kv: bool = False, prev=None,
                clock=None, ticks=None, context_only: bool = False, newest: bool = False) -> ModelOutput:
        """x: (B, T, C, h, w) scaled noisy latents; c_noise: (B, T); actions: (B, T, ...); has_action: (B, T).

        times: int64 (T,) absolute frame indices (default 0..T-1); the attention window is `context_frames`.
        prev: (B, T, C, h, w) each frame's previous frame as context (normalised latent, context-noised),
        read only by a model with a warp input.
        clock: int (B, T) each frame's step count since the game began, read only by a model with a clock
        (clock_period).
        ticks: (B, T, ticks) 0/1, the ticks of the step into each frame, read only by a model with ticks.
        context_only: every frame is context (a cache prefill); matters to context_attention="frame", whose
        context frames attend to themselves alone and whose last frame otherwise attends to the window.
        newest: only the newest frame's outputs are wanted (a prefill whose caller reads its heads or features):
        the last block runs that frame's queries alone, and the output layer and heads read that frame alone, so
        every field but kv has T = 1. The keys and values of every frame and layer are as without it. With
        heads_input="pair" (or "sample_pair") the heads then need the frame before's last block, which is not run:
        they are None. Those heads otherwise: the first frame's heads read zeros for the frame before it (a loss leaves
        them out, `EDM._head_losses`).
        """
        B, T, C, h, w = x.shape
        self._check_size(h, w)
        p = self.config.patch_size
        if times is None:
            times = torch.arange(T)
        tok = self.patch_in(self._tokens(self._with_warp(x, prev, actions, has_action)))
        c = self._cond(c_noise, actions, has_action, clock, ticks)
        cos, sin = self.rope(times, h // p, w // p)
        alone = (T if context_only else T - 1) if self.config.context_attention == "frame" else 0
        mask = frame_causal_mask(T, tok.shape[2], self.config.context_frames, device=x.device, alone=alone)
        kvs = []
        for i, blk in enumerate(self.blocks):
            tok, kv = blk(tok, c, cos, sin, mask=mask, return_kv=return_kv, newest=newest and i == len(self.blocks) - 1)
            kvs.append(kv)
        if newest:
            c = c[:, -1:]
        if newest and self.config.heads_input in PAIR_INPUTS:
            reward = term = events = values = None
        else:
            reward, term, events, values = self._heads(tok)
        out = self._untokens(self.final(tok, c), h, w)
        return ModelOutput(out, reward, term, kvs if return_kv else None, tok, events, values)

    # ---- cached forward: one new frame per call -------------------------------------------------------
    def forward_cached(self, x, c_noise, actions, has_action, cache: "KVCache", time: int,
                       commit: bool = False, prev=None, warped=None, outputs: str = "all", clock=None,
                       ticks=None, prev_features=None) -> ModelOutput:
        """x: (B, C, h, w) one frame per batch element, attending to the cache's window and to itself.

        commit=True writes this frame's keys/values into the cache at `time` (after each layer has used
        the window it needs), so the next frame sees it as context; with context_attention="frame" the keys
        committed are the frame's attending to its own tokens alone, as context frames did in training, while
        what the pass returns (heads, features, output) is the frame's attending to the window, as for any
        frame being made (one pass over the batch stacked twice); with heads_input="pair" it is the one copy,
        attending to itself alone, and the heads read it beside prev_features (B, dim): the mean last-block token
        of the frame before, as its commit pass (or a prefill's newest frame) gave it. prev: (B, C, h, w) as in `forward`;
        warped: (B, C, h, w) a warp model's input already made from prev (the simulator's view memory builds
        it from the views it holds), used instead of warping prev.
        clock: int (B,) the frame's step count since the game began (a model with clock_period).
        ticks: (B, ticks) 0/1 the ticks of the step into the frame (a model with ticks).
        outputs: "all", or only what the caller reads: "frame" (a sampling pass: the output and the features,
        no heads), "heads" (a commit pass: reward and termination, no output layer) or "features" (a commit pass
        of heads_input="sample_pair", whose heads read it beside the next frame's sampling pass: `pair_heads`);
        what is left out is None. At batch 1 each of those small layers costs about as much in call overhead as
        in arithmetic. With heads_input="sample_pair" a commit pass is the one copy, as with "pair".
        """
        if outputs not in ("all", "frame", "heads", "features"):
            raise ValueError(f"outputs must be all, frame, heads or features, got {outputs!r}")
        B, C, h, w = x.shape
        p = self.config.patch_size
        acts = actions[:, None] if not isinstance(actions, dict) else {k: v[:, None] for k, v in actions.items()}
        tok = self.patch_in(self._tokens(self._with_warp(x[:, None], None if prev is None else prev[:, None], acts,
                                                         has_action[:, None],
                                                         None if warped is None else warped[:, None])))
        c, mods = self._conditioning(c_noise[:, None], acts, has_action[:, None],
                                     None if clock is None else clock[:, None], None if ticks is None else ticks[:, None])
        cos, sin = self._rope_at(time, h // p, w // p)
        if commit and B != cache.k.shape[1]:
            raise ValueError(f"a commit pass takes one row per cache row ({cache.k.shape[1]}), got {B}")
        slot = cache.slot(time) if commit else None
        pair = self.config.heads_input in PAIR_INPUTS
        if self.config.heads_input == "sample_pair" and outputs in ("all", "heads"):
            raise ValueError("heads_input='sample_pair' heads read a sampling pass beside the frame before's commit "
                             "(`pair_heads`), not one pass: ask for outputs='frame' or 'features'")
        if pair and outputs == "heads" and prev_features is None:
            raise ValueError("heads_input='pair' heads read the frame before this one too: pass prev_features")
        alone = commit and self.config.context_attention == "frame"
        if alone and pair:  # the one copy, attending to itself alone: its keys are committed and its tokens read
            alone = "only"
        elif alone:  # one copy writes the frame's keys computed alone, the other gives the outputs (Attention)
            tok, c = torch.cat([tok, tok]), torch.cat([c, c])
            mods = None  # computed for the stacked batch, as before the memo
        for i, blk in enumerate(self.blocks):
            tok, _ = blk(tok, c, cos, sin, cache=cache, layer=i, commit_slot=slot, alone=alone,
                         mod=None if mods is None else mods[i])
        if alone is True:
            tok, c = tok[B:], c[B:]
        if commit:
            cache.mark(time)
        reward = term = events = values = out = None
        if outputs in ("all", "heads") and not (pair and prev_features is None):
            reward, term, events, values = (None if r is None else r[:, 0] for r in self._heads(tok, prev_features))
        if outputs in ("all", "frame"):
            out = self._untokens(self.final(tok, c, None if mods is None else mods[-1]), h, w)[:, 0]
        return ModelOutput(out, reward, term, features=tok[:, 0], event_logits=events, reward_logits=values)

    def pair_heads(self, features, prev_features) -> ModelOutput:
        """heads_input="sample_pair": the heads of a step from its sampling pass's last-block tokens features
        (B, N, dim) and the frame before's commit pass's (B, N, dim). Returns a ModelOutput of the heads (B,),
        features = the sampling pass's tokens and head_input = the (B, 2 * dim) vector the heads read."""
        pooled, prev = features.float().mean(dim=1), prev_features.float().mean(dim=1)
        x = self.head_input(pooled[:, None].to(features.dtype), prev.to(features.dtype))
        reward, term, events, values = (None if r is None else r[:, 0] for r in self._head_mlp(x))
        return ModelOutput(None, reward, term, features=features, event_logits=events, reward_logits=values,
                           head_input=torch.cat([pooled, prev], -1))

    def forward_cached_pair(self, x, c_noise, actions, has_action, cache: "KVCache", time: int, clock=None,
                            ticks=None) -> ModelOutput:
        """Two frames per row in one pass, for a model whose context frames attend to themselves alone
        (context_attention="frame"): frame 0 (of time - 1, e.g. the frame just made, lightly noised) is committed
        to the cache as a commit pass would commit it, and frame 1 (of `time`, e.g. pure noise) attends to the
        window, which then holds frame 0, as a sampling pass would. The same as those two passes one after the
        other (tests/test_model.py), with every GEMM over both frames' tokens: one pass of 2N rows where a
        batch-1 step ran two of N, 2-3 ms of a 21 ms step on this project's EPYC (docs/merged_pass_time.py).

        x: (B, 2, C, h, w); c_noise, has_action: (B, 2); actions (B, 2) or a dict of (B, 2, ...); clock: int (B, 2);
        ticks: (B, 2, K). Returns frame 1's output (B, C, h, w) and both frames' last-block tokens
        (features: (B, 2, N, dim)); no heads."""
        cfg = self.config
        if cfg.context_attention != "frame" or cfg.warp_action is not None:
            raise ValueError("forward_cached_pair needs context_attention='frame' and no warp input")
        B, T, C, h, w = x.shape
        if T != 2 or B != cache.k.shape[1]:
            raise ValueError(f"forward_cached_pair takes two frames per cache row ({cache.k.shape[1]} rows), "
                             f"got {tuple(x.shape[:2])}")
        p = cfg.patch_size
        tok = self.patch_in(self._tokens(x))
        c, mods = self._conditioning(c_noise, actions, has_action, clock, ticks)  # kept at batch 1 (see there)
        # frame 0's tables are the last step's frame 1's (kept by _rope_at, which then keeps frame 1's)
        cos, sin = (torch.cat(t) for t in zip(self._rope_at(time - 1, h // p, w // p), self._rope_at(time, h // p, w // p)))
        slot = cache.slot(time - 1)
        cache.mark(time - 1)  # visible to frame 1: each layer writes frame 0's keys before frame 1 reads them
        for i, blk in enumerate(self.blocks):
            tok, _ = blk(tok, c, cos, sin, cache=cache, layer=i, commit_slot=slot, alone="merged",
                         mod=None if mods is None else mods[i])
        out = self._untokens(self.final(tok[:, 1:], c[:, 1:], None if mods is None else mods[-1][:, 1:]), h, w)[:, 0]
        return ModelOutput(out, None, None, features=tok)

    def _conditioning(self, c_noise, actions, has_action, clock, ticks):
        """(c, the adaLN vectors of each block and of the final layer, or None) for a cached pass. At batch 1 on
        the CPU they are kept for each frame's conditioning seen (its noise level, action, clock and ticks): a
        rollout there has few (a one-step sampler's noise level and the commit's, times the actions), and
        computing them was about a tenth of a batch-1 step (the sigma embedding and five small GEMMs, each mostly
        call overhead; this EPYC). Kept per frame, not per pass: a pass of two frames (forward_cached_pair) has a
        key for each pair of actions, and random play computed 1,099 of 2,000 calls afresh kept that way
        (docs/conditioning_time.py). Batched steps (whose rows rarely repeat a whole batch's conditioning), GPUs
        (a key would wait for the device), autocast and training (the weights change) compute them as before."""
        acts = [actions[k] for k in sorted(actions)] if isinstance(actions, dict) else [actions]
        memo = (has_action.shape[0] == 1 and has_action.device.type == "cpu" and not torch.is_grad_enabled()
                and not torch.is_autocast_enabled("cpu")
                and not any(torch.is_floating_point(t) for t in acts))  # a camera's turn seldom repeats
        if not memo:
            return self._cond(c_noise, actions, has_action, clock, ticks), None
        # the weights read, by storage and in-place version: a load_state_dict or a move makes the memo stale
        stamp = tuple((t.data_ptr(), t._version) for t in self._conditioning_weights())
        held = getattr(self, "_cond_memo", None)
        if held is None or held[0] != stamp:
            held = self._cond_memo = (stamp, {})
        T = has_action.shape[1]
        clock = None if self.clock_embed is None else torch.as_tensor(clock).reshape(1, T)  # what _cond reads
        ticks = None if self.tick_embed is None else ticks

        def frame(t, i):  # frame i's part of a (1, T, ...) input
            return None if t is None else t[:, i:i + 1]

        parts = [c_noise, has_action, clock, ticks, *acts]
        # each frame's key: its values as Python numbers (one tolist per input; a key of bytes per frame and
        # input cost twice the time of a hit's other work)
        values = [None if t is None else t.reshape(T, -1).tolist() for t in parts]
        hits = []
        for i in range(T):
            key = tuple(None if v is None else tuple(v[i]) for v in values)
            hit = held[1].get(key)
            if hit is None:
                a_i = ({k: frame(v, i) for k, v in actions.items()} if isinstance(actions, dict)
                       else frame(actions, i))
                c = self._cond(frame(c_noise, i), a_i, frame(has_action, i), frame(clock, i), frame(ticks, i))
                hit = (c, [blk.ada(c) for blk in self.blocks] + [self.final.ada(c)])
                if len(held[1]) >= 256:  # a clock or ticks the model reads make many: keep it bounded
                    held[1].clear()
                held[1][key] = hit
            hits.append(hit)
        if T == 1:
            return hits[0]
        return torch.cat([h[0] for h in hits], 1), [torch.cat(m, 1) for m in zip(*(h[1] for h in hits))]

    def _conditioning_weights(self):
        """The tensors _conditioning's memo depends on, listed once per set of modules (listing them walks the
        module tree, which cost most of what the memo saves). The modules are read from _modules: attribute access
        goes through diffusers' ModelMixin.__getattr__, 35 us a call for these 14 (this EPYC)."""
        m = self._modules
        mods = (*(m.get(k) for k in ("sigma_embed", "sigma_proj", "action_embed", "clock_embed", "tick_embed")),
                m["final"]._modules["ada"], *(blk._modules["ada"] for blk in m["blocks"]))
        held = getattr(self, "_cond_weights", None)
        if held is None or len(held[0]) != len(mods) or any(a is not b for a, b in zip(held[0], mods)):
            held = self._cond_weights = (mods, [t for m in mods if m is not None
                                                for t in [*m.parameters(), *m.buffers()]])
        return held[1]

    def _rope_at(self, time: int, h: int, w: int):
        """The rotary tables of one frame at `time`, kept for the last time asked: a step's sampling and commit
        passes share them (each computation is a dozen small ops)."""
        key = (int(time), h, w, self.rope.time_mult.device)
        if getattr(self, "_rope_key", None) != key:
            self._rope_key, self._rope_val = key, self.rope.at_time(time, h, w)
        return self._rope_val

    def new_cache(self, batch_size: int, tokens_per_frame: int, device=None, dtype=None) -> "KVCache":
        cfg = self.config
        return KVCache(cfg.depth, batch_size, cfg.heads, cfg.dim // cfg.heads, cfg.context_frames, tokens_per_frame,
                       device=device or self.device, dtype=dtype or self.dtype)


class KVCache:
    """Preallocated keys/values of the last `window` frames, per layer, as a ring buffer plus one scratch slot.

    Memory is fixed at construction, so a rollout of any length uses constant memory and time per step.
    Slot `window` is the scratch slot where the frame being generated writes its keys/values; `commit`
    copies them into the ring slot of their time. Time is one clock shared by the batch; each batch
    element has its own record of which ring slots hold valid frames (an env reset clears its own).
    """

    def __init__(self, depth, batch, heads, head_dim, window, tokens_per_frame, device=None, dtype=torch.float32):
        self.window, self.N = window, tokens_per_frame
        shape = (depth, batch, heads, (window + 1) * tokens_per_frame, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.valid = torch.zeros(batch, window + 1, dtype=torch.bool, device=device)
        self.valid[:, window] = True  # the scratch slot (the frame itself) is always visible
        self._mask = None

    def slot(self, time: int) -> int:
        return time % self.window

    def _span(self, slot):
        return slice(slot * self.N, (slot + 1) * self.N)

    def write_scratch(self, layer, k, v):
        """The new frame's keys/values into the scratch slot; returns the window's keys/values to attend over.

        k of r times the cache's batch (r copies of the batch stacked, e.g. with and without the action for
        classifier-free guidance) attends each copy to the same cached context, in one pass instead of r;
        the cache itself is left as it was (such a pass cannot commit)."""
        s, B = self._span(self.window), self.k.shape[1]
        if k.shape[0] == B:
            self.k[layer, :, :, s] = k
            self.v[layer, :, :, s] = v
            return self.k[layer], self.v[layer]
        r = k.shape[0] // B
        if r * B != k.shape[0]:
            raise ValueError(f"{k.shape[0]} rows do not stack whole copies of the cache's batch of {B}")
        kk, vv = self.k[layer].repeat(r, 1, 1, 1), self.v[layer].repeat(r, 1, 1, 1)
        kk[:, :, s], vv[:, :, s] = k, v
        return kk, vv

    def write_slot(self, layer, slot, k, v):
        """Keys/values of a frame that attended to itself alone straight into its ring slot: what write_scratch
        and commit leave there, one copy fewer."""
        d = self._span(slot)
        self.k[layer, :, :, d] = k
        self.v[layer, :, :, d] = v

    def commit(self, layer, slot):
        s = self._span(self.window)
        self.write_slot(layer, slot, self.k[layer, :, :, s], self.v[layer, :, :, s])

    def mark(self, time: int, rows=None):
        rows = slice(None) if rows is None else rows
        self.valid[rows, self.slot(time)] = True
        self._mask = None

    def attn_mask(self, rows: int | None = None):
        """(B, 1, 1, (window+1)*N) boolean, or None where every row's window is full (most steps of a rollout):
        attention without a mask gives the same result and at batch 1 took a third less time (this EPYC, 81
        queries over 405 keys: 312 against 468 us)."""
        if self._mask is None:  # rebuilt only when validity changes
            self._mask = False if bool(self.valid.all()) else self.valid.repeat_interleave(self.N, dim=1)[:, None, None, :]
        if self._mask is False:
            return None
        if rows is not None and rows != self._mask.shape[0]:  # stacked copies of the batch (write_scratch)
            return self._mask.repeat(rows // self._mask.shape[0], 1, 1, 1)
        return self._mask

    def clear(self, rows):
        """Forget every cached frame of the given batch rows (an env reset)."""
        self.valid[rows, : self.window] = False
        self._mask = None

    def write_frames(self, rows, kvs, times):
        """Prefill: write per-layer (k, v) of shape (b, H, T*N, d) for frames at `times` into batch `rows`."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        for t_idx, t in enumerate(times):
            d, s = self._span(self.slot(int(t))), self._span(t_idx)
            for layer, (k, v) in enumerate(kvs):
                self.k[layer, rows, :, d] = k[:, :, s].to(self.k.dtype)
                self.v[layer, rows, :, d] = v[:, :, s].to(self.v.dtype)
            self.mark(int(t), rows)

    def row(self, row: int):
        """Copies of one batch row's window (the ring slots, not the scratch slot): keys, values (depth, heads,
        window * N, head_dim) and which slots hold a frame (window,)."""
        span = slice(0, self.window * self.N)
        return self.k[:, row, :, span].clone(), self.v[:, row, :, span].clone(), self.valid[row, :self.window].clone()

    def load_row(self, row: int, k, v, valid, shift: int = 0, rotate=None):
        """Put `row`'s window back from `row()`'s copies, saved when the batch's clock was `shift` frames behind
        now. Why a shift: the ring slot of a frame is its time mod window and its keys carry its absolute time
        (rotary), and the batch shares one clock, so a state saved at another time is moved forward: each slot
        to its frame's new time, each key turned by `rotate` = (cos, sin) of the shift (Rotary3D.time_shift;
        None: keys as saved, for a shift of 0).
        Attention reads only time differences, so the moved window attends as it did."""
        W, N = self.window, self.N
        if k.shape != (self.k.shape[0], self.k.shape[2], W * N, self.k.shape[4]) or valid.shape != (W,):
            raise ValueError(f"a saved window of shape {tuple(k.shape)} does not fit this cache "
                             f"({self.k.shape[0]} layers, {self.k.shape[2]} heads, {W} frames of {N} tokens)")
        if shift % W:
            old = torch.tensor([(j - shift) % W for j in range(W)])  # new slot j holds the frame of old slot j - shift
            k, v = (x.unflatten(2, (W, N))[:, :, old].flatten(2, 3) for x in (k, v))
            valid = valid[old]
        if rotate is not None:
            k = apply_rope(k, *rotate)
        span = slice(0, W * N)
        self.k[:, row, :, span] = k.to(self.k.dtype)
        self.v[:, row, :, span] = v.to(self.v.dtype)
        self.valid[row, :W] = valid
        self._mask = None

    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2
