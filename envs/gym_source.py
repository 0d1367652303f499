"""Any Gymnasium environment as a source of image episodes, so a world model can be trained on your own
environment: `worldsim collect env=gym:<env id>`.

The frames are the env's observation where that is already an RGB image (``Box(0, 255, (H, W, 3), uint8)``:
Atari, Procgen, MiniGrid's RGB wrappers), otherwise what it renders with ``render_mode="rgb_array"`` (classic
control, Box2D, MuJoCo). Each frame is cropped to the target aspect and resized with antialiasing
(`worldsim.data.fit_frames`, as the VPT importer does); the action space, rewards and ends are the env's own.
``<env id>`` is anything ``gymnasium.make`` takes, including ``module:EnvId`` (Gymnasium imports the module
first, which registers third-party envs: ``gym:minigrid:MiniGrid-Empty-8x8-v0``).
"""
from __future__ import annotations

import copy
import os

import gymnasium as gym
import numpy as np

from worldsim.data import fit_frames

PREFIX = "gym:"
DEFAULT_HEIGHT = 64  # the default frame height; the width keeps the env's aspect, in multiples of 8 (patch8)


LEARNED_ID = "worldsim/World-v0"  # the learned env of a bundle trained on a gym source


def is_gym_source(name) -> bool:
    return isinstance(name, str) and name.startswith(PREFIX)


def folder_name(name: str) -> str:
    """A game name as a default folder name: `gym:CartPole-v1` -> `CartPole-v1`, `gym:m:Id-v0` -> `m_Id-v0`."""
    return name[len(PREFIX):].replace(":", "_") if is_gym_source(name) else name


def need_bundle(name, bundle) -> None:
    """A learned gym:<id> world is one you trained: the clear error where a job names no bundle for it."""
    if is_gym_source(name) and not bundle:
        raise ValueError(f"env={name}: give the bundle you trained on it, bundle=runs/<run>/bundle")


def env_id(name: str) -> str:
    """`gym:CartPole-v1` -> `CartPole-v1` (a clear error for an empty id)."""
    if not is_gym_source(name) or not name[len(PREFIX):]:
        raise ValueError(f"env={name!r}: a Gymnasium source is written gym:<env id>, e.g. gym:CartPole-v1")
    return name[len(PREFIX):]


def default_size(native_hw) -> list[int]:
    """[H, W] for frames rendered at native (h, w): 64 high, the width keeping the aspect in multiples of 8,
    since the patch8 autoencoder needs sides divisible by 8."""
    h, w = native_hw
    return [DEFAULT_HEIGHT, max(8, int(round(DEFAULT_HEIGHT * w / h / 8)) * 8)]


def _image_obs(space: gym.Space) -> bool:
    return (isinstance(space, gym.spaces.Box) and space.dtype == np.uint8 and len(space.shape) == 3
            and space.shape[-1] == 3)


class GymImageEnv(gym.Env):
    """A Gymnasium env seen as RGB frames of a fixed size (see the module docstring).

    - Observation: ``Box(0, 255, (H, W, 3), uint8)``; ``size`` is [H, W] (or one int, square); None: 64 high
      with the env's aspect (`default_size`).
    - Action: the env's own action space (Discrete, MultiDiscrete, MultiBinary, a 1-D Box, or a Dict of
      those: what the world model's action encoder takes), passed through unchanged.
    - ``terminated`` is the env's; ``truncated`` is the env's own time limit or ``length`` steps, whichever comes
      first. ``reset(seed=s)`` seeds the env.
    """

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, name: str, size=None, length: int = 10000, render_mode: str | None = None, **make_kwargs):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.name, self.render_mode, self.length = name, render_mode, int(length)
        gid = env_id(name)
        if not os.environ.get("DISPLAY"):  # headless: pygame-drawn envs (classic control) then need no X server
            os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
        try:  # frames come from render() unless the observation is an image; rgb_array serves both
            self.env = gym.make(gid, **{"render_mode": "rgb_array", **make_kwargs})
        except (gym.error.Error, ModuleNotFoundError) as e:
            raise ValueError(f"env={name!r}: Gymnasium cannot make {gid!r} ({e}). Register it, or name the module "
                             f"that registers it: gym:<module>:<env id>") from None
        self.from_obs = _image_obs(self.env.observation_space)
        if not self.from_obs and self.env.render_mode != "rgb_array":
            raise ValueError(f"env={name!r}: its observations are not RGB images and it does not render with "
                             f"render_mode='rgb_array', so there are no frames to learn from")
        from worldsim.model import space_to_spec
        try:
            space_to_spec(self.env.action_space)
        except TypeError as e:
            raise ValueError(f"env={name!r}: {e}") from None
        for box in _boxes(self.env.action_space):
            if len(box.shape) != 1:
                raise ValueError(f"env={name!r}: Box actions must be 1-D vectors, got shape {box.shape}")
        self.action_space = self.env.action_space
        self.native_shape = None
        self.size = None if size is None else ([int(size), int(size)] if np.isscalar(size) else [int(s) for s in size])
        if self.size is not None:
            self.observation_space = gym.spaces.Box(0, 255, (*self.size, 3), np.uint8)
        self._t, self._obs = 0, None

    def _frame(self, obs) -> np.ndarray:
        img = np.asarray(obs if self.from_obs else self.env.render())
        if img.ndim != 3 or img.shape[-1] not in (3, 4):
            raise ValueError(f"env={self.name!r} gave a frame of shape {img.shape}, not (H, W, 3)")
        img = img[..., :3].astype(np.uint8, copy=False)
        if self.native_shape is None:
            self.native_shape = list(img.shape[:2])
            if self.size is None:
                self.size = default_size(img.shape[:2])
                self.observation_space = gym.spaces.Box(0, 255, (*self.size, 3), np.uint8)
        return fit_frames(img[None], self.size)[0]

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        obs, info = self.env.reset(seed=seed, options=options)
        self._t, self._obs = 0, self._frame(obs)
        return self._obs, dict(info)

    def step(self, action):
        if self._obs is None:
            raise RuntimeError("call reset() before step()")
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._t += 1
        self._obs = self._frame(obs)
        return self._obs, float(reward), bool(terminated), bool(truncated) or self._t >= self.length, dict(info)

    def render(self):
        return None if self._obs is None else self._obs.copy()

    def action_meanings(self) -> list[str]:
        """Atari's names where the env has them, else none."""
        fn = getattr(self.env.unwrapped, "get_action_meanings", None)
        return [str(m) for m in fn()] if callable(fn) else []

    def clone(self) -> "GymImageEnv":
        """A copy of the running env (copy.deepcopy), for the real outcome of an action not taken (eval's action
        following). pygame surfaces and clocks cannot be deep-copied, so the copy shares them: classic control
        and Box2D redraw the whole surface on each render, so a shared one shows each env's own state. A
        ValueError names the env when its state cannot be copied at all."""
        memo = {id(v): v for v in vars(self.env.unwrapped).values() if type(v).__module__.startswith("pygame")}
        try:
            return copy.deepcopy(self, memo)
        except Exception as e:  # any failure to copy a third-party env's state
            raise ValueError(f"env={self.name!r} cannot be copied while running ({type(e).__name__}: {e}), so the "
                             f"real outcomes of actions not taken are unknown") from None

    def close(self):
        self.env.close()


def _boxes(space: gym.Space):
    if isinstance(space, gym.spaces.Box):
        yield space
    elif isinstance(space, gym.spaces.Dict):
        for s in space.spaces.values():
            yield from _boxes(s)
