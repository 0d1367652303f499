"""Your own environment: any Gymnasium env as a source of episodes (`worldsim collect env=gym:<id>`), trained
and run as `worldsim/World-v0`, on real Gymnasium classic-control games: CartPole (Discrete actions, ends) and
Pendulum (a Box action, dense rewards down to -16 a step)."""
import json
import shutil

import gymnasium as gym
import numpy as np
import pytest
from conftest import TINY_TRAIN
from gymnasium.utils.env_checker import check_env

import worldsim  # noqa: F401  (registers the envs)
from worldsim.cli import run_job
from worldsim.data import load_episodes, load_manifest, read_episode
from worldsim.envs.gym_source import GymImageEnv


def test_frames_seeding_and_clone():
    env = GymImageEnv("gym:CartPole-v1")
    obs, _ = env.reset(seed=3)
    # 600 x 400 rendered -> 64 high, the aspect kept
    assert obs.shape == (64, 96, 3) and obs.dtype == np.uint8 and env.native_shape == [400, 600]
    assert env.observation_space.shape == (64, 96, 3)
    ref = GymImageEnv("gym:CartPole-v1")
    assert np.array_equal(ref.reset(seed=3)[0], obs)  # seeded
    for _ in range(4):
        assert np.array_equal(env.step(1)[0], ref.step(1)[0])
    twin = env.clone()
    for _ in range(4):
        twin.step(0)  # the copy runs its own game...
    for _ in range(3):  # ...and the original goes on as if it had not been copied
        assert np.array_equal(env.step(1)[0], ref.step(1)[0])
    assert not np.array_equal(twin.render(), env.render())
    assert GymImageEnv("gym:CartPole-v1", size=[32, 48]).reset(seed=0)[0].shape == (32, 48, 3)
    for e in (env, ref, twin):
        e.close()


def test_bad_sources_get_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="NoSuchGame-v0"):
        GymImageEnv("gym:NoSuchGame-v0")
    with pytest.raises(ValueError, match="gym:<env id>"):
        GymImageEnv("gym:")
    with pytest.raises(ValueError, match="unknown env 'atari'.*gym:<env id>"):
        run_job("collect", ["env=atari", f"out={tmp_path / 'a'}", "episodes=1"])
    # the Crafter / Minetest explorer does not fit another game; a random agent or your own does
    with pytest.raises(ValueError, match="agent=explorer"):
        run_job("collect", ["env=gym:CartPole-v1", f"out={tmp_path / 'c'}", "episodes=1", "agent=explorer"])
    with pytest.raises(ValueError, match="cannot import 'Nope'"):
        from worldsim.agents import make_agent
        make_agent("worldsim.agents:Nope", gym.spaces.Discrete(2))
    with pytest.raises(ValueError, match="bundle="):
        gym.make("worldsim/World-v0")


def test_collect_discrete_with_your_own_agent_class(tmp_path):
    out = tmp_path / "cartpole"
    m = run_job("collect", ["env=gym:CartPole-v1", f"out={out}", "episodes=3", "workers=1", "max_steps=50",
                            "agent=worldsim.agents.random_agent:RandomAgent"])
    assert m["env"]["name"] == "gym:CartPole-v1" and m["env"]["frame_shape"] == [64, 96, 3]
    assert m["env"]["native_frame_shape"] == [400, 600, 3]
    assert m["env"]["action_space"] == {"type": "discrete", "n": 2}
    for e in m["episodes"]:
        ep = read_episode(out / e["file"])
        assert ep["frames"].shape[1:] == (64, 96, 3) and ep["actions"].dtype == np.int64
        assert sum(e["action_counts"]) == e["steps"] == len(ep["actions"])
        assert e["agent"] == "worldsim.agents.random_agent:RandomAgent"
        # a random CartPole episode ends when the pole falls, long before 50 steps
        assert e["terminated"] and ep["terminated"][-1] and not ep["terminated"][:-1].any()
    again = run_job("collect", ["env=gym:CartPole-v1", f"out={out}", "episodes=3", "workers=1", "max_steps=50"])
    assert [e["steps"] for e in again["episodes"]] == [e["steps"] for e in m["episodes"]]  # resumed, kept
    # gymnasium.make's keyword arguments reach the workers and stay in the manifest (Sutton and Barto's
    # reward: 0 each step, -1 when the pole falls)
    kw = "env_kwargs={sutton_barto_reward: true}"
    sb = run_job("collect", ["env=gym:CartPole-v1", f"out={tmp_path / 'sb'}", "episodes=2", "workers=1", kw])
    assert sb["env"]["make_kwargs"] == {"sutton_barto_reward": True}
    for e in sb["episodes"]:
        r = read_episode(tmp_path / "sb" / e["file"])["rewards"]
        assert r[-1] == -1 and not r[:-1].any()
    with pytest.raises(ValueError, match="env_kwargs"):  # the same folder with other settings: refused
        run_job("collect", ["env=gym:CartPole-v1", f"out={tmp_path / 'sb'}", "episodes=3", "workers=1"])


