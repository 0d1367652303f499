"""Saved states of the learned world (get_state / set_state): the same future after going back, branching one
state into a vector env's worlds, moving a saved window to another time, the map and view memories kept,
and clear errors."""
import copy

import gymnasium as gym
import numpy as np
import pytest
import torch

import worldsim  # noqa: F401
from worldsim.envs.world_env import WorldEnv, WorldState, WorldVectorEnv
from worldsim.simulator import WorldSimulator, load_bundle

from conftest import randomize

ACTS = [1, 4, 5, 2, 0, 3, 3, 1]


def play(env, actions):
    """Observations, rewards, ends and end probabilities of a run of single-env steps."""
    out = [env.step(a) for a in actions]
    return (np.stack([o[0] for o in out]), [o[1] for o in out], [o[2] for o in out],
            [o[4]["terminated_prob"] for o in out])


def test_set_state_gives_back_the_same_future(bundle):
    env = WorldEnv(bundle=bundle)  # ends drawn with the head's probability: the end generator is in the state too
    env.reset(seed=4)
    for a in [3, 3, 1]:
        env.step(a)
    state = env.get_state()
    assert isinstance(state, WorldState) and state.steps == 3 and state.nbytes > 0
    first = play(env, ACTS)
    other = play(env, ACTS)  # the world went on: the same actions now give other frames
    assert not np.array_equal(first[0], other[0])
    for _ in range(2):  # a state can be gone back to any number of times
        np.testing.assert_array_equal(env.set_state(state), state.obs)
        again = play(env, ACTS)
        np.testing.assert_array_equal(again[0], first[0])
        assert again[1:] == first[1:]
    assert env.get_state().steps == 3 + len(ACTS)
    env.set_state(state, seed=123)  # new noise: the same actions give another future
    assert not np.array_equal(play(env, ACTS)[0], first[0])


def test_a_state_continues_in_another_env(bundle):
    a, b = WorldEnv(bundle=bundle, termination_threshold=2.0), WorldEnv(bundle=bundle, termination_threshold=2.0)
    a.reset(seed=1)
    a.step(2)
    state = a.get_state()
    b.set_state(state)  # no reset needed: the state is the whole world
    np.testing.assert_array_equal(play(a, ACTS)[0], play(b, ACTS)[0])


def test_vector_env_branches_one_state(bundle):
    single = WorldEnv(bundle=bundle, termination_threshold=2.0, quantize="none")
    single.reset(seed=9)
    for a in [4, 4]:
        single.step(a)
    state = single.get_state()
    ref = play(single, ACTS)[0]
    N = 3
    venv = gym.make_vec("worldsim/Crafter-v0", num_envs=N, bundle=str(bundle), termination_threshold=2.0,
                        quantize="none")
    venv.reset(seed=0)
    venv.step(np.array([1, 2, 3]))
    np.testing.assert_array_equal(venv.set_state(state), np.stack([state.obs] * N))
    same = np.stack([venv.step(np.full(N, a))[0] for a in ACTS], 1)
    for i in range(N):  # every world continues as the saved one did (the same noise in each)
        np.testing.assert_array_equal(same[i], same[0])
    diff = np.abs(same[0].astype(int) - ref.astype(int))  # batch 3 against batch 1: fp32 sums may round otherwise
    assert diff.mean() < 0.5 and diff.max() <= 8, (diff.mean(), diff.max())
    venv.set_state(state)
    branches = venv.step(np.array([1, 2, 3]))[0]  # one batched step tries three actions from the same world
    assert all(not np.array_equal(branches[i], branches[j]) for i, j in [(0, 1), (0, 2), (1, 2)])
    np.testing.assert_array_equal(branches[0], same[0, 0])  # action 1 in world 0 = the first of ACTS above
    venv.set_state(state, seed=5)  # different noise per world: futures of the same action differ
    drawn = venv.step(np.full(N, ACTS[0]))[0]
    assert not np.array_equal(drawn[0], drawn[1])
    s1 = venv.get_state(1)
    assert s1.steps == state.steps + 1
    venv.close()


