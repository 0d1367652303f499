"""A planning agent that looks ahead in worldsim's learned world before each action (model-predictive control).

Each step it starts the learned world from the frames it has seen and the actions it took (``reset`` with
``context_frames``), saves that world (``get_state``), and puts it into every world of one vector env
(``set_state``): each world takes one candidate first action, then random actions for the rest of the
``horizon``, all in one batched step per lookahead step. Each first action is scored by the rewards the model
predicts along its futures, each weighted by the chance the world is still alive (1 - the termination head's
probability, multiplied along), less ``death_cost`` times the chance it ended; the best first action is taken
(ties broken at random, so with no reward in sight it acts as the random agent does). The branches share the
saved world's sampling noise, so two first actions are compared on the same draws.

Any env whose frames match the bundle's can be driven: the real game (``worldsim/RealCrafter-v0``) with the
shipped Crafter model, or your own game with your bundle (``bundle=``). ``worldsim collect
agent=worldsim.agents.lookahead:LookaheadAgent`` collects with it.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from worldsim.data import fit_frames


class LookaheadAgent:
    def __init__(self, action_space, seed: int | None = None, bundle: str | None = None, futures: int = 1,
                 horizon: int = 1, discount: float = 0.9, death_cost: float = 1.0, **env_kwargs):
        from worldsim.envs.world_env import WorldEnv, WorldVectorEnv  # the learned world, through the env API

        if not hasattr(action_space, "n"):
            raise ValueError(f"LookaheadAgent tries every action of a Discrete space; got {action_space}")
        if futures < 1 or horizon < 1:
            raise ValueError(f"futures and horizon must be >= 1, got {futures} and {horizon}")
        self.n, self.futures, self.horizon = int(action_space.n), int(futures), int(horizon)
        self.discount, self.death_cost = float(discount), float(death_cost)
        self.rng = np.random.default_rng(seed)
        kw = dict(bundle=bundle, termination_threshold=2.0, **env_kwargs)  # ends read as probabilities, never drawn
        self.model = WorldEnv(**kw)
        if self.model.action_space.n != self.n:
            raise ValueError(f"the bundle's world has {self.model.action_space.n} actions, this env {self.n}")
        self.branches = WorldVectorEnv(self.n * self.futures, **kw)
        self.first = np.tile(np.arange(self.n), self.futures)  # each world's first action
        self.reset()

    def reset(self):
        self.frames: list[np.ndarray] = []
        self.actions: list[int] = []  # one per frame seen after the first: its count is the game's step
        self.events = None  # the real episode's event counts, where the game tells them (observe_info)

    def observe_info(self, info: dict):
        """The real game's info after a step: with a bundle that has event heads, its ``achievements`` counts
        go into each branched world, which then pays only events the real episode has not had (without them
        every event would look new, and drinking again would score as the first drink)."""
        names = self.model.event_names
        if names and "achievements" in info:
            self.events = np.array([int(info["achievements"].get(n, 0)) for n in names], np.int64)

    def observe(self, obs):
        """Add the newest frame to the context (the last `context_frames` frames seen)."""
        shape = self.model.observation_space.shape
        frame = np.asarray(obs, np.uint8)
        if frame.shape != shape:  # the source env renders at another size than the model's
            frame = fit_frames(frame[None], shape[:2])[0]
        self.frames = (self.frames + [frame])[-self.model.context_frames:]

    def scores(self) -> np.ndarray:
        """(n,) each first action's score from the context observed."""
        acts = self.actions[len(self.actions) - len(self.frames) + 1:] if len(self.frames) > 1 else []
        self.model.reset(seed=int(self.rng.integers(2 ** 31)),
                         options={"context_frames": np.stack(self.frames), "context_actions": np.array(acts, np.int64),
                                  "clock": len(self.actions)})
        state = self.model.get_state()
        if self.events is not None:
            state = dataclasses.replace(state, events=self.events)
        self.branches.set_state(state)
        counts = None if state.events is None else np.tile(state.events, (len(self.first), 1))
        value = np.zeros(len(self.first))
        alive = np.ones(len(self.first))
        a = self.first
        for t in range(self.horizon):
            _, reward, _, _, info = self.branches.step(a)
            reward = self._expected(reward, info, counts)
            if counts is not None:
                counts = info["achievements"]
            end = np.asarray(info["terminated_prob"], np.float64)
            value += self.discount ** t * alive * (reward - self.death_cost * end)
            alive *= 1 - end
            a = self.rng.integers(self.n, size=len(self.first))
        return value.reshape(self.futures, self.n).mean(0)

    def _expected(self, reward, info, counts):
        """The step's reward with what the env drew replaced by its expectation: for event bundles (`counts`) the
        chance that an event the episode has not had happens (one draw per branch is a coin toss that hides
        which action makes an event likelier, and with the termination head's tiny differences deciding the
        rest, the planner stood still); for bundles with reward classes their expected value."""
        from worldsim.envs.world_env import event_pay_chance

        paid, chance = 0.0, 0.0
        if counts is not None:
            paid = (info["events"] & (counts == 0)).any(1)
            chance = event_pay_chance(info["event_prob"], counts > 0)
        rest = info.get("reward_expected", reward - self.model.event_reward * paid)
        return rest + self.model.event_reward * chance

    def choose(self, scores: np.ndarray) -> int:
        """The best-scoring action, ties broken at random."""
        return int(self.rng.choice(np.flatnonzero(scores >= scores.max() - 1e-9)))

    def act(self, obs):
        self.observe(obs)
        a = self.choose(self.scores())
        self.actions.append(a)
        return a
