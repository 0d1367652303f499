"""`worldsim collect`: roll out agents in the real game in several processes and write episodes to disk.

Resumable: episodes already on disk (and readable) are kept and not collected again. World seeds are
`seed + index`; every `test_every`-th index goes to the held-out "test" split (worlds never trained on).
"""
from __future__ import annotations

import collections
import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from worldsim.data import episode_path, load_manifest, read_episode, save_manifest, write_episode

ENVS = {"crafter": "worldsim.envs.real_crafter:RealCrafterEnv"}


def _make_real_env(name: str, **kw):
    if name not in ENVS:
        raise ValueError(f"unknown env {name!r} for collect; choose one of {sorted(ENVS)}")
    mod, cls = ENVS[name].split(":")
    return getattr(__import__(mod, fromlist=[cls]), cls)(**kw)


def _rollout(job: dict) -> dict:
    """Worker: one episode in the real game, written atomically. Returns its manifest entry."""
    from worldsim.agents import make_agent

    env = _make_real_env(job["env"], size=job["size"], length=job["max_steps"])
    agent = make_agent(job["agent"], env.action_space, seed=job["world_seed"])
    obs, info = env.reset(seed=job["world_seed"])
    agent.reset()
    frames, actions, rewards, terms = [obs], [], [], []
    achievements = {}
    while True:
        a = agent.act(obs)
        obs, r, terminated, truncated, info = env.step(a)
        frames.append(obs), actions.append(int(a)), rewards.append(r), terms.append(terminated)
        achievements = info.get("achievements", achievements)
        if terminated or truncated:
            break
    path = Path(job["out"]) / job["file"]
    write_episode(path, np.stack(frames), np.array(actions, np.int64), rewards, terms, seed=job["world_seed"])
    return {"file": job["file"], "index": job["index"], "split": job["split"], "seed": job["world_seed"],
            "agent": job["agent"], "steps": len(actions), "terminated": bool(terms[-1]),
            "return": float(np.sum(rewards)), "action_counts": np.bincount(actions, minlength=env.action_space.n).tolist(),
            "achievements": {k: int(v) for k, v in achievements.items() if v}}


def _readable(path: Path) -> bool:
    try:
        read_episode(path)
        return True
    except (ValueError, FileNotFoundError) as e:
        if path.exists():
            print(f"warning: {e}; collecting it again")
        return False


def _entry_from_file(root: Path, index: int, seed: int, split: str) -> dict | None:
    path = episode_path(root, index)
    if not path.exists():
        return None
    try:
        ep = read_episode(path)
    except ValueError as e:
        print(f"warning: {e}; collecting it again")
        return None
    acts = ep["actions"]
    return {"file": str(path.relative_to(root)), "index": index, "split": split, "seed": ep["seed"], "agent": "?",
            "steps": len(acts), "terminated": bool(ep["terminated"][-1]) if len(acts) else False,
            "return": float(ep["rewards"].sum()), "action_counts": np.bincount(acts.ravel(), minlength=17).tolist(),
            "achievements": {}}


def print_histograms(manifest: dict, action_names) -> None:
    eps = manifest["episodes"]
    counts = np.sum([e["action_counts"] for e in eps], axis=0) if eps else np.zeros(len(action_names))
    total = max(int(counts.sum()), 1)
    print(f"\n{len(eps)} episodes, {total} steps, {sum(e['terminated'] for e in eps)} deaths")
    print("actions:")
    for name, c in zip(action_names, counts):
        print(f"  {name:<20s} {int(c):>8d} {100 * c / total:5.1f}% {'#' * int(60 * c / total)}")
    ach = collections.Counter()
    for e in eps:
        ach.update(e.get("achievements", {}).keys())
    print("achievements (episodes that unlocked each):")
    for name, c in sorted(ach.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<20s} {c:>6d} {'#' * int(40 * c / max(len(eps), 1))}")


def collect(cfg) -> dict:
    from worldsim.envs.real_crafter import ACTION_MEANINGS

    root = Path(cfg.out)
    root.mkdir(parents=True, exist_ok=True)
    manifest = load_manifest(root)
    manifest["env"] = {"name": cfg.env, "frame_shape": [cfg.size, cfg.size, 3], "action_space": {"type": "discrete", "n": 17},
                       "action_meanings": list(ACTION_MEANINGS)}
    have = {e["index"]: e for e in manifest["episodes"] if _readable(episode_path(root, e["index"]))}
    jobs = []
    for i in range(cfg.episodes):
        split = "test" if cfg.test_every and i % cfg.test_every == cfg.test_every - 1 else "train"
        seed = int(cfg.seed) + i
        if i not in have:
            entry = _entry_from_file(root, i, seed, split)  # on disk but not in the manifest (killed job)
            if entry is not None:
                have[i] = entry
                continue
            jobs.append({"env": cfg.env, "size": cfg.size, "max_steps": cfg.max_steps, "agent": cfg.agent,
                         "world_seed": seed, "index": i, "split": split, "out": str(root),
                         "file": str(episode_path(root, i).relative_to(root))})
    if have:
        print(f"resuming: {len(have)} episodes already on disk, {len(jobs)} to collect")
    manifest["episodes"] = sorted(have.values(), key=lambda e: e["index"])
    save_manifest(root, manifest)
    t0 = time.time()
    # World generation depends on PYTHONHASHSEED: fix it so episodes are reproducible. Spawned workers start
    # a fresh interpreter, which reads it from the environment.
    os.environ.setdefault("PYTHONHASHSEED", "0")
    steps = 0
    if jobs:
        workers = max(1, min(int(cfg.workers), len(jobs)))
        ctx = mp.get_context("spawn")
        with ctx.Pool(workers) as pool, tqdm(total=len(jobs), desc="collect", unit="ep") as bar:
            for entry in pool.imap_unordered(_rollout, jobs):
                have[entry["index"]] = entry
                manifest["episodes"] = sorted(have.values(), key=lambda e: e["index"])
                save_manifest(root, manifest)
                steps += entry["steps"]
                bar.update(1)
                bar.set_postfix(steps=steps, steps_per_s=f"{steps / (time.time() - t0):.0f}")
    print_histograms(manifest, ACTION_MEANINGS)
    return manifest
