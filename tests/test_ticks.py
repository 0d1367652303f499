"""Ticks: the game's counters (Crafter's health, food, drink, energy) rising and falling on hidden clocks.
Collect records the counters; the world model reads each step's ticks like an action and a tick head learns to
draw them from the newest frame and the steps since each last happened; the learned env draws them."""
import json
import shutil

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import TINY_TRAIN, randomize
from test_simulator import W, _random_bundle

import worldsim  # noqa: F401
from worldsim.checkpoint import Bundle, tensors_bytes
from worldsim.cli import run_job
from worldsim.data import (WindowDataset, episode_ticks, load_episodes, load_manifest, read_episode, save_manifest,
                           tick_names, ticks_since, write_episode)
from worldsim.model import WorldDiT
from worldsim.simulator import WorldSimulator


def test_collect_records_the_counters_the_reward_pays(dataset):
    """Crafter pays 0.1 per health point gained or lost besides +1 per first achievement: the recorded health
    must explain the rest of every step's reward, which pins each row of `counters` to its frame. A new game
    starts every count at 9, and the thirst clock drops drink within the first 30 steps of a game that does not
    drink."""
    m = load_manifest(dataset)
    assert m["env"]["counters"] == ["health", "food", "drink", "energy"]
    eps = load_episodes(dataset)
    for ep in eps:
        c = ep["counters"]
        assert c.dtype == np.int16 and c.shape == (len(ep["actions"]) + 1, 4)
        assert (c[0] == 9).all()
        paid = np.zeros(len(ep["actions"]))
        seen = np.zeros(ep["events"].shape[1], bool)
        for t, ev in enumerate(ep["events"].astype(bool)):
            paid[t] = (ev & ~seen).sum()
            seen |= ev
        np.testing.assert_allclose(ep["rewards"] - paid, 0.1 * np.diff(c[:, 0]), atol=1e-6)
    assert any((np.diff(ep["counters"][:31, 2]) < 0).any() for ep in eps)  # (unless it drank, at step 21)


def test_ticks_and_the_steps_since_each():
    ep = {"counters": np.array([[9, 5], [9, 5], [8, 5], [8, 7], [8, 7], [7, 6]])}
    ticks = episode_ticks(ep)
    assert tick_names(["a", "b"]) == ["a_down", "a_up", "b_down", "b_up"]
    np.testing.assert_array_equal(ticks, [[0, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0], [1, 0, 1, 0]])
    # a tick counted just before step 0; step j after a tick at step i reads j - i
    np.testing.assert_array_equal(ticks_since(ticks)[:, 0], [1, 2, 1, 2, 3])
    np.testing.assert_array_equal(ticks_since(ticks)[:, 3], [1, 2, 3, 1, 2])


def test_windows_carry_the_ticks_into_each_frame(dataset):
    eps = load_episodes(dataset, split="train")
    ds = WindowDataset(eps, 4)
    e = next(i for i, ep in enumerate(eps) if episode_ticks(ep).any())
    s = int(np.flatnonzero(episode_ticks(eps[e]).any(1))[0])  # the first ticking step: into frame s + 1
    start = max(0, s - 1)
    item = ds[ds.index.index((e, start))]
    k = s + 1 - start  # frame k of the window follows step s
    np.testing.assert_array_equal(item["ticks"][k].numpy(), episode_ticks(eps[e])[s])
    assert item["tick_since"][k].tolist() == ticks_since(episode_ticks(eps[e]))[s].tolist()
    assert ds.tick_weights(3.0).max() == 3.0
    old = dict(eps[0])
    old.pop("counters")
    with pytest.raises(ValueError, match="some episodes have counters"):
        WindowDataset([old, eps[1]], 4)


