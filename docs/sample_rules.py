"""Experiment: other draw rules for snap=sample, run through `worldsim eval` (docs/results.md, Crafter: what was tried).

    python docs/sample_rules.py copula:1 eval cache_dir=data/crafter-heldout snap=sample windows=64 \
        horizons=[1,8,32] following=false stability_steps=2000 stability_block=500
    python docs/sample_rules.py nucleus:0.9 eval ...

copula:RHO  groups sorted by probability, the per-token uniforms correlated across the frame (Gaussian copula
            with correlation RHO), so a frame's unsure tokens take their second choice together
nucleus:P   each token draws only among its likeliest groups whose probabilities reach P (renormalised)
common:P    only tokens whose likeliest group is the commonest group of real frames (what an unsure average
            snaps to: grass) are drawn, and those only where that group has under P
far:D       only tokens whose one-step estimate lies further than D from its nearest entry (a blend of distinct
            tiles, not a choice among near-alike entries) are drawn, where the head is unsure
step:P      each frame draws its unsure tokens (the shipped rule) with probability P, else every token snaps to
            its nearest entry (the frame's uniform from the mean of its tokens' noise)
"""
import sys

import torch

from worldsim import codebook as cbm
from worldsim import simulator
from worldsim.cli import main

rule, value = sys.argv[1].split(":")
value = float(value)


@torch.no_grad()
def sample_snap(z, features, codebook, groups, head, noise, certain):
    B, C, h, w = z.shape
    tok = z.permute(0, 2, 3, 1).reshape(-1, C).float()
    p = head(cbm.cell_features(features, h, w), tok).softmax(-1)
    ps, order = p.sort(-1, descending=True)
    n = noise.reshape(B, -1).float()
    if rule == "copula":
        frame = n.sum(1, keepdim=True) / n.shape[1] ** 0.5  # one standard normal per frame
        n = value * frame + (1 - value ** 2) ** 0.5 * n
        top = p.shape[1]
    elif rule == "common":
        top = p.shape[1]
    elif rule == "far":
        top = p.shape[1]
    elif rule == "step":  # whole frames: drawn (independent draws, as shipped) or nearest
        top = p.shape[1]
    elif rule == "nucleus":
        keep = (ps.cumsum(-1) - ps) < value  # the groups needed to reach P (the likeliest always)
        ps = ps * keep
        ps = ps / ps.sum(-1, keepdim=True)
        top = keep.sum(-1)
    else:
        raise SystemExit(f"unknown rule {rule!r}: copula:RHO or nucleus:P")
    u = 0.5 * (1 + torch.erf(n.reshape(-1, 1) / 2 ** 0.5))
    k = torch.minimum((ps.cumsum(-1) < u).sum(-1), torch.as_tensor(top) - 1)  # inverse CDF, within the kept groups
    drawn = order.gather(1, k[:, None])[:, 0]
    d = torch.cdist(tok, codebook.float())
    in_group = d.masked_fill(groups[None] != drawn[:, None], float("inf")).argmin(1)
    sure = p.max(-1).values > certain
    if rule == "step":
        frame = n.sum(1) / n.shape[1] ** 0.5  # one standard normal per frame
        nearest = 0.5 * (1 + torch.erf(frame / 2 ** 0.5)) >= value  # (B,) this frame is not drawn
        sure = sure | nearest.repeat_interleave(n.shape[1])
    if rule == "far":
        sure = sure | (d.min(1).values <= value)
    if rule == "common":
        sure = (p.argmax(-1) != COMMON) | (p.max(-1).values > value)
    idx = torch.where(sure, d.argmin(1), in_group)
    return codebook.to(z)[idx].reshape(B, h, w, C).permute(0, 3, 1, 2).contiguous()


if rule == "common":  # the group most real tokens fall in (the shipped bundle's start frames, nearest entries)
    from worldsim import DEFAULT_CRAFTER_BUNDLE
    from worldsim.simulator import load_bundle
    b = load_bundle(str(DEFAULT_CRAFTER_BUNDLE))
    z = b.codec.encode(b.start_frames.reshape(-1, *b.start_frames.shape[-3:]))
    tok = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    COMMON = int(b.codebook_groups[cbm.nearest(tok, b.codebook)[1]].mode().values)
    print(f"commonest group {COMMON}")
simulator.sample_snap = sample_snap
main(sys.argv[2:])
