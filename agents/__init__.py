"""Policies that drive an env through its Gymnasium interface: ``act(obs) -> action``, ``reset()``."""
import importlib

import gymnasium as gym

from .explorer import CrafterExplorer
from .minetest_explorer import MinetestExplorer
from .random_agent import RandomAgent

AGENTS = {"random": RandomAgent, "explorer": CrafterExplorer, "minetest_explorer": MinetestExplorer}


def make_agent(name: str, action_space, seed: int | None = None, detour: float = 0.0, sleep: float = 0.01):
    """`explorer` picks the scripted explorer that fits the action space (Crafter's or the MineRL Dict).
    `detour` is the Crafter explorer's share of one-step detours from a held move, `sleep` its share of plans
    that are a sleep spell (other agents: both ignored).
    `module:Class` is your own policy: ``Class(action_space, seed=seed)`` with ``act(obs)`` and ``reset()``."""
    if name == "explorer" and isinstance(action_space, gym.spaces.Dict):
        name = "minetest_explorer"
    if ":" in name:
        mod, _, cls = name.partition(":")
        try:
            factory = getattr(importlib.import_module(mod), cls)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"agent={name!r}: cannot import {cls!r} from module {mod!r} ({e})") from None
        agent = factory(action_space, seed=seed)
        if not (callable(getattr(agent, "act", None)) and callable(getattr(agent, "reset", None))):
            raise ValueError(f"agent={name!r}: an agent needs act(obs) -> action and reset()")
        return agent
    if name not in AGENTS:
        raise ValueError(f"unknown agent {name!r}; choose one of {sorted(AGENTS)}, or module:Class for your own")
    if name == "explorer":
        return CrafterExplorer(action_space, seed=seed, detour=float(detour), sleep=float(sleep))
    return AGENTS[name](action_space, seed=seed)


__all__ = ["AGENTS", "CrafterExplorer", "MinetestExplorer", "RandomAgent", "make_agent"]
