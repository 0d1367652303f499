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


def test_tick_display_reads_each_counters_glyph_off_real_frames(dataset):
    """Each tick type's tile is its counter's, and the glyph table redraws it as the real game did: on every real
    drink tick alone, the frame before with the tick applied has the real next frame's tile; nothing else
    changes, a step without ticks changes nothing, and a tile that is none of the glyphs is left alone."""
    from worldsim.ticks import fit_display, tile_cells

    eps = load_episodes(dataset)
    display, info = fit_display(eps, (7, 0, 0), 9, 9)
    names = tick_names(["health", "food", "drink", "energy"])
    k = names.index("drink_down")
    assert info["types"][k]["share"] == 1.0 and info["types"][k]["glyphs"] >= 1
    y, x = display.cells[k].tolist()
    assert y >= 7  # a tile of the inventory, under the 7 map rows
    assert all(display.cells[j].tolist() == [-1, -1] for j in range(8) if info["types"][j]["ticks"] == 0)
    redrawn = 0
    for ep in eps:
        ticks = episode_ticks(ep)
        for t in np.flatnonzero((ticks[:, k] > 0) & (ticks.sum(1) == 1)):
            f = torch.as_tensor(ep["frames"][t:t + 1])
            u = torch.zeros(1, 8)
            u[0, k] = 1
            out, pasted = display.apply(f, u)
            want = tile_cells(ep["frames"][t + 1:t + 2], (7, 0, 0), 9, 9)[0, y, x]
            if pasted.any():
                redrawn += 1
                np.testing.assert_array_equal(tile_cells(out.numpy(), (7, 0, 0), 9, 9)[0, y, x], want)
                assert pasted.sum() == 1 and pasted[0, y, x]
                rest = (out != f).any(-1)[0]
                rest[y * 7:(y + 1) * 7, x * 7:(x + 1) * 7] = False
                assert not rest.any()
            same, none = display.apply(f, torch.zeros(1, 8))
            assert torch.equal(same, f) and not none.any()
            blank = f.clone()
            blank[0, y * 7:(y + 1) * 7, x * 7:(x + 1) * 7] = 255
            assert torch.equal(display.apply(blank, u)[0], blank)
    assert redrawn >= 2


