"""Reward classes: the rest of the reward (with events, what they do not pay; Crafter: health in tenths) as the
values it takes, one logit each. `worldsim heads reward_classes=true` finds the values and fits the logits; the
learned env draws one value per step, as the game pays whole health points."""
import json
import shutil

import gymnasium as gym
import numpy as np
import pytest
import torch
from crafter.constants import achievements as CRAFTER_EVENTS

import worldsim  # noqa: F401
from worldsim.checkpoint import Bundle, tensors_bytes
from worldsim.cli import run_job
from worldsim.data import load_episodes
from worldsim.heads import (add_event_heads, add_reward_classes, commit_features, fit_reward_classes, head_counts,
                            refit_heads, reward_value_set)


def test_value_set_keeps_common_values_and_zero():
    rest = torch.tensor([0.0] * 20 + [-0.2] * 6 + [0.1] * 5 + [-0.7] * 2 + [0.30000001] * 5)
    values, counts = reward_value_set(rest, 5)
    assert values == pytest.approx([-0.2, 0.0, 0.1, 0.3])
    assert counts == [8, 20, 5, 5]  # the two -0.7 count as the nearest kept value, -0.2
    assert reward_value_set(torch.ones(3), 5)[0] == [0.0]  # too rare: only 0


def test_refit_learns_reward_classes(bundle, dataset):
    """Made-up labels the action explains: every move_left step pays -0.2 beside no event, every other 0. The
    class logits learn it, calibrated, and head_counts reports each value's real and expected count."""
    b = Bundle(bundle)
    eps = load_episodes(dataset, split="train")
    for ep in eps:
        ep["events"] = np.zeros((len(ep["actions"]), len(CRAFTER_EVENTS)), np.uint8)
        ep["rewards"] = np.where(ep["actions"] == 1, -0.2, 0.0).astype(np.float32)
    feats, rewards, ends, events = commit_features(b, eps, batch=16, events=True)
    add_event_heads(b, list(CRAFTER_EVENTS), 1.0)
    values, counts = reward_value_set(rewards, 1)
    assert values == pytest.approx([-0.2, 0.0])
    add_reward_classes(b, values, counts)
    assert b.dit.heads_mlp[2].out_features == 2 + len(CRAFTER_EVENTS) + 2
    with pytest.raises(ValueError, match="already has reward classes"):
        add_reward_classes(b, values, counts)
    with pytest.raises(ValueError, match="before reward classes"):
        add_event_heads(b, list(CRAFTER_EVENTS), 1.0)
    refit_heads(b, feats, rewards, ends, events, steps=600, keep_termination=True)
    with torch.no_grad():
        o = b.dit.heads_mlp(b.dit.head_norm(feats))
    p_neg, left = torch.softmax(o[:, -2:], -1)[:, 0], rewards < -0.1
    prior = float(left.float().mean())  # what a read-out that learned nothing gives everywhere
    assert p_neg[left].mean() > 3 * prior and p_neg[~left].mean() < prior, (p_neg[left].mean(), p_neg[~left].mean(), prior)
    c = head_counts(b, feats, rewards, ends, events)["rest"]
    # a read-out at its optimum (a free shift per class): the probabilities sum to each value's count
    assert c["values"]["-0.2"]["real"] == int(left.sum())
    assert c["values"]["-0.2"]["expected"] == pytest.approx(int(left.sum()), abs=0.1)
    assert c["real_sum"] == pytest.approx(-0.2 * int(left.sum()), abs=1e-3)
    assert c["model_sum"] == pytest.approx(c["real_sum"], abs=0.05)
    # fit alone on the heads as they are: the other outputs do not move
    with torch.no_grad():
        before = b.dit.heads_mlp(b.dit.head_norm(feats))
    info = fit_reward_classes(b, feats, rewards)
    with torch.no_grad():
        after = b.dit.heads_mlp(b.dit.head_norm(feats))
    assert torch.equal(before[:, :-2], after[:, :-2]) and info["-0.2"]["real"] == int(left.sum())


def _class_bundle(bundle, path, logits):
    """A copy of the tiny bundle with event heads that never fire, no ends, and reward classes -0.2 and 0 with
    fixed logits: what the env pays is drawn from those two values alone."""
    shutil.copytree(bundle, path)
    b = Bundle(path)
    add_event_heads(b, list(CRAFTER_EVENTS), 1.0)
    add_reward_classes(b, [-0.2, 0.0], [1, 1])
    last = b.dit.heads_mlp[2]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(-30.0)
        last.bias[-2:] = torch.tensor(logits)
    (path / "world_model.safetensors").write_bytes(tensors_bytes(b.dit.state_dict()))
    (path / "bundle.json").write_text(json.dumps(b.meta))
    return path


