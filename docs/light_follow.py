"""Whether a Crafter bundle's light follows dusk (docs/results.md, Crafter: "Light"): every episode of 200 frames or more of
data/crafter-heldout and data/crafter_ends' test split, 4 real frames up to step 110 as context (the real light is
then falling toward night, darkest at step 210 of Crafter's 300-step day), then 80 steps of the model driven by
the real actions; the mean brightness and saturation (max - min channel, per pixel) of the map view, model
beside real, at 1, 20, 40, 60 and 80 steps on. Extra KEY=VALUE arguments go to WorldSimulator;
bundle=PATH another bundle (e.g. the bundle files of commit 9eee827, with env.map added: map_memory=false);
keep_mean=true runs its guidance with diffusion.guidance_keep_mean. steps=N (> 80) goes on past the real frames,
through night and dawn, driven by each episode's actions from its start again where its own run out, and prints
every 20 steps the model's light beside Crafter's daylight at that step (1 day, 0 night; the game's formula).

    python docs/light_follow.py [bundle=PATH] [steps=N] [KEY=VALUE ...]

Dawn: `data=data/crafter_dawn2 start=4 steps=40` takes the test episodes of 44 frames or more of a collection made
with `clock_start` (games begun late in the night) from their frame 4 instead, and prints every 10 steps.
"""
import pathlib
import sys

import numpy as np
from omegaconf import OmegaConf

from worldsim import DEFAULT_CRAFTER_BUNDLE
from worldsim.data import episode_clock, load_episodes
from worldsim.simulator import WorldSimulator, load_bundle


kw = OmegaConf.to_container(OmegaConf.from_dotlist(sys.argv[1:]))  # KEY=VALUE, typed
b = load_bundle(str(kw.pop("bundle", DEFAULT_CRAFTER_BUNDLE)))
if kw.pop("keep_mean", False):
    b.edm.cfg.guidance_keep_mean = True
W, S, H = 4, int(kw.pop("start", 110)), int(kw.pop("steps", 80))
data = kw.pop("data", None)
eps = (load_episodes(pathlib.Path(data), split="test") if data else
       load_episodes(pathlib.Path("data/crafter-heldout")) + load_episodes(pathlib.Path("data/crafter_ends"), split="test"))
eps = [e for e in eps if len(e["frames"]) >= (S + H if data else 200)]
marks = range(10, H + 1, 10) if data else (1, 20, 40, 60, 80)
sim = WorldSimulator(b, len(eps), **kw)
rng = np.random.default_rng(0)
shape = sim.latent_shape
sim.reset(list(range(len(eps))), np.stack([e["frames"][S - W:S] for e in eps]),
          np.stack([np.asarray(e["actions"])[S - W:S - 1] for e in eps]), rng.standard_normal((len(eps), W, *shape)),
          [episode_clock(e, S - 1) for e in eps])  # the last context frame's game step (a model with a clock reads it)


def light(f):  # mean brightness and saturation of the map view (the top 7 of 9 tile rows)
    v = f[:, :49].astype(float)
    return v.mean(), (v.max(-1) - v.min(-1)).mean()


def daylight(step):  # crafter.Env._update_time
    return 1 - np.abs(np.cos(np.pi * ((step / 300) % 1 + 0.3))) ** 3


print(f"{len(eps)} episodes; from frame {S}, model | real")
for t in range(H):
    acts = [np.asarray(e["actions"]) for e in eps]
    a = np.array([int(x[(S - 1 + t) % len(x)]) for x in acts])
    res = sim.step(a, rng.standard_normal((len(eps), *shape)), rng.standard_normal((len(eps), *shape)))
    if t + 1 in marks:
        (mb, ms), (rb, rs) = light(res.frames), light(np.stack([e["frames"][S + t] for e in eps]))
        day = np.mean([daylight(episode_clock(e, S + t)) for e in eps])
        print(f"+{t + 1:2d}: brightness {mb:5.1f} | {rb:5.1f}   saturation {ms:5.1f} | {rs:5.1f}   "
              f"game's daylight {day:.2f}", flush=True)
    elif t + 1 > 80 and (t + 1) % 20 == 0:
        mb, ms = light(res.frames)
        print(f"+{t + 1:3d} (step {S + t}): brightness {mb:5.1f}   saturation {ms:5.1f}   "
              f"game's daylight {daylight(S + t):.2f}", flush=True)
