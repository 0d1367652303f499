"""Shared fixtures: a tiny real-Crafter dataset and a tiny trained bundle, made once per test session
through the same jobs the CLI runs."""
import os

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
# Triton's kernels (kernels/triton_ops.py) run on CPU through its interpreter; it has to be on before triton is
# first imported (torch may import it), so it is set here rather than in their tests
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ.get("WORLDSIM_TEST_THREADS", "2")))

TINY_TRAIN = ["model=tiny", "autoencoder=tiny", "ae.steps=6", "ae.batch_size=4", "dit.steps=6",
              "dit.batch_size=2", "dit.warmup=2", "log_every=2", "checkpoint_every=3", "start_states=2", f"threads={torch.get_num_threads()}"]


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    from worldsim.cli import run_job

    out = tmp_path_factory.mktemp("data") / "crafter"
    run_job("collect", [f"out={out}", "episodes=4", "workers=2", "max_steps=40", "test_every=2"])
    return out


@pytest.fixture(scope="session")
def bundle(dataset, tmp_path_factory):
    from worldsim.cli import run_job

    run = tmp_path_factory.mktemp("run")
    # tile autoencoder (one latent per 7x7 Crafter tile) and one token per latent cell, as the shipped model
    run_job("train", [f"data={dataset}", f"run={run}", *TINY_TRAIN, "autoencoder=tile7_tiny", "model.patch_size=1"])
    return run / "bundle"


def randomize(module, std=0.2, seed=0):
    """Give every parameter random values: adaLN-Zero starts each block as the identity, which would make
    causality and cache tests pass vacuously."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


@pytest.fixture(scope="session")
def minetest_dataset(tmp_path_factory):
    """A few dozen steps of real Minetest under Xvfb (skipped where the game is not installed, except in CI)."""
    from worldsim.cli import run_job
    from worldsim.envs import real_minetest

    try:
        real_minetest.find_binaries()
    except RuntimeError as e:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"real Minetest not installed here: {e}")
    out = tmp_path_factory.mktemp("data") / "minetest"
    run_job("collect", ["env=minetest", f"out={out}", "episodes=2", "workers=2", "max_steps=24", "test_every=2"])
    return out


@pytest.fixture(scope="session")
def minetest_bundle(minetest_dataset, tmp_path_factory):
    from worldsim.cli import run_job

    run = tmp_path_factory.mktemp("run")
    # patch 4 as in the shipped 3D model's config
    run_job("train", [f"data={minetest_dataset}", f"run={run}", *TINY_TRAIN, "model.patch_size=4"])
    return run / "bundle"
