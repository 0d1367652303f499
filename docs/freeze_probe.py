"""Where a frozen Crafter rollout's freeze lives: in the frames, or in the model's KV cache.

`python docs/freeze_probe.py BUNDLE STEP [KEY=VALUE ...]` runs the eval's stability rollout (explorer and env
seeded 1,000,000, termination off) to STEP, saves the world's state, then steps each move (left, right, up, down)
three times from:
- the saved state;
- a reset from the same four frames and actions (the frames as the env showed them);
- that reset with the saved state's KV cache put in (moved to the reset's clock), or its newest latents, its map
  memory, its tiles shown, or at its time;
- the saved state with its cache rebuilt from its own four committed frames, as a reset builds it.
It prints the mean absolute change of each after three steps (a scroll of the view changes it by 10 or more; a
blocked move only turns the player's sprite, under 1). KEY=VALUE go to gym.make (e.g. light=false).
docs/results.md, "The freeze: history in the cache".
"""
import sys

import gymnasium as gym
import numpy as np
import torch
from omegaconf import OmegaConf

import worldsim  # noqa: F401  (registers the envs)
from worldsim.agents import make_agent

SEED = 1_000_000  # worldsim eval's stability rollout seed


bundle, stop = sys.argv[1], int(sys.argv[2])
kw = OmegaConf.to_container(OmegaConf.from_dotlist(sys.argv[3:]))  # KEY=VALUE, typed
env = gym.make("worldsim/Crafter-v0", bundle=bundle, termination_threshold=2.0, horizon=stop + 100, **kw)
sim = env.unwrapped.sim
agent = make_agent("explorer", env.action_space, seed=SEED)
obs, _ = env.reset(seed=SEED)
agent.reset()
frames, canvases, actions = [], [], []
for t in range(stop):
    a = agent.act(obs)
    obs, _, _, _, info = env.step(a)
    frames.append(obs), canvases.append(info.get("canvas", obs)), actions.append(a)  # what the model drew
state = env.unwrapped.get_state()
W = sim.window
ctx, ctx_a = np.stack(frames[-W:]), np.array(actions[-W + 1:])
clock0 = int(sim.clock[0])
print(f"{bundle} {kw}: the state after step {stop} (game clock {clock0})")


def moves(setup):
    out = []
    for a in (1, 2, 3, 4):
        start = setup()
        for _ in range(3):
            o, *_ = env.step(a)
        out.append(round(float(np.abs(o.astype(int) - start.astype(int)).mean()), 2))
    return out


def saved():
    return env.unwrapped.set_state(state)


def reset():
    return env.reset(seed=0, options={"context_frames": ctx, "context_actions": ctx_a, "clock": clock0})[0]


def reset_with_saved_cache():
    o = reset()
    shift = sim.time - state.sim["time"]
    sim.cache.load_row(0, *state.sim["cache"], shift=shift, rotate=sim.dit.rope.time_shift(shift) if shift else None)
    return o


def reset_with(prefix):
    """The reset, with the saved state's tensors whose names start with `prefix` put in."""
    def setup():
        o = reset()
        for name, value in state.sim["tensors"].items():
            if name.startswith(prefix):
                part, _, attr = name.rpartition(".")
                getattr(getattr(sim, part) if part else sim, attr)[0] = value
        return o
    return setup


def reset_at_saved_time():
    o = reset()
    shift = state.sim["time"] - sim.time
    sim.cache.load_row(0, *sim.cache.row(0), shift=shift, rotate=sim.dit.rope.time_shift(shift) if shift else None)
    sim.time = state.sim["time"]
    return o


def saved_with_rebuilt_cache():
    o = saved()
    with torch.no_grad():
        z = sim.codec.encode(torch.as_tensor(np.stack(canvases[-W:]))[None])
        acts = torch.as_tensor(np.concatenate([[0], ctx_a]))[None]
        has = torch.ones(1, W, dtype=torch.bool)
        has[:, 0] = False
        ticks = torch.zeros(1, W, sim.model_ticks) if sim.model_ticks else None
        sim.edm.prefill(sim.dit, sim.cache, [0], z, acts, has, torch.arange(sim.time - W + 1, sim.time + 1),
                        torch.zeros_like(z), sim.context_noise, ticks=ticks)
    return o


for name, setup in [("saved state", saved), ("reset from its frames", reset),
                    ("reset, saved cache put in", reset_with_saved_cache),
                    ("reset, saved newest latents", reset_with("prev")),
                    ("reset, saved map memory", reset_with("map.")),
                    ("reset, saved tiles shown", reset_with("shown")),
                    ("reset, at the saved time", reset_at_saved_time),
                    ("saved state, cache rebuilt", saved_with_rebuilt_cache)]:
    print(f"  {name:28s} change after 3 steps of left / right / up / down: {moves(setup)}")