def test_a_state_loaded_at_another_time_attends_as_before(bundle):
    """The batch shares one clock, so a state put into one world of a vector env that has run on is moved to the
    batch's time: its ring slots to the frames' new times, its keys turned by the rotary shift."""
    single = WorldEnv(bundle=bundle, termination_threshold=2.0, quantize="none")
    single.reset(seed=2)
    single.step(3)
    state = single.get_state()
    latents = []
    for a in ACTS:
        single.step(a)
        latents.append(single.sim.prev[0].clone())
    venv = WorldVectorEnv(2, bundle=bundle, termination_threshold=2.0, quantize="none")
    venv.reset(seed=0)
    for _ in range(5):  # the batch's clock is now 4 frames past the state's: not a multiple of the window
        venv.step(np.array([1, 2]))
    assert (venv.sim.time - state.sim["time"]) % venv.sim.window
    venv.set_state(state, indices=[1])
    for a, want in zip(ACTS, latents):
        venv.step(np.array([0, a]))
        torch.testing.assert_close(venv.sim.prev[1], want, atol=1e-4, rtol=0)


def test_cache_window_moved_in_time_equals_one_written_then(bundle):
    """KVCache.load_row on its own: the same frames prefilled at two different times give different keys and
    ring slots; the earlier window moved by the time between equals the later one."""
    b = copy.deepcopy(load_bundle(str(bundle)))
    randomize(b.dit)  # adaLN-Zero starts blocks as the identity; random weights make keys depend on everything
    sim = WorldSimulator(b, 2, quantize="none")
    T, (C, h, w) = sim.window, sim.latent_shape
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (1, T, *sim.frame_shape), dtype=np.uint8)
    acts = rng.integers(0, 17, (1, T - 1))
    noise = rng.standard_normal((1, T, C, h, w))
    sim.reset([0, 1], np.concatenate([frames, frames]), np.concatenate([acts, acts]), np.concatenate([noise, noise]))
    for _ in range(3):  # move the clock on, then start row 0 again from the same frames at the new time
        sim.step(np.zeros(2, int), rng.standard_normal((2, C, h, w)), rng.standard_normal((2, C, h, w)))
    sim.reset([0], frames, acts, noise)
    late = sim.cache.row(0)
    sim.reset([1], frames, acts, noise)
    k, v, valid = sim.cache.row(1)
    t_late = sim.time
    sim.time -= 3  # row 1's window as written 3 frames earlier (same frames, same noise)
    sim.reset([1], frames, acts, noise)
    early = sim.row_state(1)
    sim.time = t_late
    assert not torch.allclose(early["cache"][0], late[0], atol=1e-3)  # keys carry their absolute time
    sim.load_rows([1], [early])
    k1, v1, valid1 = sim.cache.row(1)
    torch.testing.assert_close(k1, late[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(v1, late[1], atol=1e-5, rtol=0)
    assert torch.equal(valid1, late[2])


def test_shipped_crafter_state_keeps_its_map_memory():
    """With the map memory the ground a world has seen is part of its state: walking elsewhere between saving
    and going back must not change what the same moves show after."""
    env = gym.make("worldsim/Crafter-v0")
    env.reset(seed=1)
    for a in [1] * 6 + [3] * 3:
        env.step(a)
    state = env.unwrapped.get_state()
    back = [2] * 6 + [4] * 3  # back over the ground the first moves showed
    first = play(env, back)[0]
    for a in [3] * 8:
        env.step(a)
    env.unwrapped.set_state(state)
    np.testing.assert_array_equal(play(env, back)[0], first)
    env.close()


def test_shipped_minetest_state_keeps_its_view_memory():
    env = gym.make("worldsim/Minetest-v0")
    env.reset(seed=1)
    keys = {k: 0 for k in env.action_space.spaces if k != "camera"}

    def act(yaw, **pressed):
        return {**keys, **pressed, "camera": np.array([0.0, yaw], np.float32)}
    for _ in range(8):  # turning in place fills the view memory
        env.step(act(15.0))
    state = env.unwrapped.get_state()
    first = play(env, [act(-15.0)] * 6)[0]  # turning back shows the held views
    for _ in range(4):  # walking clears the memory
        env.step(act(0.0, forward=1))
    env.unwrapped.set_state(state)
    np.testing.assert_array_equal(play(env, [act(-15.0)] * 6)[0], first)
    env.close()


def test_bad_states_get_clear_errors(bundle):
    env = WorldEnv(bundle=bundle)
    with pytest.raises(RuntimeError, match="reset"):
        env.get_state()
    with pytest.raises(TypeError, match="WorldState"):
        env.set_state({"obs": 1})
    env.reset(seed=0)
    state = env.get_state()
    with pytest.raises(ValueError, match="another bundle or with other inference settings"):
        WorldEnv(bundle=bundle, tile_hold=0.7).set_state(state)
    with pytest.raises(ValueError, match="another bundle or with other inference settings"):
        WorldEnv().set_state(state)  # the shipped Crafter model
    venv = WorldVectorEnv(2, bundle=bundle)
    with pytest.raises(RuntimeError, match="reset"):
        venv.get_state(0)
    with pytest.raises(RuntimeError, match="every world"):
        venv.set_state(state, indices=[1])
    venv.set_state(state)  # every world: no reset needed
    with pytest.raises(ValueError, match="3 states for 2 worlds"):
        venv.set_state([state] * 3)
    with pytest.raises(IndexError, match="distinct and in 0..1"):
        venv.set_state(state, indices=[2])
    with pytest.raises(IndexError, match="out of range"):
        venv.get_state(5)
    with pytest.raises(ValueError, match="1 seeds for 2 worlds"):
        venv.set_state(state, seed=[1])


def test_state_saved_to_disk_continues_the_same(bundle, tmp_path):
    env = WorldEnv(bundle=bundle)
    env.reset(seed=6)
    env.step(1)
    state = env.get_state()
    first = play(env, ACTS)
    state.save(tmp_path / "s.safetensors")
    loaded = WorldState.load(tmp_path / "s.safetensors")
    other = WorldEnv(bundle=bundle)
    other.set_state(loaded)
    again = play(other, ACTS)
    np.testing.assert_array_equal(again[0], first[0])
    assert again[1:] == first[1:]
    other.reset()  # an unseeded reset after the load spawns the end draws as the saved generator would
    env.set_state(state)
    env.reset()
    assert other._end_rng.random() == env._end_rng.random()
    (tmp_path / "bad.safetensors").write_bytes(b"not a state")
    with pytest.raises(ValueError, match="not a saved worldsim state"):
        WorldState.load(tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="not a saved worldsim state"):
        WorldState.load(bundle / "world_model.safetensors")


def test_lookahead_agent_scores_each_action_by_its_branch(bundle):
    """The planning agent's scores (one batched step of every action from the saved world) equal stepping one
    env from the same state with each action in turn: reward less the chance of the end."""
    from worldsim.agents.lookahead import LookaheadAgent

    with pytest.raises(ValueError, match="every action of a Discrete space"):
        LookaheadAgent(gym.spaces.Box(-1, 1, (2,)), bundle=str(bundle))
    real = gym.make("worldsim/RealCrafter-v0")
    agent = LookaheadAgent(real.action_space, seed=0, bundle=str(bundle), quantize="none", death_cost=3.0)
    obs, _ = real.reset(seed=0)
    agent.reset()
    for _ in range(agent.model.context_frames):  # the context fills up to the model's window, then slides
        obs = real.step(agent.act(obs))[0]
    assert len(agent.frames) == agent.model.context_frames and len(agent.actions) == agent.model.context_frames
    agent.observe(obs)
    scores = agent.scores()
    state = agent.model.get_state()  # the world the branches started from
    single = WorldEnv(bundle=bundle, termination_threshold=2.0, quantize="none")
    want = []
    for a in range(agent.n):
        single.set_state(state)
        _, r, _, _, info = single.step(a)
        want.append(r - 3.0 * info["terminated_prob"])
    np.testing.assert_allclose(scores, want, atol=1e-4)
    assert agent.choose(scores) in np.flatnonzero(scores >= scores.max() - 1e-9)
    assert len({agent.choose(np.zeros(agent.n)) for _ in range(50)}) > 1  # ties: broken at random
    real.close()
