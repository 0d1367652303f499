"""World model behaviour: frame causality, sliding window, RoPE, action encoders, frame-size freedom."""
import copy

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import randomize

from worldsim.model import (ActionEncoder, ClockEncoder, Rotary3D, WorldDiT, actions_to_tensor, rotate_view,
                            shift_latents, space_to_spec)

SPEC = {"type": "discrete", "n": 5}


def tiny(window=3, spec=SPEC, seed=0):
    return randomize(WorldDiT(spec, latent_channels=4, patch_size=2, dim=32, depth=2, heads=2, context_frames=window),
                     seed=seed).eval()


def inputs(B=2, T=6, h=8, w=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, 4, h, w, generator=g)
    c = torch.rand(B, T, generator=g) * 1000
    a = torch.randint(0, 5, (B, T), generator=g)
    has = torch.ones(B, T, dtype=torch.bool)
    has[:, 0] = False
    return x, c, a, has


def test_later_frames_never_change_earlier_outputs():
    m = tiny(window=8)
    x, c, a, has = inputs()
    base = m(x, c, a, has)
    for k in range(1, 6):
        x2, c2, a2 = x.clone(), c.clone(), a.clone()
        x2[:, k:] += torch.randn_like(x2[:, k:])
        c2[:, k:] = 3.0
        a2[:, k:] = (a2[:, k:] + 1) % 5
        out = m(x2, c2, a2, has)
        torch.testing.assert_close(out.out[:, :k], base.out[:, :k], rtol=0, atol=1e-5)
        torch.testing.assert_close(out.reward[:, :k], base.reward[:, :k], rtol=0, atol=1e-5)
        assert (out.out[:, k] - base.out[:, k]).abs().max() > 1e-3  # the changed frame itself does change


def test_tokens_attend_within_their_frame():
    m = tiny()
    x, c, a, has = inputs(T=2)
    x2 = x.clone()
    x2[:, 1, :, :2, :2] += 1.0  # one patch of the last frame
    d = (m(x2, c, a, has).out[:, 1] - m(x, c, a, has).out[:, 1]).abs()
    assert d[:, :, 4:, 4:].max() > 1e-4  # a far patch of the same frame sees it


def test_sliding_window_forgets_frames_older_than_window():
    W = 2
    m = tiny(window=W)
    x, c, a, has = inputs(T=6)
    base = m(x, c, a, has).out
    x2 = x.clone()
    x2[:, 0] += 5.0
    out = m(x2, c, a, has).out
    # frames 1..W see frame 0 directly; frame W+1 and later only through intermediate frames' layer-1
    # states. With depth 2 influence reaches at most 2*W frames ahead; beyond that it must be exactly zero.
    assert (out[:, 1] - base[:, 1]).abs().max() > 1e-4
    torch.testing.assert_close(out[:, 2 * W + 1:], base[:, 2 * W + 1:], rtol=0, atol=1e-5)


def test_rope_time_is_exact_and_relative():
    rope = Rotary3D(32, time_period=4096)
    c1, s1 = rope(torch.arange(5), 2, 2)
    c2, s2 = rope(torch.arange(5) + 4096 * 1000, 2, 2)  # a whole number of periods later: identical
    assert torch.equal(c1, c2) and torch.equal(s1, s2)
    for t in (0, 3, 4095, 4097, 123_457):  # one frame's tables with the spatial part kept: the same values
        for h, w in ((2, 2), (3, 5), (2, 2)):
            assert all(torch.equal(u, v) for u, v in zip(rope.at_time(t, h, w), rope(torch.tensor([t]), h, w)))
    m = tiny(window=8)
    x, c, a, has = inputs(T=4)
    o1 = m(x, c, a, has, times=torch.arange(4)).out
    o2 = m(x, c, a, has, times=torch.arange(4) + 123_457).out  # only time differences matter
    torch.testing.assert_close(o1, o2, rtol=1e-4, atol=1e-4)


def test_apply_rope_rotates_each_pair_by_its_angle():
    """The complex-multiply RoPE gives the pair rotation (x1 cos - x2 sin, x1 sin + x2 cos) bit for bit, and a
    rotation keeps each pair's length."""
    from worldsim.kernels import apply_rope
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 10, 16, generator=g)
    ang = torch.randn(10, 8, generator=g) * 3
    got = apply_rope(x, ang.cos(), ang.sin())
    x1, x2 = x[..., 0::2], x[..., 1::2]
    want = torch.stack((x1 * ang.cos() - x2 * ang.sin(), x1 * ang.sin() + x2 * ang.cos()), -1).flatten(-2)
    assert torch.equal(got, want)
    torch.testing.assert_close(got.reshape(2, 3, 10, 8, 2).norm(dim=-1), x.reshape(2, 3, 10, 8, 2).norm(dim=-1))
    assert apply_rope(x.to(torch.bfloat16), ang.cos(), ang.sin()).dtype == torch.bfloat16


