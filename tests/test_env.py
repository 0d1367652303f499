"""The learned world as a Gymnasium env: contract, seeding, reset options, bad input, native vector env."""
import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import worldsim  # noqa: F401
from worldsim.envs.world_env import WorldEnv, WorldVectorEnv


@pytest.fixture()
def env(bundle):
    e = gym.make("worldsim/Crafter-v0", bundle=str(bundle))
    yield e
    e.close()


def rollout(env, seed, actions, options=None):
    obs, _ = env.reset(seed=seed, options=options)
    frames = [obs]
    for a in actions:
        frames.append(env.step(a)[0])
    return np.stack(frames)


def test_check_env_and_spaces(env):
    check_env(env.unwrapped)
    assert env.observation_space == gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)
    assert env.action_space == gym.spaces.Discrete(17)
    assert env.unwrapped.action_meanings[:6] == ["noop", "move_left", "move_right", "move_up", "move_down", "do"]
    env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert obs.dtype == np.uint8 and obs.shape == (64, 64, 3)
    assert isinstance(reward, float) and isinstance(terminated, bool) and isinstance(truncated, bool)


def test_seeded_rollouts_repeat(env):
    acts = [3, 3, 1, 5, 0, 2]
    a = rollout(env, 7, acts)
    b = rollout(env, 7, acts)
    c = rollout(env, 8, acts, options={"start_index": 0})
    d = rollout(env, 7, acts, options={"start_index": 0})
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(c[1:], d[1:])  # same start, different sampling noise


def test_reset_from_context_and_image(env, dataset):
    from worldsim.data import load_episodes

    ep = load_episodes(dataset)[0]
    W = env.unwrapped.sim.window
    obs, info = env.reset(seed=0, options={"context_frames": ep["frames"][:W], "context_actions": ep["actions"][:W - 1]})
    np.testing.assert_array_equal(obs, ep["frames"][W - 1])  # the next step continues from the last given frame
    assert info["start"] == "context" and info["clock"] == W - 1  # by default the context began the game
    obs, info = env.reset(seed=0, options={"context_frames": ep["frames"][5:5 + W],
                                           "context_actions": ep["actions"][5:5 + W - 1], "clock": 5 + W - 1})
    assert info["clock"] == 5 + W - 1 and env.unwrapped.sim.clock[0] == 5 + W - 1
    env.step(0)
    assert env.unwrapped.sim.clock[0] == 5 + W
    obs, info = env.reset(seed=0, options={"image": ep["frames"][5]})
    np.testing.assert_array_equal(obs, ep["frames"][5])
    assert env.step(4)[0].shape == (64, 64, 3)


@pytest.mark.parametrize("options,match", [
    ({"context_frames": np.zeros((9, 64, 64, 3), np.uint8), "context_actions": np.zeros(8, int)}, "more than the model's window"),
    ({"context_frames": np.zeros((2, 64, 64, 3), np.float32), "context_actions": [1]}, "dtype float32"),
    ({"context_frames": np.zeros((2, 32, 32, 3), np.uint8), "context_actions": [1]}, r"shape \(T, 64, 64, 3\)"),
    ({"context_frames": np.zeros((2, 64, 64, 3), np.uint8), "context_actions": [1, 2]}, "expected 1"),
    ({"context_frames": np.zeros((2, 64, 64, 3), np.uint8)}, "context_actions'] is required"),
    ({"context_frames": np.zeros((2, 64, 64, 3), np.uint8), "context_actions": [17]}, "invalid action 17"),
    ({"image": np.zeros((64, 64), np.uint8)}, r"image'] must be a uint8 array of shape \(64, 64, 3\)"),
    ({"start_index": 99}, "out of range"),
    ({"clock": -1}, r"clock'\] must be an integer >= \d"),
    ({"image": np.zeros((64, 64, 3), np.uint8), "clock": 1.5}, r"clock'\] must be an integer >= 0"),
    ({"contxt_frames": 1}, "unknown reset option"),
])
def test_bad_reset_options_get_clear_errors(env, options, match):
    with pytest.raises(ValueError, match=match):
        env.reset(options=options)


