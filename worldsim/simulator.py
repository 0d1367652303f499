"""Batched inference: B worlds stepped together by one forward pass per denoising step.

Each step: sample the next latent frame with a few Euler steps, every pass attending to the KV cache of
the last `context_frames` frames; then one "commit" pass writes the new frame (with a little context
noise, as in training) into the cache and reads the reward and termination heads; then decode.
All randomness comes in as arrays from the caller (the env draws it from its own `np_random`), so a
seeded env is reproducible and the tests can replay the exact same noise through a full recompute.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from worldsim.autoencoder import latent_shape, tile_layout
from worldsim.checkpoint import Bundle, bundle_path
from worldsim.codebook import CERTAIN, draw_terrain, entry_index, keep_off_map, sample_snap, seed_snap, snap
from worldsim.data import index_actions, tick_names, tick_selection
from worldsim.diffusion import frame_context, warps
from worldsim.model import ModelOutput, actions_to_tensor, camera_rotation, project_view, view_grid


def load_bundle(path: str, device: str = "cpu") -> Bundle:
    """Bundles are read-only at inference, so every env in a process shares one copy; a bundle rewritten on disk
    (`worldsim codebook` adds to one in place) is a new key, keyed by its files' names, sizes and times.
    path: a bundle directory, or a shipped bundle's name (`crafter`, `minetest`), as every job takes it."""
    p = bundle_path(path)
    stamp = tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(p.iterdir()) if f.is_file()) \
        if p.is_dir() else ()
    return _load_bundle(str(p), str(device), stamp)


@functools.lru_cache(maxsize=4)
def _load_bundle(path: str, device: str, stamp: tuple) -> Bundle:
    return Bundle(Path(path), device=device)


# quantize settings -> the mode: None = the bundle's default (`inference.quantize` in bundle.json, applied on
# CPU only: fbgemm is a CPU path); "none", "fp32" or False = fp32
QUANTIZE = {None: None, "int8": "int8", "none": "fp32", "fp32": "fp32", False: "fp32"}
AMP = {None: None, False: None, "none": None, "fp32": None, "bf16": "bf16"}
# snap settings (bundle.json's decode.snap, or the env/eval/bench/play option) -> the mode
SNAP_MODES = {False: False, True: "nearest", "false": False, "true": "nearest", "nearest": "nearest",
              "sample": "sample"}
# new_ground settings (bundle.json's decode.new_ground, or the option): what ground no one has seen shows
NEW_GROUND = ("nearest", "terrain")


def _mode(table: dict, value, error: str):
    """A setting's mode from its table (strings in any case; None and booleans as themselves); anything else is
    a ValueError with `error`."""
    key = value.lower() if isinstance(value, str) else value
    if not isinstance(key, (str, bool, type(None))) or key not in table:
        raise ValueError(error)
    return table[key]


def int8_world_model(bundle: Bundle):
    """The bundle's world model with int8 dynamic quantization of its token-wise Linear layers (attention
    and MLP of every block: weights int8, activations quantized per call), kept on the bundle so every env
    in a process shares one copy. adaLN, embedders, the final layer and the heads stay fp32: they are
    precision-sensitive and cost next to nothing (one row per frame, or one layer).
    Why torch.ao: fbgemm's int8 GEMM ran 2.2x fp32 at these shapes (81 tokens x 192 -> 768) on the 2-core
    EPYC, where torchao's eager int8 path was slower than fp32 (measured); torch.ao.quantization is
    deprecated upstream but ships with the pinned torch 2.13."""
    if getattr(bundle, "_dit_int8", None) is None:
        if bundle.dit.device.type != "cpu":
            raise ValueError("quantize='int8' is a CPU inference path (fbgemm); on a GPU leave it off")
        names = {n: torch.ao.quantization.default_dynamic_qconfig for n, m in bundle.dit.named_modules()
                 if isinstance(m, torch.nn.Linear) and n.startswith("blocks.") and (".attn." in n or ".mlp." in n)}
        with warnings.catch_warnings():  # torch.ao's deprecation notices, at every quantization
            warnings.simplefilter("ignore")
            q = torch.ao.quantization.quantize_dynamic(bundle.dit, names, dtype=torch.qint8)
        for name in names:  # each quantized layer called through its op directly (_Int8Linear)
            parent, _, child = name.rpartition(".")
            owner = q.get_submodule(parent)
            setattr(owner, child, _Int8Linear(getattr(owner, child)))
        bundle._dit_int8 = q
    return bundle._dit_int8


class _Int8Linear(torch.nn.Module):
    """A torch.ao dynamic-quantized Linear (int8, reduce_range, as quantize_dynamic makes it) called through its
    op with the packed weights held. Why: at batch 1 its module's forward spent about 15 of a call's 110 us in
    Python (attribute lookups and the op packet's dispatch checks; `python docs/cpu_op_timings.py ops`), 32 calls
    a step on this project's EPYC;
    the op and its arguments are the module's own, so the output is the same bit for bit (tests)."""

    def __init__(self, q):
        super().__init__()
        if q._packed_params.dtype != torch.qint8 or (q.version or 0) < 4:
            raise ValueError(f"expected a qint8 dynamic-quantized Linear of version 4 or later, got {q!r}")
        self.q = q  # kept as the submodule it was (repr, state_dict)
        self._packed = q._packed_params._packed_params
        self._op = torch.ops.quantized.linear_dynamic.default

    def forward(self, x):
        y = self._op(x, self._packed, True)  # reduce_range=True, as the module passes it
        return y if y.dtype == x.dtype else y.to(x.dtype)


@dataclass
class StepResult:
    frames: np.ndarray  # (B, H, W, 3) uint8
    latents: torch.Tensor  # (B, C, h, w) sampled normalised latents
    reward: np.ndarray  # (B,) float32
    terminated_prob: np.ndarray  # (B,) float32
    # (B, dim) what the heads read: the commit pass's mean last-block token; heads_input="pair": (B, 2 * dim),
    # that beside the frame before's; "sample_pair": (B, 2 * dim), the last sampling pass's beside the frame before's
    # commit
    head_input: torch.Tensor | None = None
    event_prob: np.ndarray | None = None  # (B, events) float32 each event's probability (bundles with events)
    # (B, V) float32 the probability of each of the world model's reward_values (bundles with reward classes);
    # `reward` is then their expectation (the env draws one)
    reward_prob: np.ndarray | None = None
    ticks: np.ndarray | None = None  # (B, ticks) bool this step's drawn ticks (models with ticks)
    tick_prob: np.ndarray | None = None  # (B, ticks) float32 their probabilities
    # (B, H, W, 3) uint8, with the env's light: the frames before it (what the model drew)
    canvas: np.ndarray | None = None
    # (B, dim) the next step's tick head input: the commit pass's mean last-block token ("sample_pair": the last
    # sampling pass's)
    features: torch.Tensor | None = None


