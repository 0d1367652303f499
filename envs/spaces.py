"""Validating one action against its Gymnasium space, shared by the learned envs and the real Minetest
adapter, so both reject the same bad input with the same message."""
from __future__ import annotations

import gymnasium as gym
import numpy as np


def check_action(space: gym.Space, action, name: str = "action"):
    """Validate one action and return it as the model takes it; a ValueError names what is wrong.

    Dict actions: unknown keys are errors, missing keys count as not pressed / zero (as in the real
    Minetest adapter), so `{"forward": 1}` is a valid MineRL action.
    """
    if isinstance(space, gym.spaces.Dict):
        if not isinstance(action, dict):
            raise ValueError(f"invalid {name} {action!r}: it must be a dict with keys from {list(space.spaces)}")
        unknown = sorted(set(action) - set(space.spaces))
        if unknown:
            raise ValueError(f"unknown {name} key(s) {unknown}; valid keys: {', '.join(space.spaces)}")
        return {k: check_action(sub, action[k], f"{name}[{k!r}]") if k in action else _zero(sub)
                for k, sub in space.spaces.items()}
    if isinstance(space, gym.spaces.Box):
        try:
            a = np.asarray(action, dtype=np.float32)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a float array of shape {space.shape}, got {action!r}") from None
        if a.shape != space.shape:
            raise ValueError(f"{name} must have shape {space.shape}, got shape {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name} must be finite, got {a.tolist()}")
        if np.any(a < space.low) or np.any(a > space.high):
            raise ValueError(f"{name} = {a.tolist()} is outside [{space.low.min():g}, {space.high.max():g}]")
        return a
    if isinstance(space, gym.spaces.Discrete):  # an integer scalar, not 1.5 or "3" or [3]
        a = np.asarray(action) if not isinstance(action, str) else None
        ok = a is not None and a.shape == () and np.issubdtype(a.dtype, np.integer) and space.contains(np.int64(a))
    else:
        try:
            ok = space.contains(action)
        except (TypeError, ValueError):
            ok = False
    if not ok:
        shown = action.tolist() if isinstance(action, (np.ndarray, np.generic)) else repr(action)
        raise ValueError(f"invalid {name} {shown}: it must be an element of {space}")
    return np.asarray(action)


def _zero(space: gym.Space):
    return np.zeros(space.shape, space.dtype) if isinstance(space, gym.spaces.Box) else np.int64(0)
