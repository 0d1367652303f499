"""Training: safetensors checkpoints written atomically, resume after a hard kill, the end-to-end pipeline."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import torch
from conftest import TINY_TRAIN
from safetensors.torch import load_file, save_file

from worldsim.checkpoint import read_metadata, resolve_dir, write_dir_atomic
from worldsim.cli import run_job


def test_bundle_is_safetensors_and_loads(bundle):
    names = sorted(p.name for p in bundle.iterdir())
    assert names == ["autoencoder.safetensors", "bundle.json", "start_states.safetensors", "world_model.safetensors"]
    for n in names:
        if n.endswith(".safetensors"):
            assert load_file(bundle / n)  # plain tensors: nothing to unpickle
        assert os.path.getsize(bundle / n) <= 16 * 2**20
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["env"]["action_space"] == {"type": "discrete", "n": 17}
    assert "ae_psnr_test" in meta["metrics"]
    assert (bundle.parent / "loss.png").stat().st_size > 1000


def test_atomic_directory_swap(tmp_path):
    d = tmp_path / "ckpt"
    write_dir_atomic(d, {"a": b"1"})
    write_dir_atomic(d, {"a": b"2"})
    assert (d / "a").read_bytes() == b"2" and not (tmp_path / "ckpt.tmp").exists() and not (tmp_path / "ckpt.old").exists()
    d.rename(tmp_path / "ckpt.old")  # a kill between the two renames leaves only the old copy
    assert resolve_dir(d) == tmp_path / "ckpt.old"


def test_resume_after_kill(dataset, tmp_path):
    run = tmp_path / "run"
    args = [f"data={dataset}", f"run={run}", *TINY_TRAIN, "ae.steps=400", "checkpoint_every=3"]
    proc = subprocess.Popen([sys.executable, "-m", "worldsim.cli", "train", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = run / "ckpt" / "state.json"
    deadline = time.time() + 240
    while time.time() < deadline and not (state.exists() and json.loads(state.read_text())["ae_step"] >= 6):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)  # no chance to clean up
    proc.wait()
    ckpt = resolve_dir(run / "ckpt")
    killed_at = json.loads((ckpt / "state.json").read_text())["ae_step"]
    assert 6 <= killed_at < 400
    w_before = load_file(ckpt / "autoencoder.safetensors")
    opt_meta = read_metadata(ckpt / "opt_ae.safetensors")
    assert opt_meta["param_groups"][0]["lr"] > 0
    # continue where it stopped: same command, fewer total steps so the test stays short
    tr = run_job("train", [a.replace("ae.steps=400", f"ae.steps={killed_at + 3}") for a in args])
    assert tr.started_at == {"stage": "ae", "ae_step": killed_at, "dit_step": 0}  # picked up, not restarted
    assert tr.state["ae_step"] == killed_at + 3 and tr.state["stage"] == "done"
    steps = [r["step"] for r in tr.state["history"]["ae"]]
    assert steps == sorted(steps) and steps[0] <= killed_at  # one loss history across the kill
    w_after = load_file(run / "ckpt" / "autoencoder.safetensors")
    assert any(not torch.equal(w_before[k], w_after[k]) for k in w_before)  # it trained on from there
    assert (run / "bundle" / "bundle.json").exists()


def test_end_to_end_collect_train_play(bundle, tmp_path):
    """The tiny pipeline's bundle drives the env, the viewer (headless, recording) and an agent."""
    import imageio.v2 as imageio

    video = tmp_path / "play.mp4"
    res = run_job("play", [f"bundle={bundle}", "agent=explorer", "steps=12", f"record={video}"])
    assert res["steps"] == 12
    frames = [f for f in imageio.get_reader(video)]
    assert len(frames) == 12 and frames[0].shape[0] >= 512
    assert np.std(frames[-1]) > 1  # a picture, not a blank window


def test_bf16_autocast_training_path(dataset, tmp_path):
    """The mixed-precision path used on GPUs, exercised on CPU (bf16 autocast works there too)."""
    tr = run_job("train", [f"data={dataset}", f"run={tmp_path / 'r'}", *TINY_TRAIN, "precision=bf16",
                           "ae.steps=2", "dit.steps=2"])
    assert tr.amp and tr.state["stage"] == "done"
    assert all(np.isfinite(r["loss"]) for r in tr.state["history"]["dit"])
    assert tr.dit.patch_in.weight.dtype == torch.float32  # master weights stay fp32


def test_a_non_finite_loss_skips_the_step_and_keeps_the_weights():
    from worldsim.train import guarded_step

    torch.manual_seed(0)
    net = torch.nn.Linear(4, 1)
    opt = torch.optim.AdamW(net.parameters(), 1e-2)
    x = torch.randn(8, 4)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert not guarded_step(opt, net, (net(x) * float("nan")).mean())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items()) and not opt.state
    assert not guarded_step(opt, net, net(x).mean() * float("inf"))
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert guarded_step(opt, net, net(x).pow(2).mean())  # a finite loss still trains
    assert not torch.equal(before["weight"], net.weight)


def test_fine_tune_from_a_bundle(bundle, dataset, minetest_bundle, tmp_path):
    """init=BUNDLE: the autoencoder and latent normalisation are the bundle's, untouched; the world model
    starts from its weights (not from a fresh init) and trains on; another game's bundle is refused."""
    import pytest

    from worldsim.checkpoint import Bundle

    src = Bundle(bundle)
    # the command line's model/autoencoder presets are ignored: the bundle defines the architecture
    tr = run_job("train", [f"data={dataset}", f"run={tmp_path / 'ft'}", *TINY_TRAIN, f"init={bundle}",
                           "model=small", "dit.steps=3"])
    assert tr.started_at["stage"] == "dit" and tr.state["stage"] == "done" and tr.state["dit_step"] == 3
    out = Bundle(tmp_path / "ft" / "bundle")
    for k, v in src.ae.state_dict().items():
        assert torch.equal(v, out.ae.state_dict()[k]), k  # frozen
    assert (out.meta["latent_mean"], out.meta["latent_std"]) == (src.meta["latent_mean"], src.meta["latent_std"])
    assert out.meta["world_model"] == src.meta["world_model"]
    a, b = src.dit.state_dict(), out.dit.state_dict()
    changed = [k for k in a if not torch.equal(a[k], b[k])]
    assert changed  # it trained
    # 3 small steps from the bundle's weights stay near them; a fresh init would be far away
    rel = max((a[k] - b[k]).norm() / (a[k].norm() + 1e-8) for k in changed if a[k].norm() > 1)
    assert rel < 0.2, rel
    with pytest.raises(ValueError, match="action_space|frame_shape"):
        run_job("train", [f"data={dataset}", f"run={tmp_path / 'bad'}", *TINY_TRAIN, f"init={minetest_bundle}"])


