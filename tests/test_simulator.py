"""Inference: the KV-cached rollout equals recomputing the whole history, and memory stays flat."""
import json

import numpy as np
import pytest
import torch
from conftest import randomize

from worldsim.autoencoder import make_autoencoder
from worldsim.checkpoint import Bundle, bundle_files, write_dir_atomic
from worldsim.diffusion import EDM, EDMConfig
from worldsim.model import WorldDiT, actions_to_tensor
from worldsim.simulator import WorldSimulator

W = 3


@pytest.fixture(scope="module")
def random_bundle(tmp_path_factory):
    """A bundle with random (untrained) weights, written to disk and loaded back like the shipped one."""
    torch.manual_seed(0)
    ae = make_autoencoder("tiny")
    dit = randomize(WorldDiT({"type": "discrete", "n": 17}, latent_channels=4, dim=32, depth=2, heads=2,
                             context_frames=W), std=0.15)
    frames = torch.randint(0, 256, (2, W, 32, 32, 3), dtype=torch.uint8)
    env = {"name": "test", "frame_shape": [32, 32, 3], "action_space": {"type": "discrete", "n": 17},
           "action_meanings": [str(i) for i in range(17)]}
    path = tmp_path_factory.mktemp("bundle") / "b"
    write_dir_atomic(path, bundle_files(ae, dit, EDMConfig(context_noise=0.1), (0.0, 1.0), env, frames,
                                        torch.zeros(2, W - 1, dtype=torch.long)))
    assert json.loads((path / "bundle.json").read_text())["world_model"]["context_frames"] == W
    return Bundle(path)


def full_recompute(b: Bundle, hist, acts, has, noise, steps):
    """Denoise the next frame by running the model over the whole history with the sliding-window mask."""
    edm: EDM = b.edm
    T = hist.shape[1] + 1
    a = actions_to_tensor(b.dit.config.action_spec, acts)
    ctx_sig = torch.full((1, T - 1), edm.cfg.context_noise)

    def denoise(x, sigma):
        seq = torch.cat([hist, x[:, None]], dim=1)
        sig = torch.cat([ctx_sig, sigma[:, None]], dim=1)
        inp, c_noise = edm.model_input(seq, sig)
        out = b.dit(inp, c_noise, a, has)
        return edm.denoised(x, sigma, out.out[:, -1])

    return edm.sample(denoise, noise, steps)


def test_cached_rollout_equals_full_recompute(random_bundle):
    b = random_bundle
    sim = WorldSimulator(b, 1, sampling_steps=3)
    rng = np.random.default_rng(0)
    shape = sim.latent_shape
    ctx_frames = b.start_frames[:1].numpy()
    ctx_actions = b.start_actions[:1].numpy()
    ctx_noise = rng.standard_normal((1, W, *shape))
    z0 = sim.reset([0], ctx_frames, ctx_actions, ctx_noise)
    hist = z0 + sim.context_noise * torch.as_tensor(ctx_noise, dtype=torch.float32)  # committed context
    acts = np.concatenate([[0], ctx_actions[0]])[None]
    has = torch.ones(1, W, dtype=torch.bool)
    has[0, 0] = False
    for step in range(2 * W + 2):  # past the window, so the ring buffer wraps and old frames drop out
        a = np.array([step % 17])
        noise, cn = rng.standard_normal((1, *shape)), rng.standard_normal((1, *shape))
        res = sim.step(a, noise, cn, decode=False)
        acts = np.concatenate([acts, a[None]], axis=1)
        has = torch.cat([has, torch.ones(1, 1, dtype=torch.bool)], dim=1)
        ref = full_recompute(b, hist, acts, has, torch.as_tensor(noise, dtype=torch.float32), 3)
        torch.testing.assert_close(res.latents, ref, rtol=1e-4, atol=1e-4)
        hist = torch.cat([hist, (res.latents + sim.context_noise * torch.as_tensor(cn, dtype=torch.float32))[:, None]], 1)
    assert sim.time > W  # the clock really went past the window


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
