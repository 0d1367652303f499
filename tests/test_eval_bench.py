"""`worldsim eval` and `worldsim bench` on the tiny bundle: they run, print and write their JSON."""
import json

import numpy as np
import pytest

from worldsim.cli import run_job
from worldsim.evaluate import psnr_np


def test_psnr():
    a = np.zeros((2, 4, 4, 3), np.uint8)
    b = a.copy()
    b[1] = 255
    assert psnr_np(a, a)[0] > 100  # identical images: very large, finite
    assert abs(psnr_np(a, b)[1]) < 1e-9  # maximal error: 0 dB
    c = a.copy()
    c[0] = 16
    assert abs(psnr_np(a, c)[0] - 20 * np.log10(255 / 16)) < 1e-9


def test_eval_writes_figures_beside_baselines(bundle, dataset, tmp_path):
    out = tmp_path / "eval.json"
    res = run_job("eval", [f"bundle={bundle}", f"data={dataset}", f"cache_dir={tmp_path / 'heldout'}", "windows=4",
                           "batch_size=2", "stride=4",
                           "horizons=[1,2,4]", f"out={out}", f"plot={tmp_path / 'curve.png'}", f"grid={tmp_path / 'grid.png'}", "grid_rows=2",
                           "probes=4", "probe_every=5", "max_steps=60", "stability_steps=30", "stability_block=10",
                           "bank_frames=64", f"stability_strip={tmp_path / 'strip.png'}",
                           f"stability_plot={tmp_path / 'stab.png'}"])
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(res))
    assert res["windows"] == 4 and sorted(res["rollout_curve"], key=int) == ["1", "2", "3", "4"]
    # the settings it ran with, the bundle's defaults resolved: the tiny bundle has no codebook or map memory
    inf = res["inference"]
    assert inf["snap"] is False and inf["map_memory"] is False and inf["new_ground"] == "nearest"
    assert inf["sampling_steps"] == res["sampling_steps"]
    nf = res["next_frame_psnr"]
    assert nf["model"] == res["rollout_psnr"]["1"]["model"] and abs(nf["gain_db"] - (nf["model"] - nf["copy_last"])) < 1e-9
    assert 5 < nf["copy_last"] < 149 and 0 < nf["model"] < 149
    # pooled: PSNR of the mean MSE, never above the mean of per-frame PSNR (log is concave)
    pooled = nf["pooled"]
    assert 5 < pooled["copy_last"] <= nf["copy_last"] + 1e-9 and 0 < pooled["model"] <= nf["model"] + 1e-9
    assert abs(pooled["gain_db"] - (pooled["model"] - pooled["copy_last"])) < 1e-9
    assert 0 <= nf["identical_frames"] <= res["windows"]
    pw = nf["per_window"]  # (episode, start) of each window and its two next-frame PSNRs
    assert len(pw["model"]) == len(pw["copy_last"]) == len(pw["start"]) == res["windows"]
    assert abs(np.mean(pw["model"]) - nf["model"]) < 1e-9 and abs(np.mean(pw["copy_last"]) - nf["copy_last"]) < 1e-9
    assert sum(p > 100 for p in pw["copy_last"]) == nf["identical_frames"]  # exact copies: the MSE floor
    # the third baseline: one constant image, the average of the held-out frames, on the eval's own windows
    from worldsim.data import load_episodes
    from worldsim.evaluate import psnr_of_mse, rollout_starts

    eps = load_episodes(dataset, split="test")
    W, H = res["context_frames"], 4
    starts = rollout_starts(eps, W, H, 4, 4, np.random.default_rng(1000000))  # as the eval draws them (its seed)
    mean = np.concatenate([ep["frames"] for ep in eps]).astype(np.float64).mean(0)
    for h in (1, 4):
        fut = np.stack([eps[e]["frames"][s + W + h - 1] for e, s in starts]).astype(np.float64)
        mse = ((fut - mean) ** 2).mean(axis=(1, 2, 3))
        c = res["rollout_curve"][str(h)]
        assert abs(c["mean_frame"] - psnr_of_mse(mse).mean()) < 1e-6
        assert abs(c["mean_frame_pooled"] - psnr_of_mse(mse.mean())) < 1e-6
    # heads: every held-out transition after W real frames, the episodes' last ones (where they end) included
    assert res["head_transitions"] == sum(len(ep["frames"]) - W for ep in eps)
    th = res["termination_head"]
    assert th["ends"] == th["threshold_0.5"]["positives"] == sum(int(ep["terminated"][W - 1:].sum()) for ep in eps)
    assert 0 <= th["expected_ends"] <= res["head_transitions"]
    assert res["reward_head"]["positives"] == sum(int((ep["rewards"][W - 1:] > 0.5).sum()) for ep in eps)
    assert (tmp_path / "curve.png").stat().st_size > 1000
    import imageio.v2 as imageio

    grid = imageio.imread(tmp_path / "grid.png")  # 2 windows x (real row, model row, gap), 2x upscaled
    assert grid.shape == (2 * 2 * (64 + 64 + 4), 2 * 64 * 1, 3)
    f = res["following"]  # noop + 4 moves from the same real context, real outcomes from deepcopies
    assert f["probes"] == 4 and set(f["per_action"]) == {"noop", "move_left", "move_right", "move_up", "move_down"}
    assert 0 < f["counted"] <= 20 and 0 <= f["accuracy"] <= 1
    moves = f["by_context_action"]  # the 4 move probes, split by whether they repeat the context's last action
    assert moves["repeat"]["counted"] + moves["change"]["counted"] == f["counted"] - f["per_action"]["noop"]["counted"]
    assert (tmp_path / "heldout" / "following_probes.npz").exists()
    st = res["stability"]
    assert st["steps"] == 30 and len(st["blocks"]) == 3 and st["blocks"][2]["steps"] == [21, 30]
    assert 5 < st["real_reference"]["nn_psnr"] < 100 and all(0 < b["nn_psnr"] < 100 for b in st["blocks"])
    real_change = np.concatenate([np.abs(np.diff(ep["frames"].astype(np.int16), axis=0)).mean(axis=(1, 2, 3))
                                  for ep in eps])
    assert st["real_reference"]["frozen_share"] == float((real_change < 0.05).mean())
    real_return = 1000 * sum(ep["rewards"].sum() for ep in eps) / sum(len(ep["rewards"]) for ep in eps)
    assert abs(st["real_reference"]["return_per_1000"] - real_return) < 1e-6  # the env's rewards beside the real ones
    assert all(np.isfinite(b["return_per_1000"]) for b in st["blocks"])
    assert all(b["rss_mib"] > 100 for b in st["blocks"])  # resident memory per block (torch alone is more)
    assert imageio.imread(tmp_path / "strip.png").shape == (2 * 64, 2 * 3 * 66, 3)
    assert (tmp_path / "stab.png").stat().st_size > 1000


