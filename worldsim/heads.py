"""`worldsim heads bundle=B data=D`: refit a bundle's reward and termination heads on its frozen world model.

Why: the heads train together with the world model, on frames at every noise level up to
`diffusion.context_noise_max`, where a death is one window in about 200 and the termination loss weighs 0.1.
The shipped Crafter model's termination head never learned it: on every held-out transition it gave each of
the 24 deaths of data/crafter_detour's test split and data/crafter-heldout a probability under 0.01, and the
learned env never ended an episode (docs/results.md). At inference the heads read the commit pass of the frame
the model made (with heads_input="sample_pair" its last sampling pass beside the frame before's commit); this refit
trains them on exactly that input (`commit_features`: the simulator's `StepResult.head_input`), the world model
left as it was (its samples do not change), from the bundle's heads' weights, with the termination loss at full
weight.
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


def context_canvas(sim, episodes: list, chunk: list, W: int):
    """The W context frames of each (episode, start) of `chunk` without the light, for a model under the env's
    light (it reads canvases): the collection's own where it has them (collect canvas=true or light=false);
    None otherwise, and the simulator works them out of the lit frames (at night only roughly)."""
    if not (sim.canvas_model and all("canvas" in episodes[e] for e, _ in chunk)):
        return None
    return np.stack([episodes[e]["canvas"][s:s + W] for e, s in chunk])


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
        sim.reset(range(B), ctx, ctx_a, rng.standard_normal((B, W, *shape)),
                  [episode_clock(episodes[e], s + W - 1) for e, s in chunk],
                  canvas=context_canvas(sim, episodes, chunk, W))
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
    meta["world_model"] = {k: v for k, v in meta["world_model"].items() if k not in ("events", "reward_values")}  # (the heads'
    meta["env"] = {k: v for k, v in meta["env"].items() if k not in ("events", "event_reward")}  # own)
    if "inference" in meta:  # nor the env's reward floor, which the features do not see
        meta["inference"] = {k: v for k, v in meta["inference"].items() if k != "reward_floor"}
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
    that never ends, a table placed again and again) it paid that average on every step (docs/results.md: Achievements).
    An event head says what happened, and the env, which keeps the episode's events, pays as the game does."""
    dit = bundle.dit
    if dit.config.reward_values:
        raise ValueError("add event heads before reward classes (the classes' rows follow the events')")
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


def rest_rewards(bundle, rewards: torch.Tensor, events=None) -> torch.Tensor:
    """The part of each real reward that the event heads do not pay (all of it without event heads): the reward
    less the event reward where the game paid an event (Crafter: what is left is health, in tenths)."""
    if int(bundle.dit.config.events):
        if events is None:
            raise ValueError("this bundle has event heads: the rest of the reward needs the episodes' events")
        return rewards - float(bundle.env["event_reward"]) * paid_events(events).float()
    return rewards


def rest_sum_range(bundle, episodes: list) -> list:
    """[lo, hi]: the range the running sum of the rest of the reward (`rest_rewards`) took in `episodes`, each
    summed from 0 at its start (rounded to 1e-3). The env keeps each episode's drawn sum within it
    (`rest_sum_range` in bundle.json's env): Crafter's health starts full, so its sum stays in [-0.9, 0]."""
    lo = hi = 0.0
    for ep in episodes:
        steps = transitions([ep], 1)  # every step, with no context before it
        if not steps:
            continue
        events = transition_events([ep], steps, 1) if int(bundle.dit.config.events) else None
        run = torch.cumsum(rest_rewards(bundle, transition_labels([ep], steps, 1)[0].double(), events), 0)
        lo, hi = min(lo, float(run.min())), max(hi, float(run.max()))
    return [round(lo, 3), round(hi, 3)]


def reward_value_set(rest: torch.Tensor, min_count: int) -> tuple[list, list]:
    """The values the rest of the reward takes at least `min_count` times (rounded to 1e-3), 0 always among
    them, and how often each occurs (rarer values counted to their nearest)."""
    vals, counts = torch.unique(torch.round(rest.double() * 1000) / 1000, return_counts=True)
    keep = sorted({0.0} | {float(v) for v, c in zip(vals, counts) if int(c) >= int(min_count)})
    cls = value_classes(rest, keep)
    return keep, [int((cls == i).sum()) for i in range(len(keep))]


def value_classes(rest: torch.Tensor, values) -> torch.Tensor:
    """(N,) int64 the index of the value nearest to each reward."""
    return (rest.double()[:, None] - torch.tensor(values, dtype=torch.float64)[None]).abs().argmin(1)


