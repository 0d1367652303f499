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

import hashlib
import json
import warnings
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


def transition_events(episodes: list, items: list, W: int) -> torch.Tensor:
    """The events of each transition of `items` (episodes collected with `events`, e.g. Crafter's achievements),
    as uint8 (N, 2, K): [:, 0] each event happened on this step, [:, 1] it had happened before in the episode
    (so the game does not pay it again)."""
    missing = sum("events" not in ep for ep in episodes)
    if missing:
        raise ValueError(f"{missing} of {len(episodes)} episodes have no events (collected before `worldsim collect` "
                         f"stored them, or from a game without them): collect them again to fit event heads")
    before = {}
    rows = []
    for e, s in items:
        ev = episodes[e]["events"].astype(bool)
        if e not in before:  # each event's count before each step
            before[e] = np.cumsum(ev, 0) - ev
        rows.append(np.stack([ev[s + W - 1], before[e][s + W - 1] > 0]))
    return torch.from_numpy(np.asarray(rows, np.uint8).reshape(len(items), 2, -1))


def paid_events(events: torch.Tensor) -> torch.Tensor:
    """Whether a step pays the event reward, from `transition_events` labels: some event happened there for the
    first time in its episode (Crafter adds 1 once on such a step, however many unlock together)."""
    return (events[:, 0].bool() & ~events[:, 1].bool()).any(1)


@torch.no_grad()
def commit_features(bundle, episodes: list, batch: int = 64, seed: int = 0, max_transitions: int | None = None,
                    events: bool = False):
    """Every transition of the episodes that has W real frames before it, stepped as the env steps it
    (`step_transitions`); the heads' input is taken from the commit pass, which reads the frame the model made
    (not the real one). Returns (features (N, dim), real rewards (N,), real terminated (N,)), and with `events`
    the transitions' events (`transition_events`) fourth.
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
    out = (torch.cat(feats), *transition_labels(episodes, items, W))
    return (*out, transition_events(episodes, items, W)) if events else out


HEAD_PARAMS = ("head_norm.", "heads_mlp.")


def features_key(bundle, data_dir: Path, split: str, seed: int, cap: int | None, batch: int) -> str:
    """What commit features depend on: the bundle's settings and weights except the heads' (a refit leaves the
    key as it was), the collection's manifest, the split, the sample (seed, cap) and the batch (the noise is
    drawn per batch) and the device type. A sha1 of all of it."""
    h = hashlib.sha1()
    meta = {k: v for k, v in bundle.meta.items() if k != "trained"}  # without the event heads' entries:
    meta["world_model"] = {k: v for k, v in meta["world_model"].items() if k != "events"}  # (the heads'
    meta["env"] = {k: v for k, v in meta["env"].items() if k not in ("events", "event_reward")}  # own)
    h.update(json.dumps(meta, sort_keys=True).encode())
    for f in sorted(bundle.path.glob("*.safetensors")):
        if f.name != "world_model.safetensors":
            h.update(f.name.encode() + f.read_bytes())
    sd = bundle.dit.state_dict()
    h.update(tensors_bytes({k: v for k, v in sd.items() if not k.startswith(HEAD_PARAMS)}))
    h.update((Path(data_dir) / "manifest.json").read_bytes())
    device = next(bundle.dit.parameters()).device.type
    h.update(json.dumps([split, int(seed), cap, int(batch), device]).encode())
    return h.hexdigest()[:20]


def cached_commit_features(bundle, data_dir: Path, split: str, batch: int, seed: int, cap: int | None,
                           cache_dir: Path | None, events: bool = False):
    """`commit_features` of one collection's split, kept in `cache_dir` (one safetensors file per key,
    `features_key`) so that refits of the same world model with other settings skip the stepping that takes
    most of their time (~10 minutes per 5,000 transitions on 2 cores). None if the split is empty. A cache
    file that cannot be read is recomputed, with a warning."""
    from safetensors.torch import load_file

    from worldsim.data import atomic_write_bytes, load_episodes

    file = None
    if cache_dir is not None:
        file = Path(cache_dir) / f"heads_{features_key(bundle, data_dir, split, seed, cap, batch)}.safetensors"
        if file.exists():
            try:
                t = load_file(file)
                out = t["features"], t["rewards"], t["terminated"].bool()
                if not events:
                    return out
                if "events" in t:
                    return (*out, t["events"])
            except Exception as e:  # a torn or foreign file: recompute it
                warnings.warn(f"heads features cache {file} unreadable ({e}); computing it again")
    eps = load_episodes(data_dir, split=split)
    if not eps:
        return None
    out = commit_features(bundle, eps, batch=batch, seed=seed, max_transitions=cap, events=events)
    if file is not None:
        data = tensors_bytes({"features": out[0], "rewards": out[1], "terminated": out[2].to(torch.uint8),
                              **({"events": out[3]} if events else {})})
        atomic_write_bytes(file, lambda f: f.write(data))
    return out


def add_event_heads(bundle, names: list, event_reward: float) -> None:
    """Give the bundle's world model one event logit per name (in place): heads_mlp's last layer grows from 2
    outputs to 2 + len(names), its reward and termination rows kept, the new rows starting at probability
    about 0.002; the names and the reward the env pays for each one's first time go into bundle.env. Why:
    Crafter pays an achievement only the first time in an episode, which no head reading a few frames can
    know; a head that regresses the reward learns its average, and in the learned world's own rollouts (a sleep
    that never ends, a table placed again and again) it paid that average on every step (README: Achievements).
    An event head says what happened, and the env, which keeps the episode's events, pays as the game does."""
    dit = bundle.dit
    if dit.config.events:
        raise ValueError(f"the bundle already has {dit.config.events} event heads")
    sd = dit.state_dict()
    new = dit._reconfigured(events=len(names))
    last = sd.pop("heads_mlp.2.weight"), sd.pop("heads_mlp.2.bias")
    new.load_state_dict(sd, strict=False)
    with torch.no_grad():
        new.heads_mlp[2].weight.zero_()
        new.heads_mlp[2].weight[:2] = last[0]
        new.heads_mlp[2].bias.fill_(-6.0)
        new.heads_mlp[2].bias[:2] = last[1]
    bundle.dit = new.eval()
    bundle.meta["world_model"]["events"] = len(names)
    bundle.env.update(events=list(names), event_reward=float(event_reward))


