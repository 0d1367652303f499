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

import gymnasium as gym
import numpy as np
from tqdm import tqdm

from worldsim.data import episode_path, load_manifest, num_steps, read_episode, save_manifest, write_episode

ENVS = {"crafter": "worldsim.envs.real_crafter:RealCrafterEnv",
        "minetest": "worldsim.envs.real_minetest:RealMinetestEnv"}
DEFAULT_SIZE = {"crafter": 64, "minetest": [96, 128]}
# camera histogram bins (degrees per step), for Dict (MineRL) actions; collect and import share them
CAMERA_BINS = np.array([-np.inf, -20, -10, -5, -2, -0.5, 0.5, 2, 5, 10, 20, np.inf])


def _make_real_env(name: str, **kw):
    if name not in ENVS:
        raise ValueError(f"unknown env {name!r} for collect; choose one of {sorted(ENVS)}")
    mod, cls = ENVS[name].split(":")
    return getattr(__import__(mod, fromlist=[cls]), cls)(**kw)


def _rollout(job: dict) -> dict:
    """Worker: one episode in the real game, written atomically. Returns its manifest entry."""
    from worldsim.agents import make_agent

    env = _make_real_env(job["env"], size=job["size"], length=job["max_steps"])
    try:
        agent = make_agent(job["agent"], env.action_space, seed=job["world_seed"], detour=job.get("detour", 0.0))
        clock = job.get("clock_start", 0)
        obs, info = env.reset(seed=job["world_seed"], **({"options": {"clock": clock}} if clock else {}))
        agent.reset()
        frames, actions, rewards, terms = [obs], [], [], []
        achievements = {}
        while True:
            a = agent.act(obs)
            obs, r, terminated, truncated, info = env.step(a)
            frames.append(obs), actions.append(a), rewards.append(r), terms.append(terminated)
            achievements = info.get("achievements", achievements)
            if terminated or truncated:
                break
    finally:
        env.close()
    acts, counts = episode_actions(actions, env.action_space)
    path = Path(job["out"]) / job["file"]
    write_episode(path, np.stack(frames), acts, rewards, terms, seed=job["world_seed"],
                  **({"clock_start": np.int64(clock)} if clock else {}))
    return {"file": job["file"], "index": job["index"], "split": job["split"], "seed": job["world_seed"],
            **({"clock_start": int(clock)} if clock else {}),
            "agent": job["agent"], "detour": job.get("detour", 0.0), "steps": len(actions), "terminated": bool(terms[-1]),
            "return": float(np.sum(rewards)), "action_counts": counts,
            "achievements": {k: int(v) for k, v in achievements.items() if v}}


def split_of(index: int, test_every: int) -> str:
    """Every test_every-th episode index goes to the held-out "test" split (0: none)."""
    return "test" if test_every and index % test_every == test_every - 1 else "train"


def episode_actions(actions: list, space: gym.Space):
    """One episode's actions as stored (an int64 array, or per-key arrays for a Dict space: camera float32) and
    their counts (`action_counts`)."""
    if isinstance(space, gym.spaces.Dict):
        acts = {k: np.stack([np.asarray(a[k]) for a in actions]).astype(np.float32 if k == "camera" else np.int64)
                for k in space.spaces}
        return acts, action_counts(acts)
    acts = np.array([int(a) for a in actions], np.int64)
    return acts, action_counts(acts, space.n)


def action_counts(acts, n: int = 0):
    """Per-action counts (Discrete, n actions), or per-key presses and binned camera deltas (Dict) of one
    episode."""
    if isinstance(acts, dict):
        counts = {k: int(v.sum()) for k, v in acts.items() if k != "camera"}
        counts.update({f"camera.{axis}": np.histogram(acts["camera"][:, i], CAMERA_BINS)[0].tolist()
                       for i, axis in enumerate(("pitch", "yaw"))})
        return counts
    return np.bincount(acts.ravel(), minlength=n).tolist()


def _readable(path: Path) -> bool:
    try:
        read_episode(path)
        return True
    except (ValueError, FileNotFoundError) as e:
        if path.exists():
            print(f"warning: {e}; making it again")
        return False


def _entry_from_file(root: Path, index: int, seed: int, split: str, n_actions: int) -> dict | None:
    path = episode_path(root, index)
    if not path.exists():
        return None
    try:
        ep = read_episode(path)
    except ValueError as e:
        print(f"warning: {e}; collecting it again")
        return None
    acts = ep["actions"]
    counts = action_counts(acts, n_actions)
    steps = num_steps(acts)
    return {"file": str(path.relative_to(root)), "index": index, "split": split, "seed": ep["seed"], "agent": "?",
            "steps": steps, "terminated": bool(ep["terminated"][-1]) if steps else False,
            "return": float(ep["rewards"].sum()), "action_counts": counts, "achievements": {}}


