"""Inference: the KV-cached rollout equals recomputing the whole history, and memory stays flat."""
import json
import warnings

import numpy as np
import pytest
import torch
from conftest import randomize

from worldsim.autoencoder import make_autoencoder
from worldsim.checkpoint import Bundle, bundle_files, write_dir_atomic
from worldsim.codebook import (TokenHead, fit_codebook, frame_tokens, nearest, sample_snap, seed_snap, snap,
                               with_codebook)
from worldsim.data import index_actions
from worldsim.diffusion import EDM, EDMConfig
from worldsim.model import WorldDiT, actions_to_tensor
from worldsim.simulator import WorldSimulator

W = 3


CAM = {"type": "dict", "keys": {"camera": {"type": "box", "dim": 2, "scale": 180.0}, "forward": {"type": "discrete", "n": 2}}}


def _random_bundle(path, residual=False, ae="tiny", warp=False, warp_kind="shift", clock=None, ticks=0,
                   context_attention="window"):
    """A bundle with random (untrained) weights, written to disk and loaded back like the shipped one.
    warp: camera + forward actions, and a warp input that shifts (or turns: warp_kind) the previous frame by
    the camera. clock: a day's length, for a model that reads the game's clock. ticks: tick types (a model
    that draws and shows them; the env names them after two counters). context_attention: WorldDiT's."""
    torch.manual_seed(0)
    ae = make_autoencoder(ae)
    spec = CAM if warp else {"type": "discrete", "n": 17}
    dit = WorldDiT(spec, latent_channels=4, dim=32, depth=2, heads=2, context_frames=W, clock_period=clock,
                   context_attention=context_attention)
    dit = dit.with_ticks(ticks) if ticks else dit
    dit = randomize(dit.with_warp("camera", [[0.03, 0.0], [0.0, -0.05]], kind=warp_kind) if warp else dit, std=0.15)
    frames = torch.randint(0, 256, (2, W, 32, 32, 3), dtype=torch.uint8)
    env = {"name": "test", "frame_shape": [32, 32, 3], "action_space": spec,
           "action_meanings": [str(i) for i in range(17)], **({"counters": ["a", "b"]} if ticks else {})}
    acts = ({"camera": torch.zeros(2, W - 1, 2), "forward": torch.zeros(2, W - 1, dtype=torch.long)} if warp
            else torch.zeros(2, W - 1, dtype=torch.long))
    write_dir_atomic(path, bundle_files(ae, dit, EDMConfig(context_noise=0.1, residual=residual), (0.0, 1.0), env,
                                        frames, acts))
    assert json.loads((path / "bundle.json").read_text())["world_model"]["context_frames"] == W
    return Bundle(path)


@pytest.fixture(scope="module")
def random_bundle(tmp_path_factory):
    return _random_bundle(tmp_path_factory.mktemp("bundle") / "b")


@pytest.fixture(scope="module")
def frame_bundle(tmp_path_factory):  # context frames attend to themselves alone
    return _random_bundle(tmp_path_factory.mktemp("bundle") / "f", context_attention="frame")


@pytest.fixture(scope="module")
def sample_pair_bundle(tmp_path_factory):  # frame context, ticks, heads reading the sampling pass beside the commit
    b = _random_bundle(tmp_path_factory.mktemp("bundle") / "s", context_attention="frame", ticks=4)
    b.dit = randomize(b.dit.with_heads_input("sample_pair"), std=0.15)
    return b


@pytest.fixture(scope="module")
def residual_bundle(tmp_path_factory):
    b = _random_bundle(tmp_path_factory.mktemp("bundle") / "r", residual=True)
    assert b.edm.cfg.residual
    return b


@pytest.fixture(scope="module")
def clock_bundle(tmp_path_factory):
    return _random_bundle(tmp_path_factory.mktemp("bundle") / "c", clock=30)


@pytest.fixture(scope="module")
def tick_bundle(tmp_path_factory):
    return _random_bundle(tmp_path_factory.mktemp("bundle") / "t", ticks=4)


@pytest.fixture(scope="module")
def patch_bundle(tmp_path_factory):  # one latent per 8x8 tile: 32x32 frames, a 4x4 grid
    return _random_bundle(tmp_path_factory.mktemp("bundle") / "p", ae="patch8_tiny")


def full_recompute(b: Bundle, hist, acts, has, noise, steps, prev=None, keep=None, clock=None, ticks=None):
    """Denoise the next frame by running the model over the whole history with the sliding-window mask.
    keep: a dict that gets the last pass's features of the new frame. clock: (1, T) every frame's game step.
    ticks: (1, T, K) the ticks into every frame."""
    edm: EDM = b.edm
    T = hist.shape[1] + 1
    a = actions_to_tensor(b.dit.config.action_spec, acts)
    ctx_sig = torch.full((1, T - 1), edm.cfg.context_noise)

    def denoise(x, sigma):
        seq = torch.cat([hist, x[:, None]], dim=1)
        sig = torch.cat([ctx_sig, sigma[:, None]], dim=1)
        inp, c_noise = edm.model_input(seq, sig)
        out = b.dit(inp, c_noise, a, has, clock=clock, ticks=ticks)
        if keep is not None:
            keep["features"] = out.features[:, -1]
            if T > 1:  # the frame before's, as context: with context_attention="frame" its commit pass's
                keep["before"] = out.features[:, -2]
        return edm.denoised(x, sigma, out.out[:, -1], prev)

    return edm.sample(denoise, noise, steps, prev)


@pytest.mark.parametrize("kind", ["plain", "residual", "one_context_frame", "clock", "ticks", "frame", "sample_pair",
                                  "sample_pair_one_step", "sample_pair_one_context_frame"])
