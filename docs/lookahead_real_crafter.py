"""Does looking ahead in the learned world help an agent in the real game? Real Crafter episodes played by the
random agent and by worldsim.agents.lookahead.LookaheadAgent (the shipped model, every action tried from the real
frames each step), on the same world seeds (README: Save, branch and go back).

    python docs/lookahead_real_crafter.py EPISODES [bundle=B futures=1 horizon=1 ...] [out=FILE.json]

Prints and writes, per agent: the mean return (Crafter's reward: +1 per achievement unlocked, +-0.1 per
health point), achievements unlocked per episode, episode length, and the time per step.
"""
import json
import os
import sys
import time

if os.environ.get("PYTHONHASHSEED") != "0":  # Crafter's world generation depends on it: the same worlds every run
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "PYTHONHASHSEED": "0"})

import gymnasium as gym
import numpy as np
import torch

import worldsim  # noqa: F401
from worldsim.agents import RandomAgent
from worldsim.agents.lookahead import LookaheadAgent

torch.set_num_threads(2)
episodes = int(sys.argv[1])
kw = dict(a.split("=", 1) for a in sys.argv[2:])
out = kw.pop("out", None)


def value(v: str):
    for kind in (int, float):
        try:
            return kind(v)
        except ValueError:
            pass
    return v


kw = {k: value(v) for k, v in kw.items()}
MAX_STEPS = 1000  # Crafter's own limit is 10,000; the random agent dies long before either


def play(make_agent, seed):
    env = gym.make("worldsim/RealCrafter-v0")
    agent = make_agent(env.action_space, seed)
    obs, _ = env.reset(seed=seed)
    agent.reset()
    ret, unlocked, t0 = 0.0, set(), time.perf_counter()
    for step in range(1, MAX_STEPS + 1):
        obs, r, term, trunc, info = env.step(agent.act(obs))
        ret += r
        if hasattr(agent, "observe_info"):  # the game's achievements, for a bundle with event heads
            agent.observe_info(info)
        unlocked |= {k for k, v in info.get("achievements", {}).items() if v > 0}
        if term or trunc:
            break
    env.close()
    return {"return": ret, "achievements": len(unlocked), "names": sorted(unlocked), "length": step,
            "seconds_per_step": (time.perf_counter() - t0) / step}


results = {}
for name, make in [("random", lambda space, seed: RandomAgent(space, seed=seed)),
                   ("lookahead", lambda space, seed: LookaheadAgent(space, seed=seed, **kw))]:
    runs = [play(make, 1_000_000 + i) for i in range(episodes)]
    summary = {k: float(np.mean([r[k] for r in runs])) for k in ("return", "achievements", "length", "seconds_per_step")}
    results[name] = {"summary": summary, "episodes": runs}
    print(name, {k: round(v, 3) for k, v in summary.items()}, flush=True)
if out:
    json.dump({"command": " ".join(sys.argv), "settings": kw, **results}, open(out, "w"), indent=1)