def test_env_draws_reward_values(bundle, tmp_path):
    path = _class_bundle(bundle, tmp_path / "coin", [0.0, 0.0])  # -0.2 or 0, even odds
    venv = gym.make_vec("worldsim/World-v0", num_envs=8, bundle=str(path))
    venv.reset(seed=0)
    rewards, frames = [], []
    for _ in range(25):
        obs, r, term, _, info = venv.step(np.zeros(8, int))
        rewards.append(r), frames.append(obs)
        assert not term.any()
        np.testing.assert_allclose(info["reward_expected"], -0.1, atol=1e-6)
    rewards = np.array(rewards)
    assert set(np.round(rewards.ravel(), 6)) == {-0.2, 0.0}  # whole values, as the game pays, never -0.1
    assert abs(rewards.mean() + 0.1) < 0.03  # 200 draws of an even coin
    # the draws come from the end generator: the frames are the same as without reward classes
    plain = tmp_path / "plain"
    shutil.copytree(bundle, plain)
    pv = gym.make_vec("worldsim/World-v0", num_envs=8, bundle=str(plain), termination_threshold=2.0)
    pv.reset(seed=0)
    for f in frames[:5]:
        assert np.array_equal(pv.step(np.zeros(8, int))[0], f)
    # one env: the same seed gives the same rewards
    env = gym.make("worldsim/World-v0", bundle=str(path))
    runs = []
    for _ in range(2):
        env.reset(seed=3)
        runs.append([env.step(0)[1] for _ in range(10)])
    assert runs[0] == runs[1] and set(np.round(runs[0], 6)) <= {-0.2, 0.0}
    # a planner scores the expectation, not its draws
    from worldsim.agents.lookahead import LookaheadAgent

    agent = LookaheadAgent(env.action_space, seed=0, bundle=str(path), quantize="none")
    agent.reset()
    agent.observe(env.reset(seed=0)[0])
    np.testing.assert_allclose(agent.scores(), -0.1, atol=1e-6)


def test_heads_job_adds_reward_classes(bundle, dataset, tmp_path):
    flat = tmp_path / "flat"  # episodes whose reward is its events alone: no rest to draw
    shutil.copytree(dataset, flat)
    for f in (flat / "episodes").glob("*.npz"):
        z = dict(np.load(f))
        z["rewards"], z["events"] = np.zeros_like(z["rewards"]), np.zeros_like(z["events"])
        np.savez_compressed(f, **z)
    shutil.copytree(bundle, tmp_path / "a")
    with pytest.raises(ValueError, match="only the values"):
        run_job("heads", [f"bundle={tmp_path / 'a'}", f"data={flat}", "steps=5", "events=true",
                          "reward_classes=true", "reward_class_min=1"])
    data = tmp_path / "hurt"  # the flat episodes with a blow on every move_left step
    shutil.copytree(flat, data)
    for f in (data / "episodes").glob("*.npz"):
        z = dict(np.load(f))
        z["rewards"] = (-0.2 * (z["actions"] == 1)).astype(np.float32)
        np.savez_compressed(f, **z)
    shutil.copytree(bundle, tmp_path / "b")
    info = run_job("heads", [f"bundle={tmp_path / 'b'}", f"data={data}", "steps=50", "events=true",
                             "reward_classes=true", "reward_class_min=1"])
    assert info["reward_values"] == pytest.approx([-0.2, 0.0])
    with pytest.raises(ValueError, match="already has reward classes"):  # steps=0: nothing to add
        run_job("heads", [f"bundle={tmp_path / 'b'}", f"data={data}", "steps=0", "reward_classes=true"])
    shutil.copytree(bundle, tmp_path / "c")  # reward classes alone, on a bundle with event heads: those kept
    run_job("heads", [f"bundle={tmp_path / 'c'}", f"data={data}", "steps=50", "events=true"])
    ev_before = Bundle(tmp_path / "c").dit.heads_mlp[2].weight.clone()
    alone = run_job("heads", [f"bundle={tmp_path / 'c'}", f"data={data}", "steps=0", "reward_classes=true",
                              "reward_class_min=1"])
    c = Bundle(tmp_path / "c")
    assert alone["reward_classes"]["-0.2"]["real"] > 0 and torch.equal(c.dit.heads_mlp[2].weight[:-2], ev_before)
    assert "values" in info["test"][str(data)]["after"]["rest"]
    b = Bundle(tmp_path / "b")
    assert b.dit.config.reward_values == pytest.approx([-0.2, 0.0])
    # the running sum's range in the train episodes (no events paid here: the sum of each one's blows)
    low = min(-0.2 * np.cumsum(ep["actions"] == 1).max() for ep in load_episodes(data, split="train"))
    assert low < -0.5 and b.env["rest_sum_range"] == pytest.approx([low, 0.0]) == info["rest_sum_range"]
    assert c.env["rest_sum_range"] == pytest.approx([low, 0.0])  # adding the classes alone measures it too
    with pytest.raises(ValueError, match="has none"):
        run_job("heads", [f"bundle={tmp_path / 'a'}", f"data={data}", "steps=0", "reward_range=true"])
    only = run_job("heads", [f"bundle={tmp_path / 'c'}", f"data={data}", "steps=0", "reward_range=true"])
    assert only["rest_sum_range"] == pytest.approx([low, 0.0]) == Bundle(tmp_path / "c").env["rest_sum_range"]
    env = gym.make("worldsim/World-v0", bundle=str(tmp_path / "b"))
    env.reset(seed=0)
    assert round(env.step(1)[1], 6) in (-0.2, 0.0, 0.8, 1.0)  # a value drawn, an event perhaps
    res = run_job("eval", [f"bundle={tmp_path / 'b'}", f"data={data}", "windows=2", "batch_size=2", "stride=4",
                           "horizons=[1]", "following=false", "stability=false"])
    rest = res["rest_reward"]
    assert rest["real_sum"] < 0 and set(rest["values"]) == {"-0.2", "0.0"}
    assert rest["values"]["-0.2"]["real"] == rest["real_steps"]


