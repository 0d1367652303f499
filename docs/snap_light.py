"""Does the codebook snap keep a gradual change of light? On the test episodes (44 frames or more) of a
collection begun late in the night (`worldsim collect clock_start=...`, default data/crafter_dawn2), real dawn
frames are encoded and decoded as they are and snapped to their nearest codebook entries; then a ratchet: the
first frame's snapped latent moved each step by the real latent change and snapped again, for 39 steps (the
simulator's context keeps snapped latents, so a change smaller than the entries' spacing could be lost each
step). Prints the map view's brightness / saturation of each beside the real frames'.

    python docs/snap_light.py [BUNDLE] [DATA]
"""
import pathlib
import sys

import numpy as np

from worldsim import DEFAULT_CRAFTER_BUNDLE
from worldsim.codebook import encode_frames, snap
from worldsim.data import load_episodes
from worldsim.simulator import load_bundle

b = load_bundle(sys.argv[1] if len(sys.argv) > 1 else str(DEFAULT_CRAFTER_BUNDLE))
data = pathlib.Path(sys.argv[2] if len(sys.argv) > 2 else "data/crafter_dawn2")
eps = [e for e in load_episodes(data, split="test") if len(e["frames"]) >= 44]
if b.codebook is None or not eps:
    sys.exit(f"needs a bundle with a codebook and test episodes of 44+ frames in {data}")


def light(f):  # mean brightness and saturation of the map view (the top 7 of 9 tile rows)
    v = np.asarray(f)[:, :49].astype(float)
    return "%5.1f / %5.1f" % (v.mean(), (v.max(-1) - v.min(-1)).mean())


frames = [np.stack([e["frames"][t] for e in eps]) for t in range(4, 44)]
zs = [encode_frames(b.codec, f) for f in frames]
print(f"{len(eps)} episodes; brightness / saturation")
for k in (0, 10, 20, 30, 39):
    print(f"frame {k + 4:2d}: real {light(frames[k])}   decoded {light(b.codec.decode(zs[k]))}   "
          f"snapped {light(b.codec.decode(snap(zs[k], b.codebook)))}")
cur = snap(zs[0], b.codebook)
for k in range(1, 40):
    cur = snap(cur + (zs[k] - zs[k - 1]), b.codebook)
    if k % 10 == 0 or k == 39:
        print(f"ratchet +{k:2d}: {light(b.codec.decode(cur))}   real {light(frames[k])}")
