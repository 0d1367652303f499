"""MineRL 1.0's action space, shared by the real Minetest adapter, the learned Minetest env, the importers
and the viewer, so an agent moves between them with no change.

``Dict`` of ``Discrete(2)`` keys (1 = held during the 50 ms tick) and ``camera``: ``Box(-180, 180, (2,))``,
the change of [pitch, yaw] in degrees applied at the tick's start (positive pitch looks down, positive yaw
turns right, as in MineRL and VPT).
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np

KEYS = ("ESC", "attack", "back", "drop", "forward", *(f"hotbar.{i}" for i in range(1, 10)), "inventory", "jump",
        "left", "pickItem", "right", "sneak", "sprint", "swapHands", "use")


def action_space() -> gym.spaces.Dict:
    spaces = {k: gym.spaces.Discrete(2) for k in KEYS}
    spaces["camera"] = gym.spaces.Box(-180.0, 180.0, (2,), np.float32)
    return gym.spaces.Dict(spaces)


def noop() -> dict:
    a = {k: 0 for k in KEYS}
    a["camera"] = np.zeros(2, np.float32)
    return a