def refit_heads(bundle, feats, rewards, terminated, events=None, steps: int = 3000, lr: float = 1e-3, seed: int = 0,
                achievement_weight: float = 2.0, end_weight: float = 1.0, keep_termination: bool = False) -> dict:
    """Train the bundle's world model's head_norm and heads_mlp (in place) on commit-pass features: reward MSE
    with achievements (|reward| > 0.5) weighted `achievement_weight`, plus termination BCE with ends weighted
    `end_weight`, both at full weight. Why ends 1: the env draws each step's end from the probability, so it
    must be calibrated (a weight w inflates the odds w times). Achievements 2: on held-out episodes twice the
    achievements the shipped heads found at about their precision, where 1 found fewer and 3 was less precise
    (README, docs/heads_weights.py). keep_termination: the termination output learns the bundle's own
    probabilities on these features instead of the real ends, so a reward refit (on an agent's exploits, say)
    keeps the termination head as it was where the two share layers. A bundle with event heads
    (`add_event_heads`) needs `events` (`transition_events`): each event's logit learns whether it happened
    (BCE, summed over events: calibrated, the env draws them), and the reward output learns the rest of the
    reward, the real one less the event reward the game paid. Returns the loss at the end."""
    dit = bundle.dit
    K = int(dit.config.events)
    if K and events is None:
        raise ValueError("this bundle has event heads: refit them on episodes with events (transition_events)")
    if K and events.shape[-1] != K:
        raise ValueError(f"events for {events.shape[-1]} events, the bundle has {K} event heads")
    if K:
        rewards = rewards - float(bundle.env["event_reward"]) * paid_events(events).float()
        happened = events[:, 0].float()
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
            if K:
                loss = loss + F.binary_cross_entropy_with_logits(o[:, 2:], happened[idx], reduction="sum") / len(idx)
            opt.zero_grad()
            loss.backward()
            opt.step()
    for p in params:
        p.requires_grad_(False)
    return {"steps": int(steps), "lr": float(lr), "achievement_weight": float(achievement_weight),
            "end_weight": float(end_weight), "keep_termination": bool(keep_termination), "events": K,
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


def head_counts(bundle, feats, rewards, terminated, events=None) -> dict:
    """The heads on features: achievements (reward > 0.5) predicted and right, and the termination probability
    scored as the env draws ends from it (`worldsim.evaluate.end_scores`). With event heads the predicted
    reward is the env's: the reward output plus the event reward where an event the episode had not had
    before gets probability > 0.5 (the real episode's events before the step known: `events`); and per event
    (`events` given) how often it happened, how many the probabilities expect, and predicted (> 0.5) / right."""
    from worldsim.evaluate import end_scores

    with torch.no_grad():
        o = bundle.dit.heads_mlp(bundle.dit.head_norm(feats))
    r = o[:, 0] * float(bundle.env.get("reward_scale", 1.0))
    K = int(bundle.dit.config.events)
    if K and events is not None:
        prob = torch.sigmoid(o[:, 2:])
        r = r + float(bundle.env["event_reward"]) * ((prob > 0.5) & ~events[:, 1].bool()).any(1).float()
    p, t = r > 0.5, rewards > 0.5
    out = {"achievements": int(t.sum()), "reward_predicted": int(p.sum()), "reward_right": int((p & t).sum()),
           "termination": end_scores(torch.sigmoid(o[:, 1]).numpy(), terminated.numpy())}
    if K and events is not None:
        happened, pred = events[:, 0].bool(), prob > 0.5
        out["events"] = {name: {"happened": int(happened[:, k].sum()), "expected": round(float(prob[:, k].sum()), 2),
                                "predicted": int(pred[:, k].sum()), "right": int((pred[:, k] & happened[:, k]).sum())}
                         for k, name in enumerate(bundle.env["events"]) if happened[:, k].any() or pred[:, k].any()}
    return out


def heads_job(cfg):
    """`worldsim heads bundle=B data=D` (or `data=[D1,D2]`): refit B's heads on the train splits, report them on
    each test split before and after, and rewrite B atomically (only the heads' weights change). With
    `calibrate=true` the termination head is then Platt-scaled on the test splits together
    (`calibrate_termination`); `steps=0 calibrate=true` calibrates a bundle's heads without refitting them.
    `events=true` first adds event heads (`add_event_heads`) for the events the collections recorded; a bundle
    that has them refits them too."""
    from worldsim.checkpoint import bundle_and_training_data, data_dirs
    from worldsim.data import load_manifest

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
    add = bool(cfg.get("events", False)) and not b.dit.config.events
    events = add or bool(b.dit.config.events)
    if add:
        names = {json.dumps([m["env"].get("events"), m["env"].get("event_reward")])
                 for m in map(load_manifest, data_dirs(cfg.data))}
        names, reward = json.loads(names.pop()) if len(names) == 1 else (None, None)
        if not names:
            raise ValueError(f"events=true learns the events the collections recorded, and {[str(d) for d in data_dirs(cfg.data)]} "
                             f"record none, or not the same ones (collect them again with this version)")
    torch.manual_seed(cfg.seed)
    cache = cfg.get("features_cache")
    tests = {str(d): te for i, d in enumerate(data_dirs(cfg.data))
             if (te := cached_commit_features(b, d, "test", batch, cfg.seed + 1 + i, cap, cache, events)) is not None}
    if calibrate and not tests:
        raise ValueError(f"calibrate=true fits on the test splits, and none of {[str(d) for d in data_dirs(cfg.data)]} has one")
    tr = None
    if steps > 0 and cap is None:
        tr = commit_features(b, train, batch=batch, seed=cfg.seed, events=events)
    elif steps > 0:  # capped per collection, so a small new one (an agent's exploits) is not drowned by a large one
        parts = [cached_commit_features(b, d, "train", batch, cfg.seed + 100 + i, cap, cache, events)
                 for i, d in enumerate(data_dirs(cfg.data))]
        tr = tuple(torch.cat(x) for x in zip(*parts))
    b.dit.cpu()  # the features are on the host; the heads are small (on a GPU only the features are worth it)
    before = {d: head_counts(b, *te) for d, te in tests.items()}
    if add:
        if steps == 0:
            raise ValueError("events=true adds event heads, which need a refit (steps > 0)")
        add_event_heads(b, names, reward)
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
    meta["world_model"], meta["env"] = b.meta["world_model"], b.meta["env"]  # event heads added, if they were
    files["bundle.json"] = json.dumps(meta, indent=1).encode()
    files["world_model.safetensors"] = tensors_bytes(b.dit.state_dict())
    write_dir_atomic(path, files)
    if steps > 0:
        print(f"heads refit on {info['transitions']} transitions ({info['ends']} ends) written to {path}")
    else:
        print(f"termination head calibrated, written to {path}")
    return info