def test_ticks_job_gives_a_bundle_ticks_and_the_frame_shows_them(bundle, dataset, tmp_path):
    """`worldsim ticks` adds a tick head fit on the frozen model (its frames unchanged: the ticks input starts at
    zero) and the display. A drawn drink tick pastes its glyph into the drink tile of the frame shown, the
    context commits that tile's encoding and nothing else, and tile hold keeps it; the head's probabilities
    expect about the train split's ticks; bundles without counters or with a head already are refused."""
    path = tmp_path / "b"
    shutil.copytree(bundle, path)
    info = run_job("ticks", [f"bundle={path}", f"data={dataset}", "steps=300", "head_batch=64"])
    b = Bundle(path)
    assert b.dit.config.ticks == 8 and b.tick_display is not None and b.env["counters"][2] == "drink"
    assert b.dit.tick_embed.weight.abs().max() == 0
    for n, t in info["train"]["types"].items():
        assert abs(t["expected"] - t["real"]) <= 0.3 * t["real"] + 2, (n, t)
    k = tick_names(b.env["counters"]).index("drink_down")
    y, x = b.tick_display.cells[k].tolist()
    glyphs = b.tick_display.before[b.tick_display.tick == k]
    ep = next(e for e in load_episodes(dataset) if any(
        (torch.as_tensor(e["frames"][j, y * 7:(y + 1) * 7, x * 7:(x + 1) * 7]) == glyphs).flatten(1).all(1).any()
        for j in range(W - 1, len(e["frames"]))))
    s = next(j for j in range(W - 1, len(ep["frames"])) if
             (torch.as_tensor(ep["frames"][j, y * 7:(y + 1) * 7, x * 7:(x + 1) * 7]) == glyphs).flatten(1).all(1).any())
    ctx, ctx_a = ep["frames"][None, s - W + 1:s + 1], ep["actions"][None, s - W + 1:s]
    out = {}
    for name, drink in (("tick", 1.0), ("none", 0.0)):
        # tile hold over every tile: the frame shown is the context's last, so the drink tile is a real glyph
        sim = WorldSimulator(b, 1, sampling_steps=1, tile_hold=1e6, snap=False, map_memory=False)
        rng = np.random.default_rng(0)
        sim.reset([0], ctx, ctx_a, rng.standard_normal((1, W, *sim.latent_shape)))
        u = np.ones((1, 8))
        u[0, k] = 1.0 - drink  # under any probability above 0: drawn
        res = sim.step(np.array([0]), rng.standard_normal((1, *sim.latent_shape)),
                       rng.standard_normal((1, *sim.latent_shape)), tick_uniform=u)
        out[name] = (res, sim.prev.clone(), sim.shown_z.clone())
        if name == "tick":
            assert res.ticks[0].tolist() == [j == k for j in range(8)]
            tile = torch.as_tensor(res.frames[0, y * 7:(y + 1) * 7, x * 7:(x + 1) * 7])
            before = torch.as_tensor(ctx[0, -1, y * 7:(y + 1) * 7, x * 7:(x + 1) * 7])
            entry = int(torch.nonzero((glyphs == before).flatten(1).all(1))[0])
            assert torch.equal(tile, b.tick_display.after[b.tick_display.tick == k][entry])
            enc = b.codec.encode(torch.as_tensor(res.frames))
            torch.testing.assert_close(sim.prev[0, :, y, x], enc[0, :, y, x])
            torch.testing.assert_close(sim.shown_z[0, :, y, x], enc[0, :, y, x])
            nxt = sim.step(np.array([0]), rng.standard_normal((1, *sim.latent_shape)),
                           rng.standard_normal((1, *sim.latent_shape)), tick_uniform=np.ones((1, 8)))
            assert torch.equal(torch.as_tensor(nxt.frames[0, y * 7:(y + 1) * 7, x * 7:(x + 1) * 7]), tile)
    # ticks=False: nothing drawn or shown, and the frames are the bundle's before the job
    same = []
    for src, kw in ((bundle, {}), (path, {"ticks": False})):
        sim = WorldSimulator(Bundle(src), 1, sampling_steps=1, **kw)
        rng = np.random.default_rng(0)
        sim.reset([0], ctx, ctx_a, rng.standard_normal((1, W, *sim.latent_shape)))
        res = sim.step(np.array([3]), rng.standard_normal((1, *sim.latent_shape)),
                       rng.standard_normal((1, *sim.latent_shape)))
        assert res.ticks is None and sim.n_ticks == 0
        same.append(res.frames)
    np.testing.assert_array_equal(*same)
    env = gym.make("worldsim/World-v0", bundle=str(path), ticks=False)
    env.reset(seed=0)
    assert env.unwrapped.tick_names == [] and "ticks" not in env.step(1)[4]
    with pytest.raises(ValueError, match="ticks must be true, false, null"):
        WorldSimulator(b, 1, ticks="yes")
    (rt, pt, zt), (rn, pn, zn) = out["tick"], out["none"]
    differs = (pt != pn).any(1)[0]
    assert differs[y, x] and differs.sum() == 1  # the drink tile alone; the tick input itself reads nothing
    frame_diff = (rt.frames != rn.frames).any(-1)[0]
    assert frame_diff[y * 7:(y + 1) * 7, x * 7:(x + 1) * 7].any()
    frame_diff[y * 7:(y + 1) * 7, x * 7:(x + 1) * 7] = False
    assert not frame_diff.any()
    with pytest.raises(ValueError, match="already has a tick head"):
        run_job("ticks", [f"bundle={path}", f"data={dataset}", "steps=10"])
    again = run_job("ticks", [f"bundle={path}", f"data={dataset}", "steps=10", "refit=true"])  # the head fit anew
    assert again["loss"] != info["loss"] and Bundle(path).dit.config.ticks == 8
    bare = tmp_path / "bare"
    shutil.copytree(dataset, bare)
    m = load_manifest(bare)
    m["env"].pop("counters")
    save_manifest(bare, m)
    with pytest.raises(ValueError, match="must record the game's counters"):
        run_job("ticks", [f"bundle={bundle}", f"data={bare}", "steps=10"])
    # a fine-tune that does not train ticks leaves them out (here on data without counters), teacher too
    run_job("train", [f"data={bare}", f"run={tmp_path / 'ft'}", *TINY_TRAIN, f"init={path}", "dit.steps=1",
                      "dit.distill_guidance=1", "dit.still_real=true"])
    assert Bundle(tmp_path / "ft" / "bundle").dit.config.ticks == 0


