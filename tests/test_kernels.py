"""The fused Triton kernels (kernels/triton_ops.py) against the PyTorch references, run on CPU by Triton's
interpreter (TRITON_INTERPRET=1): each op alone, bf16 input, and the whole world model, full and cached."""
import os

import pytest
import torch
import torch.nn.functional as F
from conftest import randomize

import worldsim.kernels as K
from worldsim.kernels.reference import apply_rope, modulate
from worldsim.model import Rotary3D, WorldDiT


@pytest.fixture
def fused():
    """kernels=triton, run by Triton's interpreter (conftest.py turns it on before triton is imported)."""
    from triton.runtime.interpreter import InterpretedFunction
    assert os.environ.get("TRITON_INTERPRET") == "1", "run under TRITON_INTERPRET=1 (tests/conftest.py sets it)"
    prev = K.use("triton")
    assert isinstance(K._triton._ln_modulate_kernel, InterpretedFunction)
    yield K._triton
    K.use(prev)


def adaln(B, T, D, g):
    """shift, scale, gate as the block makes them: chunks (strided views) of one (B, T, 1, 3D) output."""
    return (torch.randn(B, T, 1, 3 * D, generator=g) * 0.5).chunk(3, dim=-1)


@pytest.mark.parametrize("D", [32, 48])  # 48: a row shorter than its power-of-two block (masked lanes)
def test_ln_modulate_and_its_residual_match_the_reference(fused, D):
    g = torch.Generator().manual_seed(0)
    B, T, N = 2, 3, 5
    x = torch.randn(B, T, N, D, generator=g) * 3 + 1
    y = torch.randn(B, T, N, D, generator=g)
    shift, scale, gate = adaln(B, T, D, g)
    assert not shift.is_contiguous()
    want = modulate(F.layer_norm(x, (D,), eps=1e-6), shift, scale)
    got = K.ln_modulate(x, shift, scale, 1e-6)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    x_new, h = K.residual_ln_modulate(x, gate, y, shift, scale, 1e-6)
    x_want = x + gate * y
    torch.testing.assert_close(x_new, x_want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(h, modulate(F.layer_norm(x_want, (D,), eps=1e-6), shift, scale), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused.ln_modulate(x, shift, scale, 1e-6), want, rtol=1e-5, atol=1e-5)


def test_rms_rope_reads_the_qkv_split_in_place_and_matches_the_reference(fused):
    g = torch.Generator().manual_seed(1)
    B, T, N, H, hd = 2, 2, 4, 2, 16
    rope = Rotary3D(hd)
    cos, sin = rope(torch.tensor([5, 6]), 2, 2)  # (T*N, hd/2)
    qkv = torch.randn(B, T * N, 3, H, hd, generator=g) * 2
    q = qkv.permute(2, 0, 3, 1, 4)[0]  # (B, H, L, hd), not contiguous: what Attention passes
    assert not q.is_contiguous()
    w = torch.rand(hd, generator=g) + 0.5
    want = apply_rope(F.rms_norm(q, (hd,), w, 1e-6), cos, sin)
    got = fused.rms_rope(q, w, cos, sin, 1e-6)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(K.rms_rope(q, w, cos, sin, 1e-6), want, rtol=1e-5, atol=1e-5)


def test_bf16_inputs_are_computed_in_fp32_and_stored_in_bf16(fused):
    g = torch.Generator().manual_seed(2)
    B, T, N, D = 1, 2, 3, 32
    x = torch.randn(B, T, N, D, generator=g)
    shift, scale, _ = adaln(B, T, D, g)
    want = modulate(F.layer_norm(x.bfloat16().float(), (D,), eps=1e-6), shift.bfloat16().float(),
                    scale.bfloat16().float())
    got = fused.ln_modulate(x.bfloat16(), shift.bfloat16(), scale.bfloat16(), 1e-6)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, rtol=1e-2, atol=2e-2)


def tiny(seed=0):
    return randomize(WorldDiT({"type": "discrete", "n": 5}, latent_channels=4, patch_size=2, dim=32, depth=2, heads=2,
                              context_frames=3), seed=seed).eval()


