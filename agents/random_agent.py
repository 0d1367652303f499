"""A uniformly random agent."""
import copy


class RandomAgent:
    """Uniformly random actions from the env's action space."""

    def __init__(self, action_space, seed: int | None = None):
        # its own copy: agents built on one env's space (one per world of a vector env) would otherwise reseed
        # and draw from one shared generator, so each agent's actions would depend on the others
        self.action_space = copy.deepcopy(action_space)
        self.action_space.seed(seed)

    def reset(self):
        pass

    def act(self, obs):
        return self.action_space.sample()
