"""Latent codebook: k-means of a bundle's latent tokens, and snapping generated tokens to it.

Why: some games draw their frames from a small set of tiles (Crafter: materials, creatures, the player's four
facings, the inventory's digits), so every real latent token of a tile autoencoder lies near one of a few
thousand points. A one-step sample of the next frame lands between them where the model is unsure, and decodes
as a blend of tiles, re-decoded a little differently every step. Snapping each generated token to its nearest
codebook entry shows a tile the game draws, and the context keeps it, so a small error is corrected at the next
step instead of carried (what discrete-token world models such as IRIS and Genie get from their tokenizer).
A bundle snaps only if it has a codebook and `decode.snap` is on: for a VAE on a 3D game (Minetest) the latents
are not discrete and snapping would throw detail away.

Snapping to the nearest entry keeps what the model is sure of, but where it is unsure (the strip of ground a
move reveals) the nearest entry to its average is the commonest tile, grass: the world fills with grass and
freezes. `snap=sample` instead draws those tokens: a small token head (`TokenHead`), trained on the world
model's last-layer features, gives each token's probabilities over groups of entries (k-means of the
codebook: a tile and its lighting variants), and where no group is likely enough (`certain`) the token's group
is drawn from them, then its entry is the group's nearest to the model's estimate. It costs next-frame PSNR
(a draw is further in squared error than the average) and buys a world that keeps making new terrain.

`worldsim codebook bundle=B data=D` fits one for a trained bundle (`head=true`: and the token head);
`worldsim train codebook=K` at export.
k-means is Lloyd's algorithm in a few lines of torch rather than a scikit-learn dependency for one function.
"""
from __future__ import annotations

import json
import weakref
from pathlib import Path

import numpy as np
import torch
from torch import nn

from worldsim.checkpoint import tensors_bytes, write_dir_atomic
from worldsim.data import episode_ticks

CHUNK = 65536  # tokens per distance block: 65536 x 4096 floats is 1 GiB
# snap=sample's default `certain`: on the shipped Crafter model 0.8 and 0.9 let the closed loop end as a still
# field of water in every run, 0.95 and 0.98 did not (docs/results.md)
CERTAIN = 0.95


BLOCK = 128  # entries per block of nearest's two-level minimum
_KEPT: dict = {}  # (what, id(codebook)) -> (weakref to it, its version, what was made of it): `_kept`


def _kept(cb: torch.Tensor, make):
    """make(cb), made once per codebook tensor and function, kept while the tensor lives and is not written to.
    Why: the simulator reads each codebook 2-4 times a step, and what `nearest` and `entry_index` derive from it
    (products' rows, sorted hash keys) cost most of a lookup when made every time."""
    version = None if cb.is_inference() else cb._version  # inference-mode tensors keep no version counter
    key = (make.__name__, id(cb))
    hit = _KEPT.get(key)
    if hit is not None and hit[0]() is cb and hit[1] == version:
        return hit[2]
    for k in [k for k, v in _KEPT.items() if v[0]() is None]:  # codebooks gone since
        del _KEPT[k]
    value = make(cb)
    _KEPT[key] = (weakref.ref(cb), version, value)
    return value


def _augmented(cb: torch.Tensor) -> torch.Tensor:
    """(K', C + 2) the rows [entry, 1, |entry|^2] that torch.cdist multiplies a codebook's entries into, padded to
    whole BLOCKs with rows no token is near."""
    norm = cb.pow(2).sum(-1, keepdim=True)
    far = torch.zeros((-len(cb)) % BLOCK, cb.shape[1] + 2, dtype=cb.dtype, device=cb.device)
    far[:, -2], far[:, -1] = 1.0, 1e30
    return torch.cat([torch.cat([cb, torch.ones_like(norm), norm], -1), far])


def nearest(tokens: torch.Tensor, codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens (N, C), codebook (K, C) -> (distance, index) of each token's nearest entry (Euclidean; the first
    entry of equal distance).

    The distances are torch.cdist's, computed as it computes them for more than 25 rows (|x|^2 - 2 x.e + |e|^2
    in one matrix product), with the codebook's side of that product kept between calls; the minimum is taken
    per block of BLOCK entries, then over blocks. Why not cdist(...).min(1): the simulator snaps 81 tokens to
    3,917 entries once or twice a step, and min with indices over a row of 3,917 took 250 us of that call's
    660 (this EPYC) where a minimum without indices took 20. Same values and indices as cdist's (tests)."""
    if (len(tokens) <= 25 and len(codebook) <= 25) or tokens.dtype != codebook.dtype \
            or tokens.dtype not in (torch.float32, torch.float64):  # cdist's own direct path: as before
        d = [torch.cdist(tokens[i:i + CHUNK], codebook).min(1) for i in range(0, len(tokens), CHUNK)]
        return torch.cat([x.values for x in d]), torch.cat([x.indices for x in d])
    rows = _kept(codebook, _augmented)
    dist, idx = [], []
    for i in range(0, len(tokens), CHUNK):
        x = tokens[i:i + CHUNK]
        norm = x.pow(2).sum(-1, keepdim=True)
        d2 = torch.cat([x.mul(-2), norm, torch.ones_like(norm)], -1).matmul(rows.mT).clamp_min_(0)
        blocks = d2.view(len(x), -1, BLOCK)
        b = blocks.amin(2).argmin(1)  # the first block holding the row's minimum
        inner = blocks[torch.arange(len(x), device=x.device), b]
        j = inner.argmin(1)
        dist.append(inner.gather(1, j[:, None])[:, 0].sqrt())
        idx.append(b * BLOCK + j)
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


