"""`worldsim train`: autoencoder, then world model with its reward/termination heads, then a bundle.

Stages run in order and each is resumable: the run directory holds one checkpoint (`RUN/ckpt/`, swapped
in atomically) with weights, optimizer states and `state.json` (stage, step, loss history). Kill the job
at any point and run the same command again to continue. `ae.minutes` / `dit.minutes` cap a stage's
wall-clock time per invocation (handy on CPU): the stage continues where it stopped next time.

`init=BUNDLE` fine-tunes a trained bundle (e.g. the shipped model, `init=crafter` / `init=minetest`) on new
data: its autoencoder is kept frozen (the stage is skipped, so latents keep their meaning) and the world
model and heads continue from its weights, architecture and latent normalisation included.

`dit.ema=D` keeps an exponential moving average of the world model's weights (decay D per step) in the
checkpoint, continued across a resume, and the bundle ships the average instead of the last step's weights.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import time
import warnings
from dataclasses import fields
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
import torch
from safetensors.torch import load as st_load
from safetensors.torch import load_file
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from worldsim.autoencoder import LatentCodec, ae_config, make_autoencoder, to_pixels, training_loss
from worldsim.checkpoint import (Bundle, bundle_files, bundle_path, data_dirs, load_optimizer, optimizer_tensors,
                                 read_metadata, resolve_dir, tensors_bytes, write_dir_atomic)
from worldsim.codebook import CERTAIN, fit_codebook, fit_token_head, require_plain, require_tiles, with_codebook
from worldsim.data import (WindowDataset, atomic_write_bytes, index_actions, load_episodes, load_manifest,
                           tick_names)
from worldsim.diffusion import EDM, EDMConfig
from worldsim.evaluate import phase_shift, psnr_np
from worldsim.model import WorldDiT


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def cosine(step: int, total: int, floor: float = 0.1) -> float:
    """Cosine learning-rate decay from 1 to `floor` over `total` steps."""
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))


def schedule_progress(step: int, steps: int, elapsed_s: float, minutes: float, by_time: bool) -> float:
    """How far the learning-rate decay has gone, 0..1: by steps, or with `by_time` (dit.schedule=minutes) by
    whichever of steps and the wall-clock cap runs out first. Why: on hardware whose speed is not known in
    advance (a lent GPU) a run capped by minutes still ends annealed instead of stopping at a high rate."""
    p = min(step, steps) / steps
    if by_time and minutes:
        p = max(p, min(1.0, elapsed_s / (60 * minutes)))
    return p


class Trainer:
    def __init__(self, cfg):
        self.cfg = cfg
        self.device = pick_device(cfg.device)
        if cfg.threads:
            torch.set_num_threads(int(cfg.threads))
        torch.manual_seed(cfg.seed)
        self.run = Path(cfg.run)
        self.run.mkdir(parents=True, exist_ok=True)
        dirs = data_dirs(cfg.data)  # data=D or data=[D1,D2]: collections of one game, trained on together
        self.env_info = load_manifest(dirs[0])["env"]
        for d in dirs[1:]:
            env = load_manifest(d)["env"]
            # light, sleep: frames lit or not, a sleeper greyed or not (collect light=false, grey_sleep=false)
            for key in ("name", "frame_shape", "action_space", "light", "sleep"):
                if env.get(key) != self.env_info.get(key):
                    raise ValueError(f"data={d}: its {key} {env.get(key)} differs from {dirs[0]}'s "
                                     f"{self.env_info.get(key)}; train on collections of one game together")
        self.train_eps = [e for d in dirs for e in load_episodes(d, split="train", min_steps=1)]
        self.test_eps = [e for d in dirs for e in load_episodes(d, split="test", min_steps=1)]
        if not self.train_eps:
            raise ValueError(f"no training episodes in {cfg.data}: run `worldsim collect out={cfg.data}` first")
        # The reward head learns rewards / reward_scale (the env multiplies back): a game whose rewards reach
        # -16 a step (Pendulum) would otherwise make the reward loss dwarf the denoising loss in the shared
        # trunk. Games whose rewards stay within [-1, 1] (Crafter) keep scale 1, and their bundles omit it.
        self.reward_scale = max(1.0, max(float(np.abs(e["rewards"]).max(initial=0.0)) for e in self.train_eps))
        if cfg.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, got {cfg.precision!r}")
        # bf16 autocast on GPU by default; on CPU fp32 is faster
        self.amp = cfg.precision == "bf16" or (cfg.precision == "auto" and self.device.type == "cuda")
        self.edm_cfg = EDMConfig(**{f.name: cfg.diffusion[f.name] for f in fields(EDMConfig) if f.name in cfg.diffusion})
        self.edm = EDM(self.edm_cfg)
        if float(cfg.get("detail_carry") or 0.0) > 0 and not self.edm_cfg.residual:
            raise ValueError("detail_carry needs diffusion.residual=true: the carried detail is measured against the "
                             "decoded centre of a residual model's skip connection")
        self.state = {"stage": "ae", "ae_step": 0, "dit_step": 0, "history": {"ae": [], "dit": []},
                      "latent_mean": 0.0, "latent_std": 1.0, "metrics": {}}
        self.distill = float(cfg.dit.get("distill_guidance") or 0.0)
        self.distill_record = self.distill  # the guidance the bundle written has built in (self-distillation: the init's)
        self.teacher = None
        # still_real: in distillation, windows ending on a still step learn the real frame, not the teacher's;
        # with distill_guidance=1 (self-distillation) that corrects a distilled model there and keeps it elsewhere
        self.still_real = bool(cfg.dit.get("still_real", False))
        self.change_real = bool(cfg.dit.get("change_real", False))
        # drop_blocks: the init's world model less those blocks (WorldDiT.without_blocks), distilled from the init
        self.drop_blocks = [int(i) for i in (cfg.dit.get("drop_blocks") or [])]
        if self.distill and (not cfg.get("init") or not math.isfinite(self.distill) or self.distill < 1
                             or (self.distill == 1 and not (self.still_real or self.change_real
                                                            or cfg.dit.get("tick_real") or self.drop_blocks
                                                            or cfg.dit.get("teacher")))):
            raise ValueError(f"dit.distill_guidance={cfg.dit.distill_guidance}: guidance distillation needs "
                             "init=BUNDLE (the teacher) and a guidance scale > 1 (or 1 with dit.still_real=true "
                             "or dit.change_real=true or dit.tick_real=true: self-distillation with still windows, "
                             "changed tokens or ticking windows learning the real frame; or dit.drop_blocks: a "
                             "shallower student learning its bundle; or dit.teacher=BUNDLE: the init, e.g. a student "
                             "distilled before, learning that bundle's prediction)")
        if self.drop_blocks and not self.distill:
            raise ValueError("dit.drop_blocks removes blocks from init=BUNDLE's world model, which then learns the "
                             "bundle's prediction: set dit.distill_guidance (1 keeps the bundle's own guidance)")
        # feature_distill: weight of the student's last-block tokens learning the teacher's (relative squared error),
        # so the heads, tick head and token head that read them keep working on a student (drop_blocks)
        self.feature_distill = float(cfg.dit.get("feature_distill") or 0.0)
        if not (math.isfinite(self.feature_distill) and self.feature_distill >= 0):
            raise ValueError(f"dit.feature_distill={cfg.dit.get('feature_distill')} must be a finite number >= 0")
        if self.feature_distill and not self.distill:
            raise ValueError("dit.feature_distill weights a distillation loss: set dit.distill_guidance too")
        if self.still_real and not self.distill:
            raise ValueError("dit.still_real=true replaces the distillation teacher's target on still windows: "
                             "set dit.distill_guidance too (1 keeps the bundle's own guidance)")
        # scheduled sampling on the model's own rollouts (EDM.rollout): up to this many generated context frames
        self.rollout_steps = int(cfg.dit.get("rollout_steps") or 0)
        if self.rollout_steps < 0 or not 0 <= float(cfg.dit.get("rollout_prob", 0.5)) <= 1:
            raise ValueError(f"dit.rollout_steps={cfg.dit.rollout_steps} must be >= 0 and dit.rollout_prob="
                             f"{cfg.dit.get('rollout_prob')} in [0, 1]")
        if self.rollout_steps and self.distill:
            raise ValueError("dit.rollout_steps and dit.distill_guidance are separate fine-tunes: run one, then the other")
        # share of batches trained with the one-step sampler's energy score instead of the denoising loss
        self.energy_prob = float(cfg.dit.get("energy_prob") or 0.0)
        if not 0 <= self.energy_prob <= 1:
            raise ValueError(f"dit.energy_prob={cfg.dit.energy_prob} must be in [0, 1]")
        if self.energy_prob and self.distill:
            raise ValueError("dit.energy_prob and dit.distill_guidance are separate fine-tunes: run one, then the other")
        self.still_weight = float(cfg.dit.get("still_weight", 1.0))
        if not (math.isfinite(self.still_weight) and self.still_weight > 0):
            raise ValueError(f"dit.still_weight={cfg.dit.get('still_weight')} must be a finite number > 0 "
                             "(1 = every window equally likely)")
        self.event_share = float(cfg.dit.get("event_share") or 0.0)
        if not (math.isfinite(self.event_share) and 0 <= self.event_share < 1):
            raise ValueError(f"dit.event_share={cfg.dit.get('event_share')} must be in [0, 1): about the share of "
                             "drawn windows that end on each event type (0 = every window equally likely)")
        self.action_share = self._action_shares(cfg.dit.get("action_share") or {})
        self.still_threshold = float(cfg.dit.get("still_threshold", 1.0))
        if not (math.isfinite(self.still_threshold) and self.still_threshold > 0):
            raise ValueError(f"dit.still_threshold={cfg.dit.get('still_threshold')} must be a finite number > 0 "
                             "(grey levels of mean frame change under which an action's step counts as still)")
        # tokens the real step changed: weighted in the loss; with change_real, the real frame's in distillation
        self.change_weight = float(cfg.dit.get("change_weight", 1.0))
        self.change_threshold = float(cfg.dit.get("change_threshold", 0.2))
        if not (math.isfinite(self.change_weight) and self.change_weight > 0):
            raise ValueError(f"dit.change_weight={cfg.dit.get('change_weight')} must be a finite number > 0 "
                             "(1 = every token weighted alike)")
        if not (math.isfinite(self.change_threshold) and self.change_threshold > 0):
            raise ValueError(f"dit.change_threshold={cfg.dit.get('change_threshold')} must be a finite number > 0 "
                             "(mean absolute latent change, normalised units, over which a token counts as changed)")
        self.schedule = str(cfg.dit.get("schedule", "steps"))
        if self.schedule not in ("steps", "minutes") or (self.schedule == "minutes" and not cfg.dit.get("minutes")):
            raise ValueError(f"dit.schedule={self.schedule} must be steps, or minutes together with dit.minutes > 0")
        self.novel_weight = float(cfg.dit.get("novel_weight", 1.0))
        if not (math.isfinite(self.novel_weight) and self.novel_weight > 0):
            raise ValueError(f"dit.novel_weight={cfg.dit.get('novel_weight')} must be a finite number > 0 "
                             "(1 = novel tokens weighted like the rest)")
        if self.change_real and not self.distill:
            raise ValueError("dit.change_real=true replaces the distillation teacher's target on changed tokens: "
                             "set dit.distill_guidance too (1 keeps the bundle's own guidance)")
        self.inherited = {}
        if cfg.get("init"):  # the bundle fixes the architecture: model/autoencoder presets are not used
            self._init_from_bundle(cfg.init)
        else:
            if cfg.autoencoder.preset.startswith("tile7") and self.env_info.get("name") != "crafter":
                warnings.warn(f"autoencoder={cfg.autoencoder.preset} cuts frames into Crafter's 7-pixel tiles; for "
                              f"{self.env_info.get('name')!r} frames autoencoder=patch8 model=small_p1 (8-pixel "
                              f"patches, one token each) is the general choice")
            ae_kw = {k: v for k, v in cfg.autoencoder.items() if k != "preset"}  # preset fields overridden
            self.ae = make_autoencoder(cfg.autoencoder.preset, frame_shape=self.env_info["frame_shape"],
                                       **ae_kw).to(self.device)
            self.dit = WorldDiT(action_spec=self.env_info["action_space"],
                                latent_channels=self.ae.config.latent_channels, **dict(cfg.model)).to(self.device)
        if cfg.get("codebook"):  # checked now, not at export after hours of training
            require_tiles(ae_config(self.ae), "codebook")
        if cfg.get("codebook_head") and not cfg.get("codebook"):
            raise ValueError("codebook_head=true trains the token head of a codebook: set codebook=K too")
        warp = cfg.dit.get("warp_action")
        if cfg.get("codebook_head"):  # likewise checked now
            require_plain(self.edm_cfg.residual, warp or self.dit.config.warp_action)
        if warp and self.dit.config.warp_action is None:  # before the optimizer and the resume: it adds inputs
            matrix, fit = calibrate_warp(self.train_eps, warp)
            self.dit = self.dit.with_warp(warp, matrix, cfg.dit.get("warp_kind") or "shift")
            self.state["metrics"]["warp_fit"] = fit
            print(f"warp input: previous frame shifted by the {warp!r} action; fitted on {fit['pairs']} frame pairs: "
                  f"pixels per unit {fit['pixels_per_unit']} (rows: action components; columns: dy, dx), "
                  f"R^2 dy {fit['r2'][0]:.2f} dx {fit['r2'][1]:.2f}")
        elif warp and self.dit.config.warp_action != warp:
            raise ValueError(f"dit.warp_action={warp!r}, but the world model already warps by "
                             f"{self.dit.config.warp_action!r}")
        clock = cfg.dit.get("clock_period")
        if clock and not self.dit.config.clock_period:  # before the optimizer and the resume: it adds an input
            self.dit = self.dit.with_clock(int(clock))
        elif clock and int(clock) != self.dit.config.clock_period:
            raise ValueError(f"dit.clock_period={clock}, but the world model already reads a clock of period "
                             f"{self.dit.config.clock_period}")
        # ticks: the counters' rises and falls (episodes with `counters`) as an input of every frame, drawn by a
        # tick head at inference (model.TickHead); added to an init=BUNDLE model that has none, starting at zero
        if self.dit.config.ticks and not cfg.dit.get("ticks"):  # an init=BUNDLE model's: kept only when trained
            self.dit = self.dit.without_ticks()
            print("the init bundle's ticks are left out of this fine-tune (dit.ticks=true keeps and trains them; "
                  "`worldsim ticks` fits a tick head on the bundle it writes)")
        self.tick_real = bool(cfg.dit.get("tick_real", False))
        self.tick_weight = float(cfg.dit.get("tick_weight", 1.0))
        if cfg.dit.get("ticks") and not self.dit.config.ticks:
            counters = self.env_info.get("counters")
            if not counters or any("counters" not in e for e in self.train_eps):
                raise ValueError(f"dit.ticks=true needs episodes that record the game's counters (env.counters in "
                                 f"the manifest; `worldsim collect env=crafter` writes them): {cfg.data} does not")
            self.dit = self.dit.with_ticks(len(tick_names(counters)))
        if (self.tick_real or self.tick_weight != 1) and not self.dit.config.ticks:
            raise ValueError("dit.tick_real / dit.tick_weight act on ticks: set dit.ticks=true")
        if self.tick_real and not self.distill:
            raise ValueError("dit.tick_real=true replaces the distillation teacher's target on windows whose last "
                             "step ticks: set dit.distill_guidance too (1 keeps the bundle's own guidance)")
        if not (math.isfinite(self.tick_weight) and self.tick_weight > 0):
            raise ValueError(f"dit.tick_weight={cfg.dit.get('tick_weight')} must be a finite number > 0")
        if self.dit.config.ticks and (self.rollout_steps or self.energy_prob):
            raise ValueError("dit.rollout_steps / dit.energy_prob do not feed ticks yet: train ticks without them")
        mode = cfg.dit.get("context_attention")
        if mode and mode != self.dit.config.context_attention:  # same weights, context frames attend otherwise
            self.dit = self.dit.with_context_attention(mode)
        if self.dit.config.context_attention == "frame" and (self.rollout_steps or self.energy_prob):
            raise ValueError("dit.rollout_steps / dit.energy_prob are not written for context_attention=frame "
                             "models yet (their context frames attend to themselves alone)")
        kind, zoom = cfg.dit.get("warp_kind"), cfg.dit.get("warp_zoom")
        zoom = OmegaConf.to_container(zoom) if zoom else None
        if (kind and kind != self.dit.config.warp_kind) or (zoom and zoom != self.dit.config.warp_zoom):
            # same weights, the warp the input and centre get changes
            if self.dit.config.warp_action is None:
                raise ValueError("dit.warp_kind / dit.warp_zoom need a warp input: set dit.warp_action too")
            self.dit = self.dit.with_warp_kind(kind or self.dit.config.warp_kind, zoom or self.dit.config.warp_zoom)
        self.opt_ae = torch.optim.AdamW(self.ae.parameters(), lr=cfg.ae.lr, weight_decay=0.0)
        self.opt_dit = torch.optim.AdamW(self.dit.parameters(), lr=cfg.dit.lr, weight_decay=cfg.dit.weight_decay,
                                         betas=(0.9, 0.99))
        # an exponential moving average of the world model's weights (as DiT and EDM keep), shipped instead of
        # the last step's: torch's AveragedModel, which starts as a copy at the first update
        self.ema_decay = float(cfg.dit.get("ema") or 0.0)
        if not (math.isfinite(self.ema_decay) and 0 <= self.ema_decay < 1):
            raise ValueError(f"dit.ema={cfg.dit.get('ema')} must be in [0, 1) (the EMA decay per step; 0 = off)")
        self.ema = (AveragedModel(self.dit, multi_avg_fn=get_ema_multi_avg_fn(self.ema_decay))
                    if self.ema_decay else None)
        self.rng = np.random.default_rng(cfg.seed)
        self._resume()
        self.state["metrics"].update(self.inherited)  # after a resume too: older checkpoints lack them
        self.started_at = {k: self.state[k] for k in ("stage", "ae_step", "dit_step")}

    def _action_shares(self, given) -> dict:
        """dit.action_share {action: share}, each action a name of the collection's action_meanings or an index
        of its discrete action space -> {index: share}; a clear error for anything else."""
        space = self.env_info.get("action_space") or {}
        if given and space.get("type") != "discrete":
            raise ValueError(f"dit.action_share is for discrete action spaces; {self.cfg.data}'s is {space.get('type')}")
        names = list(self.env_info.get("action_meanings") or [])
        out = {}
        for k, share in dict(given).items():
            if isinstance(k, str) and not k.lstrip("-").isdigit():
                if k not in names:
                    raise ValueError(f"dit.action_share names {k!r}, which is not one of the collection's actions "
                                     f"{names or '(it names none: give indices)'}")
                i = names.index(k)
            else:
                i = int(k)
                if not 0 <= i < int(space["n"]):
                    raise ValueError(f"dit.action_share action {i} is outside the action space (0..{int(space['n']) - 1})")
            share = float(share)
            if not (math.isfinite(share) and 0 < share < 1):
                raise ValueError(f"dit.action_share.{k}={share} must be in (0, 1): about the share of drawn windows "
                                 "that end on that action")
            out[i] = share
        return out

    def _init_from_bundle(self, init: str):
        """Take the autoencoder, world model and latent normalisation from a bundle."""
        path = bundle_path(init)
        b = Bundle(path, self.device)
        for key in ("frame_shape", "action_space"):
            if b.env[key] != self.env_info[key]:
                raise ValueError(f"init={init}: the bundle's {key} {b.env[key]} differs from the data's "
                                 f"{self.env_info[key]} ({self.cfg.data}); fine-tune on data of the same game")
        self.ae, self.dit = b.ae.train(), b.dit.train()
        if self.drop_blocks:  # the teacher below is the bundle whole
            self.dit = self.dit.without_blocks(self.drop_blocks)
            print(f"dit.drop_blocks={self.drop_blocks}: the world model keeps {self.dit.config.depth} of "
                  f"{b.dit.config.depth} blocks")
        self.reward_scale = float(b.env.get("reward_scale", 1.0))  # its heads' scale, whatever the new data's
        if self.distill:  # the teacher is the bundle as it is, also when the student resumes from a checkpoint
            tb, tname = b, f"init={init}"
            if self.cfg.dit.get("teacher"):  # another bundle teaches the init's model (same autoencoder)
                tb, tname = Bundle(bundle_path(self.cfg.dit.teacher), self.device), f"dit.teacher={self.cfg.dit.teacher}"
                norm = [(x.meta["latent_mean"], x.meta["latent_std"]) for x in (tb, b)]
                if tensors_bytes(tb.ae.state_dict()) != tensors_bytes(b.ae.state_dict()) or norm[0] != norm[1]:
                    raise ValueError(f"{tname}: the teacher's autoencoder or latent normalisation differs from "
                                     f"init={init}'s; a teacher must read the student's latents")
            if tb.edm.cfg.action_dropout <= 0 and self.distill > 1:
                raise ValueError(f"{tname}: guidance distillation needs a teacher trained with "
                                 "diffusion.action_dropout > 0 (its action-free prediction)")
            if self.edm_cfg.residual or tb.edm.cfg.residual:
                raise ValueError("dit.distill_guidance: guidance distillation is not implemented for residual "
                                 "models (diffusion.residual)")
            self.teacher = copy.deepcopy(tb.dit).eval().requires_grad_(False)
            if self.teacher.config.ticks and not self.cfg.dit.get("ticks"):  # it reads that no tick happened
                self.teacher = self.teacher.without_ticks().eval().requires_grad_(False)
            if self.distill == 1:  # self-distillation keeps the guidance the bundle had built in
                self.distill_record = tb.meta.get("trained", {}).get("distilled_guidance", 1.0)
            self.edm_cfg.guidance = 1.0  # the bundle written at the end already has the guidance built in
        if self.edm_cfg.residual and not b.edm.cfg.residual:
            # its output meant the frame and now means the change from the last one: start that at zero
            # ("copy the last frame"), the body's features are kept
            torch.nn.init.zeros_(self.dit.final.linear.weight)
            torch.nn.init.zeros_(self.dit.final.linear.bias)
            print("diffusion.residual=true on a bundle trained without it: its output layer starts at zero")
        self.state.update(stage="dit", ae_step=self.cfg.ae.steps, latent_mean=b.meta["latent_mean"],
                          latent_std=b.meta["latent_std"], latent_stats_fixed=True, init=str(path))
        # facts about what stays as the bundle made it: its autoencoder, and its warp input's fit
        self.inherited = {k: v for k, v in b.meta.get("metrics", {}).items() if k.startswith("ae_") or k == "warp_fit"}
        self.state["metrics"].update(self.inherited)
        print(f"starting from bundle {path}: autoencoder frozen, world model fine-tuned")

    # ---- checkpoints ----------------------------------------------------------------------------
    def _resume(self):
        ck = resolve_dir(self.run / "ckpt")
        if ck is None:
            return
        self.state = json.loads((ck / "state.json").read_text())
        self.ae.load_state_dict(st_load((ck / "autoencoder.safetensors").read_bytes()))
        self.dit.load_state_dict(st_load((ck / "world_model.safetensors").read_bytes()))
        load_optimizer(self.opt_ae, (ck / "opt_ae.safetensors").read_bytes())
        load_optimizer(self.opt_dit, (ck / "opt_dit.safetensors").read_bytes())
        if self.ema is not None and (ck / "world_model_ema.safetensors").exists():
            self.ema.load_state_dict(st_load((ck / "world_model_ema.safetensors").read_bytes()))
        self.rng = np.random.default_rng([self.cfg.seed, self.state["ae_step"], self.state["dit_step"]])
        torch.manual_seed(self.cfg.seed + self.state["ae_step"] * 7919 + self.state["dit_step"])
        print(f"resumed from {ck}: stage={self.state['stage']} ae_step={self.state['ae_step']} "
              f"dit_step={self.state['dit_step']}")

    def save(self):
        ta, ma = optimizer_tensors(self.opt_ae)
        td, md = optimizer_tensors(self.opt_dit)
        write_dir_atomic(self.run / "ckpt", {
            "autoencoder.safetensors": tensors_bytes(self.ae.state_dict()),
            "world_model.safetensors": tensors_bytes(self.dit.state_dict()),
            "opt_ae.safetensors": tensors_bytes(ta, ma),
            "opt_dit.safetensors": tensors_bytes(td, md),
            **({"world_model_ema.safetensors": tensors_bytes(self.ema.state_dict())} if self.ema is not None else {}),
            "state.json": json.dumps(self.state).encode(),
        })
        self.plot()

    def plot(self):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
        for ax, key, title in zip(axes, ("ae", "dit"), ("autoencoder loss", "world model loss")):
            h = self.state["history"][key]
            if h:
                steps, vals = zip(*[(r["step"], r["loss"]) for r in h])
                ax.plot(steps, vals)
                ax.set_yscale("log")
            ax.set_title(title)
            ax.set_xlabel("step")
        fig.tight_layout()
        fig.savefig(self.run / "loss.png", dpi=80)
        plt.close(fig)

    def _update(self, opt, module, loss) -> bool:
        if guarded_step(opt, module, loss):
            return True
        self.state["skipped_steps"] = self.state.get("skipped_steps", 0) + 1
        warnings.warn(f"non-finite loss or gradient (loss {loss.item()}): step skipped "
                      f"({self.state['skipped_steps']} so far in this run)")
        return False

    # ---- autoencoder --------------------------------------------------------------------------------
    def _frames(self, eps, n):
        e = self.rng.integers(len(eps), size=n)
        return torch.stack([torch.as_tensor(eps[i]["frames"][self.rng.integers(len(eps[i]["frames"]))]) for i in e])

    def train_ae(self):
        c, st = self.cfg.ae, self.state
        t0 = time.time()
        bar = tqdm(total=c.steps, initial=st["ae_step"], desc="autoencoder", unit="step")
        while st["ae_step"] < c.steps:
            x = to_pixels(self._frames(self.train_eps, c.batch_size).to(self.device))
            for g in self.opt_ae.param_groups:
                g["lr"] = c.lr * min(1.0, (st["ae_step"] + 1) / 100) * cosine(st["ae_step"], c.steps)
            with torch.autocast(self.device.type, torch.bfloat16, enabled=self.amp):
                rec, loss = training_loss(self.ae, x, c.kl_weight)
            self._update(self.opt_ae, self.ae, loss)
            st["ae_step"] += 1
            bar.update(1)
            if st["ae_step"] % self.cfg.log_every == 0:
                st["history"]["ae"].append({"step": st["ae_step"], "loss": rec.item()})
                bar.set_postfix(loss=f"{rec.item():.4f}")
            if st["ae_step"] % self.cfg.checkpoint_every == 0:
                self.save()
            if c.minutes and time.time() - t0 > 60 * c.minutes:
                break
        bar.close()
        done = st["ae_step"] >= c.steps
        if done:
            st["metrics"]["ae_psnr_test"] = self.ae_psnr()
            print(f"autoencoder reconstruction PSNR on held-out frames: {st['metrics']['ae_psnr_test']:.2f} dB")
            st["stage"] = "dit"
        self.save()
        return done

    @torch.no_grad()
    def ae_psnr(self, n: int = 256) -> float:
        self.ae.eval()
        eps = self.test_eps or self.train_eps
        frames = self._frames(eps, n).to(self.device)
        codec = LatentCodec(self.ae)
        rec = torch.cat([codec.decode(codec.encode(frames[i:i + 64])) for i in range(0, n, 64)])
        self.ae.train()
        return float(psnr_np(rec.cpu().numpy(), frames.cpu().numpy()).mean())

    # ---- world model -------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_all(self, eps):
        self.ae.eval()
        codec = LatentCodec(self.ae)
        out = []
        for ep in tqdm(eps, desc="encode latents", unit="ep"):
            f = torch.as_tensor(ep["frames"])
            out.append(torch.cat([codec.encode(f[i:i + 256].to(self.device)).cpu() for i in range(0, len(f), 256)]))
        return out

    def cached_latents(self, eps):
        """encode_all, cached in RUN/latents.safetensors: encoding 42k Minetest frames takes about 20 minutes
        on a 2-core CPU, which a resumed job should not pay again. The cache is keyed by the autoencoder's
        weights and the episodes (seed, length, first and last frame); any mismatch encodes afresh."""
        h = hashlib.sha256(tensors_bytes(self.ae.state_dict()))
        for ep in eps:
            h.update(f"{ep['seed']}:{len(ep['frames'])}".encode())
            h.update(ep["frames"][0].tobytes() + ep["frames"][-1].tobytes())
        key, path = h.hexdigest(), self.run / "latents.safetensors"
        if path.exists():
            try:
                if read_metadata(path).get("key") == key:
                    z = load_file(path)
                    return [z[f"ep{i}"] for i in range(len(eps))]
            except Exception as e:  # a damaged cache costs time, never the run
                warnings.warn(f"latent cache {path} unreadable ({e}); encoding again")
        lat = self.encode_all(eps)
        data = tensors_bytes({f"ep{i}": z for i, z in enumerate(lat)}, {"key": key})
        atomic_write_bytes(path, lambda f: f.write(data))
        return lat

    def train_dit(self):
        c, st = self.cfg.dit, self.state
        K = self.rollout_steps
        T = self.dit.config.context_frames + 1 + K  # rollout training: K more frames, the model's own
        lat = self.cached_latents(self.train_eps)
        if st["dit_step"] == 0 and not st.get("latent_stats_fixed"):  # normalise latents to unit variance (EDM's sigma_data = 1)
            allz = torch.cat([z.flatten() for z in lat])
            st["latent_mean"], st["latent_std"] = float(allz.mean()), float(allz.std())
        lat = [(z - st["latent_mean"]) / st["latent_std"] for z in lat]
        ds = WindowDataset(self.train_eps, T, latents=lat, mark_still=self.still_real,
                           still_threshold=self.still_threshold)
        gen = torch.Generator().manual_seed(self.cfg.seed + st["dit_step"])
        weights = None  # per window, where some are drawn more often; None: uniform
        if self.still_weight != 1:  # windows ending on a still step (a blocked move...)
            weights = ds.still_weights(self.still_weight)
        if self.event_share:  # windows ending on a rare event (Crafter's waking...)
            ev = ds.event_weights(self.event_share)
            weights = ev if weights is None else weights * ev
        if self.action_share:  # windows ending on an action the collecting agents seldom took
            aw = ds.action_weights(self.action_share)
            weights = aw if weights is None else weights * aw
        ticks = bool(self.dit.config.ticks)
        if ticks and ds.ticks is None:
            raise ValueError(f"the world model has ticks, but the episodes of {self.cfg.data} record no counters")
        if self.tick_weight != 1:  # windows whose last step ticks (a food count falling...)
            tw = ds.tick_weights(self.tick_weight)
            weights = tw if weights is None else weights * tw
        sampler = None if weights is None else torch.utils.data.WeightedRandomSampler(
            weights, len(ds), replacement=True, generator=gen)
        loader = torch.utils.data.DataLoader(ds, batch_size=c.batch_size, shuffle=sampler is None, sampler=sampler,
                                             drop_last=True, generator=gen)
        change = {"change_weight": self.change_weight, "change_threshold": self.change_threshold,
                  "novel_weight": self.novel_weight}
        model = self.dit
        if self.cfg.compile and self.device.type == "cuda":
            model = torch.compile(self.dit)
        t0 = time.time()

        def capped():  # the stage's wall-clock cap (dit.minutes) reached
            return bool(c.minutes) and time.time() - t0 > 60 * c.minutes
        bar = tqdm(total=c.steps, initial=st["dit_step"], desc="world model", unit="step")
        while st["dit_step"] < c.steps:
            for batch in loader:
                b = {k: ({n: a.to(self.device) for n, a in v.items()} if isinstance(v, dict) else v.to(self.device))
                     for k, v in batch.items()}
                prog = schedule_progress(st["dit_step"], c.steps, time.time() - t0, c.minutes, self.schedule == "minutes")
                for g in self.opt_dit.param_groups:
                    g["lr"] = c.lr * min(1.0, (st["dit_step"] + 1) / c.warmup) * cosine(prog, 1.0)
                if self.reward_scale != 1.0:
                    b["reward"] = b["reward"] / self.reward_scale
                batch_args = (b["latents"], b["actions"], b["has_action"], b["reward"], b["terminated"],
                              b["has_transition"])
                tk = {"ticks": b["ticks"][:, K:], "tick_since": b["tick_since"][:, K:],
                      "tick_skip_last": self.tick_weight != 1} if ticks else {}
                real = b.get("still")
                if self.tick_real:  # the teacher cannot show a tick: those windows learn the real frame
                    ticked = b["ticks"][:, -1].any(-1)
                    real = ticked if real is None else real | ticked
                with torch.autocast(self.device.type, torch.bfloat16, enabled=self.amp):
                    if self.teacher is not None:
                        loss, parts = self.edm.distill_loss(model, self.teacher, self.distill, *batch_args,
                                                            real=real, change_real=self.change_real,
                                                            clock=b["clock"], feature_weight=self.feature_distill,
                                                            **change, **tk)
                    elif K and self.rng.random() < c.rollout_prob:
                        k = int(self.rng.integers(1, K + 1))  # own frames as context: 1..K steps deep
                        args = [index_actions(a, np.s_[:, K - k:]) for a in batch_args]
                        clock = b["clock"][:, K - k:]
                        args[0] = self.edm.rollout(model, args[0], args[1], args[2], k, clock=clock)
                        loss, parts = self.edm.loss(model, *[index_actions(a, np.s_[:, k:]) for a in args],
                                                    teacher_forcing=True, clock=clock[:, k:])
                        parts = {"rollout": parts.pop("diffusion"), **parts}
                    elif self.energy_prob and self.rng.random() < self.energy_prob:
                        loss, parts = self.edm.energy_loss(model, *[index_actions(a, np.s_[:, K:]) for a in batch_args],
                                                           clock=b["clock"][:, K:])
                    else:
                        loss, parts = self.edm.loss(model, *[index_actions(a, np.s_[:, K:]) for a in batch_args],
                                                    clock=b["clock"][:, K:], **change, **tk)
                if self._update(self.opt_dit, self.dit, loss) and self.ema is not None:
                    self.ema.update_parameters(self.dit)
                st["dit_step"] += 1
                bar.update(1)
                if st["dit_step"] % self.cfg.log_every == 0:
                    st["history"]["dit"].append({"step": st["dit_step"], "loss": loss.item(), **parts})
                    bar.set_postfix({k: f"{v:.4f}" for k, v in parts.items()})
                if st["dit_step"] % self.cfg.checkpoint_every == 0:
                    self.save()
                if st["dit_step"] >= c.steps or capped():
                    break
            if capped():
                break
        bar.close()
        # a minutes schedule has annealed to its floor when the cap is reached: that run is complete
        done = st["dit_step"] >= c.steps or (self.schedule == "minutes" and capped())
        if done:
            st["stage"] = "done"
        self.save()
        return done

    # ---- export ---------------------------------------------------------------------------------------
    def export(self, out: Path):
        W = self.dit.config.context_frames
        eps = self.test_eps or self.train_eps
        frames, actions = [], []
        for ep in eps[: self.cfg.start_states]:  # start contexts: the first W frames of held-out episodes
            if len(ep["frames"]) >= W:
                frames.append(torch.as_tensor(ep["frames"][:W]))
                actions.append(index_actions(ep["actions"], slice(0, W - 1)))
        if not frames:
            raise ValueError(f"no episode has {W} frames to make a start state from")
        if isinstance(actions[0], dict):
            actions = {k: torch.as_tensor(np.stack([a[k] for a in actions])) for k in actions[0]}
        else:
            actions = torch.as_tensor(np.stack(actions))
        dit = self.dit if self.ema is None or not int(self.ema.n_averaged) else self.ema.module
        files = bundle_files(self.ae, dit, self.edm_cfg, (self.state["latent_mean"], self.state["latent_std"]),
                             {**self.env_info, **({"reward_scale": self.reward_scale} if self.reward_scale != 1 else {})},
                             torch.stack(frames), actions,
                             extra={"metrics": self.state["metrics"], "trained": {"ae_steps": self.state["ae_step"],
                                                                                   "dit_steps": self.state["dit_step"],
                                                                                   **({"distilled_guidance": self.distill_record}
                                                                                      if self.distill else {}),
                                                                                   **({"rollout_steps": self.rollout_steps}
                                                                                      if self.rollout_steps else {}),
                                                                                   **({"energy_prob": self.energy_prob}
                                                                                      if self.energy_prob else {}),
                                                                                   **({"schedule": "minutes"}
                                                                                      if self.schedule == "minutes" else {}),
                                                                                   **({"still_weight": self.still_weight}
                                                                                      if self.still_weight != 1 else {}),
                                                                                   **({"event_share": self.event_share}
                                                                                      if self.event_share else {}),
                                                                                   **({"action_share": {str(k): v for k, v in self.action_share.items()}}
                                                                                      if self.action_share else {}),
                                                                                   **({"drop_blocks": self.drop_blocks}
                                                                                      if self.drop_blocks else {}),
                                                                                   **({"feature_distill": self.feature_distill}
                                                                                      if self.feature_distill else {}),
                                                                                   **({"still_real": True}
                                                                                      if self.still_real else {}),
                                                                                   **({"tick_real": True}
                                                                                      if self.tick_real else {}),
                                                                                   **({"tick_weight": self.tick_weight}
                                                                                      if self.tick_weight != 1 else {}),
                                                                                   **({"still_threshold": self.still_threshold}
                                                                                      if self.still_threshold != 1 else {}),
                                                                                   **({"change_weight": self.change_weight,
                                                                                       "change_threshold": self.change_threshold}
                                                                                      if self.change_weight != 1 else {}),
                                                                                   **({"change_real": True}
                                                                                      if self.change_real else {}),
                                                                                   **({"novel_weight": self.novel_weight,
                                                                                       "change_threshold": self.change_threshold}
                                                                                      if self.novel_weight != 1 else {}),
                                                                                   **({"teacher": str(self.cfg.dit.teacher)}
                                                                                      if self.distill and self.cfg.dit.get("teacher") else {}),
                                                                                   **({"ema": self.ema_decay}
                                                                                      if self.ema is not None else {})},
                                    "decode": {**{k: float(self.cfg.get(k) or 0.0)
                                                  for k in ("tile_hold", "detail_carry", "carry_gate")},
                                               "reencode": bool(self.cfg.get("reencode", False))}})
        write_dir_atomic(out, files)
        print(f"bundle written to {out} ({sum(len(v) for v in files.values()) / 2**20:.1f} MiB)")
        if self.cfg.get("codebook"):
            self.export_codebook(out, int(self.cfg.codebook), bool(self.cfg.get("codebook_head")))

    def export_codebook(self, out: Path, entries: int, head: bool = False, max_tokens: int = 400_000):
        """k-means codebook of the training latents' tokens, written into the bundle with snap on; with `head`
        also the token head (snap=sample; default settings), trained on the training episodes
        (worldsim/codebook.py)."""
        st = self.state
        lat = self.cached_latents(self.train_eps)
        tokens = torch.cat([z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]) for z in lat])
        g = torch.Generator().manual_seed(self.cfg.seed)
        tokens = (tokens[torch.randperm(len(tokens), generator=g)[:max_tokens]] - st["latent_mean"]) / st["latent_std"]
        codebook = fit_codebook(tokens, entries, seed=self.cfg.seed)
        info = {"entries": entries, "tokens": len(tokens), "data": str(self.cfg.data)}
        token_head = groups = None
        if head:
            eps = [{"latents": (z - st["latent_mean"]) / st["latent_std"], "actions": ep["actions"]}
                   for z, ep in zip(lat, self.train_eps)]
            token_head, groups, info["head"] = fit_token_head(Bundle(out), codebook, eps, seed=self.cfg.seed)
            info["head"].update(certain=CERTAIN, data=str(self.cfg.data))
        with_codebook(out, codebook, info, True, token_head, groups)
        print(f"codebook of {entries} entries from {len(tokens)} training tokens written to {out} (snap on)"
              + (f"; token head: held-out accuracy {info['head']['held_accuracy']:.3f}" if head else ""))


def calibrate_warp(eps, key: str, pairs: int = 4000, seed: int = 0) -> tuple[list, dict]:
    """The matrix of a world model's warp input (WorldDiT warp_action): least squares of the image shift
    between consecutive frames (phase correlation, pixels) on the 2-component action `key` that led to it,
    converted to grid_sample's normalised units (2 / frame size per pixel). Fitted to the data, not set by
    hand, so no game's field of view is written into the code. Two trimmed refits leave out the pairs the
    fit misses by 3 px or more (views with nothing to track: sky, water, night; walking's parallax) and
    shifts of a quarter frame or more (respawns): on Minetest explorer data the plain fit gave 0.86-0.90 px
    per degree, the trimmed one 1.03-1.06, as the median ratio of shift to turn does (1.02-1.05)."""
    if key not in (eps[0]["actions"] if isinstance(eps[0]["actions"], dict) else {}):
        raise ValueError(f"warp_action={key!r}: the episodes' actions have no such key")
    idx = [(e, t) for e, ep in enumerate(eps) for t in range(len(ep["frames"]) - 1)]
    rng = np.random.default_rng(seed)
    A, D = [], []
    for i in rng.choice(len(idx), min(pairs, len(idx)), replace=False):
        e, t = idx[i]
        A.append(np.asarray(eps[e]["actions"][key][t], np.float64))
        D.append(phase_shift(eps[e]["frames"][t], eps[e]["frames"][t + 1]))
    A, D = np.array(A), np.array(D, np.float64)
    H, W = eps[0]["frames"].shape[1:3]
    sane = (np.abs(D) < np.array([H, W]) / 4).all(1)
    keep = sane
    for _ in range(3):
        if keep.sum() < 10:
            raise ValueError(f"warp_action={key!r}: too few frame pairs ({keep.sum()}) to fit the shift to the action")
        M = np.linalg.lstsq(A[keep], D[keep], rcond=None)[0]
        keep = sane & (np.abs(D - A @ M).max(1) < 3)
    resid = D[keep] - A[keep] @ M
    r2 = 1 - resid.var(0) / np.maximum(D[keep].var(0), 1e-9)
    fit = {"pairs": int(keep.sum()), "pixels_per_unit": np.round(M, 3).tolist(), "r2": r2.tolist()}
    return (M * (2 / np.array([H, W]))).tolist(), fit


def guarded_step(opt, module, loss, max_norm: float = 1.0) -> bool:
    """Backward, clip gradients, step; but a non-finite loss or gradient norm skips the step and leaves the
    weights and optimizer state untouched (a resumed CPU run once turned to NaN at step 12,325, and its
    next checkpoint would have saved the NaN weights). Returns whether the step was taken."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(module.parameters(), max_norm)
    if not (torch.isfinite(loss) and torch.isfinite(norm)):
        opt.zero_grad(set_to_none=True)
        return False
    opt.step()
    return True


def train(cfg):
    tr = Trainer(cfg)
    if cfg.export_only:  # a bundle from the current checkpoint, e.g. to try a run while it trains
        if tr.state["stage"] == "ae":
            raise ValueError(f"{cfg.run} has no trained world model yet (stage 'ae'): nothing to export")
        tr.export(Path(cfg.out) if cfg.out else tr.run / "bundle")
        return tr
    if tr.state["stage"] == "ae" and not tr.train_ae():
        print("autoencoder stage paused (time cap); run the same command again to continue")
        return tr
    if tr.state["stage"] == "dit" and not tr.train_dit():
        print("world model stage paused (time cap); run the same command again to continue")
        return tr
    tr.export(Path(cfg.out) if cfg.out else tr.run / "bundle")
    return tr