def test_tick_input_starts_unread_and_is_required():
    m = randomize(WorldDiT({"type": "discrete", "n": 5}, latent_channels=4, patch_size=2, dim=32, depth=2, heads=2,
                           context_frames=3)).eval()
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(2, 3, 4, 8, 8, generator=g), torch.rand(2, 3, generator=g) * 100
    a, has = torch.randint(0, 5, (2, 3), generator=g), torch.ones(2, 3, dtype=torch.bool)
    mt = m.with_ticks(6)
    ticks = (torch.rand(2, 3, 6, generator=g) < 0.5).float()
    assert mt.config.ticks == 6 and mt.tick_embed.weight.abs().max() == 0
    torch.testing.assert_close(mt(x, c, a, has, ticks=ticks).out, m(x, c, a, has).out)
    randomize(mt.tick_embed, seed=1)
    assert (mt(x, c, a, has, ticks=ticks).out - mt(x, c, a, has, ticks=torch.zeros_like(ticks)).out).abs().max() > 1e-3
    with pytest.raises(ValueError, match="shows the game's ticks"):
        mt(x, c, a, has)
    with pytest.raises(ValueError, match="already shows ticks"):
        mt.with_ticks(6)
    logits = mt.tick_logits(torch.randn(2, 3, 32), a, has, torch.full((2, 3, 6), 5))
    assert logits.shape == (2, 3, 6)
    far = mt.tick_logits(torch.zeros(1, 32), a[:1, 0], has[:1, 0], torch.full((1, 6), 500))
    assert (far - mt.tick_logits(torch.zeros(1, 32), a[:1, 0], has[:1, 0], torch.full((1, 6), 5))).abs().max() > 0