@pytest.mark.parametrize("action", [17, -1, 1.5, "3", [1, 2], None])
def test_bad_actions_get_clear_errors(env, action):
    env.reset(seed=0)
    with pytest.raises(ValueError, match="invalid action"):
        env.unwrapped.step(action)


def test_step_before_reset_is_an_error(bundle):
    with pytest.raises(RuntimeError, match="reset"):
        WorldEnv(bundle=bundle).step(0)


def test_render_modes(bundle):
    e = WorldEnv(bundle=bundle, render_mode="rgb_array")
    obs, _ = e.reset(seed=0)
    np.testing.assert_array_equal(e.render(), obs)
    h = WorldEnv(bundle=bundle, render_mode="human")  # a real pygame window (SDL dummy driver in tests)
    h.reset(seed=0)
    h.step(1)
    assert h._window is not None
    h.close()
    with pytest.raises(ValueError, match="render_mode"):
        WorldEnv(bundle=bundle, render_mode="ansi")


def test_horizon_truncates(bundle):
    e = WorldEnv(bundle=bundle, horizon=3, termination_threshold=1.0)
    e.reset(seed=0)
    assert [e.step(0)[3] for _ in range(3)] == [False, False, True]


def test_make_vec_is_native_and_matches_single_envs(bundle):
    N, acts = 3, [[1, 2, 3], [5, 0, 4], [3, 3, 3]]
    venv = gym.make_vec("worldsim/Crafter-v0", num_envs=N, bundle=str(bundle), termination_threshold=1.0)
    assert isinstance(venv, WorldVectorEnv)  # one batched model, not N copies
    assert venv.observation_space.shape == (N, 64, 64, 3)
    obs, _ = venv.reset(seed=10)
    seq = [obs]
    for a in acts:
        seq.append(venv.step(np.array(a))[0])
    seq = np.stack(seq, 1)
    for i in range(N):  # sub-env i with seed 10+i equals a single env with that seed (same noise stream)
        single = rollout(WorldEnv(bundle=bundle, termination_threshold=1.0), 10 + i, [a[i] for a in acts])
        diff = np.abs(seq[i].astype(int) - single.astype(int))
        assert diff.mean() < 0.5 and diff.max() <= 8, (i, diff.mean(), diff.max())
    with pytest.raises(ValueError, match="expected 3 actions"):
        venv.step(np.array([1, 2]))
    with pytest.raises(ValueError, match="invalid action"):
        venv.step(np.array([1, 2, 30]))


def test_batched_action_check_agrees_with_one_world_at_a_time():
    """The vector env checks a batch with array operations (check_actions); on every batch here it returns
    what checking each world alone returns (same values, same dtype) or raises the same error."""
    from worldsim.data import stack_actions
    from worldsim.envs.spaces import check_action, check_actions, unstack

    mt = gym.spaces.Dict({"forward": gym.spaces.Discrete(2), "hotbar": gym.spaces.MultiDiscrete([9]),
                          "keys": gym.spaces.MultiBinary(3), "camera": gym.spaces.Box(-10, 10, (2,), np.float32)})
    cases = [(gym.spaces.Discrete(17), a) for a in (np.array([0, 16, 3]), np.array([0, 17, 3]), np.array([-1, 1, 2]),
                                                    np.array([1.0, 2.0, 3.0]), np.array([True, False, True]),
                                                    np.array([1, 2], np.int32), np.array([[1], [2], [3]]))]
    cases += [(mt, {"forward": np.array([1, 0, 1]), "camera": np.array([[0, 1], [10, -10], [2.5, 0]])}),
              (mt, {"forward": np.array([1, 0, 1]), "camera": np.array([[0, 1], [11, 0], [0, 0]])}),
              (mt, {"forward": np.array([1, 0, 1]), "camera": np.array([[0, np.nan], [0, 0], [0, 0]])}),
              (mt, {"hotbar": np.array([[8], [0], [9]])}), (mt, {"keys": np.array([[1, 0, 1]] * 3)}),
              (mt, {"keys": np.array([[1, 0, 2]] * 3)}), (mt, {"jump": np.array([1, 1, 1])}), (mt, {}),
              (mt, [1, 2, 3])]
    for space, acts in cases:
        try:
            want = stack_actions([check_action(space, a) for a in unstack(acts, 3)])
        except ValueError as e:
            with pytest.raises(ValueError, match=__import__("re").escape(str(e))):
                check_actions(space, acts, 3)
            continue
        got = check_actions(space, acts, 3)
        for k in (want if isinstance(want, dict) else [None]):
            w, g = (want[k], got[k]) if k else (want, got)
            assert w.dtype == g.dtype and np.array_equal(w, g), (space, acts, k)