def test_world_model_full_and_cached_passes_match_with_fused_kernels(fused, monkeypatch):
    calls = {}
    for name in ("ln_modulate", "rms_rope"):
        def spy(*args, _f=getattr(fused, name), _n=name, **kw):
            calls[_n] = calls.get(_n, 0) + 1
            return _f(*args, **kw)
        monkeypatch.setattr(fused, name, spy)
    m = tiny()
    g = torch.Generator().manual_seed(3)
    B, T = 2, 3
    x = torch.randn(B, T, 4, 4, 4, generator=g)  # 4 tokens a frame: the interpreter runs each row in Python
    c = torch.rand(B, T, generator=g) * 100
    a = torch.randint(0, 5, (B, T), generator=g)
    has = torch.ones(B, T, dtype=torch.bool)

    def run():
        with torch.no_grad():
            full = m(x, c, a, has)
            cache, outs = m.new_cache(B, 4), []
            for t in range(T):
                outs.append(m.forward_cached(x[:, t], c[:, t], a[:, t], has[:, t], cache, t, commit=True))
        return full, outs

    full_f, cached_f = run()
    # per pass: 2 blocks x (2 LayerNorms + q and k) + the final layer's LayerNorm; 1 full + 3 cached passes
    assert calls == {"ln_modulate": 4 * 5, "rms_rope": 4 * 4}
    K.use("torch")
    full_r, cached_r = run()
    K.use("triton")
    torch.testing.assert_close(full_f.out, full_r.out, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(full_f.reward, full_r.reward, rtol=1e-4, atol=1e-4)
    for f, r in zip(cached_f, cached_r):
        torch.testing.assert_close(f.out, r.out, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(f.features, r.features, rtol=1e-4, atol=1e-4)


def test_a_pass_that_needs_gradients_takes_the_reference(fused):
    """Training under kernels=triton: the kernels have no backward, so the reference runs and the gradients
    are the reference's bit for bit."""
    m = tiny()
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1, 2, 4, 8, 8, generator=g)
    c, a, has = torch.rand(1, 2, generator=g), torch.randint(0, 5, (1, 2), generator=g), torch.ones(1, 2, dtype=torch.bool)

    def grads():
        m.zero_grad()
        m(x, c, a, has).out.square().mean().backward()
        return [p.grad.clone() for p in m.parameters() if p.grad is not None]

    got = grads()
    K.use("torch")
    want = grads()
    K.use("triton")
    assert len(got) == len(want) > 0 and all(torch.equal(u, v) for u, v in zip(got, want))


def test_cpu_tensors_outside_the_interpreter_take_the_reference(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    prev = K.use("triton")
    try:
        x = torch.randn(1, 1, 2, 8)
        assert not K._fused(x)
    finally:
        K.use(prev)


def test_unknown_kernels_name_is_an_error():
    with pytest.raises(ValueError, match="kernels must be one of torch, triton, got 'cuda'"):
        K.use("cuda")


def test_qkv_norm_rope_gives_two_rms_rope_calls_bits_and_their_gradients():
    """The CPU's inference path (q and k normed and turned together, in place) gives the same bits as rms_rope on
    each; a pass that needs gradients takes rms_rope itself, so training is unchanged."""
    g = torch.Generator().manual_seed(5)
    B, T, N, H, hd = 2, 3, 6, 3, 16
    cos, sin = Rotary3D(hd)(torch.tensor([7, 8, 9]), 2, 3)  # (T*N, hd/2)
    qkv = torch.randn(B, T * N, 3, H, hd, generator=g) * 3
    wq, wk = torch.rand(hd, generator=g) + 0.5, torch.rand(hd, generator=g) + 0.5
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    want = (K.rms_rope(q, wq, cos, sin, 1e-6), K.rms_rope(k, wk, cos, sin, 1e-6), v)
    with torch.no_grad():
        got = K.qkv_norm_rope(qkv, wq, wk, cos, sin, 1e-6)
    for u, w in zip(got, want):
        assert u.shape == w.shape == (B, H, T * N, hd) and torch.equal(u, w)
    assert not torch.equal(got[0], got[1])  # each with its own weight
    x = qkv.clone().requires_grad_()
    q2, k2, v2 = K.qkv_norm_rope(x, wq, wk, cos, sin, 1e-6)
    (q2.square().sum() + (k2 * v2).sum()).backward()
    y = qkv.clone().requires_grad_()
    q3, k3, v3 = y.permute(2, 0, 3, 1, 4)
    (K.rms_rope(q3, wq, cos, sin, 1e-6).square().sum() + (K.rms_rope(k3, wk, cos, sin, 1e-6) * v3).sum()).backward()
    assert torch.equal(x.grad, y.grad)