def test_end_scores_match_their_definitions():
    from worldsim.evaluate import end_scores

    rng = np.random.default_rng(0)
    prob = np.round(rng.random(200), 1)  # rounded: ties between ends and other steps count half
    true = rng.random(200) < 0.3
    s = end_scores(prob, true)
    pos, neg = prob[true], prob[~true]
    brute = np.mean([(p > q) + 0.5 * (p == q) for p in pos for q in neg])
    assert abs(s["auroc"] - brute) < 1e-12
    assert s["ends"] == true.sum() and abs(s["expected_ends"] - prob.sum()) < 1e-9
    assert abs(s["expected_recall"] - pos.mean()) < 1e-12 and abs(s["expected_precision"] - pos.sum() / prob.sum()) < 1e-12
    # a head that ranks every end first scores AUROC 1 whatever its scale; an inverted one 0
    assert end_scores(np.where(true, 0.02, 0.01), true)["auroc"] == 1.0
    assert end_scores(np.where(true, 0.01, 0.02), true)["auroc"] == 0.0
    # per episode: the chance of a drawn end in the window up to each real end, not reaching into another episode
    prob = np.array([0.1, 0.1, 0.5, 0.2, 0.2, 0.2, 0.0, 0.3])
    true = np.array([0, 0, 1, 0, 0, 0, 0, 1], bool)
    ne = end_scores(prob, true, episode=[0, 0, 0, 1, 1, 1, 1, 1], window=3)["near_real_ends"]
    assert abs(ne["chance_per_end"] - np.mean([1 - 0.9 * 0.9 * 0.5, 1 - 0.8 * 1.0 * 0.7])) < 1e-12
    assert abs(ne["expected_ends_elsewhere_per_1000"] - 1000 * np.mean([0.2, 0.2])) < 1e-9
    assert abs(end_scores(prob, true, episode=[0] * 8, window=6)["near_real_ends"]["chance_per_end"] -
               np.mean([1 - 0.9 * 0.9 * 0.5, 1 - 0.5 * 0.8 ** 3 * 0.7])) < 1e-12  # one episode: windows reach back
    empty = end_scores([0.1, 0.2], [False, False])
    assert empty["auroc"] is None and empty["expected_recall"] is None and empty["ends"] == 0


