"""The real Crafter game (danijar/crafter) as a Gymnasium environment: the source of training data and the
ground truth that `worldsim play --compare` and `worldsim eval` hold the model against.
"""
from __future__ import annotations

import functools

import crafter
import gymnasium as gym
import numpy as np
import torch

ACTION_MEANINGS = tuple(crafter.constants.actions)  # 17 actions, index = action id
# The view's geometry in tiles of its 9 x 9 grid (what a tile autoencoder's latent cells are): the map is the
# top 7 rows (the inventory is below), the player stands on row 3, column 4, and a move that is not blocked
# scrolls the map by one tile. A bundle carries these as env.reveal (seed_floor) and env.map (map_memory).
MAP_ROWS, MAP_COLS, PLAYER = 7, 9, (3, 4)
# The counts that move on the game's hidden clocks (hunger, thirst, fatigue, recovery): collect stores them
# per frame (`counters`), and their rises and falls become the learned env's ticks (data.tick_names).
COUNTERS = ("health", "food", "drink", "energy")
MOVES = {1: (0, -1), 2: (0, 1), 3: (-1, 0), 4: (1, 0)}  # move_left, _right, _up, _down: the player's (dy, dx)

# The game's light (day and night). Crafter draws its world, then lights the map view by the time of day
# (crafter.engine.LocalView._light): a blend towards a desaturated, blue-tinted copy, and at night (daylight
# under 0.5) uniform noise from the edges in. It is a fixed function of the frame drawn without it (the
# "canvas") and the game's step, so the learned world can leave it to the env: the model draws canvases, which
# keep their variety at any hour, and the env lights them by its own clock, nights of the game's length ending
# in the game's dawn (docs/results.md, "The game's light, drawn by the env"). Reimplemented in torch (batched,
# on the model's device); tests/test_light.py holds it to crafter's own _light, and `unlight` is its inverse for
# context frames. A sleeping player's view, which Crafter greys after the light, stays in the canvas unless
# asked (grey_sleep=False, below).
DAY = 300  # steps in Crafter's day (crafter.Env._update_time)
NIGHT_TINT = (0.0, 16.0, 64.0)  # LocalView._light's tint colour; blended at 0.5, after desaturating to 0.4
NOISE_RANGE = (32.0, 127.0)  # LocalView._noise's uniform


def daylight(steps) -> np.ndarray:
    """The game's daylight in [0, 1] at each game step (crafter.Env._update_time): 0.80 at step 0, full at 60,
    dark from about 180, darkest at 210, 0.80 again at 300."""
    progress = (np.asarray(steps, np.float64) / DAY) % 1 + 0.3
    return 1 - np.abs(np.cos(np.pi * progress)) ** 3


def view_box(frame_shape) -> tuple[slice, slice]:
    """The rows and columns of the lit map view in a frame (H, W): the top 7 of the 9 x 9 grid's units, inside
    the border Env.render centres the grid with."""
    H, W = frame_shape[:2]
    uy, ux = H // 9, W // 9
    by, bx = (H - 9 * uy) // 2, (W - 9 * ux) // 2
    return slice(by, by + MAP_ROWS * uy), slice(bx, bx + MAP_COLS * ux)


def _vignette(h: int, w: int, device) -> torch.Tensor:
    """LocalView._vignette(shape, 0.5), in frame (row, column) order: 0 at the view's centre, near 1 at its corners."""
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h, dtype=torch.float64),
                            torch.linspace(-1, 1, w, dtype=torch.float64), indexing="ij")
    return (1 - torch.exp(-0.5 * (xs ** 2 + ys ** 2) / 0.25)).to(device)


def _grey(x: torch.Tensor) -> torch.Tensor:
    """PIL's convert("L") on whole-number RGB (ITU-R 601-2 luma in 16-bit fixed point, rounded)."""
    x = x.to(torch.int64)
    return ((x[..., 0] * 19595 + x[..., 1] * 38470 + x[..., 2] * 7471 + 0x8000) >> 16)[..., None].double()


