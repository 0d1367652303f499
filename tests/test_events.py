"""Event heads: Crafter pays each achievement the first time it happens in an episode. Collect records every
step's achievement counter increments; `worldsim heads events=true` teaches the world model one logit per
event; the learned env draws them, keeps the episode's counts and pays as the game does."""
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
from worldsim.data import load_episodes, load_manifest, save_manifest
from worldsim.heads import add_event_heads, commit_features, head_counts, paid_events, refit_heads, transition_events, transitions


def test_collect_records_events_that_explain_the_reward(dataset):
    """Each step's events are the achievement counters that went up; the game's +1 falls exactly on the steps
    where one went up for the first time in the episode (the rest of the reward is health, under 1 in size)."""
    m = load_manifest(dataset)
    assert m["env"]["events"] == list(CRAFTER_EVENTS) and m["env"]["event_reward"] == 1.0
    eps = load_episodes(dataset)
    for ep in eps:
        assert ep["events"].shape == (len(ep["actions"]), len(CRAFTER_EVENTS)) and ep["events"].dtype == np.uint8
    ev = transition_events(eps, transitions(eps, 1), 1)
    rewards = torch.tensor(np.concatenate([ep["rewards"] for ep in eps]))
    paid = paid_events(ev)
    assert torch.equal(paid, rewards > 0.5) and paid.any()  # (the explorer's 4 x 40 steps unlock a few)
    assert paid.sum() == sum(len(e.get("achievements", {})) for e in m["episodes"])


def _event_bundle(bundle, path, always: str | None, logit: float = 30.0):
    """A copy of the tiny bundle with event heads whose probabilities are fixed: `always` sigmoid(logit) (~1),
    every other ~0;
    its reward output gives 0 and its episodes never end, so what the env pays comes from the events alone."""
    shutil.copytree(bundle, path)
    b = Bundle(path)
    add_event_heads(b, list(CRAFTER_EVENTS), 1.0)
    last = b.dit.heads_mlp[2]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(-30.0)
        last.bias[0] = 0.0
        if always is not None:
            last.bias[2 + CRAFTER_EVENTS.index(always)] = logit
    (path / "world_model.safetensors").write_bytes(tensors_bytes(b.dit.state_dict()))
    (path / "bundle.json").write_text(json.dumps(b.meta))
    return path


def test_env_pays_an_event_once_per_episode(bundle, tmp_path):
    path = _event_bundle(bundle, tmp_path / "wake", always="wake_up")
    env = gym.make("worldsim/World-v0", bundle=str(path))
    assert env.unwrapped.event_names == list(CRAFTER_EVENTS)
    env.reset(seed=0)
    rewards, infos = [], []
    for _ in range(4):
        _, r, term, _, info = env.step(0)
        rewards.append(r), infos.append(info)
        assert not term
    assert rewards == [1.0, 0.0, 0.0, 0.0]
    assert [i["achievements"]["wake_up"] for i in infos] == [1, 2, 3, 4] and infos[0]["events"] == ["wake_up"]
    assert sum(infos[-1]["achievements"].values()) == 4
    saved = env.unwrapped.get_state()
    env.reset(seed=1)
    assert env.step(0)[1] == 1.0  # a new episode pays again
    env.unwrapped.set_state(saved)  # back to an episode that had it: not paid again
    assert env.step(0)[1] == 0.0
    saved.save(tmp_path / "s.safetensors")
    loaded = type(saved).load(tmp_path / "s.safetensors")
    assert np.array_equal(loaded.events, saved.events) and loaded.events[CRAFTER_EVENTS.index("wake_up")] == 4

    venv = gym.make_vec("worldsim/World-v0", num_envs=3, bundle=str(path))
    venv.reset(seed=0)
    first = venv.step(np.zeros(3, int))
    assert np.array_equal(first[1], [1.0, 1.0, 1.0]) and first[4]["events"][:, CRAFTER_EVENTS.index("wake_up")].all()
    assert np.array_equal(venv.step(np.zeros(3, int))[1], [0.0, 0.0, 0.0])
    fresh = env.unwrapped
    fresh.reset(seed=2)
    venv.unwrapped.set_state([fresh.get_state(), saved], indices=[0, 1])  # world 0 has had no event yet
    _, r, _, _, info = venv.step(np.zeros(3, int))
    assert np.array_equal(r, [1.0, 0.0, 0.0]) and info["achievements"][1, CRAFTER_EVENTS.index("wake_up")] == 5

    # worldsim rollout stores the events drawn, as collect stores the game's
    m = run_job("rollout", [f"bundle={path}", "episodes=2", "steps=5", "batch_size=2", "agent=random",
                            f"out={tmp_path / 'roll'}"])
    assert m["env"]["events"] == list(CRAFTER_EVENTS)
    for e, ep in zip(m["episodes"], load_episodes(tmp_path / "roll")):
        assert e["achievements"] == {"wake_up": 5} and list(ep["rewards"]) == [1.0, 0.0, 0.0, 0.0, 0.0]
        assert ep["events"].shape == (5, len(CRAFTER_EVENTS)) and ep["events"].sum() == 5

    never = gym.make("worldsim/World-v0", bundle=str(_event_bundle(bundle, tmp_path / "none", always=None)))
    never.reset(seed=0)
    assert all(never.step(a)[1] == 0.0 for a in range(5))
    with pytest.raises(ValueError, match="holds no counts"):
        never.unwrapped.set_state(type(saved)(**{**saved.__dict__, "events": None}))