def _with_range(path, rng):
    meta = json.loads((path / "bundle.json").read_text())
    meta["env"]["rest_sum_range"] = rng
    (path / "bundle.json").write_text(json.dumps(meta))
    return path


def test_running_sum_stays_in_range(bundle, tmp_path):
    """Health is a bounded quantity: a real Crafter episode pays at most -0.9 of it. With the bundle's
    rest_sum_range the env draws only values that keep the episode's running sum in range, from a shipped start
    (the game's beginning: sum 0) the range itself, from a caller's context its width; states keep the sum."""
    path = _with_range(_class_bundle(bundle, tmp_path / "hurt", [6.0, 0.0]), [-0.3, 0.6])  # -0.2 on 99.8 % of steps
    venv = gym.make_vec("worldsim/World-v0", num_envs=4, bundle=str(path))
    venv.reset(seed=0)
    rewards, expected = [], []
    for _ in range(12):
        _, r, term, trunc, info = venv.step(np.zeros(4, int))
        assert not (term | trunc).any()
        rewards.append(r), expected.append(info["reward_expected"])
    run = np.cumsum(rewards, 0)
    assert run.min() >= -0.3 - 1e-9 and np.allclose(run[-1], -0.2)  # one blow, then nothing fits (-0.4 < -0.3)
    np.testing.assert_allclose(expected[0], -0.2 * torch.sigmoid(torch.tensor(6.0)).item(), atol=1e-6)
    np.testing.assert_allclose(expected[-1], 0.0)  # what the env can still pay: 0
    # a caller's context: where the sum starts is unknown, so it may fall by the range's width (0.9)
    img = venv.reset(seed=1)[0][0]
    env = gym.make("worldsim/World-v0", bundle=str(path))
    env.reset(seed=2, options={"image": img})
    run = np.cumsum([env.step(0)[1] for _ in range(10)])
    assert run.min() >= -0.9 - 1e-9 and run[-1] == pytest.approx(-0.8)
    # a saved state keeps the sum: set into a fresh world it pays nothing more; a reset starts again from 0
    u = env.unwrapped
    state = u.get_state()
    state.save(tmp_path / "s.safetensors")
    other = gym.make("worldsim/World-v0", bundle=str(path)).unwrapped
    other.reset(seed=5)
    other.set_state(type(state).load(tmp_path / "s.safetensors"))
    assert [other.step(0)[1] for _ in range(4)] == [0.0] * 4
    other.reset(seed=5)
    assert other.step(0)[1] == pytest.approx(-0.2)
    venv.unwrapped.set_state(state, [3])
    assert venv.step(np.zeros(4, int))[1][3] == 0.0
    # without the range the same bundle pays a blow on nearly every step
    free = tmp_path / "free"
    shutil.copytree(path, free)
    _with_range(free, None)
    env = gym.make("worldsim/World-v0", bundle=str(free))
    env.reset(seed=0)
    assert sum(env.step(0)[1] for _ in range(10)) < -1.5
    with pytest.raises(ValueError, match="rest_sum_range"):
        gym.make("worldsim/World-v0", bundle=str(_with_range(free, [0.1, 0.5])))