def test_without_ticks_computes_what_no_tick_gives():
    m = randomize(WorldDiT({"type": "discrete", "n": 5}, latent_channels=4, patch_size=2, dim=32, depth=2, heads=2,
                           context_frames=3)).eval().with_ticks(3)
    randomize(m.tick_embed, seed=3)
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(2, 3, 4, 8, 8, generator=g), torch.rand(2, 3, generator=g) * 100
    a, has = torch.randint(0, 5, (2, 3), generator=g), torch.ones(2, 3, dtype=torch.bool)
    bare = m.without_ticks()
    assert bare.config.ticks == 0 and bare.tick_head is None
    torch.testing.assert_close(bare(x, c, a, has).out, m(x, c, a, has, ticks=torch.zeros(2, 3, 3)).out)
    assert not torch.allclose(m(x, c, a, has, ticks=torch.ones(2, 3, 3)).out, bare(x, c, a, has).out)


@pytest.fixture(scope="module")
def ticked(bundle, dataset, tmp_path_factory):
    """The tiny Crafter bundle given ticks by `worldsim ticks` (a head fit briefly, the display read off the
    collection's frames)."""
    path = tmp_path_factory.mktemp("ticked") / "b"
    shutil.copytree(bundle, path)
    run_job("ticks", [f"bundle={path}", f"data={dataset}", "steps=50", "head_batch=64"])
    return path


def _noise(sim, rng):
    return rng.standard_normal((1, *sim.latent_shape)), rng.standard_normal((1, *sim.latent_shape))


def test_named_ticks_are_the_only_ones_drawn_and_the_counters_hold_between_them(ticked, dataset):
    """ticks=[names] draws those types alone (the others never, whatever their probability); the tiles of the
    tick display keep the latents last committed there, the context's, or the glyph a drawn tick pasted, where
    the model without the hold draws them anew."""
    b = Bundle(ticked)
    names = tick_names(b.env["counters"])
    k = names.index("drink_down")
    ep = load_episodes(dataset)[0]
    sim = WorldSimulator(b, 1, sampling_steps=1, ticks=["drink_down"], snap=False, map_memory=False)
    assert sim.settings()["ticks"] == ["drink_down"] and sim.n_ticks == 8
    T = sim.window
    ctx, ctx_a = ep["frames"][None, :T], ep["actions"][None, :T - 1]
    rng = np.random.default_rng(0)
    sim.reset([0], ctx, ctx_a, rng.standard_normal((1, T, *sim.latent_shape)))
    ys, xs = sim.hold_cells
    assert len(ys) >= 3  # health, food, drink and energy ticks seen in the collection: their tiles found
    at_reset = sim.prev[0][:, ys, xs].clone()
    torch.testing.assert_close(at_reset, b.codec.encode(torch.as_tensor(ctx[:, -1]))[0][:, ys, xs])
    res = sim.step(np.array([0]), *_noise(sim, rng), tick_uniform=np.zeros((1, 8)))  # every type under its p
    assert res.ticks[0].tolist() == [j == k for j in range(8)]
    drink = int(torch.nonzero((torch.stack([ys, xs], 1) == b.tick_display.cells[k]).all(1))[0])
    others = [j for j in range(len(ys)) if j != drink]
    torch.testing.assert_close(sim.prev[0][:, ys, xs][:, others], at_reset[:, others])
    after_tick = sim.prev[0][:, ys, xs].clone()
    for step in range(3):
        res = sim.step(np.array([step + 1]), *_noise(sim, rng), tick_uniform=np.ones((1, 8)))
        assert not res.ticks.any()
        torch.testing.assert_close(sim.prev[0][:, ys, xs], after_tick)
    # without ticks there is no hold: the model draws those tiles anew
    free = WorldSimulator(b, 1, sampling_steps=1, ticks=False, snap=False, map_memory=False)
    rng = np.random.default_rng(0)
    free.reset([0], ctx, ctx_a, rng.standard_normal((1, T, *free.latent_shape)))
    free.step(np.array([0]), *_noise(free, rng))
    assert not torch.allclose(free.prev[0][:, ys, xs], at_reset)
    env = gym.make("worldsim/World-v0", bundle=str(ticked), ticks=["food_down", "food_up"])
    env.reset(seed=0)
    for _ in range(5):
        assert set(env.step(1)[4]["ticks"]) <= {"food_down", "food_up"}
    with pytest.raises(ValueError, match=r"tick types \['thirst'\] this bundle does not have"):
        WorldSimulator(b, 1, ticks=["thirst"])