def _sorted_keys(cb: torch.Tensor):
    """(probe, sorted hash keys, their order) of a codebook's entries."""
    probe = torch.linspace(1.0, 2.0, cb.shape[1], dtype=torch.float64, device=cb.device)
    keys = (cb.double() * probe).sum(-1)
    order = keys.argsort()
    return probe, keys[order], order


def _entry_keys(cb: torch.Tensor):
    """_sorted_keys, kept per codebook tensor (`_kept`): hashing and sorting the 3,917 entries of the shipped
    Crafter codebook at each lookup was most of its 1 ms, 2-3 lookups a step."""
    return _kept(cb, _sorted_keys)


def entry_index(tokens: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """(N,) the index of each token (N, C) that is exactly a codebook entry (a snapped one), found by a hash of
    its values; nearest search for any other. Why: the nearest search is a distance to every entry, and the
    terrain draw reads the groups of snapped frames every step (3 ms of a batch of 16 on this CPU)."""
    cb = codebook.to(tokens.device).float()
    probe, keys, order = _entry_keys(cb)
    pos = torch.searchsorted(keys, (tokens.double() * probe).sum(-1)).clamp(max=len(cb) - 1)
    idx = order[pos]
    other = ~(cb[idx] == tokens.float()).all(-1)
    if bool(other.any()):
        idx[other] = nearest(tokens[other].float(), cb)[1]
    return idx


def snap(z: torch.Tensor, codebook: torch.Tensor, index: bool = False):
    """Latents (B, C, h, w): each token (the C channels at one grid cell) replaced by its nearest entry. index:
    return (snapped, (B, h, w) the entries' indices), for a caller that reads them next (keep_off_map)."""
    B, C, h, w = z.shape
    _, idx = nearest(z.permute(0, 2, 3, 1).reshape(-1, C).float(), codebook.to(z.device).float())
    out = codebook.to(z)[idx].reshape(B, h, w, C).permute(0, 3, 1, 2).contiguous()
    return (out, idx.view(B, h, w)) if index else out


class TokenHead(nn.Module):
    """Per generated token: logits over the codebook's groups, from the world model's last-layer features of
    that token (the sampling pass's, before the output layer) and the token's one-step estimate."""

    def __init__(self, dim: int, channels: int, groups: int, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim + channels), nn.Linear(dim + channels, hidden), nn.GELU(),
                                 nn.Linear(hidden, groups))

    def forward(self, features, tokens):  # (N, dim), (N, C) -> (N, groups)
        return self.net(torch.cat([features.float(), tokens.float()], -1))


