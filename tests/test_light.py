"""The env's light (envs/real_crafter.py): held to Crafter's own LocalView._light on real game frames, its
inverse, and the learned world lit by its clock."""
import copy

import numpy as np
import pytest
import torch

from worldsim.envs.real_crafter import (RealCrafterEnv, daylight, grey_view, light, sleep_view, sleeping, unlight,
                                       view_box)


def _walk(clock: int, steps: int, seed: int = 3):
    """A real game with canvases, from game step `clock`: (frames, canvases, game steps), random moves."""
    env = RealCrafterEnv(canvas=True)
    obs, info = env.reset(seed=seed, options={"clock": clock})
    frames, canvases, at = [obs], [info["canvas"]], [clock]
    rng = np.random.default_rng(seed)
    for t in range(steps):
        obs, _, term, trunc, info = env.step(int(rng.integers(0, 5)))
        frames.append(obs), canvases.append(info["canvas"]), at.append(clock + t + 1)
        if term or trunc:
            break
    return env, np.stack(frames), np.stack(canvases), np.array(at)


def _whole_walk(clock: int, steps: int):
    """`_walk` in the first world (seeds 3, 4, ...) where the player lives through all the steps: the world follows
    PYTHONHASHSEED, so in some a random walk dies early."""
    for seed in range(3, 9):
        out = _walk(clock, steps, seed)
        if len(out[3]) == steps + 1:
            return out
    raise AssertionError(f"no world of seeds 3-8 kept a random walker alive for {steps} steps")


def test_daylight_is_the_games():
    env = RealCrafterEnv()
    env.reset(seed=0)
    for step in (0, 37, 60, 180, 210, 299, 300, 451):
        env.game._step = step
        env.game._update_time()
        assert daylight([step])[0] == pytest.approx(env.game._world.daylight, abs=1e-12)


def test_light_by_day_is_the_games_frame_exactly():
    """Dawn to dusk: lighting the canvas gives the game's frame bit for bit (no noise while daylight >= 0.5)."""
    _, frames, canvases, at = _whole_walk(280, 160)
    day = daylight(at) >= 0.5
    assert day.sum() > 100 and (daylight(at) < 0.99).any()  # a range of lights, dawn and dusk among them
    lit = light(torch.as_tensor(canvases[day]), at[day]).numpy()
    np.testing.assert_array_equal(lit, frames[day])
    assert (canvases[day] != frames[day]).any()  # the light is not nothing


def test_a_sleepers_view_is_the_games_and_the_sprite_tells_the_sleep():
    """A real sleep spell by day: the canvas keeps the world's colours and shows the sleeping sprite; lighting it
    and greying it where `sleeping` reads that sprite gives the game's frame bit for bit, before, during and
    after the sleep, and `sleeping` is the game's own flag on every step."""
    frames, canvases, _, flags, greyed = _real_sleep()
    at = np.arange(len(frames))
    assert flags[5:30].all() and not flags[:4].any() and not flags[-1]  # asleep, then woken on a full count
    c = torch.as_tensor(canvases)
    np.testing.assert_array_equal(sleeping(c).numpy(), flags)
    np.testing.assert_array_equal(sleep_view(light(c, at), flags).numpy(), frames)
    np.testing.assert_array_equal(sleep_view(c, flags).numpy()[1:], greyed[1:])  # the default canvas (frame 0: drawn before the energy was set)
    rows, cols = view_box(c.shape[1:])
    colour = lambda x: (x[..., rows, cols, :].amax(-1) - x[..., rows, cols, :].amin(-1)).float().mean()
    assert colour(c[flags]) > 4 * colour(torch.as_tensor(frames)[flags])  # the grey is not in the canvas


def test_grey_view_tells_a_sleeper_by_its_grey_by_day_and_night():
    """For models that draw a sleeper's grey themselves: the game's frames of a sleep spell read as asleep exactly
    on the steps the game's flag is up (the canvases drawn by default too, which keep the grey), and the view
    of a night, dark and blue, never does."""
    frames, _, _, flags, greyed = _real_sleep()
    np.testing.assert_array_equal(grey_view(torch.as_tensor(frames)).numpy(), flags)
    np.testing.assert_array_equal(grey_view(torch.as_tensor(greyed)).numpy()[1:], flags[1:])
    _, night, night_canvases, at = _walk(200, 20)
    assert (daylight(at) < 0.5).all()
    assert not grey_view(torch.as_tensor(night), 0.8).any() and not grey_view(torch.as_tensor(night_canvases)).any()
    half = greyed[flags][:1].copy()  # a grey view with its top third in colour, as the shipped model draws some
    half[:, :16] = night_canvases[:1, :16]
    assert grey_view(torch.as_tensor(half)).all() and not grey_view(torch.as_tensor(half), 0.8).any()


