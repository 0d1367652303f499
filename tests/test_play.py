"""The viewer, headless: a real pygame window on SDL's dummy driver, keys posted as real SDL events."""
import os
import subprocess
import sys

import numpy as np
import pygame

from worldsim.cli import load_config
from worldsim.play import Viewer


def viewer(bundle, *overrides):
    return Viewer(load_config("play", [f"bundle={bundle}", *overrides]))


def key(k, up=False):
    pygame.event.post(pygame.event.Event(pygame.KEYUP if up else pygame.KEYDOWN, key=k, mod=0, unicode=""))


def test_keyboard_drives_the_model(bundle):
    v = viewer(bundle)
    v.env.unwrapped.threshold = 1.0  # the tiny untrained model's termination head must not end the episode
    assert v.agent_name is None and v.show_help  # keyboard play starts with the key help shown
    key(pygame.K_w)
    v.tick()
    assert v.last_action == 3 and v.steps == 1  # W = move_up
    key(pygame.K_SPACE)
    v.tick()
    assert v.last_action == 5  # the most recent held key wins: SPACE = do
    key(pygame.K_SPACE, up=True)
    key(pygame.K_w, up=True)
    v.tick()
    assert v.last_action == 0  # nothing held: noop
    key(pygame.K_PERIOD)  # pause: no steps
    v.tick(), v.tick()
    assert v.paused and v.steps == 3
    key(pygame.K_PERIOD)
    key(pygame.K_RETURN)  # reset to a new episode
    v.tick()
    assert v.seed == 1 and v.steps == 4
    pixels = v.win.pixels()
    assert pixels.shape == (512 + 64, 512, 3) and pixels[:512].std() > 1
    key(pygame.K_ESCAPE)
    v.tick()
    assert not v.running
    v.close()


def test_compare_runs_real_crafter_beside_the_model(bundle, tmp_path):
    v = viewer(bundle, "compare=true", "agent=explorer", "steps=5", f"record={tmp_path / 'c.mp4'}")
    v.env.unwrapped.threshold = 1.0  # keep the tiny model's episode going for all 5 steps
    first_real = v.real_obs.copy()
    np.testing.assert_array_equal(v.obs, first_real)  # the model starts from the real game's frame
    res = v.run()
    assert res["steps"] == 5 and (tmp_path / "c.mp4").stat().st_size > 0
    assert v.real.unwrapped.game._step == 5  # the real game took the same 5 actions
    assert v.win.size == (1024, 576)


def test_no_display_writes_a_video_instead(bundle, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "SDL_VIDEODRIVER")}
    out = subprocess.run([sys.executable, "-m", "worldsim.cli", "play", f"bundle={bundle}", "headless_steps=6"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "no display found" in out.stdout
    assert (tmp_path / "worldsim_play.mp4").stat().st_size > 0
