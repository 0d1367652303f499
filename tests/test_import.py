"""`worldsim import`: VPT contractor recordings and MineRL v0.4 trajectories -> episodes, on tiny synthetic
files written with imageio (h264, like the real ones)."""
import json
import os

import imageio.v3 as iio
import numpy as np
import pytest

from worldsim.cli import load_config, main
from worldsim.data import load_episodes, load_manifest, read_episode
from worldsim.importers import MINERL_BUTTONS, MINERL_KEYS, import_data, minerl_action_space

SIZE = [24, 32]  # (H, W): 4:3 like the default [96, 128]
F32 = np.float32


def config(**kw):
    return load_config("import", [f"{k}={v}" for k, v in kw.items()])


def run(source, src, out, **kw):
    return import_data(config(source=source, src=src, out=out, size="[24,32]", **kw))


def gray_video(path, n, h=36, w=64):
    """Frame i is uniform gray 20*i, so each stored frame says which video frame it came from."""
    frames = np.repeat((np.arange(n) * 20).astype(np.uint8)[:, None, None, None], h * w * 3).reshape(n, h, w, 3)
    iio.imwrite(path, frames, plugin="FFMPEG", fps=20, codec="libx264", macro_block_size=2)


def frame_index(frames):
    return np.round(frames.reshape(len(frames), -1).mean(1) / 20).astype(int).tolist()


def rec(keys=(), buttons=(), dx=0, dy=0, gui=False, hotbar=0):
    return {"mouse": {"x": 0, "y": 0, "dx": dx, "dy": dy, "buttons": list(buttons), "dwheel": 0},
            "keyboard": {"keys": list(keys), "chars": ""}, "isGuiOpen": gui, "hotbar": hotbar, "tick": 0}


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def by_source(out):
    m = load_manifest(out)
    return {e["source"]: read_episode(out / e["file"]) for e in m["episodes"]}, m


EVERY_KEY = ["key.keyboard.space", "key.keyboard.left.shift", "key.keyboard.left.control", "key.keyboard.e",
             "key.keyboard.escape", "key.keyboard.q", "key.keyboard.f", "key.keyboard.3", "key.keyboard.a",
             "key.keyboard.s", "key.keyboard.d", "key.keyboard.p"]  # p: not a MineRL key


def test_vpt(tmp_path, capsys):
    src = tmp_path / "vpt"
    (src / "sub").mkdir(parents=True)
    gray_video(src / "sub" / "a.mp4", 12)
    records = [rec(["key.keyboard.w"], [0]),       # 0: attack held from the start (stuck): dropped
               rec(buttons=[0], dx=24, dy=-7),     # 1: still the stuck press
               rec(),                              # 2: released
               rec(buttons=[0]),                   # 3: pressed anew: a real attack
               rec(EVERY_KEY, [1, 2]),             # 4: every key, use + pickItem
               rec(hotbar=4),                      # 5: slot changed by the scroll wheel -> hotbar.5
               rec(gui=True, hotbar=4),            # 6: inventory screen; slot unchanged
               rec(hotbar=4), rec(dx=2000, hotbar=4), rec(hotbar=4), rec(hotbar=4),  # 8: 300 deg glitch
               rec(["key.keyboard.w"], hotbar=4)]  # 11: last line: no frame shows its effect
    write_jsonl(src / "sub" / "a.jsonl", records)
    # b: red borders outside the 4:3 center: they must be cropped away, not squashed in
    frames = np.zeros((3, 36, 64, 3), np.uint8)
    frames[..., 2] = 200
    frames[:, :, :8] = frames[:, :, -8:] = (200, 0, 0)
    iio.imwrite(src / "b.mp4", frames, plugin="FFMPEG", fps=20, codec="libx264", macro_block_size=2)
    write_jsonl(src / "b.jsonl", [rec()] * 3)

    out = tmp_path / "out"
    # the command-line form: worldsim import vpt DIR key=value ...
    assert main(["import", "vpt", str(src), f"out={out}", f"size=[{SIZE[0]},{SIZE[1]}]", "test_every=2"]) == 0
    eps, m = by_source(out)
    assert m["env"]["name"] == "vpt" and m["env"]["action_space"]["type"] == "dict"
    assert m["env"]["frame_shape"] == [24, 32, 3] and set(eps) == {"sub/a.mp4", "b.mp4"}
    assert [e["split"] for e in m["episodes"]] == ["train", "test"]

    ep = eps["sub/a.mp4"]
    a = ep["actions"]
    assert ep["frames"].shape == (12, 24, 32, 3) and frame_index(ep["frames"]) == list(range(12))
    assert sorted(a) == sorted(MINERL_KEYS) and sorted(a) == sorted(minerl_action_space().keys())
    space = minerl_action_space()
    assert all(space.contains({k: v[i] for k, v in a.items()}) for i in range(11))
    assert all(a[k].dtype == np.int64 and a[k].shape == (11,) for k in MINERL_BUTTONS)
    assert a["camera"].dtype == F32 and a["camera"].shape == (11, 2)
    assert a["attack"].tolist() == [0, 0, 0, 1] + [0] * 7
    assert a["forward"].tolist() == [1] + [0] * 10  # line 11's w is dropped with it
    # [pitch, yaw] = 0.15 * (dy, dx), as floats: -1.05 would truncate to -1 as an int
    assert a["camera"][1].tolist() == [F32(-7 * 0.15), F32(3.6)] and a["camera"][1, 0] != -1
    assert not a["camera"][[0, 2, 3, 8]].any()
    for k in ("jump", "sneak", "sprint", "inventory", "ESC", "drop", "swapHands", "hotbar.3", "left", "back", "right",
              "use", "pickItem"):
        assert a[k].tolist() == [0, 0, 0, 0, 1] + [0] * 6, k
    assert a["hotbar.5"].tolist() == [0] * 5 + [1] + [0] * 5
    assert ep["gui_open"].tolist() == [i == 6 for i in range(12)]
    assert not ep["rewards"].any() and not ep["terminated"].any() and ep["rewards"].shape == (11,)

    b = eps["b.mp4"]["frames"].astype(int)
    assert b.shape == (3, 24, 32, 3) and b[..., 0].max() < 60 and b[..., 2].min() > 140

    printed = capsys.readouterr().out
    assert "2 episodes" in printed and "bytes per frame" in printed and "forward" in printed and "pitch" in printed
    assert load_episodes(out)  # the rest of worldsim reads them