def test_latent_cache_is_reused_and_invalidated(bundle, dataset, tmp_path):
    """The world-model stage's latents are cached in the run directory for resumed jobs, keyed by the
    autoencoder's weights: the same autoencoder reads the cache, a changed one encodes again."""
    tr = run_job("train", [f"data={dataset}", f"run={tmp_path / 'r'}", *TINY_TRAIN, f"init={bundle}", "dit.steps=1"])
    assert (tmp_path / "r" / "latents.safetensors").exists()
    fresh = tr.encode_all(tr.train_eps)
    calls = []
    encode = tr.encode_all
    tr.encode_all = lambda eps: calls.append(1) or encode(eps)
    cached = tr.cached_latents(tr.train_eps)
    assert not calls and all(torch.equal(a, b) for a, b in zip(cached, fresh))
    with torch.no_grad():
        next(tr.ae.parameters()).add_(0.1)
    tr.cached_latents(tr.train_eps)
    assert calls == [1]


def test_residual_fine_tune_starts_as_copy_last(bundle, dataset, tmp_path):
    """diffusion.residual=true on a bundle trained without it: its output layer (which meant the frame) starts
    at zero, i.e. at "the next frame is the last one", and the bundle it writes samples residually."""
    from worldsim.checkpoint import Bundle
    from worldsim.simulator import WorldSimulator

    tr = run_job("train", [f"data={dataset}", f"run={tmp_path / 'res'}", *TINY_TRAIN, f"init={bundle}",
                           "diffusion.residual=true", "dit.steps=1", "dit.lr=1e-12"])
    out = Bundle(tmp_path / "res" / "bundle")
    assert out.edm.cfg.residual and not Bundle(bundle).edm.cfg.residual
    assert out.dit.final.linear.weight.abs().max() < 1e-6 and out.dit.final.linear.bias.abs().max() < 1e-6
    sim = WorldSimulator(out, 2, sampling_steps=1)
    rng = np.random.default_rng(0)
    shape = sim.latent_shape
    z = sim.reset([0, 1], out.start_frames[:2].numpy(), out.start_actions[:2].numpy(),
                  rng.standard_normal((2, sim.window, *shape)))
    noise = rng.standard_normal((2, *shape))
    res = sim.step(np.array([1, 3]), noise, noise, decode=False)
    s0 = out.edm.sampling_sigmas(1)[0]
    c_skip = out.edm.scalings(torch.tensor(s0))[0]
    # zero output: the previous frame plus the skip's share of the starting noise, whatever the action
    torch.testing.assert_close(res.latents, z[:, -1] + c_skip * s0 * torch.as_tensor(noise, dtype=torch.float32))
    assert tr.state["dit_step"] == 1


def test_guidance_distillation(bundle, dataset, tmp_path):
    """dit.distill_guidance=g: the student's one-pass prediction learns the teacher's guided one, so the
    bundle it writes runs at guidance 1 and lands nearer the teacher at guidance g than the teacher's own
    unguided prediction does. A teacher without action dropout is refused; the teacher stays the bundle's
    weights when the student resumes."""
    import dataclasses

    import pytest
    from conftest import randomize

    from worldsim.checkpoint import Bundle, bundle_files, write_dir_atomic
    from worldsim.simulator import WorldSimulator

    with pytest.raises(ValueError, match="action_dropout"):
        run_job("train", [f"data={dataset}", f"run={tmp_path / 'bad'}", *TINY_TRAIN, f"init={bundle}",
                          "dit.distill_guidance=3"])
    # a teacher whose action matters (random weights: adaLN-Zero would start the tiny one near action-blind)
    src = Bundle(bundle)
    teacher_dir = tmp_path / "teacher"
    edm_cfg = dataclasses.replace(src.edm.cfg, action_dropout=0.5, sampling_steps=1)
    write_dir_atomic(teacher_dir, bundle_files(src.ae, randomize(src.dit, std=0.1), edm_cfg,
                                               (src.meta["latent_mean"], src.meta["latent_std"]), src.env,
                                               src.start_frames, src.start_actions))
    args = [f"data={dataset}", f"run={tmp_path / 'd'}", *TINY_TRAIN, f"init={teacher_dir}", "dit.distill_guidance=3",
            "dit.batch_size=8", "dit.lr=3e-3", "dit.warmup=1", "diffusion.sampling_steps=1",
            "diffusion.action_dropout=0.5", "checkpoint_every=30"]
    run_job("train", [*args, "dit.steps=100", "dit.minutes=1e-9"])  # stops after one step: resume from there
    tr = run_job("train", [*args, "dit.steps=100"])
    assert tr.started_at["dit_step"] == 1 and tr.state["dit_step"] == 100
    teacher, student = Bundle(teacher_dir), Bundle(tmp_path / "d" / "bundle")
    assert all(torch.equal(v, teacher.dit.state_dict()[k]) for k, v in tr.teacher.state_dict().items())
    assert student.edm.cfg.guidance == 1.0 and student.meta["trained"]["distilled_guidance"] == 3.0

    def one_step(b, guidance, acts):
        sim = WorldSimulator(b, len(acts), sampling_steps=1, context_noise=0.0, guidance=guidance)
        rng = np.random.default_rng(0)
        n = len(acts)
        sim.reset(range(n), b.start_frames[:n].numpy(), b.start_actions[:n].numpy(),
                  np.zeros((n, sim.window, *sim.latent_shape)))
        return sim.step(acts, rng.standard_normal((n, *sim.latent_shape)), np.zeros((n, *sim.latent_shape)),
                        decode=False).latents

    acts = np.array([1, 3])
    guided, plain, distilled = one_step(teacher, 3.0, acts), one_step(teacher, 1.0, acts), one_step(student, 1.0, acts)
    before, after = (plain - guided).pow(2).mean().item(), (distilled - guided).pow(2).mean().item()
    assert after < 0.7 * before, (before, after)  # measured: 0.156 -> 0.082

    # dit.teacher: another bundle (same autoencoder and normalisation) teaches the init's model; its guidance
    # can keep the conditional frame's mean; a teacher reading other latents is refused
    args = [f"data={dataset}", f"run={tmp_path / 't'}", *TINY_TRAIN, f"init={bundle}", "dit.distill_guidance=2",
            "diffusion.guidance_keep_mean=true", "diffusion.action_dropout=0.5", "dit.steps=2"]
    tr = run_job("train", [*args, f"dit.teacher={teacher_dir}"])
    assert all(torch.equal(v, teacher.dit.state_dict()[k]) for k, v in tr.teacher.state_dict().items())
    assert not all(torch.equal(v, Bundle(bundle).dit.state_dict()[k]) for k, v in tr.teacher.state_dict().items())
    written = Bundle(tmp_path / "t" / "bundle")
    assert written.meta["trained"]["teacher"] == str(teacher_dir) and written.edm.cfg.guidance_keep_mean
    other = tmp_path / "other_teacher"
    write_dir_atomic(other, bundle_files(randomize(src.ae, std=0.1), src.dit, edm_cfg,
                                         (src.meta["latent_mean"], src.meta["latent_std"]), src.env,
                                         src.start_frames, src.start_actions))
    with pytest.raises(ValueError, match="autoencoder"):
        run_job("train", [*args, f"dit.teacher={other}"])