def test_ends_are_drawn_with_the_heads_probability_without_touching_the_frames(bundle):
    """Default (no threshold): each step ends with the termination head's probability, drawn from a generator of
    its own, so a seed gives the same frames whether ends are drawn or not; a threshold ends deterministically."""
    venv = WorldVectorEnv(num_envs=8, bundle=bundle)
    last = venv.sim.dit.heads_mlp[-1]
    saved = last.weight.detach().clone(), last.bias.detach().clone()
    try:
        with torch.no_grad():  # a head that says 0.3 everywhere
            last.weight[1].zero_()
            last.bias[1] = float(np.log(0.3 / 0.7))
        venv.reset(seed=5)
        ends = sum(venv.step(np.full(8, 1))[2].sum() for _ in range(40))
        assert 45 <= ends <= 110, ends  # 8 x 40 steps; a step after an end is an autoreset step: mean 320 * 0.3 / 1.3
        single = {}
        for t in (None, 2.0, 0.25):  # 2.0: never ends; 0.25: below the probability, every step ends
            e = WorldEnv(bundle=bundle, termination_threshold=t)
            e.reset(seed=3)
            steps = [e.step(1) for _ in range(12)]
            single[t] = (np.stack([s[0] for s in steps]), [s[2] for s in steps])
            assert all(abs(s[4]["terminated_prob"] - 0.3) < 1e-5 for s in steps)
        assert np.array_equal(single[None][0], single[2.0][0])  # same frames
        assert 0 < sum(single[None][1]) < 12 and not any(single[2.0][1]) and all(single[0.25][1])
    finally:
        with torch.no_grad():
            last.weight.copy_(saved[0]), last.bias.copy_(saved[1])
    with pytest.raises(ValueError, match="termination_threshold"):
        WorldEnv(bundle=bundle, termination_threshold=float("nan"))


def test_reward_floor_zeroes_small_head_values_and_nothing_else(bundle, tmp_path):
    """reward_floor=f: the reward head's values under f in size become 0, the others and the frames stay; the
    default comes from the bundle's inference.reward_floor; bad floors get a clear error."""
    import json
    import shutil

    def run(env):
        env.reset(seed=4)
        steps = [env.step(a) for a in [1, 2, 3, 4, 5, 0] * 3]
        return np.stack([s[0] for s in steps]), np.array([s[1] for s in steps])

    frames, raw = run(WorldEnv(bundle=bundle))
    assert np.abs(raw).max() > 0
    f = float(np.median(np.abs(raw)))
    frames_f, floored = run(WorldEnv(bundle=bundle, reward_floor=f))
    assert np.array_equal(frames, frames_f)
    assert np.array_equal(floored, np.where(np.abs(raw) < f, 0.0, raw)) and (floored == 0).sum() > (raw == 0).sum()
    venv = WorldVectorEnv(num_envs=2, bundle=bundle, reward_floor=1e9)
    venv.reset(seed=0)
    assert not venv.step(np.array([1, 2]))[1].any()
    shutil.copytree(bundle, tmp_path / "b")
    meta = json.loads((tmp_path / "b" / "bundle.json").read_text())
    meta["inference"] = {**(meta.get("inference") or {}), "reward_floor": 1e9}
    (tmp_path / "b" / "bundle.json").write_text(json.dumps(meta))
    assert not run(WorldEnv(bundle=tmp_path / "b"))[1].any()  # the bundle's default
    assert np.array_equal(run(WorldEnv(bundle=tmp_path / "b", reward_floor=0))[1], raw)
    for bad in (-0.1, float("nan"), "high", True):
        with pytest.raises(ValueError, match="reward_floor must be a number >= 0"):
            WorldEnv(bundle=bundle, reward_floor=bad)


