"""The learned first-person world on MineRL Dict actions: a tiny model trained on real Minetest frames."""
import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from worldsim.data import load_episodes, load_manifest
from worldsim.envs import minerl_actions as M
from worldsim.envs.world_env import WorldEnv


def act(**kw):
    a = M.noop()
    for k, v in kw.items():
        a[k] = np.asarray(v, np.float32) if k == "camera" else v
    return a


def test_collected_episodes_have_dict_actions(minetest_dataset):
    m = load_manifest(minetest_dataset)
    assert m["env"]["frame_shape"] == [96, 128, 3] and m["env"]["action_space"]["type"] == "dict"
    ep = load_episodes(minetest_dataset)[0]
    assert set(ep["actions"]) == set(M.KEYS) | {"camera"}
    assert ep["actions"]["camera"].dtype == np.float32 and ep["actions"]["camera"].shape == (24, 2)
    assert ep["frames"].shape == (25, 96, 128, 3)
    assert np.abs(ep["actions"]["camera"]).sum() > 0, "the explorer never moved the camera"


def test_spaces_match_the_real_game_and_check_env(minetest_bundle):
    env = WorldEnv(bundle=minetest_bundle)
    assert env.action_space == M.action_space()
    assert env.observation_space == gym.spaces.Box(0, 255, (96, 128, 3), np.uint8)
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    obs2, r, terminated, truncated, info = env.step({"forward": 1, "camera": [0.0, 10.0]})
    assert obs2.shape == (96, 128, 3) and obs2.dtype == np.uint8


def test_second_frame_size_without_retraining(minetest_bundle):
    # the same weights at 64x96 (rotary positions, convolutional autoencoder): frames of that size, and the
    # shipped start states resized to it
    env = WorldEnv(bundle=minetest_bundle, frame_size=(64, 96))
    assert env.observation_space.shape == (64, 96, 3)
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=1)
    assert obs.shape == (64, 96, 3)
    frames = [env.step(act(forward=1))[0] for _ in range(4)]
    assert all(f.shape == (64, 96, 3) for f in frames)
    # seeded: the same seed and actions give the same frames at this size too
    env.reset(seed=1)
    assert all(np.array_equal(env.step(act(forward=1))[0], f) for f in frames)
    with pytest.raises(ValueError, match="multiples of 4"):
        WorldEnv(bundle=minetest_bundle, frame_size=(70, 96))
    with pytest.raises(ValueError, match="18x24 latent grid, not divisible by the world model's patch size 4"):
        WorldEnv(bundle=minetest_bundle, frame_size=(72, 96))


def test_bad_dict_actions_get_clear_errors(minetest_bundle):
    env = WorldEnv(bundle=minetest_bundle)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"unknown action key\(s\) \['fly'\]"):
        env.step({"fly": 1})
    with pytest.raises(ValueError, match=r"action\['camera'\] must have shape \(2,\), got shape \(3,\)"):
        env.step({"camera": [1.0, 2.0, 3.0]})
    with pytest.raises(ValueError, match=r"action\['camera'\] must be finite"):
        env.step({"camera": [np.nan, 0.0]})
    with pytest.raises(ValueError, match=r"action\['forward'\]"):
        env.step({"forward": 3})
    with pytest.raises(ValueError, match="must be a dict"):
        env.step(5)


def test_reset_from_context_with_dict_actions(minetest_bundle, minetest_dataset):
    env = WorldEnv(bundle=minetest_bundle)
    ep = load_episodes(minetest_dataset)[0]
    W = env.sim.window
    acts = {k: v[: W - 1] for k, v in ep["actions"].items()}
    obs, info = env.reset(seed=0, options={"context_frames": ep["frames"][:W], "context_actions": acts})
    assert info["start"] == "context" and np.array_equal(obs, ep["frames"][W - 1])
    as_list = [{k: v[i] for k, v in acts.items()} for i in range(W - 1)]
    obs_b, _ = env.reset(seed=0, options={"context_frames": ep["frames"][:W], "context_actions": as_list})
    a = env.step(act(forward=1))[0]
    env.reset(seed=0, options={"context_frames": ep["frames"][:W], "context_actions": acts})
    assert np.array_equal(env.step(act(forward=1))[0], a), "a list of action dicts and a dict of arrays differ"
    bad = dict(acts, camera=np.full((W - 1, 2), 500.0, np.float32))
    with pytest.raises(ValueError, match=r"context_actions'\]\[0\].*outside"):
        env.reset(options={"context_frames": ep["frames"][:W], "context_actions": bad})