def test_drop_blocks_trains_a_shallower_student_of_its_bundle(bundle, dataset, tmp_path):
    """dit.drop_blocks=[i] with init=BUNDLE: the bundle written has those blocks fewer, the rest started from the
    bundle's weights, and records what it was; the whole bundle teaches it. Without distillation it is refused."""
    import pytest

    from worldsim.checkpoint import Bundle

    args = [f"data={dataset}", f"run={tmp_path / 's'}", *TINY_TRAIN, f"init={bundle}", "dit.drop_blocks=[0]"]
    with pytest.raises(ValueError, match="drop_blocks"):
        run_job("train", args)
    tr = run_job("train", [*args, "dit.distill_guidance=1", "dit.feature_distill=1", "dit.steps=2"])
    teacher, student = Bundle(bundle), Bundle(tmp_path / "s" / "bundle")
    depth = teacher.dit.config.depth
    assert student.dit.config.depth == depth - 1 and tr.teacher.config.depth == depth
    assert student.meta["trained"]["drop_blocks"] == [0] and student.meta["trained"]["feature_distill"] == 1.0
    assert "features" in tr.state["history"]["dit"][-1]
    # a student continued: its own bundle as the init, the whole bundle still its teacher (dit.teacher); without
    # a teacher, distill_guidance=1 and nothing to learn from the real frames is refused
    more = [f"data={dataset}", f"run={tmp_path / 's2'}", *TINY_TRAIN, f"init={tmp_path / 's' / 'bundle'}",
            "dit.distill_guidance=1", "dit.feature_distill=1", "dit.steps=2"]
    with pytest.raises(ValueError, match="dit.teacher=BUNDLE"):
        run_job("train", more)
    tr = run_job("train", [*more, f"dit.teacher={bundle}"])
    assert tr.teacher.config.depth == depth and Bundle(tmp_path / "s2" / "bundle").dit.config.depth == depth - 1


def test_warp_calibration_recovers_the_shift_per_unit():
    """calibrate_warp on frames whose view really moves by 1.5 px per unit of yaw and -0.7 px per unit of
    pitch, with textureless pairs (nothing to track) and a jump (respawn) among them, which the fit leaves out."""
    import pytest

    from worldsim.train import calibrate_warp

    rng = np.random.default_rng(0)
    H, W = 48, 64
    big = rng.integers(0, 256, (3 * H, 3 * W, 3)).astype(np.float32)
    big = (big + np.roll(big, 1, 0) + np.roll(big, 1, 1) + np.roll(big, (1, 1), (0, 1))) / 4  # some smoothness
    y, x, frames, cams = float(H), float(W), [], []
    for t in range(300):
        frames.append(big[int(round(y)):int(round(y)) + H, int(round(x)):int(round(x)) + W])
        cam = rng.uniform(-8, 8, 2)
        cams.append(cam)
        y = float(np.clip(y + 0.7 * cam[0], 0, 2 * H))  # pitch up moves the content down: the window up
        x = float(np.clip(x - 1.5 * cam[1], 0, 2 * W))
    frames = np.stack(frames).astype(np.uint8)
    frames[50:60] = 128  # a grey spell: no shift to find
    frames[200:] = np.roll(frames[200:], 20, axis=2)  # a respawn at 200
    ep = {"frames": frames, "actions": {"camera": np.array(cams, np.float32)}}
    matrix, fit = calibrate_warp([ep], "camera")
    px = np.array(fit["pixels_per_unit"])
    np.testing.assert_allclose(px, [[-0.7, 0.0], [0.0, 1.5]], atol=0.08)  # (dy, dx) of the content
    np.testing.assert_allclose(matrix, px * 2 / np.array([H, W]), rtol=1e-3, atol=1e-4)  # normalised units
    with pytest.raises(ValueError, match="no such key"):
        calibrate_warp([ep], "mouse")


def test_warp_fine_tune_resumes_and_ships(minetest_bundle, minetest_dataset, tmp_path):
    """dit.warp_action=camera on a bundle without it: the model gains the warp input (fitted to the real
    Minetest frames), trains, resumes after a stop with the
    widened input, and its bundle runs as worldsim/Minetest-v0 with a warping world model."""
    import gymnasium as gym

    from worldsim.checkpoint import Bundle

    run = tmp_path / "w"
    args = [f"data={minetest_dataset}", f"run={run}", *TINY_TRAIN, f"init={minetest_bundle}", "dit.warp_action=camera",
            "checkpoint_every=30"]
    first = run_job("train", [*args, "dit.steps=4", "dit.minutes=1e-9"])  # stops after one step
    fit = first.state["metrics"]["warp_fit"]
    assert fit["pairs"] >= 10 and first.dit.config.warp_action == "camera"
    tr = run_job("train", [*args, "dit.steps=4"])
    assert tr.started_at["dit_step"] == 1 and tr.state["dit_step"] == 4
    out = Bundle(run / "bundle")
    assert out.dit.config.warp_action == "camera" and out.meta["metrics"]["warp_fit"] == fit
    w = out.dit.state_dict()["patch_in.weight"]
    n = w.shape[1] // 2
    assert w[:, n:].abs().max() > 0  # the new inputs trained
    assert out.dit.config.warp_kind == "shift"
    # fine-tuned again, the model keeps its fit (not fitted afresh), and the bundle still says what it was;
    # dit.warp_kind=rotation turns by the rotation that fit implies from then on
    again = run_job("train", [f"data={minetest_dataset}", f"run={tmp_path / 'w2'}", *TINY_TRAIN,
                              f"init={run / 'bundle'}", "dit.warp_action=camera", "dit.warp_kind=rotation",
                              "dit.warp_zoom={forward: 1.02}", "dit.steps=1"])
    assert again.dit.config.warp_matrix == out.dit.config.warp_matrix and again.dit.config.warp_kind == "rotation"
    assert again.dit.config.warp_zoom == {"forward": 1.02}
    assert Bundle(tmp_path / "w2" / "bundle").meta["metrics"]["warp_fit"] == fit
    assert Bundle(tmp_path / "w2" / "bundle").dit.config.warp_kind == "rotation"
    env = gym.make("worldsim/Minetest-v0", bundle=str(run / "bundle"))
    obs, _ = env.reset(seed=0)
    a = env.action_space.sample()
    a["camera"] = np.array([0.0, 8.0], np.float32)
    obs2, *_ = env.step(a)
    assert obs2.shape == obs.shape
    env.close()


