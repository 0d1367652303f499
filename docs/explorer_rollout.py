"""One explorer rollout of a learned Crafter env, told per 500 steps: how often the world stood still and whether
moves still moved it.

`python docs/explorer_rollout.py BUNDLE STEPS OUT.npz [KEY=VALUE ...]` seeds the env and the explorer as
`worldsim eval`'s stability rollout does (1,000,000; termination off), keeps every frame the model drew (the
canvas, under the env's light) and every action in OUT.npz, and prints per 500 steps: the share of steps that left
the frame unchanged (mean absolute change under 0.05, as the eval counts it), the share of moves that scrolled the
view (change over 1.5; a blocked move only turns the player's sprite), the mean change and the share of `do`
actions (the explorer strikes what blocks it). KEY=VALUE go to gym.make (light=false, fresh_window=1, ...), but
seed=S seeds the env and the explorer instead (as docs/light_seeds.py seeds them).
docs/results.md, "The freeze: history in the cache".
"""
import sys

import gymnasium as gym
import numpy as np
from omegaconf import OmegaConf

import worldsim  # noqa: F401  (registers the envs)
from worldsim.agents import make_agent

SEED = 1_000_000  # worldsim eval's stability rollout seed
MOVES, DO = (1, 2, 3, 4), 5


bundle, steps, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
kw = OmegaConf.to_container(OmegaConf.from_dotlist(sys.argv[4:]))  # KEY=VALUE, typed
kw.setdefault("light_noise", "mean")
seed = kw.pop("seed", SEED)
env = gym.make("worldsim/Crafter-v0", bundle=bundle, termination_threshold=2.0, horizon=steps + 1, **kw)
agent = make_agent("explorer", env.action_space, seed=seed)
obs, _ = env.reset(seed=seed)
agent.reset()
drawn = np.zeros((steps, *obs.shape), np.uint8)
actions = np.zeros(steps, np.int64)
for t in range(steps):
    actions[t] = agent.act(obs)
    obs, _, _, _, info = env.step(actions[t])
    drawn[t] = info.get("canvas", obs)  # what the model drew: under the env's light, the canvas
env.close()
np.savez_compressed(out, frames=drawn, actions=actions)
change = np.concatenate([[0.0], np.abs(np.diff(drawn.astype(np.int16), axis=0)).mean(axis=(1, 2, 3))])
print(f"{bundle} {kw}: {steps} steps, per 500 (step, unchanged, moves that scrolled, change, do):")
for s in range(0, steps, 500):
    c, a = change[s:s + 500], actions[s:s + 500]
    mv = np.isin(a, MOVES)
    print(f"  {s:6d}  {(c < 0.05).mean():.2f}  {(c[mv] > 1.5).mean():.2f}  {c.mean():5.2f}  {(a == DO).mean():.2f}")