def test_vector_autoreset_next_step(bundle):
    # threshold -1: every step "terminates", so every other step is an autoreset step
    venv = WorldVectorEnv(num_envs=2, bundle=bundle, termination_threshold=-1.0)
    obs0, _ = venv.reset(seed=0, options={"start_index": 1})
    _, r, term, trunc, _ = venv.step(np.array([1, 1]))
    assert term.all()
    obs, r, term, trunc, _ = venv.step(np.array([1, 1]))
    assert not term.any() and not trunc.any() and (r == 0).all()
    starts = venv.bundle.start_frames[:, -1].numpy()
    for o in obs:  # the reset observation is one of the shipped start frames
        assert any(np.array_equal(o, s) for s in starts)


def test_shipped_default_model_needs_no_arguments():
    from worldsim import DEFAULT_CRAFTER_BUNDLE

    for f in DEFAULT_CRAFTER_BUNDLE.iterdir():
        assert f.stat().st_size <= 16 * 2**20, f
    env = gym.make("worldsim/Crafter-v0")
    check_env(env.unwrapped)
    obs, _ = env.reset(seed=0)
    obs2, *_ = env.step(2)
    assert obs2.shape == (64, 64, 3) and obs2.std() > 5  # a picture of a world, not noise or a blank
    env.close()
    # its tile autoencoder is tied to Crafter's 9x9 grid of 7-pixel tiles: another size is refused by name
    with pytest.raises(ValueError, match=r"tied to \(64, 64\) frames \(its tile grid\), got 96x96"):
        gym.make("worldsim/Crafter-v0", frame_size=(96, 96))


def test_shipped_bundles_are_named_as_every_job_names_them(tmp_path, monkeypatch):
    # bundle="crafter" is the shipped bundle in the env (and so in eval, bench and play) as in the fit jobs; a
    # bundle of one's own in a directory of that name comes first; a name that is neither is refused by name
    from worldsim import DEFAULT_CRAFTER_BUNDLE
    from worldsim.simulator import load_bundle

    env = gym.make("worldsim/Crafter-v0", bundle="crafter")
    assert env.unwrapped.bundle is load_bundle(DEFAULT_CRAFTER_BUNDLE)
    env.close()
    own = tmp_path / "crafter"
    own.mkdir()
    for f in DEFAULT_CRAFTER_BUNDLE.iterdir():
        (own / f.name).symlink_to(f)
    monkeypatch.chdir(tmp_path)
    assert load_bundle("crafter").path.resolve() == own.resolve()
    with pytest.raises(FileNotFoundError, match="no_such_bundle is not a worldsim bundle"):
        load_bundle("no_such_bundle")


def test_shipped_crafter_map_memory_shows_the_ground_it_left():
    """Walking 8 tiles left and back on the shipped Crafter model (three seeded starts): with its map memory
    (the bundle's default) every cell brought back into view from memory (ground that scrolls back, and the ground
    the player leaves) holds the latent shown at that world place before (exactly, or its nearest entry on a
    step that also draws new ground), and the view back at the start is closer to the first view than without
    the memory, which makes that ground up again. A cell that showed a mob (cow, zombie, arrow) holds what it
    held before the mob came: the memory keeps no mob's tile. "Back" is as many steps right as the memory's position says the walk
    left went (drawn ground can block a move, as in the game); the run without memory takes the same actions."""
    from worldsim.codebook import entry_index, snap
    from worldsim.evaluate import psnr_np

    back, walks = {}, {}
    for mem in (True, False):
        scores = []
        for seed in (1, 2, 3):
            env = gym.make("worldsim/Crafter-v0", termination_threshold=2.0, **({} if mem else {"map_memory": False}))
            first, _ = env.reset(seed=seed)
            sim = env.unwrapped.sim
            assert (sim.map is not None) == mem
            cb = sim.bundle.codebook.float()
            if mem:
                def mobile(v, mob=sim.map.mobile):  # whether v is an entry of a thing that moves (codebook.mobile_entries)
                    return bool(mob[1][entry_index(v.float()[None], mob[0])])
            shown, filled = {}, 0  # world place -> the latent shown there last (first: what the context showed)
            if mem:
                col0 = int(sim.map.pos[0, 1])
                for i, j in zip(*torch.nonzero(sim.map.at[0, ..., 0] > -2 ** 39, as_tuple=True)):
                    shown[tuple(sim.map.at[0, i, j].tolist())] = sim.map.z[0, i, j].clone()
            actions = walks.get(seed, [1] * 8 + [2] * 16)
            done = []
            for a in actions:
                if mem and a == 2 and int(sim.map.pos[0, 1]) >= col0:
                    break  # back where it started
                obs = env.step(a)[0]
                done.append(a)
                if mem:
                    pos, z = sim.map.pos[0].tolist(), sim.prev[0]
                    for r, c in zip(*torch.nonzero(sim.map.filled[0], as_tuple=True)):
                        held = shown[(pos[0] + int(r), pos[1] + int(c))]
                        # a step that also draws new ground snaps the whole frame again (draw_terrain): ground
                        # the context showed (an encoding, not an entry) comes back as its nearest entry then
                        assert (torch.equal(z[:, r, c].float(), held)
                                or torch.equal(z[:, r, c].float(), snap(held[None, :, None, None], cb)[0, :, 0, 0]))
                        filled += 1
                    for r, c in zip(*torch.nonzero(sim.map.cells, as_tuple=True)):
                        if not mobile(z[:, r, c]):  # a mob's cell keeps what the memory held there before
                            shown[(pos[0] + int(r), pos[1] + int(c))] = z[:, r, c].float().clone()
            if mem:
                walks[seed] = done
                assert int(sim.map.pos[0, 1]) == col0 and done.count(2) >= 3, done  # it went and came back
                assert filled >= 7 * 3, filled  # the way back came from memory
            scores.append(psnr_np(obs[:49], first[:49]))  # the 9 x 7 map view, without the inventory
            env.close()
        back[mem] = np.mean(scores)
    assert back[True] > back[False] + 2, back


