"""Episodes on disk: format, atomic writes, corrupt files skipped, collection resumable and covering the world."""
import json

import numpy as np
import pytest
import torch

from worldsim.cli import run_job
from worldsim.data import WindowDataset, episode_path, load_episodes, read_episode, still_steps, write_episode


def test_episode_roundtrip(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    write_episode(tmp_path / "e.npz", frames, np.arange(5), np.ones(5) * 0.1, [0, 0, 0, 0, 1], seed=3)
    ep = read_episode(tmp_path / "e.npz")
    np.testing.assert_array_equal(ep["frames"], frames)
    assert ep["terminated"].tolist() == [False] * 4 + [True] and ep["seed"] == 3
    assert not list(tmp_path.glob("*.tmp"))  # nothing left behind by the atomic write
    with pytest.raises(ValueError, match="expected 5"):
        write_episode(tmp_path / "bad.npz", frames, np.arange(4), np.ones(5), np.zeros(5))


def test_collect_writes_manifest_and_histograms(dataset, capsys):
    m = json.loads((dataset / "manifest.json").read_text())
    assert m["format"] == "worldsim-episodes/1" and len(m["episodes"]) == 4
    assert {e["split"] for e in m["episodes"]} == {"train", "test"}
    assert m["env"]["action_meanings"][5] == "do"
    for e in m["episodes"]:
        ep = read_episode(dataset / e["file"])
        assert ep["frames"].shape == (e["steps"] + 1, 64, 64, 3) and ep["frames"].dtype == np.uint8
        assert sum(e["action_counts"]) == e["steps"]


def test_corrupt_episode_is_skipped_with_warning(dataset, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(dataset, root)
    p = episode_path(root, 1)
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])  # truncated, as by a crash mid-copy
    with pytest.warns(UserWarning, match="corrupt episode file"):
        eps = load_episodes(root)
    assert len(eps) == 3


def test_collect_resumes_and_replaces_broken_files(tmp_path, capsys):
    out = tmp_path / "d"
    args = [f"out={out}", "episodes=3", "workers=2", "max_steps=25", "test_every=0"]
    run_job("collect", args)
    first = {i: read_episode(episode_path(out, i))["frames"] for i in range(3)}
    kept_mtime = episode_path(out, 1).stat().st_mtime_ns
    episode_path(out, 0).unlink()
    episode_path(out, 2).write_bytes(b"not an npz")
    m = json.loads((out / "manifest.json").read_text())
    m["episodes"] = [e for e in m["episodes"] if e["index"] != 1]  # as if killed before the manifest update
    (out / "manifest.json").write_text(json.dumps(m))
    capsys.readouterr()
    run_job("collect", args)
    log = capsys.readouterr().out
    assert "resuming: 1 episodes already on disk, 2 to collect" in log
    assert episode_path(out, 1).stat().st_mtime_ns == kept_mtime  # the intact episode was kept, not re-collected
    for i in (0, 2):  # re-collected from the same world seed: the same generated world
        np.testing.assert_array_equal(read_episode(episode_path(out, i))["frames"][0], first[i][0])
    assert len(json.loads((out / "manifest.json").read_text())["episodes"]) == 3


def test_collect_can_start_each_game_later_on_its_clock(tmp_path):
    """clock_start=[lo, hi]: each episode's game begins at a step drawn from the range (the same on a rerun),
    kept in the episode and the manifest; the real game's light is that step's (night is darker than the same
    world at step 0), its length still runs in full, and training windows read the clock from there."""

    from worldsim.envs.real_crafter import RealCrafterEnv

    out = tmp_path / "night"
    run_job("collect", [f"out={out}", "episodes=2", "workers=1", "max_steps=6", "test_every=0",
                        "clock_start=[200,220]"])
    m = json.loads((out / "manifest.json").read_text())
    starts = [e["clock_start"] for e in m["episodes"]]
    assert all(200 <= c <= 220 for c in starts)
    eps = load_episodes(out)
    assert [int(ep["clock_start"]) for ep in eps] == starts
    assert all(len(ep["frames"]) == 7 or ep["terminated"][-1] for ep in eps)  # max_steps counted from the start
    assert WindowDataset(eps, 4)[1]["clock"].tolist() == [starts[0] + i for i in (1, 2, 3, 4)]
    env = RealCrafterEnv()
    day = env.reset(seed=3)[0]
    night, info = env.reset(seed=3, options={"clock": 210})
    def saturation(f):  # night greys the view: max - min channel per pixel of the map rows
        f = f.astype(float)[:49]
        return (f.max(-1) - f.min(-1)).mean()

    assert info["clock"] == 210 and saturation(night) < saturation(day) / 2
    with pytest.raises(ValueError, match="clock_start"):
        run_job("collect", [f"out={tmp_path / 'bad'}", "episodes=1", "clock_start=[20,10]"])
    with pytest.raises(ValueError, match="options\\['clock'\\]"):
        env.reset(seed=3, options={"clock": -5})