@pytest.fixture(scope="module")
def pendulum(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "pendulum"
    run_job("collect", ["env=gym:Pendulum-v1", f"out={out}", "episodes=4", "workers=2", "max_steps=30",
                        "test_every=2"])
    run = tmp_path_factory.mktemp("run")
    run_job("train", [f"data={out}", f"run={run}", *TINY_TRAIN])
    return out, run / "bundle"


def test_box_actions_collected_as_floats(pendulum):
    out, _ = pendulum
    m = load_manifest(out)
    assert m["env"]["action_space"] == {"type": "box", "dim": 1, "scale": 2.0}
    for e in m["episodes"]:
        ep = read_episode(out / e["file"])
        a = ep["actions"]
        assert a.shape == (30, 1) and a.dtype == np.float32 and np.all(np.abs(a) <= 2)
        assert not np.allclose(a, np.round(a))  # torques kept as drawn, not rounded to integers
        assert sum(e["action_counts"]["box"][0]) == e["steps"] == 30
        assert ep["rewards"].min() < -1  # Pendulum's cost: why rewards are scaled for the head


def test_world_env_on_your_own_game(pendulum, tmp_path):
    out, bundle = pendulum
    meta = json.loads((bundle / "bundle.json").read_text())
    train = load_episodes(out, split="train")
    scale = max(float(np.abs(e["rewards"]).max()) for e in train)
    assert meta["env"]["reward_scale"] == pytest.approx(scale) and scale > 1
    env = gym.make("worldsim/World-v0", bundle=str(bundle))
    real = GymImageEnv("gym:Pendulum-v1")
    assert env.action_space == real.action_space  # Box(-2, 2, (1,)): an agent switches with one line
    assert env.observation_space == gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)
    check_env(env.unwrapped, skip_render_check=True)
    with pytest.raises(ValueError, match="outside"):
        env.reset(seed=0)
        env.step(np.array([3.0], np.float32))
    # the env gives the reward head's value times the bundle's scale: the same bundle without the scale
    # gives the same steps 1/scale as much
    unscaled = tmp_path / "unscaled"
    shutil.copytree(bundle, unscaled)
    meta["env"].pop("reward_scale")
    (unscaled / "bundle.json").write_text(json.dumps(meta))
    rewards = []
    for b in (bundle, unscaled):
        e = gym.make("worldsim/World-v0", bundle=str(b))
        e.reset(seed=5)
        rewards.append([e.step(np.array([t / 4], np.float32))[1] for t in range(-3, 3)])
    assert np.allclose(rewards[0], np.array(rewards[1]) * scale, rtol=1e-4)
    venv = gym.make_vec("worldsim/World-v0", num_envs=3, bundle=str(bundle))
    obs, _ = venv.reset(seed=0)
    obs, r, term, trunc, _ = venv.step(np.array([[-2.0], [0.0], [2.0]], np.float32))
    assert obs.shape == (3, 64, 64, 3) and r.shape == (3,)