def test_rollout_training_resumes_and_learns_from_its_own_frames(bundle, dataset, tmp_path):
    """dit.rollout_steps=K: every batch (rollout_prob=1) trains the real next frame on context the model
    generated itself, 1..K steps deep; the job resumes after a stop, its loss log says which loss ran, and the
    bundle records the setting. Bad settings, and guidance distillation in the same run, get a clear error."""
    import pytest

    from worldsim.checkpoint import Bundle

    run = tmp_path / "ro"
    common = [f"data={dataset}", *TINY_TRAIN, f"init={bundle}", "dit.rollout_steps=3", "dit.rollout_prob=1.0",
              "diffusion.residual=true", "log_every=1", "checkpoint_every=30"]
    args = [f"run={run}", *common]
    first = run_job("train", [*args, "dit.steps=4", "dit.minutes=1e-9"])  # stops after one step
    assert first.state["dit_step"] == 1
    tr = run_job("train", [*args, "dit.steps=4"])
    assert tr.started_at["dit_step"] == 1 and tr.state["dit_step"] == 4
    logged = tr.state["history"]["dit"]
    assert len(logged) == 4 and all("rollout" in r and "diffusion" not in r for r in logged)
    assert all(np.isfinite(r["rollout"]) for r in logged)
    out = Bundle(run / "bundle")
    assert out.meta["trained"]["rollout_steps"] == 3
    # the rollout really ran the model: the context frames it hands the loss are generated, not the real ones
    src = Bundle(bundle)
    from worldsim.data import WindowDataset, load_episodes
    eps = load_episodes(dataset, split="train", min_steps=1)
    lat = tr.cached_latents(eps)
    lat = [(x - out.meta["latent_mean"]) / out.meta["latent_std"] for x in lat]
    batch = torch.utils.data.default_collate([WindowDataset(eps, src.dit.config.context_frames + 4, lat)[i]
                                              for i in range(4)])
    a = (batch["latents"], batch["actions"], batch["has_action"])
    gen = src.edm.rollout(src.dit, *a, 3, generator=torch.Generator().manual_seed(0))
    assert (gen[:, -4:-1] - batch["latents"][:, -4:-1]).abs().mean() > 1e-3
    # the GPU's mixed-precision path: the rollout runs under bf16 autocast with the training step
    amp = run_job("train", [f"run={tmp_path / 'bf16'}", *common, "precision=bf16", "dit.steps=2"])
    assert amp.amp and all(np.isfinite(r["rollout"]) for r in amp.state["history"]["dit"])
    for bad, match in ((["dit.distill_guidance=2.0"], "separate"), (["dit.rollout_prob=1.5"], "rollout_prob")):
        with pytest.raises(ValueError, match=match):
            run_job("train", [f"data={dataset}", f"run={tmp_path / 'bad'}", *TINY_TRAIN, f"init={bundle}",
                              "dit.rollout_steps=2", *bad])


def test_energy_training_resumes_logs_its_loss_and_is_recorded(bundle, dataset, tmp_path):
    """dit.energy_prob=1: every batch trains the one-step sampler's energy score (EDM.energy_loss) instead of
    the denoising loss; the job resumes after a stop, its log says which loss ran, the bundle records the
    setting; a share outside [0, 1], or guidance distillation in the same run, gets a clear error."""
    import pytest

    from worldsim.checkpoint import Bundle

    run = tmp_path / "es"
    args = [f"data={dataset}", f"run={run}", *TINY_TRAIN, f"init={bundle}", "dit.energy_prob=1.0", "log_every=1"]
    first = run_job("train", [*args, "dit.steps=3", "dit.minutes=1e-9"])  # stops after one step
    assert first.state["dit_step"] == 1
    tr = run_job("train", [*args, "dit.steps=3"])
    assert tr.started_at["dit_step"] == 1 and tr.state["dit_step"] == 3
    logged = tr.state["history"]["dit"]
    assert len(logged) == 3 and all("energy" in r and "diffusion" not in r and np.isfinite(r["energy"]) for r in logged)
    assert Bundle(run / "bundle").meta["trained"]["energy_prob"] == 1.0
    for bad, match in ((["dit.energy_prob=1.5"], "energy_prob"), (["dit.distill_guidance=2.0"], "separate")):
        with pytest.raises(ValueError, match=match):
            run_job("train", [f"data={dataset}", f"run={tmp_path / 'bad'}", *TINY_TRAIN, f"init={bundle}",
                              "dit.energy_prob=0.5", *bad])


def test_still_weight_fine_tune_is_recorded_and_checked(bundle, dataset, tmp_path):
    """dit.still_weight draws windows that end on a still step (data.still_steps) more often: the run trains,
    the bundle records the weight; zero, negative or infinite weights get a clear error. The same for
    dit.change_weight / change_real / event_share, and for data=[D1,D2] (a second collection of another game: an
    error)."""
    import shutil

    import pytest

    from worldsim.checkpoint import Bundle
    from worldsim.data import load_episodes

    run = tmp_path / "still"
    tr = run_job("train", [f"data={dataset}", f"run={run}", *TINY_TRAIN, f"init={bundle}", "dit.still_weight=4",
                           "dit.steps=2"])
    assert tr.state["dit_step"] == 2
    assert Bundle(run / "bundle").meta["trained"]["still_weight"] == 4.0
    for bad in ("0", "-1", "inf"):
        for key in ("still_weight", "still_threshold"):
            with pytest.raises(ValueError, match=key):
                run_job("train", [f"data={dataset}", f"run={tmp_path / 'bad'}", *TINY_TRAIN, f"init={bundle}",
                                  f"dit.{key}={bad}"])
    # self-distillation with still windows learning the real frame: keeps the guidance the bundle had built in
    run = tmp_path / "self"
    run_job("train", [f"data={dataset}", f"run={run}", *TINY_TRAIN, f"init={bundle}", "dit.still_weight=4",
                      "dit.distill_guidance=1", "dit.still_real=true", "dit.still_threshold=3", "dit.steps=2"])
    trained = Bundle(run / "bundle").meta["trained"]
    assert trained["still_threshold"] == 3.0
    assert trained["still_real"] and trained["distilled_guidance"] == Bundle(bundle).meta["trained"].get(
        "distilled_guidance", 1.0)
    # changed tokens weighted and learning the real frame, on two collections at once: recorded; bad values and
    # a collection of another game get clear errors
    run = tmp_path / "change"
    tr = run_job("train", [f"data=[{dataset},{dataset}]", f"run={run}", *TINY_TRAIN, f"init={bundle}",
                           "dit.distill_guidance=1", "dit.change_real=true", "dit.change_weight=4", "dit.novel_weight=8",
                           "dit.event_share=0.05", "dit.action_share={sleep:0.05,3:0.02}", "dit.steps=2"])
    assert len(tr.train_eps) == 2 * len(load_episodes(dataset, split="train", min_steps=1))
    trained = Bundle(run / "bundle").meta["trained"]
    assert trained["change_real"] and trained["change_weight"] == 4.0 and trained["change_threshold"] == 0.2
    assert trained["novel_weight"] == 8.0 and trained["event_share"] == 0.05
    assert trained["action_share"] == {"6": 0.05, "3": 0.02}  # sleep is Crafter's action 6
    for bad, match in ((["dit.change_weight=0"], "change_weight"), (["dit.change_threshold=nan"], "change_threshold"),
                       (["dit.event_share=1"], "event_share"), (["dit.event_share=-0.1"], "event_share"),
                       (["dit.action_share={nap:0.1}"], "nap"), (["dit.action_share={17:0.1}"], "outside"),
                       (["dit.action_share={sleep:1.5}"], "action_share"),
                       (["dit.novel_weight=-1"], "novel_weight"),
                       (["dit.change_real=true"], "distill_guidance"),
                       (["dit.distill_guidance=1"], "still_real"), (["dit.still_real=true"], "distill_guidance")):
        with pytest.raises(ValueError, match=match):
            run_job("train", [f"data={dataset}", f"run={tmp_path / 'bad'}", *TINY_TRAIN, f"init={bundle}", *bad])
    other = tmp_path / "other"
    shutil.copytree(dataset, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["env"]["action_space"]["n"] = 5
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="action_space"):
        run_job("train", [f"data=[{dataset},{other}]", f"run={tmp_path / 'bad'}", *TINY_TRAIN, "dit.steps=1"])