def test_vector_env_is_batched_and_matches_single_envs(minetest_bundle):
    # threshold 2: no ends, which would autoreset rows (the tiny untrained model's head is near 0.5)
    venv = gym.make_vec("worldsim/Minetest-v0", num_envs=3, bundle=str(minetest_bundle), termination_threshold=2.0)
    assert venv.single_action_space == M.action_space()
    obs, _ = venv.reset(seed=5)
    actions = [act(forward=1, camera=[0.0, 4.0]), act(jump=1), act(attack=1, camera=[-3.0, 0.0])]
    batched = {k: np.stack([a[k] for a in actions]) for k in actions[0]}
    out = [venv.step(batched)[0] for _ in range(3)]
    assert out[-1].shape == (3, 96, 128, 3)
    single = WorldEnv(bundle=minetest_bundle, termination_threshold=2.0)
    single.reset(seed=6)  # sub-env i is seeded seed + i
    ref = [single.step(actions[1])[0] for _ in range(3)]
    np.testing.assert_allclose(out[-1][1].astype(float), ref[-1].astype(float), atol=2)
    with pytest.raises(ValueError, match="one per env"):
        venv.step({k: v[:2] for k, v in batched.items()})
    venv.close()



def test_play_minetest_mouse_look_keys_and_grab(minetest_bundle):
    import pygame

    from worldsim.cli import load_config
    from worldsim.play import Viewer

    v = Viewer(load_config("play", ["env=minetest", f"bundle={minetest_bundle}"]))
    v.env.unwrapped.threshold = 1.0  # the tiny untrained model's termination head must not end the episode
    assert v.mouse and v.grabbed and v.show_help
    post = pygame.event.post
    post(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_w, mod=0, unicode="w"))
    post(pygame.event.Event(pygame.MOUSEBUTTONDOWN, button=1, pos=(10, 10)))
    post(pygame.event.Event(pygame.MOUSEMOTION, rel=(40, -10), pos=(10, 10), buttons=(0, 0, 0)))
    v.tick()
    a = v.last_action
    assert a["forward"] == 1 and a["attack"] == 1 and a["jump"] == 0
    assert a["camera"][1] > 0 and a["camera"][0] < 0  # mouse right = yaw right, mouse up = pitch up
    np.testing.assert_allclose(a["camera"], [-10 * 0.15, 40 * 0.15], rtol=1e-6)
    post(pygame.event.Event(pygame.KEYUP, key=pygame.K_w, mod=0, unicode="w"))
    post(pygame.event.Event(pygame.MOUSEBUTTONUP, button=1, pos=(10, 10)))
    post(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_3, mod=0, unicode="3"))
    v.tick()
    assert v.last_action["forward"] == 0 and v.last_action["hotbar.3"] == 1 and not v.last_action["camera"].any()
    post(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_ESCAPE, mod=0, unicode=""))
    v.tick()
    assert v.running and not v.grabbed  # the first ESC only releases the mouse
    post(pygame.event.Event(pygame.MOUSEMOTION, rel=(40, 0), pos=(10, 10), buttons=(0, 0, 0)))
    v.tick()
    assert not v.last_action["camera"].any()  # a released mouse does not turn the camera
    pixels = v.win.pixels()
    assert pixels.shape == (96 * 5 + 64, 128 * 5, 3)
    post(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_ESCAPE, mod=0, unicode=""))
    v.tick()
    assert not v.running
    v.close()