def test_eval_on_your_own_game(pendulum, tmp_path):
    out, bundle = pendulum
    res = run_job("eval", ["env=gym:Pendulum-v1", f"bundle={bundle}", f"data={out}", "windows=4", "horizons=[1,2]",
                           "batch_size=2", "probes=3", "probe_every=4", "stability_steps=20", "stability_block=10",
                           "bank_frames=20", f"cache_dir={tmp_path}", f"out={tmp_path / 'eval.json'}"])
    assert res["env"] == "gym:Pendulum-v1" and set(res["rollout_psnr"]) == {"1", "2"}
    # the probes' torques (low, middle, high) draw different arrows on the real frames: they are counted
    fol = res["following"]
    assert fol["counted"] > 0 and set(fol["per_action"]) == {"low", "middle", "high"}
    rv = res["reward_values"]  # dense rewards scored as values, beside always giving their mean
    assert rv["mse"] is not None and rv["mean_baseline_mse"] > 0
    assert [b["steps"] for b in res["stability"]["blocks"]] == [[1, 10], [11, 20]]
    with pytest.raises(ValueError, match="bundle=runs"):
        run_job("eval", ["env=gym:Pendulum-v1", f"data={out}"])
    with pytest.raises(ValueError, match="trained on 'gym:Pendulum-v1', not 'gym:CartPole-v1'"):
        run_job("eval", ["env=gym:CartPole-v1", f"bundle={bundle}", f"data={out}"])


def test_play_your_own_game(pendulum, tmp_path):
    _, bundle = pendulum
    video = tmp_path / "play.mp4"
    res = run_job("play", ["env=gym:Pendulum-v1", f"bundle={bundle}", "agent=random", "compare=true", "steps=6",
                           f"record={video}"])
    assert res["steps"] == 6 and video.stat().st_size > 0
    # the keyboard drives Discrete spaces (keys 1-9, 0); a torque needs an agent, and says so
    with pytest.raises(ValueError, match="agent=random"):
        run_job("play", ["env=gym:Pendulum-v1", f"bundle={bundle}", "steps=2"])
    with pytest.raises(ValueError, match="bundle="):
        run_job("play", ["env=gym:Pendulum-v1"])


def test_number_keys_pick_discrete_actions():
    import pygame

    from worldsim.agents.keyboard import KeyboardAgent
    from worldsim.play import number_help, number_keys

    agent = KeyboardAgent(number_keys(gym.spaces.Discrete(3), "gym:Acrobot-v1"))
    agent.handle(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_3))
    assert agent.act() == 2
    agent.handle(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_9))  # no action 8 in a space of 3: ignored
    assert agent.act() == 2
    agent.handle(pygame.event.Event(pygame.KEYUP, key=pygame.K_3))
    assert agent.act() == 0
    assert number_keys(gym.spaces.Discrete(10), "x")[pygame.K_0] == 9
    assert "2: push_right" in number_help(2, ["push_left", "push_right"])[0]
    with pytest.raises(ValueError, match="up to 10 actions"):
        number_keys(gym.spaces.Discrete(11), "gym:x")


def test_rollout_your_own_game(pendulum, tmp_path):
    data, bundle = pendulum
    m = run_job("rollout", ["env=gym:Pendulum-v1", f"bundle={bundle}", "episodes=3", "steps=5", "batch_size=2",
                            f"out={tmp_path / 'r'}", "termination_threshold=2.0"])
    assert m["source"]["agent"] == "random" and m["env"]["name"] == "gym:Pendulum-v1"
    for e in m["episodes"]:
        ep = read_episode(tmp_path / "r" / e["file"])
        assert ep["actions"].shape == (5, 1) and ep["actions"].dtype == np.float32
        assert ep["frames"].shape == (6, 64, 64, 3)
    # the model's version of recorded episodes: their first frames, then their recorded torques
    m = run_job("rollout", ["env=gym:Pendulum-v1", f"bundle={bundle}", "episodes=2", "steps=5", "batch_size=2",
                            "agent=replay", f"context={data}", f"out={tmp_path / 'replay'}", "termination_threshold=2.0"])
    recorded = load_episodes(data)
    W = json.loads((bundle / "bundle.json").read_text())["world_model"]["context_frames"]
    for i, e in enumerate(m["episodes"]):
        ep = read_episode(tmp_path / "replay" / e["file"])
        assert np.array_equal(ep["actions"], recorded[i]["actions"][W - 1:W + 4])
    with pytest.raises(ValueError, match="agent=explorer"):
        run_job("rollout", ["env=gym:Pendulum-v1", f"bundle={bundle}", "agent=explorer", f"out={tmp_path / 'x'}"])


