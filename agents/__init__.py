"""Policies that drive an env through its Gymnasium interface: ``act(obs) -> action``, ``reset()``."""
from .explorer import CrafterExplorer
from .random_agent import RandomAgent

AGENTS = {"random": RandomAgent, "explorer": CrafterExplorer}


def make_agent(name: str, action_space, seed: int | None = None):
    if name not in AGENTS:
        raise ValueError(f"unknown agent {name!r}; choose one of {sorted(AGENTS)}")
    return AGENTS[name](action_space, seed=seed)


__all__ = ["AGENTS", "CrafterExplorer", "RandomAgent", "make_agent"]