class WorldSimulator:
    ROW = ("prev", "prev_ctx", "shown_z", "shown")  # per-row tensors (batch first) a saved row state copies

    def __init__(self, bundle: Bundle, batch_size: int, sampling_steps: int | None = None,
                 context_noise: float | None = None, frame_size: tuple[int, int] | None = None,
                 guidance: float | None = None, tile_hold: float | None = None, quantize: str | None = None,
                 detail_carry: float | None = None, carry_gate: float | None = None, reencode: bool | None = None,
                 snap: bool | str | None = None, certain: float | None = None, amp: str | None = None,
                 view_memory: int | None = None, seed_floor: float | None = None, map_memory: bool | None = None,
                 new_ground: str | None = None, terrain_floor: float | None = None, ticks: bool | list | None = None,
                 light: bool | None = None, light_noise: str | None = None, fresh_window: int | bool | None = None):
        # amp="bf16": every model pass (world model, autoencoder) under torch.autocast to bfloat16, the KV cache
        # and the sampler's arithmetic in fp32. For GPUs (tensor cores); on this project's CPU fp32 is faster
        amp = _mode(AMP, amp, f"amp must be bf16 or none (fp32), got {amp!r}")
        if amp and quantize == "int8":
            raise ValueError("quantize=int8 (CPU int8 GEMMs) and amp=bf16 are two different inference paths; pick one")
        if amp and quantize is None:
            quantize = "none"  # the bundle's CPU int8 default gives way to an explicit bf16
        self.amp = amp
        mode = _mode(QUANTIZE, quantize, f"quantize must be int8, none (fp32) or null (the bundle's default), "
                                          f"got {quantize!r}")
        if mode is None:  # the bundle's default, on CPU (the shipped Crafter model: int8; docs/results.md, measured)
            mode = (bundle.meta.get("inference") or {}).get("quantize") if bundle.dit.device.type == "cpu" else None
        quantize = "int8" if mode == "int8" else None
        self.bundle, self.B, self.quantize = bundle, batch_size, quantize
        self.reward_scale = float(bundle.env.get("reward_scale", 1.0))  # the reward head learns rewards / this
        self.dit = int8_world_model(bundle) if quantize == "int8" else bundle.dit
        self.edm, self.codec = bundle.edm, bundle.codec
        self.spec = self.dit.config.action_spec
        self.window = self.dit.config.context_frames
        steps = sampling_steps or self.edm.cfg.sampling_steps
        if isinstance(steps, bool) or not float(steps).is_integer() or steps < 1:
            raise ValueError(f"sampling_steps must be a whole number >= 1, got {sampling_steps!r}")
        self.steps = int(steps)  # 4.0 from a command line is 4 steps (the scheduler needs an int)
        self.context_noise = self.edm.cfg.context_noise if context_noise is None else float(context_noise)
        self.guidance = float(self.edm.cfg.guidance if guidance is None else guidance)
        if not np.isfinite(self.guidance) or self.guidance < 0:
            raise ValueError(f"guidance must be a finite number >= 0, got {guidance}")
        if self.guidance != 1.0 and self.edm.cfg.action_dropout <= 0:
            warnings.warn(f"guidance={self.guidance} on a model trained without action_dropout: its action-free "
                          "prediction was never trained, so guidance extrapolates from noise")
        # frame_size: run at another size than the model trained at (the VAE is convolutional and positions
        # are rotary, so nothing in those weights fixes the size; a tile autoencoder is tied to its grid)
        H, W = frame_size if frame_size is not None else bundle.env["frame_shape"][:2]
        C, h, w = latent_shape(bundle.ae, H, W)
        p = self.dit.config.patch_size
        if h % p or w % p:
            raise ValueError(f"frame size {H}x{W} gives a {h}x{w} latent grid, not divisible by the world "
                             f"model's patch size {p}")
        self.frame_shape = (H, W, 3)
        self.latent_shape = (C, h, w)
        self.tokens_per_frame = (h // p) * (w // p)
        self.device = self.dit.device
        self.cache = self.dit.new_cache(batch_size, self.tokens_per_frame)
        self.residual = bool(self.edm.cfg.residual)
        self.warps = warps(self.dit)
        self.prev = torch.zeros(batch_size, C, h, w, device=self.device)  # newest clean latent per row
        self.prev_ctx = torch.zeros_like(self.prev)  # the same as committed (context-noised): a warp input reads it
        # ticks (models with them): each step's are drawn from the tick head, which reads the newest committed
        # frame's features (heads_input="sample_pair": its sampling pass's, as it is not committed yet) and the
        # steps since each tick type last happened (model.TickHead), before the frame
        # ticks=False (or the bundle's inference.ticks false): none drawn, the model reads none (zeros), and its
        # frames are those of the model without them; why a bundle may ship them off: docs/results.md, Ticks
        # heads_input="pair": the heads read the frame before's commit features too, kept per row
        heads_input = getattr(self.dit.config, "heads_input", "window")
        self.pair_heads = heads_input == "pair"
        if self.pair_heads:
            self.ROW = self.ROW + ("head_prev",)
            self.head_prev = torch.zeros(batch_size, self.dit.config.dim, device=self.device)
        self.model_ticks = int(self.dit.config.ticks)
        # heads_input="sample_pair": the newest frame (prev_ctx, as committed) is pending: the next step commits it
        # in its sampling pass (EDM.step_cached), so a step is one pass where it was two; kept per row with the
        # action into it, whether that action is known, and its ticks
        self.sample_heads = heads_input == "sample_pair"
        self.merge = True  # the pending commit shares the sampling pass (False: a pass of its own, the same numbers)
        if self.sample_heads:
            self.ROW = self.ROW + ("pend_a", "pend_has", "pend_ticks")
            self.pend_a = torch.zeros(batch_size, _action_width(self.spec), device=self.device)
            self.pend_has = torch.zeros(batch_size, dtype=torch.bool, device=self.device)
            self.pend_ticks = torch.zeros(batch_size, max(self.model_ticks, 1), device=self.device)
        on = (bundle.meta.get("inference") or {}).get("ticks", True) if ticks is None else ticks
        # ticks may also name the tick types drawn (the others never happen, as with ticks off): the shipped
        # Crafter model's ["energy_up"] lets a sleep restore energy, as the game's does, while no count falls
        names = tick_names(bundle.env.get("counters", []))
        if len(names) != self.model_ticks:  # a bundle.json without its counters: the env refuses it by name
            names = [f"tick_{k}" for k in range(self.model_ticks)]
        on = tick_selection(on, names)
        self.ticks_drawn = ((on if isinstance(on, list) else names if on else []) if self.model_ticks else [])
        self.n_ticks = self.model_ticks if self.ticks_drawn else 0
        if self.n_ticks:
            self.ROW = self.ROW + ("tick_feat", "tick_since")
            self.tick_feat = torch.zeros(batch_size, self.dit.config.dim, device=self.device)  # pooled features
            self.tick_since = torch.zeros(batch_size, self.n_ticks, dtype=torch.long, device=self.device)
            # draws for callers that give none (eval, bench: reproducible per simulator); the env gives its own
            self.tick_rng = np.random.default_rng(0)
            self.tick_mask = torch.tensor([n in self.ticks_drawn for n in names], device=self.device)
        # the tick display (`worldsim ticks`): a drawn tick's glyph is pasted into its counter's tile of the frame,
        # and the context commits that tile's encoding (worldsim/ticks.py says why); at the bundle's frame size
        disp = bundle.tick_display
        native = (H, W) == tuple(bundle.env["frame_shape"][:2])
        self.tick_display = disp if self.n_ticks and disp is not None and native else None
        if self.tick_display is not None:  # a counter's rise shows its fall's glyphs swapped (TickDisplay.with_inverses)
            counters = sorted({n.rsplit("_", 1)[0] for n in names})
            pairs = [(names.index(f"{c}_down"), names.index(f"{c}_up")) for c in counters
                     if f"{c}_down" in names and f"{c}_up" in names]
            self.tick_display = self.tick_display.with_inverses(pairs)
        # counter hold: the display's tiles keep their latents from one drawn tick to the next. The game redraws a
        # counter's tile only when it ticks (worldsim/ticks.py), but the world model, which never learnt the
        # ticks, often draws a pasted count back (Crafter's energy 7 -> 8 pasted, 7 again a step later) or as
        # another digit, so without the hold a sleeper's energy seldom reached the full count that wakes it
        self.hold_cells = None
        if self.tick_display is not None:
            cells = self.tick_display.cells
            cells = torch.unique(cells[cells[:, 0] >= 0], dim=0)
            self.hold_cells = (cells[:, 0].to(self.device), cells[:, 1].to(self.device))
            self.ROW = self.ROW + ("held_z",)
            self.held_z = torch.zeros(batch_size, C, len(cells), device=self.device)
        hold = bundle.meta.get("decode", {}).get("tile_hold", 0.0) if tile_hold is None else tile_hold
        self.tile_hold = float(hold)
        if not np.isfinite(self.tile_hold) or self.tile_hold < 0:
            raise ValueError(f"tile_hold must be a finite number >= 0, got {tile_hold}")
        self._tiles = tile_layout(bundle.ae, H, W)
        if self.tile_hold > 0 and self._tiles is None:
            raise ValueError("tile_hold needs a patch autoencoder (one latent per tile); this bundle's is a VAE")
        # With detail carry, tile hold instead keeps a cell's shown pixels on steps whose action is the null
        # one (every key 0, no camera: standing still) where the sampled latent is within tile_hold of its
        # centre (the model changed nothing there). Why: the carry fades the shown frame towards the model's
        # decode (detail_carry < 1) and the one-step sample drifts a little each step, so a player standing
        # still in Minetest saw the view dissolve (4 held-out starts: 34-52 dB against the last real frame
        # after one still step, 12-27 dB after 60), where the real game keeps its frame. Null actions only:
        # the model's change on a step walking straight ahead is as small as that drift (a hold at 0.2 froze
        # the walk). Compared with the centre, not with the latent last shown: with reencode the centre is
        # the encoding of the frame shown, so a held view's context stays that frame.
        dec = bundle.meta.get("decode", {})
        self.detail_carry = float(dec.get("detail_carry", 0.0) if detail_carry is None else detail_carry)
        self.carry_gate = float(dec.get("carry_gate", 0.0) if carry_gate is None else carry_gate)
        if not 0 <= self.detail_carry <= 1:
            raise ValueError(f"detail_carry must be in [0, 1], got {detail_carry}")
        if not np.isfinite(self.carry_gate) or self.carry_gate < 0:
            raise ValueError(f"carry_gate must be a finite number >= 0 (grey levels; 0 = no gate), got {carry_gate}")
        if self.detail_carry > 0 and not self.residual:
            raise ValueError("detail_carry needs a residual model (diffusion.residual=true): the detail is carried "
                             "relative to the decoded centre of its skip connection")
        # reencode: the context keeps the encoding of the frame shown instead of the sampled latent (see step)
        self.reencode = bool(dec.get("reencode", False) if reencode is None else reencode)
        # snap: each generated token becomes a codebook entry before it is shown and committed: its nearest
        # ("nearest", or true), or where the token head is unsure one drawn from it ("sample"; worldsim/codebook.py)
        mode = dec.get("snap", False) if snap is None else snap
        self.snap = _mode(SNAP_MODES, mode, f"snap must be one of false, true (= nearest), nearest or sample; "
                                            f"got {snap!r}")
        if self.snap and bundle.codebook is None:
            raise ValueError("snap needs a bundle with a latent codebook (codebook.safetensors): fit one with "
                             "`worldsim codebook bundle=... data=...`")
        if self.snap == "sample":
            if bundle.token_head is None:
                raise ValueError("snap=sample needs a bundle with a token head: fit one with `worldsim codebook "
                                 "bundle=... data=... head=true`")
            if self.steps != 1 or self.guidance != 1.0:
                raise ValueError("snap=sample reads a one-step, guidance-1 sample (what its token head was trained "
                                 f"on); this simulator samples with {self.steps} steps at guidance {self.guidance}")
        # seed_floor F: with nearest snap, a frame whose commonest tile group holds a share F of its tokens gets
        # one revealed cell drawn from the token head (codebook.seed_snap); 0 = off
        self.seed_floor = float(dec.get("seed_floor", 0.0) if seed_floor is None else seed_floor)
        if not 0 <= self.seed_floor <= 1:
            raise ValueError(f"seed_floor must be in [0, 1] (a share of a frame's tokens; 0 = off), got {seed_floor}")
        self.reveal = None
        if self.seed_floor > 0:
            table, spec = bundle.env.get("reveal"), self.spec
            if self.snap != "nearest" or bundle.token_head is None:
                raise ValueError("seed_floor seeds frames snapped to their nearest entries (snap=true) and draws from "
                                 "the token head: it needs both (`worldsim codebook bundle=... head=true`)")
            if not table or spec.get("type") != "discrete":
                raise ValueError("seed_floor needs the game's reveal table (env.reveal in bundle.json: for each "
                                 "discrete action, the latent cells it brings into view)")
            if self.steps != 1 or self.guidance != 1.0:
                raise ValueError("seed_floor's token head reads a one-step, guidance-1 sample; this simulator samples "
                                 f"with {self.steps} steps at guidance {self.guidance}")
            self.reveal = torch.zeros(spec["n"], h, w, dtype=torch.bool, device=self.device)
            for act, cells in table.items():
                for r, c in cells:
                    self.reveal[int(act), r, c] = True
        head_meta = (bundle.meta.get("codebook") or {}).get("head") or {}
        self.certain = float(head_meta.get("certain", CERTAIN) if certain is None else certain)
        if not 0 <= self.certain <= 1:
            raise ValueError(f"certain must be in [0, 1] (the head's probability above which a token is not drawn), "
                             f"got {certain}")
        # view_memory: how many of a camera model's views are kept to show again when it turns back (ViewMemory); 0 = off
        frames = (bundle.meta.get("inference") or {}).get("view_memory", 0) if view_memory is None else view_memory
        if (isinstance(frames, bool) or not isinstance(frames, (int, float, np.integer, np.floating))
                or not float(frames).is_integer() or frames < 0):
            raise ValueError(f"view_memory must be a whole number of frames >= 0 (0 = off), got {view_memory!r}")
        self.memory = ViewMemory(self.dit, batch_size, int(frames), self.latent_shape, self.frame_shape,
                                 self.device) if frames else None
        # map_memory: a top-down game's ground kept by world position and shown again when it scrolls back (MapMemory)
        on = (bundle.meta.get("inference") or {}).get("map_memory", False) if map_memory is None else map_memory
        if not isinstance(on, (bool, np.bool_)):
            raise ValueError(f"map_memory must be true or false (null: the bundle's), got {map_memory!r}")
        self.map = None
        if on:
            if "map" not in bundle.env or self.spec.get("type") != "discrete":
                raise ValueError("map_memory needs the game's map description (env.map in bundle.json: the view's "
                                 "map region, the player's move per discrete action, the fixed cells)")
            if self._tiles is None:
                raise ValueError("map_memory needs a tile autoencoder (one latent per tile of the game's grid, so a "
                                 "move scrolls the latents by whole cells); this bundle's is a VAE")
            self.map = MapMemory(bundle.env["map"], self.spec["n"], batch_size, self.latent_shape, self.device,
                                 None if bundle.codebook_mobile is None else (bundle.codebook, bundle.codebook_mobile))
        # new_ground: what the map memory puts on ground a scroll brings into view for the first time: the
        # snapped sample ("nearest": the commonest tile where the model is unsure, so the world fills with grass)
        # or a draw from the bundle's terrain prior ("terrain": tile groups as often as real maps have them
        # around such a view; codebook.draw_terrain), with the player's sprites kept off the map (keep_off_map)
        mode = dec.get("new_ground", "nearest") if new_ground is None else new_ground
        if mode not in NEW_GROUND:
            raise ValueError(f"new_ground must be one of {', '.join(NEW_GROUND)} (null: the bundle's), got {new_ground!r}")
        if new_ground is None and (self.map is None or self.snap != "nearest"):
            mode = "nearest"  # the bundle's default gives way to map_memory=false or another snap
        self.new_ground = mode
        self.terrain_floor = float(dec.get("terrain_floor", 0.0) if terrain_floor is None else terrain_floor)
        if not 0 <= self.terrain_floor <= 1:
            raise ValueError(f"terrain_floor must be in [0, 1] (a share of the view's cells; 0 = every new cell), "
                             f"got {terrain_floor}")
        if mode == "terrain" and (self.map is None or self.snap != "nearest" or bundle.terrain_prior is None):
            raise ValueError("new_ground=terrain draws the ground the map memory has never held from the bundle's "
                             "terrain prior and snaps the rest to the nearest entries: it needs map_memory, "
                             "snap=true and a terrain prior (`worldsim codebook bundle=... refit=false terrain=true`)")
        # light: a bundle whose env names the game's light (env.light) has a model that draws the world without it
        # (canvases); the frames returned are lit by each row's game clock, as the game lights them
        # (envs/real_crafter.py says why). Everything the model reads, the memories and the snap stay canvases
        # (context frames given lit are drawn back without it). light=False returns the canvases. light_noise:
        # "sample" draws the night's noise as the game does, "mean" shows its mean (the eval's PSNR)
        game_light = bundle.env.get("light")
        if game_light not in (None, "crafter"):
            raise ValueError(f"bundle.json env.light must be 'crafter' (the game whose light the env draws) or "
                             f"absent, got {game_light!r}")
        on = (bundle.meta.get("inference") or {}).get("light", True) if light is None else light
        if not isinstance(on, (bool, np.bool_)):
            raise ValueError(f"light must be true, false or null (the bundle's default), got {light!r}")
        if on and light is not None and game_light is None:
            raise ValueError("light=true needs a bundle whose model draws the world without the game's light "
                             "(env.light in bundle.json); this one's frames are lit already")
        self.canvas_model = game_light is not None
        self.light = bool(on) and self.canvas_model
        # env.sleep: the canvases leave out a sleeper's grey view too, which the lit frames get where the frame the
        # model drew shows the sleeping sprite (envs/real_crafter.py: sleep_view). Bundles before it drew the grey.
        sleep = bundle.env.get("sleep")
        if sleep not in (None, "crafter") or (sleep and not self.canvas_model):
            raise ValueError(f"bundle.json env.sleep must be 'crafter' (canvases without a sleeper's grey, drawn by "
                             f"the env, beside env.light) or absent, got {sleep!r} (env.light {game_light!r})")
        self.sleep_view = sleep is not None
        # env.sleep_clock "crafter": the env keeps the game's fatigue clock while the frame shows a sleeper, as it
        # draws the game's light: energy rises a point every 11 steps asleep counted from the sleep's first frame,
        # and falls never (crafter Player._update_life_stats); the tick head still draws every other tick, and
        # energy's awake, with its fall clock started at the wake. Why: the head cannot see how long the player
        # has slept. It gave a first rise 0.001-0.03 a step (docs/sleep_tick_probe.py), and with its clock reset
        # at the sleep's start 0.30-0.63 on the step the game's comes, then 0.01 once that was missed, so of 8
        # sleepers below full energy 3 slept all 200 steps (docs/results.md, "A sleep that ends"). A sleeper is
        # read off the frame the model drew (real_crafter.grey_view; `sleeping` where the env draws the grey)
        clock_rule = bundle.env.get("sleep_clock")
        if clock_rule not in (None, "crafter"):
            raise ValueError(f"bundle.json env.sleep_clock must be 'crafter' or absent, got {clock_rule!r}")
        self.sleep_clock = None
        if clock_rule and self.n_ticks:
            if not {"energy_down", "energy_up"} <= set(names):
                raise ValueError(f"env.sleep_clock 'crafter' needs the energy counter's ticks; this bundle's are {names}")
            from worldsim.envs.real_crafter import SLEEP_RISE_STEPS  # (imports the game: only its bundles need it)
            self.sleep_clock = (names.index("energy_down"), names.index("energy_up"), SLEEP_RISE_STEPS)
            self.ROW = self.ROW + ("asleep_for",)
            # per row: how many frames in a row, up to the newest, show a sleeper (0: awake)
            self.asleep_for = torch.zeros(batch_size, dtype=torch.long, device=self.device)
        self.light_noise = "sample" if light_noise is None else light_noise
        if self.light_noise not in ("sample", "mean"):
            raise ValueError(f"light_noise must be sample (the game's draw) or mean, got {light_noise!r}")
        # fresh_window k: every k-th step of a row its KV cache is rebuilt from the window's committed latents in one
        # pass, as a reset builds it from its context (the oldest frame's action unread); 1: every step, so every
        # step samples as the first step after a reset does; 0 (or false): never. Why: a frame's cached keys are
        # computed attending to the frames before it, which attended to theirs, so in a long rollout they carry
        # history from ever further back, which training (windows of W + 1 frames) never showed. On Crafter that
        # history kept a player the explorer had left standing still from ever moving again: from the same four
        # frames a reset walked on, the rollout's own cache refused every move (docs/results.md, "The freeze:
        # history in the cache"). A rebuild bounds the history to the k + W frames since the one before. It costs
        # one pass over the window's W frames per rebuild; with k = 1 the step's commit pass is left out (_step).
        on = (bundle.meta.get("inference") or {}).get("fresh_window", 0) if fresh_window is None else fresh_window
        if isinstance(on, (bool, np.bool_)):
            on = int(on)
        if not isinstance(on, (int, np.integer)) or on < 0:
            raise ValueError(f"fresh_window must be a whole number of steps >= 0 between rebuilds of the cache (1 = "
                             f"every step, 0 or false = never; true = 1; null = the bundle's), got {fresh_window!r}")
        # A model whose context frames attend to themselves alone (context_attention="frame") keeps no history in
        # its cache: a rebuild would write the keys its commits wrote, so it never runs one.
        self.fresh_window = 0 if frame_context(self.dit) else int(on)
        if self.fresh_window:
            n = self.window
            self.ROW = self.ROW + ("win_z", "win_a", "win_n", "win_age", "win_ticks")
            self.win_z = torch.zeros(batch_size, n, C, h, w, device=self.device)  # committed latents, oldest first
            self.win_a = torch.zeros(batch_size, n, _action_width(self.spec), device=self.device)  # their actions
            self.win_n = torch.zeros(batch_size, dtype=torch.long, device=self.device)  # frames held (<= window)
            self.win_age = torch.zeros(batch_size, dtype=torch.long, device=self.device)  # steps since a rebuild
            self.win_ticks = torch.zeros(batch_size, n, max(self.model_ticks, 1), device=self.device)
        self.shown_z = torch.zeros(batch_size, C, h, w, device=self.device)  # the latents the shown tiles came from
        # the frames last shown, kept on the device: tile hold and detail carry merge there, and only the
        # frames returned cross to the host (at batch 1,024 on an H200 the numpy merge cost 78 of 236 ms a step)
        self.shown = torch.zeros(batch_size, H, W, 3, dtype=torch.uint8, device=self.device)
        self.time = -1  # absolute time of the newest committed frame (one clock for the whole batch)
        # each row's game clock: the game's step count at its newest frame (a model with clock_period reads it)
        self.clock = np.zeros(batch_size, np.int64)
        # what a saved row state is valid for: this bundle (its bundle.json) run with these settings
        key = json.dumps([bundle.meta, self.settings(), self.frame_shape], sort_keys=True, default=str)
        self.fingerprint = hashlib.sha1(key.encode()).hexdigest()[:16]

    def settings(self) -> dict:
        """The inference settings this simulator runs with, bundle defaults resolved (for benches and evals)."""
        return {"sampling_steps": self.steps, "guidance": self.guidance, "context_noise": self.context_noise,
                "tile_hold": self.tile_hold, "quantize": self.quantize or "fp32", "amp": self.amp or "fp32",
                "detail_carry": self.detail_carry, "reencode": self.reencode, "snap": self.snap,
                "certain": self.certain, "view_memory": 0 if self.memory is None else self.memory.z.shape[1],
                "seed_floor": self.seed_floor, "map_memory": self.map is not None, "new_ground": self.new_ground,
                "terrain_floor": self.terrain_floor, "light": self.light, "light_noise": self.light_noise,
                "fresh_window": self.fresh_window, "ticks": self.ticks_drawn}

    def _t(self, a):
        return torch.as_tensor(np.asarray(a), dtype=torch.float32, device=self.device)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.amp else contextlib.nullcontext()

    @torch.no_grad()
    def reset(self, rows, frames: np.ndarray, actions, context_noise: np.ndarray, clock=None,
              canvas: np.ndarray | None = None) -> torch.Tensor:
        with self._autocast():
            return self._reset(rows, frames, actions, context_noise, clock, canvas)

    def _reset(self, rows, frames, actions, context_noise, clock=None, canvas=None) -> torch.Tensor:
        """reset's body (under autocast with amp): start batch rows from context frames (b, T, H, W, 3) uint8
        and the T-1 actions between them. context_noise: (b, T, C, h, w) unit Gaussian. clock: (b,) the game's
        step count at each row's last context frame; default T-1, a context that begins with the game (as the
        shipped start states do). canvas: with the env's light, the same frames drawn without it where the caller
        has them (a collection made with canvas=true); otherwise they are worked out from the frames (`unlight`:
        close by day, at night what the noise covered is lost). Returns the context's normalised latents."""
        rows = list(rows)
        b, T = frames.shape[:2]
        clock = np.full(b, T - 1, np.int64) if clock is None else np.asarray(clock, np.int64).reshape(-1)
        if clock.shape != (b,) or (clock < T - 1).any():
            raise ValueError(f"clock must give each of the {b} rows the game step of its last context frame, at "
                             f"least {T - 1} (the context's first frame is at step clock - {T - 1} >= 0); got {clock}")
        self.clock[rows] = clock
        if sorted(rows) == list(range(self.B)):  # a full reset restarts the clock: same seed, same numbers
            self.time = T - 1
        if self.canvas_model:  # the model reads canvases
            if canvas is None:
                canvas = unlit_context(frames, clock)
            elif np.shape(canvas) != np.shape(frames):
                raise ValueError(f"canvas must have the context frames' shape {np.shape(frames)}, "
                                 f"got {np.shape(canvas)}")
            frames = np.asarray(canvas)
        z = self.codec.encode(torch.as_tensor(frames, device=self.device))
        acts = _prepend_null(self.spec, actions, b)
        has = torch.ones(b, T, dtype=torch.bool, device=self.device)
        has[:, 0] = False  # nothing is known of what led to the first context frame
        times = torch.arange(self.time - T + 1, self.time + 1)  # the context ends now
        acts = actions_to_tensor(self.spec, acts, self.device)
        ctx_clock = torch.as_tensor(context_clock(clock, T), device=self.device)
        ticks = None
        if self.model_ticks:  # what ticked in a given context is not known: the model reads none
            ticks = torch.zeros(b, T, self.model_ticks, device=self.device)
        noise = self._t(context_noise)
        if self.sample_heads:  # the last context frame is left pending (see __init__), the others committed
            if T > 1:
                self.edm.prefill(self.dit, self.cache, rows, z[:, :-1], index_actions(acts, (slice(None), slice(0, -1))),
                                 has[:, :-1], times[:-1], noise[:, :-1], self.context_noise, clock=ctx_clock[:, :-1],
                                 ticks=None if ticks is None else ticks[:, :-1])
            else:
                self.cache.clear(rows)
            zc = z + self.context_noise * noise  # as prefill commits a frame
            self.pend_a[rows] = _pack_actions(self.spec, index_actions(acts, (slice(None), -1)))
            self.pend_has[rows] = has[:, -1]
            self.pend_ticks[rows] = 0
            newest = self._sampled_features(rows, z, has[:, -1], index_actions(acts, (slice(None), -1)), noise[:, -1]) \
                if self.n_ticks else None
        else:
            zc, out = self.edm.prefill(self.dit, self.cache, rows, z, acts, has, times, noise,
                                       self.context_noise, clock=ctx_clock, ticks=ticks, return_out=True)
            newest = out.features[:, -1].float().mean(dim=1)  # the newest context frame's mean last-block token
        if self.pair_heads:  # attending to itself alone, as its commit pass would
            self.head_prev[rows] = newest
        if self.n_ticks:
            self.tick_feat[rows] = newest
            # a context that begins with the game: no tick before it, so each clock started at its first frame;
            # any other context: the clocks' phases are unknown, read as "long ago" (TickHead, the tick job's fit)
            since = np.where(clock == T - 1, clock + 1, self.dit.tick_head.horizon)
            self.tick_since[rows] = torch.as_tensor(since, device=self.device)[:, None]
        self.prev[rows] = z[:, -1]
        self.prev_ctx[rows] = zc[:, -1]
        if self.fresh_window:  # the window the next steps rebuild the cache from, ending with the context
            W = self.window
            self.win_z[rows] = 0
            self.win_z[rows, W - T:] = zc.float()
            self.win_a[rows, W - T:] = _pack_actions(self.spec, acts)
            self.win_ticks[rows] = 0  # what ticked in a given context is not known: read as none, as above
            self.win_n[rows] = T
            self.win_age[rows] = 0
        if self.map is not None:  # the real context's ground, at the places its moves reach
            self.map.start(rows, z.float(), acts)
        self.shown_z[rows] = z[:, -1]
        self.shown[rows] = torch.as_tensor(frames[:, -1], device=self.device)
        if self.sleep_clock is not None:  # asleep in the context: for how long is unknown, read as just fallen asleep
            self.asleep_for[rows] = self._sleepers(torch.as_tensor(frames[:, -1], device=self.device)).long()
        if self.hold_cells is not None:  # the context's counts, held from here on
            self.held_z[rows] = z[:, -1][:, :, self.hold_cells[0], self.hold_cells[1]].float()
        if self.memory is not None:  # the context frames are the first views the memory holds
            self.memory.clear(rows)
            for i in range(T):
                if i:
                    self.memory.turn(rows, {k: v[:, i] for k, v in acts.items()})
                self.memory.push(rows, zc[:, i].float(), frames[:, i])
        return z

    def _sampled_features(self, rows, z, has, a, noise) -> torch.Tensor:
        """heads_input="sample_pair", at a reset: the pooled features the tick head reads for the first step, those
        of the last context frame's sampling pass (a step's sampling pass gives the next step's): the frame sampled
        as a step samples it, from the committed frames before it and its action (has: whether it is known), with
        `noise` (b, C, h, w) as the sampler's draw. The pass runs the whole batch (a cached pass takes every cache
        row); the other rows' outputs are not kept and their caches are left as they were (nothing is committed)."""
        B = self.B
        idx = torch.as_tensor(rows, dtype=torch.long, device=self.device)
        prev = self.prev.clone()  # a residual model's centre: the frame before the sampled one
        prev[idx] = z[:, -2 if z.shape[1] > 1 else -1].float()
        packed = torch.zeros(B, _action_width(self.spec), device=self.device)
        packed[idx] = _pack_actions(self.spec, a)
        has_all = torch.ones(B, dtype=torch.bool, device=self.device)
        has_all[idx] = has
        draw = torch.zeros_like(self.prev)
        draw[idx] = noise.float()
        ticks = torch.zeros(B, self.model_ticks, device=self.device) if self.model_ticks else None
        _, _, _, out = self.edm.step_cached(self.dit, self.cache, self.time, _unpack_actions(self.spec, packed),
                                            prev.to(z.dtype), prev.to(z.dtype), draw.to(z.dtype), torch.zeros_like(draw),
                                            self.context_noise, self.steps, self.guidance,
                                            clock=torch.as_tensor(self.clock, device=self.device), ticks=ticks,
                                            commit=False, has=has_all)
        return out.features[idx].float().mean(dim=1)

    def row_state(self, row: int) -> dict:
        """A copy of everything row `row`'s next steps depend on: the KV cache's window, the newest latents, the
        frames shown, the game clock and the map or view memory, with the batch's clock (`time`) it was saved
        at. `load_rows` puts it back, into this row or another, in this simulator or another of the same bundle
        and settings. Why: planning and counterfactual rollouts branch one world into many and go back to it."""
        if not 0 <= row < self.B:
            raise IndexError(f"row {row} is out of range for a batch of {self.B}")
        tensors = {name: getattr(self, name)[row].clone() for name in self.ROW}
        for part in ("map", "memory"):
            held = getattr(self, part)
            if held is not None:
                tensors.update({f"{part}.{name}": getattr(held, name)[row].clone() for name in held.ROW})
        return {"fingerprint": self.fingerprint, "time": int(self.time), "clock": int(self.clock[row]),
                "cache": self.cache.row(row), "tensors": tensors}

    @torch.no_grad()
    def load_rows(self, rows, states: list[dict]):
        """Rows `rows` continue from saved row states (`row_state`), one per row. Loading every row from states
        of one time sets the batch's clock to it, so the steps that follow are the saved world's own, bit for
        bit (same batch); otherwise each state's window is moved to the batch's clock (KVCache.load_row), which
        attends the same up to float rounding."""
        rows = [int(r) for r in rows]
        if len(rows) != len(states):
            raise ValueError(f"{len(states)} saved states for {len(rows)} rows")
        if any(not 0 <= r < self.B for r in rows) or len(set(rows)) != len(rows):
            raise IndexError(f"rows {rows} must be distinct and in 0..{self.B - 1}")
        for st in states:
            if not isinstance(st, dict) or st.get("fingerprint") != self.fingerprint:
                raise ValueError("this state was saved from another bundle or with other inference settings "
                                 f"(fingerprint {st.get('fingerprint') if isinstance(st, dict) else None!r}, this "
                                 f"simulator's {self.fingerprint!r}: the bundle's bundle.json and settings() must match)")
        times = {st["time"] for st in states}
        if sorted(rows) == list(range(self.B)) and len(times) == 1:
            self.time = times.pop()
        rope = self.dit.rope
        for r, st in zip(rows, states):
            shift = self.time - st["time"]
            self.cache.load_row(r, *st["cache"], shift=shift, rotate=rope.time_shift(shift) if shift else None)
            self.clock[r] = st["clock"]
            for name, value in st["tensors"].items():
                part, _, attr = name.rpartition(".")
                held = getattr(self, part) if part else self
                if held is None or not hasattr(held, attr):
                    raise ValueError(f"saved state holds {name!r}, which this simulator does not keep")
                getattr(held, attr)[r] = value.to(getattr(held, attr).device)

    @torch.no_grad()
    def step(self, actions, noise: np.ndarray, context_noise: np.ndarray, decode: bool = True,
             tick_uniform: np.ndarray | None = None) -> StepResult:
        """Advance every row by one frame. noise, context_noise: (B, C, h, w) unit Gaussian.

        With `reencode` the frame is decoded (with tile hold or detail carry) before it is committed, and the
        context keeps its encoding instead of the sampled latent. Why: a sampled latent is the network's
        estimate and drifts off the autoencoder's manifold over a rollout (held-out Minetest: a patch grid of
        saturated colour within 50 steps), while the encoding of a frame is a latent the autoencoder makes,
        like every context frame in training; and the frame shown, with carried detail, is what the user saw.
        It costs one encoder pass per step.

        With `snap` each token of the sample is first replaced by a codebook entry (worldsim/codebook.py): its
        nearest, or with "sample" one drawn where the token head is unsure (the draw's uniform comes from the first
        channel of `noise`, the sampler's own draw at that token); what is shown and what the
        context keeps is that snapped latent.

        tick_uniform: (B, ticks) uniform draws in [0, 1), for a model with ticks: tick k happens on this step
        where its draw is under the tick head's probability; the frame then shows it. None: the simulator's own
        generator draws them (seeded 0 when it is made)."""
        with self._autocast():
            return self._step(actions, noise, context_noise, decode, tick_uniform)

    def _draw_ticks(self, a, tick_uniform):
        """This step's ticks (B, K) float 0/1 and their probabilities, from the tick head."""
        u = self._t(self.tick_rng.random((self.B, self.n_ticks)) if tick_uniform is None else tick_uniform)
        if u.shape != (self.B, self.n_ticks):
            raise ValueError(f"tick_uniform must have shape ({self.B}, {self.n_ticks}), got {tuple(u.shape)}")
        has = torch.ones(self.B, dtype=torch.bool, device=self.device)
        prob = torch.sigmoid(self.dit.tick_logits(self.tick_feat, a, has, self.tick_since).float())
        asleep = None if self.sleep_clock is None else self.asleep_for > 0
        if asleep is not None and bool(asleep.any()):  # the game's fatigue clock while asleep (see __init__)
            down, up, period = self.sleep_clock
            rise = (asleep & (self.asleep_for % period == 0)).float()
            prob[:, up] = torch.where(asleep, rise, prob[:, up])
            prob[:, down] = torch.where(asleep, 0.0, prob[:, down])
        return ((u < prob) & self.tick_mask).float(), prob

    def _step(self, actions, noise: np.ndarray, context_noise: np.ndarray, decode: bool = True,
              tick_uniform: np.ndarray | None = None) -> StepResult:
        t = self.time + 1
        a = actions_to_tensor(self.spec, actions, self.device)
        step_noise, noise = noise, self._t(noise)
        ticks = tick_prob = None
        if self.n_ticks:
            ticks, tick_prob = self._draw_ticks(a, tick_uniform)
        elif self.model_ticks:  # ticks off: the model reads that none happened
            ticks = torch.zeros(self.B, self.model_ticks, device=self.device)
        shown = {}

        def project(z, centre, features):
            estimate, index = z, None  # the model's sample, before snap; the entries snap chose
            if self.snap == "sample":  # one draw per token from the caller's noise (its first channel)
                b = self.bundle
                z = sample_snap(z, features, b.codebook, b.codebook_groups, b.token_head, noise[:, 0], self.certain)
            elif self.reveal is not None:  # nearest, and a seed of new ground on frames gone uniform
                b = self.bundle
                z = seed_snap(z, features, b.codebook, b.codebook_groups, b.token_head, noise[:, 0], self.certain,
                              self.reveal[a], self.seed_floor)
            elif self.snap:
                z, index = snap(z, self.bundle.codebook, index=True)
            if self.map is not None:  # ground seen before, where the frame scrolled back to it
                draw = None
                if self.new_ground == "terrain":  # ground never seen: drawn from the terrain prior
                    b = self.bundle
                    z = keep_off_map(estimate, z, b.codebook, b.codebook_groups, b.terrain_fixed_only, self.map.cells,
                                     index)

                    def draw(z, fresh, step):
                        return draw_terrain(estimate, z, b.codebook, b.codebook_groups, b.terrain_prior, noise[:, 0],
                                            fresh, step, self.map.cells, self.terrain_floor, b.terrain_fixed_only)
                z = self.map.step(range(self.B), z, self.prev, a, draw=draw)
            if self.hold_cells is not None:  # the counters as committed, until a drawn tick pastes a new count
                z = z.clone()
                z[:, :, self.hold_cells[0], self.hold_cells[1]] = self.held_z.to(z.dtype)
            paste = self.tick_display is not None and bool(ticks.any())
            if self.reencode or paste:
                frames = self._show(z, centre, a)
                if paste:  # each drawn tick's glyph into its counter's tile, shown and committed
                    frames, pasted = self.tick_display.apply(frames, ticks)
                    if pasted.any():
                        self.shown = frames  # what tile hold and detail carry go on from
                shown["frames"] = frames
                if self.reencode:
                    z = self.codec.encode(frames)
                elif paste and pasted.any():
                    z = torch.where(pasted[:, None], self.codec.encode(frames).to(z.dtype), z)
                    if self.tile_hold > 0:  # the pasted tiles are held from their encodings on
                        self.shown_z = torch.where(pasted[:, None], z, self.shown_z)
            if self.hold_cells is not None:
                self.held_z = z[:, :, self.hold_cells[0], self.hold_cells[1]].float()
            return z
        fill = None
        if self.memory is not None:
            self.memory.turn(range(self.B), a)
            fill = self.memory.fill
        projects = self.snap or self.reencode or self.map is not None or self.tick_display is not None
        # a rebuild of every row after every step writes the new frame's keys again, so its commit pass is left
        # out and the heads read the new frame in the rebuild's pass instead (over the window's W frames, where
        # the commit pass read W + 1): one pass fewer per step. Not for warp models, whose commit pass reads the
        # view memory's warp input, which a rebuild does not.
        rebuild_heads = self.fresh_window == 1 and not self.warps
        pending = None
        if self.sample_heads:  # the newest frame, committed in this step's sampling pass
            pending = {"z": self.prev_ctx.to(self.prev.dtype), "actions": _unpack_actions(self.spec, self.pend_a),
                       "has": self.pend_has, "clock": torch.as_tensor(self.clock, device=self.device),
                       "ticks": self.pend_ticks[:, :self.model_ticks] if self.model_ticks else None}
        z, self.prev_ctx, prev, out = self.edm.step_cached(self.dit, self.cache, t, a, self.prev, self.prev_ctx,
                                                           noise, self._t(context_noise), self.context_noise,
                                                           self.steps, self.guidance,
                                                           project=project if projects else None, fill=fill,
                                                           clock=torch.as_tensor(self.clock + 1, device=self.device),
                                                           ticks=ticks, commit=not (rebuild_heads or self.sample_heads),
                                                           prev_features=self.head_prev.to(self.prev.dtype)
                                                           if self.pair_heads else None, pending=pending,
                                                           merge=self.merge)
        self.prev, self.prev_ctx = z.float(), self.prev_ctx.float()  # fp32 between steps, whatever amp computed in
        self.time = t
        self.clock += 1
        if self.fresh_window:
            rebuilt = self._refresh(a, ticks, heads=rebuild_heads)
            if rebuild_heads:
                out = rebuilt
        pooled = out.features.float().mean(dim=1)
        head_input = pooled
        if self.sample_heads:  # this step's frame is the next one's pending frame
            head_input = out.head_input
            self.pend_a = _pack_actions(self.spec, a)
            self.pend_has = torch.ones_like(self.pend_has)
            if self.model_ticks:
                self.pend_ticks = ticks.float()
        elif self.pair_heads:
            head_input = torch.cat([pooled, self.head_prev], -1)
            self.head_prev = pooled
        if self.n_ticks:
            self.tick_feat = pooled
            self.tick_since = torch.where(ticks > 0, 1, self.tick_since + 1)
        frames = shown.get("frames")  # reencode decoded it already
        if frames is None and (decode or self.sleep_clock is not None):
            frames = self._show(z, prev, a)
        if self.sleep_clock is not None:
            asleep = self._sleepers(frames)
            self.asleep_for = torch.where(asleep, self.asleep_for + 1, 0)
            down = self.sleep_clock[0]  # a fall is due 30 steps awake after the wake, not after the last fall
            self.tick_since[:, down] = torch.where(asleep, 1, self.tick_since[:, down])
        canvas = None
        if self.light and frames is not None:
            canvas, frames = frames, self._light(frames, step_noise)
        if self.memory is not None:  # the frame shown is what detail carry moves on
            self.memory.push(range(self.B), self.prev_ctx, self.shown if self.detail_carry > 0 else None)
        reward, reward_prob = out.reward.float().cpu().numpy() * self.reward_scale, None
        if out.reward_logits is not None:  # reward classes: their probabilities, and the expectation as `reward`
            reward_prob = torch.softmax(out.reward_logits.float(), -1).cpu().numpy()
            reward = (reward_prob.astype(np.float64) @ np.asarray(self.dit.config.reward_values, np.float64)).astype(np.float32)
        return StepResult(None if frames is None else _host(frames), z, reward,
                          torch.sigmoid(out.term_logit).float().cpu().numpy(),
                          head_input,
                          None if out.event_logits is None else torch.sigmoid(out.event_logits).float().cpu().numpy(),
                          reward_prob, None if not self.n_ticks else ticks.cpu().numpy() > 0,
                          None if tick_prob is None else tick_prob.cpu().numpy(),
                          None if canvas is None else _host(canvas), pooled)

    def _refresh(self, a, ticks, heads: bool = False):
        """fresh_window: the newest committed frame joins each row's window (its action and ticks with it), and the
        rows whose turn it is get their cache rebuilt from the window, one pass per window length, as `reset`
        builds it: so their next step reads keys of the last W frames alone, as training did (see __init__).
        heads (every row due): returns the rebuild's ModelOutput at each row's newest frame (heads and features),
        which the step then reads in place of its commit pass."""
        W = self.window
        self.win_z = torch.cat([self.win_z[:, 1:], self.prev_ctx[:, None].float()], 1)
        self.win_a = torch.cat([self.win_a[:, 1:], _pack_actions(self.spec, a)[:, None]], 1)
        new_ticks = torch.zeros_like(self.win_ticks[:, 0]) if ticks is None else ticks.float()
        self.win_ticks = torch.cat([self.win_ticks[:, 1:], new_ticks[:, None]], 1)
        self.win_n = (self.win_n + 1).clamp(max=W)
        self.win_age += 1
        due = self.win_age >= self.fresh_window
        self.win_age[due] = 0
        parts = []
        for n in torch.unique(self.win_n[due]).tolist():  # rows reset at other times may hold fewer frames
            rows = torch.nonzero(due & (self.win_n == n)).flatten().tolist()
            z = self.win_z[rows, W - n:]
            acts = _unpack_actions(self.spec, self.win_a[rows, W - n:])
            has = torch.ones(len(rows), n, dtype=torch.bool, device=self.device)
            has[:, 0] = False  # as a reset reads its context: nothing before the window is known
            times = torch.arange(self.time - n + 1, self.time + 1)
            clock = torch.as_tensor(context_clock(self.clock[rows], n), device=self.device)
            tk = self.win_ticks[rows, W - n:] if self.model_ticks else None
            # the latents are as committed (context-noised already): no noise added, read at the context level
            _, o = self.edm.prefill(self.dit, self.cache, rows, z.to(self.prev.dtype), acts, has, times,
                                    torch.zeros_like(z), self.context_noise, clock=clock, ticks=tk, return_out=True)
            parts.append((rows, o))
        if heads:
            if not bool(due.all()):
                raise RuntimeError("the rebuild gives the heads' input only when every row is rebuilt")
            return _newest_outputs(parts, self.B)

    def _sleepers(self, frames: torch.Tensor) -> torch.Tensor:
        """bool (B,): which of these frames (as the model draws them) show a sleeper (env.sleep_clock)."""
        from worldsim.envs.real_crafter import grey_view, sleeping  # (imports the game: only its bundles need it)
        if self.sleep_view:
            return sleeping(frames).to(self.device)
        # canvases have no night, whose blue tint greys up to 0.62 of a real lit view (grey_view)
        return grey_view(frames, 0.5 if self.canvas_model else 0.8).to(self.device)

    def _light(self, frames: torch.Tensor, noise) -> torch.Tensor:
        """The canvases lit by each row's game clock, and greyed where they show a sleeper (env.sleep). The night's
        noise of a row is drawn from a generator seeded by that row's sampler noise of this step (the caller's
        draw), so a seeded env, a saved state gone back to and a row in any batch all draw the same night; or its
        mean."""
        # imported here: only a bundle with the env's light needs Crafter (the module imports the game)
        from worldsim.envs.real_crafter import NOISE_RANGE, daylight, light, sleep_view, sleeping, view_box
        uniform = None
        dark = np.flatnonzero(daylight(self.clock) < 0.5)
        if len(dark) and self.light_noise == "sample":
            rows, cols = view_box(frames.shape[1:])
            shape = (rows.stop - rows.start, cols.stop - cols.start)
            noise = np.asarray(noise.cpu() if isinstance(noise, torch.Tensor) else noise, np.float64)
            seeds = [int.from_bytes(hashlib.sha1(noise[r].tobytes()).digest()[:8], "little") for r in dark]
            draws = [np.random.default_rng(k).uniform(*NOISE_RANGE, shape) for k in seeds]
            uniform = torch.as_tensor(np.stack(draws), device=frames.device)
        lit = light(frames, self.clock, uniform)
        return sleep_view(lit, sleeping(frames)) if self.sleep_view else lit

    def _show(self, z, centre, a):
        """The frames shown for sampled latents z (B, H, W, 3) uint8 on the device: decoded, through detail carry
        or tile hold where on."""
        if self.detail_carry > 0:
            return self._carry(z, centre, a)
        if self.tile_hold <= 0:
            return self.codec.decode(z)
        keep = self._held(z)
        # a row whose every tile is held shows what it showed, border included (_hold), so its decode is not
        # read: only the other rows are decoded (the same pixels as decoding the batch: each row's decode is its
        # own). Why: most steps that do not move leave every tile held (on the shipped Crafter bundle 221 of 300
        # random-action steps), and the decode was a fifth of a batch-1 step
        todo = ~keep.flatten(1).all(1)
        if bool(todo.all()):
            frames = self.codec.decode(z)
        elif bool(todo.any()):
            frames = self.shown.clone()
            frames[todo] = self.codec.decode(z[todo])
        else:
            frames = self.shown
        return self._hold(z, frames, keep)

    def _carry(self, z, centre, a):
        """Detail carry: shown = decode(z) + k * (last shown frame, shifted as the centre was - decode(centre)).
        Why: the decoder sees only the latent, and a latent shifted by a sub-patch camera turn decodes blurrier
        than the same turn applied to pixels (held-out Minetest: the pixel-shifted last frame scored 1.4 dB
        above the model's frame, and shrinking the model's change towards its centre moved that by at most
        0.05 dB, so the loss is in the decode). So the model's change, decode(z) - decode(centre), is added to the
        pixels the user saw, moved by the camera. k = detail_carry * exp(-(|decode(z) - decode(centre)| /
        carry_gate)^2) per pixel: where the model changed the view a lot the new content is shown as decoded
        (no ghost of the old texture), and detail_carry < 1 lets the shown frame's difference from the
        model's own decode fade instead of accumulating over a long rollout."""
        new, base = self.codec.decode(torch.cat([z, centre])).float().chunk(2)  # one decoder pass
        shown = self.shown.float()
        if self.warps:  # the warp the centre went through, applied to pixels (any channel count)
            acts = {k: v[:, None] for k, v in a.items()}
            has = torch.ones(self.B, 1, dtype=torch.bool, device=self.device)
            shown = self.dit.warped_previous(shown.permute(0, 3, 1, 2)[:, None], acts, has)[:, 0].permute(0, 2, 3, 1)
            if self.memory is not None:
                shown = self.memory.carried(shown)
        k = torch.full_like(new[..., :1], self.detail_carry)
        if self.carry_gate > 0:
            k = k * torch.exp(-((new - base).abs().mean(-1, keepdim=True) / self.carry_gate) ** 2)
        carried = (new + k * (shown - base)).round().clamp(0, 255).to(torch.uint8)
        if self.tile_hold > 0:  # still views keep the pixels of cells the model left as they were (see __init__)
            keep = (z - centre).pow(2).mean(1).sqrt() < self.tile_hold  # (B, h, w) latent cells
            keep &= _null_rows(a)[:, None, None]
            carried = self._keep_tiles(keep, carried, border=False)
        self.shown = carried
        return carried

    def _hold(self, z, frames, keep=None):
        """Tile hold: a tile whose latent stays within `tile_hold` (RMS over channels, normalised units) of
        the latent its shown pixels were decoded from keeps those pixels. Why: the autoencoder is not
        bit-exact (48 dB), so re-decoding a tile the model left as it was changes it slightly every step;
        held, an unchanged tile shows exactly what it showed, and it is measured against the latent it was
        decoded from, not the last one, so a tile that drifts slowly is re-decoded once it has moved by
        tile_hold. Pixels outside the tile grid (Crafter's border) stay as the context showed them.
        keep: (B, h, w) the tiles held, as `_show` found them (None: found here)."""
        if keep is None:
            keep = self._held(z)
        self.shown_z = torch.where(keep[:, None], self.shown_z, z)
        self.shown = self._keep_tiles(keep, frames, border=True)
        return self.shown

    def _held(self, z):
        """(B, h, w) the tiles of latents z that tile hold keeps: within tile_hold of what their pixels show."""
        return (z - self.shown_z).pow(2).mean(1).sqrt() < self.tile_hold

    def _keep_tiles(self, keep, frames: torch.Tensor, border: bool) -> torch.Tensor:
        """frames (B, H, W, 3) uint8 with the last shown pixels of every tile where keep (B, h, w) is set;
        pixels outside the tile grid keep the shown ones if `border`, else the new ones."""
        p, oy, ox = self._tiles
        h, w = keep.shape[1:]
        held = torch.full(frames.shape[:3], border, dtype=torch.bool, device=frames.device)
        held[:, oy:oy + h * p, ox:ox + w * p] = keep.repeat_interleave(p, 1).repeat_interleave(p, 2)
        return torch.where(held[..., None], self.shown, frames)



def _newest_outputs(parts: list, B: int) -> ModelOutput:
    """One ModelOutput of B rows from the rebuild passes `parts` [(rows, ModelOutput over (b, n) frames)]: each
    row's newest frame's heads and features (the frame output is not kept)."""
    fields = {}
    for name in ("reward", "term_logit", "features", "event_logits", "reward_logits"):
        vals = [getattr(o, name) for _, o in parts]
        if vals[0] is None:
            fields[name] = None
            continue
        t = vals[0].new_empty((B, *vals[0].shape[2:]))
        for (rows, _), v in zip(parts, vals):
            t[rows] = v[:, -1]
        fields[name] = t
    return ModelOutput(out=None, **fields)


def _host(frames: torch.Tensor) -> np.ndarray:
    """A device tensor as a numpy array of its own: on the CPU `.numpy()` would share memory with the shown
    frames the simulator keeps (and overwrites in place on reset)."""
    return frames.to("cpu", copy=True).numpy()


SAME_VIEW = 0.5  # degrees of pitch and of yaw within which two views are from the same direction
SETTLE = 3  # key-free steps before views are kept: the player drifts on for a few ticks after a key is released


class ViewMemory:
    """The views a camera-turning world model made from where the player stands, re-used when it turns back.

    A warp model (warp_kind "rotation") reads the last view turned by the camera, and a residual one adds its
    change to that. Turning, every view is the last one resampled plus the model's change, so what scrolls
    out and back in has been resampled and changed at every step, and the side the camera turns to is new
    ground the model invents. The real game shows the same view again after a full turn; the model showed
    other ground (held-out Minetest, 360 degrees in 24 turns: its last view 17-19 dB from the first, the
    real game 38-63 dB).
    This memory keeps each row's last `frames` committed latents (and, for detail carry, the frames shown)
    with the camera's direction at each: its turns summed since the context's first frame, pitch clamped
    to +-90 degrees. A view made from the direction of one held (within SAME_VIEW degrees) replaces it, so
    standing still keeps only the newest. Every cell of the warp input that one of them saw is taken from
    the oldest such view, turned into the current one by the warp's own homography (`project_view`), so a
    direction keeps what it showed when first seen (resampled once) instead of drifting step by step: the
    price is that, within the `frames` steps a view is held, the model's change to ground a turn brought
    back is not carried on (it is made again from the context each step). A step with any key pressed
    (walking, jumping, digging, placing, the hotbar) clears the row's memory first: those change what the
    views would show, so it holds only views from where the player stands; and views are kept only from the
    SETTLE-th key-free step on, as Minetest's player drifts on for a few ticks after a key is released.
    Constant memory: a ring of `frames` entries per row (the shipped Minetest model: 32 latents of 24 KiB
    and frames of 36 KiB, about 1.9 MiB per row)."""

    ROW = ("z", "shown", "seen_at", "age", "count", "angles", "still")  # per-row state (a saved row state's)

    def __init__(self, dit, batch: int, frames: int, shape: tuple, frame_shape: tuple, device):
        spec, cfg = dit.config.action_spec, dit.config
        if cfg.warp_kind != "rotation" or spec.get("type") != "dict":
            raise ValueError("view_memory needs a world model that warps its input by a camera rotation "
                             f"(warp_kind rotation, a Dict action space); this one: warp_action={cfg.warp_action!r}, "
                             f"warp_kind={cfg.warp_kind!r}")
        self.camera, self.matrix = cfg.warp_action, dit.warp_shift.detach().float().cpu()
        self.keys = [k for k, v in spec["keys"].items() if v["type"] != "box"]  # any of these pressed: clear
        self.z = torch.zeros(batch, frames, *shape, device=device)
        self.shown = torch.zeros(batch, frames, *frame_shape, dtype=torch.uint8, device=device)
        self.seen_at = torch.zeros(batch, frames, 2, device=device)  # each entry's camera [pitch, yaw]
        self.age = torch.full((batch, frames), -1, dtype=torch.long, device=device)  # push count; -1: empty
        self.count = torch.zeros(batch, dtype=torch.long, device=device)
        self.angles = torch.zeros(batch, 2, device=device)  # [pitch, yaw] summed, degrees
        self.still = torch.zeros(batch, dtype=torch.long, device=device)  # key-free steps in a row
        self.used = None  # the last fill: (which entry per cell, cells filled, rotations into each entry)

    def clear(self, rows):
        self.age[rows] = -1
        self.angles[rows] = 0
        self.still[rows] = 0

    def turn(self, rows, a: dict):
        """The rows' actions of one step (dict of (b, ...) tensors): clear where a key is pressed, then turn."""
        rows = torch.as_tensor(list(rows), dtype=torch.long, device=self.age.device)
        pressed = torch.zeros(len(rows), dtype=torch.bool, device=self.age.device)
        for k in self.keys:
            pressed |= a[k].reshape(len(rows), -1).ne(0).any(-1)
        self.clear(rows[pressed])
        self.still[rows[~pressed]] += 1
        ang = self.angles[rows] + a[self.camera].reshape(len(rows), 2).float()
        ang[:, 0] = ang[:, 0].clamp(-90, 90)
        self.angles[rows] = ang

    def push(self, rows, z: torch.Tensor, shown: np.ndarray | None = None):
        """Keep the rows' newest committed latents (b, C, h, w) and frames shown (b, H, W, 3), seen now."""
        rows = torch.as_tensor(list(rows), dtype=torch.long, device=self.age.device)
        keep = self.still[rows] >= SETTLE
        rows, z = rows[keep], z[keep]
        # a view from the direction of one held supersedes it (standing still keeps only the newest view)
        d = (self.seen_at[rows] - self.angles[rows, None]).abs()
        d[..., 1] = torch.minimum(d[..., 1] % 360, 360 - d[..., 1] % 360)
        self.age[rows] = torch.where((d < SAME_VIEW).all(-1), -1, self.age[rows])
        slot = self.count[rows] % self.z.shape[1]
        self.z[rows, slot] = z
        self.seen_at[rows, slot] = self.angles[rows]
        if shown is not None:
            self.shown[rows, slot] = torch.as_tensor(shown, device=self.shown.device)[keep]
        self.age[rows, slot] = self.count[rows]
        self.count[rows] += 1

    def fill(self, warped: torch.Tensor) -> torch.Tensor:
        """warped: (B, C, h, w) the warp input (the last committed view turned by the camera) -> every cell a
        held view saw taken from the oldest of them."""
        B, K = self.age.shape
        h, w = warped.shape[-2:]
        self.used = None
        if not (self.age >= 0).any():
            return warped
        held = camera_rotation(self.seen_at.flatten(0, 1)).view(B, K, 3, 3)
        rel = held.transpose(-1, -2) @ camera_rotation(self.angles)[:, None]  # a ray now -> in each held view
        seen, inside = project_view(self.z.flatten(0, 1), rel.flatten(0, 1), self.matrix)
        inside = inside.view(B, K, h, w) & (self.age >= 0)[..., None, None]
        oldest = torch.where(inside, -self.age[..., None, None], -2 ** 62).argmax(1)  # (B, h, w)
        seen = seen.view(B, K, -1, h, w).gather(1, oldest[:, None, None].expand(B, 1, seen.shape[1], h, w))[:, 0]
        use = inside.any(1)
        self.used = (oldest, use, rel)
        return torch.where(use[:, None], seen.to(warped.dtype), warped)

    def carried(self, shown: torch.Tensor) -> torch.Tensor:
        """shown: (B, H, W, 3) float, the last frame shown moved by the camera (detail carry's source) -> on
        the cells the last `fill` took from a held view, that view's frame shown, moved the same way.
        Bilinear with edges repeated, as grid_sample samples; written out as four gathers per pixel because
        each pixel reads its own held frame (grid_sample would turn every held frame a row uses, in full)."""
        if self.used is None:
            return shown
        oldest, use, rel = self.used
        B, H, W = shown.shape[:3]
        py, px = H // oldest.shape[1], W // oldest.shape[2]
        k = oldest.repeat_interleave(py, 1).repeat_interleave(px, 2)  # (B, H, W): each pixel's entry
        grid = view_grid(rel[torch.arange(B, device=k.device)[:, None, None], k], self.matrix, H, W)[0]
        x = (((grid[..., 0] + 1) * W - 1) / 2).clamp(0, W - 1)  # align_corners=False, border
        y = (((grid[..., 1] + 1) * H - 1) / 2).clamp(0, H - 1)
        x0, y0 = x.floor().long(), y.floor().long()
        wx, wy = (x - x0)[..., None], (y - y0)[..., None]
        x1, y1 = (x0 + 1).clamp(max=W - 1), (y0 + 1).clamp(max=H - 1)
        row = (torch.arange(B, device=k.device)[:, None, None] * self.shown.shape[1] + k) * H
        flat = self.shown.reshape(-1, 3)  # (B * K * H * W, 3) uint8

        def at(yy, xx):
            return flat[(row + yy) * W + xx].float()
        picked = ((1 - wy) * ((1 - wx) * at(y0, x0) + wx * at(y0, x1))
                  + wy * ((1 - wx) * at(y1, x0) + wx * at(y1, x1)))
        cells = use.repeat_interleave(py, 1).repeat_interleave(px, 2)
        return torch.where(cells[..., None], picked, shown)


def _null_rows(a) -> torch.Tensor:
    """(B,) True where a row's action (actions_to_tensor's output) is all zeros: every key up, no camera."""
    parts = a.values() if isinstance(a, dict) else [a]
    return torch.stack([(v.reshape(v.shape[0], -1) == 0).all(1) for v in parts]).all(0)


def action_shape(spec) -> tuple:
    """Per-step shape of one action of a (non-dict) spec."""
    return {"discrete": (), "multi_binary": (spec.get("n"),), "box": (spec.get("dim"),),
            "multi_discrete": (len(spec.get("nvec", ())),)}[spec["type"]]


def context_clock(clock, T: int) -> np.ndarray:
    """(b, T) the game steps of T context frames whose last one of each row is at step clock[i]."""
    return np.asarray(clock, np.int64).reshape(-1, 1) - np.arange(T - 1, -1, -1)


def unlit_context(frames, clock) -> np.ndarray:
    """Context frames (b, T, H, W, 3) lit by the env's light, the last of each row at game step clock[i], drawn
    back without it (`envs/real_crafter.py: unlight`: by day to a grey level or two; at night what its noise
    covered is lost)."""
    from worldsim.envs.real_crafter import unlight  # (imports the game: only canvas bundles need it)

    frames = np.asarray(frames)
    b, T = frames.shape[:2]
    steps = context_clock(clock, T).reshape(-1)
    return unlight(torch.as_tensor(frames).reshape(b * T, *frames.shape[2:]), steps).reshape(frames.shape).numpy()


def _action_width(spec) -> int:
    """Floats one action of the spec packs into (`_pack_actions`)."""
    if spec["type"] == "dict":
        return sum(_action_width(s) for s in spec["keys"].values())
    return int(np.prod(action_shape(spec), dtype=np.int64))


def _pack_actions(spec, a) -> torch.Tensor:
    """Action tensor(s) with leading dims L (as `actions_to_tensor` gives them) -> one float tensor (*L, width), so a
    window of them is one per-row tensor a saved row state can copy."""
    if spec["type"] == "dict":
        return torch.cat([_pack_actions(s, a[k]) for k, s in spec["keys"].items()], -1)
    rest = action_shape(spec)
    return a.float().reshape(*a.shape[:a.dim() - len(rest)], _action_width(spec))


def _unpack_actions(spec, x: torch.Tensor):
    """The inverse of `_pack_actions`: (*L, width) -> action tensor(s) with leading dims L."""
    if spec["type"] == "dict":
        out, i = {}, 0
        for k, s in spec["keys"].items():
            w = _action_width(s)
            out[k] = _unpack_actions(s, x[..., i:i + w])
            i += w
        return out
    rest = action_shape(spec)
    y = x.reshape(*x.shape[:-1], *rest)
    return y.round().long() if spec["type"] in ("discrete", "multi_discrete") else y


def _prepend_null(spec, actions, b):
    """Context actions (b, T-1, ...) -> (b, T, ...) with a placeholder for the first frame (masked out)."""
    if spec["type"] == "dict":
        return {k: _prepend_null(s, actions[k], b) for k, s in spec["keys"].items()}
    rest = action_shape(spec)
    a = np.asarray(actions).reshape(b, -1, *rest)
    return np.concatenate([np.zeros((b, 1, *rest), dtype=a.dtype), a], axis=1)


MAP_SIZE = 64  # map memory: world cells kept per row, a MAP_SIZE x MAP_SIZE torus (Crafter's whole world is 64 x 64)
# map memory: a cell whose latent moved by less than this (RMS over channels, normalised units) is unchanged.
# Why not exact equality: nearest snap swaps between near-alike entries of one tile from step to step (the
# shipped Crafter model's still grass field: 10-50 cells a step, each by at most 0.2-0.5), which tile hold
# (0.5 in that bundle) keeps off the screen; a real tile change (grass to tree, the player turning) moves
# a cell by 2 or more
STILL_RMS = 0.5


class MapMemory:
    """The ground a top-down world model showed, by world position, shown again when the view comes back to it.

    For games whose view scrolls over a map by whole latent cells (Crafter: the player stays at the centre
    of a 9 x 7 tile view and a move scrolls it by one tile). The model keeps only its last `context_frames`
    frames, so ground that scrolled out of view and back in is made up again: on the held-out windows of
    `worldsim eval`, a fifth of the real view 32 steps on is ground the context frames showed that had left
    the view and come back (`python docs/map_overlap.py`).
    This memory keeps each row's position (the player's moves summed) and, for every map cell of the view
    except the fixed ones (the player's own tile), the latest latent shown there. Each step, after snap,
    it decides whether the model's frame scrolled with the action's move or stayed (a blocked move; `scrolled`),
    then puts the held latent into every cell the scroll brought
    into view that it has seen, and into the cell the player just left (`uncovered_cells`: its sprite covered
    that ground, so the model has to make it up, and the ground a player stands on does not change), before the
    frame is shown and committed. The game's geometry comes from the
    bundle (`env.map`: the view's map region of latent cells, the player's move per action, the fixed
    cells), not from the model. Constant memory: MAP_SIZE^2 latents per row, each with the world position it
    holds, so a torus slot holding another place is not shown (the shipped Crafter model: 4,096 x 16 floats
    and 4,096 positions, 320 KiB per row)."""

    ROW = ("z", "at", "pos", "filled")  # per-row state (a saved row state's)

    def __init__(self, desc: dict, n_actions: int, batch: int, shape: tuple, device, mobile=None):
        C, h, w = shape
        try:
            (r0, r1), (c0, c1) = desc["region"]
            moves = {int(k): (int(v[0]), int(v[1])) for k, v in desc["moves"].items()}
            fixed = [(int(r), int(c)) for r, c in desc.get("fixed", [])]
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"env.map needs region [[row0, row1], [col0, col1]], moves {{action: [dy, dx]}} and "
                             f"fixed [[row, col], ...]; got {desc!r}") from e
        if not (0 <= r0 < r1 <= h and 0 <= c0 < c1 <= w) or r1 - r0 > MAP_SIZE or c1 - c0 > MAP_SIZE:
            raise ValueError(f"env.map region {desc['region']} does not fit the {h} x {w} latent grid")
        if any(not 0 <= a < n_actions or max(abs(dy), abs(dx)) > 1 for a, (dy, dx) in moves.items()):
            raise ValueError(f"env.map moves must be [dy, dx] of -1, 0 or 1 for actions 0..{n_actions - 1}; "
                             f"got {desc['moves']}")
        self.region = (r0, r1, c0, c1)
        self.move = torch.zeros(n_actions, 2, dtype=torch.long, device=device)
        for a, m in moves.items():
            self.move[a] = torch.tensor(m)
        self.cells = torch.zeros(h, w, dtype=torch.bool, device=device)  # map cells of the view held and filled
        self.cells[r0:r1, c0:c1] = True
        self.fixed = torch.zeros_like(self.cells)  # the player's own cells: its sprite, never held
        for r, c in fixed:
            self.cells[r, c] = False
            self.fixed[r, c] = True
        rr, cc = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
        self.offset = torch.stack([rr, cc], -1)  # (h, w, 2): a cell's place relative to the view's corner
        self.z = torch.zeros(batch, MAP_SIZE, MAP_SIZE, C, device=device)
        self.at = torch.full((batch, MAP_SIZE, MAP_SIZE, 2), -2 ** 40, dtype=torch.long, device=device)
        self.pos = torch.zeros(batch, 2, dtype=torch.long, device=device)  # the view corner's world position
        self.filled = torch.zeros(batch, h, w, dtype=torch.bool, device=device)  # the last step's filled cells
        # mobile: (codebook, entries) of things that move (codebook.mobile_entries): a cell showing one keeps what the
        # memory held there, so a mob the model drew does not stand there again when the view comes back. Kept as
        # (codebook, whether each entry moves), looked up by index (torch.isin of the entries took 0.14 ms a step)
        self.mobile = None
        if mobile is not None:
            moves = torch.zeros(len(mobile[0]), dtype=torch.bool, device=device)
            moves[mobile[1].to(device)] = True
            self.mobile = (mobile[0].to(device).float(), moves)
        # what scrolled, new_cells and uncovered_cells compute from an action's move alone, per action (and, for
        # the last two, per step: an action's move, or none at index n_actions): a step looks them up. Why: they
        # were a dozen small ops every step, each mostly call overhead at batch 1
        src = self.offset + self.move[:, None, None]  # (A, h, w, 2): the last view's cell each would show
        inside = (src[..., 0] >= 0) & (src[..., 0] < h) & (src[..., 1] >= 0) & (src[..., 1] < w)
        self._src = (src[..., 0].clamp(0, h - 1), src[..., 1].clamp(0, w - 1))
        self._both = self.cells & inside & self.cells[self._src[0], self._src[1]]
        self._moves = (self.move != 0).any(-1)
        steps = torch.cat([self.move, torch.zeros_like(self.move[:1])])
        self._new, self._uncovered = self.new_cells(steps), self.uncovered_cells(steps)

    def clear(self, rows):
        self.at[rows] = -2 ** 40
        self.pos[rows] = 0

    def _world(self, rows):  # (b, h, w, 2) world positions of the rows' view cells, and their torus slots
        world = self.pos[rows][:, None, None] + self.offset
        return world, world % MAP_SIZE

    def scrolled(self, z: torch.Tensor, prev: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """(b,) whether each row's new latents z (b, C, h, w) are prev scrolled by its action's move rather
        than prev in place: which leaves fewer changed cells (STILL_RMS) among the map cells both hypotheses
        see; the scroll on a tie (a field of one tile cannot tell, and the game moves unless blocked). Counted,
        not averaged: nearest snap swaps near-alike entries from step to step, and on a field of grass that
        noise decided a mean."""
        sr, sc, both = self._src[0][a], self._src[1][a], self._both[a]  # (b, h, w): see __init__
        b = torch.arange(len(a), device=z.device)[:, None, None]
        shifted = prev.permute(0, 2, 3, 1)[b, sr, sc]  # (b, h, w, C)
        zz, pp = z.permute(0, 2, 3, 1).float(), prev.permute(0, 2, 3, 1).float()
        moved = (((zz - shifted).pow(2).mean(-1).sqrt() >= STILL_RMS) & both).sum((1, 2))
        stayed = (((zz - pp).pow(2).mean(-1).sqrt() >= STILL_RMS) & both).sum((1, 2))
        return self._moves[a] & (moved <= stayed)

    def new_cells(self, step: torch.Tensor) -> torch.Tensor:
        """(b, h, w) the cells new to the view after each row's scroll `step` (b, 2): map cells whose place was
        outside the last view's map region."""
        last = self.offset + step[:, None, None]  # where each cell was in the last view's frame
        r0, r1, c0, c1 = self.region
        return ~((last[..., 0] >= r0) & (last[..., 0] < r1) & (last[..., 1] >= c0) & (last[..., 1] < c1)) & self.cells

    def uncovered_cells(self, step: torch.Tensor) -> torch.Tensor:
        """(b, h, w) the map cells that were a fixed cell in the last view, after each row's scroll `step` (b, 2):
        the ground the player stood on, which its sprite covered. Why fill it from memory: a one-step model
        makes that ground up from the sprite's edges, and in the light bundle's explorer rollouts it once made
        the path behind the player a diamond, walling the player in for good (docs/results.md, "The ground
        under the player")."""
        h, w = self.cells.shape
        last = self.offset + step[:, None, None]  # where each cell was in the last view's frame
        inside = (last[..., 0] >= 0) & (last[..., 0] < h) & (last[..., 1] >= 0) & (last[..., 1] < w)
        was_fixed = self.fixed[last[..., 0].clamp(0, h - 1), last[..., 1].clamp(0, w - 1)]
        return inside & was_fixed & self.cells

    def step(self, rows, z: torch.Tensor, prev: torch.Tensor, a: torch.Tensor, fill: bool = True,
             draw=None) -> torch.Tensor:
        """One step of the rows: move where z scrolled, put held latents into the cells it brought into view and
        the cell the player left (when `fill`), keep the result's map cells. Returns z with those cells filled. `draw(z, cells, step)`, if
        given, replaces the cells ((b, h, w) bool) the scroll (step: (b, 2)) brought into view that the memory
        never held: ground nobody has seen yet (the simulator's new_ground=terrain)."""
        rows = torch.as_tensor(list(rows), dtype=torch.long, device=self.pos.device)
        moved = self.scrolled(z, prev, a)
        code = torch.where(moved, a, len(self.move))  # the step's index in the tables of __init__
        step = torch.where(moved[:, None], self.move[a], 0)
        self.pos[rows] += step
        world, slot = self._world(rows)
        held_z = self.z[rows[:, None, None], slot[..., 0], slot[..., 1]]  # (b, h, w, C)
        held = (self.at[rows[:, None, None], slot[..., 0], slot[..., 1]] == world).all(-1) & self.cells
        new = self._new[code]
        use = held & (new | self._uncovered[code]) & fill
        self.filled[rows] = use
        z = torch.where(use[:, None], held_z.permute(0, 3, 1, 2).to(z.dtype), z)
        fresh = new & ~held & fill
        if draw is not None and bool(fresh.any()):
            z = draw(z, fresh, step)
        keep = self.cells.expand_as(use)
        if self.mobile is not None:
            cb, moves = self.mobile
            idx = entry_index(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]).float(), cb).view(use.shape)
            keep = keep & ~moves[idx]
        s = slot[keep]
        r = rows[:, None, None].expand_as(use)[keep]
        self.z[r, s[:, 0], s[:, 1]] = z.permute(0, 2, 3, 1)[keep].float()
        self.at[r, s[:, 0], s[:, 1]] = world[keep]
        return z

    def start(self, rows, z: torch.Tensor, a: torch.Tensor):
        """A reset's context: z (b, T, C, h, w) latents of the real context frames and a (b, T) the actions
        before each (the first ignored): the memory holds the ground they show, at the positions their moves
        reach."""
        self.clear(rows)
        for i in range(z.shape[1]):
            if i == 0:
                self.step(rows, z[:, 0], z[:, 0], torch.zeros_like(a[:, 0]), fill=False)
            else:
                self.step(rows, z[:, i], z[:, i - 1], a[:, i], fill=False)
