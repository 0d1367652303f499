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
from worldsim.envs.gym_source import folder_name, is_gym_source
from worldsim.model import space_to_spec, spec_to_space

ENVS = {"crafter": "worldsim.envs.real_crafter:RealCrafterEnv",
        "minetest": "worldsim.envs.real_minetest:RealMinetestEnv"}
DEFAULT_SIZE = {"crafter": 64, "minetest": [96, 128]}
# camera histogram bins (degrees per step), for Dict (MineRL) actions; collect and import share them
CAMERA_BINS = np.array([-np.inf, -20, -10, -5, -2, -0.5, 0.5, 2, 5, 10, 20, np.inf])


def _make_real_env(name: str, **kw):
    from worldsim.envs.gym_source import GymImageEnv, is_gym_source

    if is_gym_source(name):  # any Gymnasium env, seen as frames (train on your own environment)
        return GymImageEnv(name, **kw)
    if name not in ENVS:
        raise ValueError(f"unknown env {name!r} for collect; choose one of {sorted(ENVS)}, or gym:<env id> for any "
                         f"Gymnasium environment")
    mod, cls = ENVS[name].split(":")
    return getattr(__import__(mod, fromlist=[cls]), cls)(**kw)


def _rollout(job: dict) -> dict:
    """Worker: one episode in the real game, written atomically. Returns its manifest entry."""
    from worldsim.agents import make_agent

    env = _make_real_env(job["env"], size=job["size"], length=job["max_steps"], **job.get("env_kwargs", {}))
    try:
        agent = make_agent(job["agent"], env.action_space, seed=job["world_seed"], detour=job.get("detour", 0.0),
                           sleep=job.get("sleep", 0.01))
        clock = job.get("clock_start", 0)
        obs, info = env.reset(seed=job["world_seed"], **({"options": {"clock": clock}} if clock else {}))
        agent.reset()
        frames, actions, rewards, terms, events = [obs], [], [], [], []
        achievements = {}
        names = job.get("events")
        counter_names = job.get("counters")  # counts the game keeps (Crafter's stats), read at every frame
        counters = [[info["inventory"][k] for k in counter_names]] if counter_names else None
        canvas = [info["canvas"]] if "canvas" in info else None  # Crafter, canvas=true: the frames without the light
        while True:
            a = agent.act(obs)
            obs, r, terminated, truncated, info = env.step(a)
            if hasattr(agent, "observe_info"):  # agents that read the game's info (the lookahead agent: achievements)
                agent.observe_info(info)
            frames.append(obs), actions.append(a), rewards.append(r), terms.append(terminated)
            if names:  # each achievement counter that went up on this step (it counts every time, the reward only the first)
                now = info["achievements"]
                events.append([now.get(k, 0) > achievements.get(k, 0) for k in names])
            achievements = info.get("achievements", achievements)
            if counter_names:
                counters.append([info["inventory"][k] for k in counter_names])
            if canvas is not None:
                canvas.append(info["canvas"])
            if terminated or truncated:
                break
    finally:
        env.close()
    acts, counts = episode_actions(actions, env.action_space)
    path = Path(job["out"]) / job["file"]
    write_episode(path, np.stack(frames), acts, rewards, terms, seed=job["world_seed"],
                  **({"clock_start": np.int64(clock)} if clock else {}),
                  **({"events": np.asarray(events, np.uint8)} if names else {}),
                  **({"counters": np.asarray(counters, np.int16)} if counter_names else {}),
                  **({"canvas": np.stack(canvas)} if canvas is not None else {}))
    return {"file": job["file"], "index": job["index"], "split": job["split"], "seed": job["world_seed"],
            **({"clock_start": int(clock)} if clock else {}),
            "agent": job["agent"], "detour": job.get("detour", 0.0),
            **({"sleep": job["sleep"]} if job.get("sleep", 0.01) != 0.01 else {}), "steps": len(actions), "terminated": bool(terms[-1]),
            "return": float(np.sum(rewards)), "action_counts": counts,
            "achievements": {k: int(v) for k, v in achievements.items() if v}}


def split_of(index: int, test_every: int) -> str:
    """Every test_every-th episode index goes to the held-out "test" split (0: none)."""
    return "test" if test_every and index % test_every == test_every - 1 else "train"


