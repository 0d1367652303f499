"""`worldsim eval` and `worldsim bench` on the tiny bundle: they run, print and write their JSON."""
import json

import numpy as np

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
    res = run_job("eval", [f"bundle={bundle}", f"data={dataset}", "windows=4", "batch_size=2", "stride=4",
                           "horizons=[1,2,4]", f"out={out}", f"plot={tmp_path / 'curve.png'}", f"grid={tmp_path / 'grid.png'}", "grid_rows=2"])
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(res))
    assert res["windows"] == 4 and sorted(res["rollout_curve"], key=int) == ["1", "2", "3", "4"]
    nf = res["next_frame_psnr"]
    assert nf["model"] == res["rollout_psnr"]["1"]["model"] and abs(nf["gain_db"] - (nf["model"] - nf["copy_last"])) < 1e-9
    assert 5 < nf["copy_last"] < 100 and 0 < nf["model"] < 100
    assert (tmp_path / "curve.png").stat().st_size > 1000
    import imageio.v2 as imageio

    grid = imageio.imread(tmp_path / "grid.png")  # 2 windows x (real row, model row, gap), 2x upscaled
    assert grid.shape == (2 * 2 * (64 + 64 + 4), 2 * 64 * 1, 3)


def test_bench_reports_model_and_real_crafter(bundle, tmp_path):
    out = tmp_path / "bench.json"
    res = run_job("bench", [f"bundle={bundle}", "steps=5", "warmup=1", "batch_sizes=[1,3]", "real_steps=50",
                            f"out={out}"])
    assert res["real_crafter_steps_per_s"] > 0
    rows = {r["batch"]: r for r in res["model"]}
    assert set(rows) == {1, 3} and all(r["device"] == "cpu" for r in rows.values())
    assert abs(rows[3]["env_steps_per_s"] - 3 * rows[3]["steps_per_s"]) < 1e-6
    assert json.loads(out.read_text())["model"][0]["batch"] == 1