def light(frames: torch.Tensor, steps, uniform: torch.Tensor | None = None) -> torch.Tensor:
    """Frames drawn without the light (B, H, W, 3) uint8, lit as the game lights them at game steps `steps` (B,).
    uniform: (b, h, w) draws in NOISE_RANGE for the rows whose daylight is under 0.5, in row order (the night's
    noise; h, w the map view's size); None: the noise's mean (what a predictor judged by PSNR should show)."""
    d = daylight(steps)
    out = frames.clone()
    rows, cols = view_box(frames.shape[1:])
    c = frames[:, rows, cols].double()
    dark = torch.as_tensor(d < 0.5, device=frames.device)
    n = c
    if dark.any():
        m = torch.as_tensor(2 * (0.5 - d), device=frames.device)[:, None, None, None] * \
            _vignette(c.shape[1], c.shape[2], frames.device)[None, ..., None]
        if uniform is None:
            u = torch.full_like(c[..., :1], sum(NOISE_RANGE) / 2)
        else:  # the dark rows' draws, in row order
            u = torch.zeros_like(c[..., 0]).masked_scatter(dark[:, None, None].expand_as(c[..., 0]), uniform.double())
            u = u[..., None]
        n = torch.where(dark[:, None, None, None], (1 - m) * c + m * u, c).floor()  # astype(uint8) truncates
    g = _grey(n)
    tint = torch.tensor(NIGHT_TINT, dtype=torch.float64, device=frames.device)
    night = 0.5 * (g + 0.4 * (n - g)).floor() + 0.5 * tint  # ImageEnhance.Color(0.4), then the tint
    dd = torch.as_tensor(d, device=frames.device)[:, None, None, None]
    out[:, rows, cols] = (dd * c + (1 - dd) * night).floor().clamp(0, 255).to(torch.uint8)
    return out


def unlight(frames: torch.Tensor, steps, sleepers: bool = True) -> torch.Tensor:
    """The inverse of `light` with the noise at its mean: frames the game showed at steps `steps` (B,), drawn back
    without the light (uint8). Per pixel the light is affine in the canvas, shown = a*c + k*grey(c) + b, so this
    solves it (Sherman-Morrison: grey is a weighted sum of the channels). Exact to a grey level or two by day;
    at night what the noise covered is lost (at the view's corners in the darkest hour almost all of it).
    A sleeper's frame (its view greyed after the light: grey_view at 0.8) comes back as the canvas greyed as the
    game greys a canvas (what a model trained on canvases with the grey read): its colours are gone, but the light
    moves a pixel's grey level by the same affine map, grey(shown) = (a + k) * grey(c) + grey(b), so the canvas's
    grey level comes back to a level or so (sleepers=False: undone as an awake view, colours and all)."""
    d = torch.as_tensor(daylight(steps), device=frames.device)[:, None, None, None]
    rows, cols = view_box(frames.shape[1:])
    s = frames[:, rows, cols].double() + 0.5  # the game truncates: its frames are on average half a level low
    m = torch.clamp(2 * (0.5 - d), min=0) * _vignette(s.shape[1], s.shape[2], frames.device)[None, ..., None]
    keep = 0.5 * (1 - d) * (1 - m)  # the night copy's share of the canvas itself (the rest is noise and tint)
    a, k = d + 0.4 * keep, 0.6 * keep  # shown = a*c + k*grey(c) + b
    b = (1 - d) * 0.5 * (m * sum(NOISE_RANGE) / 2 + torch.tensor(NIGHT_TINT, dtype=torch.float64, device=frames.device))
    # the night copy's noise and tint: 0.5 * (grey + 0.4 * (x - grey)) of a constant u is 0.5 * u, plus 0.5 * tint
    y = s - b
    w = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64, device=frames.device)
    c = y / a - (k / (a * (a + k))) * (y * w).sum(-1, keepdim=True)
    asleep = grey_view(frames, 0.8) if sleepers else torch.zeros(len(frames), dtype=torch.bool, device=frames.device)
    if asleep.any():  # the grey of the lit view is floor(luma / 2) in red: luma is 2 * red or one more
        luma = 2 * frames[:, rows, cols, :1].double() + 1.0  # + 0.5 for the parity, + 0.5 for the truncation
        grey = ((luma - (b * w).sum(-1, keepdim=True)) / (a + k)).round().clamp(0, 255)
        tint = torch.tensor(SLEEP_TINT, dtype=torch.float64, device=frames.device)
        c = torch.where(asleep[:, None, None, None], (0.5 * grey + 0.5 * tint).floor(), c)
    out = frames.clone()
    out[:, rows, cols] = c.round().clamp(0, 255).to(torch.uint8)
    return out


