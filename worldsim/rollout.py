"""`worldsim rollout`: episodes the learned env generates, written to disk as `worldsim collect` writes real ones.

For rollouts to keep: a robotics team's synthetic data, an agent's imagined experience, a model's worlds beside
the collection it was trained on. `batch_size` worlds are stepped as one batch through the native vector env
(`gym.make_vec`), each driven by an agent, or by the recorded actions of an episode (`agent=replay`), from the
model's shipped start states or from the first frames of recorded episodes (`context=DIR`). Files and manifest
have collect's format, plus `source` in the manifest (the bundle and the settings it ran with), so every tool
that reads a collection reads them. Episode i uses seed + i for its world's noise, its start and its agent, so
a killed job resumes (episodes on disk are kept) with the episodes it would have made, up to the batch's effect
on the frames (with int8 a world's frames depend on its batch-mates: README, Batch and reproducibility).
"""
from __future__ import annotations

import time
from pathlib import Path

import gymnasium as gym
import numpy as np
from tqdm import tqdm

from worldsim.bench import ENV_IDS, learned_env_id
from worldsim.collect import _readable, episode_actions, print_histograms, split_of
from worldsim.data import (episode_clock, episode_path, index_actions, load_episodes, load_manifest, save_manifest,
                           stack_actions, write_episode)
from worldsim.envs.gym_source import folder_name, is_gym_source, need_bundle

