"""Checkpoints and model bundles: safetensors only (no pickle), written atomically.

A checkpoint is a directory of files. It is written as `NAME.tmp/`, then swapped in by renames, so a job
killed at any moment leaves either the previous complete checkpoint or the new one, never a mix.

A *bundle* is what the env loads: `bundle.json` (configs, latent statistics, env facts),
`autoencoder.safetensors`, `world_model.safetensors`, `start_states.safetensors` (uint8 start contexts) and,
optionally, `codebook.safetensors` (latent tokens generated frames snap to, and the token head that draws
them: worldsim/codebook.py).
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import load_file, save

from worldsim.autoencoder import LatentCodec, ae_config, build_autoencoder
from worldsim.diffusion import EDM, EDMConfig
from worldsim.model import WorldDiT

BUNDLE_FORMAT = "worldsim-bundle/1"


def tensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> bytes:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return save(tensors, metadata={k: json.dumps(v) for k, v in (metadata or {}).items()})


def write_dir_atomic(path: Path, files: dict[str, bytes]) -> None:
    """Write `files` as the directory `path`, replacing any previous one atomically (by renames)."""
    path = Path(path)
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, data in files.items():
        with open(tmp / name, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def resolve_dir(path: Path) -> Path | None:
    """The complete checkpoint at `path`, or the previous one if a kill struck between the two renames."""
    path = Path(path)
    if path.is_dir():
        return path
    old = path.with_name(path.name + ".old")
    return old if old.is_dir() else None


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    sd = opt.state_dict()
    tensors = {f"{pid}.{k}": v if torch.is_tensor(v) else torch.tensor(v)
               for pid, st in sd["state"].items() for k, v in st.items()}
    return tensors, {"param_groups": sd["param_groups"]}


def load_optimizer(opt: torch.optim.Optimizer, data: bytes) -> None:
    tensors = st_load(data)
    meta = _metadata(data)
    state: dict = {}
    for key, v in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _metadata(data: bytes) -> dict:
    """The JSON metadata of a safetensors file (its header: 8-byte length, then JSON), given its first bytes."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    return {k: json.loads(v) for k, v in header.get("__metadata__", {}).items()}


def read_metadata(path: Path) -> dict:
    with open(path, "rb") as f:
        head = f.read(8)
        return _metadata(head + f.read(int.from_bytes(head, "little")))


# ---- bundles --------------------------------------------------------------------------------------


def bundle_files(ae, dit, edm_cfg: EDMConfig, latent_stats: tuple[float, float], env_info: dict,
                 start_frames: torch.Tensor, start_actions, extra: dict | None = None) -> dict:
    """start_actions: (S, W-1, ...) tensor, or a dict of them for Dict action spaces (stored as action$KEY)."""
    if isinstance(start_actions, dict):
        acts = {f"action${k}": v.contiguous() for k, v in start_actions.items()}
    else:
        acts = {"actions": start_actions if start_actions.is_floating_point() else start_actions.to(torch.int64)}
    meta = {"format": BUNDLE_FORMAT, "autoencoder": ae_config(ae), "world_model": dict(dit.config),
            "diffusion": asdict(edm_cfg), "latent_mean": latent_stats[0], "latent_std": latent_stats[1],
            "env": env_info, **(extra or {})}
    return {
        "bundle.json": json.dumps(_jsonable(meta), indent=1).encode(),
        "autoencoder.safetensors": tensors_bytes(ae.state_dict()),
        "world_model.safetensors": tensors_bytes(dit.state_dict()),
        "start_states.safetensors": tensors_bytes({"frames": start_frames.to(torch.uint8), **acts}),
    }


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items() if not k.startswith("_")}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