# A sleeper's view. Crafter greys the map view of a sleeping player after the light (LocalView._sleep: colour
# enhanced to 0, i.e. PIL's luma, then tinted towards SLEEP_TINT at 0.5) and draws the player's sleeping sprite.
# Like the light it is a fixed function of the canvas, so canvases can be drawn without it (grey_sleep=False:
# the sprite shows the sleep) and the learned env draws it where the frame its model made shows that sprite
# (`sleeping`; a bundle's env.sleep). Why: the shipped model, made to grey the whole view on a `sleep` press,
# greys part of it and keeps drawing an awake player, so its tick head never reads a sleep and the player never
# wakes (docs/results.md, "Sleep with ticks on"); a model on such canvases changes one tile instead.
SLEEP_TINT = (0.0, 0.0, 16.0)
PLAYER_SPRITES = ("player-sleep", "player-left", "player-right", "player-up", "player-down")


def _unchanged(canvas):
    return canvas


def sleep_view(frames: torch.Tensor, sleeping) -> torch.Tensor:
    """Frames (B, H, W, 3) uint8 as the game shows them (lit), with the map view of the rows `sleeping` (B,) bool
    greyed as Crafter greys a sleeper's (LocalView._sleep, exact: tests/test_light.py)."""
    rows = torch.nonzero(torch.as_tensor(sleeping, device=frames.device)).flatten()
    out = frames.clone()
    if not len(rows):
        return out
    vr, vc = view_box(frames.shape[1:])
    g = _grey(frames[rows][:, vr, vc])
    tint = torch.tensor(SLEEP_TINT, dtype=torch.float64, device=frames.device)
    out[rows, vr, vc] = (0.5 * g + 0.5 * tint).floor().to(torch.uint8)  # the game's uint8 canvas truncates
    return out


@functools.lru_cache(4)
def _player_sprites(unit: int) -> tuple[np.ndarray, np.ndarray]:
    """The player's sprites at `unit` px, (5, unit, unit, 3) float RGB in frame (row, column) order, and where
    each is opaque (5, unit, unit) bool: crafter's own textures, as its renderer resizes them."""
    tex = crafter.engine.Textures(crafter.constants.root / "assets")
    t = np.stack([tex.get(n, (unit, unit)).transpose(1, 0, 2) for n in PLAYER_SPRITES]).astype(np.float64)
    return t[..., :3], t[..., 3] == 255


# a sleeper's energy rises a point on every 11th step from the step its sleep began (Player._update_life_stats:
# fatigue starts at min(fatigue - 1, 0) and a rise comes when it falls under -10)
SLEEP_RISE_STEPS = 11
SLEEP_GREY_LEVELS = 6.0  # a pixel within this of the sleeper's grey: |red - green| + |blue - red - 8|


def grey_view(frames: torch.Tensor, share: float = 0.5) -> torch.Tensor:
    """Frames (B, H, W, 3) uint8 -> bool (B,): at least `share` of the map view's pixels are a sleeper's grey
    (sleep_view's filter: red = green, blue 8 levels above), within SLEEP_GREY_LEVELS. For models that draw the
    grey themselves (bundles without env.sleep), whose sleeping sprite is too blurred for `sleeping` and whose
    grey views often keep some tiles in colour. Measured on the tenth of each collection's episodes: real
    sleepers 1.0; real awake canvases 0.0 (none of 50,000); real lit frames up to 0.62 (dusk: the night's tint
    is blue), so lit frames need a share above that; the shipped model's sleeping canvases 0.59-0.91, its
    view after a press that did not grey it 0.29."""
    vr, vc = view_box(frames.shape[1:])
    v = frames[:, vr, vc].float()
    r, g, b = v.unbind(-1)
    near = ((r - g).abs() + (b - r - SLEEP_TINT[2] / 2).abs()) < SLEEP_GREY_LEVELS
    return near.float().mean((1, 2)) >= share