def add_reward_classes(bundle, values: list, counts: list) -> None:
    """Give the bundle's world model one logit per reward value (in place, after any event logits), starting at
    the values' frequencies in `counts`; `reward_values` goes into its config. The env then draws each step's
    reward (beside events) from these classes. Why: Crafter pays health in whole tenths (-0.2 a zombie's
    blow, +0.1 a point regained, on 3 % of steps); a regressing head gives their small averages on every step,
    which the env's floor dropped along with every real health reward, and in the learned world's dark spells
    it gave values over the floor (-0.3 and below, which the game never pays) for a thousand steps on end, an
    agent's return of -194 in one episode (docs/results.md: Training an agent in the learned world)."""
    dit = bundle.dit
    if dit.config.reward_values:
        raise ValueError(f"the bundle already has reward classes {list(dit.config.reward_values)}")
    if len(values) < 2 or len(values) != len(counts):
        raise ValueError(f"reward classes need at least two values and a count for each; got {values}, {counts}")
    sd = dit.state_dict()
    new = dit._reconfigured(reward_values=[float(v) for v in values])
    w, b = sd.pop("heads_mlp.2.weight"), sd.pop("heads_mlp.2.bias")
    new.load_state_dict(sd, strict=False)
    freq = torch.tensor(counts, dtype=torch.float32) + 1.0
    with torch.no_grad():
        new.heads_mlp[2].weight.zero_()
        new.heads_mlp[2].weight[:len(w)] = w
        new.heads_mlp[2].bias[:len(b)] = b
        new.heads_mlp[2].bias[len(b):] = torch.log(freq / freq.sum())
    bundle.dit = new.eval()
    bundle.meta["world_model"]["reward_values"] = [float(v) for v in values]