def test_play_minetest_compare_drives_the_real_game(minetest_bundle, tmp_path):
    from worldsim.cli import load_config
    from worldsim.play import Viewer

    v = Viewer(load_config("play", ["env=minetest", f"bundle={minetest_bundle}", "compare=true", "agent=explorer",
                                    "steps=6", f"record={tmp_path / 'm.mp4'}"]))
    v.env.unwrapped.threshold = 1.0
    np.testing.assert_array_equal(v.obs, v.real_obs)  # the model starts from the real game's frame
    game = v.real.unwrapped.game
    res = v.run()
    assert res["steps"] == 6 and v.real.unwrapped._t == 6 and (tmp_path / "m.mp4").stat().st_size > 0
    assert all(p.poll() is not None for p in game.procs), "closing the viewer must stop the real game"


def test_eval_minetest_camera_following_revisit_and_stability(minetest_bundle, minetest_dataset, tmp_path):
    from worldsim.cli import run_job

    res = run_job("eval", ["env=minetest", f"bundle={minetest_bundle}", f"data={minetest_dataset}",
                           f"cache_dir={tmp_path / 'heldout'}", "windows=2",
                           "batch_size=2", "stride=4", "horizons=[1,2]", "probes=3", "probe_every=30", "max_steps=100", "turn_degrees=15",
                           "revisit_turns=8", "revisit_trials=1", "stability_steps=12", "stability_block=6",
                           "bank_frames=32", f"out={tmp_path / 'e.json'}"])
    assert res["env"] == "minetest" and res["windows"] == 2
    f = res["following"]
    assert set(f["per_action"]) == {"yaw_left", "yaw_right", "pitch_up", "pitch_down"} and f["probes"] == 3
    # the player stands still before each probe, and each real turn shows in its own tick (the env waits
    # for a stalled game), so the four real outcomes of 15-degree turns are clearly different frames
    assert f["counted"] >= 10, f"only {f['counted']} of 12 probe turns gave distinct real outcomes"
    r = res["revisit"]
    # the real game comes back to its first view after a full turn; a half turn shows another view
    assert r["real_return_psnr"] > r["real_half_turn_psnr"] + 3, r
    assert len(res["stability"]["blocks"]) == 2


def test_bench_minetest_beside_the_real_game_clock(minetest_bundle):
    from worldsim.cli import run_job

    res = run_job("bench", ["env=minetest", f"bundle={minetest_bundle}", "steps=4", "warmup=1", "batch_sizes=[1,2]",
                            "real_steps=20", "latency_trials=4"])
    assert res["env"] == "minetest" and 15 < res["real_minetest_steps_per_s"] < 25  # the real game's 20 Hz clock
    lat = res["real_minetest_latency"]
    assert lat["seen"] == 4 and 0 < lat["mean_ms"] < 200
    assert {r["batch"] for r in res["model"]} == {1, 2} and all(r["steps_per_s"] > 0 for r in res["model"])


def test_minetest_v0_uses_the_shipped_minetest_model():
    from worldsim import DEFAULT_MINETEST_BUNDLE

    if not (DEFAULT_MINETEST_BUNDLE / "bundle.json").exists():
        pytest.fail("no shipped Minetest model in worldsim/assets/minetest")
    env = gym.make("worldsim/Minetest-v0")
    obs, _ = env.reset(seed=0)
    assert env.action_space == M.action_space() and obs.shape == env.observation_space.shape
    env.close()


def test_shipped_minetest_model_shows_the_first_view_again_after_a_full_turn():
    """The revisit probe on the shipped model, learned env only: standing still, 24 turns of 15 degrees. Its
    view memory (on by default) brings the first view back; without it the last view is new ground."""
    from worldsim.data import stack_actions
    from worldsim.evaluate import psnr_np

    last = {}
    for mem in (None, 0):
        env = gym.make("worldsim/Minetest-v0", view_memory=mem)
        obs, _ = env.reset(seed=0)
        ctx = np.repeat(obs[None], 4, axis=0)
        first, _ = env.reset(seed=0, options={"context_frames": ctx,
                                              "context_actions": stack_actions([M.noop() for _ in range(3)])})
        assert (env.unwrapped.sim.memory is not None) == (mem is None)
        for _ in range(24):
            obs = env.step(act(camera=[0.0, 15.0]))[0]
        last[mem] = psnr_np(obs, first)
        env.close()
    assert last[None] > 30 and last[None] > last[0] + 8, last