def print_histograms(manifest: dict, action_names=None) -> None:
    """Action histogram (per action, or per key and camera bin for Dict actions) and achievements."""
    eps = manifest["episodes"]
    total = max(sum(e["steps"] for e in eps), 1)
    print(f"\n{len(eps)} episodes, {total} steps, {sum(e['terminated'] for e in eps)} deaths")
    if eps and isinstance(eps[0]["action_counts"], dict):
        keys = [k for k in eps[0]["action_counts"] if not k.startswith("camera.")]
        print("keys (share of steps held):")
        for k in keys:
            c = sum(e["action_counts"].get(k, 0) for e in eps)
            print(f"  {k:<20s} {c:>8d} {100 * c / total:5.1f}% {'#' * int(60 * c / total)}")
        edges = [f"< {b:g}" if a == -np.inf else f"> {a:g}" if b == np.inf else f"{a:g}..{b:g}"
                 for a, b in zip(CAMERA_BINS[:-1], CAMERA_BINS[1:])]
        for axis in ("pitch", "yaw"):
            hist = np.sum([e["action_counts"][f"camera.{axis}"] for e in eps], axis=0)
            print(f"camera {axis} per tick (degrees):")
            for edge, c in zip(edges, hist):
                print(f"  {edge:<20s} {int(c):>8d} {100 * c / total:5.1f}% {'#' * int(60 * c / total)}")
    else:
        counts = np.sum([e["action_counts"] for e in eps], axis=0) if eps else np.zeros(len(action_names))
        print("actions:")
        for name, c in zip(action_names, counts):
            print(f"  {name:<20s} {int(c):>8d} {100 * c / total:5.1f}% {'#' * int(60 * c / total)}")
    ach = collections.Counter()
    for e in eps:
        ach.update(e.get("achievements", {}).keys())
    print("achievements (episodes that unlocked each):")
    for name, c in sorted(ach.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<20s} {c:>6d} {'#' * int(40 * c / max(len(eps), 1))}")


def env_info(name: str, size) -> dict:
    """The manifest's description of a source game: frame shape and action space spec (what train reads)."""
    from worldsim.model import space_to_spec

    if name == "crafter":
        from worldsim.envs.real_crafter import ACTION_MEANINGS, view_geometry
        return {"name": name, "frame_shape": [size, size, 3], "action_space": {"type": "discrete", "n": 17},
                "action_meanings": list(ACTION_MEANINGS), **view_geometry()}
    if name == "minetest":
        from worldsim.envs import minerl_actions
        return {"name": name, "frame_shape": [*size, 3], "action_space": space_to_spec(minerl_actions.action_space())}
    raise ValueError(f"unknown env {name!r} for collect; choose one of {sorted(ENVS)}")


def collect(cfg) -> dict:
    size = cfg.size if cfg.size is not None else DEFAULT_SIZE.get(cfg.env)
    size = list(size) if not isinstance(size, int) else size
    info = env_info(cfg.env, size)
    root = Path(cfg.out if cfg.out is not None else f"data/{cfg.env}")
    root.mkdir(parents=True, exist_ok=True)
    manifest = load_manifest(root)
    if manifest["env"] and manifest["env"].get("name") != cfg.env:
        raise ValueError(f"{root} holds {manifest['env'].get('name')!r} episodes, not {cfg.env!r}: choose another out=")
    manifest["env"] = info
    have = {e["index"]: e for e in manifest["episodes"] if _readable(episode_path(root, e["index"]))}
    starts = cfg.get("clock_start")
    if starts is not None:
        starts = list(starts) if not isinstance(starts, int) else [starts, starts]
        if cfg.env != "crafter" or len(starts) != 2 or not all(isinstance(v, int) for v in starts) \
                or not 0 <= starts[0] <= starts[1]:
            raise ValueError(f"clock_start={cfg.clock_start}: a Crafter game step, or a range [lo, hi] of them, to "
                             f"start each episode's game at (env=crafter only)")
    jobs = []
    for i in range(cfg.episodes):
        split = split_of(i, cfg.test_every)
        seed = int(cfg.seed) + i
        if i not in have:
            # on disk but not in the manifest (killed job)
            entry = _entry_from_file(root, i, seed, split, info["action_space"].get("n", 0))
            if entry is not None:
                have[i] = entry
                continue
            jobs.append({"env": cfg.env, "size": size, "max_steps": cfg.max_steps, "agent": cfg.agent,
                         "detour": float(cfg.get("detour") or 0.0), "world_seed": seed, "index": i, "split": split,
                         # drawn per episode from its seed, so a resumed job draws the same
                         "clock_start": 0 if starts is None else int(np.random.default_rng(seed).integers(
                             starts[0], starts[1] + 1)),
                         "out": str(root),
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
    print_histograms(manifest, info.get("action_meanings"))
    files = [root / e["file"] for e in manifest["episodes"]]
    frames = sum(e["steps"] + 1 for e in manifest["episodes"])
    if frames:
        per = sum(f.stat().st_size for f in files if f.exists()) / frames
        raw = int(np.prod(info["frame_shape"]))
        print(f"on disk: {per / 1024:.1f} KiB per frame (raw {raw / 1024:.1f} KiB, {raw / per:.1f}x smaller)")
    return manifest
