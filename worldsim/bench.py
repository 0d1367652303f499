"""`worldsim bench`: steps per second of the learned env through the Gymnasium API (sampling, cache commit
and decode included), at batch 1 and batched, beside the real game measured in the same run (Crafter as
fast as it goes; Minetest on its fixed 20 Hz clock, so that figure says whether the model keeps up)."""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from worldsim import kernels


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


ENV_IDS = {"crafter": ("worldsim/Crafter-v0", "worldsim/RealCrafter-v0"),
           "minetest": ("worldsim/Minetest-v0", "worldsim/RealMinetest-v0")}


def learned_env_id(env: str) -> str:
    """The learned env's Gymnasium id for a game name: the shipped worlds', or worldsim/World-v0 for gym:<id>."""
    from worldsim.envs.gym_source import LEARNED_ID, is_gym_source

    return LEARNED_ID if is_gym_source(env) else ENV_IDS[env][0]


def bench_real(env_name: str, steps: int, latency_trials: int = 0, size=None,
               make_kwargs: dict | None = None) -> tuple[float, dict | None]:
    """Steps/s of the real game (a Gymnasium source: rendered and resized to `size`, as collect sees it); for
    Minetest also its action-to-frame latency (see measure_latency)."""
    import worldsim  # noqa: F401
    from worldsim.envs.gym_source import GymImageEnv, is_gym_source

    env = (GymImageEnv(env_name, size=size, **(make_kwargs or {})) if is_gym_source(env_name)
           else gym.make(ENV_IDS[env_name][1], disable_env_checker=True))
    env.reset(seed=0)
    env.action_space.seed(0)
    t, n, latency = 0.0, 0, None
    try:
        if env_name == "minetest" and latency_trials:
            from worldsim.envs.real_minetest import measure_latency
            latency = measure_latency(env.unwrapped, trials=latency_trials)
        while n < steps:
            a = env.action_space.sample()
            t0 = time.perf_counter()
            _, _, term, trunc, _ = env.step(a)
            t += time.perf_counter() - t0
            n += 1
            if term or trunc:
                env.reset()  # world generation is not counted: it is the same cost for both
    finally:
        env.close()
    return n / t, latency


def bench_model(bundle, device: str, batch: int, steps: int, warmup: int, env_name: str = "crafter",
                guidance: float | None = None, tile_hold: float | None = None, quantize: str | None = None,
                detail_carry: float | None = None, reencode: bool | None = None, snap: bool | str | None = None,
                certain: float | None = None, rss_every: int = 0, amp: str | None = None,
                view_memory: int | None = None, seed_floor: float | None = None,
                map_memory: bool | None = None, new_ground: str | None = None,
                terrain_floor: float | None = None, fresh_window: int | bool | None = None) -> dict:
    import worldsim  # noqa: F401

    # termination_threshold 2: never end episodes, steady stepping
    kw = {"device": device, "termination_threshold": 2.0, "guidance": guidance, "tile_hold": tile_hold,
          "quantize": quantize, "detail_carry": detail_carry, "reencode": reencode, "snap": snap, "certain": certain,
          "amp": amp, "view_memory": view_memory, "seed_floor": seed_floor,
          "map_memory": map_memory, "new_ground": new_ground, "terrain_floor": terrain_floor,
          "fresh_window": fresh_window}
    if bundle:
        kw["bundle"] = bundle
    env_id = learned_env_id(env_name)
    env = (gym.make(env_id, **kw) if batch == 1 else gym.make_vec(env_id, num_envs=batch, **kw))
    env.reset(seed=0)
    env.action_space.seed(0)
    for _ in range(warmup):
        env.step(env.action_space.sample())
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    rss0 = rss_mib()
    trace = []  # resident memory every rss_every steps: a long run shows whether it stays flat
    t0 = time.perf_counter()
    for i in range(steps):
        env.step(env.action_space.sample())
        if rss_every and (i + 1) % rss_every == 0:
            trace.append(rss_mib())
    sync()
    dt = time.perf_counter() - t0
    sim = env.unwrapped.sim  # the settings it ran with (bundle defaults resolved)
    env.close()
    return {"batch": batch, **sim.settings(),
            "steps_per_s": steps / dt,
            "env_steps_per_s": batch * steps / dt, "ms_per_step": 1000 * dt / steps, "rss_growth_mib": rss_mib() - rss0,
            **({"rss_every": rss_every, "rss_trace_mib": trace} if rss_every else {})}