def test_clock_fine_tune_adds_the_game_clock_resumes_and_ships(bundle, dataset, tmp_path):
    """dit.clock_period=P on a bundle without a clock: the world model gains the clock input (zero at first, so
    it starts as the bundle's model), trains it from each window's steps, resumes with it and ships it; a
    bundle whose clock has another period is refused. Guidance distillation gives the student the clock too."""
    import pytest

    from worldsim.checkpoint import Bundle
    from worldsim.simulator import WorldSimulator

    run = tmp_path / "clock"
    args = [f"data={dataset}", f"run={run}", *TINY_TRAIN, f"init={bundle}", "dit.clock_period=30", "dit.lr=1e-2",
            "diffusion.action_dropout=0.15"]
    tr = run_job("train", [*args, "dit.steps=3", "dit.minutes=1e-6"])  # the time cap stops it after one step
    assert tr.state["dit_step"] == 1
    assert tr.dit.config.clock_period == 30 and tr.dit.clock_embed.embed.weight.abs().max() > 0
    tr = run_job("train", [*args, "dit.steps=3"])  # resumed from the checkpoint, clock and all
    assert tr.started_at["dit_step"] == 1 and tr.state["dit_step"] == 3
    out = Bundle(run / "bundle")
    assert out.meta["world_model"]["clock_period"] == 30 and out.dit.clock_embed is not None
    torch.testing.assert_close(out.dit.clock_embed.embed.weight, tr.dit.clock_embed.embed.weight)
    sim = WorldSimulator(out, 2, sampling_steps=1)
    rng = np.random.default_rng(0)
    shape = sim.latent_shape
    noise = np.repeat(rng.standard_normal((1, sim.window, *shape)), 2, 0)
    frames, acts = out.start_frames[:1].numpy().repeat(2, 0), out.start_actions[:1].numpy().repeat(2, 0)
    sim.reset([0, 1], frames, acts, noise, [sim.window - 1, sim.window - 1 + 15])
    step = np.repeat(rng.standard_normal((1, *shape)), 2, 0)
    z = sim.step(np.array([1, 1]), step, step, decode=False).latents
    assert (z[0] - z[1]).abs().max() > 1e-4  # noon and midnight of a 30-step day differ
    with pytest.raises(ValueError, match="already reads a clock of period 30"):
        run_job("train", [f"data={dataset}", f"run={tmp_path / 'bad'}", *TINY_TRAIN, f"init={run / 'bundle'}",
                          "dit.clock_period=20"])
    run_job("train", [f"data={dataset}", f"run={tmp_path / 'dist'}", *TINY_TRAIN, f"init={bundle}",
                      f"dit.teacher={run / 'bundle'}", "dit.distill_guidance=2", "dit.clock_period=30", "dit.steps=1"])
    assert Bundle(tmp_path / "dist" / "bundle").dit.config.clock_period == 30


def test_frame_context_fine_tune_learns_from_a_window_teacher_and_ships(bundle, dataset, tmp_path):
    """dit.context_attention=frame on a bundle whose frames attend to the window: the student starts from the
    same weights, the distillation teacher is the bundle as it is (window), the bundle written is a frame model
    whose simulator runs no rebuild; rollout training, not written for it, is refused."""
    import pytest

    from worldsim.checkpoint import Bundle
    from worldsim.simulator import WorldSimulator

    run = tmp_path / "frame"
    common = [f"data={dataset}", *TINY_TRAIN, f"init={bundle}", "dit.context_attention=frame"]
    tr = run_job("train", [*common, f"run={run}", "dit.distill_guidance=1", "dit.still_real=true", "dit.steps=2"])
    assert tr.dit.config.context_attention == "frame" and tr.teacher.config.context_attention == "window"
    out = Bundle(run / "bundle")
    assert out.meta["world_model"]["context_attention"] == "frame" and out.dit.config.context_attention == "frame"
    assert WorldSimulator(out, 1, fresh_window=1).fresh_window == 0
    with pytest.raises(ValueError, match="not written for context_attention=frame"):
        run_job("train", [*common, f"run={tmp_path / 'bad'}", "dit.rollout_steps=2"])


def test_ema_weights_ship_and_continue_across_a_resume(bundle, dataset, tmp_path):
    """dit.ema: the bundle ships the moving average of the world model's weights, not the last step's, and
    records the decay; a run paused by its time cap goes on with the same average (its update count carries
    on from the checkpoint); a decay outside [0, 1) gets a clear error."""
    import pytest

    from worldsim.checkpoint import Bundle

    run = tmp_path / "ema"
    args = [f"data={dataset}", f"run={run}", *TINY_TRAIN, f"init={bundle}", "dit.ema=0.5", "dit.steps=4"]
    tr = run_job("train", [*args, "dit.minutes=1e-6"])  # the time cap stops it after its first step
    assert tr.state["stage"] == "dit" and tr.state["dit_step"] == 1
    tr = run_job("train", args)
    assert tr.started_at["dit_step"] == 1 and tr.state["dit_step"] == 4
    assert int(tr.ema.n_averaged) == 4  # one update per step, the first one before the pause
    shipped = load_file(run / "bundle" / "world_model.safetensors")
    ema, last = tr.ema.module.state_dict(), tr.dit.state_dict()
    assert shipped.keys() == last.keys() and all(torch.equal(shipped[k], ema[k]) for k in shipped)
    assert any(not torch.equal(shipped[k], last[k]) for k in shipped)
    assert Bundle(run / "bundle").meta["trained"]["ema"] == 0.5
    for bad in ("1", "-0.1", "nan"):
        with pytest.raises(ValueError, match="dit.ema"):
            run_job("train", [f"data={dataset}", f"run={tmp_path / 'bad'}", *TINY_TRAIN, f"init={bundle}",
                              f"dit.ema={bad}"])