def test_unlight_gives_back_a_sleepers_grey_canvas_at_dusk():
    """A sleeper's frame is greyed after the light, so its colours are gone; unlight gives back the canvas as the
    game greys it (canvases with the grey: what the shipped model reads) to a grey level, from a sleep at dusk
    (daylight 0.80 to 0.50), where undoing the light as if the view were awake is off by up to tens of levels."""
    def sleep(seed):
        env = RealCrafterEnv(canvas=True)
        env.reset(seed=seed, options={"clock": 118})
        env.game._player.inventory["energy"] = 7
        frames, canvases, flags = [], [], []
        for t in range(22):
            obs, _, term, _, info = env.step(6 if t == 1 else 0)
            frames.append(obs), canvases.append(info["canvas"]), flags.append(env.game._player.sleeping)
            if term:
                return None
        return np.stack(frames), np.stack(canvases), np.array(flags)

    frames, canvases, flags = next(s for s in map(sleep, range(5, 12)) if s is not None and s[2][1:].all())
    at = np.arange(119, 141)
    assert not flags[0] and (daylight(at) < 0.81).all() and (daylight(at) >= 0.5).all()
    rows, cols = view_box(frames.shape[1:])
    back = unlight(torch.as_tensor(frames), at).numpy().astype(int)
    err = np.abs(back - canvases.astype(int))[:, rows, cols]
    assert err[flags].max() <= 1 and err[~flags].max() <= 2, (err[flags].max(), err[~flags].max())
    awake_way = unlight(torch.as_tensor(frames[flags]), at[flags], sleepers=False).numpy().astype(int)
    assert np.abs(awake_way - canvases[flags].astype(int))[:, rows, cols].max() > 10


def test_light_at_night_with_the_games_noise():
    """At night the game adds uniform noise drawn from its world's random state: lighting the canvas with the
    same draws gives what LocalView._light gives, and with the noise's mean it is close to the game's frame."""
    env, frames, canvases, at = _walk(200, 20)
    lv = env.game._local_view
    rows, cols = view_box(frames.shape[1:])
    for i in range(0, len(at), 5):
        d = daylight(at[i : i + 1])[0]
        assert d < 0.5
        lv._world.random = np.random.RandomState(i)
        ref = lv._light(canvases[i][rows, cols].transpose(1, 0, 2), d)  # crafter's view is (x, y)
        u = np.random.RandomState(i).uniform(32, 127, ref.shape[:2]).T  # the same draws, in frame order
        ours = light(torch.as_tensor(canvases[i : i + 1]), at[i : i + 1], torch.as_tensor(u[None])).numpy()[0]
        np.testing.assert_array_equal(ours[rows, cols], ref.transpose(1, 0, 2).astype(np.uint8))
    mean = light(torch.as_tensor(canvases), at).numpy().astype(float)
    err = np.abs(mean - frames).mean()
    assert 0 < err < 8, err  # the noise's mean: near the game's night, not its draw


def test_unlight_inverts_light():
    _, frames, canvases, at = _whole_walk(280, 160)
    day = daylight(at) >= 0.5
    back = unlight(torch.as_tensor(frames[day]), at[day]).numpy().astype(int)
    err = np.abs(back - canvases[day])
    assert err.max() <= 3 and err.mean() < 0.6, (err.max(), err.mean())
    np.testing.assert_array_equal(back[:, 49:], canvases[day][:, 49:])  # the inventory is never lit


