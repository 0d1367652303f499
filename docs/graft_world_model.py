"""A fine-tuned world model in the shipped bundle's setting: `python docs/graft_world_model.py RUN_BUNDLE OUT
[BASE] [--keep-heads]` copies BASE (default: the shipped Crafter bundle) to OUT with RUN_BUNDLE's world model (weights and
architecture: a clock input or ticks, say; ticks bring the env's counters) and its training record, keeping BASE's
autoencoder, codebook and terrain prior, start states, `env` (the map), decode and inference settings, which `worldsim train init=BASE` does not
carry into the bundle it writes. Why a script: those parts are fitted to BASE's autoencoder, which a
fine-tune keeps frozen, so they stay valid; the heads come with the new weights as trained, or with
--keep-heads BASE's (refit and calibrated heads, where a gentle fine-tune left the features they read near
BASE's: check with `worldsim eval`'s heads figures before shipping).
"""
import json
import shutil
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

from worldsim import DEFAULT_CRAFTER_BUNDLE
from worldsim.checkpoint import Bundle, tensors_bytes

args = [a for a in sys.argv[1:] if a != "--keep-heads"]
keep_heads = len(args) < len(sys.argv) - 1
run, out = Path(args[0]), Path(args[1])
base = Path(args[2]) if len(args) > 2 else Path(DEFAULT_CRAFTER_BUNDLE)
b, r = Bundle(base), Bundle(run)
if tensors_bytes(b.ae.state_dict()) != tensors_bytes(r.ae.state_dict()) or \
        (b.meta["latent_mean"], b.meta["latent_std"]) != (r.meta["latent_mean"], r.meta["latent_std"]):
    sys.exit(f"{run}: its autoencoder or latent normalisation differs from {base}'s; it was not fine-tuned from it")
meta = json.loads((base / "bundle.json").read_text())
new = json.loads((run / "bundle.json").read_text())


def build(wm):  # the world model's architecture, less the ticks a fine-tune may add and the blocks a student may
    # drop (dit.drop_blocks): the heads fit either way
    return {k: v for k, v in wm.items() if k not in ("ticks", "depth")}


if keep_heads and build(new["world_model"]) != build(meta["world_model"]):  # checked before OUT is touched
    sys.exit(f"--keep-heads: {run}'s world model is not built as {base}'s; its heads would not fit")
if out.exists():
    shutil.rmtree(out)
shutil.copytree(base, out)
if keep_heads:
    heads = ("head_norm.", "heads_mlp.")
    w = load_file(run / "world_model.safetensors")
    w.update({k: v for k, v in load_file(base / "world_model.safetensors").items() if k.startswith(heads)})
    save_file(w, out / "world_model.safetensors")
else:
    shutil.copy(run / "world_model.safetensors", out / "world_model.safetensors")
meta["world_model"] = new["world_model"]
if "sleep" in new["env"]:  # trained on canvases that leave a sleeper's grey to the env, which must draw it
    meta["env"]["sleep"] = new["env"]["sleep"]
if new["world_model"].get("ticks"):  # the env names the ticks after the counters the run's data recorded
    meta["env"]["counters"] = new["env"]["counters"]
else:  # BASE's tick display (worldsim ticks) goes with its tick head; `worldsim ticks` fits both on OUT again
    meta.pop("tick_display", None)
    (meta.get("inference") or {}).pop("ticks", None)
    (out / "tick_display.safetensors").unlink(missing_ok=True)
kept = {k: v for k, v in meta["trained"].items()
        if keep_heads and k.startswith(("heads_", "reward_", "rest_"))}  # the heads' refit record
meta["trained"] = {**new["trained"], **kept,
                   "grafted_into": str(base) + (" (its heads kept)" if keep_heads else "")}
(out / "bundle.json").write_text(json.dumps(meta, indent=1))
print(f"{out}: {base} with the world model of {run}")