def test_bench_your_own_game(pendulum):
    _, bundle = pendulum
    res = run_job("bench", ["env=gym:Pendulum-v1", f"bundle={bundle}", "batch_sizes=[1,2]", "steps=3", "warmup=1",
                            "real_steps=20", "devices=[cpu]"])
    assert res["real_gym:Pendulum-v1_steps_per_s"] > 0  # the real env, rendered at the model's frame size
    assert [r["batch"] for r in res["model"]] == [1, 2] and all(r["env_steps_per_s"] > 0 for r in res["model"])


def test_every_action_space_is_stored_and_counted(capsys):
    from worldsim.collect import episode_actions, print_histograms
    from worldsim.model import space_to_spec, spec_to_space

    spaces = {"multi_discrete": gym.spaces.MultiDiscrete([3, 2]), "multi_binary": gym.spaces.MultiBinary(4),
              "box": gym.spaces.Box(np.array([-1, 0], np.float32), np.array([1, 5], np.float32)),
              "dict": gym.spaces.Dict({"jump": gym.spaces.Discrete(2), "steer": gym.spaces.Box(-1, 1, (1,))})}
    for name, space in spaces.items():
        space.seed(0)
        acts, counts = episode_actions([space.sample() for _ in range(7)], space)
        if name == "dict":
            assert acts["steer"].dtype == np.float32 and acts["jump"].dtype == np.int64 and counts["jump"] <= 7
        elif name == "box":
            assert acts.dtype == np.float32 and acts.shape == (7, 2)
            assert [sum(h) for h in counts["box"]] == [7, 7] and counts["edges"][0] == -1 and counts["edges"][-1] == 5
        else:
            assert acts.dtype == np.int64 and acts.shape == (7, 2 if name == "multi_discrete" else 4)
        print_histograms({"episodes": [{"steps": 7, "terminated": False, "action_counts": counts}]})
        # the learned env's space is the source's, bounds included (an asymmetric Box keeps its own)
        assert spec_to_space(space_to_spec(space)) == space
    out = capsys.readouterr().out
    assert "action[1]" in out and "bit 3" in out and "jump" in out


class _PixelEnv(gym.Env):
    """An env whose observations are already RGB images (as Atari's are), and that cannot render."""

    observation_space = gym.spaces.Box(0, 255, (30, 40, 3), np.uint8)
    action_space = gym.spaces.Discrete(3)

    def __init__(self, render_mode=None):
        self.render_mode = render_mode

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += int(action) + 1
        return self._obs(), 0.0, False, False, {}

    def _obs(self):
        img = np.zeros((30, 40, 3), np.uint8)
        img[:, (self.t * 4) % 40:(self.t * 4) % 40 + 4] = 255  # a bar that moves by the action
        return img

    def render(self):
        raise AssertionError("frames of an image-observation env come from its observations")


def test_image_observations_are_the_frames():
    gym.register(id="worldsim_test/Pixels-v0", entry_point=_PixelEnv)
    env = GymImageEnv("gym:worldsim_test/Pixels-v0", size=[30, 40])
    obs, _ = env.reset(seed=0)
    assert env.from_obs and (obs[:, :4] == 255).all() and (obs[:, 4:] == 0).all()
    assert np.array_equal(env.step(2)[0][:, 12:16], np.full((30, 4, 3), 255, np.uint8))  # moved by 3 steps
    # 64 high; 64 * 4 / 3 = 85.3 wide, to the nearest multiple of 8 (the patch autoencoder's) = 88
    assert GymImageEnv("gym:worldsim_test/Pixels-v0").reset(seed=0)[0].shape == (64, 88, 3)