def _lit_bundle(tmp_path, light="crafter", sleep="keep"):
    """A copy of the shipped Crafter bundle marked as drawing canvases (env.light), for the simulator's light
    (the shipped one is, since 2026-12-06); light=None: marked as drawing the light itself, as bundles before.
    sleep: env.sleep set to it ("crafter": canvases leave a sleeper's grey to the env; None: they show it)."""
    import json
    import shutil

    from worldsim import DEFAULT_CRAFTER_BUNDLE

    path = tmp_path / "lit"
    shutil.copytree(DEFAULT_CRAFTER_BUNDLE, path)
    meta = json.loads((path / "bundle.json").read_text())
    if light is None:
        meta["env"].pop("light", None)
        meta.get("inference", {}).pop("light", None)
    else:
        meta["env"]["light"] = light
    if sleep != "keep":
        meta["env"].pop("sleep", None)
        meta["env"].update({"sleep": sleep} if sleep else {})
    (path / "bundle.json").write_text(json.dumps(meta))
    return path


def test_simulator_lights_canvases_by_each_rows_clock(tmp_path):
    """Two rows from the same real canvases, one at noon and one at night: the model draws the same canvases in
    both (the light never reaches it), and each row's frames are those canvases lit by its own clock."""
    from worldsim.checkpoint import Bundle
    from worldsim.simulator import WorldSimulator

    _, frames, canvases, at = _walk(0, 8)
    sim = WorldSimulator(Bundle(_lit_bundle(tmp_path)), 2, light_noise="mean", quantize="none")
    assert sim.light and sim.settings()["light"]
    T, shape = sim.window, sim.latent_shape
    rng = np.random.default_rng(0)
    ctx = np.repeat(canvases[None, :T], 2, 0)
    noise = np.repeat(rng.standard_normal((1, T, *shape)), 2, 0)
    clocks = [60, 205]  # noon; deep night
    lit_ctx = np.stack([light(torch.as_tensor(ctx[0]), np.arange(c - T + 1, c + 1)).numpy() for c in clocks])
    sim.reset([0, 1], lit_ctx, np.repeat(np.array([[1] * (T - 1)]), 2, 0), noise, clocks, canvas=ctx)
    for t in range(3):
        step_noise = np.repeat(rng.standard_normal((1, *shape)), 2, 0)
        res = sim.step(np.array([3, 3]), step_noise, np.zeros((2, *shape)))
        np.testing.assert_array_equal(res.canvas[0], res.canvas[1])
        want = light(torch.as_tensor(res.canvas), np.array(clocks) + t + 1).numpy()
        np.testing.assert_array_equal(res.frames, want)
    rows, cols = view_box(res.frames.shape[1:])
    def colour(f):  # each pixel's spread over its channels, on average: the night greys and tints the view
        return float((f.max(-1).astype(int) - f.min(-1)).mean())
    assert colour(res.frames[1][rows, cols]) < 0.5 * colour(res.frames[0][rows, cols])  # night is grey
    # without canvases the context is worked out from the lit frames: by day it is nearly the same
    sim.reset([0, 1], lit_ctx, np.repeat(np.array([[1] * (T - 1)]), 2, 0), noise, clocks)
    assert np.abs(sim.shown[0].numpy().astype(int) - ctx[0, -1]).mean() < 1


def _real_sleep(seed: int = 5, press: int = 3, steps: int = 60):
    """A real sleep spell by day with canvases that leave a sleeper's grey out (grey_sleep=False): (frames,
    canvases, actions, the game's sleeping flags, the canvases as drawn by default, a sleeper greyed)."""
    env = RealCrafterEnv(canvas=True, grey_sleep=False)
    obs, info = env.reset(seed=seed)
    env.game._player.inventory["energy"] = 6  # tired: a sleep press puts the player to sleep until it is full
    frames, canvases, actions, flags, greyed = [obs], [info["canvas"]], [], [False], [_grey_canvas(env)]
    for t in range(steps):
        actions.append(6 if t == press else 0)
        obs, _, term, trunc, info = env.step(actions[-1])
        frames.append(obs), canvases.append(info["canvas"]), flags.append(env.game._player.sleeping)
        greyed.append(_grey_canvas(env))
        assert not (term or trunc)
    return np.stack(frames), np.stack(canvases), np.array(actions), np.array(flags), np.stack(greyed)


def _grey_canvas(env):
    """The canvas of `env`'s game now as RealCrafterEnv draws it by default (grey_sleep=True)."""
    env.grey_sleep = True
    try:
        return env._draw_canvas()
    finally:
        env.grey_sleep = False