def rollout(cfg) -> dict:
    import torch

    import worldsim  # noqa: F401  (registers the envs)
    from worldsim.agents import AGENTS, make_agent

    gym_source = is_gym_source(cfg.env)  # a model you trained on a Gymnasium env: worldsim/World-v0
    if not gym_source and cfg.env not in ENV_IDS:
        raise ValueError(f"unknown env {cfg.env!r} for rollout; choose one of {sorted(ENV_IDS)}, or gym:<env id> "
                         f"with bundle=")
    need_bundle(cfg.env, cfg.bundle)
    episodes, steps, B = int(cfg.episodes), int(cfg.steps), int(cfg.batch_size)
    if episodes < 1 or steps < 1 or B < 1:
        raise ValueError(f"episodes, steps and batch_size must be >= 1; got {episodes}, {steps}, {B}")
    agent_name = cfg.agent or ("random" if gym_source else "explorer")
    replay = agent_name == "replay"
    if not replay and agent_name not in AGENTS and ":" not in agent_name:
        raise ValueError(f"unknown agent {agent_name!r}; choose replay, one of {sorted(AGENTS)} or module:Class")
    if agent_name == "explorer" and gym_source:
        raise ValueError(f"agent=explorer is the scripted explorer of Crafter and Minetest; for env={cfg.env} use "
                         f"agent=random, replay or your own policy, agent=<module>:<Class>")
    if replay and not cfg.context:
        raise ValueError("agent=replay drives each world with a recorded episode's actions: give context=DIR")
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    venv = gym.make_vec(learned_env_id(cfg.env), num_envs=B, device=cfg.device, horizon=steps,
                        termination_threshold=cfg.termination_threshold, reward_floor=cfg.get("reward_floor"),
                        **({"bundle": str(cfg.bundle)} if cfg.bundle else {}))
    env = venv.unwrapped
    space, W = venv.single_action_space, env.sim.window
    recorded = []
    if cfg.context:
        recorded = [ep for ep in load_episodes(cfg.context) if len(ep["frames"]) > W]
        if not recorded:
            raise ValueError(f"{cfg.context}: no readable episode with more than the model's {W} context frames")
        shape = tuple(recorded[0]["frames"].shape[1:])
        if shape != tuple(env.sim.frame_shape):
            raise ValueError(f"{cfg.context}: frames of shape {shape}, the model's are {tuple(env.sim.frame_shape)}")

    root = Path(cfg.out if cfg.out is not None else f"rollouts/{folder_name(cfg.env)}")
    root.mkdir(parents=True, exist_ok=True)
    manifest = load_manifest(root)
    info = {**env.bundle.env, "frame_shape": list(env.sim.frame_shape)}
    if manifest["env"] and manifest["env"].get("name") != info.get("name"):
        raise ValueError(f"{root} holds {manifest['env'].get('name')!r} episodes, not {info.get('name')!r}: choose another out=")
    manifest["env"] = info
    manifest["source"] = {"bundle": str(env.bundle.path), "settings": env.sim.settings(), "agent": agent_name,
                          "context": str(cfg.context) if cfg.context else None}
    have = {e["index"]: e for e in manifest["episodes"] if _readable(root / e["file"])}
    todo = [i for i in range(episodes) if i not in have]
    if have:
        print(f"resuming: {len(have)} episodes already on disk, {len(todo)} to generate")
    manifest["episodes"] = sorted(have.values(), key=lambda e: e["index"])
    save_manifest(root, manifest)

    t0, made = time.time(), 0
    with tqdm(total=len(todo), desc="rollout", unit="ep") as bar:
        for k in range(0, len(todo), B):
            chunk = todo[k:k + B]
            rows = chunk + [chunk[-1]] * (B - len(chunk))  # a short last batch: the spare worlds repeat one, unwritten
            starts = [recorded[i % len(recorded)] for i in rows] if recorded else None
            options = None if starts is None else [
                {"context_frames": ep["frames"][:W], "context_actions": index_actions(ep["actions"], slice(0, W - 1)),
                 "clock": episode_clock(ep, W - 1)} for ep in starts]
            obs, _ = venv.reset(seed=[int(cfg.seed) + i for i in rows], options=options)
            agents = None if replay else [make_agent(agent_name, space, seed=int(cfg.seed) + i) for i in rows]
            for a in agents or []:
                a.reset()
            limit = [min(steps, len(ep["frames"]) - W) if replay else steps for ep in (starts or [None] * B)]
            frames, acts = [[f] for f in obs], [[] for _ in rows]
            rewards, ends, events = [[] for _ in rows], [[] for _ in rows], [[] for _ in rows]
            live = np.ones(B, bool)
            for t in range(max(limit)):
                act = [index_actions(starts[r]["actions"], W - 1 + min(t, limit[r] - 1)) if replay
                       else agents[r].act(obs[r]) for r in range(B)]
                obs, rew, term, trunc, step_info = venv.step(stack_actions(act))
                for r in np.flatnonzero(live):
                    frames[r].append(obs[r]), acts[r].append(act[r]), rewards[r].append(float(rew[r]))
                    ends[r].append(bool(term[r]))
                    if "events" in step_info:  # bundles with event heads: the events drawn, as collect stores them
                        events[r].append(step_info["events"][r])
                    if term[r] or trunc[r] or len(acts[r]) >= limit[r]:
                        live[r] = False
                if not live.any():
                    break
            for r, i in enumerate(chunk):
                a, counts = episode_actions(acts[r], space)
                clock = episode_clock(starts[r], W - 1) if starts else 0
                path = episode_path(root, i)
                ev = np.asarray(events[r], np.uint8) if events[r] else None
                write_episode(path, np.stack(frames[r]), a, rewards[r], ends[r], seed=int(cfg.seed) + i,
                              **({"clock_start": np.int64(clock)} if clock else {}),
                              **({"events": ev} if ev is not None else {}))
                have[i] = {"file": str(path.relative_to(root)), "index": i, "seed": int(cfg.seed) + i,
                           "split": split_of(i, cfg.test_every),
                           **({"clock_start": int(clock)} if clock else {}),
                           "agent": agent_name, "steps": len(acts[r]), "terminated": bool(ends[r][-1]),
                           "return": float(np.sum(rewards[r])), "action_counts": counts,
                           "achievements": {} if ev is None else {n: int(c) for n, c in zip(env.event_names, ev.sum(0)) if c}}
                made += len(acts[r])
            manifest["episodes"] = sorted(have.values(), key=lambda e: e["index"])
            save_manifest(root, manifest)
            bar.update(len(chunk))
            bar.set_postfix(steps=made, env_steps_per_s=f"{made / (time.time() - t0):.0f}")
    venv.close()
    print_histograms(manifest, info.get("action_meanings"))
    print(f"written to {root}")
    return manifest
