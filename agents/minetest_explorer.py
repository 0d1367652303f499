"""A scripted first-person explorer for MineRL-style Dict actions (real Minetest, the learned 3D world).

It plays in segments, each held for a while (action persistence, so the world model sees consequences):
walking and sprinting with a smoothly drifting heading and gaze, jumping when the view stops changing
(blocked) or now and then, looking around on the spot, digging down or ahead with attack held, placing
blocks from the hotbar, switching hotbar slots, strafing and backing up. Water needs nothing special:
holding jump while walking swims up and out. Camera moves are eased (velocity changes gradually), so turns
are smooth rather than jittery, and the pitch is kept within [-60, 75] degrees by tracking its own sum.

Smooth turns alone teach a world model to ignore the camera action: this tick's delta is almost the last
one, which the context frames already show, so extrapolating the motion predicts as well as reading the
action. A share of ticks (`flick`, 20 % by default) therefore take an independent random camera delta (up to
12 degrees of yaw, 8 of pitch) that the eased motion does not carry on, so the action is the only way to
know where the view goes next.
"""
from __future__ import annotations

import numpy as np

from worldsim.envs import minerl_actions


class MinetestExplorer:
    def __init__(self, action_space=None, seed: int | None = None, blocked_threshold: float = 1.0,
                 flick: float = 0.2):
        self.rng = np.random.default_rng(seed)
        self.blocked_threshold = blocked_threshold
        if not 0.0 <= flick <= 1.0:
            raise ValueError(f"flick is a probability per tick, got {flick}")
        self.flick = flick
        self.reset()

    def reset(self):
        self.segment, self.left = "walk", 0
        self.pitch, self.yaw_vel, self.pitch_vel = 0.0, 0.0, 0.0
        self.target_pitch, self.target_yaw_vel = 0.0, 0.0
        self.prev_obs, self.still = None, 0
        self.slot = 1

    def _next_segment(self):
        r = self.rng
        u = r.random()
        kinds = (("walk", 0.45), ("look", 0.15), ("dig", 0.14), ("place", 0.1), ("strafe", 0.08),
                 ("back", 0.04), ("idle", 0.04))
        acc = 0.0
        for kind, p in kinds:
            acc += p
            if u < acc:
                break
        self.segment = kind
        self.left = int(r.integers(*{"walk": (20, 80), "look": (10, 40), "dig": (15, 50), "place": (8, 24),
                                     "strafe": (6, 20), "back": (4, 12), "idle": (5, 20)}[kind]))
        self.sprint = kind == "walk" and r.random() < 0.35
        self.strafe_key = "left" if r.random() < 0.5 else "right"
        self.target_yaw_vel = float(r.normal(0, {"look": 6.0, "walk": 1.5}.get(kind, 0.5)))
        self.target_pitch = float({"dig": r.uniform(25, 70), "place": r.uniform(30, 65),
                                   "look": r.uniform(-50, 50)}.get(kind, r.uniform(-15, 20)))
        if kind == "place" or r.random() < 0.1:  # switch the hotbar: pressed for one tick
            self.slot = int(r.integers(1, 10))
            self.switch = True
        else:
            self.switch = False

    def act(self, obs) -> dict:
        r = self.rng
        if self.prev_obs is not None:
            change = np.abs(obs.astype(np.int16) - self.prev_obs).mean()
            self.still = self.still + 1 if change < self.blocked_threshold else 0
        self.prev_obs = obs.astype(np.int16)
        if self.left <= 0:
            self._next_segment()
        self.left -= 1
        a = minerl_actions.noop()
        kind = self.segment
        if kind in ("walk", "dig") or (kind == "place" and self.left % 6 == 0):
            a["forward"] = int(kind != "place" or r.random() < 0.5)
        if kind == "walk":
            a["sprint"] = int(self.sprint)
            # blocked (the view hardly changes while walking): jump, and turn away if that did not help
            if self.still >= 2 or r.random() < 0.04:
                a["jump"] = 1
            if self.still >= 6:
                self.target_yaw_vel = float(r.choice([-1, 1]) * r.uniform(6, 12))
                self.still = 0
        if kind == "dig":
            a["attack"] = 1
            a["forward"] = int(self.left % 10 < 3)
        if kind == "place" and self.left % 4 == 0:
            a["use"] = 1
        if kind == "strafe":
            a[self.strafe_key] = 1
            a["jump"] = int(r.random() < 0.1)
        if kind == "back":
            a["back"] = 1
        if self.switch:
            a[f"hotbar.{self.slot}"] = 1
            self.switch = False
        # eased camera: velocities move a fraction of the way to their targets each tick
        if r.random() < 0.05:
            self.target_yaw_vel = float(r.normal(0, 3.0))
        self.yaw_vel += 0.25 * (self.target_yaw_vel - self.yaw_vel)
        self.pitch_vel += 0.3 * (np.clip(0.15 * (self.target_pitch - self.pitch), -4, 4) - self.pitch_vel)
        dp, dy = self.pitch_vel, self.yaw_vel
        if r.random() < self.flick:  # independent of the eased motion (see the module docstring)
            dp, dy = float(r.uniform(-8, 8)), float(r.uniform(-12, 12))
        dp = float(np.clip(self.pitch + dp, -60, 75) - self.pitch)
        self.pitch += dp
        a["camera"] = np.array([dp, dy], np.float32)
        return a