def episode_actions(actions: list, space: gym.Space):
    """One episode's actions as stored (an array: int64, float32 for a Box; or per-key arrays for a Dict space)
    and their counts (`action_counts`)."""
    if isinstance(space, gym.spaces.Dict):
        acts = {k: np.stack([np.asarray(a[k]) for a in actions]).astype(
            np.float32 if isinstance(sub, gym.spaces.Box) else np.int64) for k, sub in space.spaces.items()}
        return acts, action_counts(acts)
    if isinstance(space, gym.spaces.Discrete):
        acts = np.array([int(a) for a in actions], np.int64)
    else:
        acts = np.stack([np.asarray(a) for a in actions]).astype(
            np.float32 if isinstance(space, gym.spaces.Box) else np.int64)
    return acts, action_counts(acts, space)


BOX_BINS = 8  # histogram bins per component of a Box action, between its bounds


def action_counts(acts, space=0):
    """One episode's action counts: per action (Discrete; `space` its space or its n), per key presses and binned
    camera deltas (Dict, MineRL), per component (MultiDiscrete, MultiBinary), or per component a histogram of
    BOX_BINS bins between the bounds (Box)."""
    if isinstance(acts, dict):
        counts = {k: int(v.sum()) for k, v in acts.items() if k != "camera" and v.dtype.kind in "iub"}
        if "camera" in acts:
            counts.update({f"camera.{axis}": np.histogram(acts["camera"][:, i], CAMERA_BINS)[0].tolist()
                           for i, axis in enumerate(("pitch", "yaw"))})
        return counts
    if isinstance(space, gym.spaces.Box):
        edges = np.linspace(float(np.min(space.low)), float(np.max(space.high)), BOX_BINS + 1)
        return {"box": [np.histogram(np.clip(acts[:, i], edges[0], edges[-1]), edges)[0].tolist()
                        for i in range(acts.shape[1])], "edges": edges.tolist()}
    if isinstance(space, gym.spaces.MultiDiscrete):
        return {"components": [np.bincount(acts[:, i], minlength=int(n)).tolist()
                               for i, n in enumerate(np.ravel(space.nvec))]}
    if isinstance(space, gym.spaces.MultiBinary):
        return {"pressed": acts.reshape(len(acts), -1).sum(0).astype(int).tolist()}
    n = int(space.n) if isinstance(space, gym.spaces.Discrete) else int(space)
    return np.bincount(acts.ravel(), minlength=n).tolist()


def _readable(path: Path) -> bool:
    try:
        read_episode(path)
        return True
    except (ValueError, FileNotFoundError) as e:
        if path.exists():
            print(f"warning: {e}; making it again")
        return False


def _entry_from_file(root: Path, index: int, seed: int, split: str, space: gym.Space) -> dict | None:
    path = episode_path(root, index)
    if not path.exists():
        return None
    try:
        ep = read_episode(path)
    except ValueError as e:
        print(f"warning: {e}; collecting it again")
        return None
    acts = ep["actions"]
    counts = action_counts(acts, space)
    steps = num_steps(acts)
    return {"file": str(path.relative_to(root)), "index": index, "split": split, "seed": ep["seed"], "agent": "?",
            "steps": steps, "terminated": bool(ep["terminated"][-1]) if steps else False,
            "return": float(ep["rewards"].sum()), "action_counts": counts, "achievements": {}}