def test_codebook_from_training_and_for_a_trained_bundle(bundle, dataset, tmp_path):
    """`worldsim train codebook=K` puts a K-entry codebook of training latent tokens into the bundle with snap
    on; `worldsim codebook` adds one to a trained bundle and leaves its weights as they were; the env then
    shows frames made of codebook tokens. A VAE, a bundle with no codebook and frames of the wrong size get
    clear errors."""
    import shutil

    import gymnasium as gym
    import pytest

    from worldsim.checkpoint import Bundle

    tr = run_job("train", [f"data={dataset}", f"run={tmp_path / 'cb'}", *TINY_TRAIN, f"init={bundle}", "dit.steps=1",
                           "codebook=16", "codebook_head=true"])
    b = Bundle(tr.run / "bundle")
    assert b.codebook.shape == (16, b.dit.config.latent_channels) and b.meta["decode"]["snap"] is True
    assert b.meta["codebook"]["entries"] == 16 and b.token_head is not None  # snap=sample can use it; default nearest
    assert b.meta["codebook"]["head"]["certain"] == 0.95 and len(b.codebook_groups) == 16
    with pytest.raises(ValueError, match="codebook=K"):
        run_job("train", [f"data={dataset}", f"run={tmp_path / 'nohead'}", *TINY_TRAIN, "codebook_head=true"])
    with pytest.raises(ValueError, match="residual"):  # refused at the start, not at export
        run_job("train", [f"data={dataset}", f"run={tmp_path / 'res'}", *TINY_TRAIN, f"init={bundle}", "codebook=16",
                          "codebook_head=true", "diffusion.residual=true"])
    shutil.copytree(bundle, tmp_path / "copy")
    info = run_job("codebook", [f"bundle={tmp_path / 'copy'}", f"data={dataset}", "entries=16", "frames=40"])
    assert info["frames"] == 40 and info["tokens"] == 40 * 81
    c = Bundle(tmp_path / "copy")
    assert c.codebook.shape == (16, c.dit.config.latent_channels) and c.meta["decode"]["snap"]
    for n in ("world_model.safetensors", "autoencoder.safetensors", "start_states.safetensors"):
        assert (tmp_path / "copy" / n).read_bytes() == (bundle / n).read_bytes()
    env = gym.make("worldsim/Crafter-v0", bundle=str(tmp_path / "copy"))
    env.reset(seed=0)
    for a in (1, 2, 5):
        env.step(a)
    sim = env.unwrapped.sim
    assert sim.snap
    tokens = sim.prev[0].flatten(1).T  # every token is exactly an entry (cdist's matrix-product distance is not
    assert (tokens[:, None] == c.codebook[None]).all(-1).any(1).all()  # exact: it gave 7e-4 for an equal pair)
    env.close()
    with pytest.raises(ValueError, match="codebook"):
        gym.make("worldsim/Crafter-v0", bundle=str(bundle), snap=True)
    # the token head, beside the codebook it keeps (refit=false): trained on the episodes, snap=sample by default
    with pytest.raises(ValueError, match="token head"):
        gym.make("worldsim/Crafter-v0", bundle=str(tmp_path / "copy"), snap="sample")
    info = run_job("codebook", [f"bundle={tmp_path / 'copy'}", f"data={dataset}", "refit=false", "head=true",
                                "groups=4", "head_windows=20", "head_steps=30", "head_hidden=16", "snap=sample"])
    h = Bundle(tmp_path / "copy")
    assert torch.equal(h.codebook, c.codebook) and h.meta["decode"]["snap"] == "sample"
    assert info["head"]["groups"] == 4 and info["head"]["windows"] == 20 and 0 <= info["head"]["held_accuracy"] <= 1
    assert sorted(h.codebook_groups.unique().tolist()) == [0, 1, 2, 3] and h.token_head is not None
    env = gym.make("worldsim/Crafter-v0", bundle=str(tmp_path / "copy"), sampling_steps=1, guidance=1.0)
    env.reset(seed=0)
    for a in (1, 2, 5):
        obs, *_ = env.step(a)
    tokens = env.unwrapped.sim.prev[0].flatten(1).T
    assert env.unwrapped.sim.snap == "sample" and (tokens[:, None] == h.codebook[None]).all(-1).any(1).all()
    env.close()
    with pytest.raises(ValueError, match="patch"):
        run_job("train", [f"data={dataset}", f"run={tmp_path / 'vae'}", *TINY_TRAIN, "codebook=16"])
    small = tmp_path / "small"
    from worldsim.data import write_episode
    write_episode(small / "episodes" / "ep_000000.npz", np.zeros((3, 32, 32, 3), np.uint8), np.zeros(2, np.int64),
                  np.zeros(2), np.zeros(2, bool))
    with pytest.raises(ValueError, match="frames of shape"):
        run_job("codebook", [f"bundle={tmp_path / 'copy'}", f"data={small}", "entries=4"])


