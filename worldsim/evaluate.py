"""`worldsim eval`: the model against the real game on held-out worlds, each figure beside its baseline.

- Next frame with real context: PSNR of the generated frame vs the real next frame, beside copy-the-last-frame.
  Two averages, both reported: the mean of per-frame PSNR, and the PSNR of the pooled MSE (mean squared error
  over all frames, then PSNR). They differ when some real next frames equal the last one (Crafter's "do"
  on grass, blocked moves): copying is then exact, its per-frame PSNR is 148 dB (the MSE floor), and those frames
  dominate the per-frame mean; the pooled figure weighs every pixel error the same. A model with a warp
  input (camera) also gets the baseline that knows the camera: the last frame shifted by the action times
  the model's fitted warp matrix (`warp_copy`), for the next frame and for camera following.
- Open-loop rollout from real context driven by the real actions: PSNR at each horizon, beside
  copy-the-last-context-frame and beside one constant image, the average held-out frame (far ahead the
  view is ground no context showed, and PSNR rewards an average over a sharp guess).
- Reward / termination heads, on every held-out transition (heads read the model's own next frame, as in the
  env): reward precision and recall; the termination probability as the env draws ends from it (expected
  ends, expected recall and precision, AUROC) and at a 0.5 threshold.
- Action following (`following`): from a real context, the model takes each of a set of actions; the
  generated frame must be closest to the real outcome of the action taken (real outcomes: a
  `copy.deepcopy` of the running Crafter game, or in Minetest a turn followed by the turn back). Counted
  only where the real outcomes differ. Crafter: noop and the four moves; Minetest: yaw left/right and
  pitch up/down.
- Revisit consistency (Minetest, `revisit`): a full 360 degree turn in steps; the real game comes back to
  its first view, and the model's last frame is compared with its first, beside the view half-way round.
- Stability (`stability_steps`): a long rollout of the learned env driven by the scripted explorer. Each
  frame's nearest-neighbour PSNR against a bank of real frames (does it still look like the game?), its
  change from the previous frame (frozen?) and its pixel spread (collapsed to a flat colour?), per block of
  steps, beside the same measures on real held-out frames (and the real steps' own share of unchanged
  frames); the expected ends per 1,000 steps (the termination head's mean probability, how often the env
  would end the rollout) beside the real episodes' deaths per 1,000 steps; a strip of frames at regular steps.

Held-out episodes come from `data` (its "test" split), or are collected fresh from world seeds far from any
used in training (`seed`), with the scripted explorer. `env=gym:<id>` evaluates a model trained on any
Gymnasium env (`bundle=` required) the same way: a random agent collects and drives, following probes every
Discrete action (a Box: its low, middle and high) from a copy of the running env.
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from worldsim.data import episode_clock, index_actions, load_episodes, stack_actions
from worldsim.envs.gym_source import folder_name, is_gym_source, need_bundle
from worldsim.simulator import WorldSimulator, load_bundle

# per game: default horizons, held-out cache, stability rollout length and block, following probe actions
ENVS = {
    "crafter": {"horizons": [1, 2, 4, 8, 16, 32, 64], "cache_dir": "data/crafter-heldout", "stability_steps": 10000,
                "stability_block": 1000, "episodes": 16, "max_steps": 400, "differ": 0.0},
    "minetest": {"horizons": [1, 2, 4, 8, 16, 32], "cache_dir": "data/minetest-heldout", "stability_steps": 2000,
                 "stability_block": 200, "episodes": 4, "max_steps": 400, "differ": 1.0},
    # any Gymnasium env (env=gym:<id>): held-out episodes from a random agent (or data=D's test split)
    "gym": {"horizons": [1, 2, 4, 8, 16, 32], "cache_dir": None, "stability_steps": 2000, "stability_block": 200,
            "episodes": 16, "max_steps": 500, "differ": 0.0},
}


def _game(env: str) -> str:
    """ENVS's key for an env name: crafter, minetest, or gym for any gym:<id> source."""
    if is_gym_source(env):
        return "gym"
    if env not in ENVS:
        raise ValueError(f"unknown env {env!r}; available: crafter, minetest, or gym:<env id> (a model you trained "
                         f"on a Gymnasium env, bundle=...)")
    return env


def _opt(cfg, key):
    """A config value, or the game's default when it is null."""
    v = cfg.get(key)
    if v is None and key == "cache_dir" and is_gym_source(cfg.env):
        return f"data/{folder_name(cfg.env)}-heldout"
    return ENVS[_game(cfg.env)][key] if v is None else v


def _sim_kw(cfg) -> dict:
    """Inference settings the config may override (context noise, guidance, tile hold, detail carry, reencode,
    snap and its `certain`, seed floor, quantize, amp, view and map memory, new ground and its floor, ticks, light and its noise, fresh window); null = the bundle's. snap passes through as given: true,
    false or a mode name (nearest, sample)."""
    kw = {k: None if cfg.get(k) is None else float(cfg.get(k)) for k in ("context_noise", "guidance", "tile_hold",
                                                                             "detail_carry", "carry_gate", "certain",
                                                                             "seed_floor", "terrain_floor")}
    reencode = None if cfg.get("reencode") is None else bool(cfg.reencode)
    return {**kw, "quantize": cfg.get("quantize"), "amp": cfg.get("amp"), "reencode": reencode, "snap": cfg.get("snap"),
            "view_memory": cfg.get("view_memory"), "map_memory": cfg.get("map_memory"), "new_ground": cfg.get("new_ground"),
            "ticks": cfg.get("ticks"), "light": cfg.get("light"), "light_noise": cfg.get("light_noise"),
            "fresh_window": cfg.get("fresh_window")}


def _step_of(actions, h):
    """Column h of a batch of action sequences (an array, or a dict of them)."""
    return index_actions(actions, (slice(None), h))


def mse_np(a, b):
    return ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean(axis=(-3, -2, -1))


def psnr_of_mse(mse):
    """PSNR in dB for 8-bit frames; an exact frame (MSE 0) counts as 148.1 dB (MSE floor 1e-10)."""
    return 10 * np.log10(255.0**2 / np.maximum(mse, 1e-10))


def psnr_np(a, b):
    return psnr_of_mse(mse_np(a, b))