def test_sleep_clock_raises_energy_every_11_steps_asleep_and_lets_none_fall(ticked, tmp_path):
    """env.sleep_clock "crafter": while the frame shows a sleeper (the game's own grey view here, kept on screen
    by tile hold), energy rises on every 11th step from the sleep's first frame and never falls, and its fall
    clock starts again at the wake; a saved row state brings the count back. Without it the head draws both."""
    from test_light import _real_sleep

    frames, _, actions, flags, _ = _real_sleep()
    first = int(np.argmax(flags))
    path = tmp_path / "s"
    shutil.copytree(ticked, path)
    meta = json.loads((path / "bundle.json").read_text())
    meta["env"]["sleep_clock"] = "crafter"
    (path / "bundle.json").write_text(json.dumps(meta))
    names = tick_names(meta["env"]["counters"])
    down, up = names.index("energy_down"), names.index("energy_up")
    probs = {}
    for name, src in (("clock", path), ("head", ticked)):
        b = Bundle(src)
        sim = WorldSimulator(b, 1, sampling_steps=1, tile_hold=1e6, snap=False, map_memory=False)
        T = sim.window
        ctx, ctx_a = frames[None, first - T + 1:first + 1], actions[None, first - T + 1:first]
        rng = np.random.default_rng(0)
        sim.reset([0], ctx, ctx_a, rng.standard_normal((1, T, *sim.latent_shape)))
        p = []
        for step in range(1, 24):
            res = sim.step(np.array([0]), *_noise(sim, rng), tick_uniform=rng.random((1, 8)))
            p.append(res.tick_prob[0, [down, up]])
            if name == "clock":
                assert res.ticks[0, up] == (step in (11, 22)) and not res.ticks[0, down]
                assert sim.asleep_for.tolist() == [step + 1] and sim.tick_since[0, down] == 1
                if step == 5:
                    state, clock_sim = sim.row_state(0), sim
        probs[name] = np.array(p)
    np.testing.assert_array_equal(probs["clock"][:, 1], [float(s in (11, 22)) for s in range(1, 24)])
    assert (probs["clock"][:, 0] == 0).all() and (probs["head"] > 0).all() and (probs["head"] < 1).all()
    clock_sim.load_rows([0], [state])
    assert clock_sim.asleep_for.tolist() == [6]
    with pytest.raises(ValueError, match="sleep_clock must be 'crafter'"):
        meta["env"]["sleep_clock"] = "minetest"
        (path / "bundle.json").write_text(json.dumps(meta))
        WorldSimulator(Bundle(path), 1)


def test_a_counters_rise_shows_its_falls_glyphs_swapped(ticked, dataset):
    """The display read off real frames knows rises only from counts the collection saw rise (this one none:
    no rise's tile either); with_inverses gives each counter's rise its fall's tile and the reversed entries of
    its fall for glyphs it had none for, so a rise drawn on such a count pastes the digit above. Entries it had
    stay as they were."""
    from worldsim.ticks import TickDisplay

    b = Bundle(ticked)
    d = b.tick_display
    names = tick_names(b.env["counters"])
    pairs = [(names.index(f"{c}_down"), names.index(f"{c}_up")) for c in b.env["counters"]]
    full = d.with_inverses(pairs)
    assert isinstance(full, TickDisplay) and torch.equal(full.before[:len(d.tick)], d.before)
    added = 0
    for down, up in pairs:
        if d.cells[down, 0] < 0:
            continue
        for e in torch.nonzero(d.tick == down).flatten().tolist():  # the fall n+1 -> n, as a frame shows it
            p, oy, ox = d.layout
            y, x = full.cells[up].tolist()  # the fall's tile where the collection saw no rise
            frame = torch.zeros(1, *b.env["frame_shape"], dtype=torch.uint8)
            frame[0, oy + y * p:oy + (y + 1) * p, ox + x * p:ox + (x + 1) * p] = d.after[e]
            rise = torch.zeros(1, len(names))
            rise[0, up] = 1
            out, pasted = full.apply(frame, rise)
            assert pasted[0, y, x], (names[up], e)
            if not (d.before[d.tick == up].float() - d.after[e].float()).abs().mean((1, 2, 3)).le(d.tolerance).any():
                added += 1  # a count the table saw no rise from: the fall's glyphs swapped
                assert torch.equal(out[0, oy + y * p:oy + (y + 1) * p, ox + x * p:ox + (x + 1) * p], d.before[e])
                assert not d.apply(frame, rise)[1].any()
    assert added > 0
    assert (full.cells[[u for _, u in pairs]] == full.cells[[dn for dn, _ in pairs]]).all()
