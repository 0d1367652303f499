"""`worldsim eval`: the model against real Crafter on held-out worlds, each figure beside its baseline.

- Next frame with real context: PSNR of the generated frame vs the real next frame, beside copy-the-last-frame.
- Open-loop rollout from real context driven by the real actions: PSNR at each horizon, beside
  copy-the-last-context-frame.
- Reward / termination heads: precision and recall over the held-out transitions (heads read the model's
  own next frame, as in the env).

Held-out episodes come from `data` (its "test" split), or are collected fresh from world seeds far from any
used in training (`seed`), with the movement-heavy scripted explorer.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from worldsim.data import load_episodes
from worldsim.simulator import WorldSimulator, load_bundle


def psnr_np(a, b):
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean(axis=(-3, -2, -1))
    return 10 * np.log10(255.0**2 / np.maximum(mse, 1e-10))


def heldout_episodes(cfg):
    if cfg.data:
        eps = load_episodes(Path(cfg.data), split="test")
        if not eps:
            raise ValueError(f"{cfg.data} has no 'test' split episodes")
        return eps
    from worldsim.collect import collect

    out = Path(cfg.cache_dir)
    collect(OmegaConf.create({"env": "crafter", "out": str(out), "episodes": cfg.episodes, "workers": cfg.workers,
                              "max_steps": cfg.max_steps, "agent": "explorer", "seed": cfg.seed, "test_every": 1,
                              "size": 64}))
    return load_episodes(out, split="test")


def _precision_recall(pred, true):
    pred, true = np.asarray(pred, bool), np.asarray(true, bool)
    tp = int((pred & true).sum())
    return {"precision": tp / max(int(pred.sum()), 1) if pred.sum() else None,
            "recall": tp / max(int(true.sum()), 1) if true.sum() else None,
            "positives": int(true.sum()), "predicted": int(pred.sum())}


@torch.no_grad()
def evaluate(cfg):
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    from worldsim import DEFAULT_CRAFTER_BUNDLE

    bundle = load_bundle(str(cfg.bundle or DEFAULT_CRAFTER_BUNDLE), cfg.device)
    eps = heldout_episodes(cfg)
    W = bundle.dit.config.context_frames
    H = max(cfg.horizons)
    rng = np.random.default_rng(cfg.seed)
    # windows: W real context frames, then H real future frames and the actions between
    starts = [(e, s) for e, ep in enumerate(eps) for s in range(0, len(ep["frames"]) - W - H, cfg.stride)]
    if not starts:
        raise ValueError(f"held-out episodes are shorter than context ({W}) + horizon ({H}) frames")
    rng.shuffle(starts)
    starts = starts[: cfg.windows]
    B = min(cfg.batch_size, len(starts))
    sim = WorldSimulator(bundle, B, cfg.sampling_steps)
    shape = sim.latent_shape
    model_psnr, copy_psnr = np.zeros((len(starts), H)), np.zeros((len(starts), H))
    rew_pred, rew_true, term_pred, term_true = [], [], [], []
    strip, strip_real = [], None
    for i in tqdm(range(0, len(starts) - B + 1, B), desc="eval rollouts", unit="batch"):
        chunk = starts[i:i + B]
        ctx = np.stack([eps[e]["frames"][s:s + W] for e, s in chunk])
        ctx_a = np.stack([eps[e]["actions"][s:s + W - 1] for e, s in chunk])
        fut = np.stack([eps[e]["frames"][s + W:s + W + H] for e, s in chunk])
        fut_a = np.stack([eps[e]["actions"][s + W - 1:s + W - 1 + H] for e, s in chunk])
        fut_r = np.stack([eps[e]["rewards"][s + W - 1:s + W - 1 + H] for e, s in chunk])
        fut_t = np.stack([eps[e]["terminated"][s + W - 1:s + W - 1 + H] for e, s in chunk])
        sim.reset(range(B), ctx, ctx_a, rng.standard_normal((B, W, *shape)))
        if i == 0:
            strip_real = fut[: cfg.grid_rows]
        for h in range(H):
            res = sim.step(fut_a[:, h], rng.standard_normal((B, *shape)), rng.standard_normal((B, *shape)))
            model_psnr[i:i + B, h] = psnr_np(res.frames, fut[:, h])
            if i == 0:
                strip.append(res.frames[: cfg.grid_rows])
            copy_psnr[i:i + B, h] = psnr_np(ctx[:, -1], fut[:, h])
            if h == 0:  # heads on the first generated frame (real context up to it)
                rew_pred += list(res.reward > 0.5)
                rew_true += list(fut_r[:, 0] > 0.5)
                term_pred += list(res.terminated_prob > 0.5)
                term_true += list(fut_t[:, 0])
    n = (len(starts) // B) * B
    model_psnr, copy_psnr = model_psnr[:n], copy_psnr[:n]
    curve = {h: {"model": float(model_psnr[:, h - 1].mean()), "copy_context": float(copy_psnr[:, h - 1].mean())}
             for h in range(1, H + 1)}
    result = {
        "bundle": str(bundle.path), "windows": n, "episodes": len(eps), "context_frames": W,
        "sampling_steps": sim.steps,
        "next_frame_psnr": {"model": curve[1]["model"], "copy_last": curve[1]["copy_context"],
                            "gain_db": curve[1]["model"] - curve[1]["copy_context"]},
        "rollout_psnr": {str(h): curve[h] for h in cfg.horizons},
        "rollout_curve": {str(h): v for h, v in curve.items()},
        "reward_head": _precision_recall(rew_pred, rew_true),
        "termination_head": _precision_recall(term_pred, term_true),
    }
    print(f"\nheld-out: {len(eps)} episodes, {n} windows, context {W} frames, {sim.steps} sampling steps")
    print(f"next frame PSNR: model {curve[1]['model']:.2f} dB | copy-last {curve[1]['copy_context']:.2f} dB "
          f"| gain {result['next_frame_psnr']['gain_db']:+.2f} dB")
    print("rollout PSNR by horizon (model | copy-context):")
    for h in cfg.horizons:
        print(f"  {h:>3d}: {curve[h]['model']:6.2f} | {curve[h]['copy_context']:6.2f}")
    for k in ("reward_head", "termination_head"):
        print(f"{k}: {result[k]}")
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
        rows += [np.concatenate(list(r[idx]), 1), np.concatenate(list(m[idx]), 1), np.full((4, 64 * len(idx), 3), 255, np.uint8)]
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