class Bundle:
    """A trained world: autoencoder + world model + diffusion settings + start states, ready for inference."""

    def __init__(self, path: Path, device: str | torch.device = "cpu"):
        path = Path(path)
        if not (path / "bundle.json").exists():
            raise FileNotFoundError(f"{path} is not a worldsim bundle (no bundle.json)")
        self.path = path
        self.meta = json.loads((path / "bundle.json").read_text())
        if self.meta.get("format") != BUNDLE_FORMAT:
            raise ValueError(f"{path}: unknown bundle format {self.meta.get('format')!r}")
        self.ae = _load_autoencoder(self.meta["autoencoder"], path / "autoencoder.safetensors", device)
        wm = {k: v for k, v in self.meta["world_model"].items() if not k.startswith("_")}
        self.dit = WorldDiT(**wm)
        self.dit.load_state_dict(load_file(path / "world_model.safetensors"))
        self.dit.to(device).eval()
        self.edm = EDM(EDMConfig(**self.meta["diffusion"]))
        self.codec = LatentCodec(self.ae, self.meta["latent_mean"], self.meta["latent_std"])
        start = load_file(path / "start_states.safetensors")
        keyed = {k[len("action$"):]: v for k, v in start.items() if k.startswith("action$")}
        self.start_frames = start["frames"]
        self.start_actions = keyed if keyed else start["actions"]  # (S, W-1, ...), or a dict of them
        self.env = self.meta["env"]
        cb = path / "codebook.safetensors"
        tensors = load_file(cb) if cb.exists() else {}
        self.codebook = tensors["codebook"].to(device) if tensors else None
        # the token head (snap=sample): groups of entries and the head's weights, beside the codebook
        self.token_head = None
        self.codebook_groups = tensors["groups"].to(device) if "groups" in tensors else None
        head = (self.meta.get("codebook") or {}).get("head")
        if head and "groups" in tensors:
            from worldsim.codebook import TokenHead
            self.token_head = TokenHead(self.dit.config.dim, self.codebook.shape[1], head["groups"], head["hidden"])
            self.token_head.load_state_dict({k[len("head."):]: v for k, v in tensors.items() if k.startswith("head.")})
            self.token_head.to(device).eval()
        # the terrain prior (new_ground=terrain): new ground's tile groups from the view around it
        self.terrain_prior = self.terrain_fixed_only = None
        terrain = (self.meta.get("codebook") or {}).get("terrain")
        if terrain and "groups" in tensors:
            from worldsim.codebook import TerrainPrior
            self.terrain_prior = TerrainPrior(terrain["groups"], terrain["hidden"])
            self.terrain_prior.load_state_dict({k[len("terrain."):]: v for k, v in tensors.items()
                                                if k.startswith("terrain.")})
            self.terrain_prior.to(device).eval()
            self.terrain_fixed_only = torch.tensor(terrain.get("fixed_only", []), dtype=torch.long, device=device)
        # entries of things that move (`worldsim codebook mobile=true`): the map memory keeps none of them
        mobile = (self.meta.get("codebook") or {}).get("mobile")
        self.codebook_mobile = (torch.tensor(mobile["entries"], dtype=torch.long, device=device)
                                if mobile and self.codebook is not None else None)
        # the tick display (worldsim ticks): the glyph each drawn tick pastes into its counter's tile
        self.tick_display = None
        if self.meta.get("tick_display"):
            from worldsim.ticks import DISPLAY_FILE, TickDisplay
            if (path / DISPLAY_FILE).exists():
                self.tick_display = TickDisplay.load(path / DISPLAY_FILE, self.meta["tick_display"], device)


def _load_autoencoder(cfg: dict, weights: Path, device):
    ae = build_autoencoder(cfg)
    ae.load_state_dict(load_file(weights))
    return ae.to(device).eval()


__all__ = ["Bundle", "bundle_files", "bundle_path", "load_optimizer", "optimizer_tensors", "read_metadata",
           "resolve_dir", "tensors_bytes", "write_dir_atomic"]


def bundle_path(name) -> Path:
    """A shipped bundle's name (`crafter`, `minetest`) or a path, as a path (a bundle at that path first: a
    directory of one's own named `crafter` is not the shipped one)."""
    from worldsim import ASSETS

    if (Path(name) / "bundle.json").exists():
        return Path(name)
    return ASSETS / name if (ASSETS / str(name) / "bundle.json").exists() else Path(name)


def bundle_and_training_data(bundle: str, data, device: str = "cpu") -> tuple[Path, "Bundle", list]:
    """For jobs that fit a part of a bundle on collections (`worldsim codebook`, `worldsim heads`): the bundle's
    path (a name of a shipped bundle, or a path), the Bundle, and the training episodes of `data` (one collect
    dir or a list of them), with clear errors for an empty collection or frames of another size."""
    from worldsim.data import load_episodes, load_manifest

    path = bundle_path(bundle)
    b = Bundle(path, device)
    eps = []
    for d in data_dirs(data):
        part = load_episodes(d, split="train")
        if not part:
            raise ValueError(f"{d}: no training episodes")
        shape = tuple(part[0]["frames"].shape[1:])
        if shape != tuple(b.env["frame_shape"]):
            raise ValueError(f"{d}: frames of shape {shape}, the bundle's are {tuple(b.env['frame_shape'])}")
        sleep = (load_manifest(d)["env"] or {}).get("sleep")
        if b.env.get("light") and sleep != b.env.get("sleep"):  # a model on canvases: a sleeper drawn alike
            kind = {None: "show a sleeper's grey view", "crafter": "leave a sleeper's grey view to the env"}
            raise ValueError(f"{d}: its canvases {kind.get(sleep, sleep)} (env.sleep {sleep}), but the bundle's "
                             f"model read canvases that {kind.get(b.env.get('sleep'), b.env.get('sleep'))}: fit a "
                             f"bundle whose model was trained on canvases like these")
        eps += part
    return path, b, eps


def data_dirs(data) -> list[Path]:
    """`data=D` or `data=[D1,D2]` (Hydra list) as a list of paths."""
    return [Path(str(d)) for d in ([data] if isinstance(data, (str, Path)) else data)]