def test_vpt_index_mismatch_corrupt_and_resume(tmp_path, capsys):
    src = tmp_path / "dl"
    (src / "data" / "6.13").mkdir(parents=True)
    gray_video(src / "data" / "6.13" / "a.mp4", 5)
    write_jsonl(src / "data" / "6.13" / "a.jsonl", [rec(dx=i) for i in range(7)])  # 7 lines for 5 frames
    (src / "data" / "6.13" / "bad.mp4").write_bytes(b"not a video" * 50)
    write_jsonl(src / "data" / "6.13" / "bad.jsonl", [rec()] * 4)
    index = src / "index.json"  # as VPT publishes them: a URL basedir, files downloaded beside the index
    index.write_text(json.dumps({"basedir": "https://example.invalid/minecraft-rl/",
                                 "relpaths": ["data/6.13/a.mp4", "data/6.13/bad.mp4", "data/6.13/gone.mp4"]}))
    out = tmp_path / "out"
    with pytest.warns(UserWarning) as record:
        run("vpt", index, out)
    messages = " | ".join(str(w.message) for w in record)
    assert "bad.mp4" in messages and "gone.mp4" in messages and "5 video frames but 7 jsonl lines" in messages
    eps, m = by_source(out)
    assert list(eps) == ["data/6.13/a.mp4"]
    ep = eps["data/6.13/a.mp4"]
    assert ep["frames"].shape[0] == 5 and ep["actions"]["camera"][:, 1].tolist() == [F32(i * 0.15) for i in range(4)]

    # Resume: nothing is converted or rewritten; then again with the manifest lost (a killed run)
    path = out / m["episodes"][0]["file"]
    stamp = path.stat().st_mtime_ns
    for lose_manifest in (False, True):
        if lose_manifest:
            os.unlink(out / "manifest.json")
        with pytest.warns(UserWarning) as record:
            m2 = run("vpt", index, out)
        assert any("bad.mp4" in str(w.message) for w in record)  # bad inputs are retried, and skipped again
        assert "1 episodes already" in capsys.readouterr().out and path.stat().st_mtime_ns == stamp
        assert [p.name for p in (out / "episodes").iterdir()] == [path.name]
        assert [e["source"] for e in m2["episodes"]] == ["data/6.13/a.mp4"] and m2["episodes"][0]["steps"] == 4