def test_cached_pass_outputs_leave_out_only_what_was_not_asked_for():
    """A sampling pass ("frame") and a commit pass ("heads") compute the same numbers as a full pass, minus the
    part their caller does not read; a bad choice is named."""
    m = tiny(window=3)
    x, c, a, has = inputs(B=2, T=1)
    got = {}
    for outputs in ("all", "frame", "heads", "features"):
        cache = m.new_cache(2, 16)
        got[outputs] = m.forward_cached(x[:, 0], c[:, 0], a[:, 0], has[:, 0], cache, 0, commit=True, outputs=outputs)
    assert got["frame"].reward is None and got["heads"].out is None
    assert got["features"].reward is None and got["features"].out is None
    assert torch.equal(got["frame"].out, got["all"].out) and torch.equal(got["frame"].features, got["all"].features)
    assert torch.equal(got["features"].features, got["all"].features)
    assert torch.equal(got["heads"].reward, got["all"].reward)
    assert torch.equal(got["heads"].term_logit, got["all"].term_logit)
    with pytest.raises(ValueError, match="outputs must be all, frame, heads or features"):
        m.forward_cached(x[:, 0], c[:, 0], a[:, 0], has[:, 0], m.new_cache(2, 16), 0, outputs="reward")


def test_batch_one_cached_passes_keep_their_conditioning_until_the_weights_change():
    """At batch 1 on the CPU a cached pass keeps the adaLN vectors of each conditioning it has seen: a repeat
    pass gives what a model that never saw it gives, a new action or noise level gets its own, and weights
    changed in place or loaded are read afresh. With grad on nothing is kept."""
    import copy
    m = tiny(window=3)
    x, c, a, has = inputs(B=1, T=3)

    def run(model, t):
        with torch.no_grad():
            return model.forward_cached(x[:, t], c[:, t], a[:, t], has[:, t], model.new_cache(1, 16), 0).out

    fresh = copy.deepcopy(m)
    first = [run(m, t) for t in range(3)]
    assert len(m._cond_memo[1]) == 3  # three conditionings (the first without its action)
    for t in range(3):
        assert torch.equal(run(m, t), first[t]) and torch.equal(first[t], run(copy.deepcopy(fresh), t))
    assert len(m._cond_memo[1]) == 3  # repeats are hits
    with torch.no_grad():
        m.blocks[0].ada[-1].weight.add_(0.05)  # in place, as an optimizer step does
        fresh.blocks[0].ada[-1].weight.add_(0.05)
    moved = run(m, 1)
    assert not torch.equal(moved, first[1]) and torch.equal(moved, run(copy.deepcopy(fresh), 1))
    m.load_state_dict(tiny(window=3, seed=1).state_dict())
    assert torch.equal(run(m, 2), run(tiny(window=3, seed=1), 2))
    m._cond_memo = None
    m.forward_cached(x[:, 1], c[:, 1], a[:, 1], has[:, 1], m.new_cache(1, 16), 0)  # grad on: computed, not kept
    assert m._cond_memo is None