def sleeping(frames: torch.Tensor) -> torch.Tensor:
    """Frames (B, H, W, 3) uint8 drawn as canvases -> bool (B,): the player's cell shows the sleeping sprite, the
    nearest of the player's five sprites over its opaque pixels (a decoded tile is a few grey levels off; the
    sprites differ by tens)."""
    H, W = frames.shape[1:3]
    unit = H // 9
    vr, vc = view_box(frames.shape[1:])
    y, x = vr.start + PLAYER[0] * unit, vc.start + PLAYER[1] * unit
    rgb, opaque = _player_sprites(unit)
    tile = frames[:, y:y + unit, x:x + unit].double()
    rgb, opaque = torch.as_tensor(rgb, device=frames.device), torch.as_tensor(opaque, device=frames.device)
    d = ((tile[:, None] - rgb[None]).abs().mean(-1) * opaque).sum((2, 3)) / opaque.sum((1, 2))
    return d.argmin(1) == 0


def view_geometry() -> dict:
    """env.reveal (each move's newly revealed cells: the map's edge on its side) and env.map (the map region,
    the moves, the player's fixed cell), in grid cells, as bundle.json holds them."""
    reveal = {}
    for a, (dy, dx) in MOVES.items():
        rows = [0 if dy < 0 else MAP_ROWS - 1] if dy else range(MAP_ROWS)
        cols = [0 if dx < 0 else MAP_COLS - 1] if dx else range(MAP_COLS)
        reveal[str(a)] = [[r, c] for r in rows for c in cols]
    return {"reveal": reveal, "map": {"region": [[0, MAP_ROWS], [0, MAP_COLS]],
                                      "moves": {str(a): list(m) for a, m in MOVES.items()}, "fixed": [list(PLAYER)]}}