def test_nearest_psnr_finds_the_matching_real_frame():
    from worldsim.evaluate import nearest_psnr

    rng = np.random.default_rng(0)
    bank = rng.integers(0, 256, (50, 8, 8, 3), dtype=np.uint8)
    q = bank[[7, 30]].copy()
    q[1, 0, 0, 0] ^= 1  # one pixel off by one grey level
    got = nearest_psnr(q, bank, chunk=16)
    assert got[0] > 60 and abs(got[1] - psnr_np(q[1], bank[30])) < 1e-3
    flat = np.full((1, 8, 8, 3), 128, np.uint8)  # a collapsed, flat frame is far from every real one
    assert nearest_psnr(flat, bank)[0] < 15


def test_bench_reports_model_and_real_crafter(bundle, tmp_path):
    out = tmp_path / "bench.json"
    res = run_job("bench", [f"bundle={bundle}", "steps=6", "warmup=1", "batch_sizes=[1,3]", "real_steps=50",
                            "rss_every=2", f"out={out}"])
    assert res["real_crafter_steps_per_s"] > 0
    rows = {r["batch"]: r for r in res["model"]}
    assert set(rows) == {1, 3} and all(r["device"] == "cpu" for r in rows.values())
    assert abs(rows[3]["env_steps_per_s"] - 3 * rows[3]["steps_per_s"]) < 1e-6
    assert json.loads(out.read_text())["model"][0]["batch"] == 1
    assert rows[1]["new_ground"] == "nearest" and rows[1]["quantize"] == "fp32"  # its settings, resolved
    assert all(len(r["rss_trace_mib"]) == 3 and min(r["rss_trace_mib"]) > 0 for r in rows.values())  # every 2 of 6
    assert all(r["kernels"] == "torch" for r in rows.values())  # CPU runs take the references
    with pytest.raises(ValueError, match="kernels must be one of torch, triton, got 'fast'"):
        run_job("bench", [f"bundle={bundle}", "steps=2", "batch_sizes=[1]", "real_steps=5", "kernels=[torch,fast]"])