def test_shipped_crafter_sleeps_and_wakes_as_the_real_game_does():
    """Crafter's sleep is read off the energy count, which the frames show: a sleeper stays asleep (a grey view)
    while the count is below full and wakes on the step after it is full again. From 4 real frames of a real
    sleeper, the shipped model's next frame must keep a mid-sleep view grey and wake a sleeper whose count is
    full at the game's step (the model shipped before woke 0 of 19 held-out sleepers: docs/results.md, "A third
    run, with sleeps"). Grey: the map view's colour (mean of max - min over the channels) under 10; the game's
    sleeping views are 5-8, its others 12 or more."""
    def colour(frame):
        v = np.asarray(frame, np.float64)[:49]  # the 7 tile rows of the map view
        return float((v.max(-1) - v.min(-1)).mean())

    env = gym.make("worldsim/Crafter-v0", termination_threshold=2.0)
    from worldsim.envs.real_crafter import real_sleeper

    sleepers = [s for s in (real_sleeper(seed) for seed in range(8)) if s is not None][:4]
    assert len(sleepers) >= 3, len(sleepers)
    for i, (frames, actions, press, energy) in enumerate(sleepers):
        woke = len(frames) - 1
        assert colour(frames[woke - 1]) < 10 < colour(frames[woke])  # the real view: asleep, then awake
        for last, awake in ((press + 5, False), (woke - 1, True)):  # mid-sleep (count below full), count full
            assert (energy[last] == 9) == awake
            env.reset(seed=i, options={"context_frames": frames[last - 3:last + 1],
                                       "context_actions": actions[last - 3:last], "clock": last})
            obs = env.step(int(actions[last]))[0]
            assert (colour(obs) > 10) == awake, (i, last, colour(obs), colour(frames[last + 1]))
    env.close()