def test_cached_rollout_equals_full_recompute(kind, random_bundle, residual_bundle, clock_bundle, tick_bundle,
                                              frame_bundle, sample_pair_bundle):
    # one_context_frame: the window fills up over the first steps (cache slots masked until written)
    # clock: a model that reads the game's clock, started at game step 57 (its day is 30 steps)
    # ticks: a model that draws ticks each step (here about half of them) and shows them in every pass
    # frame: context frames attend to themselves alone (asked for a rebuild every step, it runs none: same keys)
    # sample_pair: heads_input="sample_pair" (and ticks): each step commits the frame before in its first sampling
    # pass; its heads read the last sampling pass beside that commit, and its tick head the step before's
    # sampling pass (after a reset, the last context frame's); one_step: the one pass is the commit and the sample
    sp = kind.startswith("sample_pair")
    b = {"residual": residual_bundle, "clock": clock_bundle, "ticks": tick_bundle, "frame": frame_bundle}.get(
        kind, sample_pair_bundle if sp else random_bundle)
    T = 1 if kind.endswith("one_context_frame") else W
    steps = 1 if kind.endswith("one_step") else 3
    prev = None
    sim = WorldSimulator(b, 1, sampling_steps=steps, **({"fresh_window": 1} if kind == "frame" else {}))
    assert sim.sample_heads == sp
    assert sim.fresh_window == 0
    rng = np.random.default_rng(0)
    shape = sim.latent_shape
    ctx_frames = b.start_frames[:1, :T].numpy()
    ctx_actions = b.start_actions[:1, :T - 1].numpy()
    ctx_noise = rng.standard_normal((1, T, *shape))
    clock = torch.arange(57 - T + 1, 58)[None] if kind == "clock" else None
    z0 = sim.reset([0], ctx_frames, ctx_actions, ctx_noise, None if clock is None else [57])
    if b.edm.cfg.residual:  # the change is from the newest clean latent, not its context-noised copy
        prev = z0[:, -1]
    hist = z0 + sim.context_noise * torch.as_tensor(ctx_noise, dtype=torch.float32)  # committed context
    acts = np.concatenate([[0], ctx_actions[0]])[None]
    has = torch.ones(1, T, dtype=torch.bool)
    has[0, 0] = False
    ticks = torch.zeros(1, T, 4) if kind == "ticks" or sp else None  # none known in the context
    drawn = []
    D = b.dit.config.dim
    if sp:  # the tick head's first input: the last context frame sampled from the frames before it, its context
        keep = {}  # noise as the sampler's draw
        full_recompute(b, hist[:, :-1], acts, has, torch.as_tensor(ctx_noise[:, -1], dtype=torch.float32), steps,
                       None, keep, ticks=ticks)
        torch.testing.assert_close(sim.tick_feat, keep["features"].mean(1), rtol=1e-4, atol=1e-4)
    for step in range(2 * W + 2):  # past the window, so the ring buffer wraps and old frames drop out
        a = np.array([step % 17])
        noise, cn = rng.standard_normal((1, *shape)), rng.standard_normal((1, *shape))
        if sp:  # what the tick draw reads
            with torch.no_grad():
                expect_prob = torch.sigmoid(b.dit.tick_logits(sim.tick_feat.clone(), torch.as_tensor(a),
                                                              torch.ones(1, dtype=torch.bool), sim.tick_since.clone()))
        res = sim.step(a, noise, cn, decode=False, tick_uniform=rng.random((1, 4)) if ticks is not None else None)
        if ticks is not None:
            ticks = torch.cat([ticks, torch.as_tensor(res.ticks, dtype=torch.float32)[:, None]], dim=1)
            drawn.append(res.ticks[0])
        acts = np.concatenate([acts, a[None]], axis=1)
        has = torch.cat([has, torch.ones(1, 1, dtype=torch.bool)], dim=1)
        if clock is not None:
            clock = torch.cat([clock, clock[:, -1:] + 1], dim=1)
        keep = {}
        ref = full_recompute(b, hist, acts, has, torch.as_tensor(noise, dtype=torch.float32), steps, prev, keep,
                             clock=clock, ticks=ticks)
        torch.testing.assert_close(res.latents, ref, rtol=1e-4, atol=1e-4)
        if sp:  # heads: the last sampling pass beside the frame before as context (attending to itself alone)
            sampled = keep["features"].mean(1)
            torch.testing.assert_close(res.head_input, torch.cat([sampled, keep["before"].mean(1)], -1), rtol=1e-4,
                                       atol=1e-4)
            torch.testing.assert_close(res.features, sampled, rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(res.tick_prob, expect_prob.numpy(), rtol=1e-4, atol=1e-5)
            with torch.no_grad():
                o = b.dit.heads_mlp(b.dit.head_norm(res.head_input))
            np.testing.assert_allclose(res.reward, o[:, 0].numpy() * sim.reward_scale, rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(res.terminated_prob, torch.sigmoid(o[:, 1]).numpy(), rtol=1e-4, atol=1e-5)
        if prev is not None:
            prev = ref
        hist = torch.cat([hist, (res.latents + sim.context_noise * torch.as_tensor(cn, dtype=torch.float32))[:, None]], 1)
    assert sim.time > W  # the clock really went past the window
    if clock is not None:
        assert sim.clock[0] == clock[0, -1] == 57 + 2 * W + 2
    if ticks is not None:  # some drawn and some not, so the frames really read both
        assert 0 < np.mean(drawn) < 1


@pytest.mark.parametrize("kind", ["plain", "residual", "one_context_frame", "clock", "ticks", "every_3"])
def test_fresh_window_rollout_equals_a_recompute_over_the_window_alone(kind, random_bundle, residual_bundle,
                                                                       clock_bundle, tick_bundle):
    """fresh_window=1: every step samples from the last W committed frames alone, read as a reset reads its
    context (the oldest one's action unread), however long the rollout; the default cache, whose keys were made
    attending to the frames before them, gives other frames once the history is longer than the window.
    fresh_window=3: so does every third step (those right after a rebuild), and the steps between do not."""
    b = {"residual": residual_bundle, "clock": clock_bundle, "ticks": tick_bundle}.get(kind, random_bundle)
    T = 1 if kind == "one_context_frame" else W
    k = 3 if kind == "every_3" else 1
    sim = WorldSimulator(b, 1, sampling_steps=2, fresh_window=True if k == 1 else k)
    old = WorldSimulator(b, 1, sampling_steps=2)  # the default: the cache keeps each frame's keys as made
    assert sim.settings()["fresh_window"] == k and old.settings()["fresh_window"] == 0
    rng = np.random.default_rng(1)
    shape = sim.latent_shape
    ctx_frames, ctx_actions = b.start_frames[:1, :T].numpy(), b.start_actions[:1, :T - 1].numpy()
    ctx_noise = rng.standard_normal((1, T, *shape))
    clock = torch.arange(57 - T + 1, 58)[None] if kind == "clock" else None
    z0 = sim.reset([0], ctx_frames, ctx_actions, ctx_noise, None if clock is None else [57])
    old.reset([0], ctx_frames, ctx_actions, ctx_noise, None if clock is None else [57])
    prev = z0[:, -1] if b.edm.cfg.residual else None
    hist = z0 + sim.context_noise * torch.as_tensor(ctx_noise, dtype=torch.float32)
    acts = np.concatenate([[0], ctx_actions[0]])[None]
    ticks = torch.zeros(1, T, 4) if kind == "ticks" else None
    apart = 0.0
    for step in range(2 * W + 2):
        a = np.array([(5 * step + 1) % 17])
        noise, cn = rng.standard_normal((1, *shape)), rng.standard_normal((1, *shape))
        u = rng.random((1, 4)) if ticks is not None else None
        res = sim.step(a, noise, cn, decode=False, tick_uniform=u)
        other = old.step(a, noise, cn, decode=False, tick_uniform=u)
        if ticks is not None:
            ticks = torch.cat([ticks, torch.as_tensor(res.ticks, dtype=torch.float32)[:, None]], dim=1)
        acts = np.concatenate([acts, a[None]], axis=1)
        if clock is not None:
            clock = torch.cat([clock, clock[:, -1:] + 1], dim=1)
        n = min(hist.shape[1], W)  # the window: the last n committed frames, then the new one
        has = torch.ones(1, n + 1, dtype=torch.bool)
        has[0, 0] = False
        ref = full_recompute(b, hist[:, -n:], acts[:, -(n + 1):], has, torch.as_tensor(noise, dtype=torch.float32),
                             2, prev, clock=None if clock is None else clock[:, -(n + 1):],
                             ticks=None if ticks is None else ticks[:, -(n + 1):])
        if step % k == 0:  # right after a rebuild (or the reset)
            torch.testing.assert_close(res.latents, ref, rtol=1e-4, atol=1e-4)
            if step >= W + 1:  # past the window the default's keys hold older frames: its frames differ
                apart = max(apart, float((other.latents - res.latents).abs().max()))
        elif step >= W + 1:  # between rebuilds the keys hold the frames since the last one
            apart = max(apart, float((ref - res.latents).abs().max()))
        if prev is not None:
            prev = res.latents
        hist = torch.cat([hist, (res.latents + sim.context_noise * torch.as_tensor(cn, dtype=torch.float32))[:, None]], 1)
    assert apart > 1e-3


def test_pair_heads_read_each_committed_frame_beside_the_one_before(tmp_path):
    """heads_input="pair": each step's head input is the committed frame's mean token, attending to itself alone,
    beside the frame before's (after a reset, the context's newest), and the rewards and ends are the heads on
    it; a row saved and loaded goes on with the same frame before."""
    b = _random_bundle(tmp_path / "p", context_attention="frame")
    b.dit = randomize(b.dit.with_heads_input("pair"), std=0.15)
    sim = WorldSimulator(b, 2, sampling_steps=1)
    assert "head_prev" in sim.ROW
    rng = np.random.default_rng(4)
    shape, D = sim.latent_shape, b.dit.config.dim
    ctx_noise = rng.standard_normal((2, W, *shape))
    z0 = sim.reset([0, 1], b.start_frames[:2, :W].numpy(), b.start_actions[:2, :W - 1].numpy(), ctx_noise)

    def alone(zc, a, t):  # the committed latents (B, C, h, w) as one context frame: its mean last-block token
        inp, c_noise = b.edm.model_input(zc[:, None], torch.full((zc.shape[0], 1), sim.context_noise))
        with torch.no_grad():
            return b.dit(inp, c_noise, torch.as_tensor(a)[:, None], torch.ones(len(zc), 1, dtype=torch.bool),
                         times=torch.tensor([t]), context_only=True).features[:, 0].mean(1)

    before = alone(z0[:, -1] + sim.context_noise * torch.as_tensor(ctx_noise[:, -1], dtype=torch.float32),
                   b.start_actions[:2, W - 2].numpy(), W - 1)
    saved = None
    for step in range(W + 2):
        a = np.array([(3 * step + 1) % 17, (5 * step + 2) % 17])
        noise, cn = rng.standard_normal((2, *shape)), rng.standard_normal((2, *shape))
        if step == 2:
            saved = (sim.row_state(1), a, noise, cn)
        res = sim.step(a, noise, cn, decode=False)
        now = alone(res.latents + sim.context_noise * torch.as_tensor(cn, dtype=torch.float32), a, sim.time)
        assert res.head_input.shape == (2, 2 * D) and res.features.shape == (2, D)
        torch.testing.assert_close(res.features, now, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(res.head_input, torch.cat([now, before], -1), rtol=1e-4, atol=1e-4)
        with torch.no_grad():
            o = b.dit.heads_mlp(b.dit.head_norm(res.head_input))
        np.testing.assert_allclose(res.reward, o[:, 0].numpy() * sim.reward_scale, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(res.terminated_prob, torch.sigmoid(o[:, 1]).numpy(), rtol=1e-4, atol=1e-5)
        if step == 2:
            expected = res.head_input[1].clone()
        before = res.features
    sim.load_rows([1], [saved[0]])  # back two steps: the frame before comes back with the row
    again = sim.step(saved[1], saved[2], saved[3], decode=False)
    torch.testing.assert_close(again.head_input[1], expected, rtol=1e-4, atol=1e-4)


def test_sample_pair_steps_as_pair_through_resets_and_saved_rows(tmp_path):
    """heads_input="sample_pair" changes what the heads read and when a frame is committed (in the next step's
    sampling pass), not the frames: the same weights step the same latents as with "pair", through a reset of one
    row mid-rollout (its last context frame left pending) and a row loaded from a state saved steps before (its
    pending frame with it); the heads' second half is the frame before's commit features, which "pair" keeps."""
    import copy

    b = _random_bundle(tmp_path / "f", context_attention="frame")
    pair = copy.copy(b)
    pair.dit = randomize(b.dit.with_heads_input("pair"), std=0.15)
    sp = copy.copy(b)
    sp.dit = pair.dit.with_heads_input("sample_pair")
    sims = [WorldSimulator(x, 2, sampling_steps=1) for x in (pair, sp)]
    sims.append(WorldSimulator(sp, 2, sampling_steps=1))
    sims[2].merge = False  # the pending commit as a pass of its own: the same numbers as in the sampling pass
    assert not sims[0].sample_heads and sims[1].sample_heads and "pend_a" in sims[1].ROW
    rng = np.random.default_rng(6)
    shape, D = sims[0].latent_shape, b.dit.config.dim
    ctx = rng.standard_normal((2, W, *shape))
    for s in sims:
        s.reset([0, 1], b.start_frames[:2, :W].numpy(), b.start_actions[:2, :W - 1].numpy(), ctx)
    saved = None
    for step in range(8):
        a = np.array([(3 * step + 1) % 17, (7 * step + 5) % 17])
        noise, cn = rng.standard_normal((2, *shape)), rng.standard_normal((2, *shape))
        if step == 3:  # row 1 starts again from the other start state
            again = rng.standard_normal((1, W, *shape))
            for s in sims:
                s.reset([1], b.start_frames[:1, :W].numpy(), b.start_actions[:1, :W - 1].numpy(), again)
        if step == 2:
            saved = [s.row_state(0) for s in sims]
        if step == 6:  # row 1 goes on from row 0's state of step 2, four steps later on the batch's clock
            for s, st in zip(sims, saved):
                s.load_rows([1], [st])
        before = sims[0].head_prev.clone()
        res = [s.step(a, noise, cn, decode=False) for s in sims]
        torch.testing.assert_close(res[1].latents, res[0].latents, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(res[2].latents, res[1].latents, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(res[2].head_input, res[1].head_input, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(res[1].head_input[:, D:], before, rtol=1e-4, atol=1e-4)
        assert res[1].head_input.shape == (2, 2 * D)
        with torch.no_grad():
            o = sp.dit.heads_mlp(sp.dit.head_norm(res[1].head_input))
        np.testing.assert_allclose(res[1].reward, o[:, 0].numpy() * sims[1].reward_scale, rtol=1e-4, atol=1e-5)


def test_sample_pair_needs_frame_context_and_no_warp():
    with pytest.raises(ValueError, match="context_attention='frame'"):
        WorldDiT({"type": "discrete", "n": 3}, dim=32, depth=1, heads=2, heads_input="sample_pair")
    with pytest.raises(ValueError, match="warp input"):
        WorldDiT(CAM, dim=32, depth=1, heads=2, context_attention="frame", heads_input="sample_pair",
                 warp_action="camera", warp_matrix=[[0.03, 0.0], [0.0, -0.05]])
    m = WorldDiT({"type": "discrete", "n": 3}, dim=32, depth=1, heads=2, context_attention="frame",
                 heads_input="sample_pair")
    cache, x = m.new_cache(1, 16), torch.zeros(1, 4, 4, 4)
    with pytest.raises(ValueError, match="pair_heads"):  # one pass does not give its heads
        m.forward_cached(x, torch.zeros(1), torch.zeros(1, dtype=torch.long), torch.ones(1, dtype=torch.bool), cache,
                         0, commit=True, outputs="heads")


def test_fresh_window_every_step_reads_the_heads_in_the_rebuild(random_bundle):
    """fresh_window=1 leaves the commit pass out (the rebuild writes the new frame's keys again): each step's
    heads and head input are the model's over the window's W committed frames alone, read at the newest, as a
    reset reads its context (the oldest frame's action unread); rows reset at different times included."""
    b = random_bundle
    sim = WorldSimulator(b, 2, sampling_steps=1, fresh_window=1)
    rng = np.random.default_rng(3)
    shape = sim.latent_shape
    sim.reset([0, 1], b.start_frames[:2, :W].numpy(), b.start_actions[:2, :W - 1].numpy(),
              rng.standard_normal((2, W, *shape)))
    acts = np.concatenate([np.zeros((2, 1), np.int64), b.start_actions[:2, :W - 1].numpy()], 1)
    seen = []
    for step in range(W + 3):
        if step == 2:  # row 1 starts again from one frame: its window fills up over the next steps
            sim.reset([1], b.start_frames[1:2, :1].numpy(), np.zeros((1, 0), np.int64), rng.standard_normal((1, 1, *shape)))
            acts[1] = 0
        a = np.array([(3 * step + 1) % 17, (5 * step + 2) % 17])
        res = sim.step(a, rng.standard_normal((2, *shape)), rng.standard_normal((2, *shape)), decode=False)
        acts = np.concatenate([acts[:, 1:], a[:, None]], 1)
        for row in range(2):
            n = int(sim.win_n[row])
            z = sim.win_z[row:row + 1, W - n:]
            has = torch.ones(1, n, dtype=torch.bool)
            has[0, 0] = False
            inp, c_noise = b.edm.model_input(z, torch.full((1, n), sim.context_noise))
            with torch.no_grad():
                ref = b.dit(inp, c_noise, actions_to_tensor(b.dit.config.action_spec, acts[row:row + 1, W - n:]),
                            has, times=torch.arange(sim.time - n + 1, sim.time + 1))
            torch.testing.assert_close(res.head_input[row], ref.features[0, -1].mean(0), rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(res.reward[row], float(ref.reward[0, -1]) * sim.reward_scale, rtol=1e-4, atol=1e-6)
            np.testing.assert_allclose(res.terminated_prob[row], float(torch.sigmoid(ref.term_logit[0, -1])),
                                       rtol=1e-4, atol=1e-6)
        seen.append(res.head_input)
    assert float((seen[0] - seen[-1]).abs().max()) > 1e-3  # the heads read the frames, not a constant


def test_fresh_window_state_and_dict_actions_continue_the_same(tmp_path):
    """A camera model's (Dict actions) fresh-window rollout saved mid-way and loaded into another simulator
    makes the same frames as the one that went on: the window's latents and actions travel with the state."""
    from worldsim.simulator import _pack_actions, _unpack_actions
    b = _random_bundle(tmp_path / "w", warp=True)
    spec = b.dit.config.action_spec
    a = actions_to_tensor(spec, {"camera": np.array([[[1.5, -2.0], [0.0, 3.0]]], np.float32),
                                 "forward": np.array([[1, 0]])})
    back = _unpack_actions(spec, _pack_actions(spec, a))
    assert back["forward"].dtype == torch.long and torch.equal(back["forward"], a["forward"])
    torch.testing.assert_close(back["camera"], a["camera"])
    sims = [WorldSimulator(b, 1, sampling_steps=1, fresh_window=True) for _ in range(2)]
    rng = np.random.default_rng(2)
    shape = sims[0].latent_shape
    acts = {"camera": np.zeros((1, W - 1, 2), np.float32), "forward": np.zeros((1, W - 1), np.int64)}
    sims[0].reset([0], b.start_frames[:1].numpy(), acts, rng.standard_normal((1, W, *shape)))

    def act(i):
        return {"camera": np.array([[10.0 * (i % 3) - 10, 5.0]], np.float32), "forward": np.array([i % 2])}

    for i in range(W + 1):
        sims[0].step(act(i), rng.standard_normal((1, *shape)), rng.standard_normal((1, *shape)), decode=False)
    sims[1].load_rows([0], [sims[0].row_state(0)])
    for i in range(W + 2):
        noise, cn = rng.standard_normal((1, *shape)), rng.standard_normal((1, *shape))
        r0, r1 = (s.step(act(i + 7), noise, cn, decode=False) for s in sims)
        torch.testing.assert_close(r0.latents, r1.latents, rtol=0, atol=0)
    for bad in ("yes", -1, 1.5):
        with pytest.raises(ValueError, match="fresh_window must be"):
            WorldSimulator(b, 1, fresh_window=bad)


def test_the_game_clock_sets_the_time_of_day(clock_bundle):
    """Rows started from the same context, noise and actions make the same frames a whole day (30 steps) apart
    on the game's clock and other frames at another time of day; each row keeps its own clock, the default is
    a context that begins with the game, and a clock before the context's first frame is refused."""
    b = clock_bundle
    sim = WorldSimulator(b, 3, sampling_steps=1)
    rng = np.random.default_rng(0)
    shape = sim.latent_shape
    ctx = np.repeat(b.start_frames[:1].numpy(), 3, 0)
    acts = np.repeat(b.start_actions[:1].numpy(), 3, 0)
    noise = np.repeat(rng.standard_normal((1, W, *shape)), 3, 0)
    sim.reset([0, 1, 2], ctx, acts, noise, [10, 40, 25])
    for _ in range(4):
        step = np.repeat(rng.standard_normal((1, *shape)), 3, 0)
        res = sim.step(np.array([3, 3, 3]), step, step, decode=False)
        torch.testing.assert_close(res.latents[0], res.latents[1], rtol=1e-5, atol=1e-5)
        assert (res.latents[0] - res.latents[2]).abs().max() > 1e-3
    assert sim.clock.tolist() == [14, 44, 29]
    sim.reset([1], ctx[:1], acts[:1], noise[:1])
    assert sim.clock.tolist() == [14, W - 1, 29]
    with pytest.raises(ValueError, match="clock must give each"):
        sim.reset([0], ctx[:1], acts[:1], noise[:1], [W - 2])


def _rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def test_memory_is_constant_over_a_long_rollout(random_bundle):
    sim = WorldSimulator(random_bundle, 2, sampling_steps=1)
    rng = np.random.default_rng(0)
    shape = (2, *sim.latent_shape)
    sim.reset([0, 1], random_bundle.start_frames.numpy(), random_bundle.start_actions.numpy(),
              rng.standard_normal((2, W, *sim.latent_shape)))
    k_ptr, k_bytes = sim.cache.k.data_ptr(), sim.cache.nbytes()
    noise = rng.standard_normal(shape)

    def run(n):
        for _ in range(n):
            sim.step(np.array([1, 2]), noise, noise)

    run(50)  # warm-up: allocator pools fill
    before = _rss_mb()
    run(600)
    grown = _rss_mb() - before
    assert sim.cache.k.data_ptr() == k_ptr and sim.cache.nbytes() == k_bytes  # same preallocated buffer
    assert grown < 8, f"resident memory grew by {grown:.1f} MiB over 600 steps"


@pytest.mark.parametrize("T", [W, 1])  # 1: a context shorter than the window (masked cache slots)
def test_guidance_extrapolates_along_the_action(T, random_bundle):
    b = random_bundle
    rng = np.random.default_rng(1)
    sims = {1.0: WorldSimulator(b, 2, sampling_steps=1)}
    for g in (0.0, 2.0):
        with pytest.warns(UserWarning, match="action_dropout"):  # this random model never learned it
            sims[g] = WorldSimulator(b, 2, sampling_steps=1, guidance=g)
    shape = sims[1.0].latent_shape
    ctx = np.repeat(b.start_frames[:1, :T].numpy(), 2, 0)
    ctx_a = np.repeat(b.start_actions[:1, :T - 1].numpy(), 2, 0)
    cn = rng.standard_normal((1, T, *shape)).repeat(2, 0)
    noise = rng.standard_normal((1, *shape)).repeat(2, 0)
    out = {}
    for g, sim in sims.items():  # both rows share context and noise; only the action differs
        sim.reset([0, 1], ctx, ctx_a, cn)
        out[g] = sim.step(np.array([1, 4]), noise, np.zeros((2, *shape)), decode=False).latents
    # guidance 0 is the action-free prediction: two actions give the same frame; guidance 1 does not
    torch.testing.assert_close(out[0.0][0], out[0.0][1])
    assert (out[1.0][0] - out[1.0][1]).abs().max() > 1e-3
    # one Euler step is affine in the network output: guidance 2 lies as far past 1 as 1 lies past 0
    torch.testing.assert_close(out[2.0], 2 * out[1.0] - out[0.0], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="guidance"):
        WorldSimulator(b, 1, guidance=float("nan"))


@pytest.mark.parametrize("guidance,residual", [(1.0, False), (2.0, False), (1.0, True), (2.0, True)])
def test_warp_input_cached_rollout_equals_full_recompute(guidance, residual, tmp_path):
    """A world model that reads its previous frame shifted by the camera: the cached rollout feeds each step
    the frame it committed last (context-noised), exactly what the full recompute gives every frame; with
    guidance the action-free half sees that frame unshifted. Residual: each half's skip connection is centred
    on the warp input that half sees."""
    b = _random_bundle(tmp_path / "w", warp=True, residual=residual)
    assert b.dit.config.warp_action == "camera" and b.dit.config.warp_matrix == [[0.03, 0.0], [0.0, -0.05]]
    edm, rng = b.edm, np.random.default_rng(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # guidance on a model never trained with action dropout
        sim = WorldSimulator(b, 1, sampling_steps=2, guidance=guidance)
    shape = sim.latent_shape
    cn = rng.standard_normal((1, W, *shape))
    acts = {"camera": np.zeros((1, W, 2), np.float32), "forward": np.zeros((1, W), np.int64)}
    z0 = sim.reset([0], b.start_frames[:1].numpy(), {k: v[:, 1:] for k, v in acts.items()}, cn)
    hist = z0 + sim.context_noise * torch.as_tensor(cn, dtype=torch.float32)
    has = torch.ones(1, W, dtype=torch.bool)
    has[0, 0] = False
    for step in range(2 * W + 1):
        a = {"camera": rng.uniform(-20, 20, (1, 2)).astype(np.float32), "forward": np.array([step % 2])}
        noise, ctxn = rng.standard_normal((1, *shape)), rng.standard_normal((1, *shape))
        res = sim.step(a, noise, ctxn, decode=False)
        acts = {k: np.concatenate([acts[k], a[k][:, None]], axis=1) for k in acts}
        has = torch.cat([has, torch.ones(1, 1, dtype=torch.bool)], dim=1)
        at = actions_to_tensor(b.dit.config.action_spec, acts)
        free = has.clone()
        free[:, -1] = False

        def denoise(x, sigma):
            seq = torch.cat([hist, x[:, None]], dim=1)
            sig = torch.cat([torch.full((1, seq.shape[1] - 1), edm.cfg.context_noise), sigma[:, None]], dim=1)
            inp, c_noise = edm.model_input(seq, sig)
            prev = edm.previous_frames(seq)  # the target's is the last committed frame
            centre = edm.residual_anchor(b.dit, seq, prev, at, has)
            d = edm.denoised(x, sigma, b.dit(inp, c_noise, at, has, prev=prev).out[:, -1],
                             None if centre is None else centre[:, -1])
            if guidance != 1.0:
                centre = edm.residual_anchor(b.dit, seq, prev, at, free)
                d_free = edm.denoised(x, sigma, b.dit(inp, c_noise, at, free, prev=prev).out[:, -1],
                                      None if centre is None else centre[:, -1])
                d = d_free + guidance * (d - d_free)
            return d

        start = None
        if residual:  # the sampler starts from the centre with the action: the last committed frame, shifted
            start = b.dit.warped_previous(hist[:, -1:], {k: v[:, -1:] for k, v in at.items()}, has[:, -1:])[:, 0]
        ref = edm.sample(denoise, torch.as_tensor(noise, dtype=torch.float32), 2, start)
        torch.testing.assert_close(res.latents, ref, rtol=1e-4, atol=1e-4)
        hist = torch.cat([hist, (res.latents + sim.context_noise * torch.as_tensor(ctxn, dtype=torch.float32))[:, None]], 1)


def test_residual_warp_model_at_zero_output_turns_the_view_with_the_camera(tmp_path):
    """A residual world model with a warp input, whose network outputs zero, shows the last frame shifted by
    the camera action: the shift the warp input applies, not a copy of the unturned frame."""
    from worldsim.model import shift_latents
    b = _random_bundle(tmp_path / "rw", warp=True, residual=True)
    torch.nn.init.zeros_(b.dit.final.linear.weight)
    torch.nn.init.zeros_(b.dit.final.linear.bias)
    sim = WorldSimulator(b, 2, sampling_steps=1)
    shape = sim.latent_shape
    acts = {"camera": np.zeros((2, W - 1, 2), np.float32), "forward": np.zeros((2, W - 1), np.int64)}
    z = sim.reset([0, 1], b.start_frames.numpy(), acts, np.zeros((2, W, *shape)))
    cam = np.array([[0.0, 20.0], [-20.0, 0.0]], np.float32)  # turn right; look up
    res = sim.step({"camera": cam, "forward": np.array([1, 0])}, np.zeros((2, *shape)), np.zeros((2, *shape)),
                   decode=False)
    want = shift_latents(z[:, -1], torch.as_tensor(cam) @ b.dit.warp_shift)
    torch.testing.assert_close(res.latents, want, rtol=1e-5, atol=1e-5)
    assert (want - z[:, -1]).abs().mean() > 0.05  # the shift is not a copy


def _zero_output_residual_warp(path, warp_kind="shift"):
    b = _random_bundle(path, warp=True, residual=True, warp_kind=warp_kind)
    torch.nn.init.zeros_(b.dit.final.linear.weight)
    torch.nn.init.zeros_(b.dit.final.linear.bias)
    return b


def test_detail_carry_shows_the_last_frame_moved_by_the_camera_where_the_model_changes_nothing(tmp_path):
    """detail_carry 1: a residual warp model whose network outputs zero shows the last real frame shifted in
    pixels by the camera (eval's warp_copy), not the decode of its shifted latent; the latents, which the next
    steps read, are the same as without the carry."""
    from worldsim.evaluate import warp_copy
    b = _zero_output_residual_warp(tmp_path / "rw")
    sims = [WorldSimulator(b, 2, sampling_steps=1, detail_carry=c) for c in (1.0, 0.0)]
    shape = sims[0].latent_shape
    acts = {"camera": np.zeros((2, W - 1, 2), np.float32), "forward": np.zeros((2, W - 1), np.int64)}
    step_a = {"camera": np.array([[0.0, 20.0], [-20.0, 0.0]], np.float32), "forward": np.array([1, 0])}
    ctx = b.start_frames.numpy()
    out = []
    for sim in sims:
        sim.reset([0, 1], ctx, acts, np.zeros((2, W, *shape)))
        out.append(sim.step(step_a, np.zeros((2, *shape)), np.zeros((2, *shape))))
    want = warp_copy(b.dit, ctx[:, -1], step_a).astype(int)
    assert np.abs(out[0].frames.astype(int) - want).max() <= 1  # rounding
    assert np.abs(out[1].frames.astype(int) - want).mean() > 3  # the decoded centre is not the shifted frame
    torch.testing.assert_close(out[0].latents, out[1].latents)


def test_detail_carry_below_one_fades_towards_the_models_decode(tmp_path):
    # nothing changes (zero output, no turn, no context noise): each step keeps detail_carry of the shown
    # frame's difference from the decode, so it cannot pile up over a long rollout
    b = _zero_output_residual_warp(tmp_path / "rw")
    sim = WorldSimulator(b, 1, sampling_steps=1, detail_carry=0.5, context_noise=0.0)
    shape = sim.latent_shape
    acts = {"camera": np.zeros((1, W - 1, 2), np.float32), "forward": np.zeros((1, W - 1), np.int64)}
    z = sim.reset([0], b.start_frames[:1].numpy(), acts, np.zeros((1, W, *shape)))
    decoded = sim.codec.decode(z[:, -1]).numpy().astype(float)
    gaps = [np.abs(b.start_frames[:1, -1].numpy() - decoded).mean()]
    for _ in range(3):
        res = sim.step({"camera": np.zeros((1, 2), np.float32), "forward": np.array([0])}, np.zeros((1, *shape)),
                       np.zeros((1, *shape)))
        gaps.append(np.abs(res.frames - decoded).mean())
    assert gaps[0] > 5
    for before, after in zip(gaps, gaps[1:]):
        assert abs(after - 0.5 * before) < 0.5, gaps  # halves each step (within rounding)


def test_detail_carry_gate_shows_strongly_changed_pixels_as_decoded(tmp_path):
    b = _random_bundle(tmp_path / "rw", warp=True, residual=True)  # a network that changes the frame
    sims = [WorldSimulator(b, 2, sampling_steps=1, detail_carry=1.0, carry_gate=g) for g in (1e-3, 0.0)]
    plain = WorldSimulator(b, 2, sampling_steps=1)
    shape = plain.latent_shape
    acts = {"camera": np.zeros((2, W - 1, 2), np.float32), "forward": np.zeros((2, W - 1), np.int64)}
    step_a = {"camera": np.array([[0.0, 5.0], [3.0, 0.0]], np.float32), "forward": np.array([1, 0])}
    noise = np.random.default_rng(0).standard_normal((2, *shape))
    out = []
    for sim in (*sims, plain):
        sim.reset([0, 1], b.start_frames.numpy(), acts, np.zeros((2, W, *shape)))
        out.append(sim.step(step_a, noise, np.zeros((2, *shape))).frames.astype(int))
    gated, ungated, decoded = out
    assert np.abs(gated - decoded).mean() < 0.5  # every pixel changed by more than the gate: shown as decoded
    assert np.abs(ungated - decoded).mean() > 3  # without the gate the carried detail is there


def test_tile_hold_with_detail_carry_keeps_a_still_view_exactly(tmp_path):
    """With detail carry, tile hold keeps the shown pixels on null-action steps (no key, no camera) where the
    model changed nothing: the view stays as it was, where the carry alone fades it towards the decode; any
    other action (a turn, a key) is shown as the carry shows it."""
    b = _random_bundle(tmp_path / "rw", warp=True, residual=True, ae="patch8_tiny")
    sims = {t: WorldSimulator(b, 2, sampling_steps=1, detail_carry=0.9, tile_hold=t) for t in (1e9, 0.0)}
    shape = sims[0.0].latent_shape
    acts = {"camera": np.zeros((2, W - 1, 2), np.float32), "forward": np.zeros((2, W - 1), np.int64)}
    still = {"camera": np.zeros((2, 2), np.float32), "forward": np.array([0, 0])}
    moving = {"camera": np.array([[0.0, 4.0], [0.0, 0.0]], np.float32), "forward": np.array([0, 1])}
    noise = np.random.default_rng(0).standard_normal((2, *shape))
    ctx = b.start_frames.numpy()
    out = {}
    for t, sim in sims.items():
        sim.reset([0, 1], ctx, acts, np.zeros((2, W, *shape)))
        out[t] = [sim.step(still, noise, np.zeros((2, *shape))).frames for _ in range(3)]
        out[t].append(sim.step(moving, noise, np.zeros((2, *shape))).frames)
    for f in out[1e9][:3]:
        np.testing.assert_array_equal(f, ctx[:, -1])  # held: the last real frame, bit for bit, step after step
    assert all(np.abs(f.astype(int) - ctx[:, -1]).mean() > 1 for f in out[0.0][:3])  # without: it changes
    # a turn, or a key held: not a still view, so nothing is held (the same as the carry without hold, from the
    # same shown frame: compare one step from a fresh reset)
    for t, sim in sims.items():
        sim.reset([0, 1], ctx, acts, np.zeros((2, W, *shape)))
        out[t] = sim.step(moving, noise, np.zeros((2, *shape))).frames
    np.testing.assert_array_equal(out[1e9], out[0.0])
    with pytest.raises(ValueError, match="tile_hold needs a patch autoencoder"):
        WorldSimulator(_random_bundle(tmp_path / "vae", warp=True, residual=True), 1, detail_carry=0.9, tile_hold=0.3)


def test_detail_carry_needs_a_residual_model(random_bundle, tmp_path):
    with pytest.raises(ValueError, match="detail_carry needs a residual model"):
        WorldSimulator(random_bundle, 1, detail_carry=0.9)
    b = _random_bundle(tmp_path / "rw", warp=True, residual=True)
    with pytest.raises(ValueError, match=r"detail_carry must be in \[0, 1\]"):
        WorldSimulator(b, 1, detail_carry=1.5)
    with pytest.raises(ValueError, match="carry_gate must be a finite number"):
        WorldSimulator(b, 1, detail_carry=0.9, carry_gate=-1)


def test_guided_batch_rows_each_see_their_own_context(random_bundle):
    # guidance stacks the batch with and without its action in one pass over the shared cache: each row,
    # guided, must equal that row run alone (a row mix-up in the stacked cache would not)
    b, rng = random_bundle, np.random.default_rng(2)
    with pytest.warns(UserWarning, match="action_dropout"):
        both = WorldSimulator(b, 2, sampling_steps=2, guidance=2.5)
        alone = WorldSimulator(b, 1, sampling_steps=2, guidance=2.5)
    shape = both.latent_shape
    ctx, ctx_a = b.start_frames[:2].numpy(), b.start_actions[:2].numpy()
    assert not np.array_equal(ctx[0], ctx[1])
    cn, noise = rng.standard_normal((2, W, *shape)), rng.standard_normal((2, *shape))
    both.reset([0, 1], ctx, ctx_a, cn)
    got = both.step(np.array([1, 4]), noise, np.zeros((2, *shape)), decode=False).latents
    for i, act in enumerate((1, 4)):
        alone.reset([0], ctx[i:i + 1], ctx_a[i:i + 1], cn[i:i + 1])
        ref = alone.step(np.array([act]), noise[i:i + 1], np.zeros((1, *shape)), decode=False).latents
        torch.testing.assert_close(got[i:i + 1], ref, rtol=1e-4, atol=1e-4)


def test_action_dropout_hides_actions_from_the_loss():
    torch.manual_seed(0)
    dit = randomize(WorldDiT({"type": "discrete", "n": 17}, latent_channels=4, dim=32, depth=2, heads=2,
                             context_frames=W), std=0.15)
    B, T = 2, W + 1
    z = torch.randn(B, T, 4, 8, 8)
    has = torch.ones(B, T, dtype=torch.bool)
    zeros = torch.zeros(B, T)
    losses = {}
    for p in (0.0, 1.0):
        edm = EDM(EDMConfig(action_dropout=p))
        for k in (1, 4):
            acts = torch.full((B, T), k, dtype=torch.long)
            losses[p, k] = edm.loss(dit, z, acts, has, zeros, zeros.bool(), has,
                                    generator=torch.Generator().manual_seed(3))[0].item()
    assert losses[0.0, 1] != losses[0.0, 4]  # the action matters ...
    assert losses[1.0, 1] == losses[1.0, 4]  # ... unless every frame's action is dropped


def _distill_case(depth: int):
    """A random tiny teacher (seeded) and a batch of 3 windows for distill_loss: teacher, z, actions, has_action, zeros."""
    torch.manual_seed(0)
    teacher = randomize(WorldDiT({"type": "discrete", "n": 17}, latent_channels=4, dim=32, depth=depth, heads=2,
                                 context_frames=W), std=0.15)
    B, T = 3, W + 1
    z = torch.randn(B, T, 4, 8, 8)
    acts = torch.randint(0, 17, (B, T))
    return teacher, z, acts, torch.ones(B, T, dtype=torch.bool), torch.zeros(B, T)


def test_self_distillation_learns_the_real_frame_only_where_marked():
    """distill_loss at guidance 1 (self-distillation): a student equal to its teacher has zero loss, and rows
    marked `real` learn the real frame instead (their raw target denoises the noisy frame back to it)."""
    import copy

    teacher, z, acts, has, zeros = _distill_case(depth=2)
    student = copy.deepcopy(teacher)
    B = z.shape[0]
    edm = EDM(EDMConfig())

    def loss(real):
        return edm.distill_loss(student, teacher, 1.0, z, acts, has, zeros, zeros.bool(), has,
                                generator=torch.Generator().manual_seed(5), real=real)[1]["distill"]

    assert loss(None) == 0 and loss(torch.zeros(B, dtype=torch.bool)) == 0
    assert loss(torch.tensor([True, False, False])) > 0
    x, sigma = z + 0.7 * torch.randn(z.shape), torch.tensor([0.01, 0.7, 20.0])
    raw = edm.raw_target(z[:, -1], x[:, -1], sigma)
    torch.testing.assert_close(edm.denoised(x[:, -1], sigma, raw), z[:, -1])


def test_feature_distillation_pulls_a_shallower_student_toward_the_teachers_tokens():
    """distill_loss with feature_weight: a student equal to its teacher has zero feature loss; one with a block
    dropped (WorldDiT.without_blocks) does not, and training on the loss lowers it."""
    import copy

    teacher, z, acts, has, zeros = _distill_case(depth=3)
    edm = EDM(EDMConfig())

    def loss(student):
        return edm.distill_loss(student, teacher, 1.0, z, acts, has, zeros, zeros.bool(), has,
                                generator=torch.Generator().manual_seed(5), feature_weight=1.0)

    assert loss(copy.deepcopy(teacher))[1]["features"] == 0
    guided = edm.distill_loss(copy.deepcopy(teacher), teacher, 2.0, z, acts, has, zeros, zeros.bool(), has,
                              generator=torch.Generator().manual_seed(5), feature_weight=1.0)[1]
    assert guided["features"] < 1e-10  # guided: the tokens of the teacher's conditional half of its stacked pass
    student = teacher.without_blocks([1])
    before = loss(student)[1]["features"]
    assert before > 0
    opt = torch.optim.Adam(student.parameters(), lr=1e-3)
    for _ in range(30):
        opt.zero_grad()
        loss(student)[0].backward()
        opt.step()
    assert loss(student)[1]["features"] < 0.7 * before


def test_guidance_keeps_the_conditional_mean_when_asked():
    """EDM.guide: free + g (cond - free); with guidance_keep_mean the result has cond's per-channel mean over
    the frame and the same local differences, so guidance cannot push the whole frame's colour."""
    torch.manual_seed(0)
    free, cond = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8) + 0.5
    plain = EDM(EDMConfig()).guide(free, cond, 2.0)
    torch.testing.assert_close(plain, 2 * cond - free)
    kept = EDM(EDMConfig(guidance_keep_mean=True)).guide(free, cond, 2.0)
    torch.testing.assert_close(kept.mean(dim=(2, 3)), cond.mean(dim=(2, 3)))
    torch.testing.assert_close(kept - kept.mean(dim=(2, 3), keepdim=True), plain - plain.mean(dim=(2, 3), keepdim=True))
    assert not torch.allclose(kept.mean(dim=(2, 3)), plain.mean(dim=(2, 3)))


def test_changed_tokens_learn_the_real_frame_and_weigh_more():
    """changed_tokens marks exactly the latent tokens that differ from the frame before; with change_real a
    self-distilled student equal to its teacher is pulled toward the real frame on those tokens only (zero
    loss when nothing changed), and change_weight scales their share of the plain denoising loss."""
    import copy

    torch.manual_seed(0)
    teacher = randomize(WorldDiT({"type": "discrete", "n": 17}, latent_channels=4, dim=32, depth=2, heads=2,
                                 context_frames=W), std=0.15)
    student = copy.deepcopy(teacher)
    B, T = 2, W + 1
    still = torch.randn(1, 1, 4, 8, 8).expand(B, T, 4, 8, 8).clone()
    moved = still.clone()
    moved[0, -1, :, 2, 5] += 1.0  # one token of the last frame of row 0 changes
    moved[1, 1, :, 0, 0] -= 0.05  # under the threshold: not a change
    edm = EDM(EDMConfig())
    changed = edm.changed_tokens(moved, 0.2)
    assert changed.shape == (B, T, 8, 8) and changed.sum() == 1 and changed[0, -1, 2, 5]
    assert not edm.changed_tokens(moved, 2.0).any()

    acts = torch.randint(0, 17, (B, T))
    has = torch.ones(B, T, dtype=torch.bool)
    zeros = torch.zeros(B, T)

    def distill(z, **kw):
        return edm.distill_loss(student, teacher, 1.0, z, acts, has, zeros, zeros.bool(), has,
                                generator=torch.Generator().manual_seed(5), **kw)[1]["distill"]

    assert distill(still, change_real=True) == 0  # nothing changed: the teacher's target everywhere
    assert distill(moved) == 0 and distill(moved, change_real=True) > 0
    # the weights rescale to mean 1 over the batch, so the one changed token of 2 x 64 at weight 8 counts
    # 8 / (1 + 7/128) times what it did (every other token has zero error)
    w1, w8 = distill(moved, change_real=True), distill(moved, change_real=True, change_weight=8.0)
    assert w8 == pytest.approx(w1 * 8 / (1 + 7 / 128), rel=1e-4)

    def plain(w):
        return edm.loss(student, moved, acts, has, zeros, zeros.bool(), has, generator=torch.Generator().manual_seed(3),
                        teacher_forcing=True, change_weight=w)[1]["diffusion"]

    assert plain(1.0) != plain(8.0)


def test_novel_tokens_are_changes_no_neighbour_explains():
    """novel_tokens: a token that a one-cell scroll brought from the frame before is changed but not novel; one
    that appears from nothing (an inventory count) is both; novel_weight lifts that token's share of both losses."""
    import copy

    torch.manual_seed(0)
    B, T = 1, W + 1
    base = torch.randn(1, 1, 4, 8, 8).expand(B, T, 4, 8, 8).clone()
    z = base.clone()
    z[:, -1] = torch.roll(base[:, -2], shifts=1, dims=-1)  # the last frame scrolled one cell right
    edm = EDM(EDMConfig())
    changed, novel = edm.changed_tokens(z, 0.2), edm.novel_tokens(z, 0.2)
    assert changed.shape == novel.shape == (B, T, 8, 8)
    # the scroll changes nearly every token and makes none novel, except the column that wrapped round
    assert changed[0, -1].sum() > 40 and not novel[0, -1, :, 1:].any()
    z[0, -1, :, 3, 4] += 3.0  # something appears
    novel = edm.novel_tokens(z, 0.2)
    assert novel[0, -1, 3, 4] and not novel[0, :-1].any()

    teacher = randomize(WorldDiT({"type": "discrete", "n": 17}, latent_channels=4, dim=32, depth=2, heads=2,
                                 context_frames=W), std=0.15)
    student = copy.deepcopy(teacher)  # with change_real only the changed tokens have an error
    acts, has = torch.randint(0, 17, (B, T)), torch.ones(B, T, dtype=torch.bool)
    zeros = torch.zeros(B, T)
    args = (z, acts, has, zeros, zeros.bool(), has)
    plain = [edm.loss(student, *args, generator=torch.Generator().manual_seed(3), teacher_forcing=True,
                      novel_weight=w)[1]["diffusion"] for w in (1.0, 20.0)]
    dist = [edm.distill_loss(student, teacher, 1.0, *args, generator=torch.Generator().manual_seed(5),
                             change_real=True, novel_weight=w)[1]["distill"] for w in (1.0, 20.0)]
    assert plain[0] != plain[1] and 0 < dist[0] < dist[1]


def test_tile_hold_keeps_unchanged_tiles_exactly(patch_bundle, random_bundle):
    b, rng = patch_bundle, np.random.default_rng(4)
    with pytest.raises(ValueError, match="patch autoencoder"):
        WorldSimulator(random_bundle, 1, tile_hold=0.1)  # a VAE's latent cells have no tiles of their own
    with pytest.raises(ValueError, match="tile_hold"):
        WorldSimulator(b, 1, tile_hold=float("nan"))
    ctx, ctx_a = b.start_frames[:1].numpy(), b.start_actions[:1].numpy()
    sims = {t: WorldSimulator(b, 1, sampling_steps=1, tile_hold=t) for t in (0.0, 1e9)}
    shape = sims[0.0].latent_shape
    cn, noise = rng.standard_normal((1, W, *shape)), rng.standard_normal((1, *shape))
    out = {}
    for t, sim in sims.items():
        sim.reset([0], ctx, ctx_a, cn)
        out[t] = sim.step(np.array([2]), noise, noise).frames[0]
    assert not np.array_equal(out[0.0], ctx[0, -1])  # off: every tile decoded afresh
    assert np.array_equal(out[1e9], ctx[0, -1])  # everything held: the context's last frame, bit for bit
    # in between: a tile is re-decoded once its latent is tile_hold away from the latent it was decoded
    # from, however slowly it got there
    tau = 0.5
    sim = WorldSimulator(b, 1, sampling_steps=1, tile_hold=tau)
    z0 = sim.reset([0], ctx, ctx_a, cn)[:, -1]
    decoded = torch.zeros(1, 32, 32, 3, dtype=torch.uint8)  # stands for what the decoder made of the new latents
    step = torch.zeros_like(z0)
    step[:, :, 0, 0] = 0.6 * tau  # tile (0, 0) creeps by 0.6 tau a step (RMS over channels)
    jump = torch.zeros_like(z0)
    jump[:, :, 1, 1] = 2 * tau  # tile (1, 1) jumps at once
    f1 = sim._hold(z0 + step + jump, decoded).numpy().copy()
    assert (f1[0, 8:16, 8:16] == 0).all()  # the jump: re-decoded
    f1[0, 8:16, 8:16] = ctx[0, -1, 8:16, 8:16]
    assert np.array_equal(f1[0], ctx[0, -1])  # every other tile, the creeping one included: held
    f2 = sim._hold(z0 + 2 * step + jump, decoded).numpy()
    assert (f2[0, :8, :8] == 0).all()  # 1.2 tau from where it was decoded: re-decoded now
    assert np.array_equal(f2[0, 16:], ctx[0, -1, 16:])  # untouched tiles still held


def test_tile_hold_decodes_only_rows_with_a_tile_to_redraw(patch_bundle):
    """A row whose every tile is held shows its last frame without a decode; the other rows are decoded, and every
    row's pixels are what decoding the whole batch and holding tiles gives."""
    b, rng = patch_bundle, np.random.default_rng(5)
    sim = WorldSimulator(b, 3, sampling_steps=1, tile_hold=0.5)
    idx = np.arange(3) % len(b.start_frames)
    z0 = sim.reset(range(3), b.start_frames[idx].numpy(), b.start_actions[idx].numpy(),
                   rng.standard_normal((3, sim.window, *sim.latent_shape)))[:, -1]
    z = z0.clone()
    z[1] += 2.0  # every tile redrawn
    z[2, :, 0, 0] += 2.0  # one tile redrawn
    shown, shown_z = sim.shown.clone(), sim.shown_z.clone()
    expect = sim._hold(z, sim.codec.decode(z))  # the batch decoded, then held
    sim.shown, sim.shown_z = shown, shown_z
    decoded = []
    decode = sim.codec.decode
    sim.codec.decode = lambda zz: decoded.append(len(zz)) or decode(zz)
    try:
        got = sim._show(z, None, None)
        assert decoded == [2]  # rows 1 and 2; row 0 held whole
        assert torch.equal(got, expect) and torch.equal(got[0], shown[0])
        sim._show(z, None, None)  # nothing moved since: no decode at all
        assert decoded == [2]
    finally:
        sim.codec.decode = decode


def _same_noise_rollouts(bundle, sims: dict, n: int, decode=lambda k, i: False) -> dict:
    """Each simulator (2 rows) reset from the same real context and stepped n times on the same actions and
    noise: {key: stacked latents (n, 2, C, h, w), fp32}."""
    rng = np.random.default_rng(0)
    shape = next(iter(sims.values())).latent_shape
    ctx = rng.standard_normal((2, W, *shape))
    steps = [(rng.integers(17, size=2), rng.standard_normal((2, *shape)), rng.standard_normal((2, *shape)))
             for _ in range(n)]
    out = {}
    for k, sim in sims.items():
        sim.reset([0, 1], bundle.start_frames[:2].numpy(), bundle.start_actions[:2].numpy(), ctx)
        out[k] = torch.stack([sim.step(a, nz, c, decode=decode(k, i)).latents.float()
                              for i, (a, nz, c) in enumerate(steps)])
    return out


def _max_relative_gap(a: torch.Tensor, ref: torch.Tensor) -> float:
    return ((a - ref).flatten(2).norm(dim=2) / ref.flatten(2).norm(dim=2)).max().item()


def test_int8_world_model_tracks_fp32(random_bundle):
    """quantize="int8": the blocks' attention and MLP layers become int8 dynamic-quantized ones (adaLN,
    final layer and heads stay fp32; the bundle's own model is untouched), and a rollout from the same
    noise stays near the fp32 one without being identical to it."""
    from torch.ao.nn.quantized.dynamic import Linear as QLinear

    from worldsim.simulator import _Int8Linear

    sims = {q: WorldSimulator(random_bundle, 2, sampling_steps=1, quantize=q) for q in (None, "int8")}
    q = sims["int8"].dit
    for layer in (q.blocks[0].mlp[0], q.blocks[-1].attn.qkv, q.blocks[0].mlp[2], q.blocks[0].attn.proj):
        # torch.ao's layer, called through its op: the same bits as its own forward
        assert isinstance(layer, _Int8Linear) and isinstance(layer.q, QLinear)
        x = torch.randn(3, 5, layer.q.in_features)
        assert torch.equal(layer(x), layer.q(x))
    assert type(q.final.linear) is torch.nn.Linear and type(q.blocks[0].ada[-1]) is torch.nn.Linear
    assert type(random_bundle.dit.blocks[0].mlp[0]) is torch.nn.Linear
    assert WorldSimulator(random_bundle, 1, quantize="int8").dit is q  # one quantized copy per bundle
    out = _same_noise_rollouts(random_bundle, sims, 10)
    rel = _max_relative_gap(out["int8"], out[None])
    assert 0 < rel < 0.05, rel  # measured: 0.025
    with pytest.raises(ValueError, match="quantize"):
        WorldSimulator(random_bundle, 1, quantize="int4")
    # a bundle may make int8 its CPU default (bundle.json's inference.quantize); "none" or false turn it off
    import copy

    b = copy.copy(random_bundle)
    b.meta = {**random_bundle.meta, "inference": {"quantize": "int8"}}
    assert WorldSimulator(b, 1).quantize == "int8" and isinstance(WorldSimulator(b, 1).dit.blocks[0].mlp[0].q, QLinear)
    for off in ("none", "fp32", False):
        sim = WorldSimulator(b, 1, quantize=off)
        assert sim.quantize is None and sim.dit is b.dit
    assert WorldSimulator(random_bundle, 1).quantize is None  # no default in the bundle: fp32


def test_bf16_autocast_tracks_fp32(random_bundle):
    """amp="bf16": the model's passes run under autocast to bfloat16 (the GPU path), the cache and the state
    kept between steps stay fp32, and a rollout from the same noise stays near the fp32 one."""
    import copy

    sims = {amp: WorldSimulator(random_bundle, 2, sampling_steps=2, amp=amp) for amp in (None, "bf16")}
    assert sims["bf16"].amp == "bf16" and sims[None].amp is None
    out = _same_noise_rollouts(random_bundle, sims, 6, decode=lambda k, i: i % 2 == 0)  # decode under bf16 too
    for sim in sims.values():
        assert sim.prev.dtype == sim.prev_ctx.dtype == sim.cache.k.dtype == torch.float32
    rel = _max_relative_gap(out["bf16"], out[None])
    assert 0 < rel < 0.1, rel  # measured: 0.012
    with pytest.raises(ValueError, match="amp must be"):
        WorldSimulator(random_bundle, 1, amp="fp16")
    with pytest.raises(ValueError, match="pick one"):
        WorldSimulator(random_bundle, 1, amp="bf16", quantize="int8")
    b = copy.copy(random_bundle)  # a bundle's int8 CPU default gives way to an explicit bf16
    b.meta = {**random_bundle.meta, "inference": {"quantize": "int8"}}
    assert WorldSimulator(b, 1, amp="bf16").quantize is None


@pytest.mark.parametrize("warp,residual", [(False, False), (False, True), (True, False), (True, True)])
def test_training_rollout_is_the_simulators_rollout(warp, residual, tmp_path):
    """EDM.rollout (scheduled sampling on the model's own frames, `dit.rollout_steps`) generates the context
    frames the simulator would: same noise in, the same latents out at every step, through the sliding window
    (more steps than the window) and, for a warp model, each frame reading its committed predecessor. The
    last frame of the sequence is the real target and stays as it was."""
    b = _random_bundle(tmp_path / "b", warp=warp, residual=residual)
    edm, B, K = b.edm, 2, W + 2
    sim = WorldSimulator(b, B, sampling_steps=edm.cfg.sampling_steps, tile_hold=0.0)
    frames = b.start_frames[:B].numpy()
    z_ctx = b.codec.encode(torch.as_tensor(frames))
    rng = np.random.default_rng(1)
    real = torch.as_tensor(rng.standard_normal((B, K + 1, *z_ctx.shape[2:])), dtype=torch.float32)
    z = torch.cat([z_ctx, real], 1)  # frames W.. stand for the real ones the rollout replaces
    T = W + K + 1
    if warp:
        acts = {"camera": rng.uniform(-20, 20, (B, T, 2)).astype(np.float32), "forward": rng.integers(0, 2, (B, T))}
    else:
        acts = rng.integers(0, 17, (B, T))
    has = torch.ones(B, T, dtype=torch.bool)
    has[:, 0] = False  # as the simulator's reset: nothing led to the first context frame
    at = actions_to_tensor(b.dit.config.action_spec, acts)
    gen = edm.rollout(b.dit, z, at, has, K, generator=torch.Generator().manual_seed(5))

    g = torch.Generator().manual_seed(5)  # the same draws, in the rollout's order
    cn = torch.randn(B, W, *z.shape[2:], generator=g)
    def pick(s):  # the actions of frames s of each sequence
        return index_actions(acts, (slice(None), s))

    z0 = sim.reset(range(B), frames, pick(slice(1, W)), cn[:, :W].numpy())
    torch.testing.assert_close(gen[:, :W], z0)
    for t in range(W, W + K):
        noise, ctxn = torch.randn(B, *z.shape[2:], generator=g), torch.randn(B, *z.shape[2:], generator=g)
        res = sim.step(pick(t), noise.numpy(), ctxn.numpy(), decode=False)
        torch.testing.assert_close(gen[:, t], res.latents, rtol=1e-4, atol=1e-4)
    assert torch.equal(gen[:, -1], z[:, -1])
    assert (gen[:, W:-1] - z[:, W:-1]).abs().mean() > 0.1  # the generated frames replaced the real ones
    with pytest.raises(ValueError, match="frames per sequence"):
        edm.rollout(b.dit, z[:, 1:], at, has, K)


@pytest.mark.parametrize("kind", ["plain", "residual", "tile_hold"])
def test_reencode_commits_the_encoding_of_the_shown_frame(kind, random_bundle, residual_bundle, patch_bundle):
    """reencode: every step's context frame is the encoding of the frame shown (through tile hold where it is
    on), context-noised as always, and the cached rollout equals recomputing the whole history from those
    encodings; a residual model's change is from the encoding too. Without reencode the context keeps the
    sampled latent, which is not the encoding of its own decode (so the check below can fail)."""
    b = {"plain": random_bundle, "residual": residual_bundle, "tile_hold": patch_bundle}[kind]
    hold = 0.3 if kind == "tile_hold" else 0.0
    sim = WorldSimulator(b, 1, sampling_steps=2, reencode=True, tile_hold=hold)
    off = WorldSimulator(b, 1, sampling_steps=2, tile_hold=hold)
    assert sim.reencode and not off.reencode  # the bundles leave it off
    rng = np.random.default_rng(5)
    shape = sim.latent_shape
    ctx_noise = rng.standard_normal((1, W, *shape))
    z0 = sim.reset([0], b.start_frames[:1].numpy(), b.start_actions[:1, :W - 1].numpy(), ctx_noise)
    off.reset([0], b.start_frames[:1].numpy(), b.start_actions[:1, :W - 1].numpy(), ctx_noise)
    hist = z0 + sim.context_noise * torch.as_tensor(ctx_noise, dtype=torch.float32)
    prev = z0[:, -1] if b.edm.cfg.residual else None
    acts = np.concatenate([[0], b.start_actions[0, :W - 1].numpy()])[None]
    has = torch.ones(1, W, dtype=torch.bool)
    has[0, 0] = False
    held = 0
    for step in range(2 * W + 1):
        a = np.array([(3 * step + 1) % 17])
        noise, cn = rng.standard_normal((1, *shape)), rng.standard_normal((1, *shape))
        res = sim.step(a, noise, cn, decode=False)  # the frame is decoded anyway: its encoding is the context
        res_off = off.step(a, noise, cn)
        acts = np.concatenate([acts, a[None]], axis=1)
        has = torch.cat([has, torch.ones(1, 1, dtype=torch.bool)], dim=1)
        sample = full_recompute(b, hist, acts, has, torch.as_tensor(noise, dtype=torch.float32), 2, prev)
        enc = b.codec.encode(torch.as_tensor(res.frames))
        torch.testing.assert_close(res.latents, enc)
        torch.testing.assert_close(sim.prev_ctx, enc + sim.context_noise * torch.as_tensor(cn, dtype=torch.float32))
        # the cached sample's decode (up to a grey level of rounding: the two paths sum in other orders), except
        # where tile hold kept older pixels
        err = np.abs(res.frames.astype(int) - b.codec.decode(sample).numpy())
        if kind == "tile_hold":
            held += int(err.max() > 1)
        else:
            assert err.max() <= 1
        if step == 0:  # same context: the first sample is the same with and without reencode
            np.testing.assert_array_equal(res.frames, res_off.frames)
            assert (res_off.latents - b.codec.encode(torch.as_tensor(res_off.frames))).abs().max() > 1e-3
        prev = enc if prev is not None else None
        hist = torch.cat([hist, sim.prev_ctx[:, None]], 1)
    if kind == "tile_hold":
        assert held > 0  # some tiles were held, so the shown frame is not the sample's decode


def test_reencode_carries_detail_into_the_context(tmp_path):
    """A residual warp model with detail carry: the shown frame is the last one moved by the camera in pixels,
    and with reencode that frame, not the blurrier decode of the shifted latent, is what the next step reads."""
    b = _zero_output_residual_warp(tmp_path / "rw")
    sim = WorldSimulator(b, 2, sampling_steps=1, detail_carry=1.0, reencode=True)
    shape = sim.latent_shape
    acts = {"camera": np.zeros((2, W - 1, 2), np.float32), "forward": np.zeros((2, W - 1), np.int64)}
    sim.reset([0, 1], b.start_frames.numpy(), acts, np.zeros((2, W, *shape)))
    for _ in range(2):
        res = sim.step({"camera": np.array([[0.0, 20.0], [-20.0, 0.0]], np.float32), "forward": np.array([1, 0])},
                       np.zeros((2, *shape)), np.zeros((2, *shape)))
        torch.testing.assert_close(sim.prev, b.codec.encode(torch.as_tensor(res.frames)))
        torch.testing.assert_close(sim.prev_ctx, sim.prev)  # context noise 0 here


def test_energy_score_scores_samples_of_the_real_distribution_below_its_mean():
    from worldsim.diffusion import energy_score
    g = torch.Generator().manual_seed(0)
    y = torch.randn(2000, 4, 4, 4, generator=g)
    s1, s2 = torch.randn(y.shape, generator=g), torch.randn(y.shape, generator=g)
    mean = torch.zeros_like(y)
    assert energy_score(s1, s2, y) < 0.8 * energy_score(mean, mean, y)
    # a prediction that ignores its noise scores its RMS error
    d = y + 0.5
    torch.testing.assert_close(energy_score(d, d, y), torch.tensor(0.5), rtol=1e-4, atol=1e-4)


def test_energy_loss_teaches_the_one_step_sampler_to_sample_where_the_denoising_loss_averages():
    """Next frames the context cannot predict (every sequence fresh independent noise): trained on the
    denoising loss, two one-step samples from the same context stay nearly equal (the conditional mean);
    trained on the energy score, they spread out towards the real frames' own spread."""
    W_, C = 2, 4
    z = torch.randn(8, W_ + 1, C, 4, 4, generator=torch.Generator().manual_seed(0))
    acts = torch.zeros(8, W_ + 1, dtype=torch.long)
    has = torch.ones(8, W_ + 1, dtype=torch.bool)
    zeros = torch.zeros(8, W_ + 1)
    edm = EDM(EDMConfig())

    def spread(dit):  # RMS difference of two one-step samples of the last frame from the same context
        with torch.no_grad():
            sig = torch.full((8, W_ + 1), 0.1)
            sig[:, -1] = edm.cfg.sigma_max
            x = z + sig[..., None, None, None] * torch.randn(z.shape, generator=torch.Generator().manual_seed(1))
            ds = []
            for s in (2, 3):
                xi = x.clone()
                xi[:, -1] = edm.cfg.sigma_max * torch.randn(z[:, -1].shape, generator=torch.Generator().manual_seed(s))
                inp, cn = edm.model_input(xi, sig)
                ds.append(edm.denoised(xi, sig, dit(inp, cn, acts, has).out)[:, -1])
            return (ds[0] - ds[1]).pow(2).mean().sqrt().item()

    out = {}
    for name in ("denoising", "energy"):
        torch.manual_seed(0)
        dit = WorldDiT({"type": "discrete", "n": 3}, latent_channels=C, dim=32, depth=2, heads=2, context_frames=W_)
        opt = torch.optim.Adam(dit.parameters(), lr=2e-3)
        for i in range(150):
            gi = torch.Generator().manual_seed(100 + i)
            zi = torch.randn(z.shape, generator=gi)
            if name == "energy":
                loss = edm.energy_loss(dit, zi, acts, has, zeros, zeros.bool(), has, generator=gi)[0]
            else:
                loss = edm.loss(dit, zi, acts, has, zeros, zeros.bool(), has, generator=gi, teacher_forcing=True)[0]
            opt.zero_grad()
            loss.backward()
            opt.step()
        out[name] = spread(dit)
    # two independent real frames differ by RMS sqrt(2) ~ 1.41
    assert out["denoising"] < 0.3 and out["energy"] > 0.7, out


def test_kmeans_codebook_finds_the_tiles_and_snap_returns_them():
    """Tokens scattered tightly around 6 points (a game's tiles): the 6-entry codebook finds the points, and
    snapping noisy latents gives back exactly the entries they came from."""
    g = torch.Generator().manual_seed(0)
    tiles = torch.randn(6, 4, generator=g) * 3
    which = torch.randint(6, (3000,), generator=g)
    tokens = tiles[which] + 0.02 * torch.randn(3000, 4, generator=g)
    cb = fit_codebook(tokens, 6, seed=1)
    d, idx = nearest(tiles, cb)
    assert d.max() < 0.01 and len(set(idx.tolist())) == 6  # one entry per tile, on it
    z = tokens[:2 * 3 * 5].reshape(2, 3, 5, 4).permute(0, 3, 1, 2)  # (B, C, h, w)
    snapped = snap(z, cb)
    expect = cb[idx][which[:30]].reshape(2, 3, 5, 4).permute(0, 3, 1, 2)  # each token's own tile's entry
    assert torch.equal(snapped, expect)
    again, index = snap(z, cb, index=True)  # and the entries' indices, for keep_off_map
    assert torch.equal(again, snapped) and torch.equal(index, idx[which[:30]].reshape(2, 3, 5))
    with pytest.raises(ValueError, match="at least that many tokens"):
        fit_codebook(tokens[:5], 6)


def test_extend_codebook_adds_entries_for_new_tiles_only_and_keeps_the_old_ones():
    """A codebook of 5 tiles and data that also shows 2 tiles it lacks: extend adds entries on the 2 new tiles,
    keeps the old entries and their order, and gives each new entry its nearest old entry's group; data with no
    new tile adds nothing."""
    from worldsim.codebook import extend_codebook

    g = torch.Generator().manual_seed(0)
    tiles = torch.randn(7, 4, generator=g) * 3
    cb = tiles[:5] + 0.01 * torch.randn(5, 4, generator=g)
    groups = torch.tensor([0, 0, 1, 2, 2])
    which = torch.randint(7, (2000,), generator=g)
    tokens = tiles[which] + 0.02 * torch.randn(2000, 4, generator=g)
    new_cb, new_groups, info = extend_codebook(cb, groups, tokens, 8, 0.5, 0.25)
    assert info["added"] == 2 and info["far_tokens"] == int((which >= 5).sum())
    assert torch.equal(new_cb[:5], cb) and torch.equal(new_groups[:5], groups)
    assert nearest(tiles[5:], new_cb[5:])[0].max() < 0.01  # one entry on each new tile
    np.testing.assert_array_equal(new_groups[5:].numpy(), groups[nearest(new_cb[5:], cb)[1]].numpy())
    same, _, none = extend_codebook(cb, None, tokens[which < 5], 8, 0.5, 0.25)
    assert none["added"] == 0 and torch.equal(same, cb)


def test_nearest_gives_cdists_distances_and_first_nearest_entries():
    g = torch.Generator().manual_seed(0)
    for n, k, c in ((81, 3917, 16), (300, 200, 4), (30, 26, 3), (7, 129, 5), (5, 5, 2)):
        cb = torch.randn(k, c, generator=g)
        cb[k // 2] = cb[1]  # a duplicate entry: the first of the two is the nearest
        tokens = torch.cat([cb[torch.randint(k, (n // 2,), generator=g)],
                            torch.randn(n - n // 2, c, generator=g)])
        ref = torch.cdist(tokens, cb).min(1)
        dist, idx = nearest(tokens, cb)
        assert torch.equal(dist, ref.values) and torch.equal(idx, ref.indices)
        assert not (idx == k // 2).any()
        cb.mul_(2.0)  # written in place: its kept rows are made again
        assert torch.equal(nearest(tokens, cb)[1], torch.cdist(tokens, cb).min(1).indices)


def test_entry_index_finds_entries_and_follows_a_codebook_written_in_place():
    """entry_index gives each snapped token its entry and any other token its nearest; the hash keys it keeps
    per codebook tensor are made again after the codebook is written in place, and a codebook made in
    inference mode (no version counter) works too."""
    from worldsim.codebook import _KEPT, _sorted_keys, entry_index

    g = torch.Generator().manual_seed(0)
    cb = torch.randn(40, 4, generator=g)
    which = torch.randint(40, (25,), generator=g)
    off = cb[which[:5]] + 0.01 * torch.randn(5, 4, generator=g)  # near an entry, not one
    tokens = torch.cat([cb[which], off])
    expect = torch.cat([which, nearest(off, cb)[1]])
    assert torch.equal(entry_index(tokens, cb), expect)
    assert torch.equal(entry_index(tokens, cb), expect)  # from the kept keys
    cb[which[0]] = 10.0  # written in place: that entry is elsewhere now, every other lookup the same
    got = entry_index(tokens, cb)
    keys = _KEPT[(_sorted_keys.__name__, id(cb))]
    assert keys[0]() is cb and keys[1] == cb._version  # made again for the written codebook
    moved = which == which[0]
    assert torch.equal(got[:25][~moved], which[~moved]) and not (got[:25][moved] == which[0]).any()
    assert torch.equal(entry_index(cb[which[:3]], cb), which[:3])
    with torch.inference_mode():
        c2 = torch.randn(40, 4, generator=g)
        assert torch.equal(entry_index(c2[which], c2), which)


def reset_from_start(b: Bundle, sims: list, seed: int):
    """Reset each simulator to the bundle's first start state with the same context noise. Returns the rng the
    steps draw from next, and the committed history, its actions and has_action that a full recompute reads."""
    rng = np.random.default_rng(seed)
    ctx_noise = rng.standard_normal((1, W, *sims[0].latent_shape))
    ctx, ctx_a = b.start_frames[:1].numpy(), b.start_actions[:1, :W - 1].numpy()
    z0 = [s.reset([0], ctx, ctx_a, ctx_noise) for s in sims][0]
    hist = z0 + sims[0].context_noise * torch.as_tensor(ctx_noise, dtype=torch.float32)
    has = torch.ones(1, W, dtype=torch.bool)
    has[0, 0] = False
    return rng, hist, np.concatenate([[0], ctx_a[0]])[None], has


def test_snap_shows_and_commits_codebook_tokens(patch_bundle, random_bundle, tmp_path):
    """snap: every token of every generated frame is a codebook entry; the frame shown is the decode of those
    tokens, the context keeps them (context-noised as always), and the cached rollout equals recomputing the
    whole history from them and snapping its sample. Without snap the samples are not codebook entries."""
    import shutil
    shutil.copytree(patch_bundle.path, tmp_path / "p")
    tokens = frame_tokens(patch_bundle.codec, patch_bundle.start_frames.numpy().reshape(-1, 32, 32, 3))
    with_codebook(tmp_path / "p", fit_codebook(tokens, 12), {"entries": 12})
    b = Bundle(tmp_path / "p")
    assert b.codebook.shape == (12, 4) and b.meta["decode"]["snap"]
    sim, off = WorldSimulator(b, 1, sampling_steps=2), WorldSimulator(b, 1, sampling_steps=2, snap=False)
    assert sim.snap and not off.snap  # the bundle's default, and the override
    rng, hist, acts, has = reset_from_start(b, [sim, off], 7)
    shape = sim.latent_shape
    entries = {tuple(e.tolist()) for e in b.codebook}
    for step in range(2 * W + 1):
        a = np.array([(5 * step + 2) % 17])
        noise, cn = rng.standard_normal((1, *shape)), rng.standard_normal((1, *shape))
        res, res_off = sim.step(a, noise, cn), off.step(a, noise, cn)
        acts = np.concatenate([acts, a[None]], axis=1)
        has = torch.cat([has, torch.ones(1, 1, dtype=torch.bool)], dim=1)
        sample = full_recompute(b, hist, acts, has, torch.as_tensor(noise, dtype=torch.float32), 2)
        assert {tuple(t.tolist()) for t in res.latents[0].flatten(1).T} <= entries
        torch.testing.assert_close(res.latents, snap(sample, b.codebook), rtol=0, atol=0)  # same entries
        np.testing.assert_array_equal(res.frames, b.codec.decode(res.latents).numpy())
        torch.testing.assert_close(sim.prev_ctx, res.latents + sim.context_noise * torch.as_tensor(cn, dtype=torch.float32))
        if step == 0:  # same context: the unsnapped sample is the one that was snapped
            torch.testing.assert_close(snap(res_off.latents, b.codebook), res.latents, rtol=0, atol=0)
        assert not {tuple(t.tolist()) for t in res_off.latents[0].flatten(1).T} & entries
        hist = torch.cat([hist, sim.prev_ctx[:, None]], 1)
    with pytest.raises(ValueError, match="codebook"):
        WorldSimulator(random_bundle, 1, snap=True)  # no codebook to snap to
    with pytest.raises(ValueError, match="patch"):
        with_codebook(random_bundle.path, torch.zeros(8, 4), {})  # a VAE's latent cells are not tiles


def test_sample_snap_draws_groups_as_the_head_says_and_the_nearest_entry_within():
    """sample_snap: a token the head is sure of (top group above `certain`) gets its nearest entry; the others get
    a group drawn with the head's probabilities (inverse CDF of the caller's noise) and that group's nearest
    entry. Checked with a head whose probabilities are fixed: 0.5 / 0.3 / 0.2."""
    torch.manual_seed(0)
    codebook = torch.randn(30, 4)
    groups = torch.arange(30) % 3
    head = TokenHead(8, 4, 3, hidden=4)
    torch.nn.init.zeros_(head.net[-1].weight)
    head.net[-1].bias.data = torch.tensor([0.5, 0.3, 0.2]).log()
    z, feats = torch.randn(40, 4, 8, 8), torch.randn(40, 64, 8)
    noise = torch.randn(40, 8, 8)
    drawn = sample_snap(z, feats, codebook, groups, head, noise, certain=0.6)  # 0.5 < 0.6: every token drawn
    idx = nearest(drawn.permute(0, 2, 3, 1).reshape(-1, 4), codebook)[1]
    freq = torch.bincount(groups[idx], minlength=3).float() / len(idx)
    assert torch.allclose(freq, torch.tensor([0.5, 0.3, 0.2]), atol=0.03), freq
    tok = z.permute(0, 2, 3, 1).reshape(-1, 4)
    d = torch.cdist(tok, codebook)
    within = d.masked_fill(groups[None] != groups[idx][:, None], float("inf")).argmin(1)
    assert torch.equal(idx, within)  # the drawn group's nearest entry
    u = 0.5 * (1 + torch.erf(noise.reshape(-1) / 2 ** 0.5))  # the draw is the noise's: group 0 below u = 0.5
    assert torch.equal(groups[idx] == 0, u < 0.5)
    sure = sample_snap(z, feats, codebook, groups, head, noise, certain=0.4)  # 0.5 > 0.4: none drawn
    assert torch.equal(sure, snap(z, codebook))
    assert torch.equal(drawn, sample_snap(z, feats, codebook, groups, head, noise, certain=0.6))  # same noise, same draw


def test_snap_sample_in_the_simulator_matches_a_full_recompute(patch_bundle, tmp_path):
    """snap="sample": each step's tokens are sample_snap of the full recompute's one-step sample with that pass's
    features and the step's noise; every token is an entry; other noise draws other tokens; a bundle without a
    head, or more sampling steps, get clear errors."""
    import shutil
    shutil.copytree(patch_bundle.path, tmp_path / "p")
    tokens = frame_tokens(patch_bundle.codec, patch_bundle.start_frames.numpy().reshape(-1, 32, 32, 3))
    codebook = fit_codebook(tokens, 12)
    with_codebook(tmp_path / "p", codebook, {"entries": 12})
    with pytest.raises(ValueError, match="token head"):
        WorldSimulator(Bundle(tmp_path / "p"), 1, sampling_steps=1, snap="sample")
    torch.manual_seed(0)
    head = TokenHead(patch_bundle.dit.config.dim, 4, 3, hidden=16)
    head.net[-1].weight.data *= 30  # a head sure of some tokens and not of others
    groups = nearest(codebook, fit_codebook(codebook, 3))[1]
    with_codebook(tmp_path / "p", codebook, {"entries": 12, "head": {"groups": 3, "hidden": 16, "certain": 0.7}},
                  "sample", head, groups)
    b = Bundle(tmp_path / "p")
    assert b.meta["decode"]["snap"] == "sample" and torch.equal(b.codebook_groups, groups)
    sim = WorldSimulator(b, 1, sampling_steps=1, guidance=1.0)
    other = WorldSimulator(b, 1, sampling_steps=1, guidance=1.0)
    assert sim.snap == "sample" and sim.certain == 0.7
    rng, hist, acts, has = reset_from_start(b, [sim, other], 3)
    shape = sim.latent_shape
    entries = {tuple(e.tolist()) for e in b.codebook}
    differ = 0
    for step in range(W + 2):
        a = np.array([(3 * step + 1) % 17])
        noise, cn = rng.standard_normal((1, *shape)), rng.standard_normal((1, *shape))
        res = sim.step(a, noise, cn)
        differ += int(not torch.equal(other.step(a, -noise, cn).latents, res.latents))
        acts = np.concatenate([acts, a[None]], axis=1)
        has = torch.cat([has, torch.ones(1, 1, dtype=torch.bool)], dim=1)
        keep = {}
        sample = full_recompute(b, hist, acts, has, torch.as_tensor(noise, dtype=torch.float32), 1, keep=keep)
        want = sample_snap(sample, keep["features"], b.codebook, b.codebook_groups, b.token_head,
                           torch.as_tensor(noise, dtype=torch.float32)[:, 0], 0.7)
        assert {tuple(t.tolist()) for t in res.latents[0].flatten(1).T} <= entries
        torch.testing.assert_close(res.latents, want, rtol=0, atol=0)
        hist = torch.cat([hist, sim.prev_ctx[:, None]], 1)
        other.prev, other.prev_ctx = sim.prev.clone(), sim.prev_ctx.clone()  # same history, other noise next step
    assert differ > 0  # the draw follows the noise
    with pytest.raises(ValueError, match="one-step"):
        WorldSimulator(b, 1, sampling_steps=2)
    with pytest.raises(ValueError, match="snap must be"):
        WorldSimulator(b, 1, sampling_steps=1, snap="smap")


def test_sampling_steps_must_be_a_whole_number(random_bundle):
    assert WorldSimulator(random_bundle, 1, sampling_steps=2.0).steps == 2  # 2.0 from a command line is 2
    for bad in (2.5, -1, True):
        with pytest.raises(ValueError, match="sampling_steps must be a whole number"):
            WorldSimulator(random_bundle, 1, sampling_steps=bad)


def _turning(degrees: float, forward: int = 0) -> dict:
    return {"camera": np.array([[0.0, degrees]], np.float32), "forward": np.array([forward])}


def test_view_memory_shows_the_first_view_again_after_a_full_turn(tmp_path):
    """A residual camera model whose network outputs zero turns its last view at every step, so after 360
    degrees in 12 turns its view is twelve times resampled with new ground repeated in from the edges. With
    a view memory of at least the 4 context frames + 12 turns, every cell comes from the oldest view that saw
    it: the last view is the first one again (latent and, with detail carry, the frame shown). A memory too
    short to hold the first view cannot. Views are kept from the SETTLE-th key-free step on (3, one more than
    these 3 context frames give), so the turn starts after one still step."""
    b = _zero_output_residual_warp(tmp_path / "rw", warp_kind="rotation")
    ctx = b.start_frames[:1].numpy()
    acts = {"camera": np.zeros((1, W - 1, 2), np.float32), "forward": np.zeros((1, W - 1), np.int64)}
    out = {}
    for mem in (0, 16, 8):
        sim = WorldSimulator(b, 1, sampling_steps=1, detail_carry=1.0, context_noise=0.0, view_memory=mem)
        shape = sim.latent_shape
        z = sim.reset([0], ctx, acts, np.zeros((1, W, *shape)))
        for turn in [0.0] + [30.0] * 12:
            res = sim.step(_turning(turn), np.zeros((1, *shape)), np.zeros((1, *shape)))
        out[mem] = (res.latents, res.frames[0].astype(int))
    first = ctx[0, -1].astype(int)
    torch.testing.assert_close(out[16][0], z[:, -1], rtol=0, atol=1e-4)
    assert np.abs(out[16][1] - first).max() <= 1  # rounding
    for mem in (0, 8):
        assert (out[mem][0] - z[:, -1]).abs().mean() > 0.05 and np.abs(out[mem][1] - first).mean() > 3


def test_view_memory_is_cleared_by_a_key_and_off_without_turns(tmp_path):
    """A key pressed on every step (walking) clears the memory before it is read: the rollout is exactly the
    one without memory. The same rollout turning only (no key) reads the memory and differs."""
    b = _random_bundle(tmp_path / "rw", warp=True, residual=True, warp_kind="rotation")
    acts = {"camera": np.zeros((2, W - 1, 2), np.float32), "forward": np.zeros((2, W - 1), np.int64)}
    rng = np.random.default_rng(0)
    for forward, same in ((1, True), (0, False)):
        lat = []
        for mem in (0, 8):
            sim = WorldSimulator(b, 2, sampling_steps=1, view_memory=mem)
            shape = sim.latent_shape
            r = np.random.default_rng(1)
            sim.reset([0, 1], b.start_frames.numpy(), acts, r.standard_normal((2, W, *shape)))
            steps = []
            for i in range(6):
                a = {"camera": np.array([[0.0, 25.0], [-10.0, -25.0]], np.float32) * (1 if i < 3 else -1),
                     "forward": np.array([forward, forward])}
                steps.append(sim.step(a, r.standard_normal((2, *shape)), r.standard_normal((2, *shape))).frames)
            lat.append(np.stack(steps))
        assert np.array_equal(lat[0], lat[1]) == same
    del rng


def test_view_memory_needs_a_camera_rotation_model(random_bundle, tmp_path):
    with pytest.raises(ValueError, match="view_memory needs a world model"):
        WorldSimulator(random_bundle, 1, view_memory=8)
    with pytest.raises(ValueError, match="view_memory needs a world model"):  # a camera model warping by shifts
        WorldSimulator(_random_bundle(tmp_path / "s", warp=True, residual=True), 1, view_memory=8)
    rot = _random_bundle(tmp_path / "r", warp=True, residual=True, warp_kind="rotation")
    for bad in (-1, 2.5, True, "x"):
        with pytest.raises((ValueError, TypeError), match="view_memory"):
            WorldSimulator(rot, 1, view_memory=bad)
    assert WorldSimulator(rot, 1, view_memory=0).memory is None and WorldSimulator(rot, 1).memory is None


def test_view_memory_rows_are_their_own(tmp_path):
    """Each batch row has its own memory: a key pressed in one row clears only that row's, and resetting a row
    (the vector env's autoreset) starts only that row's again."""
    b = _random_bundle(tmp_path / "r", warp=True, residual=True, warp_kind="rotation")
    sim = WorldSimulator(b, 2, sampling_steps=1, view_memory=8)
    shape = sim.latent_shape
    acts = {"camera": np.zeros((2, W - 1, 2), np.float32), "forward": np.zeros((2, W - 1), np.int64)}
    rng = np.random.default_rng(0)
    sim.reset([0, 1], b.start_frames.numpy(), acts, rng.standard_normal((2, W, *shape)))

    def step(forward):
        sim.step({"camera": np.array([[0.0, 10.0], [0.0, -10.0]], np.float32), "forward": np.array(forward)},
                 rng.standard_normal((2, *shape)), rng.standard_normal((2, *shape)))
    for _ in range(4):
        step([0, 0])
    held = (sim.memory.age >= 0).sum(1)
    assert (held >= 2).all(), held  # turning: views from several directions
    step([1, 0])
    assert (sim.memory.age[0] >= 0).sum() == 0 and (sim.memory.age[1] >= 0).sum() == held[1] + 1
    for _ in range(4):
        step([0, 0])
    before = sim.memory.age[0].clone()
    sim.reset([1], b.start_frames[1:].numpy(), {k: v[1:] for k, v in acts.items()}, rng.standard_normal((1, W, *shape)))
    assert torch.equal(sim.memory.age[0], before) and (sim.memory.age[1] >= 0).sum() <= 1


def test_seed_snap_seeds_one_revealed_cell_of_a_uniform_frame_only():
    """seed_snap: nearest snap everywhere, except on a frame whose commonest group holds `floor` of its tokens
    and whose action reveals cells: there the revealed cell the head is least sure of takes an entry of a group
    other than the head's likeliest. Varied frames, and frames whose action reveals nothing, are nearest snap."""
    torch.manual_seed(0)
    codebook = torch.randn(30, 4)
    groups = torch.arange(30) % 3
    head = TokenHead(8, 4, 3, hidden=4)
    torch.nn.init.zeros_(head.net[-1].weight)
    head.net[-1].bias.data = torch.tensor([0.5, 0.3, 0.2]).log()  # unsure (0.5 < certain), likeliest group 0
    uniform = codebook[groups == 0][:1].repeat(9, 1)  # one entry of group 0 (the head's likeliest) at every cell
    varied = codebook[:9]  # groups 0, 1, 2, 0, ...
    z = torch.stack([uniform, varied, uniform]).reshape(3, 3, 3, 4).permute(0, 3, 1, 2) + 0.01 * torch.randn(3, 4, 3, 3)
    feats, noise = torch.randn(3, 9, 8), torch.randn(3, 3, 3)
    reveal = torch.zeros(3, 3, 3, dtype=torch.bool)
    reveal[:2, :, 0] = True  # frames 0 and 1: the left column is new ground; frame 2: a step revealing nothing
    out = seed_snap(z, feats, codebook, groups, head, noise, 0.9, reveal, floor=0.8)
    near = snap(z, codebook)
    assert torch.equal(out[1:], near[1:])
    changed = (out[0] != near[0]).any(0)
    assert changed.sum() == 1 and changed[:, 0].any()  # one cell, in the revealed column
    cell = out[0][:, changed].T
    assert groups[nearest(cell, codebook)[1]].item() != 0  # not the head's likeliest group
    assert torch.equal(seed_snap(z, feats, codebook, groups, head, noise, 0.9, reveal, floor=1.01), near)
    assert torch.equal(seed_snap(z, feats, codebook, groups, head, noise, 0.4, reveal, floor=0.8), near)  # head sure


def test_seed_floor_needs_nearest_snap_a_head_and_the_reveal_table(patch_bundle, tmp_path):
    import shutil
    shutil.copytree(patch_bundle.path, tmp_path / "p")
    tokens = frame_tokens(patch_bundle.codec, patch_bundle.start_frames.numpy().reshape(-1, 32, 32, 3))
    codebook = fit_codebook(tokens, 12)
    torch.manual_seed(0)
    head = TokenHead(patch_bundle.dit.config.dim, 4, 3, hidden=16)
    groups = nearest(codebook, fit_codebook(codebook, 3))[1]
    with_codebook(tmp_path / "p", codebook, {"entries": 12, "head": {"groups": 3, "hidden": 16}}, True, head, groups)
    b = Bundle(tmp_path / "p")
    with pytest.raises(ValueError, match="reveal table"):
        WorldSimulator(b, 1, sampling_steps=1, seed_floor=0.7)
    b.env["reveal"] = {"1": [[0, 0], [1, 0]]}
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="seed_floor must be"):
            WorldSimulator(b, 1, sampling_steps=1, seed_floor=bad)
    with pytest.raises(ValueError, match="snap=true"):
        WorldSimulator(b, 1, sampling_steps=1, seed_floor=0.7, snap="sample")
    sim = WorldSimulator(b, 1, sampling_steps=1, seed_floor=0.7)
    assert sim.reveal[1, 0, 0] and sim.reveal[1, 1, 0] and sim.reveal.sum() == 2
    assert WorldSimulator(b, 1, sampling_steps=1).reveal is None  # off unless the bundle or the caller asks


def _map_views(world, pos, h=7, w=7):
    """The (1, C, h, w) view of a (C, H, W) world latent map whose corner is at pos (row, col)."""
    return world[:, pos[0]:pos[0] + h, pos[1]:pos[1] + w][None].clone()


MAP = {"region": [[0, 6], [0, 7]], "moves": {"1": [0, -1], "2": [0, 1], "3": [-1, 0], "4": [1, 0]}, "fixed": [[2, 3]]}


def test_map_memory_shows_ground_that_scrolls_back_and_tracks_blocked_moves():
    """MapMemory on a synthetic world: a view scrolled by a move, whose new column the 'model' made up, keeps
    what it made up where the memory has not seen that ground, and gets the ground it showed before where it has
    (exactly); a move whose frame did not scroll (blocked) does not move the memory; the fixed cell (the
    player) is never filled; a cleared row fills nothing."""
    from worldsim.simulator import MapMemory
    torch.manual_seed(0)
    world = torch.randn(4, 30, 30)
    mem = MapMemory(MAP, 17, 1, (4, 7, 7), "cpu")
    pos = [10, 10]
    start = _map_views(world, pos)
    mem.start([0], start[:, None], torch.zeros(1, 1, dtype=torch.long))
    prev = start

    def step(action, dpos, made_up):
        nonlocal prev
        pos[0] += dpos[0]
        pos[1] += dpos[1]
        z = _map_views(world, pos)
        z[:, :, made_up[0], made_up[1]] = 100.0  # the model's guess for the ground the move brings in
        z[:, :, 2, 3] = -7.0  # the player's tile: not the map's
        out = mem.step([0], z, prev, torch.tensor([action]))
        prev = out
        return out
    out = step(2, (0, 1), (slice(0, 6), 6))  # right: the new right column was never seen
    assert (out[0, :, :6, 6] == 100.0).all() and not mem.filled.any()
    assert mem.pos[0].tolist() == [0, 1]  # the start's corner is the origin
    out = step(1, (0, -1), (slice(0, 6), 0))  # back left: the left column was in the first view
    assert torch.equal(out[0, :, :6, 0], world[:, 10:16, 10])
    # and the ground the player stood on, which the first view showed beside it (below)
    assert mem.filled[0, :6, 0].all() and mem.filled[0, 2, 4] and mem.filled.sum() == 7
    assert torch.equal(out[0, :, 2, 3], torch.full((4,), -7.0))  # the player's tile is the model's
    blocked = prev + 0.01 * torch.randn_like(prev)  # a move whose frame stayed: blocked
    assert not mem.scrolled(blocked, prev, torch.tensor([3]))[0]
    p = mem.pos.clone()
    mem.step([0], blocked, prev, torch.tensor([3]))
    assert torch.equal(mem.pos, p) and not mem.filled.any()
    out = step(2, (0, 1), (slice(0, 6), 6))  # right again; then the row is cleared (a reset)
    mem.clear([0])
    prev = mem.step([0], out, out, torch.tensor([0]))
    out = step(1, (0, -1), (slice(0, 6), 0))  # seen before the clear only: the model's guess stays
    assert (out[0, :, :6, 0] == 100.0).all() and not mem.filled.any()
    z = _map_views(world, [10, 11])
    out = mem.step([0], z, out, torch.tensor([2]))  # seen since the clear: it shows what it showed then
    assert (out[0, :, :6, 6] == 100.0).all() and mem.filled[0, :6, 6].all() and mem.filled[0, 2, 2]
    assert mem.filled.sum() == 7


def test_map_memory_shows_the_ground_the_player_left():
    """The cell the player's sprite covered comes back from memory once the player leaves it, whatever the model
    made up there: the ground it showed before the player stepped onto it. Ground under the player that the memory
    never saw (the start's own tile) stays the model's, and a blocked move uncovers nothing."""
    from worldsim.simulator import MapMemory
    torch.manual_seed(0)
    world = torch.randn(4, 30, 30)
    mem = MapMemory(MAP, 17, 1, (4, 7, 7), "cpu")
    start = _map_views(world, [10, 10])
    mem.start([0], start[:, None], torch.zeros(1, 1, dtype=torch.long))
    assert mem.uncovered_cells(torch.tensor([[0, 1]]))[0].nonzero().tolist() == [[2, 2]]  # right: the left cell
    assert mem.uncovered_cells(torch.tensor([[1, 0]]))[0].nonzero().tolist() == [[1, 3]]  # down: the cell above
    assert not mem.uncovered_cells(torch.tensor([[0, 0]])).any()

    def step(z_pos, action, prev):
        z = _map_views(world, z_pos)
        z[:, :, 2, 3] = -7.0  # the player's tile
        z[:, :, 2, 2] = z[:, :, 2, 4] = z[:, :, 1, 3] = z[:, :, 3, 3] = 55.0  # the model's guess around the player
        return mem.step([0], z, prev, torch.tensor([action]))
    out = step([10, 11], 2, start)  # right, onto ground the start showed at (2, 4); off the start's own tile
    assert torch.equal(out[0, :, 2, 2], torch.full((4,), 55.0)) and not mem.filled[0, 2, 2]  # never seen: the model's
    out = step([10, 10], 1, out)  # back left: the ground the player stood on is the start's (2, 4)
    assert mem.filled[0, 2, 4] and torch.equal(out[0, :, 2, 4], start[0, :, 2, 4])
    step([10, 10], 3, out)  # up, but the frame stayed: blocked, nothing uncovered
    assert not mem.filled.any()


def test_map_memory_keeps_no_mobile_entries():
    """With mobile entries (things that move), a cell showing one is not kept as ground: when the view scrolls
    back to that place it shows what the memory held there before the mob, not the mob."""
    from worldsim.simulator import MapMemory
    torch.manual_seed(0)
    world = torch.randn(4, 30, 30)
    mob = torch.full((4,), 9.0)
    codebook = torch.cat([world.flatten(1).T, mob[None]])  # every place's latent, and the mob's
    mem = MapMemory(MAP, 17, 1, (4, 7, 7), "cpu", mobile=(codebook, torch.tensor([len(codebook) - 1])))
    start = _map_views(world, [10, 10])
    mem.start([0], start[:, None], torch.zeros(1, 1, dtype=torch.long))
    z = start.clone()
    z[0, :, 0, 6] = mob  # a mob drawn at the right edge, standing still
    out = mem.step([0], z, start, torch.tensor([0]))
    assert torch.equal(out[0, :, 0, 6], mob)  # shown as drawn
    z = _map_views(world, [10, 9])  # left: the mob's place leaves the view ...
    out = mem.step([0], z, out, torch.tensor([1]))
    z = _map_views(world, [10, 10])
    z[0, :, 0, 6] = 55.0  # ... and back: the model makes that place up
    out = mem.step([0], z, out, torch.tensor([2]))
    assert mem.filled[0, 0, 6] and torch.equal(out[0, :, 0, 6], world[:, 10, 16])  # the ground held before the mob
    plain = MapMemory(MAP, 17, 1, (4, 7, 7), "cpu")  # without: the mob comes back
    plain.start([0], start[:, None], torch.zeros(1, 1, dtype=torch.long))
    z = start.clone()
    z[0, :, 0, 6] = mob
    out = plain.step([0], z, start, torch.tensor([0]))
    out = plain.step([0], _map_views(world, [10, 9]), out, torch.tensor([1]))
    out = plain.step([0], _map_views(world, [10, 10]), out, torch.tensor([2]))
    assert torch.equal(out[0, :, 0, 6], mob)


def test_mobile_entries_are_the_tiles_that_move(patch_bundle):
    """codebook.mobile_entries on frames where one white tile walks back and forth over still, coloured ground:
    the entries of the tokens where it stands change on every step (it leaves), so they are mobile; the entries of
    ground it never reaches never change, so they are not."""
    from worldsim.codebook import encode_frames, mobile_entries, nearest
    rng = np.random.default_rng(0)
    ground = rng.integers(0, 200, (4, 4, 3)).repeat(8, 0).repeat(8, 1).astype(np.uint8)  # 32 x 32, 8-px tiles
    frames = np.stack([ground.copy() for _ in range(12)])
    for t in range(12):  # the mob alternates between two cells of the last column
        r = 0 if t % 2 == 0 else 2
        frames[t, r * 8:(r + 1) * 8, 24:32] = 255
    ep = {"frames": frames, "actions": np.zeros(11, np.int64)}
    codec = patch_bundle.codec
    z = encode_frames(codec, frames)
    codebook = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    desc = {"region": [[0, 4], [0, 4]], "moves": {"1": [0, -1], "2": [0, 1], "3": [-1, 0], "4": [1, 0]},
            "fixed": [[3, 0]]}
    entries, info = mobile_entries(codec, codebook, [ep], desc, 5, share=0.2, min_seen=1)
    idx = nearest(codebook, codebook)[1].view(12, 4, 4)
    on_mob = {int(idx[t, 0 if t % 2 == 0 else 2, 3]) for t in range(11)}
    far = {int(idx[t, r, 0]) for t in range(11) for r in range(3)}  # column 0, never reached
    assert on_mob <= set(entries.tolist()) and not far & set(entries.tolist())
    assert info["entries"] == entries.tolist() and 0 < info["token_share"] < 1


def test_map_memory_needs_the_map_description_and_a_tile_autoencoder(random_bundle, patch_bundle):
    with pytest.raises(ValueError, match="map_memory must be"):
        WorldSimulator(patch_bundle, 1, map_memory="yes")
    with pytest.raises(ValueError, match="env.map"):
        WorldSimulator(patch_bundle, 1, map_memory=True)
    for b, desc, match in ((random_bundle, {"region": [[0, 2], [0, 2]], "moves": {"1": [0, 1]}}, "tile autoencoder"),
                           (patch_bundle, {"region": [[0, 9], [0, 4]], "moves": {"1": [0, 1]}}, "does not fit"),
                           (patch_bundle, {"moves": {"1": [0, 1]}}, "region"),
                           (patch_bundle, {"region": [[0, 4], [0, 4]], "moves": {"40": [0, 1]}}, "moves"),
                           (patch_bundle, {"region": [[0, 4], [0, 4]], "moves": {"1": [0, 2]}}, "moves")):
        b.env["map"] = desc
        try:
            with pytest.raises(ValueError, match=match):
                WorldSimulator(b, 1, map_memory=True)
        finally:
            del b.env["map"]
    assert WorldSimulator(patch_bundle, 1).map is None  # off unless asked for (or the bundle's default)


def test_map_memory_rows_are_their_own(patch_bundle):
    """A batch of two: a reset of one row clears its map memory and leaves the other's as it was."""
    patch_bundle.env["map"] = {"region": [[0, 4], [0, 4]], "moves": {"1": [0, -1], "2": [0, 1]}, "fixed": []}
    try:
        sim = WorldSimulator(patch_bundle, 2, sampling_steps=1, map_memory=True)
        rng = np.random.default_rng(0)
        shape = sim.latent_shape
        frames = rng.integers(0, 256, (2, W, 32, 32, 3), dtype=np.uint8)
        sim.reset(range(2), frames, np.zeros((2, W - 1), np.int64), rng.standard_normal((2, W, *shape)))
        for a in ([1, 2], [2, 1], [1, 1]):
            sim.step(np.array(a), rng.standard_normal((2, *shape)), rng.standard_normal((2, *shape)))
        z0, at0, pos0 = sim.map.z[0].clone(), sim.map.at[0].clone(), sim.map.pos[0].clone()
        sim.reset([1], frames[1:], np.zeros((1, W - 1), np.int64), rng.standard_normal((1, W, *shape)))
        assert torch.equal(sim.map.z[0], z0) and torch.equal(sim.map.at[0], at0) and torch.equal(sim.map.pos[0], pos0)
        assert sim.map.pos[1].tolist() == [0, 0]  # the context had no moves
        held = (sim.map.at[1, ..., 0] > -2 ** 39).sum()
        assert held == 16  # only the context's view: one 4 x 4 grid
    finally:
        del patch_bundle.env["map"]


def test_terrain_context_reads_the_neighbours_the_scroll_puts_beside_new_ground():
    """terrain_context: for a scroll right (new column on the right) a new cell's neighbours are the cells to its
    left (one and two in), the inward cell's neighbours above and below, and the new cell above it; for a scroll
    up, the cells below it and the new cell to its left. Outside the view or on a fixed cell: none. The
    histogram counts only the view's map cells that are not new."""
    from worldsim.codebook import NEIGHBOURS, terrain_context
    assert NEIGHBOURS == ((1, 0), (2, 0), (1, -1), (1, 1), (0, -1))
    h, w, none = 4, 5, 99
    g = torch.arange(h * w).view(1, h, w).repeat(2, 1, 1)
    cells = torch.ones(h, w, dtype=torch.bool)
    cells[1, 3] = False  # a fixed cell (the player's)
    new = torch.zeros(2, h, w, dtype=torch.bool)
    new[0, :, 4] = True  # row 0: scrolled right, the right column is new
    new[1, 0, :] = True  # row 1: scrolled up, the top row is new
    near, hist = terrain_context(g, new, cells, torch.tensor([[0, 1], [-1, 0]]), none)
    assert near[0, 2, 4].tolist() == [g[0, 2, 3], g[0, 2, 2], none, g[0, 3, 3], g[0, 1, 4]]
    assert near[0, 0, 4].tolist() == [g[0, 0, 3], g[0, 0, 2], none, none, none]
    assert near[1, 0, 2].tolist() == [g[1, 1, 2], g[1, 2, 2], g[1, 1, 1], none, g[1, 0, 1]]
    assert near[1, 0, 0].tolist()[2] == none and near[1, 0, 0].tolist()[4] == none
    old = cells & ~new[0]
    assert torch.allclose(hist[0].sum(), torch.tensor(1.0)) and (hist[0] > 0).sum() == old.sum()
    assert hist[0, g[0, 0, 4]] == 0 and hist[0, g[0, 1, 3]] == 0 and hist[0, g[0, 0, 0]] == 1 / old.sum()


class _NextAlong(torch.nn.Module):
    """A stand-in prior with a rule to check the draw's mechanics by: each new cell is sure to be the group after
    the one before it along the strip (group 0 where there is none)."""
    groups = 6

    def forward(self, near, hist):
        prev = near[:, 4]
        nxt = torch.where(prev == self.groups, 0, (prev + 1) % self.groups)
        return torch.nn.functional.one_hot(nxt, self.groups).float() * 50


def test_draw_terrain_draws_only_fresh_cells_one_after_the_other_along_the_strip():
    """draw_terrain: the fresh cells of a scrolled row take entries of the groups the prior draws, cell after
    cell along the strip, each seeing the one drawn before it (the rule above: 0, 1, 2, ...); the entry is the
    drawn group's nearest to the model's estimate; other cells and rows keep z; a view under `floor` keeps z."""
    from worldsim.codebook import draw_terrain
    torch.manual_seed(0)
    codebook = torch.randn(24, 3)
    groups = torch.arange(24) % 6
    h, w = 4, 4
    z = codebook[torch.zeros(2, h, w, dtype=torch.long)].permute(0, 3, 1, 2).contiguous()  # one entry of group 0
    estimate = z + 0.01 * torch.randn_like(z)
    fresh = torch.zeros(2, h, w, dtype=torch.bool)
    fresh[0, :, 3] = True  # row 0 scrolled right: a new right column
    step = torch.tensor([[0, 1], [0, 0]])
    cells = torch.ones(h, w, dtype=torch.bool)
    out = draw_terrain(estimate, z, codebook, groups, _NextAlong(), torch.randn(2, h, w), fresh, step, cells)
    idx = nearest(out.permute(0, 2, 3, 1).reshape(-1, 3), codebook)[1].view(2, h, w)
    assert torch.equal(out[:, :, :, :3], z[:, :, :, :3]) and torch.equal(out[1], z[1])
    # the first new cell has the view's cell above it outside the view (none: group 0), then 1, 2, 3
    assert groups[idx[0, :, 3]].tolist() == [0, 1, 2, 3]
    for r in range(h):  # within its group, the entry nearest the estimate
        g = groups[idx[0, r, 3]]
        d = (codebook - estimate[0, :, r, 3]).pow(2).sum(1).masked_fill(groups != g, float("inf"))
        assert idx[0, r, 3] == d.argmin()
    fresh[0, 0, 3] = False  # a held cell at the strip's start: the next cell follows its group (0 -> 1)
    out = draw_terrain(estimate, z, codebook, groups, _NextAlong(), torch.randn(2, h, w), fresh, step, cells)
    idx = nearest(out.permute(0, 2, 3, 1).reshape(-1, 3), codebook)[1].view(2, h, w)
    assert groups[idx[0, :, 3]].tolist() == [0, 1, 2, 3] and torch.equal(out[0, :, 0, 3], z[0, :, 0, 3])
    varied = z.clone()
    varied[0, :, 0, :2] = codebook[[1, 2]].T  # 2 of the 12 old cells in other groups: 10/12 in the commonest
    assert torch.equal(draw_terrain(estimate, varied, codebook, groups, _NextAlong(), torch.randn(2, h, w), fresh,
                                    step, cells, floor=0.9), varied)
    assert not torch.equal(draw_terrain(estimate, varied, codebook, groups, _NextAlong(), torch.randn(2, h, w),
                                        fresh, step, cells, floor=0.8), varied)


def test_terrain_prior_learns_the_odds_of_new_ground():
    """fit_terrain_prior on examples where new ground copies its inward neighbour 70 % of the time and is
    group 5 otherwise: the prior's probabilities come out near those odds (calibrated, not the likeliest
    group every time, which is what froze the world into grass)."""
    from worldsim.codebook import fit_terrain_prior
    g = torch.Generator().manual_seed(0)
    n, G = 20000, 6
    inward = torch.randint(0, 5, (n,), generator=g)
    y = torch.where(torch.rand(n, generator=g) < 0.7, inward, 5)
    near = torch.stack([inward, torch.randint(0, G + 1, (n,), generator=g), torch.full((n,), G),
                        torch.full((n,), G), torch.full((n,), G)], 1)
    hist = torch.full((n, G), 1 / G)
    prior, info = fit_terrain_prior(near, hist, y, G, steps=400, hidden=32)
    assert info["held_accuracy"] > 0.6 and info["held_accuracy_inward"] < info["held_accuracy"] + 0.05
    with torch.no_grad():
        p = prior(near[:500], hist[:500]).softmax(-1)
    assert abs(float(p[torch.arange(500), inward[:500]].mean()) - 0.7) < 0.05
    assert abs(float(p[:, 5].mean()) - 0.3) < 0.05


def test_map_memory_draws_only_ground_it_never_held():
    """MapMemory.step's draw: called on a scroll with the cells it brought into view that the memory never held
    (its result kept and remembered), not for ground it shows again, not on a blocked move."""
    from worldsim.simulator import MapMemory
    torch.manual_seed(0)
    world = torch.randn(4, 30, 30)
    mem = MapMemory(MAP, 17, 1, (4, 7, 7), "cpu")
    start = _map_views(world, [10, 10])
    mem.start([0], start[:, None], torch.zeros(1, 1, dtype=torch.long))
    calls = []

    def draw(z, fresh, step):
        calls.append((fresh.clone(), step.clone()))
        z = z.clone()
        z[:, :, fresh[0]] = 55.0
        return z
    z = _map_views(world, [10, 11])
    out = mem.step([0], z, start, torch.tensor([2]), draw=draw)  # right: the new column is unseen
    assert len(calls) == 1 and calls[0][1].tolist() == [[0, 1]]
    assert calls[0][0][0, :6, 6].all() and calls[0][0].sum() == 6 and (out[0, :, :6, 6] == 55.0).all()
    back = mem.step([0], _map_views(world, [10, 10]), out, torch.tensor([1]), draw=draw)  # left: seen before
    assert len(calls) == 1 and torch.equal(back[0, :, :6, 0], world[:, 10:16, 10])
    again = mem.step([0], _map_views(world, [10, 11]), back, torch.tensor([2]), draw=draw)  # right: drawn before
    assert len(calls) == 1 and (again[0, :, :6, 6] == 55.0).all()
    mem.step([0], again + 0.01 * torch.randn_like(again), again, torch.tensor([2]), draw=draw)  # blocked
    assert len(calls) == 1


def test_new_ground_needs_map_memory_nearest_snap_and_a_terrain_prior(patch_bundle, tmp_path, monkeypatch):
    import shutil
    shutil.copytree(patch_bundle.path, tmp_path / "p")
    tokens = frame_tokens(patch_bundle.codec, patch_bundle.start_frames.numpy().reshape(-1, 32, 32, 3))
    codebook = fit_codebook(tokens, 12)
    groups = nearest(codebook, fit_codebook(codebook, 3))[1]
    from worldsim.codebook import TerrainPrior
    with_codebook(tmp_path / "p", codebook, {"entries": 12, "terrain": {"groups": 3, "hidden": 8}}, True,
                  groups=groups, terrain=TerrainPrior(3, 8))
    b = Bundle(tmp_path / "p")
    assert b.terrain_prior is not None and b.token_head is None
    b.env["map"] = {"region": [[0, 4], [0, 4]], "moves": {"1": [0, -1], "2": [0, 1]}, "fixed": []}
    with pytest.raises(ValueError, match="new_ground must be"):
        WorldSimulator(b, 1, new_ground="draw")
    with pytest.raises(ValueError, match="terrain_floor must be"):
        WorldSimulator(b, 1, terrain_floor=1.5)
    with pytest.raises(ValueError, match="map_memory"):
        WorldSimulator(b, 1, new_ground="terrain")
    with pytest.raises(ValueError, match="map_memory"):
        WorldSimulator(b, 1, new_ground="terrain", map_memory=True, snap=False)
    import worldsim.simulator as simulator
    drawn = []
    plain = simulator.draw_terrain

    def spy(*args, **kw):
        drawn.append(int(args[6].sum()))  # the fresh cells
        return plain(*args, **kw)
    monkeypatch.setattr(simulator, "draw_terrain", spy)
    sim = WorldSimulator(b, 1, new_ground="terrain", map_memory=True)
    # this untrained model's frames do not scroll; every move is taken as scrolled, so new ground comes in
    monkeypatch.setattr(sim.map, "scrolled", lambda z, prev, a: (sim.map.move[a] != 0).any(-1))
    rng = np.random.default_rng(0)
    shape = sim.latent_shape
    sim.reset([0], rng.integers(0, 256, (1, W, 32, 32, 3), dtype=np.uint8), np.zeros((1, W - 1), np.int64),
              rng.standard_normal((1, W, *shape)))
    for a in (2, 2, 1, 2, 2, 2):
        sim.step(np.array([a]), rng.standard_normal((1, *shape)), rng.standard_normal((1, *shape)))
        tokens = sim.prev[0].flatten(1).T
        assert (tokens[:, None] == codebook[None]).all(-1).any(1).all()
    assert drawn == [4, 4, 4, 4], drawn  # each new column of 4 cells; not on the way back, nor on ground seen before
    assert WorldSimulator(b, 1, map_memory=True).new_ground == "nearest"  # off unless asked for
    plain = Bundle(patch_bundle.path)
    plain.env["map"] = b.env["map"]
    with pytest.raises(ValueError, match="terrain prior"):
        WorldSimulator(plain, 1, new_ground="terrain", map_memory=True, snap=False)


def test_keep_off_map_resnaps_the_players_sprites_off_the_map_cells():
    """keep_off_map: a token of a fixed-only group (the player's sprites) on a map cell takes the entry of
    another group nearest to the estimate; on a cell outside `cells` (the player's own) it stays, as do all
    other tokens."""
    from worldsim.codebook import keep_off_map
    torch.manual_seed(0)
    codebook = torch.randn(12, 3)
    groups = torch.arange(12) % 4
    z = codebook[torch.tensor([[[0, 1], [2, 3]]])].permute(0, 3, 1, 2).contiguous()  # groups 0 1 / 2 3
    estimate = z + 0.01 * torch.randn_like(z)
    cells = torch.ones(2, 2, dtype=torch.bool)
    cells[1, 1] = False
    out = keep_off_map(estimate, z, codebook, groups, torch.tensor([1, 3]), cells)
    # with snap's indices given, the same (the hash lookup of entry_index skipped)
    assert torch.equal(keep_off_map(estimate, z, codebook, groups, torch.tensor([1, 3]), cells,
                                    torch.tensor([[[0, 1], [2, 3]]])), out)
    assert torch.equal(out[0, :, 0, 0], z[0, :, 0, 0]) and torch.equal(out[0, :, 1, 0], z[0, :, 1, 0])
    assert torch.equal(out[0, :, 1, 1], z[0, :, 1, 1])  # group 3, but on the fixed cell
    i = nearest(out[0, :, 0, 1][None], codebook)[1]
    d = (codebook - estimate[0, :, 0, 1]).pow(2).sum(1).masked_fill((groups == 1) | (groups == 3), float("inf"))
    assert i == d.argmin() and groups[i] not in (1, 3)
    assert torch.equal(keep_off_map(estimate, z, codebook, groups, torch.tensor([], dtype=torch.long), cells), z)