class RealCrafterEnv(gym.Env):
    """Real Crafter, Gymnasium API.

    Observation: ``Box(0, 255, (size, size, 3), uint8)``, the top-down local view plus inventory.
    Action: ``Discrete(17)``:

    ====  ===================  ====  ====================
    id    meaning              id    meaning
    ====  ===================  ====  ====================
    0     noop                 9     place_furnace
    1     move_left            10    place_plant
    2     move_right           11    make_wood_pickaxe
    3     move_up              12    make_stone_pickaxe
    4     move_down            13    make_iron_pickaxe
    5     do                   14    make_wood_sword
    6     sleep                15    make_stone_sword
    7     place_stone          16    make_iron_sword
    8     place_table
    ====  ===================  ====  ====================

    ``info["inventory"]`` (reset and step) holds the player's counts: health, food, drink, energy and items.
    ``terminated`` is True when the player dies, ``truncated`` when ``length`` steps have passed.
    ``reset(seed=s)`` generates the world from seed ``s`` (world generation takes about a second).
    ``reset(options={"clock": n})`` starts the new game at step n of its clock instead of 0: same world, the
    light and the zombies of that time of day (Crafter's day is 300 steps; night falls from step 180 on), and
    ``length`` steps still to run. Why: an explorer rarely lives through the night, so episodes that begin
    with it are how a dataset gets dawns (docs/results.md, "Light").

    ``light=False`` shows the world without the game's light (the canvas: every hour drawn as at full day; the
    game itself, its clock and its zombies, run as ever); ``canvas=True`` keeps the lit frames and adds the
    canvas as ``info["canvas"]`` (collect stores it per frame). A learned world with the env's light (bundle.json
    ``env.light``) is trained and fitted on canvases and lit by the env's clock (`light` above).
    ``grey_sleep=False`` leaves a sleeper's grey view out of those canvases too: the sleeping sprite shows the
    sleep, and a learned world whose model read such canvases (``env.sleep``) greys the view itself
    (`sleep_view`, where `sleeping` reads the sprite).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, render_mode: str | None = None, size: int = 64, length: int = 10000, light: bool = True,
                 canvas: bool = False, grey_sleep: bool = True):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        for name, v in (("light", light), ("canvas", canvas), ("grey_sleep", grey_sleep)):
            if not isinstance(v, (bool, np.bool_)):
                raise ValueError(f"{name} must be true or false, got {v!r}")
        self.render_mode, self.size, self.length = render_mode, size, length
        self.light, self.canvas, self.grey_sleep = bool(light), bool(canvas), bool(grey_sleep)
        self.observation_space = gym.spaces.Box(0, 255, (size, size, 3), np.uint8)
        self.action_space = gym.spaces.Discrete(len(ACTION_MEANINGS))
        self.game: crafter.Env | None = None
        self._obs = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        world_seed = int(self.np_random.integers(2**31 - 1))
        self.game = crafter.Env(area=(64, 64), size=(self.size, self.size), length=self.length, seed=world_seed)
        self._obs = self.game.reset()
        clock = (options or {}).get("clock", 0)
        if not isinstance(clock, (int, np.integer)) or isinstance(clock, bool) or clock < 0:
            raise ValueError(f"options['clock'] must be a game step >= 0 to start at, got {clock!r}")
        if clock:  # crafter.Env keeps its clock in _step; the light is set from it (_update_time), then drawn
            self.game._step, self.game._length = int(clock), self.length + int(clock)
            self.game._update_time()
            self._obs = self.game.render()
        info = {"world_seed": world_seed, "clock": int(clock), "inventory": dict(self.game._player.inventory)}
        return self._view(info), info

    def _draw_canvas(self) -> np.ndarray:
        """The frame as the game would draw it in full daylight; with grey_sleep=False also with a sleeper's view
        not greyed (the sleeping sprite shows the sleep; `sleep_view` draws the grey). Daylight 1 draws no night
        noise, so the game's random stream is the same as without this render."""
        world, view = self.game._world, self.game._local_view
        hour, world.daylight = world.daylight, 1.0
        if not self.grey_sleep:
            view._sleep = _unchanged  # an instance attribute over LocalView._sleep, removed after the render
        try:
            return self.game.render()
        finally:
            world.daylight = hour
            view.__dict__.pop("_sleep", None)

    def _view(self, info: dict) -> np.ndarray:
        if self.canvas or not self.light:
            canvas = self._draw_canvas()
            if self.canvas:
                info["canvas"] = canvas
            if not self.light:
                self._obs = canvas
        return self._obs

    def step(self, action):
        if self.game is None:
            raise RuntimeError("call reset() before step()")
        if not self.action_space.contains(action):
            raise ValueError(f"action {action!r} is not in {self.action_space}")
        obs, reward, done, info = self.game.step(int(action))
        self._obs = obs
        terminated = bool(info["discount"] == 0)
        truncated = bool(done and not terminated)
        info = {"achievements": info["achievements"], "inventory": info["inventory"]}
        return self._view(info), float(reward), terminated, truncated, info

    def render(self):
        return None if self._obs is None else self._obs.copy()


def real_sleeper(seed: int, walk: int = 100, asleep: int = 40, **env_kwargs):
    """A real sleep spell: random moves until the energy count falls below full (it falls a point every 30 steps
    awake), `sleep`, then noops until the game wakes the player (a point back every 11 steps asleep).
    RealCrafterEnv(**env_kwargs) draws the frames. Returns (frames, actions, the press's step, the energies of the
    frames) if it woke on a full count, at most `walk` moves and `asleep` noops in; else None (a death, or a
    blow: Crafter also wakes a sleeper who is hurt, which no frame foretells)."""
    env, rng = RealCrafterEnv(**env_kwargs), np.random.default_rng(seed)
    obs, info = env.reset(seed=seed)
    frames, actions, energy = [obs], [], [info["inventory"]["energy"]]

    def step(a):
        obs, _, terminated, _, info = env.step(a)
        frames.append(obs), actions.append(a), energy.append(info["inventory"]["energy"])
        return terminated

    while energy[-1] == 9:
        if step(int(rng.integers(1, 5))) or len(actions) > walk:
            return None
    press = len(actions)
    step(6)
    while env.game._player.sleeping:
        if step(0) or len(actions) > press + asleep:
            return None
    return (np.stack(frames), np.array(actions), press, energy) if energy[-2] == 9 else None