def test_bad_inputs(tmp_path):
    with pytest.raises(SystemExit, match="does not exist"):
        run("vpt", tmp_path / "nope", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no VPT recordings"):
        run("vpt", tmp_path / "empty", tmp_path / "out")
    with pytest.raises(SystemExit, match="no MineRL trajectories"):
        run("minerl", tmp_path / "empty", tmp_path / "out")
    bad = tmp_path / "index.json"
    bad.write_text("{not json")
    with pytest.raises(SystemExit, match="not a VPT index file"):
        run("vpt", bad, tmp_path / "out")
    bad.write_text(json.dumps({"basedir": "x"}))
    with pytest.raises(SystemExit, match="not a VPT index file"):
        run("vpt", bad, tmp_path / "out")
    with pytest.raises(SystemExit, match="unknown import source"):
        run("minecraft", tmp_path / "empty", tmp_path / "out")
    with pytest.raises(SystemExit, match="needs `src`"):
        import_data(config(source="vpt"))


def test_minerl(tmp_path):
    src = tmp_path / "MineRLTreechop-v0"
    # t1: 8 video frames for 5 actions: the states are the last 6 frames
    t1 = src / "t1"
    t1.mkdir(parents=True)
    gray_video(t1 / "recording.mp4", 8, 64, 64)
    cam = np.array([[1.5, -2.25], [0, 0], [0, 0], [10, 0], [0, 0.5]], F32)
    np.savez(t1 / "rendered.npz", reward=np.array([0, 1, 0, 2, 0], F32), **{
        "action$forward": np.array([1, 1, 0, 0, 1]), "action$attack": np.array([0, 0, 1, 1, 0]),
        "action$camera": cam, "action$place": np.array(["none", "dirt", "none", "none", "torch"]),
        "action$craft": np.array(["none"] * 5), "action$equip": np.array(["none"] * 5),
        "observation$inventory$dirt": np.arange(6)})
    # t2: metadata says only the first 7 video frames count; place pickled (not loaded) -> use stays 0
    t2 = src / "t2"
    t2.mkdir()
    gray_video(t2 / "recording.mp4", 8, 64, 64)
    (t2 / "metadata.json").write_text(json.dumps({"true_video_frame_count": 7}))
    np.savez(t2 / "rendered.npz", reward=np.zeros(4, F32), **{
        "action$jump": np.ones(4, np.int64), "action$camera": np.zeros((4, 2), F32),
        "action$place": np.array(["dirt", 0, "none", "x"], dtype=object)})
    # t3: obfuscated actions: nothing to map
    t3 = src / "t3"
    t3.mkdir()
    gray_video(t3 / "recording.mp4", 4, 64, 64)
    np.savez(t3 / "rendered.npz", reward=np.zeros(3, F32), **{"action$vector": np.zeros((3, 64), F32)})

    out = tmp_path / "out"
    with pytest.warns(UserWarning) as record:
        run("minerl", src, out)
    messages = " | ".join(str(w.message) for w in record)
    assert "t3" in messages and "obfuscated" in messages and "pickled" in messages
    eps, m = by_source(out)
    assert set(eps) == {"t1", "t2"} and m["env"]["name"] == "minerl"

    ep = eps["t1"]
    a = ep["actions"]
    assert ep["frames"].shape == (6, 24, 32, 3) and frame_index(ep["frames"]) == [2, 3, 4, 5, 6, 7]
    assert a["forward"].tolist() == [1, 1, 0, 0, 1] and a["attack"].tolist() == [0, 0, 1, 1, 0]
    assert a["use"].tolist() == [0, 1, 0, 0, 1]  # place != none
    assert np.array_equal(a["camera"], cam) and a["camera"].dtype == F32
    assert not any(a[k].any() for k in MINERL_BUTTONS if k not in ("forward", "attack", "use"))
    assert ep["rewards"].tolist() == [0, 1, 0, 2, 0] and "gui_open" not in ep and not ep["terminated"].any()

    ep = eps["t2"]
    assert frame_index(ep["frames"]) == [2, 3, 4, 5, 6]
    assert ep["actions"]["jump"].tolist() == [1] * 4 and not ep["actions"]["use"].any()

    capped = tmp_path / "capped"
    with pytest.warns(UserWarning):
        run("minerl", src, capped, max_frames=3)
    eps, _ = by_source(capped)
    assert frame_index(eps["t1"]["frames"]) == [2, 3, 4] and eps["t1"]["rewards"].tolist() == [0, 1]
