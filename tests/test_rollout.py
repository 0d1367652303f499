"""`worldsim rollout`: the learned env's episodes on disk in collect's format, resumable, the same whatever batch."""
import json

import numpy as np
import pytest

from worldsim.cli import run_job
from worldsim.data import load_episodes, load_manifest, read_episode


def test_rollout_writes_episodes_that_resume_the_same_in_any_batch(bundle, tmp_path):
    out = tmp_path / "r"
    args = [f"bundle={bundle}", f"out={out}", "episodes=3", "batch_size=2", "steps=5", "agent=random",
            "termination_threshold=2.0"]
    m = run_job("rollout", args)
    eps = load_episodes(out)
    assert len(eps) == 3 and all(len(ep["frames"]) == 6 and len(ep["actions"]) == 5 for ep in eps)
    assert m["env"]["frame_shape"] == list(eps[0]["frames"].shape[1:]) and m["source"]["bundle"] == str(bundle)
    assert m["source"]["settings"]["sampling_steps"] >= 1 and [e["steps"] for e in m["episodes"]] == [5, 5, 5]
    assert not any(e["terminated"] for e in m["episodes"])  # 2.0: never ends
    # the last episode by hand: episode i is seed + i (noise, start, agent), in a batch whose spare world repeats
    # it (the same batch, so the same floating-point sums: README: Batch and reproducibility)
    import gymnasium as gym

    from worldsim.agents import make_agent
    venv = gym.make_vec("worldsim/Crafter-v0", num_envs=2, bundle=str(bundle), horizon=5, termination_threshold=2.0)
    obs, _ = venv.reset(seed=[2, 2])
    agent = make_agent("random", venv.single_action_space, seed=2)
    frames = [obs[0]]
    for _ in range(5):
        a = agent.act(obs[0])
        obs, *_ = venv.step(np.array([a, a]))
        frames.append(obs[0])
    assert np.array_equal(np.stack(frames), eps[2]["frames"])

    # killed job: one file lost, one corrupt; a rerun makes them again, the same, and keeps the third
    first = {i: read_episode(out / e["file"]) for i, e in enumerate(m["episodes"])}
    (out / m["episodes"][0]["file"]).unlink()
    (out / m["episodes"][1]["file"]).write_bytes(b"not an npz")
    kept = (out / m["episodes"][2]["file"]).stat().st_mtime_ns
    with pytest.warns(UserWarning, match="skipping episode"):
        load_episodes(out)
    run_job("rollout", args)
    assert (out / m["episodes"][2]["file"]).stat().st_mtime_ns == kept
    for i, e in enumerate(load_manifest(out)["episodes"]):
        assert np.array_equal(read_episode(out / e["file"])["frames"], first[i]["frames"])


def test_rollout_replays_recorded_episodes_from_their_own_start(bundle, dataset, tmp_path):
    """context=DIR starts each world from the first W frames of a recorded episode; agent=replay then drives it
    with that episode's actions, so the rollout is the model's version of the recorded one."""
    from worldsim.checkpoint import Bundle

    W = Bundle(bundle).dit.config.context_frames
    rec = [ep for ep in load_episodes(dataset) if len(ep["frames"]) > W]
    out = tmp_path / "replay"
    run_job("rollout", [f"bundle={bundle}", f"out={out}", "episodes=2", "batch_size=2", "steps=50", "agent=replay",
                        f"context={dataset}", "termination_threshold=2.0"])
    for ep, r in zip(load_episodes(out), rec):
        n = min(50, len(r["frames"]) - W)
        assert np.array_equal(ep["frames"][0], r["frames"][W - 1]) and len(ep["actions"]) == n
        assert np.array_equal(ep["actions"], r["actions"][W - 1:W - 1 + n])
    meta = json.loads((out / "manifest.json").read_text())
    assert meta["source"]["agent"] == "replay" and meta["source"]["context"] == str(dataset)

    with pytest.raises(ValueError, match="agent=replay .* give context=DIR"):
        run_job("rollout", [f"bundle={bundle}", f"out={tmp_path / 'x'}", "agent=replay"])
    with pytest.raises(ValueError, match="no readable episode"):
        run_job("rollout", [f"bundle={bundle}", f"out={tmp_path / 'x'}", f"context={tmp_path / 'nothing'}"])
    with pytest.raises(ValueError, match="unknown agent"):
        run_job("rollout", [f"bundle={bundle}", f"out={tmp_path / 'x'}", "agent=nobody"])


def test_vector_env_takes_one_context_per_world(bundle, dataset):
    import gymnasium as gym

    eps = load_episodes(dataset)[:2]
    venv = gym.make_vec("worldsim/Crafter-v0", num_envs=2, bundle=str(bundle))
    obs, _ = venv.reset(seed=0, options=[{"context_frames": ep["frames"][:2], "context_actions": ep["actions"][:1]}
                                         for ep in eps])
    assert np.array_equal(obs[0], eps[0]["frames"][1]) and np.array_equal(obs[1], eps[1]["frames"][1])
    with pytest.raises(ValueError, match="got 1 reset options for 2 envs"):
        venv.reset(options=[{"start_index": 0}])