def test_refit_learns_events_and_the_rest_of_the_reward(bundle, dataset, tmp_path):
    """On the tiny model's features: an event that happens on every move_left step (a made-up label the
    action explains) is learned by its logit, and the reward output learns the reward less the event reward
    the game paid (here a constant 0.1 besides), not the +1."""
    b = Bundle(bundle)
    eps = load_episodes(dataset, split="train")
    for ep in eps:
        ep["events"] = np.zeros((len(ep["actions"]), len(CRAFTER_EVENTS)), np.uint8)
        ep["events"][:, 5] = ep["actions"] == 1
        first = np.flatnonzero(ep["actions"] == 1)
        ep["rewards"] = np.full(len(ep["actions"]), 0.1, np.float32)
        ep["rewards"][first[:1]] += 1.0
    feats, rewards, ends, events = commit_features(b, eps, batch=16, events=True)
    assert events.shape == (len(feats), 2, len(CRAFTER_EVENTS)) and events[:, 0, 5].any()
    add_event_heads(b, list(CRAFTER_EVENTS), 1.0)
    with pytest.raises(ValueError, match="already has 22 event heads"):
        add_event_heads(b, list(CRAFTER_EVENTS), 1.0)
    with pytest.raises(ValueError, match="refit them on episodes with events"):
        refit_heads(b, feats, rewards, ends, steps=1)
    refit_heads(b, feats, rewards, ends, events, steps=600, keep_termination=True)
    with torch.no_grad():
        o = b.dit.heads_mlp(b.dit.head_norm(feats))
    p, on = torch.sigmoid(o[:, 2 + 5]), events[:, 0, 5].bool()
    assert p[on].mean() > 0.8 and p[~on].mean() < 0.2, (p[on].mean(), p[~on].mean())
    assert torch.sigmoid(o[:, 2:2 + 5]).max() < 0.05  # events that never happen stay unlikely
    assert (o[:, 0] - 0.1).abs().mean() < 0.05  # the rest of the reward, not the +1
    c = head_counts(b, feats, rewards, ends, events)
    assert c["events"][CRAFTER_EVENTS[5]]["happened"] == int(on.sum()) and list(c["events"]) == [CRAFTER_EVENTS[5]]
    assert c["reward_right"] == c["achievements"] == int(paid_events(events).sum())  # paid where first seen


def test_heads_job_adds_event_heads(bundle, dataset, tmp_path):
    shutil.copytree(bundle, tmp_path / "b")
    info = run_job("heads", [f"bundle={tmp_path / 'b'}", f"data={dataset}", "steps=20", "events=true"])
    assert info["events"] == len(CRAFTER_EVENTS)
    b = Bundle(tmp_path / "b")
    assert b.dit.config.events == len(CRAFTER_EVENTS) and b.env["events"] == list(CRAFTER_EVENTS)
    again = run_job("heads", [f"bundle={tmp_path / 'b'}", f"data={dataset}", "steps=5"])  # has them: refits them
    assert again["events"] == len(CRAFTER_EVENTS) and "events" in again["test"][str(dataset)]["after"]
    env = gym.make("worldsim/World-v0", bundle=str(tmp_path / "b"))
    env.reset(seed=0)
    assert set(env.step(0)[4]["achievements"]) == set(CRAFTER_EVENTS)

    shutil.copytree(dataset, tmp_path / "old")  # a collection from before events were recorded
    m = load_manifest(tmp_path / "old")
    del m["env"]["events"], m["env"]["event_reward"]
    save_manifest(tmp_path / "old", m)
    shutil.copytree(bundle, tmp_path / "c")
    with pytest.raises(ValueError, match="record none"):
        run_job("heads", [f"bundle={tmp_path / 'c'}", f"data={tmp_path / 'old'}", "steps=5", "events=true"])