def phase_shift(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(dy, dx) such that b ~ a shifted by (dy, dx) pixels, by phase correlation of the grey images."""
    ga, gb = (x.astype(np.float64).mean(-1) for x in (a, b))
    win = np.outer(np.hanning(ga.shape[0]), np.hanning(ga.shape[1]))
    fa, fb = np.fft.fft2((ga - ga.mean()) * win), np.fft.fft2((gb - gb.mean()) * win)
    r = fb * np.conj(fa)
    corr = np.fft.ifft2(r / (np.abs(r) + 1e-9)).real
    dy, dx = np.unravel_index(np.argmax(corr), corr.shape)
    h, w = corr.shape
    return (dy - h if dy > h // 2 else dy), (dx - w if dx > w // 2 else dx)


def heldout_episodes(cfg, size=None, make_kwargs=None, grey_sleep=True):
    if cfg.data:
        eps = load_episodes(Path(cfg.data), split="test")
        if not eps:
            raise ValueError(f"{cfg.data} has no 'test' split episodes")
        return eps
    from worldsim.collect import collect

    out = Path(_opt(cfg, "cache_dir"))
    collect(OmegaConf.create({"env": cfg.env, "out": str(out), "episodes": _opt(cfg, "episodes"),
                              "workers": cfg.workers, "max_steps": _opt(cfg, "max_steps"), "agent": None,
                              "detour": 0.0, "seed": cfg.seed, "test_every": 1,
                              "size": None if size is None else list(size), "env_kwargs": make_kwargs or {},
                              # Crafter: each frame also without the light, the context a lit bundle reads
                              # (and without a sleeper's grey for a bundle whose env draws it, env.sleep)
                              "canvas": cfg.env == "crafter", "grey_sleep": grey_sleep}))
    return load_episodes(out, split="test")


def _precision_recall(pred, true):
    pred, true = np.asarray(pred, bool), np.asarray(true, bool)
    tp = int((pred & true).sum())
    return {"precision": tp / max(int(pred.sum()), 1) if pred.sum() else None,
            "recall": tp / max(int(true.sum()), 1) if true.sum() else None,
            "positives": int(true.sum()), "predicted": int(pred.sum())}


def end_scores(prob, true, episode=None, window: int = 6) -> dict:
    """The termination head scored as the env uses it, each step ending with its probability: the expected
    number of ends against the real count, the expected recall (mean probability on the real ends) and
    precision (the share of the expected ends that fall on real ones), and AUROC (how well the probability
    ranks real ends above other steps; 0.5 is chance). Also precision/recall at a 0.5 threshold. With
    `episode` (each step's episode, its steps consecutive and in order): the chance that an end is drawn in the
    `window` steps up to each real end (Crafter's zombies strike every 6 steps, which the model's 4 frames
    cannot time), and the expected ends per 1,000 of the other steps."""
    prob, true = np.asarray(prob, np.float64), np.asarray(true, bool)
    near = None
    if episode is not None:
        episode = np.asarray(episode)
        inside, chances = np.zeros(len(prob), bool), []
        for i in np.flatnonzero(true):
            lo = i
            while lo > i - window + 1 and lo > 0 and episode[lo - 1] == episode[i]:
                lo -= 1
            inside[lo:i + 1] = True
            chances.append(1 - np.prod(1 - prob[lo:i + 1]))
        near = {"window": int(window), "chance_per_end": float(np.mean(chances)) if chances else None,
                "expected_ends_elsewhere_per_1000": float(1000 * prob[~inside].mean()) if (~inside).any() else None}
    pos, neg = prob[true], prob[~true]
    auroc = None
    if len(pos) and len(neg):  # Mann-Whitney: P(end scored above non-end), ties half
        order = np.sort(neg)
        auroc = float((np.searchsorted(order, pos, "left") + np.searchsorted(order, pos, "right")).sum()
                      / (2 * len(pos) * len(neg)))
    return {"ends": int(true.sum()), "expected_ends": float(prob.sum()),
            "expected_recall": float(pos.mean()) if len(pos) else None,
            "expected_precision": float(pos.sum() / prob.sum()) if prob.sum() > 0 else None,
            "auroc": auroc, "threshold_0.5": _precision_recall(prob > 0.5, true),
            **({"near_real_ends": near} if near is not None else {})}


@torch.no_grad()
def heads_eval(cfg, bundle, eps) -> dict:
    """Reward and termination heads on every held-out transition that has W real frames before it: the simulator
    starts from those frames, takes the real action once, and its reward (> 0.5: an achievement) and
    termination probability (`end_scores`) are scored against the real ones. Why every transition: an episode
    ends on its last one, which no rollout window (W + horizon frames) reaches, so scored on the windows' first
    steps the termination head was never tested (and did not work: docs/results.md). Its own generator, so the other
    figures draw the same numbers as without it."""
    from worldsim.envs.world_env import _floored, _reward_floor, event_pay_chance
    from worldsim.heads import (paid_events, rest_rewards, step_transitions, transition_events, transition_labels,
                                transitions, value_classes)

    W = bundle.dit.config.context_frames
    items = transitions(eps, W)
    if not items:
        return {"head_transitions": 0, "reward_head": _precision_recall([], []), "reward_values": reward_scores([], []),
                "termination_head": end_scores([], [])}
    sim = WorldSimulator(bundle, min(int(cfg.batch_size), len(items)), cfg.sampling_steps, **_sim_kw(cfg))
    K = int(bundle.dit.config.events)
    if K and any("events" not in ep for ep in eps):
        raise ValueError(f"{bundle.path} has event heads, and the held-out episodes have no events (collected before "
                         f"they were recorded): give eval another cache_dir, or delete this one, to collect them again")
    rew_pred, term_prob, ev_prob, val_prob = [], [], [], []
    for res, k in step_transitions(sim, eps, items, np.random.default_rng(int(cfg.seed) + 1)):
        rew_pred += list(res.reward[:k])
        if res.reward_prob is not None:
            val_prob += list(res.reward_prob[:k])
        term_prob += list(res.terminated_prob[:k])
        if K:
            ev_prob += list(res.event_prob[:k])
    rew, term = transition_labels(eps, items, W)
    rew, rew_pred = rew.numpy().astype(np.float64), np.asarray(rew_pred, np.float64)
    out = {}
    labels = transition_events(eps, items, W) if K else None
    # the rest of the reward (Crafter: health), as the env pays it: the expectation of the classes it draws
    # from, or the reward head's value over the floor; beside the real rest
    rest = rest_rewards(bundle, torch.as_tensor(rew), labels).numpy()
    values = list(bundle.dit.config.reward_values or [])
    paid_rest = rew_pred if values else _floored(rew_pred, _reward_floor(cfg.get("reward_floor"), bundle))
    out["rest_reward"] = {"real_sum": float(rest.sum()), "env_sum": float(paid_rest.sum()),
                          "real_steps": int((np.abs(rest) > 1e-6).sum())}
    if values:
        real, vp = value_classes(torch.as_tensor(rest), values).numpy(), np.asarray(val_prob)
        out["rest_reward"]["values"] = {str(v): {"real": int((real == i).sum()), "expected": float(vp[:, i].sum())}
                                        for i, v in enumerate(values)}
    if K:  # the env's reward: an event it draws pays where the real episode had not had it before
        ev, p, paid = labels.numpy().astype(bool), np.asarray(ev_prob), paid_events(labels).numpy()
        rew_pred = rew_pred + float(bundle.env["event_reward"]) * ((p > 0.5) & ~ev[:, 1]).any(1)
        chance = event_pay_chance(p, ev[:, 1])  # as the env draws them, against the steps the game paid
        out["events_paid"] = {"real": int(paid.sum()), "expected": float(chance.sum()),
                              "expected_recall": float(chance[paid].mean()) if paid.any() else None,
                              "expected_precision": float(chance[paid].sum() / chance.sum()) if chance.sum() else None}
        out["event_heads"] = {name: {"happened": int(ev[:, 0, k].sum()), "expected": round(float(p[:, k].sum()), 2),
                                     **_precision_recall(p[:, k] > 0.5, ev[:, 0, k])}
                              for k, name in enumerate(bundle.env["events"]) if ev[:, 0, k].any() or (p[:, k] > 0.5).any()}
    return {"head_transitions": len(items), "reward_head": _precision_recall(rew_pred > 0.5, rew > 0.5),
            "reward_values": reward_scores(rew_pred, rew),
            "termination_head": end_scores(term_prob, term.numpy(), [e for e, _ in items]), **out}


def reward_scores(pred, true) -> dict:
    """The reward head as a regression, for games whose rewards are dense (Pendulum's cost every step) rather
    than rare events: mean squared error beside the held-out rewards' own variance (the error of always giving
    their mean, a baseline that already knows it), and the correlation of predicted and real rewards."""
    pred, true = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    if not len(true):
        return {"mse": None, "mean_baseline_mse": None, "correlation": None}
    corr = float(np.corrcoef(pred, true)[0, 1]) if pred.std() > 0 and true.std() > 0 else None
    return {"mse": float(((pred - true) ** 2).mean()), "mean_baseline_mse": float(true.var()), "correlation": corr}


@torch.no_grad()
def rollout_starts(eps, W: int, H: int, stride: int, n: int, rng: np.random.Generator) -> list:
    """(episode, start) of n windows of W real context frames, then H real future frames and the actions
    between: every `stride`-th start, shuffled by rng (the eval's own generator, which then draws the noise)."""
    starts = [(e, s) for e, ep in enumerate(eps) for s in range(0, len(ep["frames"]) - W - H, stride)]
    if not starts:
        raise ValueError(f"held-out episodes are shorter than context ({W}) + horizon ({H}) frames")
    rng.shuffle(starts)
    return starts[:n]


def evaluate(cfg):
    game = _game(cfg.env)
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    from worldsim import DEFAULT_CRAFTER_BUNDLE, DEFAULT_MINETEST_BUNDLE
    from worldsim.heads import context_canvas

    need_bundle(cfg.env, cfg.bundle)
    default = {"crafter": DEFAULT_CRAFTER_BUNDLE, "minetest": DEFAULT_MINETEST_BUNDLE}.get(game)
    bundle = load_bundle(str(cfg.bundle or default), cfg.device)
    if game == "gym" and bundle.env.get("name") != cfg.env:
        raise ValueError(f"bundle {bundle.path} was trained on {bundle.env.get('name')!r}, not {cfg.env!r}")
    eps = heldout_episodes(cfg, bundle.env["frame_shape"][:2] if game == "gym" else None, bundle.env.get("make_kwargs"),
                           grey_sleep=not bundle.env.get("sleep"))
    W = bundle.dit.config.context_frames
    horizons = list(_opt(cfg, "horizons"))
    H = max(horizons)
    rng = np.random.default_rng(cfg.seed)
    starts = rollout_starts(eps, W, H, cfg.stride, cfg.windows, rng)
    B = min(cfg.batch_size, len(starts))
    sim = WorldSimulator(bundle, B, cfg.sampling_steps, **_sim_kw(cfg))
    shape = sim.latent_shape
    model_mse, copy_mse = np.zeros((len(starts), H)), np.zeros((len(starts), H))
    # a third baseline: one constant image, the held-out frames' average. Why: far ahead the real view is
    # mostly ground no context frame showed, and PSNR rewards the average of what it might be over any one
    # sharp guess, so beating copy-context there also says little unless the model beats the average too
    mean_frame = np.concatenate([ep["frames"] for ep in eps]).astype(np.float64).mean(0)
    mean_mse = np.zeros((len(starts), H))
    warp_mse = np.zeros(len(starts))  # a warp model's own baseline: the last frame moved by the camera (its warp)
    strip, strip_real = [], None
    for i in tqdm(range(0, len(starts) - B + 1, B), desc="eval rollouts", unit="batch"):
        chunk = starts[i:i + B]
        ctx = np.stack([eps[e]["frames"][s:s + W] for e, s in chunk])
        ctx_a = stack_actions([index_actions(eps[e]["actions"], slice(s, s + W - 1)) for e, s in chunk])
        fut = np.stack([eps[e]["frames"][s + W:s + W + H] for e, s in chunk])
        fut_a = stack_actions([index_actions(eps[e]["actions"], slice(s + W - 1, s + W - 1 + H)) for e, s in chunk])
        sim.reset(range(B), ctx, ctx_a, rng.standard_normal((B, W, *shape)),
                  [episode_clock(eps[e], s + W - 1) for e, s in chunk], canvas=context_canvas(sim, eps, chunk, W))
        if i == 0:
            strip_real = fut[: cfg.grid_rows]
        for h in range(H):
            res = sim.step(_step_of(fut_a, h), rng.standard_normal((B, *shape)), rng.standard_normal((B, *shape)))
            model_mse[i:i + B, h] = mse_np(res.frames, fut[:, h])
            if i == 0:
                strip.append(res.frames[: cfg.grid_rows])
            copy_mse[i:i + B, h] = mse_np(ctx[:, -1], fut[:, h])
            mean_mse[i:i + B, h] = mse_np(mean_frame[None], fut[:, h])
            if h == 0 and sim.warps:
                warp_mse[i:i + B] = mse_np(warp_copy(bundle.dit, ctx[:, -1], _step_of(fut_a, 0)), fut[:, 0])
    n = (len(starts) // B) * B
    model_mse, copy_mse, mean_mse = model_mse[:n], copy_mse[:n], mean_mse[:n]
    model_psnr, copy_psnr, mean_psnr = psnr_of_mse(model_mse), psnr_of_mse(copy_mse), psnr_of_mse(mean_mse)
    curve = {h: {"model": float(model_psnr[:, h - 1].mean()), "copy_context": float(copy_psnr[:, h - 1].mean()),
                 "mean_frame": float(mean_psnr[:, h - 1].mean()),
                 "model_pooled": float(psnr_of_mse(model_mse[:, h - 1].mean())),
                 "copy_context_pooled": float(psnr_of_mse(copy_mse[:, h - 1].mean())),
                 "mean_frame_pooled": float(psnr_of_mse(mean_mse[:, h - 1].mean()))}
             for h in range(1, H + 1)}
    result = {
        "env": cfg.env, "bundle": str(bundle.path), "windows": n, "episodes": len(eps), "context_frames": W,
        "sampling_steps": sim.steps,
        "inference": sim.settings(),
        "next_frame_psnr": {"model": curve[1]["model"], "copy_last": curve[1]["copy_context"],
                            "gain_db": curve[1]["model"] - curve[1]["copy_context"],
                            "pooled": {"model": curve[1]["model_pooled"], "copy_last": curve[1]["copy_context_pooled"],
                                       "gain_db": curve[1]["model_pooled"] - curve[1]["copy_context_pooled"]},
                            "identical_frames": int((copy_mse[:, 0] == 0).sum()),
                            # per window, in window order: which frames drive the per-frame mean (an exact copy
                            # scores 148 dB)
                            "per_window": {"model": model_psnr[:, 0].tolist(), "copy_last": copy_psnr[:, 0].tolist(),
                                           "start": [list(map(int, st)) for st in starts[:n]]}},
        **({"warp_copy_next_frame_psnr": {"mean": float(psnr_of_mse(warp_mse[:n]).mean()),
                                          "pooled": float(psnr_of_mse(warp_mse[:n].mean()))}} if sim.warps else {}),
        "rollout_psnr": {str(h): curve[h] for h in horizons},
        "rollout_curve": {str(h): v for h, v in curve.items()},
        **heads_eval(cfg, bundle, eps),
    }
    print(f"\nheld-out: {len(eps)} episodes, {n} windows, context {W} frames, {sim.steps} sampling steps")
    nf = result["next_frame_psnr"]
    print(f"next frame PSNR, mean per frame: model {nf['model']:.2f} dB | copy-last {nf['copy_last']:.2f} dB "
          f"| gain {nf['gain_db']:+.2f} dB ({nf['identical_frames']} of {n} real next frames equal the last one)")
    print(f"next frame PSNR, pooled MSE:     model {nf['pooled']['model']:.2f} dB | copy-last "
          f"{nf['pooled']['copy_last']:.2f} dB | gain {nf['pooled']['gain_db']:+.2f} dB")
    if sim.warps:
        wc = result["warp_copy_next_frame_psnr"]
        print(f"next frame PSNR, last frame moved by the camera (the model's warp, no model): mean per frame "
              f"{wc['mean']:.2f} dB, pooled {wc['pooled']:.2f} dB")
    print("rollout PSNR by horizon, mean per frame (model | copy-context | mean frame) and pooled MSE (the same):")
    for h in horizons:
        c = curve[h]
        print(f"  {h:>3d}: {c['model']:6.2f} | {c['copy_context']:6.2f} | {c['mean_frame']:6.2f}    "
              f"{c['model_pooled']:6.2f} | {c['copy_context_pooled']:6.2f} | {c['mean_frame_pooled']:6.2f}")
    f = lambda v: "n/a" if v is None else f"{v:.3f}"
    print(f"heads, on every held-out transition after {W} real frames ({result['head_transitions']}), read from the "
          f"frame the model makes: ")
    print(f"  reward_head: {result['reward_head']}")
    rv = result["reward_values"]
    if rv["mse"] is not None:
        print(f"  reward values: MSE {rv['mse']:.4g} (always the held-out mean: {rv['mean_baseline_mse']:.4g}), "
              f"correlation {f(rv['correlation'])}")
    th = result["termination_head"]
    print(f"  termination_head: {th['ends']} real ends, {th['expected_ends']:.2f} expected (each step ends with its "
          f"probability); expected recall {f(th['expected_recall'])}, expected precision "
          f"{f(th['expected_precision'])}, AUROC {f(th['auroc'])}; at threshold 0.5: {th['threshold_0.5']}")
    if "near_real_ends" in th:
        ne = th["near_real_ends"]
        print(f"    an end drawn in the {ne['window']} steps up to a real end: chance {f(ne['chance_per_end'])}; "
              f"expected ends elsewhere {f(ne['expected_ends_elsewhere_per_1000'])} per 1,000 steps")
    if cfg.following:
        result["following"] = following_eval(cfg, bundle, rng)
    if cfg.revisit and cfg.env == "minetest":
        result["revisit"] = revisit_eval(cfg, bundle, rng)
    steps = int(_opt(cfg, "stability_steps")) if cfg.stability else 0
    if steps:
        result["stability"] = stability_eval(cfg, bundle, eps, steps, int(_opt(cfg, "stability_block")))
    if cfg.out:
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.out).write_text(json.dumps(result, indent=1))
        print(f"written to {cfg.out}")
    if cfg.plot:
        _plot(curve, cfg.plot)
    if cfg.grid:
        _grid(strip_real, np.stack(strip, 1), cfg.grid)
    return result


def _grid(real, model, path, every: int = 4):
    """Rows: for each window, the real future frames above the model's open-loop frames (every `every` steps)."""
    import imageio.v2 as imageio

    idx = list(range(0, real.shape[1], every))
    rows = []
    for r, m in zip(real, model):
        rows += [np.concatenate(list(r[idx]), 1), np.concatenate(list(m[idx]), 1),
                 np.full((4, r.shape[2] * len(idx), 3), 255, np.uint8)]
    img = np.concatenate(rows, 0)
    img = img.repeat(2, 0).repeat(2, 1)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    imageio.imwrite(path, img)


def _plot(curve, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hs = sorted(curve)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(hs, [curve[h]["model"] for h in hs], label="worldsim model")
    ax.plot(hs, [curve[h]["copy_context"] for h in hs], "--", label="copy last context frame")
    ax.set_xlabel("horizon (steps, open loop)")
    ax.set_ylabel("PSNR (dB)")
    ax.set_xscale("log", base=2)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ---- action following ---------------------------------------------------------------------------------

CRAFTER_PROBE = {"noop": 0, "move_left": 1, "move_right": 2, "move_up": 3, "move_down": 4}


def _minetest_probe(deg: float) -> dict:
    from worldsim.envs import minerl_actions

    out = {}
    for name, cam in (("yaw_left", (0, -deg)), ("yaw_right", (0, deg)), ("pitch_up", (-deg, 0)),
                      ("pitch_down", (deg, 0))):
        a = minerl_actions.noop()
        a["camera"] = np.array(cam, np.float32)
        out[name] = a
    return out


def _gym_probe(spec: dict) -> dict | None:
    """Probe actions for a Gymnasium source's action space: every action of a Discrete space (up to 32), the
    low end, the middle and the high end of a Box; None where following is not defined (other spaces)."""
    from worldsim.model import spec_to_space

    space = spec_to_space(spec)
    if spec["type"] == "discrete" and spec["n"] <= 32:
        return {f"a{i}": i for i in range(spec["n"])}
    if spec["type"] == "box":
        return {"low": space.low.copy(), "middle": ((space.low + space.high) / 2).astype(np.float32),
                "high": space.high.copy()}
    return None


def probe_actions(cfg, env_info: dict | None = None) -> dict | None:
    """{name: action} of the following probe: Crafter's noop and moves, Minetest's four turns, or a Gymnasium
    source's (`_gym_probe`, from the bundle's `env_info`)."""
    if cfg.env == "crafter":
        return CRAFTER_PROBE
    if cfg.env == "minetest":
        return _minetest_probe(float(cfg.turn_degrees))
    return _gym_probe(env_info["action_space"])


def _real_probes(cfg, W: int, env_info: dict | None = None):
    """Yield (context frames (W,H,W,3), context actions, {name: action}, {name: real outcome frame}) from
    held-out real games driven by the explorer (a Gymnasium source: a random agent), one probe every
    `probe_every` steps."""
    from worldsim.agents import make_agent

    probe = probe_actions(cfg, env_info)
    if cfg.env == "crafter":
        from worldsim.envs.real_crafter import RealCrafterEnv
        env = RealCrafterEnv()
    elif cfg.env == "minetest":
        from worldsim.envs.real_minetest import RealMinetestEnv
        env = RealMinetestEnv()
    else:
        from worldsim.envs.gym_source import GymImageEnv
        env = GymImageEnv(cfg.env, size=env_info["frame_shape"][:2], **env_info.get("make_kwargs", {}))
    try:
        made, ep = 0, 0
        while True:
            agent = make_agent("random" if is_gym_source(cfg.env) else "explorer", env.action_space,
                               seed=cfg.seed + ep)
            obs, _ = env.reset(seed=int(cfg.seed) + 7919 * ep)
            agent.reset()
            frames, acts = [obs], []
            for t in range(int(_opt(cfg, "max_steps"))):
                a = agent.act(obs)
                obs, _, term, trunc, _ = env.step(a)
                frames.append(obs), acts.append(a)
                if term or trunc:
                    break
                if len(frames) >= W and t % int(cfg.probe_every) == int(cfg.probe_every) - 1:
                    if cfg.env == "minetest":
                        # Minetest runs on in real time and keeps momentum: the probes are taken one after
                        # another, so a moving player would make each later outcome differ by its drift, not
                        # only by its turn (outcomes then looked more and more unlike any prediction, in
                        # probe order). Stand still first, as the revisit probe does.
                        from worldsim.envs import minerl_actions
                        for _ in range(int(cfg.settle)):
                            frames.append(env.step(minerl_actions.noop())[0]), acts.append(minerl_actions.noop())
                    ctx, ctx_a = np.stack(frames[-W:]), acts[len(acts) - (W - 1):]
                    outcomes = {}
                    for name, pa in probe.items():
                        if cfg.env == "crafter":  # a clone of the running game takes the action
                            outcomes[name] = copy.deepcopy(env.game).step(pa)[0]
                        elif is_gym_source(cfg.env):
                            outcomes[name] = env.clone().step(pa)[0]
                        else:  # turn, grab, turn back (the game runs on in real time meanwhile)
                            outcomes[name] = env.step(pa)[0]
                            back = dict(pa, camera=-pa["camera"])
                            obs = env.step(back)[0]
                            frames += [outcomes[name], obs]  # the context of later probes stays true
                            acts += [pa, back]
                    yield ctx, ctx_a, probe, outcomes, len(frames) - 1  # the game step of ctx's last frame
                    made += 1
                    if made >= int(cfg.probes):
                        return
            ep += 1
    finally:
        env.close()


def _probe_key(cfg, W: int) -> str:
    keys = ("env", "seed", "probes", "probe_every", "max_steps", "settle", "turn_degrees")
    return json.dumps({"W": W, **{k: _opt(cfg, k) if k == "max_steps" else cfg.get(k) for k in keys}}, sort_keys=True)


def cached_probes(cfg, W: int, need_clock: bool = False, env_info: dict | None = None) -> list:
    """The real probes of `_real_probes`, kept in CACHE_DIR/following_probes.npz (keyed by the probe settings):
    (context frames, context actions, probe, outcomes, the game step of the last context frame or None).

    Real Crafter did not replay the same probes from run to run (even with PYTHONHASHSEED=0): two runs of
    the same settings counted 430 and 444 outcomes and gave following figures 2 points apart with the same
    model. Probing once and keeping the probes on disk makes two models' figures comparable (Minetest's
    real-time probes take minutes to make as well). `probe_cache=false` probes afresh; an unreadable or
    stale file is probed again, with a warning when unreadable. A file written before probes kept their game
    step (clock) serves models without a clock; need_clock (a model with one) probes again then."""
    import warnings

    from worldsim.data import atomic_write_bytes

    path, key = Path(_opt(cfg, "cache_dir")) / "following_probes.npz", _probe_key(cfg, W)
    if cfg.get("probe_cache", True) and path.exists():
        try:
            with np.load(path) as z:
                if str(z["key"]) == key and ("clock" in z.files or not need_clock):
                    n, probe = len(z["ctx"]), probe_actions(cfg, env_info)
                    acts = z["action"] if "action" in z.files else \
                        {k[len("action$"):]: z[k] for k in z.files if k.startswith("action$")}
                    clock = z["clock"] if "clock" in z.files else [None] * n
                    return [(z["ctx"][i], index_actions(acts, i), probe, dict(zip(probe, z["outcomes"][i])),
                             None if clock[i] is None else int(clock[i])) for i in range(n)]
        except Exception as e:  # a damaged cache costs a new probe run, never the eval
            warnings.warn(f"following probe cache {path} unreadable ({e}); probing the real game again")
    probes = [(c, stack_actions(a), p, o, t) for c, a, p, o, t in
              tqdm(_real_probes(cfg, W, env_info), total=int(cfg.probes), desc="real probes")]
    if cfg.get("probe_cache", True) and probes:
        arrays = {"key": np.array(key), "ctx": np.stack([p[0] for p in probes]),
                  "outcomes": np.stack([np.stack([p[3][n] for n in p[2]]) for p in probes]),
                  "clock": np.array([p[4] for p in probes], np.int64)}
        a = stack_actions([p[1] for p in probes])
        arrays.update({f"action${k}": v for k, v in a.items()} if isinstance(a, dict) else {"action": a})
        atomic_write_bytes(path, lambda f: np.savez_compressed(f, **arrays))
    return probes


def warp_copy(dit, frames: np.ndarray, actions) -> np.ndarray:
    """A warp model's no-model baseline: frames (B, H, W, 3) uint8 moved by the actions' warp key as the
    model's warp input moves latents (its fitted matrix: a shift, or the camera rotation it implies), in
    pixels (bilinear, edges repeated)."""
    dev = dit.warp_shift.device
    acts = {k: torch.as_tensor(np.asarray(v), device=dev)[:, None] for k, v in actions.items()}  # one step each
    x = torch.as_tensor(frames, device=dev).permute(0, 3, 1, 2).float()[:, None]
    out = dit.warped_previous(x, acts, torch.ones(len(frames), 1, dtype=torch.bool, device=dev))[:, 0]
    return out.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def probe_steps(cfg, sim, rng, names: list, W: int, desc: str | None = None):
    """The cached following probes (`cached_probes`) run through the simulator `sim` (one row per probe action):
    every row starts from the probe's context with the same noise and takes its action with the same step
    noise, so only the action differs. Yields (context frames, context actions, probe, the real outcomes
    (B, H, W, 3) uint8 in `names` order, the generated frames)."""
    B, shape = len(names), sim.latent_shape
    probes = cached_probes(cfg, W, need_clock=bool(sim.dit.config.clock_period) or sim.canvas_model, env_info=sim.bundle.env)
    for ctx, ctx_a, probe, outcomes, clock in (tqdm(probes, desc=desc) if desc else probes):
        noise = rng.standard_normal((1, W, *shape)).repeat(B, 0)
        sim.reset(range(B), np.repeat(ctx[None], B, 0), stack_actions([ctx_a] * B), noise,
                  None if clock is None else [clock] * B)
        step_noise = rng.standard_normal((1, *shape)).repeat(B, 0)
        gen = sim.step(stack_actions([probe[n] for n in names]), step_noise, np.zeros((B, *shape))).frames
        yield ctx, ctx_a, probe, np.stack([outcomes[n] for n in names]), gen


def distinct_outcome(real: np.ndarray, i: int, differ: float = 0.0) -> bool:
    """Whether probe action i's real outcome differs from every other action's (mean absolute difference over
    `differ` grey levels): only those are counted, a frame cannot tell apart outcomes that are the same."""
    return min(np.abs(real[i].astype(float) - real[j]).mean() for j in range(len(real)) if j != i) > differ


def following_eval(cfg, bundle, rng) -> dict:
    """Share of probe actions whose generated frame is closest (PSNR) to that action's real outcome."""
    W = bundle.dit.config.context_frames
    differ = float(_opt(cfg, "differ"))
    probe = probe_actions(cfg, bundle.env)
    skipped = None if probe is not None else \
        f"not defined for the action space {bundle.env['action_space']['type']} (Discrete and Box only)"
    if is_gym_source(cfg.env) and skipped is None:  # real outcomes need a copy of the running env
        from worldsim.envs.gym_source import GymImageEnv
        env = GymImageEnv(cfg.env, size=bundle.env["frame_shape"][:2], **bundle.env.get("make_kwargs", {}))
        try:
            env.reset(seed=int(cfg.seed))
            env.clone().close()
        except ValueError as e:
            skipped = str(e)
        finally:
            env.close()
    if skipped:
        print(f"action following: skipped, {skipped}")
        return {"accuracy": None, "counted": 0, "probes": 0, "skipped": skipped}
    names = list(probe)
    sim = WorldSimulator(bundle, len(names), cfg.sampling_steps, **_sim_kw(cfg))
    hits = {n: 0 for n in names}
    counted = {n: 0 for n in names}
    # confusion[taken][closest]: whose real outcome the frame generated for `taken` was closest to
    confusion = {n: {m: 0 for m in names} for n in names}
    # Crafter: move probes' hits split by whether the move repeats the context's last action (the explorer holds moves,
    # so a model that continues the context's motion instead of reading the action scores on repeats only)
    repeat = {"repeat": [0, 0], "change": [0, 0]}
    probes, warp_hits = 0, 0
    for ctx, ctx_a, probe, real, gen in probe_steps(cfg, sim, rng, names, W, desc="action following"):
        B = len(names)
        shifted = warp_copy(bundle.dit, np.repeat(ctx[-1:], B, 0), stack_actions([probe[n] for n in names])) \
            if sim.warps else None
        probes += 1
        for i, n in enumerate(names):
            if not distinct_outcome(real, i, differ):
                continue  # this action's real outcome is not distinguishable from another's: not counted
            counted[n] += 1
            closest = int(np.argmax(psnr_np(gen[i][None], real)))
            hits[n] += int(closest == i)
            confusion[n][names[closest]] += 1
            if shifted is not None:
                warp_hits += int(np.argmax(psnr_np(shifted[i][None], real)) == i)
            if cfg.env == "crafter" and n != "noop":
                r = repeat["repeat" if int(np.asarray(ctx_a[-1])) == int(probe[n]) else "change"]
                r[0], r[1] = r[0] + int(closest == i), r[1] + 1
    total = sum(counted.values())
    res = {"accuracy": sum(hits.values()) / total if total else None, "counted": total, "probes": probes,
           "per_action": {n: {"accuracy": hits[n] / counted[n] if counted[n] else None, "counted": counted[n]}
                          for n in names}, "chance": 1 / len(names), "confusion": confusion}
    if sim.warps:
        res["warp_copy_accuracy"] = warp_hits / total if total else None
    if cfg.env == "crafter":
        res["by_context_action"] = {k: {"accuracy": h / c if c else None, "counted": c} for k, (h, c) in repeat.items()}
    print(f"action following: {res['accuracy'] if total else float('nan'):.3f} over {total} counted "
          f"(chance {res['chance']:.2f}): " + ", ".join(f"{n} {v['accuracy'] if v['accuracy'] is not None else float('nan'):.2f}"
                                                       for n, v in res["per_action"].items()))
    if "by_context_action" in res:
        print("  move probes repeating the context's last action / another: " + " / ".join(
            f"{v['accuracy'] if v['accuracy'] is not None else float('nan'):.3f} of {v['counted']}"
            for v in res["by_context_action"].values()))
    if sim.warps and total:
        print(f"  the last frame moved by the camera (the model's warp, no model): {res['warp_copy_accuracy']:.3f}")
    print("  closest real outcome, by action taken: " + "; ".join(
        f"{n} -> " + " ".join(f"{m}:{c}" for m, c in row.items() if c) for n, row in confusion.items()))
    return res


# ---- revisit consistency (Minetest) -------------------------------------------------------------------


def revisit_eval(cfg, bundle, rng) -> dict:
    """Turn a full circle in `revisit_turns` equal yaw steps from a real context, real game and model alike."""
    from worldsim.agents import make_agent
    from worldsim.envs import minerl_actions
    from worldsim.envs.real_minetest import RealMinetestEnv

    W, n = bundle.dit.config.context_frames, int(cfg.revisit_turns)
    turn = minerl_actions.noop()
    turn["camera"] = np.array([0.0, 360.0 / n], np.float32)
    sim = WorldSimulator(bundle, 1, cfg.sampling_steps, **_sim_kw(cfg))
    shape = sim.latent_shape
    rows = []
    env = RealMinetestEnv()
    try:
        for k in range(int(cfg.revisit_trials)):
            agent = make_agent("explorer", env.action_space, seed=cfg.seed + k)
            obs, _ = env.reset(seed=int(cfg.seed) + 104729 * (k + 1))
            for _ in range(8):  # walk somewhere
                obs = env.step(agent.act(obs))[0]
            # Then stand still long enough to stop: Minetest keeps momentum (sprint, a jump's fall), and a
            # player still drifting would not return to the first view even in the real game.
            frames = [obs]
            for _ in range(int(cfg.settle) + W - 1):
                frames.append(env.step(minerl_actions.noop())[0])
            frames, acts = frames[-W:], [minerl_actions.noop() for _ in range(W - 1)]
            real = [env.step(turn)[0] for _ in range(n)]
            # one still tick more before the return is judged (added when a stalled game could show a turn a
            # tick late; the env now waits for the game to draw each tick's input, so this is only a margin)
            real[-1] = env.step(minerl_actions.noop())[0]
            sim.reset([0], np.stack(frames)[None], stack_actions([stack_actions(acts)]), rng.standard_normal((1, W, *shape)))
            model = [sim.step(stack_actions([turn]), rng.standard_normal((1, *shape)),
                              rng.standard_normal((1, *shape))).frames[0] for _ in range(n)]
            first = frames[-1]
            rows.append({"real_return_psnr": float(psnr_np(real[-1], first)),
                         "model_return_psnr": float(psnr_np(model[-1], first)),
                         "model_half_turn_psnr": float(psnr_np(model[n // 2 - 1], first)),
                         "real_half_turn_psnr": float(psnr_np(real[n // 2 - 1], first))})
    finally:
        env.close()
    res = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    res.update({"trials": len(rows), "turns": n})
    print(f"revisit after a 360 degree turn ({n} steps): model last vs first {res['model_return_psnr']:.2f} dB, "
          f"real {res['real_return_psnr']:.2f} dB; half-way views: model {res['model_half_turn_psnr']:.2f}, "
          f"real {res['real_half_turn_psnr']:.2f} dB")
    return res


# ---- stability over a long rollout --------------------------------------------------------------------


def _frame_bank(eps, n: int, rng) -> np.ndarray:
    allf = [(e, t) for e, ep in enumerate(eps) for t in range(len(ep["frames"]))]
    pick = rng.choice(len(allf), size=min(n, len(allf)), replace=False)
    return np.stack([eps[allf[i][0]]["frames"][allf[i][1]] for i in pick])


def nearest_psnr(frames: np.ndarray, bank: np.ndarray, chunk: int = 256) -> np.ndarray:
    """Per frame, the PSNR to its nearest neighbour (smallest MSE) in a bank of real frames."""
    b = torch.as_tensor(bank.reshape(len(bank), -1), dtype=torch.float32)
    bn = (b * b).sum(1)
    out = []
    for i in range(0, len(frames), chunk):
        f = torch.as_tensor(frames[i:i + chunk].reshape(len(frames[i:i + chunk]), -1), dtype=torch.float32)
        d = (f * f).sum(1)[:, None] + bn[None] - 2 * f @ b.T  # squared distances, all pairs
        mse = d.min(1).values.clamp_min(1e-6) / b.shape[1]
        out.append(10 * torch.log10(255.0**2 / mse))
    return torch.cat(out).numpy()


def stability_eval(cfg, bundle, eps, steps: int, block: int) -> dict:
    import gymnasium as gym

    import worldsim  # noqa: F401  (registers the envs)
    from worldsim.agents import make_agent
    from worldsim.bench import learned_env_id, rss_mib

    rng = np.random.default_rng(cfg.seed + 1)
    half = len(eps) // 2 or 1
    bank = _frame_bank(eps[:half], int(cfg.bank_frames), rng)  # real frames the measure compares against
    real_ref = _frame_bank(eps[half:] or eps, int(cfg.bank_frames) // 4, rng)
    env_id = learned_env_id(cfg.env)
    env = gym.make(env_id, bundle=str(bundle.path), device=cfg.device, sampling_steps=cfg.sampling_steps,
                   **_sim_kw(cfg), termination_threshold=2.0, horizon=steps + 1)  # one unbroken rollout
    agent = make_agent("random" if is_gym_source(cfg.env) else "explorer", env.action_space, seed=cfg.seed)
    obs, _ = env.reset(seed=int(cfg.seed))
    agent.reset()
    frames = np.full((steps, *obs.shape), 0, np.uint8)  # written now, so filling it does not grow the RSS
    # with the env's light the world's change is measured on the frames before it: the light moves every frame a
    # little, so on lit frames a world standing still would not count as unchanged (docs/results.md, the light)
    lit = bool(getattr(env.unwrapped.sim, "light", False))
    if lit and not all("canvas" in ep for ep in eps):
        env.close()
        raise ValueError("the stability of a model under the env's light is measured on its canvases, against the "
                         "held-out episodes' own: collect them with canvas=true (worldsim eval's collection does)")
    canvases = np.full((steps, *obs.shape), 0, np.uint8) if lit else None
    end_prob = np.zeros(steps)  # the termination head's probability each step: how often the env would end
    rewards = np.zeros(steps)  # the env's rewards (the reward floor applied): the return an agent would see
    rss = []  # resident memory at the end of each block: the env's memory must stay flat
    t0 = time.perf_counter()
    for t in tqdm(range(steps), desc="stability rollout", unit="step"):
        obs, rewards[t], _, _, info = env.step(agent.act(obs))
        frames[t], end_prob[t] = obs, info["terminated_prob"]
        if lit:
            canvases[t] = info["canvas"]
        if (t + 1) % block == 0 or t + 1 == steps:
            rss.append(rss_mib())
    sps = steps / (time.perf_counter() - t0)
    env.close()
    nn = nearest_psnr(frames, bank)
    moved = canvases if lit else frames  # what the world did: canvases under the env's light
    change = np.abs(np.diff(moved.astype(np.int16), axis=0)).mean(axis=(1, 2, 3))
    change = np.concatenate([[change[0] if len(change) else 0.0], change])
    spread = frames.reshape(steps, -1, 3).std(axis=1).mean(axis=1)
    ref_nn = nearest_psnr(real_ref, bank)
    key = "canvas" if lit else "frames"
    real_change = [np.abs(np.diff(ep[key].astype(np.int16), axis=0)).mean(axis=(1, 2, 3)) for ep in eps]
    ref_change = np.mean([c.mean() for c in real_change])  # per episode, then over episodes
    # the real game's own unchanged steps (blocked moves, noop)
    ref_frozen = float((np.concatenate(real_change) < 0.05).mean())
    ref_spread = float(real_ref.reshape(len(real_ref), -1, 3).std(axis=1).mean())
    ref_ends = 1000 * sum(int(ep["terminated"].sum()) for ep in eps) / sum(len(ep["terminated"]) for ep in eps)
    ref_return = 1000 * sum(float(ep["rewards"].sum()) for ep in eps) / sum(len(ep["rewards"]) for ep in eps)
    blocks = []
    for s in range(0, steps, block):
        sl = slice(s, min(s + block, steps))
        blocks.append({"steps": [s + 1, sl.stop], "nn_psnr": float(nn[sl].mean()), "change": float(change[sl].mean()),
                       "spread": float(spread[sl].mean()), "frozen_share": float((change[sl] < 0.05).mean()),
                       "expected_ends_per_1000": float(end_prob[sl].mean() * 1000),
                       "return_per_1000": float(rewards[sl].mean() * 1000),
                       "rss_mib": rss[len(blocks)]})
    res = {"steps": steps, "block": block, "steps_per_s": sps, "blocks": blocks, "change_of": key,
           "real_reference": {"nn_psnr": float(ref_nn.mean()), "change": float(ref_change), "spread": ref_spread,
                              "frozen_share": ref_frozen, "ends_per_1000": ref_ends, "return_per_1000": ref_return},
           "bank_frames": len(bank)}
    print(f"stability over {steps} steps (change and frozen on {'canvases' if lit else 'frames'}; per {block}; "
          f"real held-out frames: nn-PSNR {ref_nn.mean():.2f} dB, "
          f"change {ref_change:.2f}, spread {ref_spread:.1f}, frozen {100 * ref_frozen:.1f}%, ends {ref_ends:.1f} and "
          f"return {ref_return:.1f} per 1000 steps):")
    for b in blocks:
        print(f"  steps {b['steps'][0]:>6d}-{b['steps'][1]:<6d} nn-PSNR {b['nn_psnr']:6.2f} dB  change {b['change']:5.2f}  "
              f"spread {b['spread']:5.1f}  frozen {100 * b['frozen_share']:4.1f}%  expected ends "
              f"{b['expected_ends_per_1000']:5.2f} per 1000  return {b['return_per_1000']:6.1f} per 1000  "
              f"RSS {b['rss_mib']:.1f} MiB")
    if cfg.stability_strip:
        _strip(frames, block, cfg.stability_strip)
        res["strip"] = str(cfg.stability_strip)
    if cfg.stability_plot:
        _stability_plot(nn, change, block, res["real_reference"], cfg.stability_plot)
    return res


def _strip(frames, every, path):
    import imageio.v2 as imageio

    idx = list(range(every - 1, len(frames), every))
    img = np.concatenate([np.pad(frames[i], ((0, 0), (0, 2), (0, 0)), constant_values=255) for i in idx], 1)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    imageio.imwrite(path, img.repeat(2, 0).repeat(2, 1))


def _stability_plot(nn, change, block, ref, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = max(1, block // 10)
    smooth = np.convolve(nn, np.ones(k) / k, mode="valid")
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.2))
    ax[0].plot(np.arange(len(smooth)) + k, smooth, label="model rollout")
    ax[0].axhline(ref["nn_psnr"], ls="--", c="k", label="real held-out frames")
    ax[0].set_xlabel("step"), ax[0].set_ylabel("nearest-real-frame PSNR (dB)"), ax[0].legend()
    sc = np.convolve(change, np.ones(k) / k, mode="valid")
    ax[1].plot(np.arange(len(sc)) + k, sc, label="model rollout")
    ax[1].axhline(ref["change"], ls="--", c="k", label="real")
    ax[1].set_xlabel("step"), ax[1].set_ylabel("mean |frame - previous|"), ax[1].legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