def cell_features(features: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, N, dim) world-model token features -> (B*h*w, dim), one row per latent cell in (B, h, w) order; a
    world-model token covers q x q cells (patch_size q), each of which reads its token's features."""
    B, n, D = features.shape
    q = int(round((h * w / n) ** 0.5))
    if q > 1:
        features = features.reshape(B, h // q, w // q, D).repeat_interleave(q, 1).repeat_interleave(q, 2)
    return features.reshape(-1, D)


def sample_snap(z: torch.Tensor, features: torch.Tensor, codebook: torch.Tensor, groups: torch.Tensor,
                head: TokenHead, noise: torch.Tensor, certain: float) -> torch.Tensor:
    """Latents (B, C, h, w) -> each token an entry: the nearest where the head gives one group more than
    `certain`, elsewhere the nearest entry of a group drawn from the head's probabilities.
    features: (B, N, dim) of the sampling pass (N = h*w / patch_size^2); noise: (B, h, w) unit Gaussian, one
    draw per token (turned into a uniform for an inverse-CDF draw), so the result is a function of the caller's
    noise."""
    B, C, h, w = z.shape
    tok = z.permute(0, 2, 3, 1).reshape(-1, C).float()
    cb, groups = codebook.to(z.device).float(), groups.to(z.device)
    p = head(cell_features(features, h, w), tok).softmax(-1)
    drawn = draw_group(p, noise.reshape(-1))
    sure = p.max(-1).values > certain
    idx = []
    for i in range(0, len(tok), CHUNK // 16):  # distance blocks of 4,096 tokens
        j = slice(i, i + CHUNK // 16)
        d = torch.cdist(tok[j], cb)
        in_group = d.masked_fill(groups[None] != drawn[j, None], float("inf")).argmin(1)
        idx.append(torch.where(sure[j], d.argmin(1), in_group))
    return codebook.to(z)[torch.cat(idx)].reshape(B, h, w, C).permute(0, 3, 1, 2).contiguous()


def draw_group(p: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """(N, G) group weights (each row summing to any positive total) and (N,) unit Gaussian noise -> (N,) the
    group each row's noise draws: the inverse CDF at the noise's uniform."""
    u = 0.5 * (1 + torch.erf(noise.float() / 2 ** 0.5)) * p.sum(-1)
    return (p.cumsum(-1) < u[:, None]).sum(-1).clamp(max=p.shape[1] - 1)


def seed_snap(z: torch.Tensor, features: torch.Tensor, codebook: torch.Tensor, groups: torch.Tensor,
              head: TokenHead, noise: torch.Tensor, certain: float, reveal: torch.Tensor, floor: float) -> torch.Tensor:
    """Nearest snap, plus a seed of new ground on frames gone uniform: where a frame's commonest group holds at
    least `floor` of its tokens and the step's action reveals ground (`reveal`: (B, h, w) bool, the cells the
    action brings into view, from the game's description), the revealed cell the head is least sure of (under
    `certain`) is drawn among its groups other than the likeliest (the uniform from `noise`, (B, h, w) unit
    Gaussian, at that cell), and takes that group's entry nearest to the model's estimate.

    Why: nearest snap turns unsure new ground into the commonest tile, so an explorer's world fills with grass
    and freezes; drawing every unsure token keeps it varied but costs next-frame PSNR everywhere (docs/results.md). A
    frame only goes uniform on the way into that freeze, and one new tile at its edge is enough for the model
    to grow ground from, so the seed changes nothing on varied frames."""
    B, C, h, w = z.shape
    tok = z.permute(0, 2, 3, 1).reshape(B, h * w, C).float()
    cb, groups = codebook.to(z.device).float(), groups.to(z.device)
    idx = nearest(tok.reshape(-1, C), cb)[1].view(B, h * w)
    counts = torch.zeros(B, int(groups.max()) + 1, device=z.device).scatter_add_(
        1, groups[idx], torch.ones(B, h * w, device=z.device))
    cells = reveal.reshape(B, h * w).to(z.device)
    rows = torch.nonzero((counts.max(1).values >= floor * h * w) & cells.any(1))[:, 0]
    if len(rows):
        p = head(cell_features(features[rows], h, w), tok[rows].reshape(-1, C)).softmax(-1).view(len(rows), h * w, -1)
        top = p.max(-1).values
        unsure = cells[rows] & (top < certain)
        j = torch.where(unsure, top, 2.0).argmin(1)  # each row's least sure revealed cell
        pj = p[torch.arange(len(rows)), j]
        q = pj.scatter(1, pj.argmax(1, keepdim=True), 0.0)  # the likeliest group left out
        drawn = draw_group(q, noise.reshape(B, h * w)[rows, j])
        d = torch.cdist(tok[rows, j], cb).masked_fill(groups[None] != drawn[:, None], float("inf"))
        seeded = unsure.any(1)
        idx[rows[seeded], j[seeded]] = d.argmin(1)[seeded]
    return codebook.to(z)[idx.reshape(-1)].reshape(B, h, w, C).permute(0, 3, 1, 2).contiguous()


class TerrainPrior(nn.Module):
    """The group of a cell of new ground given the ground around it: for top-down games whose view scrolls over
    a map (Crafter), fitted on real frames' tile groups alone (`fit_terrain_prior`).

    Why not the token head: it reads the world model's features, and in the model's own rollouts those come from
    frames the model made. Where a rollout has filled the view with one tile (a grass field) the head is as sure
    as the model that the next strip is more of it: on the shipped Crafter model it expects 0.22 other tiles in a
    strip scrolled into a view of 95 % one group, where real frames bring 1.22 (docs/results.md, docs/terrain_stats.py). A view of tile groups
    looks the same whether the game or the model drew it, so a prior over groups keeps the real game's odds.
    Inputs, per new cell: the groups of its neighbours NEIGHBOURS (toward the view's inside and the cell before
    it along the new strip, `groups` meaning none: outside the view or the fixed cells) and the view's group
    histogram (where it is: a biome, daylight or night)."""

    def __init__(self, groups: int, hidden: int = 256, width: int = 32):
        super().__init__()
        self.groups = groups
        self.embed = nn.Embedding(groups + 1, width)
        self.net = nn.Sequential(nn.Linear(len(NEIGHBOURS) * width + groups, hidden), nn.GELU(),
                                 nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, groups))

    def forward(self, near: torch.Tensor, hist: torch.Tensor) -> torch.Tensor:  # (N, 5) long, (N, G) -> (N, G)
        return self.net(torch.cat([self.embed(near).flatten(1), hist.float()], -1))


# a new cell's neighbours, as (steps inward, steps along the strip): inward one and two, the inward one's
# neighbours before and after along the strip, the new cell before it along the strip
NEIGHBOURS = ((1, 0), (2, 0), (1, -1), (1, 1), (0, -1))  # draw_terrain reads the last one as drawn


def terrain_context(g: torch.Tensor, new: torch.Tensor, cells: torch.Tensor, step: torch.Tensor, none: int):
    """Per row of view groups g (b, h, w) long, the cells each scroll brought into view new (b, h, w) bool, the
    map cells of the view `cells` (h, w) bool and each row's scroll `step` (b, 2) [dy, dx] of the view's corner:
    (near (b, h, w, 5) the neighbour groups of every cell as if it were new, none where outside the map cells,
    hist (b, G) the share of each group among the view's map cells that are not new)."""
    b, h, w = g.shape
    inward = -step  # the old view lies opposite the move
    along = step.flip(-1).abs()  # the strip runs across the move
    rr, cc = torch.meshgrid(torch.arange(h, device=g.device), torch.arange(w, device=g.device), indexing="ij")
    rows = torch.arange(b, device=g.device)[:, None, None]
    near = []
    for k_in, k_al in NEIGHBOURS:
        r = rr + k_in * inward[:, 0, None, None] + k_al * along[:, 0, None, None]
        c = cc + k_in * inward[:, 1, None, None] + k_al * along[:, 1, None, None]
        inside = (r >= 0) & (r < h) & (c >= 0) & (c < w)
        r, c = r.clamp(0, h - 1), c.clamp(0, w - 1)
        ok = inside & cells[r, c]
        near.append(torch.where(ok, g[rows, r, c], none))
    old = cells & ~new
    hist = torch.zeros(b, none, device=g.device).scatter_add_(1, torch.where(old, g, 0).reshape(b, -1),
                                                              old.reshape(b, -1).float())
    return torch.stack(near, -1), hist / hist.sum(1, keepdim=True).clamp(min=1)


def draw_terrain(estimate: torch.Tensor, z: torch.Tensor, codebook: torch.Tensor, groups: torch.Tensor,
                 prior: TerrainPrior, noise: torch.Tensor, fresh: torch.Tensor, step: torch.Tensor,
                 cells: torch.Tensor, floor: float = 0.0, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """z (b, C, h, w), snapped, with its `fresh` cells ((b, h, w) bool: ground a scroll brought into view that no
    one has seen) drawn from the terrain prior, one cell after the other along the strip so each sees the one
    drawn before it; a drawn group's entry is the one nearest to the model's `estimate` of that cell (which
    carries its light). Only rows whose view (its map cells `cells` that are not new) has its commonest group
    on at least a share `floor` are drawn; the others keep z. noise: (b, h, w) unit Gaussian, each draw's
    uniform. step: (b, 2) each row's scroll. exclude: groups never drawn (the player's sprites)."""
    b, C, h, w = z.shape
    cb, groups = codebook.to(z.device).float(), groups.to(z.device)
    none = prior.groups
    rows = torch.nonzero(fresh.flatten(1).any(1))[:, 0]  # only rows with new ground are read
    zr, fresh, step = z[rows], fresh[rows], step[rows]
    idx = entry_index(zr.permute(0, 2, 3, 1).reshape(-1, C), cb).view(len(rows), h, w)
    g = groups[idx]
    near, hist = terrain_context(g, fresh, cells, step, none)
    fresh = fresh & (hist.max(1).values >= floor)[:, None, None]
    if not bool(fresh.any()):
        return z
    rb, r, c = torch.nonzero(fresh, as_tuple=True)
    along = step.flip(-1).abs()[rb]
    order = r * along[:, 0] + c * along[:, 1]  # position along the strip
    pr, pc = r - along[:, 0], c - along[:, 1]  # the cell before it along the strip: NEIGHBOURS[4], read as drawn
    before = (pr >= 0) & (pc >= 0) & cells[pr.clamp(min=0), pc.clamp(min=0)]
    near = near[rb, r, c]
    dist = torch.cdist(estimate[rows].permute(0, 2, 3, 1)[rb, r, c].float(), cb)
    for k in order.unique().tolist():  # ascending
        now = order == k
        nb = near[now]
        nb[:, 4] = torch.where(before[now], g[rb[now], pr[now].clamp(min=0), pc[now].clamp(min=0)], none)
        p = prior(nb, hist[rb[now]]).softmax(-1)
        if exclude is not None and len(exclude):
            p[:, exclude.to(p.device)] = 0.0
        drawn = draw_group(p, noise[rows[rb[now]], r[now], c[now]])
        idx[rb[now], r[now], c[now]] = dist[now].masked_fill(groups[None] != drawn[:, None], float("inf")).argmin(1)
        g[rb[now], r[now], c[now]] = drawn
    out = z.clone()
    out[rows] = codebook.to(z)[idx.reshape(-1)].reshape(len(rows), h, w, C).permute(0, 3, 1, 2)
    return out


def keep_off_map(estimate: torch.Tensor, z: torch.Tensor, codebook: torch.Tensor, groups: torch.Tensor,
                 fixed_only: torch.Tensor, cells: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
    """z (b, C, h, w), snapped, with every token on the map cells `cells` ((h, w) bool) whose group is one of
    `fixed_only` (groups real frames show only on the view's fixed cells: the player's own sprites) re-snapped
    to the entry of another group nearest to the model's estimate. Why: over thousands of steps the model
    sometimes draws a second player beside the first, which the map memory then keeps, and an explorer
    strikes at it as at a wall (docs/results.md). index: (b, h, w) the entry of each token, where the caller has
    it (snap's); found by entry_index otherwise."""
    b, C, h, w = z.shape
    if not len(fixed_only):
        return z
    cb, groups = codebook.to(z.device).float(), groups.to(z.device)
    tok = z.permute(0, 2, 3, 1)
    idx = entry_index(tok.reshape(-1, C), cb).view(b, h, w) if index is None else index
    bad = torch.isin(groups[idx], fixed_only.to(z.device)) & cells
    if not bool(bad.any()):
        return z
    rb, r, c = torch.nonzero(bad, as_tuple=True)
    d = torch.cdist(estimate.permute(0, 2, 3, 1)[rb, r, c].float(), cb)
    d = d.masked_fill(torch.isin(groups, fixed_only.to(z.device))[None], float("inf"))
    out = z.clone()
    out[rb, :, r, c] = codebook.to(z)[d.argmin(1)]
    return out


def terrain_examples(codec, codebook: torch.Tensor, groups: torch.Tensor, episodes: list, map_desc: dict,
                     n_actions: int):
    """(near (N, 5), hist (N, G), group (N,), fixed_only) of every cell that a scroll of the real episodes
    brought into the view: its neighbours and view as `terrain_context` gives them, and its real group (of the
    nearest entry). Whether a move scrolled is decided as the simulator's map memory decides it
    (`MapMemory.scrolled`). fixed_only: the groups the real frames show on the view's fixed cells (the
    player) and never on its other map cells (the player's own sprites)."""
    N, H, Y = [], [], []
    none = int(groups.max()) + 1
    on_fixed, on_map = torch.zeros(none), torch.zeros(none)
    for ep in episodes:
        idx, mem, step = real_scrolls(codec, codebook, ep, map_desc, n_actions)
        g = groups[idx]
        on_fixed += torch.bincount(g[:, mem.fixed].reshape(-1), minlength=none)[:none].float()
        on_map += torch.bincount(g[:, mem.cells].reshape(-1), minlength=none)[:none].float()
        new = mem.new_cells(step)
        keep = new.flatten(1).any(1)
        if not bool(keep.any()):
            continue
        near, hist = terrain_context(g[1:][keep], new[keep], mem.cells, step[keep], none)
        rb, r, c = torch.nonzero(new[keep], as_tuple=True)
        N.append(near[rb, r, c])
        H.append(hist[rb])
        Y.append(g[1:][keep][rb, r, c])
    if not N:
        raise ValueError("no move in these episodes scrolled the view: the terrain prior has nothing to learn from")
    return torch.cat(N), torch.cat(H), torch.cat(Y), torch.nonzero((on_fixed > 0) & (on_map == 0))[:, 0]


def fit_terrain_prior(near: torch.Tensor, hist: torch.Tensor, y: torch.Tensor, groups: int, steps: int = 3000,
                      hidden: int = 256, seed: int = 0, held_out: float = 0.1):
    """Train a TerrainPrior on examples from `terrain_examples` (the last share `held_out` held out). Returns
    (prior, info) with the held-out cross-entropy and accuracy beside guessing each cell as its inward
    neighbour (how nearest snap grows a field)."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(y), generator=g)
    near, hist, y = near[perm], hist[perm], y[perm]
    n_held = max(1, int(len(y) * held_out))
    n_train = len(y) - n_held
    prior = TerrainPrior(groups, hidden)
    fit_classifier(prior, (near, hist), y, n_train, steps, 1024, g)
    with torch.no_grad():
        logits = prior(near[n_train:], hist[n_train:])
        held_y = y[n_train:]
        info = {"groups": int(groups), "hidden": int(hidden), "steps": int(steps), "cells": int(n_train),
                "held_cells": int(n_held),
                "held_loss": round(float(nn.functional.cross_entropy(logits, held_y)), 4),
                "held_accuracy": round(float((logits.argmax(-1) == held_y).float().mean()), 4),
                "held_accuracy_inward": round(float((near[n_train:, 0] == held_y).float().mean()), 4)}
    return prior, info


def real_scrolls(codec, codebook: torch.Tensor, ep: dict, map_desc: dict, n_actions: int):
    """A real episode read as the map memory reads the model's frames: (idx (T, h, w) each frame's entries,
    a MapMemory of the game's map (its cells, fixed cells and geometry), step (T-1, 2) each step's scroll, decided
    by `MapMemory.scrolled` on the snapped latents)."""
    from worldsim.simulator import MapMemory

    cb = codebook.float()
    z = encode_frames(codec, ep["frames"])
    T, C, h, w = z.shape
    idx = nearest(z.permute(0, 2, 3, 1).reshape(-1, C).float(), cb)[1].view(T, h, w)
    mem = MapMemory(map_desc, n_actions, max(T - 1, 1), (C, h, w), "cpu")
    a = torch.as_tensor(np.asarray(ep["actions"]), dtype=torch.long).reshape(-1)[:T - 1]
    zs = cb[idx].permute(0, 3, 1, 2)
    step = torch.where(mem.scrolled(zs[1:], zs[:-1], a)[:, None], mem.move[a], 0)
    return idx, mem, step


def aligned_steps(codec, codebook: torch.Tensor, ep: dict, map_desc: dict, n_actions: int, changed: float = 10.0):
    """One real episode's steps aligned by world place, as the map memory aligns them (`real_scrolls`): (before,
    after, moved, both), each (T-1, h, w), per map cell of each step's new view: the entry its world place held in
    the frame before and holds now, whether the tile's pixels changed (over `changed` grey levels, mean absolute),
    and whether both frames show that place (only those count)."""
    idx, mem, step = real_scrolls(codec, codebook, ep, map_desc, n_actions)
    T, h, w = idx.shape
    src = mem.offset[None] + step[:, None, None]  # where each cell was in the last view
    inside = (src[..., 0] >= 0) & (src[..., 0] < h) & (src[..., 1] >= 0) & (src[..., 1] < w)
    sr, sc = src[..., 0].clamp(0, h - 1), src[..., 1].clamp(0, w - 1)
    both = inside & mem.cells[None] & mem.cells[sr, sc]
    p = ep["frames"].shape[1] // h  # the tile's size in pixels
    tiles = torch.as_tensor(np.asarray(ep["frames"])[:, :h * p, :w * p]).reshape(T, h, p, w, p, 3)
    tiles = tiles.transpose(2, 3).float()
    t = torch.arange(T - 1)[:, None, None].expand_as(sr)
    moved = (tiles[:-1][t, sr, sc] - tiles[1:]).abs().mean((-1, -2, -3)) > changed
    return idx[:-1][t, sr, sc], idx[1:], moved, both


def mobile_entries(codec, codebook: torch.Tensor, episodes: list, map_desc: dict, n_actions: int,
                   share: float = 0.2, min_seen: int = 20):
    """(entries (M,) long, info) of the codebook entries that stand for things that move: real tiles nearest to
    them change on more than `share` of steps at the same world place (`aligned_steps`), among entries seen at
    least `min_seen` times. Episodes: frames without light (the night's noise changes every lit tile).

    Why: the map memory keeps every cell by world place as ground, so a mob the model once drew stands there
    again whenever the view scrolls back, where the game's mobs walk away; in the light bundle's explorer rollouts
    cows drawn on sand piled up and walled the player in (docs/results.md, "The ground under the player"). Why by
    pixels, not by the entry or its group: the tile encoder reads a tile's neighbours, so the token of a tile that
    stays put moves between near-alike entries as its neighbours change (docs/group_persistence.py)."""
    K = len(codebook)
    seen, moved = torch.zeros(K), torch.zeros(K)
    for ep in episodes:
        if len(ep["frames"]) < 2:
            continue
        e, _, changed, both = aligned_steps(codec, codebook, ep, map_desc, n_actions)
        seen += torch.bincount(e[both], minlength=K)[:K].float()
        moved += torch.bincount(e[both & changed], minlength=K)[:K].float()
    rate = moved / seen.clamp(min=1)
    entries = torch.nonzero((seen >= min_seen) & (rate > share))[:, 0]
    info = {"entries": entries.tolist(), "share": float(share), "min_seen": int(min_seen),
            "tokens": int(seen.sum()), "token_share": round(float(seen[entries].sum() / seen.sum().clamp(min=1)), 4)}
    return entries, info


def head_examples(bundle, episodes: list, windows: int, seed: int = 0, batch: int = 128):
    """(features, one-step estimates, real tokens) of every token of the last frame of `windows` random windows
    of episodes, each a dict of "latents" (T, C, h, w) normalised and "actions" (the T-1 steps between them),
    laid out as the simulator samples: context frames lightly noised (the inference context noise), the
    target at the first sampling level (pure noise), every frame's action given."""
    from worldsim.data import index_actions, stack_actions

    dit, edm = bundle.dit, bundle.edm
    L = dit.config.context_frames + 1
    spans = [(e, s) for e, ep in enumerate(episodes) for s in range(1, len(ep["latents"]) - L + 1)]
    if not spans:
        raise ValueError(f"no episode has the {L + 1} frames a training window of the token head needs")
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(spans), generator=g)[:windows].tolist()
    level, top = edm.cfg.context_noise, edm.sampling_sigmas(1)[0]
    F, Z, Y = [], [], []
    with torch.no_grad():
        for i in range(0, len(pick), batch):
            rows = [spans[j] for j in pick[i:i + batch]]
            zz = torch.stack([episodes[e]["latents"][s:s + L] for e, s in rows]).float()
            acts = stack_actions([index_actions(episodes[e]["actions"], slice(s - 1, s - 1 + L)) for e, s in rows])
            acts = {k: torch.as_tensor(v) for k, v in acts.items()} if isinstance(acts, dict) else torch.as_tensor(acts)
            B = len(zz)
            sig = torch.full((B, L), level)
            sig[:, -1] = top
            x = zz + level * torch.randn(zz.shape, generator=g)
            x[:, -1] = top * torch.randn(zz[:, -1].shape, generator=g)
            inp, c_noise = edm.model_input(x, sig)
            ticks = None
            if dit.config.ticks:  # a model with ticks reads each step's: the real ones where the data has counters
                ticks = torch.stack([torch.as_tensor(episodes[e]["ticks"][s - 1:s - 1 + L]) if "ticks" in
                                     episodes[e] else torch.zeros(L, dit.config.ticks) for e, s in rows])
            out = dit(inp, c_noise, acts, torch.ones(B, L, dtype=torch.bool), ticks=ticks)
            est = edm.denoised(x[:, -1], sig[:, -1], out.out[:, -1])
            C = zz.shape[2]
            F.append(cell_features(out.features[:, -1], *zz.shape[-2:]))
            Z.append(est.permute(0, 2, 3, 1).reshape(-1, C))
            Y.append(zz[:, -1].permute(0, 2, 3, 1).reshape(-1, C))
    return torch.cat(F), torch.cat(Z), torch.cat(Y), len(pick)


def require_plain(residual: bool, warp_action: str | None) -> None:
    """The token head reads a plain model's one-step sample: a clear error for a residual or warping one."""
    if residual or warp_action is not None:
        raise ValueError("the token head reads a plain model's one-step sample; this world model is residual "
                         "(diffusion.residual) or warps (dit.warp_action)")


def fit_classifier(model: nn.Module, inputs: tuple, y: torch.Tensor, n_train: int, steps: int, batch: int,
                   g: torch.Generator, lr: float = 2e-3, loss_fn=nn.functional.cross_entropy) -> torch.Tensor:
    """Train `model(*inputs) -> logits` with loss_fn (cross-entropy) against y on the first n_train rows: AdamW,
    `steps` batches of `batch` rows drawn with g, linear warm-up then linear decay to zero; leaves it in eval
    mode. Returns the last batch's loss."""
    opt = torch.optim.AdamW(model.parameters(), lr, weight_decay=0.01)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min((i + 1) / warm, (steps - i) / max(1, steps - warm)))
    for _ in range(steps):
        idx = torch.randint(n_train, (batch,), generator=g)
        loss = loss_fn(model(*(x[idx] for x in inputs)), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    return loss


def fit_token_head(bundle, codebook: torch.Tensor, episodes: list, groups: int = 128, windows: int = 10000,
                   steps: int = 1500, hidden: int = 256, seed: int = 0, held_out: float = 0.05):
    """Group the codebook (k-means of its entries) and train a TokenHead on `windows` windows of episodes
    (cross-entropy against the group of each real token's nearest entry). Returns (head, groups (K,), info);
    info holds the head's accuracy on held-out windows beside the group of the one-step estimate's nearest
    entry (what plain snapping picks)."""
    dit = bundle.dit
    require_plain(bundle.edm.cfg.residual, dit.config.warp_action)
    groups = min(groups, len(codebook))  # a group per entry at most (a small codebook)
    centres = fit_codebook(codebook, groups, 20, seed)
    group_of = nearest(codebook.float(), centres)[1]
    feats, est, real, n_windows = head_examples(bundle, episodes, windows, seed)
    y = group_of[nearest(real, codebook.float())[1]]
    if n_windows < 2:
        raise ValueError("the token head needs at least 2 training windows (one is held out)")
    n_held = len(y) // n_windows * max(1, round(n_windows * held_out))  # the last windows' tokens
    g = torch.Generator().manual_seed(seed)
    head = TokenHead(dit.config.dim, codebook.shape[1], groups, hidden)
    n_train = len(y) - n_held
    loss = fit_classifier(head, (feats, est), y, n_train, steps, 4096, g)
    with torch.no_grad():
        hf, he, hy = feats[n_train:], est[n_train:], y[n_train:]
        pred = head(hf, he).argmax(-1)
        plain = group_of[nearest(he.float(), codebook.float())[1]]
    info = {"groups": int(groups), "hidden": int(hidden), "windows": int(windows), "steps": int(steps),
            "held_tokens": int(n_held), "held_accuracy": round(float((pred == hy).float().mean()), 4),
            "held_accuracy_nearest": round(float((plain == hy).float().mean()), 4),
            "last_loss": round(float(loss.detach()), 4)}
    return head, group_of, info


def encode_frames(codec, frames: np.ndarray, batch: int = 256) -> torch.Tensor:
    """Normalised latents (N, C, h, w) of uint8 frames (N, H, W, 3) under a bundle's codec, `batch` at a time."""
    return torch.cat([codec.encode(torch.as_tensor(frames[i:i + batch])) for i in range(0, len(frames), batch)])


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


def with_codebook(path: Path, codebook: torch.Tensor, info: dict, snap_default: bool | str = True,
                  head: TokenHead | None = None, groups: torch.Tensor | None = None,
                  terrain: TerrainPrior | None = None, decode: dict | None = None) -> None:
    """Rewrite bundle `path` atomically with `codebook.safetensors` (and the token head and the terrain prior
    with their groups, when given; info["head"] and info["terrain"] describe them), `decode.snap` and any other
    `decode` settings in its bundle.json."""
    path = Path(path)
    files = {p.name: p.read_bytes() for p in path.iterdir() if p.is_file()}
    meta = json.loads(files["bundle.json"])
    require_tiles(meta["autoencoder"], str(path))
    C = meta["world_model"]["latent_channels"]
    if codebook.ndim != 2 or codebook.shape[1] != C:
        raise ValueError(f"codebook of shape {tuple(codebook.shape)} does not fit latents of {C} channels")
    if (head is None) != ("head" not in info) or (terrain is None) != ("terrain" not in info):
        raise ValueError("a token head or terrain prior comes with its description (info['head'], info['terrain'])")
    if (head is not None or terrain is not None) != (groups is not None):
        raise ValueError("a token head or terrain prior comes with the codebook's groups")
    if snap_default == "sample" and head is None:
        raise ValueError("snap=sample as the bundle's default needs the token head (head=true)")
    dec = meta.setdefault("decode", {})
    dec["snap"] = snap_default if snap_default == "sample" else bool(snap_default)
    dec.update(decode or {})
    if dec.get("new_ground", "nearest") != "nearest" and terrain is None:
        raise ValueError("new_ground=terrain as the bundle's default needs the terrain prior (terrain=true)")
    meta["codebook"] = info
    tensors = {"codebook": codebook.float()}
    if groups is not None:
        tensors["groups"] = groups.long()
    if head is not None:
        tensors.update({f"head.{k}": v.float() for k, v in head.state_dict().items()})
    if terrain is not None:
        tensors.update({f"terrain.{k}": v.float() for k, v in terrain.state_dict().items()})
    files["bundle.json"] = json.dumps(meta, indent=1).encode()
    files["codebook.safetensors"] = tensors_bytes(tensors)
    write_dir_atomic(path, files)


def extend_codebook(codebook: torch.Tensor, groups: torch.Tensor | None, tokens: torch.Tensor, entries: int,
                    distance: float, radius: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
    """Add at most `entries` entries for the tokens (N, C) farther than `distance` from every entry of `codebook`
    (K, C): as many as a cover of those tokens at `radius` takes (entries put on the farthest token until each
    lies within `radius` of one, so a few new tiles get a few entries, not `entries`), placed by k-means of them
    (`fit_codebook`) and appended. Each new entry joins its nearest old entry's group, so what works on groups
    (the token head, the terrain prior) keeps its shape. Why not a refit: a refit renumbers every entry and its
    groups, and the token head, terrain prior and mobile entries fitted on them would all be fitted again; a
    tile the collections newly show (Crafter's sleeping sprite, once canvases left a sleeper's grey to the env)
    needs only its own entries."""
    dist, _ = nearest(tokens.float(), codebook)
    far, gap = tokens[dist > distance].float(), dist[dist > distance]
    k = 0
    while k < entries and len(far) and gap.max() > radius:
        gap = torch.minimum(gap, (far - far[gap.argmax()]).norm(dim=1))
        k += 1
    out = torch.cat([codebook, fit_codebook(far, k, seed=seed)]) if k else codebook
    if k and groups is not None:
        groups = torch.cat([groups, groups[nearest(out[len(codebook):], codebook)[1]]])
    return out, groups, {"tokens": int(len(tokens)), "far_tokens": int(len(far)), "distance": float(distance),
                         "radius": float(radius), "added": k,
                         "mean_distance_after": round(float(nearest(far, out)[0].mean()), 4) if k else None}


def episode_latents(codec, episodes: list, windows: int, context: int, seed: int = 0) -> list:
    """Encode random training episodes until they hold `windows` windows for the token head: a list of dicts of
    "latents" and "actions", and "ticks" (data.episode_ticks) where counters are recorded (encoding every frame of a large collection would take long for no gain)."""
    order = np.random.default_rng(seed).permutation(len(episodes))
    out, have = [], 0
    for i in order:
        ep = episodes[i]
        out.append({"latents": encode_frames(codec, ep["frames"]), "actions": ep["actions"],
                    **({"ticks": episode_ticks(ep)} if "counters" in ep else {})})
        have += max(0, len(ep["frames"]) - context - 1)
        if have >= windows:
            break
    return out


def codebook_job(cfg):
    """`worldsim codebook bundle=B data=D`: fit B's codebook on frames of D's training split, snap on; with
    head=true also train the token head (snap=sample); refit=false keeps B's codebook (and its token head and
    terrain prior, unless asked to train them again); terrain=true fits the terrain prior (new_ground=terrain);
    mobile=true finds the entries of things that move, which the map memory then does not keep."""
    from worldsim.checkpoint import bundle_and_training_data

    path, b, eps = bundle_and_training_data(cfg.bundle, cfg.data)
    require_tiles(b.meta["autoencoder"], str(path))
    torch.manual_seed(cfg.seed)
    head = groups = terrain = None
    if cfg.get("refit", True) or b.codebook is None:
        frames = np.concatenate([ep["frames"] for ep in eps])
        rng = np.random.default_rng(cfg.seed)
        pick = np.sort(rng.choice(len(frames), min(cfg.frames, len(frames)), replace=False))
        tokens = frame_tokens(b.codec, frames[pick])
        codebook = fit_codebook(tokens, cfg.entries, cfg.iters, cfg.seed)
        dist, _ = nearest(tokens, codebook)
        info = {"entries": int(cfg.entries), "frames": int(len(pick)), "tokens": int(len(tokens)),
                "data": str(cfg.data), "mean_distance": round(float(dist.mean()), 4)}
    else:  # the bundle's codebook, with what it carries
        codebook = b.codebook.float().cpu()
        info = dict(b.meta.get("codebook") or {})
        head, terrain = b.token_head, b.terrain_prior
        groups = None if b.codebook_groups is None else b.codebook_groups.cpu()
    extend = int(cfg.get("extend") or 0)
    if extend:
        if cfg.get("refit", True):
            raise ValueError("extend=N adds entries to the bundle's codebook: use it with refit=false")
        frames = np.concatenate([ep["frames"] for ep in eps])
        codebook, groups, info["extended"] = extend_codebook(
            codebook, groups, frame_tokens(b.codec, frames), extend, float(cfg.get("extend_distance", 1.0)),
            float(cfg.get("extend_radius", 0.25)), cfg.seed)
        info["extended"]["data"] = str(cfg.data)
        info["entries"] = len(codebook)
        e = info["extended"]
        print(f"codebook extended by {e['added']} entries for {e['far_tokens']} of {e['tokens']} tokens farther "
              f"than {e['distance']} from every entry" + (f" (their mean distance to an entry now "
                                                          f"{e['mean_distance_after']})" if e["added"] else ""))
    if cfg.get("head", False):
        lat = episode_latents(b.codec, eps, cfg.head_windows, b.dit.config.context_frames, cfg.seed)
        head, new_groups, info["head"] = fit_token_head(b, codebook, lat, cfg.groups, cfg.head_windows,
                                                        cfg.head_steps, cfg.head_hidden, cfg.seed)
        info["head"].update(certain=float(cfg.certain), data=str(cfg.data))
        print(f"token head: {info['head']['groups']} groups; held-out accuracy {info['head']['held_accuracy']:.3f} "
              f"(nearest entry of the one-step estimate: {info['head']['held_accuracy_nearest']:.3f})")
        if groups is not None and not torch.equal(groups, new_groups) and not cfg.get("terrain", False):
            terrain = None  # a prior over groups that are no longer these
            info.pop("terrain", None)
            print("the terrain prior was fitted on other groups and is left out: refit it with terrain=true")
        groups = new_groups
    if cfg.get("terrain", False):
        if "map" not in b.env or b.dit.config.action_spec.get("type") != "discrete":
            raise ValueError(f"{path}: the terrain prior learns the ground a scroll brings into view; it needs the "
                             "game's map description (env.map in bundle.json, written by `worldsim collect` for "
                             "Crafter) and discrete actions")
        if groups is None:  # no token head: the same grouping of the codebook the head would use
            n = min(cfg.groups, len(codebook))
            groups = nearest(codebook, fit_codebook(codebook, n, 20, cfg.seed))[1]
        near, hist, y, fixed_only = terrain_examples(b.codec, codebook, groups, eps, b.env["map"],
                                                     b.dit.config.action_spec["n"])
        terrain, info["terrain"] = fit_terrain_prior(near, hist, y, int(groups.max()) + 1, cfg.terrain_steps,
                                                     cfg.terrain_hidden, cfg.seed)
        info["terrain"].update(data=str(cfg.data), fixed_only=fixed_only.tolist())
        t = info["terrain"]
        print(f"terrain prior: {t['cells']} new cells of real scrolls; held-out accuracy {t['held_accuracy']:.3f} "
              f"(the inward neighbour's group: {t['held_accuracy_inward']:.3f}), cross-entropy {t['held_loss']:.3f}")
    if cfg.get("mobile", False):  # entries of things that move: the map memory does not keep them as ground
        if "map" not in b.env:
            raise ValueError(f"{path}: mobile=true reads which tiles move from the real scrolls; it needs the game's "
                             "map description (env.map in bundle.json, written by `worldsim collect` for Crafter)")
        _, info["mobile"] = mobile_entries(b.codec, codebook, eps, b.env["map"], b.dit.config.action_spec["n"],
                                           cfg.get("mobile_share", 0.2))
        info["mobile"]["data"] = str(cfg.data)
        m = info["mobile"]
        print(f"mobile entries: {len(m['entries'])} of {len(codebook)}, {m['token_share']:.3f} of "
              f"{m['tokens']} real tokens; the map memory keeps none of them")
    decode = {k: cfg[k] for k in ("new_ground", "terrain_floor") if cfg.get(k) is not None}
    if terrain is None and "new_ground" not in decode and (b.meta.get("decode") or {}).get("new_ground") == "terrain":
        decode["new_ground"] = "nearest"  # its prior was fitted on groups of the codebook this job replaced
        print("the bundle drew new ground from its terrain prior, which this codebook leaves out: new_ground=nearest")
    if "terrain_floor" in decode:
        decode["terrain_floor"] = float(decode["terrain_floor"])
    snap_default = cfg.snap if isinstance(cfg.snap, str) else bool(cfg.snap)
    with_codebook(path, codebook, info, snap_default, head, groups if head is not None or terrain is not None
                  else None, terrain, decode)
    dist = f" (mean distance of a training token to its entry {info['mean_distance']:.3f})" if "mean_distance" in info else ""
    print(f"codebook of {len(codebook)} entries written to {path}{dist}; snap={snap_default}")
    return info