def test_heads_job_refits_heads_to_read_the_frame_pair(bundle, dataset, tmp_path):
    """`worldsim heads heads_input=pair` on a frame-context bundle: its heads now read the committed frame beside
    the one before (twice the input), the bundle says so, and the env steps it with one commit copy a step."""
    shutil.copytree(bundle, tmp_path / "b")
    meta = json.loads((tmp_path / "b" / "bundle.json").read_text())
    with pytest.raises(ValueError, match="only context_attention='frame'"):  # a window model cannot
        run_job("heads", [f"bundle={tmp_path / 'b'}", f"data={dataset}", "steps=5", "heads_input=pair"])
    meta["world_model"]["context_attention"] = "frame"  # same weights, context frames attending alone
    (tmp_path / "b" / "bundle.json").write_text(json.dumps(meta, indent=1))
    with pytest.raises(ValueError, match="need a refit"):
        run_job("heads", [f"bundle={tmp_path / 'b'}", f"data={dataset}", "steps=0", "calibrate=true", "heads_input=pair"])
    info = run_job("heads", [f"bundle={tmp_path / 'b'}", f"data={dataset}", "steps=20", "heads_input=pair"])
    assert info["transitions"] > 0
    b = Bundle(tmp_path / "b")
    D = b.dit.config.dim
    assert b.dit.config.heads_input == "pair" and b.meta["world_model"]["heads_input"] == "pair"
    assert b.dit.heads_mlp[0].in_features == 2 * D and b.dit.head_norm.normalized_shape == (2 * D,)
    assert b.dit.heads_mlp[0].weight[:, D:].abs().sum() > 0  # the frame before is read after the refit
    env = gym.make("worldsim/World-v0", bundle=str(tmp_path / "b"))
    env.reset(seed=0)
    rewards = [env.step(a)[1] for a in (0, 1, 2, 3)]
    assert np.isfinite(rewards).all()
    env.close()
    # and on to heads that read the sampling pass beside the frame before's commit (one pass a step)
    info = run_job("heads", [f"bundle={tmp_path / 'b'}", f"data={dataset}", "steps=20", "heads_input=sample_pair"])
    assert info["transitions"] > 0
    b = Bundle(tmp_path / "b")
    assert b.dit.config.heads_input == "sample_pair" and b.meta["world_model"]["heads_input"] == "sample_pair"
    env = gym.make("worldsim/World-v0", bundle=str(tmp_path / "b"))
    env.reset(seed=0)
    rewards = [env.step(a)[1] for a in (0, 1, 2, 3)]
    assert np.isfinite(rewards).all() and env.unwrapped.sim.sample_heads


def test_lookahead_agent_pays_only_events_the_real_episode_lacks(bundle, tmp_path):
    """The planner's branches start from real frames; told the real game's achievements (observe_info), they
    pay only events the real episode has not had."""
    from worldsim.agents.lookahead import LookaheadAgent

    path = _event_bundle(bundle, tmp_path / "drink", always="collect_drink")
    real = gym.make("worldsim/RealCrafter-v0")
    obs, _ = real.reset(seed=0)
    agent = LookaheadAgent(real.action_space, seed=0, bundle=str(path), quantize="none")
    agent.reset()
    agent.observe(obs)
    np.testing.assert_allclose(agent.scores(), 1.0, atol=1e-6)  # every branch drinks, for the first time
    agent.observe_info({"achievements": {"collect_drink": 2, "wake_up": 0}})
    np.testing.assert_allclose(agent.scores(), 0.0, atol=1e-6)  # the real episode drank already
    agent.reset()
    agent.observe(obs)
    np.testing.assert_allclose(agent.scores(), 1.0, atol=1e-6)  # a new episode
    # an even chance: each branch scores the chance (0.5), not its one draw (0 or 1)
    coin = LookaheadAgent(real.action_space, seed=0, quantize="none",
                          bundle=str(_event_bundle(bundle, tmp_path / "coin", always="collect_drink", logit=0.0)))
    coin.reset()
    coin.observe(obs)
    np.testing.assert_allclose(coin.scores(), 0.5, atol=1e-6)
    real.close()


def test_eval_scores_event_heads_as_the_env_pays(bundle, dataset, tmp_path):
    """`worldsim eval` of a bundle with event heads: a wake_up head that is always sure pays on every held-out
    step where the real episode had no wake_up before, so that many paid steps are expected, and each event's
    probabilities are summed beside how often it happened."""
    path = _event_bundle(bundle, tmp_path / "wake", always="wake_up")
    res = run_job("eval", [f"bundle={path}", f"data={dataset}", "windows=2", "batch_size=2", "stride=4", "horizons=[1]",
                           "following=false", "stability=false"])
    eps = load_episodes(dataset, split="test")
    W = Bundle(path).dit.config.context_frames
    ev = transition_events(eps, transitions(eps, W), W)
    k = CRAFTER_EVENTS.index("wake_up")
    unseen = int((~ev[:, 1, k].bool()).sum())
    assert res["events_paid"]["expected"] == pytest.approx(unseen, abs=1e-3)
    assert res["events_paid"]["real"] == int(paid_events(ev).sum())
    assert res["event_heads"]["wake_up"]["expected"] == pytest.approx(len(ev), abs=0.01)
    assert res["reward_head"]["predicted"] == unseen
    with pytest.raises(ValueError, match="held-out episodes have no events"):
        stripped = tmp_path / "old"
        shutil.copytree(dataset, stripped)
        for f in (stripped / "episodes").glob("*.npz"):
            z = dict(np.load(f))
            del z["events"]
            np.savez_compressed(f, **z)
        run_job("eval", [f"bundle={path}", f"data={stripped}", "windows=2", "batch_size=2", "stride=4", "horizons=[1]",
                         "following=false", "stability=false"])