def test_codebook_job_fits_the_terrain_prior_and_keeps_the_rest(bundle, dataset, tmp_path):
    """`worldsim codebook refit=false terrain=true new_ground=terrain` adds the terrain prior, learnt from the
    real scrolls of the episodes, to a bundle with a codebook and token head: codebook, head and weights stay
    as they were, the bundle draws new ground from the prior by default, and the env's frames stay codebook
    entries. A bundle without the game's map gets a clear error."""
    import json
    import shutil

    import gymnasium as gym
    import pytest

    from worldsim.checkpoint import Bundle

    shutil.copytree(bundle, tmp_path / "b")
    run_job("codebook", [f"bundle={tmp_path / 'b'}", f"data={dataset}", "entries=16", "frames=40", "head=true",
                         "groups=4", "head_windows=20", "head_steps=10", "head_hidden=16"])
    before = Bundle(tmp_path / "b")
    info = run_job("codebook", [f"bundle={tmp_path / 'b'}", f"data={dataset}", "refit=false", "terrain=true",
                                "terrain_steps=20", "terrain_hidden=16", "new_ground=terrain", "terrain_floor=0.5"])
    b = Bundle(tmp_path / "b")
    assert info["terrain"]["cells"] > 0 and info["terrain"]["groups"] == 4 and "head" in info
    # groups shown only where the player stands: never on the other map cells of the training frames
    assert all(0 <= g < 4 for g in info["terrain"]["fixed_only"])
    assert b.terrain_fixed_only.tolist() == info["terrain"]["fixed_only"]
    assert torch.equal(b.codebook, before.codebook) and torch.equal(b.codebook_groups, before.codebook_groups)
    for k, v in before.token_head.state_dict().items():
        assert torch.equal(b.token_head.state_dict()[k], v)
    assert b.terrain_prior is not None and b.meta["decode"]["new_ground"] == "terrain"
    assert b.meta["decode"]["terrain_floor"] == 0.5
    for n in ("world_model.safetensors", "autoencoder.safetensors"):
        assert (tmp_path / "b" / n).read_bytes() == (bundle / n).read_bytes()
    env = gym.make("worldsim/Crafter-v0", bundle=str(tmp_path / "b"), map_memory=True)
    env.reset(seed=0)
    for a in (1, 1, 2, 3, 4, 4):
        env.step(a)
    sim = env.unwrapped.sim
    assert sim.new_ground == "terrain" and sim.terrain_floor == 0.5
    tokens = sim.prev[0].flatten(1).T
    assert (tokens[:, None] == b.codebook[None]).all(-1).any(1).all()
    env.close()
    info = run_job("codebook", [f"bundle={tmp_path / 'b'}", f"data={dataset}", "refit=false", "mobile=true",
                                "mobile_share=0.0"])  # every entry whose tile ever changed: some on real Crafter
    m = Bundle(tmp_path / "b")
    assert info["mobile"]["entries"] and m.codebook_mobile.tolist() == info["mobile"]["entries"]
    env = gym.make("worldsim/Crafter-v0", bundle=str(tmp_path / "b"), map_memory=True)
    env.reset(seed=0)
    assert env.unwrapped.sim.map.mobile is not None
    env.step(1)
    env.close()
    run_job("codebook", [f"bundle={tmp_path / 'b'}", f"data={dataset}", "refit=false"])  # keeps what it carries
    assert Bundle(tmp_path / "b").terrain_prior is not None and Bundle(tmp_path / "b").token_head is not None
    assert Bundle(tmp_path / "b").codebook_mobile is not None
    meta = json.loads((tmp_path / "b" / "bundle.json").read_text())
    del meta["env"]["map"]
    (tmp_path / "b" / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="env.map"):
        run_job("codebook", [f"bundle={tmp_path / 'b'}", f"data={dataset}", "refit=false", "terrain=true"])
    with pytest.raises(ValueError, match="env.map"):
        run_job("codebook", [f"bundle={tmp_path / 'b'}", f"data={dataset}", "refit=false", "mobile=true"])


def test_heads_refit_learns_where_episodes_end_and_changes_only_the_heads(bundle, dataset, tmp_path):
    """`worldsim heads` refits the reward and termination heads on the commit-pass input of the frozen world model,
    stepped as the env steps (one feature row per transition after W real frames): after the refit the
    termination head separates the training ends from the other steps, and the job rewrites the bundle with
    every other weight as it was."""
    import copy
    import shutil

    import pytest

    from worldsim.checkpoint import Bundle
    from worldsim.data import load_episodes
    from worldsim.heads import commit_features, head_counts, refit_heads

    b = Bundle(bundle)
    eps = load_episodes(dataset, split="train")
    for ep in eps:
        ep["terminated"] = np.zeros(len(ep["actions"]), bool)
        ep["terminated"][-1] = True
    feats = commit_features(b, eps, batch=16)
    assert len(feats[0]) == sum(len(ep["frames"]) - b.dit.config.context_frames for ep in eps)
    refit_heads(b, *feats, steps=600)
    c = head_counts(b, *feats)
    e = c["termination"]  # ends ranked above every other step, and about as many expected as there are
    assert e["ends"] == len(eps) and e["auroc"] > 0.95 and 0.5 * len(eps) < e["expected_ends"] < 2 * len(eps), e

    with torch.no_grad():
        before = torch.sigmoid(b.dit.heads_mlp(b.dit.head_norm(feats[0]))[:, 1])
    # a reward at every end to learn, and labels that say no step ends: only keep_termination holds the head
    relabelled = (feats[0], torch.where(feats[2], 1.0, 0.0), torch.zeros_like(feats[2]))
    moved = copy.deepcopy(b)
    refit_heads(moved, *relabelled, steps=300)
    with torch.no_grad():
        assert (torch.sigmoid(moved.dit.heads_mlp(moved.dit.head_norm(feats[0]))[:, 1]) - before).abs().max() > 0.2
    refit_heads(b, *relabelled, steps=300, keep_termination=True)
    with torch.no_grad():
        o = b.dit.heads_mlp(b.dit.head_norm(feats[0]))
    assert (torch.sigmoid(o[:, 1]) - before).abs().max() < 0.05  # the termination head kept
    assert o[feats[2], 0].mean() > 0.5 > o[~feats[2], 0].abs().mean()  # while the reward head learned the ends

    shutil.copytree(bundle, tmp_path / "copy")
    info = run_job("heads", [f"bundle={tmp_path / 'copy'}", f"data={dataset}", "steps=50", "end_weight=3"])
    assert info["end_weight"] == 3.0 and info["achievement_weight"] == 2.0  # 2: configs/heads.yaml
    assert info["steps"] == 50 and info["transitions"] > 0
    old, new = load_file(bundle / "world_model.safetensors"), load_file(tmp_path / "copy" / "world_model.safetensors")
    assert old.keys() == new.keys()
    changed = {k for k in old if not torch.equal(old[k], new[k])}
    assert changed and all(k.startswith(("head_norm", "heads_mlp")) for k in changed)
    assert Bundle(tmp_path / "copy").meta["trained"]["heads_refit"]["steps"] == 50
    both = run_job("heads", [f"bundle={tmp_path / 'copy'}", f"data=[{dataset},{dataset}]", "steps=5"])
    assert Bundle(tmp_path / "copy").meta["trained"]["heads_refit"]["previous"]["steps"] == 50  # the refit before
    assert both["transitions"] == 2 * info["transitions"] and len(both["test"]) == 1  # one collection given twice
    capped = run_job("heads", [f"bundle={tmp_path / 'copy'}", f"data=[{dataset},{dataset}]", "steps=5", "max_transitions=7"])
    assert capped["transitions"] == 14 and capped["test"][str(dataset)]["transitions"] == 7  # per collection and split
    assert len(commit_features(b, eps, batch=16, max_transitions=5)[0]) == 5

    # features_cache: the stepped features are kept per collection and split, read back by a later refit of the
    # same world model (its heads changed since: the key leaves them out), and an unreadable file is recomputed
    cache, args = tmp_path / "cache", [f"bundle={tmp_path / 'copy'}", f"data={dataset}", "steps=5", "max_transitions=9"]
    first = run_job("heads", args + [f"features_cache={cache}"])
    files = sorted(cache.glob("heads_*.safetensors"))
    assert len(files) == 2  # train and test split
    from worldsim.heads import features_key

    test_file = cache / f"heads_{features_key(Bundle(tmp_path / 'copy'), dataset, 'test', 1, 9, 64)}.safetensors"
    assert test_file in files  # the test split's (seed + 1, the job's default batch of 64)
    t = load_file(test_file)
    assert int((t["rewards"] > 0.5).sum()) == first["test"][str(dataset)]["before"]["achievements"]
    t["rewards"] = torch.ones_like(t["rewards"])  # every test transition now an achievement: seen only if read back
    save_file(t, test_file)
    again = run_job("heads", args + [f"features_cache={cache}"])
    assert again["test"][str(dataset)]["before"]["achievements"] == 9 != first["test"][str(dataset)]["before"]["achievements"]
    test_file.write_bytes(b"torn")
    with pytest.warns(UserWarning, match="unreadable"):
        third = run_job("heads", args + [f"features_cache={cache}"])
    assert third["test"][str(dataset)]["before"]["achievements"] == first["test"][str(dataset)]["before"]["achievements"]
    assert len(load_file(test_file)["rewards"]) == 9  # written again

    with pytest.raises(ValueError, match="max_transitions must be a whole number"):
        run_job("heads", [f"bundle={tmp_path / 'copy'}", f"data={dataset}", "max_transitions=0"])
    with pytest.raises(ValueError, match="no training episodes"):
        run_job("heads", [f"bundle={tmp_path / 'copy'}", f"data={tmp_path / 'nothing'}"])
    with pytest.raises(ValueError, match="steps must be positive, or 0 with calibrate=true"):
        run_job("heads", [f"bundle={tmp_path / 'copy'}", f"data={dataset}", "steps=0"])


