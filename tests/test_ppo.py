"""PPO (agents/ppo.py): its advantages across NEXT_STEP autoresets, that it learns and resumes, the learned world."""
import json

import gymnasium as gym
import numpy as np
import pytest
import torch

from worldsim.agents.ppo import advantages, load_policy
from worldsim.cli import run_job


class ColorBandit(gym.Env):
    """Each frame is red or blue; action 0 pays on red, 1 on blue, 2 never. A wrong action ends the episode
    (terminated), 8 steps truncate it: a real env that exercises both kinds of end."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, render_mode=None):
        self.observation_space = gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)
        self.action_space = gym.spaces.Discrete(3)

    def _obs(self):
        img = np.zeros((64, 64, 3), np.uint8)
        img[..., 0 if self.colour == 0 else 2] = 255
        return img

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.colour, self.t = int(self.np_random.integers(2)), 0
        return self._obs(), {}

    def step(self, action):
        right = int(action) == self.colour
        self.colour, self.t = int(self.np_random.integers(2)), self.t + 1
        return self._obs(), float(right), not right, self.t >= 8, {}


gym.register("ColorBandit-v0", entry_point=ColorBandit)


def test_advantages_stop_at_ends_bootstrap_truncation_and_skip_reset_steps():
    # one world: step 1 ends the episode, step 2 is the autoreset step (its action ignored), step 3 a new episode
    rewards = np.array([[1.0], [2.0], [0.0], [3.0]], np.float32)
    values = np.array([[0.5], [0.6], [0.7], [0.8]], np.float32)  # values[2]: V(the ended episode's last frame)
    ended = np.array([[0.0], [1.0], [0.0], [0.0]], np.float32)
    valid = np.array([[True], [True], [False], [True]])
    kw = dict(next_value=np.array([0.9]), gamma=0.5, lam=1.0)
    trunc = advantages(rewards, values, np.zeros_like(ended), ended, valid, **kw)[:, 0]
    # step 3: 3 + 0.5 * 0.9 - 0.8; step 1 truncated: bootstraps from its last frame, 2 + 0.5 * 0.7 - 0.6, and
    # takes nothing from step 3; step 0: 1 + 0.5 * 0.6 - 0.5 + 0.5 * 1.75
    np.testing.assert_allclose(trunc, [1.675, 1.75, 0.0, 2.65], atol=1e-6)
    term = advantages(rewards, values, ended, ended, valid, **kw)[:, 0]  # step 1 terminated: no bootstrap
    np.testing.assert_allclose(term, [1.5, 1.4, 0.0, 2.65], atol=1e-6)


def test_ppo_learns_a_visual_rule_scores_it_and_resumes(tmp_path):
    out = tmp_path / "ppo"
    args = ["env=gym:ColorBandit-v0", "world=real", f"out={out}", "num_envs=4", "rollout=32", "epochs=4",
            "minibatches=4", "lr=1e-3", "eval_episodes=10", "eval_length=8", "threads=1", "save_every=100", "score_every=5", "score_episodes=4"]
    first = run_job("ppo", args + ["steps=1280"])
    assert first["trained_steps"] == 1280
    rows = [json.loads(line) for line in open(out / "log.jsonl")]
    assert len(rows) == 10 and rows[-1]["step"] == 1280 and sum(r["episodes"] for r in rows) > 0
    assert [i for i, r in enumerate(rows) if "real_return" in r] == [4, 9]  # scored in the real env every 5
    res = run_job("ppo", args + ["steps=3840"])  # resumes: 20 more updates from the saved step
    rows = [json.loads(line) for line in open(out / "log.jsonl")]
    assert [r["step"] for r in rows[10:12]] == [1408, 1536] and rows[-1]["step"] == 3840
    assert rows[-1]["real_return"] > rows[4]["real_return"]  # its learning curve in the real env rises
    policy, meta = load_policy(out)
    assert meta["step"] == 3840
    red, blue = np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64, 3), np.uint8)
    red[..., 0], blue[..., 2] = 255, 255
    with torch.no_grad():
        probs = torch.softmax(policy(torch.as_tensor(np.stack([red, blue])))[0], -1)
    assert probs[0, 0] > 0.9 and probs[1, 1] > 0.9, probs
    # scored in the real env beside a random agent in the same episodes: 8 right in a row vs about 0.5
    assert res["policy"]["return"] > 6.0 and res["random"]["return"] < 2.0
    assert json.load(open(out / "score.json"))["policy"]["return"] == res["policy"]["return"]
    with pytest.raises(ValueError, match="other settings"):
        run_job("ppo", args + ["steps=4000", "num_envs=2"])


def test_ppo_in_the_learned_world(bundle, tmp_path):
    out = tmp_path / "ppo"
    res = run_job("ppo", ["world=learned", f"out={out}", "num_envs=2", "rollout=8", "length=5", "steps=16",
                          "minibatches=2", "epochs=1", "eval_episodes=1", "eval_length=10", "threads=2"])
    row = json.loads(open(out / "log.jsonl").readline())
    # each world's first episode is truncated at step 5 and step 6 is its reset step: 2 episodes of length 5
    assert row["episodes"] == 2 and row["mean_length"] == 5 and row["step"] == 16
    assert res["policy"]["length"] == 10 and len(res["random"]["episodes"]) == 1
    assert set(res["policy"]["episodes"][0]) == {"return", "length", "died", "achievements"}
    # a bundle you trained (here the tests' tiny Crafter model): the real game is scored at its frame size
    own = run_job("ppo", ["world=learned", f"bundle={bundle}", f"out={tmp_path / 'own'}", "num_envs=2", "rollout=4",
                          "steps=8", "minibatches=2", "epochs=1", "eval_episodes=1", "eval_length=5", "score_every=1",
                          "score_episodes=1", "threads=2"])
    assert own["settings"]["bundle"] == str(bundle) and own["policy"]["length"] == 5
    with pytest.raises(ValueError, match="world must be"):
        run_job("ppo", ["world=dream", f"out={tmp_path / 'x'}"])