def test_collect_without_the_light_and_with_canvases(tmp_path):
    """light=false: the same worlds with frames drawn without the light (the explorer reads frames, so its moves
    may then differ), marked in the manifest (env.light, what a trained bundle inherits); canvas=true: the lit frames plus those canvases; the
    same directory refuses the other kind; other games have no light to leave out. Loaded, frames collected
    without the light are also the episode's canvases."""
    from worldsim.envs.real_crafter import light

    args = ["episodes=1", "workers=1", "max_steps=12", "test_every=0", "clock_start=[200,200]"]
    run_job("collect", [f"out={tmp_path / 'lit'}", "canvas=true", *args])
    run_job("collect", [f"out={tmp_path / 'canvas'}", "light=false", *args])
    lit, bare = load_episodes(tmp_path / "lit")[0], load_episodes(tmp_path / "canvas")[0]
    assert json.loads((tmp_path / "canvas" / "manifest.json").read_text())["env"]["light"] == "crafter"
    assert "light" not in json.loads((tmp_path / "lit" / "manifest.json").read_text())["env"]
    assert lit["canvas"].shape == lit["frames"].shape
    assert bare["canvas"] is bare["frames"]  # frames without the light are the canvases a lit bundle reads
    np.testing.assert_array_equal(lit["canvas"][0], bare["frames"][0])  # the same world at the same hour
    relit = light(torch.as_tensor(lit["canvas"]), 200 + np.arange(len(lit["frames"])), None).numpy()
    assert np.abs(relit.astype(float) - lit["frames"]).mean() < 8  # the night's noise at its mean
    assert np.abs(lit["canvas"].astype(float) - lit["frames"]).mean() > 20  # a night, left out
    with pytest.raises(ValueError, match="without the game's light"):
        run_job("collect", [f"out={tmp_path / 'canvas'}", *args])
    with pytest.raises(ValueError, match="its light crafter differs"):  # lit and unlit frames are not one game's
        run_job("train", [f"data=[{tmp_path / 'lit'},{tmp_path / 'canvas'}]", f"run={tmp_path / 'run'}"])
    with pytest.raises(ValueError, match="has none"):
        run_job("collect", ["env=gym:CartPole-v1", f"out={tmp_path / 'cp'}", "light=false",
                            *args[:3]])
    # grey_sleep=false: canvases that leave a sleeper's grey to the env (env.sleep); a collection of the other
    # kind is not added to, and lit frames have no canvas to leave it out of
    for d in ("lit", "canvas"):
        assert "sleep" not in json.loads((tmp_path / d / "manifest.json").read_text())["env"]
    run_job("collect", [f"out={tmp_path / 'sleepless'}", "light=false", "grey_sleep=false", *args])
    assert json.loads((tmp_path / "sleepless" / "manifest.json").read_text())["env"]["sleep"] == "crafter"
    with pytest.raises(ValueError, match="sleeper's grey view"):
        run_job("collect", [f"out={tmp_path / 'canvas'}", "light=false", "grey_sleep=false", *args])
    with pytest.raises(ValueError, match="needs light=false or canvas=true"):
        run_job("collect", [f"out={tmp_path / 'lit2'}", "grey_sleep=false", *args])