def print_histograms(manifest: dict, action_names=None) -> None:
    """Action histogram (per action; per key and camera bin for MineRL's Dict; per component for other spaces)
    and achievements."""
    eps = manifest["episodes"]
    total = max(sum(e["steps"] for e in eps), 1)
    print(f"\n{len(eps)} episodes, {total} steps, {sum(e['terminated'] for e in eps)} deaths")

    def bars(title, names, counts):
        print(title)
        for name, c in zip(names, counts):
            print(f"  {name:<20s} {int(c):>8d} {100 * c / total:5.1f}% {'#' * int(60 * c / total)}")

    first = eps[0]["action_counts"] if eps else []
    if isinstance(first, dict) and "box" in first:  # Box: per component, bins between the bounds
        edges = first["edges"]
        names = [f"{a:+.3g}..{b:+.3g}" for a, b in zip(edges[:-1], edges[1:])]
        for i in range(len(first["box"])):
            bars(f"action[{i}] (share of steps per bin):", names, np.sum([e["action_counts"]["box"][i] for e in eps], 0))
    elif isinstance(first, dict) and "components" in first:  # MultiDiscrete
        for i in range(len(first["components"])):
            hist = np.sum([e["action_counts"]["components"][i] for e in eps], 0)
            bars(f"action[{i}]:", [str(v) for v in range(len(hist))], hist)
    elif isinstance(first, dict) and "pressed" in first:  # MultiBinary
        hist = np.sum([e["action_counts"]["pressed"] for e in eps], 0)
        bars("action bits (share of steps set):", [f"bit {i}" for i in range(len(hist))], hist)
    elif isinstance(first, dict):  # MineRL Dict: keys held, camera deltas binned
        keys = [k for k in first if not k.startswith("camera.")]
        bars("keys (share of steps held):", keys, [sum(e["action_counts"].get(k, 0) for e in eps) for k in keys])
        edges = [f"< {b:g}" if a == -np.inf else f"> {a:g}" if b == np.inf else f"{a:g}..{b:g}"
                 for a, b in zip(CAMERA_BINS[:-1], CAMERA_BINS[1:])]
        for axis in ("pitch", "yaw"):
            if f"camera.{axis}" in first:
                bars(f"camera {axis} per tick (degrees):", edges,
                     np.sum([e["action_counts"][f"camera.{axis}"] for e in eps], axis=0))
    else:
        counts = np.sum([e["action_counts"] for e in eps], axis=0) if eps else np.zeros(len(action_names or []))
        names = list(action_names) if action_names else [str(i) for i in range(len(counts))]
        bars("actions:", names, counts)
    ach = collections.Counter()
    for e in eps:
        ach.update(e.get("achievements", {}).keys())
    print("achievements (episodes that unlocked each):")
    for name, c in sorted(ach.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<20s} {c:>6d} {'#' * int(40 * c / max(len(eps), 1))}")


def env_info(name: str, size, seed: int = 0, make_kwargs: dict | None = None) -> dict:
    """The manifest's description of a source game: frame shape and action space spec (what train reads). A
    Gymnasium source (gym:<id>) is made and reset once (with `seed`) to learn its frame size; the keyword
    arguments it is made with (`make_kwargs`) are kept, so eval, bench and play make the same game."""
    if make_kwargs and not is_gym_source(name):
        raise ValueError(f"env_kwargs are gymnasium.make's keyword arguments for a gym:<env id> source, not {name!r}")
    if is_gym_source(name):
        env = _make_real_env(name, size=size, **(make_kwargs or {}))
        try:
            env.reset(seed=seed)
            return {"name": name, "frame_shape": [*env.size, 3], "native_frame_shape": [*env.native_shape, 3],
                    "action_space": space_to_spec(env.action_space), "action_meanings": env.action_meanings(),
                    **({"make_kwargs": dict(make_kwargs)} if make_kwargs else {})}
        finally:
            env.close()
    if name == "crafter":
        from worldsim.envs.real_crafter import ACTION_MEANINGS, COUNTERS, view_geometry
        from crafter.constants import achievements

        # events: Crafter's achievement counters, each step's increments stored per episode (`events`); the
        # game pays event_reward the first time each one happens in an episode (docs/results.md: Achievements)
        return {"name": name, "frame_shape": [size, size, 3], "action_space": {"type": "discrete", "n": 17},
                "action_meanings": list(ACTION_MEANINGS), **view_geometry(),
                "events": list(achievements), "event_reward": 1.0, "counters": list(COUNTERS)}
    if name == "minetest":
        from worldsim.envs import minerl_actions
        return {"name": name, "frame_shape": [*size, 3], "action_space": space_to_spec(minerl_actions.action_space())}
    raise ValueError(f"unknown env {name!r} for collect; choose one of {sorted(ENVS)}, or gym:<env id> for any "
                     f"Gymnasium environment")