def test_shipped_crafter_sleep_ends_on_the_games_clock():
    """A sleep begun below full energy ends, as the game's does: from 4 real frames ending on the first of a real
    sleep (energy 8), the shipped model by default (inference.ticks ["energy_up"], env.sleep_clock) keeps the
    sleeper's view grey, draws the energy rise on the 11th step as the game does and wakes the player, paying
    `wake_up`, within a few steps of the full count. With the ticks off (the default before) the count never
    rose and the player slept on: a 10,000-step rollout froze asleep (docs/results.md, A sleep that ends)."""
    from worldsim.envs.real_crafter import grey_view, real_sleeper

    sleepers = [s for s in (real_sleeper(seed) for seed in range(8)) if s is not None][:3]
    assert len(sleepers) == 3
    for ticks in (None, False):
        env = gym.make("worldsim/Crafter-v0", termination_threshold=2.0, **({} if ticks is None else {"ticks": ticks}))
        assert env.unwrapped.sim.settings()["ticks"] == (["energy_up"] if ticks is None else [])
        woke = []
        for i, (frames, actions, press, energy) in enumerate(sleepers):
            first = press + 1  # the frame the sleep press drew: asleep
            assert energy[first] == 8
            env.reset(seed=i, options={"context_frames": frames[first - 3:first + 1],
                                       "context_actions": actions[first - 3:first], "clock": first})
            grey, rose, paid = [], [], -1
            for t in range(1, 31):
                _, _, _, _, info = env.step(0)
                grey.append(bool(grey_view(torch.as_tensor(info["canvas"][None]))[0]))
                rose.append("energy_up" in info.get("ticks", []))
                if paid < 0 and "wake_up" in info["events"]:
                    paid = t
            if ticks is None:
                assert all(grey[:10]) and rose.index(True) == 10, (i, grey, rose)  # step 11, as the game's
                woke.append(0 < paid <= 16 and not any(grey[paid:]))
            else:
                woke.append(paid > 0 or not all(grey))
        env.close()
        assert sum(woke) == (3 if ticks is None else 0), (ticks, woke)


def test_shipped_crafter_explorer_world_does_not_fill_with_one_tile():
    """The shipped Crafter model under the scripted explorer: with new ground drawn from its terrain prior (the
    bundle's default) most moves scroll the frame and the view keeps more kinds of tile than with the model's
    likeliest tile (new_ground="nearest"). Tile kinds: the codebook groups of the view's tokens (the entries
    every shown token is). Moves, not all steps: the explorer strikes trees, and those "do" steps mostly leave
    the frame as it was. The lit model shipped before filled with grass under "nearest" (39 % of moves
    unchanged against 19 %; tile kinds 2.1 against 3.5); the light bundle shipped since 2026-12-06 keeps both
    moving (0.9 % and 2.0 % of moves unchanged) and the kinds apart (12.4 against 5.5)."""
    from worldsim.agents import make_agent
    from worldsim.codebook import entry_index

    seen = {}
    for mode in ("terrain", "nearest"):
        env = gym.make("worldsim/Crafter-v0", termination_threshold=2.0, **({} if mode == "terrain" else {"new_ground": mode}))
        sim = env.unwrapped.sim
        assert sim.new_ground == mode
        agent = make_agent("explorer", env.action_space, seed=0)
        obs, _ = env.reset(seed=0)
        agent.reset()
        still, moves, kinds = 0, 0, []
        for t in range(400):
            a = agent.act(obs)
            new = env.step(a)[0]
            if t >= 200 and 1 <= int(a) <= 4:  # move_left .. move_down
                moves += 1
                still += np.abs(new.astype(np.int16) - obs).mean() < 0.05
            if t >= 200:
                z = sim.prev[0, :, :7].flatten(1).T  # the 9 x 7 map view's tokens
                kinds.append(len(sim.bundle.codebook_groups[entry_index(z, sim.bundle.codebook)].unique()))
            obs = new
        seen[mode] = (still / moves, float(np.mean(kinds)))
        env.close()
    assert seen["terrain"][0] < 0.3, seen
    assert seen["terrain"][1] > seen["nearest"][1] + 1, seen


def test_shipped_crafter_bundle_holds_the_games_view_geometry():
    """The shipped bundle's env.reveal and env.map are what `worldsim collect` writes for Crafter (one source:
    envs/real_crafter.view_geometry), so a model trained here gets the same map memory and seeds."""
    from worldsim import DEFAULT_CRAFTER_BUNDLE
    from worldsim.collect import env_info
    from worldsim.envs.real_crafter import view_geometry
    from worldsim.simulator import load_bundle

    env = load_bundle(str(DEFAULT_CRAFTER_BUNDLE)).env
    geometry = view_geometry()
    assert env["reveal"] == geometry["reveal"] and env["map"] == geometry["map"]
    info = env_info("crafter", 64)
    assert info["reveal"] == geometry["reveal"] and info["map"] == geometry["map"]
    assert geometry["reveal"]["1"] == [[r, 0] for r in range(7)]  # move_left reveals the map's left column
