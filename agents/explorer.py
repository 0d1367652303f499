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

``sleep`` (share of new plans that are a sleep spell, 0.01 by default): the game keeps a sleeper asleep until
its energy is full (about 11 steps a point) or it is hurt, so at 0.01 an explorer's episodes hold about one
`wake_up` per 3,700 steps (data/crafter_ev: 2 in 7,370), too few for a world model to learn how a sleep ends.
A collection with e.g. ``sleep=0.1`` holds many (the other plans keep their relative odds).
"""
from __future__ import annotations

import numpy as np

NOOP, LEFT, RIGHT, UP, DOWN, DO, SLEEP = range(7)
MOVES = (LEFT, RIGHT, UP, DOWN)
PLACE = (7, 8, 9, 10)
CRAFT = tuple(range(11, 17))


class CrafterExplorer:
    def __init__(self, action_space, seed: int | None = None, blocked_threshold: float = 1.5, detour: float = 0.0,
                 sleep: float = 0.01):
        if not 0.0 <= detour < 1.0:
            raise ValueError(f"detour must be a share in [0, 1), got {detour}")
        if not 0.0 <= sleep < 0.99:
            raise ValueError(f"sleep must be a share of plans in [0, 0.99), got {sleep}")
        self.rng = np.random.default_rng(seed)
        self.blocked_threshold = blocked_threshold
        self.detour = detour
        # plan thresholds on one uniform draw: walk, do, place, craft, noop, then sleep; the rest a random action.
        # The first five are scaled so the non-sleep plans keep their odds; at sleep=0.01 the scale is exactly
        # 1, so default episodes stay the same draw for draw.
        k = (1.0 - sleep) / 0.99
        self._cuts = [t * k for t in (0.62, 0.74, 0.82, 0.90, 0.975)]
        self._cuts.append(self._cuts[-1] + sleep)
        self.reset()

    def reset(self):
        self.plan: list[int] = []
        self.prev_obs = None
        self.last = NOOP

    def _new_plan(self):
        r, u = self.rng, self.rng.random()
        walk, do, place, craft, noop, sleep = self._cuts
        if u < walk:  # hold one direction for several steps
            return [int(r.choice(MOVES))] * int(r.integers(3, 13))
        if u < do:
            return [DO] * int(r.integers(1, 6))
        if u < place:  # face a random way and place something there
            return [int(r.choice(MOVES)), int(r.choice(PLACE))]
        if u < craft:
            return [int(r.choice(CRAFT))]
        if u < noop:
            return [NOOP] * int(r.integers(1, 5))
        if u < sleep:  # sleeping leaves the player open to zombies: rare by default, but needed to see waking up
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