def test_bench_rounds_report_medians_and_the_ratio_within_each_round(bundle):
    res = run_job("bench", [f"bundle={bundle}", "steps=3", "warmup=1", "batch_sizes=[2]", "real_steps=30", "rounds=3"])
    reals = res["real_crafter_per_round"]
    assert res["rounds"] == 3 and len(reals) == 3 and res["real_crafter_steps_per_s"] == float(np.median(reals))
    (r,) = res["model"]
    per = r["per_round"]
    assert len(per["env_steps_per_s"]) == len(per["vs_real"]) == 3
    assert all(abs(v - e / real) < 1e-9 for v, e, real in zip(per["vs_real"], per["env_steps_per_s"], reals))
    # both CPU inference paths in every round: one row each, with its setting
    both = run_job("bench", [f"bundle={bundle}", "steps=2", "warmup=1", "batch_sizes=[1]", "real_steps=20", "rounds=2",
                             "quantize=[none,int8]"])
    assert sorted(r["quantize"] for r in both["model"]) == ["fp32", "int8"]
    assert all(len(r["per_round"]["env_steps_per_s"]) == 2 for r in both["model"])
    assert r["env_steps_per_s"] == float(np.median(per["env_steps_per_s"]))
    assert r["vs_real"] == float(np.median(per["vs_real"]))


def test_following_probes_are_kept_on_disk_and_reprobed_when_stale_or_corrupt(tmp_path, monkeypatch):
    import pytest

    from worldsim import evaluate
    from worldsim.cli import load_config

    cfg = load_config("eval", [f"cache_dir={tmp_path}", "probes=2", "probe_every=5", "max_steps=40"])
    first = evaluate.cached_probes(cfg, 4)
    assert len(first) == 2 and first[0][0].shape == (4, 64, 64, 3) and first[0][1].shape == (3,)
    assert set(first[0][3]) == set(evaluate.CRAFTER_PROBE)
    assert [p[4] for p in first] == [5, 10]  # the game step of each context's last frame: probes every 5 steps
    real = evaluate._real_probes

    def no_probing(*a, **k):
        raise AssertionError("probed the real game although the cache holds these probes")

    monkeypatch.setattr(evaluate, "_real_probes", no_probing)
    again = evaluate.cached_probes(cfg, 4)  # the same probes, from disk
    for (c1, a1, _, o1, t1), (c2, a2, _, o2, t2) in zip(first, again):
        np.testing.assert_array_equal(c1, c2), np.testing.assert_array_equal(a1, a2)
        assert t1 == t2
        assert all(np.array_equal(o1[n], o2[n]) for n in o1)
    monkeypatch.setattr(evaluate, "_real_probes", real)
    cfg3 = load_config("eval", [f"cache_dir={tmp_path}", "probes=3", "probe_every=5", "max_steps=40"])
    assert len(evaluate.cached_probes(cfg3, 4)) == 3  # other settings: probed afresh
    (tmp_path / "following_probes.npz").write_bytes(b"not an npz")
    with pytest.warns(UserWarning, match="unreadable"):
        assert len(evaluate.cached_probes(cfg, 4)) == 2


def test_warp_copy_shifts_the_last_frame_by_the_fitted_camera_warp():
    """The camera-aware baseline of a warp model: the frame moved by action @ warp matrix, in pixels."""
    from worldsim.evaluate import warp_copy
    from worldsim.model import WorldDiT

    spec = {"type": "dict", "keys": {"camera": {"type": "box", "dim": 2, "scale": 180.0}}}
    # 32 px wide: one pixel is 2/32 in grid_sample's units; 0.025 per degree of yaw = 4 px per 10 degrees
    dit = WorldDiT(spec, latent_channels=4, dim=32, depth=1, heads=2).with_warp("camera", [[0.0, 0.0], [0.0, 0.025]])
    frame = np.random.default_rng(0).integers(0, 256, (1, 24, 32, 3), dtype=np.uint8)
    out = warp_copy(dit, frame, {"camera": np.array([[0.0, 10.0]])})
    np.testing.assert_array_equal(out[:, :, 4:], frame[:, :, :-4])  # content moved 4 px right
    np.testing.assert_array_equal(out[:, :, :4], np.repeat(frame[:, :, :1], 4, axis=2))  # the edge repeats
    np.testing.assert_array_equal(warp_copy(dit, frame, {"camera": np.zeros((1, 2))}), frame)