def test_termination_calibration_matches_the_count_and_keeps_the_ranking(bundle, dataset, tmp_path):
    """Platt scaling folded into the last layer: an over-confident termination head (its logit tripled and
    shifted) expects as many ends as there are on the features it is fit on (the optimum of the shift makes
    the probabilities sum to the count), ranks them as before, and the folded layer computes a * logit + b.
    `worldsim heads steps=0 calibrate=true` does it on the test splits and changes only that layer's row."""
    import shutil

    import pytest

    from worldsim.checkpoint import Bundle
    from worldsim.data import load_episodes
    from worldsim.data import load_manifest, read_episode, write_episode
    from worldsim.heads import calibrate_termination, commit_features, head_counts

    b = Bundle(bundle)
    eps = load_episodes(dataset, split="train")
    for ep in eps:
        ep["terminated"] = np.zeros(len(ep["actions"]), bool)
        ep["terminated"][-1] = True
    feats, rewards, ends = commit_features(b, eps, batch=16)
    last = b.dit.heads_mlp[-1]
    with torch.no_grad():
        last.weight[1] = 3 * last.weight[1] + 0.1 * torch.randn(last.weight.shape[1], generator=torch.Generator().manual_seed(0))
        last.bias[1] = 3 * last.bias[1] + 2.0  # over-confident and too likely
        z = b.dit.heads_mlp(b.dit.head_norm(feats))[:, 1]
    before = head_counts(b, feats, rewards, ends)["termination"]
    assert before["expected_ends"] > 2 * len(eps), before
    cal = calibrate_termination(b, feats, ends)
    after = head_counts(b, feats, rewards, ends)["termination"]
    assert after["expected_ends"] == pytest.approx(len(eps), rel=1e-3) and cal["ends"] == len(eps)
    assert after["auroc"] == pytest.approx(before["auroc"])
    with torch.no_grad():
        folded = b.dit.heads_mlp(b.dit.head_norm(feats))
    assert torch.allclose(folded[:, 1], cal["scale"] * z + cal["shift"], atol=1e-4)
    with pytest.raises(ValueError, match="needs both ends and other steps"):
        calibrate_termination(b, feats, torch.zeros_like(ends))

    with pytest.raises(ValueError, match="no training episodes"):
        run_job("heads", [f"bundle={bundle}", f"data={tmp_path / 'nothing'}", "steps=0", "calibrate=true"])
    shutil.copytree(dataset, tmp_path / "data")  # its test episodes end in a death, as real Crafter's do
    for e in load_manifest(tmp_path / "data")["episodes"]:
        if e.get("split") == "test":
            ep = read_episode(tmp_path / "data" / e["file"])
            ep["terminated"][-1] = True
            write_episode(tmp_path / "data" / e["file"], ep["frames"], ep["actions"], ep["rewards"], ep["terminated"], ep["seed"])
    shutil.copytree(bundle, tmp_path / "copy")
    info = run_job("heads", [f"bundle={tmp_path / 'copy'}", f"data={tmp_path / 'data'}", "steps=0", "calibrate=true",
                            "device=auto", "batch_size=8"])  # auto: this CPU (a GPU where there is one)
    assert "transitions" not in info and info["calibration"]["ends"] >= 1
    old, new = load_file(bundle / "world_model.safetensors"), load_file(tmp_path / "copy" / "world_model.safetensors")
    assert {k for k in old if not torch.equal(old[k], new[k])} <= {"heads_mlp.2.weight", "heads_mlp.2.bias"}
    assert torch.equal(old["heads_mlp.2.weight"][0], new["heads_mlp.2.weight"][0])  # the reward row as it was
    meta = Bundle(tmp_path / "copy").meta["trained"]
    assert "heads_calibrated" in meta and meta.get("heads_refit") == Bundle(bundle).meta["trained"].get("heads_refit")


def test_minutes_schedule_anneals_by_the_wall_clock(bundle, dataset, tmp_path):
    """dit.schedule=minutes: the cosine decay follows whichever of dit.steps and the dit.minutes cap runs out
    first, so a time-capped run ends at the floor rate however fast the hardware is; it needs dit.minutes."""
    import pytest

    from worldsim.checkpoint import Bundle
    from worldsim.train import cosine, schedule_progress

    assert schedule_progress(10, 100, 30.0, 1.0, by_time=False) == 0.1
    assert schedule_progress(10, 100, 30.0, 1.0, by_time=True) == 0.5  # half the minute gone: half way
    assert schedule_progress(80, 100, 30.0, 1.0, by_time=True) == 0.8  # steps ahead of the clock
    assert schedule_progress(10, 100, 600.0, 1.0, by_time=True) == 1.0
    assert cosine(schedule_progress(10, 100, 600.0, 1.0, True), 1.0) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="dit.schedule"):
        run_job("train", [f"data={dataset}", f"run={tmp_path / 'bad'}", *TINY_TRAIN, f"init={bundle}",
                          "dit.schedule=minutes"])
    run = tmp_path / "timed"
    run_job("train", [f"data={dataset}", f"run={run}", *TINY_TRAIN, f"init={bundle}", "dit.schedule=minutes",
                      "dit.minutes=5", "dit.steps=2"])
    assert Bundle(run / "bundle").meta["trained"]["schedule"] == "minutes"
    # the cap reached first: the schedule has run its course, so the run is done and writes its bundle
    run = tmp_path / "capped"
    tr = run_job("train", [f"data={dataset}", f"run={run}", *TINY_TRAIN, f"init={bundle}", "dit.schedule=minutes",
                           "dit.minutes=0.0001", "dit.steps=100000"])
    trained = Bundle(run / "bundle").meta["trained"]
    assert 1 <= trained["dit_steps"] == tr.state["dit_step"] < 100000
