"""The real Minetest adapter: a real game under Xvfb, driven through X input, for a few dozen steps."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from worldsim.envs import minerl_actions as M
from worldsim.envs import real_minetest
from worldsim.evaluate import phase_shift

try:
    real_minetest.find_binaries()
except RuntimeError as e:
    if os.environ.get("CI"):  # CI installs the packages itself: there a missing game is a failure
        raise
    pytest.skip(f"real Minetest not installed here: {e}", allow_module_level=True)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture(scope="module")
def env():
    e = real_minetest.RealMinetestEnv(length=40)
    yield e
    e.close()


def act(**kw):
    a = M.noop()
    for k, v in kw.items():
        a[k] = np.asarray(v, np.float32) if k == "camera" else v
    return a


def turned(a, b):
    """Degrees turned to the right between two infos; Minetest's yaw grows to the left."""
    return -((b["yaw"] - a["yaw"] + 180) % 360 - 180)


def settle(env, n=4):
    for _ in range(n):
        obs, *_, info = env.step(act())
    return obs, info


def test_spaces_and_frames(env):
    obs, info = env.reset(seed=11)
    assert env.observation_space.contains(obs) and obs.shape == (96, 128, 3)
    assert set(env.action_space.spaces) == set(M.KEYS) | {"camera"}
    assert obs.std() > 5, "the first frame is blank"
    assert {"world_seed", "pos", "yaw", "time_of_day"} <= set(info)


def test_forward_moves_the_player_and_changes_the_frame(env):
    env.reset(seed=12)
    before, info0 = settle(env)
    for _ in range(12):
        obs, r, terminated, truncated, info = env.step(act(forward=1))
    after, info1 = settle(env)
    moved = np.hypot(info1["pos"][0] - info0["pos"][0], info1["pos"][2] - info0["pos"][2])
    assert moved > 1.0, f"forward for 0.6 s moved the player only {moved:.2f} nodes"
    assert np.abs(after.astype(int) - before).mean() > 2


def test_yaw_right_shifts_the_view_left_and_pitch_turns_exactly(env):
    env.reset(seed=13)
    before, info0 = settle(env)
    *_, info_t = env.step(act(camera=[0.0, 6.0]))
    after, info1 = settle(env)
    dy, dx = phase_shift(before, after)
    # turning right moves the scene towards the left of the image
    assert dx < -2 and abs(dy) <= 2, (dy, dx, info0, info_t, info1)
    assert abs(turned(info0, info1) - 6.0) < 0.5, turned(info0, info1)
    env.step(act(camera=[20.0, 0.0]))
    _, info2 = settle(env)
    assert abs((info2["pitch"] - info1["pitch"]) - 20.0) < 0.5


def test_seeded_start(env):
    _, a = env.reset(seed=21)
    _, b = env.reset(seed=21)
    _, c = env.reset(seed=22)
    assert a["world_seed"] == b["world_seed"] != c["world_seed"]
    assert np.allclose(a["pos"], b["pos"]) and abs(a["time_of_day"] - b["time_of_day"]) < 0.01


def test_twenty_hertz_and_truncation(env):
    env.reset(seed=14)
    t0, waited = time.perf_counter(), 0.0
    for i in range(40):
        obs, r, terminated, truncated, info = env.step(act(forward=i % 2))
        waited += info["waited"]  # a stalled game holds the tick until it has drawn the action
    dt = time.perf_counter() - t0 - waited
    assert truncated and not terminated and r == 0.0
    assert 40 * 0.05 * 0.95 < dt < 40 * 0.05 * 1.3, f"40 ticks took {dt:.2f} s besides {waited:.2f} s of waits"


def test_every_turn_shows_in_its_own_tick(env):
    # after a still spell the game now and then stalled and a turn showed a tick late (the frame equal to
    # the last one); the env waits until the game has drawn two frames since the tick's input
    env.reset(seed=15)
    for i in range(16):
        if i % 8 == 0:
            obs, _ = settle(env, 8)
        cam = [[0.0, 6.0], [0.0, -6.0], [-6.0, 0.0], [6.0, 0.0]][i % 4]
        new, *_, info = env.step(act(camera=cam))
        assert info["frames"] >= 2 and info["waited"] < env.max_wait, info
        assert np.abs(new.astype(int) - obs).mean() > 1.0, f"turn {i} ({cam}) did not show in its tick: {info}"
        obs = new


