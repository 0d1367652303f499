"""A fine-tuned world model in the shipped bundle's setting: `python docs/graft_world_model.py RUN_BUNDLE OUT
[BASE]` copies BASE (default: the shipped Crafter bundle) to OUT with RUN_BUNDLE's world model (weights and
architecture: a clock input, say) and its training record, keeping BASE's autoencoder, codebook and terrain
prior, start states, `env` (the map), decode and inference settings, which `worldsim train init=BASE` does not
carry into the bundle it writes. Why a script: those parts are fitted to BASE's autoencoder, which a
fine-tune keeps frozen, so they stay valid; the heads come with the new weights as trained.
"""
import json
import shutil
import sys
from pathlib import Path

from worldsim import DEFAULT_CRAFTER_BUNDLE
from worldsim.checkpoint import Bundle, tensors_bytes

run, out = Path(sys.argv[1]), Path(sys.argv[2])
base = Path(sys.argv[3]) if len(sys.argv) > 3 else Path(DEFAULT_CRAFTER_BUNDLE)
b, r = Bundle(base), Bundle(run)
if tensors_bytes(b.ae.state_dict()) != tensors_bytes(r.ae.state_dict()) or \
        (b.meta["latent_mean"], b.meta["latent_std"]) != (r.meta["latent_mean"], r.meta["latent_std"]):
    sys.exit(f"{run}: its autoencoder or latent normalisation differs from {base}'s; it was not fine-tuned from it")
if out.exists():
    shutil.rmtree(out)
shutil.copytree(base, out)
shutil.copy(run / "world_model.safetensors", out / "world_model.safetensors")
meta = json.loads((base / "bundle.json").read_text())
new = json.loads((run / "bundle.json").read_text())
meta["world_model"] = new["world_model"]
meta["trained"] = {**new["trained"], "grafted_into": str(base)}
(out / "bundle.json").write_text(json.dumps(meta, indent=1))
print(f"{out}: {base} with the world model of {run}")
