

class RandomAgent:
    """Uniformly random actions from the env's action space."""

    def __init__(self, action_space, seed: int | None = None):
        self.action_space = action_space
        self.action_space.seed(seed)

    def reset(self):
        pass

    def act(self, obs):
        return self.action_space.sample()