def test_a_lost_turn_is_sent_again(env):
    # A motion the game never reads is lost: on regaining focus it warps the pointer back to the centre
    # without reading it (a suspected cause of the unchanged turns seen under CI load). Recreate the outcome
    # for one tick by dropping that tick's first send: the env must see the unchanged view and resend.
    # (A real warp right behind the motion was tried first; under CI load the game now and then read the
    # motion before the warp, so the turn was not lost and the test failed without a fault in the env.)
    env.reset(seed=16)
    obs, info0 = settle(env, 8)
    g, send = env.game, env.game.send_motion

    def lose_once():
        g.send_motion = send  # only this tick's first send is lost

    g.send_motion = lose_once
    new, *_, info = env.step(act(camera=[0.0, 6.0]))
    assert info["resent"] and np.abs(new.astype(int) - obs).mean() > 1.0, info
    _, info1 = settle(env)
    assert abs(turned(info0, info1) - 6.0) < 0.5  # turned once: neither lost nor doubled
    *_, step_info = env.step(act(camera=[0.0, 6.0]))
    _, info2 = settle(env)
    assert not step_info["resent"] and abs(turned(info1, info2) - 6.0) < 0.5


def test_turns_with_the_inventory_open_do_not_wait(env):
    # with the inventory open the pointer is free: a turn moves the cursor, not the view, and the game
    # no longer re-centres the pointer; the env once took that for an unread turn and waited max_wait
    # (0.5 s) on every such tick, so random agents (inventory pressed half the time) ran at 6 steps/s
    env.reset(seed=17)
    settle(env)
    env.step(act(inventory=1))
    before, _ = settle(env)
    infos = [env.step(act(camera=[0.0, 8.0]))[-1] for _ in range(4)]
    assert all(i["waited"] < 0.1 for i in infos), infos
    after, _ = settle(env)
    assert not turned(infos[0], infos[-1]), infos  # the view did not turn
    env.step(act(inventory=1))  # closed again: turns turn
    _, info0 = settle(env)
    env.step(act(camera=[0.0, 8.0]))
    _, info1 = settle(env)
    assert abs(turned(info0, info1) - 8.0) < 0.5


def test_bad_actions_get_clear_errors(env):
    env.reset(seed=15)
    with pytest.raises(ValueError, match="unknown action key"):
        env.step({"jumpp": 1})
    with pytest.raises(ValueError, match="shape"):
        env.step(act(camera=[1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="finite"):
        env.step(act(camera=[np.nan, 0.0]))
    with pytest.raises(ValueError, match=r"action\['forward'\] 2: it must be an element of Discrete\(2\)"):
        env.step({"forward": 2})


def test_close_leaves_no_process_and_two_envs_run_side_by_side():
    a, b = real_minetest.RealMinetestEnv(), real_minetest.RealMinetestEnv()
    a.reset(seed=1), b.reset(seed=2)
    pids = [p.pid for g in (a.game, b.game) for p in g.procs]
    tmps = [a.game.tmp, b.game.tmp]
    assert a.game.display_name != b.game.display_name and a.game.port != b.game.port
    # each server listens on its own port on the loopback address only
    with open("/proc/net/udp") as f:
        bound = [line.split()[1] for line in f.readlines()[1:]]
    for g in (a.game, b.game):
        assert f"0100007F:{g.port:04X}" in bound and f"00000000:{g.port:04X}" not in bound, (g.port, bound)
    assert all(_alive(p) for p in pids)
    a.close(), b.close()
    assert not any(_alive(p) for p in pids), "Xvfb or minetest left behind after close()"
    assert not any(os.path.exists(t) for t in tmps)


def test_no_process_left_when_python_is_killed(tmp_path):
    # A Python process that holds a running game is SIGKILLed (no atexit, no close): the kernel's
    # parent-death signal must still take Xvfb and minetest down.
    script = textwrap.dedent("""
        import sys
        from worldsim.envs.real_minetest import RealMinetestEnv
        env = RealMinetestEnv(); env.reset(seed=3)
        print(" ".join(str(p.pid) for p in env.game.procs), flush=True)
        sys.stdin.read()
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    pids = [int(x) for x in proc.stdout.readline().split()]
    assert len(pids) == 2 and all(_alive(p) for p in pids)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids)


def test_missing_packages_named(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(real_minetest.shutil, "which", lambda *a, **k: None)
    monkeypatch.setattr(real_minetest, "GAME_DIRS", ("/nonexistent/minetest_game",))
    with pytest.raises(RuntimeError, match="minetest, minetest-data, xvfb.*apt-get install -y minetest minetest-data xvfb"):
        real_minetest.find_binaries()