def test_scripted_explorer_covers_more_than_random(tmp_path):
    from worldsim.agents import make_agent
    from worldsim.envs.real_crafter import RealCrafterEnv

    def visited(agent_name):
        env = RealCrafterEnv()
        agent = make_agent(agent_name, env.action_space, seed=0)
        obs, _ = env.reset(seed=5)
        cells = set()
        for _ in range(150):
            obs, _, term, trunc, _ = env.step(agent.act(obs))
            cells.add(tuple(env.game._player.pos))
            if term or trunc:
                break
        return len(cells)

    assert visited("explorer") > 1.5 * visited("random")


def test_window_dataset_marks_episode_starts(dataset):
    eps = load_episodes(dataset)
    ds = WindowDataset(eps, 4)
    item = ds[0]
    assert item["has_action"].tolist() == [False, True, True, True]
    assert item["actions"][1:].tolist() == eps[0]["actions"][:3].tolist()
    assert ds[5]["clock"].tolist() == [5, 6, 7, 8]  # each frame's step in its episode: the game's clock
    with pytest.raises(ValueError, match="no episode has"):
        WindowDataset(eps, 10_000)


def test_still_steps_and_window_weights():
    """A still step took an action yet left the frame unchanged (a blocked move); standing still (the null
    action) or a changed frame is not one. Windows ending on a still step get the weight, others 1."""
    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(2))
    night = np.clip(a.astype(int) + rng.integers(-1, 2, a.shape), 0, 255).astype(np.uint8)  # render noise
    frames = np.stack([a, a, a, b, b, night])
    ep = {"frames": frames, "actions": np.array([3, 0, 3, 0, 5])}
    assert still_steps(ep).tolist() == [True, False, False, False, False]
    ep_night = {"frames": np.stack([a, night]), "actions": np.array([2])}
    assert still_steps(ep_night).tolist() == [True]
    dict_ep = {"frames": frames, "actions": {"forward": np.array([0, 0, 1, 0, 0]),
                                             "camera": np.array([[0, 1], [0, 0], [0, 0], [0, 0], [0, 0]], float)}}
    assert still_steps(dict_ep).tolist() == [True, False, False, False, False]
    ds = WindowDataset([ep], length=2)  # window s ends on frame s+1, after step s
    assert ds.still_weights(4.0).tolist() == [4.0, 1.0, 1.0, 1.0, 1.0]
    # a higher threshold also counts a small change (the player turning on the spot) as still
    turn = a.copy()
    turn[:2, :2] = 255 - turn[:2, :2]  # 4 of 64 pixels change: a mean change of several grey levels
    change = np.abs(turn.astype(int) - a).mean()
    ep_turn = {"frames": np.stack([a, turn]), "actions": np.array([1]), "rewards": np.zeros(1, np.float32),
               "terminated": np.zeros(1, bool)}
    assert still_steps(ep_turn).tolist() == [False] and still_steps(ep_turn, change + 0.1).tolist() == [True]
    ds = WindowDataset([ep_turn], length=2, mark_still=True, still_threshold=change + 0.1)
    assert ds[0]["still"] and ds.still_weights(3.0).tolist() == [3.0]


def test_action_weights_draw_a_rare_action_at_its_share():
    """dit.action_share: windows whose last step took a rare action are weighted so that it is drawn at about its
    share; other actions keep weight 1, an action seen in under 20 windows counts as 20, and one above its share
    already keeps 1. Drawn with the weights, the rare action's share is near the target."""
    import torch

    rng = np.random.default_rng(0)
    T = 1000
    acts = rng.integers(0, 5, T)  # 0-4 common
    acts[rng.choice(T, 30, replace=False)] = 6  # rare: 3 %
    acts[np.flatnonzero(acts != 6)[0]] = 7  # seen once
    ep = {"frames": np.zeros((T + 1, 4, 4, 3), np.uint8), "actions": acts}
    ds = WindowDataset([ep], length=2)  # window s ends after step s
    n = len(ds)
    last = np.array([acts[s] for _, s in ds.index])
    w = ds.action_weights({6: 0.1, 7: 0.05, 1: 0.01}).numpy()
    assert np.allclose(w[last == 6], 0.1 * n / 30) and np.allclose(w[last == 7], 0.05 * n / 20)  # under 20: 20
    assert np.allclose(w[(last != 6) & (last != 7)], 1.0)  # action 1 is ~20 % of the windows: above 0.01 already
    ds2 = WindowDataset([{**ep, "actions": np.where(acts == 7, 0, acts)}], length=2)
    w2 = ds2.action_weights({6: 0.1}).numpy()
    drawn = torch.multinomial(torch.as_tensor(w2), 20000, replacement=True, generator=torch.Generator().manual_seed(0))
    share = (last[drawn.numpy()] == 6).mean()
    assert 0.06 < share < 0.1, share  # the weights raise the total too, so a little under the 0.1 asked
    assert ds.action_weights({}).tolist() == [1.0] * n
    with pytest.raises(ValueError, match="discrete"):
        WindowDataset([{**ep, "actions": {"a": acts}}], length=2).action_weights({0: 0.1})


