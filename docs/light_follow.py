"""Whether a Crafter bundle's light follows dusk (README, Crafter: "Light"): every episode of 200 frames or more of
data/crafter-heldout and data/crafter_ends' test split, 4 real frames up to step 110 as context (the real light is
then falling toward night, darkest at step 210 of Crafter's 300-step day), then 80 steps of the model driven by
the real actions; the mean brightness and saturation (max - min channel, per pixel) of the map view, model
beside real, at 1, 20, 40, 60 and 80 steps on. Extra KEY=VALUE arguments go to WorldSimulator;
bundle=PATH another bundle (e.g. the bundle files of commit 9eee827, with env.map added: map_memory=false);
keep_mean=true runs its guidance with diffusion.guidance_keep_mean.

    python docs/light_follow.py [bundle=PATH] [KEY=VALUE ...]
"""
import pathlib
import sys

import numpy as np
from omegaconf import OmegaConf

from worldsim import DEFAULT_CRAFTER_BUNDLE
from worldsim.data import load_episodes
from worldsim.simulator import WorldSimulator, load_bundle


kw = OmegaConf.to_container(OmegaConf.from_dotlist(sys.argv[1:]))  # KEY=VALUE, typed
b = load_bundle(str(kw.pop("bundle", DEFAULT_CRAFTER_BUNDLE)))
if kw.pop("keep_mean", False):
    b.edm.cfg.guidance_keep_mean = True
eps = [e for e in load_episodes(pathlib.Path("data/crafter-heldout"))
       + load_episodes(pathlib.Path("data/crafter_ends"), split="test") if len(e["frames"]) >= 200]
W, S, H = 4, 110, 80
sim = WorldSimulator(b, len(eps), **kw)
rng = np.random.default_rng(0)
shape = sim.latent_shape
sim.reset(list(range(len(eps))), np.stack([e["frames"][S - W:S] for e in eps]),
          np.stack([np.asarray(e["actions"])[S - W:S - 1] for e in eps]), rng.standard_normal((len(eps), W, *shape)))


def light(f):  # mean brightness and saturation of the map view (the top 7 of 9 tile rows)
    v = f[:, :49].astype(float)
    return v.mean(), (v.max(-1) - v.min(-1)).mean()


print(f"{len(eps)} episodes of 200+ frames; from step {S}, model | real")
for t in range(H):
    a = np.array([int(np.asarray(e["actions"])[S - 1 + t]) for e in eps])
    res = sim.step(a, rng.standard_normal((len(eps), *shape)), rng.standard_normal((len(eps), *shape)))
    if t + 1 in (1, 20, 40, 60, 80):
        (mb, ms), (rb, rs) = light(res.frames), light(np.stack([e["frames"][S + t] for e in eps]))
        print(f"+{t + 1:2d}: brightness {mb:5.1f} | {rb:5.1f}   saturation {ms:5.1f} | {rs:5.1f}", flush=True)