def test_fit_jobs_refuse_canvases_drawn_otherwise_than_the_bundles_model_read(tmp_path):
    """A model trained on canvases that show a sleeper's grey (bundles before env.sleep) is not fit on canvases
    that leave it to the env, nor the other way round: its heads would read sleeps it never saw."""
    import json

    from worldsim.checkpoint import bundle_and_training_data
    from worldsim.cli import run_job

    run_job("collect", [f"out={tmp_path / 'canvas'}", "light=false", "grey_sleep=false", "episodes=1", "workers=1",
                        "max_steps=6", "test_every=0"])
    for sleep in ("crafter", None):
        path = _lit_bundle(tmp_path / str(sleep), sleep=sleep)
        if sleep:
            assert len(bundle_and_training_data(str(path), str(tmp_path / "canvas"))[2]) == 1
        else:
            with pytest.raises(ValueError, match="sleeper's grey view"):
                bundle_and_training_data(str(path), str(tmp_path / "canvas"))


def test_the_env_draws_a_sleepers_view_as_the_game_does(tmp_path):
    """A bundle whose canvases leave a sleeper's grey to the env (env.sleep): the frames it returns for real
    canvases, a sleep spell among them, are the game's frames bit for bit (by day); a bundle without env.sleep
    shows the canvases' sleeper lit but not greyed; env.sleep needs a model on canvases (env.light)."""
    from worldsim.checkpoint import Bundle
    from worldsim.simulator import WorldSimulator

    frames, canvases, _, flags, _ = _real_sleep()
    c = torch.as_tensor(canvases)
    for sleep in ("crafter", None):
        sim = WorldSimulator(Bundle(_lit_bundle(tmp_path / str(sleep), sleep=sleep)), len(c), quantize="none")
        assert sim.sleep_view == bool(sleep)
        sim.clock = np.arange(len(c))
        shown = sim._light(c, np.zeros((len(c), 1))).numpy()
        if sleep:
            np.testing.assert_array_equal(shown, frames)
        else:
            np.testing.assert_array_equal(shown[~flags], frames[~flags])
            assert (shown[flags] != frames[flags]).any(-1).mean() > 0.5
    with pytest.raises(ValueError, match="env.sleep must be"):
        WorldSimulator(Bundle(_lit_bundle(tmp_path / "drawn", light=None, sleep="crafter")), 1)


def test_light_noise_is_drawn_reproducibly_and_light_false_shows_canvases(tmp_path):
    from worldsim.checkpoint import Bundle
    from worldsim.simulator import WorldSimulator

    _, frames, canvases, at = _walk(200, 6)
    bundle = Bundle(_lit_bundle(tmp_path))
    T = 4

    def run(**kw):
        sim = WorldSimulator(bundle, 1, quantize="none", **kw)
        rng = np.random.default_rng(1)
        sim.reset([0], frames[None, :T], np.array([[1] * (T - 1)]), rng.standard_normal((1, T, *sim.latent_shape)),
                  [203], canvas=canvases[None, :T])
        return [sim.step(np.array([2]), rng.standard_normal((1, *sim.latent_shape)),
                         rng.standard_normal((1, *sim.latent_shape))) for _ in range(2)]

    a, b, mean, off = run(), run(), run(light_noise="mean"), run(light=False)
    for x, y, m, o in zip(a, b, mean, off):
        np.testing.assert_array_equal(x.frames, y.frames)  # the same context noise, the same night noise
        np.testing.assert_array_equal(x.canvas, m.canvas)
        assert (x.frames != m.frames).mean() > 0.3  # drawn noise, not its mean
        np.testing.assert_array_equal(o.frames, x.canvas)  # light=false: the model's canvases
        assert o.canvas is None
    with pytest.raises(ValueError, match="light_noise must be"):
        WorldSimulator(bundle, 1, light_noise="gauss")
    with pytest.raises(ValueError, match="frames are lit already"):  # a bundle whose model draws the light
        WorldSimulator(Bundle(_lit_bundle(tmp_path / "drawn", light=None)), 1, light=True)


