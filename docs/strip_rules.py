"""Experiment: draw rules confined to the strip of ground a Crafter move reveals, run through `worldsim eval`
(docs/results.md, Crafter: draw rules). The strip is hand-coded here (the view's edge column or row on the side of
a move; the view is 9 x 7 tiles above the inventory), which is why these rules stay experiments.

    python docs/strip_rules.py strip:1 eval snap=sample windows=64 horizons=[1,8,32] following=false \\
        stability_steps=2000 stability_block=500
    python docs/strip_rules.py seed:1 eval ...

strip:T  on move steps, the strip's tokens under `certain` are drawn from the head (its logits / T); every
         other token snaps to its nearest entry
seed:Q   on move steps, with probability Q, the strip's least certain token under `certain` is drawn from the
         head among the groups other than its likeliest (a seed of new ground that the model's own
         continuation can grow from); every other token snaps to its nearest entry
floor:F  seed:1, but only on steps whose view (the 9 x 7 tiles above the inventory, nearest entries) has at
         least a share F of its tiles in one group: a seed only where the view has gone uniform
any:F    floor:F without the strip or the moves: on any step whose frame (all tokens) has a share F in one
         group, the least certain token under `certain`, wherever it is, is drawn among its other groups
"""
import sys

import torch

from worldsim import codebook as cbm
from worldsim import simulator
from worldsim.cli import main

rule, value = sys.argv[1].split(":")
value = float(value)
if rule not in ("strip", "seed", "floor", "any"):
    raise SystemExit(f"unknown rule {rule!r}: strip:T, seed:Q or floor:F")
EDGE = {1: (slice(0, 7), 0), 2: (slice(0, 7), 8), 3: (0, slice(0, 9)), 4: (6, slice(0, 9))}  # left right up down
step_actions = {}
plain_step = simulator.WorldSimulator._step


def _step(self, actions, noise, context_noise, decode=True):
    step_actions["a"] = simulator.actions_to_tensor(self.spec, actions, "cpu").reshape(-1).tolist()
    return plain_step(self, actions, noise, context_noise, decode)


@torch.no_grad()
def sample_snap(z, features, codebook, groups, head, noise, certain):
    B, C, h, w = z.shape
    tok = z.permute(0, 2, 3, 1).reshape(-1, C).float()
    logits = head(cbm.cell_features(features, h, w), tok).reshape(B, h * w, -1)
    p = logits.softmax(-1)
    d = torch.cdist(tok, codebook.float()).reshape(B, h * w, -1)
    idx = d.argmin(-1)
    u = 0.5 * (1 + torch.erf(noise.reshape(B, h * w).float() / 2 ** 0.5))
    for i, a in enumerate(step_actions["a"]):
        if rule == "any":
            if groups.to(idx.device)[idx[i]].bincount().max() < value * h * w:
                continue
            unsure = p[i].max(-1).values < certain
            if not unsure.any():
                continue
            j = int(torch.where(unsure, p[i].max(-1).values, 2.0).argmin())
            q = p[i, j].clone()
            q[q.argmax()] = 0
            g = int(((q / q.sum()).cumsum(0) < u[i, j]).sum().clamp(max=len(q) - 1))
            idx[i, j] = d[i, j].masked_fill(groups.to(d.device) != g, float("inf")).argmin()
            continue
        if int(a) not in EDGE:
            continue
        strip = torch.zeros(h, w, dtype=torch.bool)
        strip[EDGE[int(a)]] = True
        unsure = strip.reshape(-1) & (p[i].max(-1).values < certain)
        if rule == "strip":
            draw = {int(j): (logits[i, j] / value).softmax(-1) for j in torch.nonzero(unsure)[:, 0]}
        else:
            if not unsure.any():
                continue
            if rule == "seed" and float(u[i, 0]) >= value:  # the frame's coin: its first token's uniform
                continue
            if rule == "floor":
                view = groups.to(idx.device)[idx[i].reshape(h, w)[:7]].reshape(-1)
                if view.bincount().max() < value * len(view):
                    continue
            j = int(torch.where(unsure, p[i].max(-1).values, 2.0).argmin())
            q = p[i, j].clone()
            q[q.argmax()] = 0
            draw = {j: q / q.sum()}
        for j, q in draw.items():
            g = int((q.cumsum(0) < u[i, j]).sum().clamp(max=len(q) - 1))
            idx[i, j] = d[i, j].masked_fill(groups.to(d.device) != g, float("inf")).argmin()
    return codebook.to(z)[idx.reshape(-1)].reshape(B, h, w, C).permute(0, 3, 1, 2).contiguous()


simulator.WorldSimulator._step = _step
simulator.sample_snap = sample_snap
main(sys.argv[2:])
