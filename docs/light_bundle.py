"""A Crafter bundle whose frames the env lights by its clock: `python docs/light_bundle.py OUT [BASE]` copies BASE
(default: the shipped Crafter bundle) to OUT marked as drawing the world without the game's light (bundle.json
`env.light: crafter`, `inference.light: true`). Then fit its codebook and terrain prior on canvases, so the snap
keeps the world at full day and the env adds the night:

    PYTHONHASHSEED=0 worldsim collect out=data/crafter_canvas episodes=320 workers=2 seed=10000 light=false
    PYTHONHASHSEED=0 worldsim collect out=data/crafter_ends_canvas episodes=160 workers=2 seed=30000 light=false
    python docs/light_bundle.py runs/lit
    worldsim codebook bundle=runs/lit "data=[data/crafter_canvas,data/crafter_ends_canvas]" terrain=true \
        new_ground=terrain

Since 2026-12-06 the shipped bundle is such a bundle (made from the one of commit 1597d6c as BASE; docs/results.md,
"The light drawn by the env, shipped", gives every step), so marking it again changes nothing.
The world model and heads stay BASE's (trained on lit frames; a canvas is a frame at full daylight, which they
have seen); docs/results.md, "The game's light, drawn by the env", measures what that gives and what it does not.
"""
import json
import shutil
import sys
from pathlib import Path

from worldsim import DEFAULT_CRAFTER_BUNDLE

if len(sys.argv) not in (2, 3):
    sys.exit(__doc__)
out = Path(sys.argv[1])
base = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(DEFAULT_CRAFTER_BUNDLE)
if out.exists():
    sys.exit(f"{out} exists; choose another OUT")
meta = json.loads((base / "bundle.json").read_text())
if meta.get("env", {}).get("name") != "crafter":
    sys.exit(f"{base} is not a Crafter bundle (env.name {meta.get('env', {}).get('name')!r}): the light is Crafter's")
shutil.copytree(base, out)
meta["env"]["light"] = "crafter"
meta.setdefault("inference", {})["light"] = True
(out / "bundle.json").write_text(json.dumps(meta, indent=1))
print(f"{out}: {base} marked env.light=crafter; refit its codebook on canvases (see this script's docstring)")