def fit_reward_classes(bundle, feats, rest: torch.Tensor, l2: float = 1e-2) -> dict:
    """Fit the reward-class logits (in place) as a linear read-out of the heads' hidden layer, which is left as
    it is: softmax regression on the classes of `rest` (`value_classes`), with an L2 penalty `l2` on the weights,
    by L-BFGS (convex: the optimum, whatever the start). Why a read-out: at the cross-entropy optimum with a
    shift per class the probabilities sum to each value's count on these transitions, which is what the env's
    draws need; trained with the other heads by Adam they missed it by a third (-0.2: 268 expected against 196,
    still moving at the end), and the hidden layer fit to the blows of the train split expected 2.9 times the
    real blows on the explorer's test split (1.2 times with this read-out). Returns each value's real and
    expected count."""
    dit = bundle.dit
    values = list(dit.config.reward_values or [])
    if not values:
        raise ValueError("this bundle has no reward classes to fit")
    K, last = 2 + int(dit.config.events), dit.heads_mlp[-1]
    with torch.no_grad():
        h = dit.heads_mlp[:-1](dit.head_norm(feats)).double()
    y = value_classes(rest, values)
    W = last.weight[K:].detach().double().clone().requires_grad_(True)
    b = last.bias[K:].detach().double().clone().requires_grad_(True)
    opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=1000, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(h @ W.T + b, y) + l2 * (W ** 2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        last.weight[K:], last.bias[K:] = W.float(), b.float()
        expected = torch.softmax(h @ W.T + b, -1).sum(0)
    return {str(v): {"real": int((y == i).sum()), "expected": round(float(expected[i]), 2)} for i, v in enumerate(values)}


def refit_heads(bundle, feats, rewards, terminated, events=None, steps: int = 3000, lr: float = 1e-3, seed: int = 0,
                achievement_weight: float = 2.0, end_weight: float = 1.0, keep_termination: bool = False) -> dict:
    """Train the bundle's world model's head_norm and heads_mlp (in place) on commit-pass features: reward MSE
    with achievements (|reward| > 0.5) weighted `achievement_weight`, plus termination BCE with ends weighted
    `end_weight`, both at full weight. Why ends 1: the env draws each step's end from the probability, so it
    must be calibrated (a weight w inflates the odds w times). Achievements 2: on held-out episodes twice the
    achievements the shipped heads found at about their precision, where 1 found fewer and 3 was less precise
    (docs/results.md, docs/heads_weights.py). keep_termination: the termination output learns the bundle's own
    probabilities on these features instead of the real ends, so a reward refit (on an agent's exploits, say)
    keeps the termination head as it was where the two share layers. A bundle with event heads
    (`add_event_heads`) needs `events` (`transition_events`): each event's logit learns whether it happened
    (BCE, summed over events: calibrated, the env draws them), and the reward output learns the rest of the
    reward, the real one less the event reward the game paid. A bundle with reward classes then fits them as a
    read-out of the refit hidden layer (`fit_reward_classes`). Returns the loss at the end."""
    dit = bundle.dit
    K, values = int(dit.config.events), list(dit.config.reward_values or [])
    if K and events is None:
        raise ValueError("this bundle has event heads: refit them on episodes with events (transition_events)")
    if K and events.shape[-1] != K:
        raise ValueError(f"events for {events.shape[-1]} events, the bundle has {K} event heads")
    rewards = rest = rest_rewards(bundle, rewards, events)
    if K:
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
                loss = loss + F.binary_cross_entropy_with_logits(o[:, 2:2 + K], happened[idx], reduction="sum") / len(idx)
            opt.zero_grad()
            loss.backward()
            opt.step()
    for p in params:
        p.requires_grad_(False)
    readout = fit_reward_classes(bundle, feats, rest) if values else None
    return {"steps": int(steps), "lr": float(lr), "achievement_weight": float(achievement_weight),
            "end_weight": float(end_weight), "keep_termination": bool(keep_termination), "events": K,
            "reward_values": values, "reward_classes": readout,
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
    K, values = int(bundle.dit.config.events), list(bundle.dit.config.reward_values or [])
    if values:  # the rest of the reward: the classes' expectation
        vprob = torch.softmax(o[:, 2 + K:], -1)
        r = vprob.double() @ torch.tensor(values, dtype=torch.float64)
    rest = None if K and events is None else rest_rewards(bundle, rewards, events)
    model_rest = r.clone()
    if K and events is not None:
        prob = torch.sigmoid(o[:, 2:2 + K])
        r = r + float(bundle.env["event_reward"]) * ((prob > 0.5) & ~events[:, 1].bool()).any(1).float()
    p, t = r > 0.5, rewards > 0.5
    out = {"achievements": int(t.sum()), "reward_predicted": int(p.sum()), "reward_right": int((p & t).sum()),
           "termination": end_scores(torch.sigmoid(o[:, 1]).numpy(), terminated.numpy())}
    if rest is not None:  # the rest of the reward (Crafter: health): its sum, real and as the model gives it
        out["rest"] = {"real_sum": round(float(rest.sum()), 3), "model_sum": round(float(model_rest.sum()), 3)}
        if values:  # per value: how often it was paid, how often the classes expect it
            real = value_classes(rest, values)
            out["rest"]["values"] = {str(v): {"real": int((real == i).sum()), "expected": round(float(vprob[:, i].sum()), 2)}
                                     for i, v in enumerate(values)}
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
    that has them refits them too. `reward_classes=true` then adds reward-class heads (`add_reward_classes`) for
    the values the rest of the reward takes in the train splits, fit as a read-out of the heads' hidden layer
    (`fit_reward_classes`): after the refit, or with `steps=0` alone, the other heads left as they are. A job
    that adds or refits reward classes also measures the range of the rest of the reward's running sum in the
    train episodes (`rest_sum_range`, into bundle.json's env); `steps=0 reward_range=true` measures only that."""
    from worldsim.checkpoint import bundle_and_training_data, data_dirs
    from worldsim.data import load_manifest

    steps, calibrate = int(cfg.steps), bool(cfg.get("calibrate", False))
    classes = bool(cfg.get("reward_classes", False))
    range_only = steps == 0 and bool(cfg.get("reward_range", False)) and not (calibrate or classes)
    if steps < 0 or (steps == 0 and not (calibrate or classes or range_only)):
        raise ValueError(f"heads: steps must be positive, or 0 with calibrate=true (calibrate only), "
                         f"reward_classes=true (add the classes only) or reward_range=true (measure the range only); "
                         f"got {steps}")
    device = str(cfg.get("device", "cpu"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    batch = int(cfg.get("batch_size", 64))
    cap = cfg.get("max_transitions")
    if cap is not None and (isinstance(cap, bool) or int(cap) < 1):
        raise ValueError(f"heads: max_transitions must be a whole number >= 1 (per collection and split) or null, got {cap!r}")
    cap = None if cap is None else int(cap)
    path, b, train = bundle_and_training_data(cfg.bundle, cfg.data, device)
    if range_only:
        return _write_rest_range(path, b, train, cfg.data)
    mode = cfg.get("heads_input")
    if mode is not None and mode != b.dit.config.heads_input:  # the heads read otherwise: refit them for it
        if steps == 0:
            raise ValueError(f"heads_input={mode} changes what the heads read, so they need a refit (steps > 0)")
        b.dit = b.dit.with_heads_input(str(mode))
        b.meta["world_model"]["heads_input"] = str(mode)
        print(f"heads now read heads_input={mode}; 'before' below is their start, not the bundle's heads")
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
    fit = steps > 0 or classes
    if fit and cap is None:
        tr = commit_features(b, train, batch=batch, seed=cfg.seed, events=events)
    elif fit:  # capped per collection, so a small new one (an agent's exploits) is not drowned by a large one
        parts = [cached_commit_features(b, d, "train", batch, cfg.seed + 100 + i, cap, cache, events)
                 for i, d in enumerate(data_dirs(cfg.data))]
        tr = tuple(torch.cat(x) for x in zip(*parts))
    b.dit.cpu()  # the features are on the host; the heads are small (on a GPU only the features are worth it)
    before = {d: head_counts(b, *te) for d, te in tests.items()}
    if add:
        if steps == 0:
            raise ValueError("events=true adds event heads, which need a refit (steps > 0)")
        add_event_heads(b, names, reward)
    new_classes = classes and not b.dit.config.reward_values
    if steps == 0 and not (calibrate or new_classes):
        raise ValueError(f"{path} already has reward classes {list(b.dit.config.reward_values)}: steps > 0 refits "
                         f"them with the other heads")
    if new_classes:
        values, counts = reward_value_set(rest_rewards(b, tr[1], tr[3] if events else None),
                                          int(cfg.get("reward_class_min", 5)))
        if len(values) < 2:
            raise ValueError(f"reward_classes=true: the train splits' rewards{' (less events)' if events else ''} take "
                             f"only the values {values}, nothing to draw")
        add_reward_classes(b, values, counts)
        print(f"reward classes {values} (train transitions: {counts})")
    meta_key, info = "heads_refit", {}
    if steps > 0:
        info = refit_heads(b, *tr, steps=steps, lr=float(cfg.lr), seed=int(cfg.seed),
                           achievement_weight=float(cfg.achievement_weight), end_weight=float(cfg.end_weight),
                           keep_termination=bool(cfg.get("keep_termination", False)))
        info.update(transitions=len(tr[0]), ends=int(tr[2].sum()))
    elif new_classes:  # the classes alone, read out of the heads as they are (the other heads unchanged)
        meta_key = "reward_classes"
        info = {"reward_values": list(b.dit.config.reward_values), "transitions": len(tr[0]),
                "reward_classes": fit_reward_classes(b, tr[0], rest_rewards(b, tr[1], tr[3] if events else None))}
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
    if b.dit.config.reward_values and (steps > 0 or new_classes):
        b.env["rest_sum_range"] = info["rest_sum_range"] = rest_sum_range(b, train)
        print(f"the rest of the reward's running sum in the train episodes: {info['rest_sum_range']}")
    # event heads and reward classes added, if they were
    _rewrite_bundle(path, meta_key, info, {"world_model": b.meta["world_model"], "env": b.meta["env"]},
                    tensors_bytes(b.dit.state_dict()))
    if steps > 0:
        print(f"heads refit on {info['transitions']} transitions ({info['ends']} ends) written to {path}")
    elif new_classes:
        print(f"reward classes fit on {info['transitions']} transitions, written to {path}")
    else:
        print(f"termination head calibrated, written to {path}")
    return info


def _write_rest_range(path: Path, b, train: list, data) -> dict:
    """`worldsim heads steps=0 reward_range=true`: the bundle's `rest_sum_range` measured on the train
    episodes, written into its bundle.json (atomically; the weights unchanged)."""
    from worldsim.checkpoint import data_dirs

    if not b.dit.config.reward_values:
        raise ValueError(f"reward_range=true bounds the values reward classes draw, and {path} has none "
                         f"(add them with reward_classes=true)")
    rng = rest_sum_range(b, train)
    _rewrite_bundle(path, "rest_sum_range", {"range": rng, "episodes": len(train), "data": [str(d) for d in data_dirs(data)]},
                    {"env": {**b.env, "rest_sum_range": rng}})
    print(f"the rest of the reward's running sum in {len(train)} train episodes: {rng}, written to {path}")
    return {"rest_sum_range": rng, "episodes": len(train)}


def _rewrite_bundle(path: Path, key: str, info: dict, sections: dict, weights: bytes | None = None) -> None:
    """Rewrite the bundle at `path` atomically: bundle.json's `trained[key]` becomes `info` (a record there from
    an earlier run kept in it, nested, as `previous`), its top-level `sections` are replaced, and with `weights`
    the world model's file too."""
    files = {p.name: p.read_bytes() for p in path.iterdir() if p.is_file()}
    meta = json.loads(files["bundle.json"])
    trained = meta.setdefault("trained", {})
    if key in trained:
        info["previous"] = trained[key]
    trained[key] = info
    meta.update(sections)
    files["bundle.json"] = json.dumps(meta, indent=1).encode()
    if weights is not None:
        files["world_model.safetensors"] = weights
    write_dir_atomic(path, files)