def collect(cfg) -> dict:
    size = cfg.size if cfg.size is not None else DEFAULT_SIZE.get(cfg.env)
    size = list(size) if size is not None and not isinstance(size, int) else size
    from omegaconf import OmegaConf

    make_kwargs = OmegaConf.to_container(cfg.env_kwargs) if cfg.get("env_kwargs") else {}
    info = env_info(cfg.env, size, int(cfg.seed), make_kwargs)
    # Crafter's light (envs/real_crafter.py): light=false collects the frames without it, for a model the env lights
    # (the manifest's env.light, which train copies into the bundle); canvas=true keeps the lit frames and adds them
    # grey_sleep=false: those canvases leave a sleeper's grey view out too (the sleeping sprite shows the sleep),
    # for a model the env greys (the manifest's env.sleep); the default keeps it, as the shipped model read them
    light, canvas, grey = cfg.get("light", True), cfg.get("canvas", False), cfg.get("grey_sleep", True)
    for name, v in (("light", light), ("canvas", canvas), ("grey_sleep", grey)):
        if not isinstance(v, bool):
            raise ValueError(f"{name}={v!r} must be true or false")
    if (not light or canvas) and cfg.env != "crafter":
        raise ValueError(f"light=false and canvas=true draw Crafter's frames without its light; env={cfg.env} has none")
    if not grey and light and not canvas:
        raise ValueError("grey_sleep=false leaves a sleeper's grey view out of the canvases: it needs light=false "
                         "or canvas=true")
    game_kwargs = make_kwargs or ({"light": False} if not light else {}) | ({"canvas": True} if canvas else {}) \
        | ({"grey_sleep": False} if not grey else {})
    if not light:
        info["light"] = "crafter"
    if not grey:
        info["sleep"] = "crafter"
    if is_gym_source(cfg.env):
        size = info["frame_shape"][:2]  # fixed now, so every worker's frames match the manifest
    agent = cfg.get("agent") or ("random" if is_gym_source(cfg.env) else "explorer")
    if agent == "explorer" and is_gym_source(cfg.env):
        raise ValueError(f"agent=explorer is the scripted explorer of Crafter and Minetest; for env={cfg.env} use "
                         f"agent=random or your own policy, agent=<module>:<Class> (Class(action_space, seed=...) "
                         f"with act(obs) -> action and reset())")
    sleep = cfg.get("sleep", 0.01)
    sleep = 0.01 if sleep is None else sleep
    if isinstance(sleep, bool) or not isinstance(sleep, (int, float)) or not 0.0 <= sleep < 0.99:
        raise ValueError(f"sleep={sleep!r}: the Crafter explorer's share of plans that are a sleep spell, in [0, 0.99)")
    sleep = float(sleep)
    if sleep != 0.01 and not (cfg.env == "crafter" and agent == "explorer"):
        raise ValueError(f"sleep={sleep} sets the Crafter explorer's sleep spells; env={cfg.env} agent={agent} has none")
    root = Path(cfg.out if cfg.out is not None else f"data/{folder_name(cfg.env)}")
    root.mkdir(parents=True, exist_ok=True)
    manifest = load_manifest(root)
    if manifest["env"] and manifest["env"].get("name") != cfg.env:
        raise ValueError(f"{root} holds {manifest['env'].get('name')!r} episodes, not {cfg.env!r}: choose another out=")
    if manifest["env"] and manifest["env"].get("make_kwargs", {}) != make_kwargs:
        raise ValueError(f"{root} holds episodes made with env_kwargs={manifest['env'].get('make_kwargs', {})}, not "
                         f"{make_kwargs}: choose another out=")
    if manifest["env"] and manifest["env"].get("light") != info.get("light"):
        raise ValueError(f"{root} holds episodes {'without' if manifest['env'].get('light') else 'with'} the game's "
                         f"light, not light={light}: choose another out=")
    if manifest["env"] and manifest["env"].get("sleep") != info.get("sleep"):
        raise ValueError(f"{root} holds canvases drawn {'without' if manifest['env'].get('sleep') else 'with'} a "
                         f"sleeper's grey view, not grey_sleep={str(grey).lower()}: choose another out=")
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
            entry = _entry_from_file(root, i, seed, split, spec_to_space(info["action_space"]))
            if entry is not None:
                have[i] = entry
                continue
            jobs.append({"env": cfg.env, "env_kwargs": game_kwargs, "size": size, "max_steps": cfg.max_steps, "agent": agent,
                         "detour": float(cfg.get("detour") or 0.0), "sleep": sleep, "world_seed": seed, "index": i, "split": split,
                         # drawn per episode from its seed, so a resumed job draws the same
                         "clock_start": 0 if starts is None else int(np.random.default_rng(seed).integers(
                             starts[0], starts[1] + 1)),
                         "out": str(root), "events": info.get("events"), "counters": info.get("counters"),
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