def test_event_weights_draw_rare_events_at_their_share():
    """dit.event_share: windows ending on a rare event are weighted so that each event type is drawn at about the
    share; a common event (above the share already) and windows without events keep weight 1, an event seen
    in under 20 windows counts as 20, and episodes without events weigh 1. Drawn with the weights, the rare
    event's share of the windows is near the target."""
    import torch

    rng = np.random.default_rng(0)
    T = 1000
    ev = np.zeros((T, 3), np.uint8)
    ev[rng.choice(T, 150, replace=False), 0] = 1  # common: 15 % of the steps
    ev[rng.choice(T, 25, replace=False), 1] = 1   # rare: 2.5 %
    ev[7, 2] = 1                                  # seen once
    ep = {"frames": np.zeros((T + 1, 4, 4, 3), np.uint8), "actions": np.zeros(T, np.int64), "events": ev}
    plain = {"frames": np.zeros((11, 4, 4, 3), np.uint8), "actions": np.zeros(10, np.int64)}
    ds = WindowDataset([ep, plain], length=2)  # window s ends after step s
    w = ds.event_weights(0.1).numpy()
    n = len(ds)
    last = np.array([ev[s] if e == 0 else np.zeros(3, np.uint8) for e, s in ds.index]).astype(bool)
    assert np.allclose(w[last[:, 0] & ~last[:, 1] & ~last[:, 2]], 1.0)  # over 10 % already: no more
    assert np.allclose(w[last[:, 1] & ~last[:, 2]], 0.1 * n / 25)
    assert np.isclose(w[7], 0.1 * n / 20) and np.allclose(w[~last.any(1)], 1.0)
    drawn = torch.multinomial(torch.as_tensor(w), 20000, replacement=True, generator=torch.Generator().manual_seed(0))
    share = last[drawn.numpy(), 1].mean()
    assert 0.06 < share < 0.1, share  # the weights raise the total too, so a little under the 0.1 asked
    assert WindowDataset([plain], length=2).event_weights(0.1).tolist() == [1.0] * 10
    with pytest.raises(ValueError, match="event lists differ"):
        WindowDataset([ep, {**plain, "events": np.zeros((10, 2), np.uint8)}], length=2).event_weights(0.1)


def test_dict_action_episode_roundtrip_and_windows(tmp_path):
    # MineRL-style Dict actions are stored one array per key (action$KEY) and come back as a dict
    T, rng = 6, np.random.default_rng(0)
    frames = rng.integers(0, 255, (T + 1, 12, 16, 3), dtype=np.uint8)
    actions = {"forward": np.array([1, 1, 0, 0, 1, 0]), "camera": rng.normal(size=(T, 2)).astype(np.float32)}
    path = episode_path(tmp_path, 0)
    write_episode(path, frames, actions, np.zeros(T), np.zeros(T, bool), seed=3, gui_open=np.zeros(T + 1, bool))
    ep = read_episode(path)
    assert set(ep["actions"]) == {"forward", "camera"} and ep["actions"]["camera"].dtype == np.float32
    np.testing.assert_array_equal(ep["actions"]["camera"], actions["camera"])
    assert ep["gui_open"].shape == (T + 1,)
    item = WindowDataset([ep], length=3)[2]  # frames 2..4, led to by actions 1..3
    np.testing.assert_array_equal(item["actions"]["forward"].numpy(), actions["forward"][1:4])
    np.testing.assert_array_equal(item["actions"]["camera"].numpy(), actions["camera"][1:4])
    first = WindowDataset([ep], length=3)[0]
    assert not first["has_action"][0] and first["actions"]["camera"][0].abs().sum() == 0
    with pytest.raises(ValueError, match="action\\$forward has length"):
        write_episode(path, frames, {"forward": np.zeros(T - 1)}, np.zeros(T), np.zeros(T, bool))


