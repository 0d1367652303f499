"""The env's light (envs/real_crafter.py): held to Crafter's own LocalView._light on real game frames, its
inverse, and the learned world lit by its clock."""
import copy

import numpy as np
import pytest
import torch

from worldsim.envs.real_crafter import RealCrafterEnv, daylight, light, unlight, view_box


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


def test_daylight_is_the_games():
    env = RealCrafterEnv()
    env.reset(seed=0)
    for step in (0, 37, 60, 180, 210, 299, 300, 451):
        env.game._step = step
        env.game._update_time()
        assert daylight([step])[0] == pytest.approx(env.game._world.daylight, abs=1e-12)


def test_light_by_day_is_the_games_frame_exactly():
    """Dawn to dusk: lighting the canvas gives the game's frame bit for bit (no noise while daylight >= 0.5)."""
    _, frames, canvases, at = _walk(280, 160)
    day = daylight(at) >= 0.5
    assert day.sum() > 100 and (daylight(at) < 0.99).any()  # a range of lights, dawn and dusk among them
    lit = light(torch.as_tensor(canvases[day]), at[day]).numpy()
    np.testing.assert_array_equal(lit, frames[day])
    assert (canvases[day] != frames[day]).any()  # the light is not nothing


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
    _, frames, canvases, at = _walk(280, 160)
    day = daylight(at) >= 0.5
    back = unlight(torch.as_tensor(frames[day]), at[day]).numpy().astype(int)
    err = np.abs(back - canvases[day])
    assert err.max() <= 3 and err.mean() < 0.6, (err.max(), err.mean())
    np.testing.assert_array_equal(back[:, 49:], canvases[day][:, 49:])  # the inventory is never lit
