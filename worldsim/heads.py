"""`worldsim heads bundle=B data=D`: refit a bundle's reward and termination heads on its frozen world model.

Why: the heads train together with the world model, on frames at every noise level up to
`diffusion.context_noise_max`, where a death is one window in about 200 and the termination loss weighs 0.1.
The shipped Crafter model's termination head never learned it: on every held-out transition it gave each of
the 24 deaths of data/crafter_detour's test split and data/crafter-heldout a probability under 0.01, and the
learned env never ended an episode (README, Results). At inference the heads read the commit pass of the frame
the model made; this refit trains them on exactly that input (`commit_features`), the world model left as it
was (its samples do not change), from the bundle's heads' weights, with the termination loss at full weight.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from worldsim.checkpoint import tensors_bytes, write_dir_atomic
from worldsim.data import episode_clock, index_actions, stack_actions


def transitions(episodes: list, W: int) -> list:
    """(episode, start) of every transition that has W real frames before it: frames start .. start + W - 1
    are the context and action start + W - 1 enters the next one."""
    return [(e, s) for e, ep in enumerate(episodes) for s in range(len(ep["frames"]) - W)]


@torch.no_grad()
def step_transitions(sim, episodes: list, items: list, rng: np.random.Generator, decode: bool = False):
    """Each transition of `items` stepped as the env steps it, sim.B at a time: the simulator starts from its W
    real frames and takes the real action once (decoded to frames only with `decode`). Yields (StepResult, how
    many of its rows are real: the last batch is padded with copies of its last transition)."""
    W, B, shape = sim.dit.config.context_frames, sim.B, sim.latent_shape
    for i in range(0, len(items), B):
        chunk = items[i:i + B]
        k = len(chunk)
        chunk = chunk + [chunk[-1]] * (B - k)
        ctx = np.stack([episodes[e]["frames"][s:s + W] for e, s in chunk])
        ctx_a = stack_actions([index_actions(episodes[e]["actions"], slice(s, s + W - 1)) for e, s in chunk])
        act = stack_actions([index_actions(episodes[e]["actions"], s + W - 1) for e, s in chunk])
        sim.reset(range(B), ctx, ctx_a, rng.standard_normal((B, W, *shape)), [episode_clock(episodes[e], s + W - 1) for e, s in chunk])
        yield sim.step(act, rng.standard_normal((B, *shape)), rng.standard_normal((B, *shape)), decode=decode), k


def transition_labels(episodes: list, items: list, W: int):
    """The real reward and termination of each transition of `items`, as tensors (N,)."""
    return (torch.tensor([float(episodes[e]["rewards"][s + W - 1]) for e, s in items]),
            torch.tensor([bool(episodes[e]["terminated"][s + W - 1]) for e, s in items]))


@torch.no_grad()
def commit_features(bundle, episodes: list, batch: int = 64, seed: int = 0, max_transitions: int | None = None):
    """Every transition of the episodes that has W real frames before it, stepped as the env steps it
    (`step_transitions`); the heads' input is taken from the commit pass, which reads the frame the model made
    (not the real one). Returns (features (N, dim), real rewards (N,), real terminated (N,)).
    Why the model's frame: heads refit on the real entered frame (a first version of this job) found 21 of 24
    held-out ends there, but stepped through the model 1 of 16, with 30 false ends in 2,832 steps (the model
    seldom draws the vanishing heart), so the heads learn from what they will read.
    max_transitions: at most that many, a sample drawn with `seed` (each costs a reset and a step)."""
    from worldsim.simulator import WorldSimulator

    W = bundle.dit.config.context_frames
    items = transitions(episodes, W)
    if not items:
        raise ValueError(f"no episode is longer than the world model's context ({W} frames) plus one step")
    if max_transitions is not None and len(items) > max_transitions:
        keep = np.sort(np.random.default_rng(seed).choice(len(items), int(max_transitions), replace=False))
        items = [items[i] for i in keep]
    sim = WorldSimulator(bundle, min(batch, len(items)))
    feats = [res.head_input[:k].cpu() for res, k in step_transitions(sim, episodes, items, np.random.default_rng(seed))]
    return (torch.cat(feats), *transition_labels(episodes, items, W))


def refit_heads(bundle, feats, rewards, terminated, steps: int = 3000, lr: float = 1e-3, seed: int = 0,
                achievement_weight: float = 2.0, end_weight: float = 1.0, keep_termination: bool = False) -> dict:
    """Train the bundle's world model's head_norm and heads_mlp (in place) on commit-pass features: reward MSE
    with achievements (|reward| > 0.5) weighted `achievement_weight`, plus termination BCE with ends weighted
    `end_weight`, both at full weight. Why ends 1: the env draws each step's end from the probability, so it
    must be calibrated (a weight w inflates the odds w times). Achievements 2: on held-out episodes twice the
    achievements the shipped heads found at about their precision, where 1 found fewer and 3 was less precise
    (README, docs/heads_weights.py). keep_termination: the termination output learns the bundle's own
    probabilities on these features instead of the real ends, so a reward refit (on an agent's exploits, say)
    keeps the termination head as it was where the two share layers. Returns the loss at the end."""
    dit = bundle.dit
    rewards = rewards / float(bundle.env.get("reward_scale", 1.0))  # the head learns rewards / the bundle's scale
    if keep_termination:
        with torch.no_grad():
            kept = torch.sigmoid(dit.heads_mlp(dit.head_norm(feats))[:, 1])
    params = list(dit.head_norm.parameters()) + list(dit.heads_mlp.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr, weight_decay=0.01)
    g = torch.Generator().manual_seed(seed)
    pos = torch.tensor(float(end_weight))
    with torch.enable_grad():
        for _ in range(steps):
            idx = torch.randint(len(feats), (512,), generator=g)
            o = dit.heads_mlp(dit.head_norm(feats[idx]))
            w = 1 + (achievement_weight - 1) * (rewards[idx].abs() > 0.5).float()
            ends = F.binary_cross_entropy_with_logits(o[:, 1], kept[idx]) if keep_termination else \
                F.binary_cross_entropy_with_logits(o[:, 1], terminated[idx].float(), pos_weight=pos)
            loss = (F.mse_loss(o[:, 0], rewards[idx], reduction="none") * w).mean() + ends
            opt.zero_grad()
            loss.backward()
            opt.step()
    for p in params:
        p.requires_grad_(False)
    return {"steps": int(steps), "lr": float(lr), "achievement_weight": float(achievement_weight),
            "end_weight": float(end_weight), "keep_termination": bool(keep_termination),
            "last_loss": round(float(loss.detach()), 4)}


def calibrate_termination(bundle, feats, terminated) -> dict:
    """Platt scaling of the termination head (in place): fit a scale a > 0 and a shift b so that
    sigmoid(a * logit + b) is calibrated on these features (BCE, L-BFGS on two numbers), then fold them into
    heads_mlp's last layer, so the bundle's format and the env do not change. Why: the refit heads rank ends
    well on held-out episodes (AUROC 0.97-0.98) but were over-confident there, 66 ends expected against 40 on
    each refit test split and 2.2x on the sixth held-out collection, and the env draws each step's end from
    this probability. A monotone map keeps the ranking. Returns a, b and the expected ends before and after."""
    last = bundle.dit.heads_mlp[-1]
    with torch.no_grad():
        z = bundle.dit.heads_mlp(bundle.dit.head_norm(feats))[:, 1].double()
    y = terminated.double()
    if not 0 < int(y.sum()) < len(y):
        raise ValueError(f"calibrating the termination head needs both ends and other steps; got {int(y.sum())} "
                         f"ends in {len(y)} transitions")
    ab = torch.zeros(2, dtype=torch.float64, requires_grad=True)  # log a, b: starts at the identity
    opt = torch.optim.LBFGS([ab], lr=1.0, max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(ab[0].exp() * z + ab[1], y)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    a, b = float(ab[0].detach().exp()), float(ab[1].detach())
    with torch.no_grad():
        last.weight[1] *= a
        last.bias[1] = a * last.bias[1] + b
    return {"scale": a, "shift": b, "transitions": len(y), "ends": int(y.sum()),
            "expected_ends_before": float(torch.sigmoid(z).sum()),
            "expected_ends_after": float(torch.sigmoid(a * z + b).sum())}


def head_counts(bundle, feats, rewards, terminated) -> dict:
    """The heads on features: achievements (reward > 0.5) predicted and right, and the termination probability
    scored as the env draws ends from it (`worldsim.evaluate.end_scores`)."""
    from worldsim.evaluate import end_scores

    with torch.no_grad():
        o = bundle.dit.heads_mlp(bundle.dit.head_norm(feats))
    p, t = o[:, 0] * float(bundle.env.get("reward_scale", 1.0)) > 0.5, rewards > 0.5
    return {"achievements": int(t.sum()), "reward_predicted": int(p.sum()), "reward_right": int((p & t).sum()),
            "termination": end_scores(torch.sigmoid(o[:, 1]).numpy(), terminated.numpy())}


def heads_job(cfg):
    """`worldsim heads bundle=B data=D` (or `data=[D1,D2]`): refit B's heads on the train splits, report them on
    each test split before and after, and rewrite B atomically (only the heads' weights change). With
    `calibrate=true` the termination head is then Platt-scaled on the test splits together
    (`calibrate_termination`); `steps=0 calibrate=true` calibrates a bundle's heads without refitting them."""
    from worldsim.checkpoint import bundle_and_training_data, data_dirs
    from worldsim.data import load_episodes

    steps, calibrate = int(cfg.steps), bool(cfg.get("calibrate", False))
    if steps < 0 or (steps == 0 and not calibrate):
        raise ValueError(f"heads: steps must be positive, or 0 with calibrate=true (calibrate only); got {steps}")
    device = str(cfg.get("device", "cpu"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    batch = int(cfg.get("batch_size", 64))
    cap = cfg.get("max_transitions")
    if cap is not None and (isinstance(cap, bool) or int(cap) < 1):
        raise ValueError(f"heads: max_transitions must be a whole number >= 1 (per collection and split) or null, got {cap!r}")
    cap = None if cap is None else int(cap)
    path, b, train = bundle_and_training_data(cfg.bundle, cfg.data, device)
    torch.manual_seed(cfg.seed)
    tests = {str(d): commit_features(b, eps, batch=batch, seed=cfg.seed + 1 + i, max_transitions=cap)
             for i, d in enumerate(data_dirs(cfg.data)) if (eps := load_episodes(d, split="test"))}
    if calibrate and not tests:
        raise ValueError(f"calibrate=true fits on the test splits, and none of {[str(d) for d in data_dirs(cfg.data)]} has one")
    tr = None
    if steps > 0 and cap is None:
        tr = commit_features(b, train, batch=batch, seed=cfg.seed)
    elif steps > 0:  # capped per collection, so a small new one (an agent's exploits) is not drowned by a large one
        parts = [commit_features(b, load_episodes(d, split="train"), batch=batch, seed=cfg.seed + 100 + i,
                                 max_transitions=cap) for i, d in enumerate(data_dirs(cfg.data))]
        tr = tuple(torch.cat(x) for x in zip(*parts))
    b.dit.cpu()  # the features are on the host; the heads are small (on a GPU only the features are worth it)
    before = {d: head_counts(b, *te) for d, te in tests.items()}
    meta_key, info = "heads_refit", {}
    if steps > 0:
        info = refit_heads(b, *tr, steps=steps, lr=float(cfg.lr), seed=int(cfg.seed),
                           achievement_weight=float(cfg.achievement_weight), end_weight=float(cfg.end_weight),
                           keep_termination=bool(cfg.get("keep_termination", False)))
        info.update(transitions=len(tr[0]), ends=int(tr[2].sum()))
    else:
        meta_key = "heads_calibrated"
    info["data"] = [str(d) for d in data_dirs(cfg.data)]
    if calibrate:
        refit = {d: head_counts(b, *te) for d, te in tests.items()} if steps > 0 else None
        info["calibration"] = calibrate_termination(b, torch.cat([te[0] for te in tests.values()]),
                                                    torch.cat([te[2] for te in tests.values()]))
        print(f"termination calibrated on the test splits: {info['calibration']}")
    for d, te in tests.items():
        info.setdefault("test", {})[d] = {"transitions": len(te[0]), "before": before[d], "after": head_counts(b, *te)}
        if calibrate and refit:
            info["test"][d]["refit"] = refit[d]  # after the refit, before the calibration
        print(f"{d} test split ({len(te[0])} transitions):\n  before {before[d]}\n  after  {info['test'][d]['after']}")
    files = {p.name: p.read_bytes() for p in path.iterdir() if p.is_file()}
    meta = json.loads(files["bundle.json"])
    trained = meta.setdefault("trained", {})
    if meta_key in trained:  # a bundle refit again keeps the record of the refit before (nested)
        info["previous"] = trained[meta_key]
    trained[meta_key] = info
    files["bundle.json"] = json.dumps(meta, indent=1).encode()
    files["world_model.safetensors"] = tensors_bytes(b.dit.state_dict())
    write_dir_atomic(path, files)
    if steps > 0:
        print(f"heads refit on {info['transitions']} transitions ({info['ends']} ends) written to {path}")
    else:
        print(f"termination head calibrated, written to {path}")
    return info