def test_simulator_draws_ticks_from_the_newest_frame_and_the_steps_since(tmp_path):
    """Each step's tick probabilities are the tick head on the last committed frame's features, the step's
    action and the steps since each tick (W at a start from the game's first frames, then 1 after a tick and
    one more each step without); a tick happens where the caller's uniform is under its probability."""
    b = _random_bundle(tmp_path / "t", ticks=4)
    sim = WorldSimulator(b, 2, sampling_steps=1)
    rng = np.random.default_rng(0)
    shape = sim.latent_shape
    sim.reset([0, 1], np.repeat(b.start_frames[:1].numpy(), 2, 0), np.repeat(b.start_actions[:1].numpy(), 2, 0),
              rng.standard_normal((2, W, *shape)))
    assert sim.tick_since.tolist() == [[W] * 4] * 2
    since = sim.tick_since.clone()
    feat = sim.tick_feat.clone()
    for step in range(6):
        a = np.array([step % 17, 5])
        u = rng.random((2, 4))
        res = sim.step(a, rng.standard_normal((2, *shape)), rng.standard_normal((2, *shape)), decode=False,
                       tick_uniform=u)
        with torch.no_grad():
            want = torch.sigmoid(b.dit.tick_logits(feat, torch.as_tensor(a), torch.ones(2, dtype=torch.bool), since))
        np.testing.assert_allclose(res.tick_prob, want.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(res.ticks, u < res.tick_prob)
        since = torch.where(torch.as_tensor(res.ticks), 1, since + 1)
        assert torch.equal(sim.tick_since, since)
        torch.testing.assert_close(sim.tick_feat, res.head_input.float())  # the frame just committed
        feat = sim.tick_feat.clone()
    res = sim.step(np.array([0, 0]), rng.standard_normal((2, *shape)), rng.standard_normal((2, *shape)))
    assert res.ticks.shape == (2, 4)  # drawn from the simulator's own generator
    with pytest.raises(ValueError, match=r"tick_uniform must have shape \(2, 4\)"):
        sim.step(np.array([0, 0]), rng.standard_normal((2, *shape)), rng.standard_normal((2, *shape)),
                 tick_uniform=np.zeros((2, 3)))


def _forced(path, src, logit):
    """A copy of bundle src whose tick head gives every tick the probability sigmoid(logit)."""
    shutil.copytree(src, path)
    b = Bundle(path)
    last = b.dit.tick_head.net[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(logit)
    (path / "world_model.safetensors").write_bytes(tensors_bytes(b.dit.state_dict()))
    return path


def test_env_draws_ticks_and_the_frames_show_them(tmp_path):
    """The env names each step's ticks; a head sure of every tick draws all of them each step, one sure of none
    draws none, and the two worlds' frames differ from the same seed and actions (the frames read the ticks);
    a saved state brings the steps since each tick back with it."""
    src = tmp_path / "t"
    _random_bundle(src, ticks=4)
    obs = {}
    for name, logit in (("all", 30.0), ("none", -30.0)):
        env = gym.make("worldsim/World-v0", bundle=str(_forced(tmp_path / name, src, logit)), sampling_steps=1)
        assert env.unwrapped.tick_names == ["a_down", "a_up", "b_down", "b_up"]
        env.reset(seed=0)
        frames = []
        for _ in range(3):
            o, _, _, _, info = env.step(1)
            frames.append(o)
            assert info["ticks"] == (env.unwrapped.tick_names if name == "all" else [])
        obs[name] = np.stack(frames)
        sim = env.unwrapped.sim
        assert sim.tick_since.tolist() == ([[1] * 4] if name == "all" else [[W + 3] * 4])
        if name == "none":
            state = env.unwrapped.get_state()
            env.step(1)
            env.unwrapped.set_state(state)
            assert sim.tick_since.tolist() == [[W + 3] * 4]
        vec = gym.make_vec("worldsim/World-v0", num_envs=2, bundle=str(tmp_path / name), sampling_steps=1)
        vec.reset(seed=0)
        _, _, _, _, vinfo = vec.step(np.array([1, 2]))
        assert vinfo["ticks"].shape == (2, 4) and vinfo["ticks"].all() == (name == "all")
    assert (obs["all"] != obs["none"]).any()


def test_train_ticks_fits_a_tick_head_and_refuses_data_without_counters(dataset, tmp_path):
    run = tmp_path / "run"
    run_job("train", [f"data={dataset}", f"run={run}", *TINY_TRAIN, "autoencoder=tile7_tiny", "model.patch_size=1",
                      "dit.ticks=true", "dit.tick_weight=3", "codebook=16", "codebook_head=true"])
    meta = json.loads((run / "bundle" / "bundle.json").read_text())
    assert meta["world_model"]["ticks"] == 8 and meta["env"]["counters"] == ["health", "food", "drink", "energy"]
    assert meta["trained"]["tick_weight"] == 3.0
    assert Bundle(run / "bundle").token_head is not None  # its token head learnt from features read with ticks
    state = json.loads((run / "ckpt" / "state.json").read_text())
    assert all(np.isfinite(h["tick"]) for h in state["history"]["dit"])
    env = gym.make("worldsim/Crafter-v0", bundle=str(run / "bundle"))
    env.reset(seed=0)
    info = env.step(3)[4]
    assert set(info["ticks"]) <= set(tick_names(meta["env"]["counters"])) and info["tick_prob"].shape == (8,)
    # the same collection with its counters taken out
    bare = tmp_path / "bare"
    shutil.copytree(dataset, bare)
    m = load_manifest(bare)
    m["env"].pop("counters")
    save_manifest(bare, m)
    for e in m["episodes"]:
        ep = read_episode(bare / e["file"])
        ep.pop("counters")
        write_episode(bare / e["file"], ep.pop("frames"), ep.pop("actions"), ep.pop("rewards"), ep.pop("terminated"),
                      **ep)
    with pytest.raises(ValueError, match="record the game's counters"):
        run_job("train", [f"data={bare}", f"run={tmp_path / 'run2'}", *TINY_TRAIN, "dit.ticks=true"])
    with pytest.raises(ValueError, match="act on ticks"):
        run_job("train", [f"data={dataset}", f"run={tmp_path / 'run3'}", *TINY_TRAIN, "dit.tick_weight=2"])


def test_tick_loss_can_leave_out_the_oversampled_last_step():
    """With tick_skip_last (dit.tick_weight != 1 draws windows whose last step ticks more often) the head
    learns nothing from the window's last step, so its probabilities keep the data's rates."""
    from worldsim.diffusion import EDM, EDMConfig

    edm = EDM(EDMConfig())
    m = randomize(WorldDiT({"type": "discrete", "n": 5}, latent_channels=4, patch_size=2, dim=32, depth=1, heads=2,
                           context_frames=3)).with_ticks(2)
    randomize(m.tick_head, seed=2)
    B, T = 2, 4
    g = torch.Generator().manual_seed(0)
    out = m(torch.randn(B, T, 4, 8, 8, generator=g), torch.zeros(B, T), torch.zeros(B, T, dtype=torch.long),
            torch.ones(B, T, dtype=torch.bool), ticks=torch.zeros(B, T, 2))
    sigma = torch.zeros(B, T)
    acts, has, since = torch.zeros(B, T, dtype=torch.long), torch.ones(B, T, dtype=torch.bool), torch.ones(B, T, 2)
    ticks = torch.zeros(B, T, 2)
    other = ticks.clone()
    other[:, -1] = 1  # differs only at the last step
    with torch.no_grad():
        for skip, same in ((True, True), (False, False)):
            a = edm._tick_loss(m, out, sigma, acts, has, ticks, since, skip)
            b = edm._tick_loss(m, out, sigma, acts, has, other, since, skip)
            assert torch.equal(a, b) == same
