"""Validating actions against their Gymnasium space, one (check_action) or a vector env's batch (check_actions),
shared by the learned envs and the real Minetest adapter, so both reject the same bad input with the same message."""
from __future__ import annotations

import gymnasium as gym
import numpy as np

from worldsim.data import stack_actions


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


def check_actions(space: gym.Space, actions, n: int):
    """Validate a batch of n actions for n worlds of `space` and return them stacked as the model takes them.

    Why not check_action per world: at batch 1,024 that loop cost 18 ms of a 236 ms step on an H200's host.
    A well-formed batch (integer arrays in range, finite boxes in bounds) is checked with a few array
    operations; anything else goes through check_action one world at a time, which raises the same error a
    single env would, or accepts what it accepts."""
    fast = _batch(space, actions, n)
    if fast is not None:
        return fast
    return stack_actions([check_action(space, a) for a in unstack(actions, n)])


def unstack(actions, n: int) -> list:
    """A batch of n actions (array, or Gymnasium's dict of batched arrays) -> n single actions."""
    if isinstance(actions, dict):
        bad = {k: np.shape(v) for k, v in actions.items() if np.shape(v)[:1] != (n,)}
        if bad:
            raise ValueError(f"expected {n} actions (one per env) under each key, got shapes {bad}")
        return [{k: np.asarray(v)[i] for k, v in actions.items()} for i in range(n)]
    arr = np.asarray(actions)
    if arr.shape[:1] != (n,):
        raise ValueError(f"expected {n} actions (one per env), got array of shape {arr.shape}")
    return list(arr)


def _batch(space: gym.Space, actions, n: int):
    """The batch as check_action would return it stacked, or None where it needs the per-world path."""
    if isinstance(space, gym.spaces.Dict):
        if not isinstance(actions, dict) or set(actions) - set(space.spaces):
            return None
        out = {}
        for k, sub in space.spaces.items():
            out[k] = _batch(sub, actions[k], n) if k in actions else np.stack([_zero(sub)] * n)
            if out[k] is None:
                return None
        return out
    if not isinstance(actions, np.ndarray):
        return None
    shape = (n, *space.shape)
    if isinstance(space, gym.spaces.Box):
        if actions.shape != shape or actions.dtype.kind not in "fiu":
            return None
        a = actions.astype(np.float32)
        ok = np.isfinite(a).all() and (a >= space.low).all() and (a <= space.high).all()
        return a if ok else None
    if actions.shape != shape or actions.dtype.kind not in "iu":
        return None
    if isinstance(space, gym.spaces.Discrete):
        lo, hi = int(space.start), int(space.start) + int(space.n)
    elif isinstance(space, gym.spaces.MultiDiscrete):
        lo, hi = space.start, space.start + space.nvec
    elif isinstance(space, gym.spaces.MultiBinary):
        lo, hi = 0, 2
    else:
        return None
    return actions.copy() if ((actions >= lo) & (actions < hi)).all() else None  # dtype kept, as check_action keeps it