def test_explorer_detours_break_held_moves_and_default_is_unchanged():
    import gymnasium as gym

    from worldsim.agents import make_agent
    from worldsim.agents.explorer import MOVES

    # the policy alone, fed frames that always change (never "blocked"), so only its own rng decides;
    # (real Crafter's world generation differs between games in one process unless PYTHONHASHSEED is fixed)
    frames = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)

    def play(detour, n=3000):
        agent = make_agent("explorer", gym.spaces.Discrete(17), seed=1, detour=detour)
        return [agent.act(frames[t % 2]) for t in range(n)]

    def switches(acts):  # a move right after another move: how often it is a different one
        pairs = [(a, b) for a, b in zip(acts, acts[1:]) if a in MOVES and b in MOVES]
        return sum(a != b for a, b in pairs) / len(pairs)

    plain, detoured = play(0.0), play(0.3)
    assert plain == play(0.0)
    assert switches(plain) < 0.1 and switches(detoured) > switches(plain) + 0.2
    with pytest.raises(ValueError, match="detour"):
        make_agent("explorer", gym.spaces.Discrete(17), detour=1.5)


def test_explorer_sleep_share_brings_sleeps_and_wakings(tmp_path):
    """sleep=: the explorer's share of plans that are a sleep spell. The default keeps the explorer's actions
    draw for draw (collections made before the option stay reproducible); a larger share sleeps more, the other
    plans keeping their odds, and in the real game the player then spends far more steps asleep."""
    import hashlib

    import gymnasium as gym

    from worldsim.agents import make_agent
    from worldsim.agents.explorer import DO, MOVES, SLEEP
    from worldsim.envs.real_crafter import RealCrafterEnv

    frames = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)

    def play(n=3000, **kw):
        agent = make_agent("explorer", gym.spaces.Discrete(17), seed=1, **kw)
        return [agent.act(frames[t % 2]) for t in range(n)]

    # the explorer's first 3,000 actions from seed 1 before `sleep` existed (agents/explorer.py at 953fd0c)
    assert hashlib.sha256(bytes(play())).hexdigest()[:16] == "1313f59954d0c064"
    assert play(sleep=0.01) == play()
    plain, sleepy = (np.bincount(play(20000, **kw), minlength=17) for kw in ({}, {"sleep": 0.1}))
    assert sleepy[SLEEP] > 6 * plain[SLEEP]
    moves_per_do = lambda c: c[list(MOVES)].sum() / c[DO]  # noqa: E731
    assert abs(moves_per_do(sleepy) / moves_per_do(plain) - 1) < 0.15
    for bad in (-0.1, 0.99):
        with pytest.raises(ValueError, match="sleep"):
            make_agent("explorer", gym.spaces.Discrete(17), sleep=bad)

    def asleep(**kw):  # steps the real player spends asleep in up to 300 steps of each of two worlds
        n, env = 0, RealCrafterEnv()
        for seed in (5, 6):
            agent = make_agent("explorer", gym.spaces.Discrete(17), seed=seed, **kw)
            obs, _ = env.reset(seed=seed)
            for _ in range(300):
                obs, _, term, trunc, _ = env.step(agent.act(obs))
                n += env.game._player.sleeping
                if term or trunc:
                    break
        return n

    assert asleep(sleep=0.3) > max(40, 3 * asleep())
    out = tmp_path / "sleepy"
    run_job("collect", [f"out={out}", "episodes=1", "workers=1", "max_steps=5", "test_every=0", "sleep=0.2"])
    assert json.loads((out / "manifest.json").read_text())["episodes"][0]["sleep"] == 0.2
    with pytest.raises(ValueError, match="sleep=1.5"):
        run_job("collect", [f"out={tmp_path / 'bad'}", "episodes=1", "sleep=1.5"])
    with pytest.raises(ValueError, match="has none"):
        run_job("collect", [f"out={tmp_path / 'bad'}", "episodes=1", "agent=random", "sleep=0.2"])
