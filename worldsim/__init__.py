"""worldsim: a learned, interactive world simulator (action-conditioned causal latent diffusion transformer).

Importing worldsim registers the Gymnasium environments:

- ``worldsim/Crafter-v0``: the learned Crafter world (the model shipped in the package by default).
- ``worldsim/World-v0``: the learned world of a bundle you trained (``bundle=`` required), e.g. on your own
  Gymnasium env (``worldsim collect env=gym:<id>`` then ``worldsim train``).
- ``worldsim/RealCrafter-v0``: the real Crafter game, same spaces, for data and comparison.
- ``worldsim/Minetest-v0``: the learned first-person Minetest world (shipped model), with the same
  spaces as ``worldsim/RealMinetest-v0``.
- ``worldsim/RealMinetest-v0``: the real Minetest game in first person with MineRL 1.0's keyboard + camera
  actions (needs the Debian packages minetest, minetest-data and xvfb).
"""
from pathlib import Path

import gymnasium as gym

__version__ = "0.1.0"
ASSETS = Path(__file__).parent / "assets"
DEFAULT_CRAFTER_BUNDLE = ASSETS / "crafter"
DEFAULT_MINETEST_BUNDLE = ASSETS / "minetest"


def _register():
    if "worldsim/Crafter-v0" in gym.registry:
        return
    gym.register(id="worldsim/Crafter-v0", entry_point="worldsim.envs.world_env:WorldEnv",
                 vector_entry_point="worldsim.envs.world_env:WorldVectorEnv", max_episode_steps=None,
                 disable_env_checker=False)
    gym.register(id="worldsim/Minetest-v0", entry_point="worldsim.envs.world_env:WorldEnv",
                 vector_entry_point="worldsim.envs.world_env:WorldVectorEnv",
                 kwargs={"default_bundle": str(DEFAULT_MINETEST_BUNDLE)})
    gym.register(id="worldsim/World-v0", entry_point="worldsim.envs.world_env:WorldEnv",
                 vector_entry_point="worldsim.envs.world_env:WorldVectorEnv", kwargs={"default_bundle": "required"})
    gym.register(id="worldsim/RealCrafter-v0", entry_point="worldsim.envs.real_crafter:RealCrafterEnv")
    gym.register(id="worldsim/RealMinetest-v0", entry_point="worldsim.envs.real_minetest:RealMinetestEnv")


_register()
