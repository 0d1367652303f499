"""A scripted Crafter explorer that covers what the world does, from pixels alone.

A uniformly random policy jitters in place and rarely sees much. This one holds a move for several steps
(action persistence), so the view scrolls; when a move barely changes the picture it is blocked, and it
hits what is in front ("do": trees, stone, water, cows, zombies) before turning away; it places stone,
tables, furnaces and saplings, tries every craft, and sleeps for long stretches now and then (night,
waking up). Deaths come from zombies, skeletons, lava, starvation and thirst along the way.

``detour`` (share of held-move steps): take one other move or a noop instead, then resume the held move.
Without it, a move is nearly always the move of the step before, which the context frames already show
scrolling, so a world model could predict the scroll without reading the action (the Minetest explorer's
camera flicks answer the same problem). `worldsim collect` sets it; eval's held-out episodes keep 0, so
they stay the same as before.
"""
from __future__ import annotations

import numpy as np

NOOP, LEFT, RIGHT, UP, DOWN, DO, SLEEP = range(7)
MOVES = (LEFT, RIGHT, UP, DOWN)
PLACE = (7, 8, 9, 10)
CRAFT = tuple(range(11, 17))


class CrafterExplorer:
    def __init__(self, action_space, seed: int | None = None, blocked_threshold: float = 1.5, detour: float = 0.0):
        if not 0.0 <= detour < 1.0:
            raise ValueError(f"detour must be a share in [0, 1), got {detour}")
        self.rng = np.random.default_rng(seed)
        self.blocked_threshold = blocked_threshold
        self.detour = detour
        self.reset()

    def reset(self):
        self.plan: list[int] = []
        self.prev_obs = None
        self.last = NOOP

    def _new_plan(self):
        r, u = self.rng, self.rng.random()
        if u < 0.62:  # walk: hold one direction for several steps
            return [int(r.choice(MOVES))] * int(r.integers(3, 13))
        if u < 0.74:
            return [DO] * int(r.integers(1, 6))
        if u < 0.82:  # face a random way and place something there
            return [int(r.choice(MOVES)), int(r.choice(PLACE))]
        if u < 0.90:
            return [int(r.choice(CRAFT))]
        if u < 0.975:
            return [NOOP] * int(r.integers(1, 5))
        if u < 0.985:  # sleeping leaves the player open to zombies: rare, but needed to see waking up
            return [SLEEP] * int(r.integers(5, 40))
        return [int(r.integers(17))]

    def act(self, obs):
        obs = np.asarray(obs)
        if self.prev_obs is not None and self.last in MOVES:
            change = np.abs(obs.astype(np.int16) - self.prev_obs.astype(np.int16)).mean()
            if change < self.blocked_threshold and self.rng.random() < 0.7:
                # blocked: strike what is ahead a few times, then walk another way
                turn = int(self.rng.choice([m for m in MOVES if m != self.last]))
                self.plan = [DO] * int(self.rng.integers(2, 6)) + [turn] * int(self.rng.integers(3, 10))
        if not self.plan:
            self.plan = self._new_plan()
        self.prev_obs = obs
        self.last = self.plan.pop(0)
        # (no rng draw when detour is 0, so episodes collected before detours existed stay reproducible)
        if self.detour and self.last in MOVES and self.plan and self.plan[0] == self.last \
                and self.rng.random() < self.detour:
            self.plan.insert(0, self.last)  # the held move resumes after this one step
            self.last = int(self.rng.choice([a for a in (NOOP,) + MOVES if a != self.last]))
        return self.last
