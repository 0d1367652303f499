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


def check_action(action, space: gym.spaces.Dict | None = None) -> dict:
    """Validate one MineRL action; raise ValueError naming what is wrong (unknown key, bad camera)."""
    if not isinstance(action, dict):
        raise ValueError(f"a MineRL action is a dict of {len(KEYS)} keys + 'camera', got {type(action).__name__}")
    unknown = sorted(set(action) - set(KEYS) - {"camera"})
    if unknown:
        raise ValueError(f"unknown action key(s) {unknown}; valid keys: {', '.join(KEYS)}, camera")
    out = noop()
    for k in KEYS:
        if k in action:
            v = np.asarray(action[k])
            if v.shape != () or v not in (0, 1):
                raise ValueError(f"action[{k!r}] must be 0 or 1, got {action[k]!r}")
            out[k] = int(v)
    if "camera" in action:
        cam = np.asarray(action["camera"], dtype=np.float32)
        if cam.shape != (2,):
            raise ValueError(f"action['camera'] must have shape (2,) = [pitch, yaw] degrees, got shape {cam.shape}")
        if not np.all(np.isfinite(cam)) or np.any(np.abs(cam) > 180):
            raise ValueError(f"action['camera'] must be finite degrees in [-180, 180], got {cam.tolist()}")
        out["camera"] = cam
    return out