def bench(cfg):
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    hw = {"cpu": platform.processor() or platform.machine(), "cores": torch.get_num_threads(),
          "torch": torch.__version__, "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    print(f"hardware: {hw}")
    from worldsim.envs.gym_source import is_gym_source, need_bundle

    size, make_kwargs = None, None
    need_bundle(cfg.env, cfg.bundle)
    if is_gym_source(cfg.env):  # a model you trained on a Gymnasium env, beside that env at the model's frame size
        from worldsim.checkpoint import bundle_path
        source = json.loads((bundle_path(cfg.bundle) / "bundle.json").read_text())["env"]
        size, make_kwargs = source["frame_shape"][:2], source.get("make_kwargs")
        game = cfg.env[len("gym:"):]
    elif cfg.env not in ENV_IDS:
        raise ValueError(f"unknown env {cfg.env!r}; available: {', '.join(ENV_IDS)}, or gym:<env id> with bundle=")
    else:
        game = cfg.env.capitalize()
    steps_real = min(int(cfg.real_steps), 200) if cfg.env == "minetest" else int(cfg.real_steps)  # real time
    rounds = int(cfg.get("rounds") or 1)
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {cfg.rounds}")
    # rounds > 1: the real game and every model setting, one after the other, R times; each figure is the median
    # of its rounds and the ratio to real is taken within each round. Why: this project's VM changes speed by
    # a third within minutes, and the batched target is relative to the real game measured in the same run.
    # quantize=[none,int8]: both CPU inference paths, one after the other in every round (the target names
    # fp32; the shipped Crafter model's CPU default is int8), so their figures share the rounds' speed
    qs = cfg.get("quantize")
    qs = [qs] if qs is None or isinstance(qs, str) else list(qs)
    if not qs:
        raise ValueError("quantize=[] names no setting; give int8, none, null or a list of them")
    # kernels=[torch,triton]: the world model's fused Triton kernels (worldsim.kernels) against the references,
    # one after the other in every round; GPU runs only (on CPU every setting runs the references)
    ks = cfg.get("kernels") or "torch"
    ks = [kernels.check(k) for k in ([ks] if isinstance(ks, str) else ks)]

    def setting(device, q, kern):  # the row's label where a list of settings was given
        if device == "cpu":
            return f" {q}" if len(qs) > 1 else ""
        return f" kernels={kern}" if len(ks) > 1 else ""
    reals, runs, latency = [], {}, None
    for k in range(rounds):
        real, lat = bench_real(cfg.env, steps_real, int(cfg.latency_trials) if k == 0 else 0, size, make_kwargs)
        latency, tag = latency or lat, f" (round {k + 1} of {rounds})" if rounds > 1 else ""
        reals.append(real)
        print(f"real {game} (1 process): {real:8.1f} steps/s{tag}")
        for device in cfg.devices:
            if device == "cuda" and not torch.cuda.is_available():
                continue
            variants = [(q, "torch") for q in qs] if device == "cpu" else [(None, k) for k in ks]
            for b, q, kern in [(b, q, k) for b in cfg.batch_sizes for q, k in variants]:
                prev = kernels.use(kern)
                r = bench_model(cfg.bundle, device, int(b), int(cfg.steps), int(cfg.warmup), cfg.env,
                                cfg.get("guidance"), cfg.get("tile_hold"), q, cfg.get("detail_carry"),
                                cfg.get("reencode"), cfg.get("snap"), cfg.get("certain"),
                                int(cfg.get("rss_every") or 0), cfg.get("amp"), cfg.get("view_memory"),
                                cfg.get("seed_floor"), cfg.get("map_memory"), cfg.get("new_ground"),
                                cfg.get("terrain_floor"), cfg.get("fresh_window"))
                kernels.use(prev)
                r["device"], r["kernels"] = device, kern
                r["vs_real"] = r["env_steps_per_s"] / real
                runs.setdefault((device, int(b), r["quantize"], kern), []).append(r)
                qtag = setting(device, r["quantize"], kern)
                print(f"model {device} batch {b:>4d}{qtag}: {r['steps_per_s']:8.1f} steps/s = {r['env_steps_per_s']:9.1f} "
                      f"env-steps/s ({r['vs_real']:.2f}x real {game}), {r['ms_per_step']:.1f} ms/step, "
                      f"RSS {r['rss_growth_mib']:+.1f} MiB over {cfg.steps} steps{tag}")
                if r.get("rss_trace_mib"):
                    t = r["rss_trace_mib"]
                    print(f"  resident memory every {r['rss_every']} steps: {t[0]:.1f} to {t[-1]:.1f} MiB "
                          f"(range {max(t) - min(t):.1f} MiB over {len(t)} readings)")
    results = {"env": cfg.env, "hardware": hw, f"real_{cfg.env}_steps_per_s": float(np.median(reals)), "model": []}
    if latency:
        results["real_minetest_latency"] = latency
        print(f"real Minetest action-to-frame latency over {latency['trials']} turns: mean {latency['mean_ms']:.1f} ms, "
              f"p50 {latency['p50_ms']:.1f}, p95 {latency['p95_ms']:.1f}, max {latency['max_ms']:.1f}, "
              f"std {latency['std_ms']:.1f} ms")
    if rounds > 1:
        results["rounds"] = rounds
        results[f"real_{cfg.env}_per_round"] = reals
        print(f"median of {rounds} rounds: real {game} {results[f'real_{cfg.env}_steps_per_s']:.1f} steps/s")
    for (device, b, q, kern), rs in runs.items():
        r = dict(rs[0])
        qtag = setting(device, q, kern)
        if rounds > 1:
            for key in ("steps_per_s", "env_steps_per_s", "ms_per_step", "vs_real"):
                r[key] = float(np.median([x[key] for x in rs]))
            r["rss_growth_mib"] = max(x["rss_growth_mib"] for x in rs)
            r["per_round"] = {key: [x[key] for x in rs] for key in ("env_steps_per_s", "vs_real")}
            print(f"  model {device} batch {b:>4d}{qtag}: {r['env_steps_per_s']:9.1f} env-steps/s "
                  f"({min(r['per_round']['env_steps_per_s']):.1f} to {max(r['per_round']['env_steps_per_s']):.1f}), "
                  f"{r['vs_real']:.2f}x real {game} ({min(r['per_round']['vs_real']):.2f} to "
                  f"{max(r['per_round']['vs_real']):.2f})")
        results["model"].append(r)
    if cfg.out:
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.out).write_text(json.dumps(results, indent=1))
        print(f"written to {cfg.out}")
    return results