def test_env_with_the_light(tmp_path):
    """The learned env on a canvas bundle: nights by its clock, info["canvas"], the same seed the same night, and
    the vector env's autoreset rows get their new start's canvas."""
    import gymnasium as gym
    from gymnasium.utils.env_checker import check_env

    import worldsim  # noqa: F401  (registers the envs)
    from worldsim.envs.world_env import WorldVectorEnv

    path = _lit_bundle(tmp_path)
    env = gym.make("worldsim/Crafter-v0", bundle=str(path), quantize="none")
    check_env(env.unwrapped, skip_render_check=True)

    def night(seed):
        obs, _ = env.reset(seed=seed, options={"start_index": 0, "clock": 206})
        out = [env.step(2) for _ in range(3)]
        return obs, [o for o, *_ in out], [i["canvas"] for *_, i in out]

    (o1, f1, c1), (o2, f2, c2) = night(5), night(5)
    for a, b in zip(f1, f2):
        np.testing.assert_array_equal(a, b)
    rows, cols = view_box(f1[0].shape)
    def saturation(f):
        f = f[rows, cols].astype(float)
        return (f.max(-1) - f.min(-1)).mean()

    assert saturation(f1[-1]) < saturation(c1[-1]) / 2  # a night over the model's canvas
    state = env.unwrapped.get_state()  # a saved night goes on with the same noise
    again = []
    for _ in range(2):
        env.unwrapped.set_state(state)
        again.append([env.step(a)[0] for a in (1, 3)])
    np.testing.assert_array_equal(again[0], again[1])
    env.close()
    # light=False shows canvases, so context frames given to its reset are canvases, also at night
    _, _, canvases, _ = _walk(200, 3)
    dark = gym.make("worldsim/Crafter-v0", bundle=str(path), quantize="none", light=False)
    obs, _ = dark.reset(seed=0, options={"context_frames": canvases, "context_actions": np.zeros(3, np.int64),
                                         "clock": 203})
    np.testing.assert_array_equal(obs, canvases[-1])
    np.testing.assert_array_equal(dark.unwrapped.sim.shown[0].numpy(), canvases[-1])
    obs, _ = dark.reset(seed=0, options={"start_index": 0})  # a shipped start state is lit: drawn back
    np.testing.assert_array_equal(obs, dark.unwrapped.sim.shown[0].numpy())
    start = dark.unwrapped.bundle.start_frames[0].numpy()  # the game's first steps: 0 .. T - 1
    np.testing.assert_array_equal(obs, unlight(torch.as_tensor(start), np.arange(len(start))).numpy()[-1])
    assert (obs != start[-1]).any()
    dark.close()
    venv = WorldVectorEnv(2, bundle=str(path), quantize="none", horizon=2)
    venv.reset(seed=0)
    for _ in range(3):
        obs, _, term, trunc, info = venv.step(np.array([1, 2]))
    assert info["canvas"].shape == obs.shape
    venv.close()


def test_stability_under_the_light_counts_what_the_world_did(tmp_path):
    """The eval's long rollout of a canvas bundle measures change and unchanged steps on the canvases, the model's
    and the real episodes' alike: at night the light's noise changes every lit frame, so lit frames would hide a
    world standing still. A collection without canvases gets a clear error."""
    from omegaconf import OmegaConf

    from worldsim.checkpoint import Bundle
    from worldsim.evaluate import stability_eval

    eps = []
    for seed in (3, 4):
        _, frames, canvases, _ = _walk(200, 12, seed=seed)  # a night: lit frames always change
        n = len(frames) - 1
        eps.append({"frames": frames, "canvas": canvases, "actions": np.zeros(n, np.int64),
                    "rewards": np.zeros(n, np.float32), "terminated": np.zeros(n, bool)})
    cfg = OmegaConf.create({"seed": 0, "bank_frames": 16, "env": "crafter", "device": "cpu", "sampling_steps": None,
                            "quantize": "none", "light_noise": "sample", "stability_strip": None,
                            "stability_plot": None})
    res = stability_eval(cfg, Bundle(_lit_bundle(tmp_path)), eps, 6, 3)
    assert res["change_of"] == "canvas" and len(res["blocks"]) == 2

    def unchanged(key):
        return float(np.mean(np.concatenate([np.abs(np.diff(ep[key].astype(np.int16), axis=0)).mean(axis=(1, 2, 3))
                                             for ep in eps]) < 0.05))

    assert res["real_reference"]["frozen_share"] == pytest.approx(unchanged("canvas"))
    assert unchanged("canvas") > 0 and unchanged("frames") == 0  # the noise hides the still steps
    with pytest.raises(ValueError, match="canvas=true"):
        stability_eval(cfg, Bundle(_lit_bundle(tmp_path / "b")), [{k: v for k, v in ep.items() if k != "canvas"}
                                                                  for ep in eps], 6, 3)
