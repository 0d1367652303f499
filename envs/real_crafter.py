"""The real Crafter game (danijar/crafter) as a Gymnasium environment: the source of training data and the
ground truth that `worldsim play --compare` and `worldsim eval` hold the model against.
"""
from __future__ import annotations

import crafter
import gymnasium as gym
import numpy as np

ACTION_MEANINGS = tuple(crafter.constants.actions)  # 17 actions, index = action id
# The view's geometry in tiles of its 9 x 9 grid (what a tile autoencoder's latent cells are): the map is the
# top 7 rows (the inventory is below), the player stands on row 3, column 4, and a move that is not blocked
# scrolls the map by one tile. A bundle carries these as env.reveal (seed_floor) and env.map (map_memory).
MAP_ROWS, MAP_COLS, PLAYER = 7, 9, (3, 4)
# The counts that move on the game's hidden clocks (hunger, thirst, fatigue, recovery): collect stores them
# per frame (`counters`), and their rises and falls become the learned env's ticks (data.tick_names).
COUNTERS = ("health", "food", "drink", "energy")
MOVES = {1: (0, -1), 2: (0, 1), 3: (-1, 0), 4: (1, 0)}  # move_left, _right, _up, _down: the player's (dy, dx)


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
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, render_mode: str | None = None, size: int = 64, length: int = 10000):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.render_mode, self.size, self.length = render_mode, size, length
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
        return self._obs, {"world_seed": world_seed, "clock": int(clock),
                           "inventory": dict(self.game._player.inventory)}

    def step(self, action):
        if self.game is None:
            raise RuntimeError("call reset() before step()")
        if not self.action_space.contains(action):
            raise ValueError(f"action {action!r} is not in {self.action_space}")
        obs, reward, done, info = self.game.step(int(action))
        self._obs = obs
        terminated = bool(info["discount"] == 0)
        truncated = bool(done and not terminated)
        return obs, float(reward), terminated, truncated, {"achievements": info["achievements"],
                                                           "inventory": info["inventory"]}

    def render(self):
        return None if self._obs is None else self._obs.copy()