def test_a_batch_one_pair_pass_keeps_each_frame_s_conditioning():
    """A pass of two frames (forward_cached_pair) keeps the conditioning of each frame, not of the pair: the
    pairs (a, b) and (b, a) are two hits after their frames were seen, and its output is the one a batch of two
    rows computes without the memo (the same row twice), up to GEMM rounding."""
    m = randomize(tiny(window=3).with_context_attention("frame").with_heads_input("pair"), seed=1).eval()
    x, c, a, has = inputs(B=1, T=4)
    a[:, 1], a[:, 2] = 1, 3
    with torch.no_grad():
        cache = m.new_cache(1, 16)
        m.forward_cached(x[:, 0], c[:, 0], a[:, 0], has[:, 0], cache, 0, commit=True, outputs="frame")
        o = m.forward_cached_pair(x[:, 1:3], c[:, 1:3], a[:, 1:3], has[:, 1:3], cache, 2)
        assert len(m._cond_memo[1]) == 3  # frame 0's, then frames 1 and 2 each
        swap = [2, 1]
        m.forward_cached_pair(x[:, swap], c[:, swap], a[:, swap], has[:, swap], m.new_cache(1, 16), 2)
        assert len(m._cond_memo[1]) == 3  # (b, a): both frames are hits
        two = m.new_cache(2, 16)  # batch 2 is never kept: the conditioning computed over both frames at once
        m.forward_cached(x[:, 0].repeat(2, 1, 1, 1), c[:, 0].repeat(2), a[:, 0].repeat(2), has[:, 0].repeat(2), two, 0,
                         commit=True, outputs="frame")
        ref = m.forward_cached_pair(x[:, 1:3].repeat(2, 1, 1, 1, 1), c[:, 1:3].repeat(2, 1), a[:, 1:3].repeat(2, 1),
                                    has[:, 1:3].repeat(2, 1), two, 2)
    assert len(m._cond_memo[1]) == 3
    torch.testing.assert_close(o.out, ref.out[:1], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(o.features, ref.features[:1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("context_attention", ["window", "frame"])
def test_a_pass_for_the_newest_frame_alone_gives_its_outputs_and_every_frame_s_keys(context_attention):
    """A cache rebuild reads only its newest frame's heads and features: newest=True leaves the other frames'
    last-block queries, output layer and heads out, and gives the same keys/values and newest outputs."""
    m = tiny(window=3).with_context_attention(context_attention)
    x, c, a, has = inputs(B=2, T=4)
    full = m(x, c, a, has, return_kv=True, context_only=True)
    new = m(x, c, a, has, return_kv=True, context_only=True, newest=True)
    assert new.out.shape[1] == new.features.shape[1] == new.reward.shape[1] == 1
    for (k1, v1), (k2, v2) in zip(full.kv, new.kv):
        torch.testing.assert_close(k2, k1, rtol=0, atol=1e-6)
        torch.testing.assert_close(v2, v1, rtol=0, atol=1e-6)
    for name in ("out", "features", "reward", "term_logit"):
        torch.testing.assert_close(getattr(new, name), getattr(full, name)[:, -1:], rtol=1e-5, atol=1e-5)
    assert (full.reward[:, -1] - full.reward[:, 0]).abs().max() > 1e-4  # the frames' heads differ: a real check


def test_cache_mask_is_left_out_only_where_every_window_is_full():
    # a full window attends without a mask (faster, same result); a row with empty slots must still mask them
    dit = tiny(window=2)
    cache = dit.new_cache(2, 16)
    assert cache.attn_mask() is not None and not cache.attn_mask()[:, 0, 0, :16].any()
    for t in range(2):
        cache.mark(t)
    assert cache.attn_mask() is None and cache.attn_mask(4) is None
    cache.clear([1])
    m = cache.attn_mask()
    assert m[0].all() and not m[1, 0, 0, :32].any() and m[1, 0, 0, 32:].all()
    assert cache.attn_mask(4).shape[0] == 4  # stacked copies of the batch each keep their row's mask
    q = torch.randn(2, 2, 16, 16)
    k, v = torch.randn(2, 2, 48, 16), torch.randn(2, 2, 48, 16)
    full = torch.ones(2, 1, 1, 48, dtype=torch.bool)
    torch.testing.assert_close(torch.nn.functional.scaled_dot_product_attention(q, k, v),
                               torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=full))


def test_frame_size_is_not_baked_in():
    m = tiny()
    for h, w in [(8, 8), (6, 10), (12, 8)]:
        x, c, a, has = inputs(T=3, h=h, w=w)
        assert m(x, c, a, has).out.shape == (2, 3, 4, h, w)
    with pytest.raises(ValueError, match="divisible by patch_size"):
        m(*inputs(T=2, h=7, w=8))


@pytest.mark.parametrize("space,sample", [
    (gym.spaces.Discrete(17), lambda: np.array([[3, 4]])),
    (gym.spaces.MultiBinary(6), lambda: np.array([[[1, 0, 1, 0, 0, 1], [0, 0, 0, 0, 0, 0]]])),
    (gym.spaces.MultiDiscrete([3, 4]), lambda: np.array([[[2, 1], [0, 3]]])),
    (gym.spaces.Box(-180, 180, (2,)), lambda: np.array([[[2.0, 0.0], [20.0, 0.0]]], np.float32)),
    (gym.spaces.Dict({"forward": gym.spaces.Discrete(2), "camera": gym.spaces.Box(-180, 180, (2,))}),
     lambda: {"forward": np.array([[1, 1]]), "camera": np.array([[[2.0, 0.0], [20.0, 0.0]]], np.float32)}),
])
def test_action_encoders_distinguish_actions(space, sample):
    spec = space_to_spec(space)
    enc = randomize(ActionEncoder(spec, 16))
    emb = enc(actions_to_tensor(spec, sample()), torch.ones(1, 2, dtype=torch.bool))
    assert emb.shape == (1, 2, 16)
    assert (emb[0, 0] - emb[0, 1]).abs().max() > 1e-3  # e.g. a 2 degree and a 20 degree turn differ
    null = enc(actions_to_tensor(spec, sample()), torch.zeros(1, 2, dtype=torch.bool))
    torch.testing.assert_close(null[0, 0], enc.null)


def test_model_runs_with_dict_actions():
    space = gym.spaces.Dict({"jump": gym.spaces.Discrete(2), "camera": gym.spaces.Box(-180, 180, (2,))})
    m = tiny(spec=space_to_spec(space))
    x, c, _, has = inputs(B=1, T=3)
    acts = actions_to_tensor(m.config.action_spec, {"jump": np.zeros((1, 3)), "camera": np.zeros((1, 3, 2), np.float32)})
    assert m(x, c, acts, has).out.shape == x.shape


CAM_SPEC = space_to_spec(gym.spaces.Dict({"forward": gym.spaces.Discrete(2), "camera": gym.spaces.Box(-180, 180, (2,))}))


def test_shift_latents_moves_content_by_the_shift():
    z = torch.randn(1, 3, 6, 8)
    # (dy, dx) in normalised units: a frame's height / width is 2, so 2/8 is one cell across
    out = shift_latents(z, torch.tensor([[0.0, 2 / 8]]))
    torch.testing.assert_close(out[..., 1:], z[..., :-1], rtol=0, atol=1e-5)  # content moved right by one cell
    torch.testing.assert_close(out[..., 0], z[..., 0], rtol=0, atol=1e-5)  # the gap repeats the edge
    out = shift_latents(z, torch.tensor([[-2 / 6, 0.0]]))
    torch.testing.assert_close(out[:, :, :-1], z[:, :, 1:], rtol=0, atol=1e-5)  # up by one row
    half = shift_latents(z, torch.tensor([[0.0, 1 / 8]]))  # half a cell: the mean of the two neighbours
    torch.testing.assert_close(half[..., 1:], (z[..., 1:] + z[..., :-1]) / 2, rtol=0, atol=1e-5)


def _sky_view(h, w, f, pitch, yaw):
    """A pinhole camera's h x w view (focal length f pixels) of a smooth pattern painted on the sky sphere,
    the camera turned by pitch (down) and yaw (right), in degrees: the ground truth a turn warp should match."""
    v, u = torch.meshgrid(torch.arange(h) + 0.5 - h / 2, torch.arange(w) + 0.5 - w / 2, indexing="ij")
    rays = torch.stack([u / f, v / f, torch.ones_like(u)], -1).double()
    p, y = np.radians(pitch), np.radians(yaw)
    Ry = torch.tensor([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    Rp = torch.tensor([[1, 0, 0], [0, np.cos(p), np.sin(p)], [0, -np.sin(p), np.cos(p)]])
    d = rays @ (Ry @ Rp).T
    az, el = torch.atan2(d[..., 0], d[..., 2]), torch.atan2(d[..., 1], d[..., [0, 2]].norm(dim=-1))
    return torch.stack([torch.sin(9 * az) * torch.cos(7 * el), torch.cos(5 * az + 3 * el), torch.sin(11 * el)])[None].float()


def test_rotation_warp_turns_a_pinhole_view_where_the_shift_misplaces_its_edges():
    """rotate_view with the fitted shift matrix's focal lengths reproduces the turned camera's view across the
    frame (a wide, 90-degree view: the edges move twice as far as the centre); the shift does not."""
    h, w, f = 48, 64, 32.0  # 90 degrees across
    deg = np.pi / 180
    M = torch.tensor([[-f / (h / 2) * deg, 0.0], [0.0, -f / (w / 2) * deg]])  # the centre's motion per degree
    start = _sky_view(h, w, f, 0, 0)
    torch.testing.assert_close(rotate_view(start, torch.zeros(1, 2), M), start, rtol=0, atol=1e-5)
    inner = (slice(None), slice(None), slice(6, -6), slice(8, -8))  # away from the gap the turn opens
    for pitch, yaw in ((0.0, 8.0), (-6.0, 0.0), (4.0, -7.0)):
        cam = torch.tensor([[pitch, yaw]])
        real = _sky_view(h, w, f, pitch, yaw)
        rot_err = (rotate_view(start, cam, M) - real)[inner].abs().mean()
        shift_err = (shift_latents(start, cam @ M) - real)[inner].abs().mean()
        assert rot_err < 0.1 * shift_err, (pitch, yaw, rot_err, shift_err)


def test_warp_kind_rotation_keeps_the_weights_and_changes_only_the_warp():
    m = tiny(spec=CAM_SPEC)
    M = [[-0.02, 0.0], [0.0, -0.015]]
    w = randomize(m.with_warp("camera", M), seed=2)
    r = w.with_warp_kind("rotation")
    assert r.config.warp_kind == "rotation" and r.config.warp_matrix == w.config.warp_matrix
    for (k, a), (_, b) in zip(w.state_dict().items(), r.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    prev = torch.randn(1, 2, 4, 8, 8)
    acts = actions_to_tensor(CAM_SPEC, {"forward": np.zeros((1, 2)), "camera": np.array([[[3.0, 9.0], [-4.0, -6.0]]], np.float32)})
    has = torch.ones(1, 2, dtype=torch.bool)
    cam = acts["camera"].reshape(-1, 2)
    torch.testing.assert_close(r.warped_previous(prev, acts, has)[0], rotate_view(prev[0], cam, torch.tensor(M)))
    torch.testing.assert_close(w.warped_previous(prev, acts, has)[0], shift_latents(prev[0], cam @ torch.tensor(M)))
    with pytest.raises(ValueError, match="warp_kind must be one of"):
        w.with_warp_kind("zoom")
    with pytest.raises(ValueError, match="diagonal"):
        m.with_warp("camera", [[0.0, 0.0], [0.0, -0.015]], kind="rotation")
    with pytest.raises(ValueError, match="no warp input"):
        m.with_warp_kind("rotation")


def test_warp_input_reads_the_previous_frame_shifted_by_the_action():
    m = tiny(spec=CAM_SPEC)
    with pytest.raises(ValueError, match="Box key"):
        m.with_warp("forward", [[0, 0], [0, 0]])
    x, c, _, has = inputs(B=1, T=3)
    prev = torch.randn_like(x)
    acts = lambda cam: actions_to_tensor(CAM_SPEC, {"forward": np.zeros((1, 3)), "camera": np.array(cam, np.float32)})
    still, turn = acts([[[0, 0]] * 3]), acts([[[0, 0], [0, 10.0], [0, 10.0]]])
    w = m.with_warp("camera", [[0.0, 0.0], [0.0, 0.02]])  # yaw 10 -> 0.2, under one cell of 8 (0.25)
    # the added inputs start at zero weight: the extended model computes exactly what the model did
    torch.testing.assert_close(w(x, c, turn, has, prev=prev).out, m(x, c, turn, has).out, rtol=0, atol=1e-6)
    randomize(w, seed=1)
    with pytest.raises(ValueError, match="pass prev"):
        w(x, c, turn, has)
    base = w(x, c, still, has, prev=prev)
    # the turning frames' second input is their previous frame shifted by yaw 10 x 0.02
    stacked = w._with_warp(x, prev, turn, has)
    torch.testing.assert_close(stacked[:, 1:, 4:], shift_latents(prev[0, 1:], torch.tensor([[0.0, 0.2]] * 2))[None])
    torch.testing.assert_close(stacked[:, 0, 4:], prev[:, 0])  # frame 0 has no action: unshifted
    assert (w(x, c, turn, has, prev=prev).out[:, 1:] - base.out[:, 1:]).abs().max() > 1e-3
    hidden = torch.zeros_like(has)  # actions hidden (guidance's free pass): nothing shifts
    torch.testing.assert_close(w._with_warp(x, prev, turn, hidden)[:, :, 4:], prev)


def test_warp_zoom_magnifies_the_view_about_its_centre_on_steps_with_its_key():
    import torch.nn.functional as F

    M = [[-0.02, 0.0], [0.0, -0.015]]
    m = tiny(spec=CAM_SPEC).with_warp("camera", M, kind="rotation")
    z = m.with_warp_kind("rotation", zoom={"forward": 1.25})
    prev = torch.randn(1, 2, 4, 8, 8)
    acts = actions_to_tensor(CAM_SPEC, {"forward": np.array([[1, 0]]), "camera": np.zeros((1, 2, 2), np.float32)})
    has = torch.ones(1, 2, dtype=torch.bool)
    out = z.warped_previous(prev, acts, has)[0]
    theta = torch.tensor([[[1 / 1.25, 0.0, 0.0], [0.0, 1 / 1.25, 0.0]]])  # a plain magnification about the centre
    want = F.grid_sample(prev[0, :1], F.affine_grid(theta, [1, 4, 8, 8], align_corners=False), mode="bilinear",
                         padding_mode="border", align_corners=False)
    torch.testing.assert_close(out[:1], want, rtol=0, atol=1e-5)  # forward pressed: zoomed
    torch.testing.assert_close(out[1:], prev[0, 1:], rtol=0, atol=1e-5)  # not pressed: as it was
    hidden = torch.tensor([[False, True]])  # a frame without its action: no zoom either
    torch.testing.assert_close(z.warped_previous(prev, acts, hidden)[0, :1], prev[0, :1], rtol=0, atol=1e-5)
    for bad in ({"camera": 1.1}, {"jump": 1.1}, {"forward": 3.0}):
        with pytest.raises(ValueError, match="warp_zoom maps Discrete keys"):
            m.with_warp_kind("rotation", zoom=bad)
    with pytest.raises(ValueError, match="warp_kind='rotation'"):
        m.with_warp_kind("shift", zoom={"forward": 1.1})


def test_clock_input_starts_unread_is_periodic_and_required():
    """with_clock adds the game's clock at zero weight (the same outputs as before); once trained (random
    weights here) the outputs depend on the clock's phase only: a clock a day later gives the same numbers,
    another time of day others; a model with a clock says so when called without one."""
    m = tiny()
    x, c, a, has = inputs(T=3)
    mc = m.with_clock(300)
    assert mc.config.clock_period == 300 and mc.clock_embed.embed.weight.abs().max() == 0
    clock = torch.tensor([[40, 41, 42], [100, 101, 102]])
    torch.testing.assert_close(mc(x, c, a, has, clock=clock).out, m(x, c, a, has).out)
    mc = randomize(mc, seed=1).eval()
    out = mc(x, c, a, has, clock=clock).out
    torch.testing.assert_close(mc(x, c, a, has, clock=clock + 300 * 1000).out, out, rtol=1e-5, atol=1e-5)
    assert (mc(x, c, a, has, clock=clock + 150).out - out).abs().max() > 1e-3
    with pytest.raises(ValueError, match="reads the game's clock"):
        mc(x, c, a, has)
    with pytest.raises(ValueError, match="already reads a clock"):
        mc.with_clock(300)
    with pytest.raises(ValueError, match="clock_period must be an integer"):
        ClockEncoder(1, 8)


def test_frame_context_attention_keeps_history_out_of_the_cache():
    """context_attention="frame": a context frame's outputs depend on that frame alone, the last frame reads the
    window; a cache filled by commit passes, after more frames than the window, gives the next frame exactly what
    a full pass over the window alone gives (its keys hold no history); a window model's would not."""
    W, T = 3, 8
    frame = tiny(window=W).with_context_attention("frame").eval()
    window = tiny(window=W)
    x, c, a, has = inputs(B=2, T=T)
    x2 = x.clone()
    x2[:, 0] += 5.0
    base, moved = frame(x, c, a, has), frame(x2, c, a, has)
    torch.testing.assert_close(moved.out[:, 1:4], base.out[:, 1:4], rtol=0, atol=0)  # context: itself alone
    base, moved = frame(x[:, :W + 1], c[:, :W + 1], a[:, :W + 1], has[:, :W + 1]), frame(
        x2[:, :W + 1], c[:, :W + 1], a[:, :W + 1], has[:, :W + 1])
    assert (moved.out[:, -1] - base.out[:, -1]).abs().max() > 1e-3  # the frame being made reads the window
    ctx = frame(x2[:, :2], c[:, :2], a[:, :2], has[:, :2], context_only=True)  # a prefill: every frame alone
    torch.testing.assert_close(ctx.out[:, 1], frame(x[:, :2], c[:, :2], a[:, :2], has[:, :2], context_only=True).out[:, 1],
                               rtol=0, atol=0)
    for m, history_free in ((frame, True), (window, False)):
        cache = m.new_cache(2, 16)
        for t in range(T - 1):  # frames 0..T-2 committed one by one, as a rollout does
            m.forward_cached(x[:, t], c[:, t], a[:, t], has[:, t], cache, t, commit=True)
        got = m.forward_cached(x[:, T - 1], c[:, T - 1], a[:, T - 1], has[:, T - 1], cache, T - 1)
        s = slice(T - 1 - W, T)  # the window and the new frame, nothing before
        full = m(x[:, s], c[:, s], a[:, s], has[:, s], times=torch.arange(T - 1 - W, T))
        if history_free:
            torch.testing.assert_close(got.out, full.out[:, -1], rtol=0, atol=1e-5)
            # a commit pass reads the window too (its heads), while the keys it commits are the frame's alone
            o = m.forward_cached(x[:, T - 1], c[:, T - 1], a[:, T - 1], has[:, T - 1], cache, T - 1, commit=True)
            torch.testing.assert_close(o.out, full.out[:, -1], rtol=0, atol=1e-5)
            torch.testing.assert_close(o.reward, full.reward[:, -1], rtol=0, atol=1e-5)
            nxt = m.forward_cached(x[:, 0], c[:, 0], a[:, 0], has[:, 0], cache, T).out
            xs = torch.cat([x[:, T - W:T], x[:, :1]], 1)
            cs, as_, hs = (torch.cat([v[:, T - W:T], v[:, :1]], 1) for v in (c, a, has))
            torch.testing.assert_close(nxt, m(xs, cs, as_, hs, times=torch.arange(T - W, T + 1)).out[:, -1],
                                       rtol=0, atol=1e-5)
        else:
            assert (got.out - full.out[:, -1]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="context_attention must be one of"):
        WorldDiT(SPEC, latent_channels=4, patch_size=2, dim=32, depth=2, heads=2, context_attention="none")


def test_pair_heads_read_the_frame_and_the_one_before_each_alone_in_a_commit_of_one_copy():
    """heads_input="pair": a commit pass runs the frame once, attending to itself alone; it commits the same keys
    as the two-copy commit of context_attention="frame", and its heads read its mean token beside the frame
    before's, as a full pass over the two frames as context (each alone) gives them."""
    W, T = 3, 7
    frame = tiny(window=W).with_context_attention("frame")
    pair = randomize(frame.with_heads_input("pair"), seed=1).eval()  # heads that read both halves
    sd = {k: v for k, v in pair.state_dict().items() if not k.startswith(("head_norm.", "heads_mlp."))}
    frame.load_state_dict({**frame.state_dict(), **sd})  # the same trunk: only the heads differ
    assert pair.head_norm.normalized_shape == (64,) and pair.heads_mlp[0].in_features == 64
    x, c, a, has = inputs(B=2, T=T)
    caches = frame.new_cache(2, 16), pair.new_cache(2, 16)
    prev = pair(x[:, :1], c[:, :1], a[:, :1], has[:, :1], context_only=True, newest=True)
    assert prev.reward is None  # a newest-only pass cannot read the frame before: no heads
    prev = prev.features[:, -1].mean(1)
    for t in range(1, T):
        frame.forward_cached(x[:, t], c[:, t], a[:, t], has[:, t], caches[0], t, commit=True)
        o = pair.forward_cached(x[:, t], c[:, t], a[:, t], has[:, t], caches[1], t, commit=True, outputs="heads",
                                prev_features=prev)
        ring = slice(0, W * 16)  # the committed frames (the scratch slot is each sampling pass's own)
        for got, want in ((caches[1].k, caches[0].k), (caches[1].v, caches[0].v)):  # 2 rows or 4: rounding
            torch.testing.assert_close(got[:, :, :, ring], want[:, :, :, ring], rtol=0, atol=1e-5)
        full = pair(x[:, t - 1:t + 1], c[:, t - 1:t + 1], a[:, t - 1:t + 1], has[:, t - 1:t + 1],
                    times=torch.tensor([t - 1, t]), context_only=True)
        torch.testing.assert_close(o.features, full.features[:, -1], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(o.reward, full.reward[:, -1], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(o.term_logit, full.term_logit[:, -1], rtol=1e-4, atol=1e-4)
        moved = pair.forward_cached(x[:, t], c[:, t], a[:, t], has[:, t], pair.new_cache(2, 16), t, commit=True,
                                    outputs="heads", prev_features=prev + 1.0)
        assert (moved.reward - o.reward).abs().max() > 1e-4  # the frame before is read
        prev = o.features.mean(1)
    with pytest.raises(ValueError, match="pass prev_features"):
        pair.forward_cached(x[:, 0], c[:, 0], a[:, 0], has[:, 0], caches[1], T, commit=True, outputs="heads")
    with pytest.raises(ValueError, match="only context_attention='frame'"):
        tiny().with_heads_input("pair")
    with pytest.raises(ValueError, match="heads_input must be one of"):
        frame.with_heads_input("both")
    back = frame.with_heads_input("pair").with_heads_input("window")  # the frame's half is the heads before
    for k, v in frame.state_dict().items():
        torch.testing.assert_close(back.state_dict()[k], v, rtol=0, atol=0)


def test_pair_heads_learn_only_where_they_read_two_frames_alone():
    """The training loss of heads_input="pair" heads leaves out the first frame (no frame before it) and the last
    (it attends to the window): their labels do not move it; a middle frame's do."""
    from worldsim.diffusion import EDM, EDMConfig

    pair = tiny(window=3).with_context_attention("frame").with_heads_input("pair")
    x, c, a, has = inputs(B=2, T=5)
    edm = EDM(EDMConfig(context_noise_max=0.3))
    with torch.no_grad():
        out = pair(x, c, a, has)
    sigma = torch.full((2, 5), 0.1)
    reward, term, trans = torch.zeros(2, 5), torch.zeros(2, 5, dtype=torch.bool), torch.ones(2, 5, dtype=torch.bool)
    with torch.no_grad():
        base = edm._head_losses(out, sigma, reward, term, trans, pair)
    for t, moves in ((0, False), (4, False), (2, True)):
        r2 = reward.clone()
        r2[:, t] = 1.0
        with torch.no_grad():
            new = edm._head_losses(out, sigma, r2, term, trans, pair)
        assert (abs(float(new[0]) - float(base[0])) > 1e-6) == moves, t


def test_sample_pair_heads_learn_only_at_the_frame_that_attends_to_the_window():
    """heads_input="sample_pair" heads read a sampling pass (the frame attending to the window) beside the frame
    before's commit: in a training forward only the last frame is read so, at any noise level; the labels of the
    others do not move the loss. Going between "pair" and "sample_pair" keeps the heads' weights."""
    from worldsim.diffusion import EDM, EDMConfig

    pair = tiny(window=3).with_context_attention("frame").with_heads_input("pair")
    sp = pair.with_heads_input("sample_pair")
    for k, v in pair.state_dict().items():
        torch.testing.assert_close(sp.state_dict()[k], v, rtol=0, atol=0)
    x, c, a, has = inputs(B=2, T=5)
    edm = EDM(EDMConfig(context_noise_max=0.3))
    with torch.no_grad():
        out = sp(x, c, a, has)
    sigma = torch.full((2, 5), 0.1)
    sigma[:, -1] = 5.0  # a sampling pass's level
    reward, term, trans = torch.zeros(2, 5), torch.zeros(2, 5, dtype=torch.bool), torch.ones(2, 5, dtype=torch.bool)
    with torch.no_grad():
        base = edm._head_losses(out, sigma, reward, term, trans, sp)
    for t, moves in ((0, False), (2, False), (3, False), (4, True)):
        r2 = reward.clone()
        r2[:, t] = 1.0
        with torch.no_grad():
            new = edm._head_losses(out, sigma, r2, term, trans, sp)
        assert (abs(float(new[0]) - float(base[0])) > 1e-6) == moves, t


def test_without_blocks_is_the_model_with_those_blocks_silenced():
    """without_blocks([i]) computes what the whole model computes with block i's adaLN gates at zero (a block
    with zero gates adds nothing to the residual stream): the other blocks keep their weights and order. Bad
    indices are refused."""
    torch.manual_seed(0)
    m = randomize(WorldDiT({"type": "discrete", "n": 17}, latent_channels=4, dim=32, depth=3, heads=2,
                           context_frames=2), std=0.15).eval()
    B, T = 2, 3
    x, c = torch.randn(B, T, 4, 8, 8), torch.rand(B, T)
    acts, has = torch.randint(0, 17, (B, T)), torch.ones(B, T, dtype=torch.bool)
    short = m.without_blocks([1])
    assert short.config.depth == 2 and len(short.blocks) == 2
    silenced = copy.deepcopy(m)
    with torch.no_grad():
        lin = silenced.blocks[1].ada[1]
        gates = torch.zeros(6, 32, dtype=torch.bool)
        gates[[2, 5]] = True  # shift1, scale1, gate1, shift2, scale2, gate2: the two gates
        lin.weight[gates.flatten()] = 0
        lin.bias[gates.flatten()] = 0
    with torch.no_grad():
        a, b, whole = short(x, c, acts, has), silenced(x, c, acts, has), m(x, c, acts, has)
    torch.testing.assert_close(a.out, b.out)
    torch.testing.assert_close(a.features, b.features)
    torch.testing.assert_close(a.reward, b.reward)
    assert not torch.allclose(a.out, whole.out, atol=1e-3)  # the dropped block did something
    for bad in ([], [3], [-1], [0, 1, 2]):
        with pytest.raises(ValueError, match="drop_blocks"):
            m.without_blocks(bad)


def test_tanh_gelu_is_torchs_tanh_gelu():
    """TanhGELU (x * sigmoid(2u) on the CPU, in place without grad) gives nn.GELU(approximate="tanh")'s values and
    gradients, and leaves its input as it was."""
    from worldsim.model import TanhGELU

    x = torch.randn(81, 768) * 4
    ref = torch.nn.GELU(approximate="tanh")
    with torch.no_grad():
        keep = x.clone()
        torch.testing.assert_close(TanhGELU()(x), ref(x), atol=2e-6, rtol=1e-5)
        assert torch.equal(x, keep)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    y = TanhGELU()(a)
    with torch.no_grad():
        assert torch.equal(y, TanhGELU()(x))  # a student and its no-grad teacher compute the same bits
    y.sum().backward()
    ref(b).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, atol=2e-6, rtol=1e-5)


def test_forward_cached_pair_is_a_commit_pass_then_a_sampling_pass():
    """One pass of two frames per row (frame t-1 committed alone, frame t attending to the window that then holds
    it) gives what a commit pass of frame t-1 and then a sampling pass of frame t give: the sampled frame's output,
    both frames' tokens, and the cache (keys, values and which slots hold a frame), up to the rounding of GEMMs
    over twice the rows."""
    W, T = 3, 7
    m = randomize(tiny(window=W).with_context_attention("frame").with_heads_input("pair"), seed=1).eval()
    x, c, a, has = inputs(B=2, T=T)
    ref, got = m.new_cache(2, 16), m.new_cache(2, 16)
    with torch.no_grad():
        for t in range(W - 1):  # the same context in both caches
            for cache in (ref, got):
                m.forward_cached(x[:, t], c[:, t], a[:, t], has[:, t], cache, t, commit=True, outputs="frame")
        for t in range(W, T):  # past the window: each commit overwrites the oldest frame
            committed = m.forward_cached(x[:, t - 1], c[:, t - 1], a[:, t - 1], has[:, t - 1], ref, t - 1, commit=True,
                                         outputs="frame")
            sampled = m.forward_cached(x[:, t], c[:, t], a[:, t], has[:, t], ref, t, outputs="frame")
            o = m.forward_cached_pair(x[:, t - 1:t + 1], c[:, t - 1:t + 1], a[:, t - 1:t + 1], has[:, t - 1:t + 1],
                                      got, t)
            torch.testing.assert_close(o.out, sampled.out, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(o.features[:, 0], committed.features, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(o.features[:, 1], sampled.features, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(got.k, ref.k, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(got.v, ref.v, rtol=1e-4, atol=1e-4)
            assert torch.equal(got.valid, ref.valid)
        with pytest.raises(ValueError, match="two frames per cache row"):
            m.forward_cached_pair(x[:, :3], c[:, :3], a[:, :3], has[:, :3], got, T)
        with pytest.raises(ValueError, match="context_attention='frame'"):
            tiny(window=W).forward_cached_pair(x[:, :2], c[:, :2], a[:, :2], has[:, :2], tiny(window=W).new_cache(2, 16), 1)
