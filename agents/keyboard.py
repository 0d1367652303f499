"""Humans at the keyboard: Crafter's own key bindings (as in crafter's run_gui), and mouse + keyboard for MineRL actions."""
from __future__ import annotations

import numpy as np
import pygame

# key -> Crafter action id
CRAFTER_KEYS = {
    pygame.K_a: 1, pygame.K_d: 2, pygame.K_w: 3, pygame.K_s: 4,  # move left/right/up/down
    pygame.K_SPACE: 5, pygame.K_TAB: 6,  # do, sleep
    pygame.K_r: 7, pygame.K_t: 8, pygame.K_f: 9, pygame.K_p: 10,  # place stone/table/furnace/plant
    pygame.K_1: 11, pygame.K_2: 12, pygame.K_3: 13,  # make wood/stone/iron pickaxe
    pygame.K_4: 14, pygame.K_5: 15, pygame.K_6: 16,  # make wood/stone/iron sword
}
HELP = [
    "WASD move   SPACE do   TAB sleep",
    "R stone  T table  F furnace  P plant",
    "1-3 pickaxe (wood/stone/iron)",
    "4-6 sword (wood/stone/iron)",
    "ENTER reset   . pause   H help   ESC quit",
]


class KeyboardAgent:
    """Acts on the keys held down (tracked from the viewer's key events); noop when none is held."""

    def __init__(self, keymap: dict | None = None):
        self.keymap = keymap or CRAFTER_KEYS
        self.held: list[int] = []  # in press order: the most recent key wins

    def reset(self):
        pass

    def handle(self, event) -> None:
        if event.type == pygame.KEYDOWN and event.key in self.keymap and event.key not in self.held:
            self.held.append(event.key)
        elif event.type == pygame.KEYUP and event.key in self.held:
            self.held.remove(event.key)

    def act(self, obs=None) -> int:
        return self.keymap[self.held[-1]] if self.held else 0


# MineRL key -> pygame key, for the first-person world (Minecraft's default bindings)
MINETEST_KEYS = {
    pygame.K_w: "forward", pygame.K_s: "back", pygame.K_a: "left", pygame.K_d: "right",
    pygame.K_SPACE: "jump", pygame.K_LSHIFT: "sneak", pygame.K_LCTRL: "sprint", pygame.K_q: "drop",
    pygame.K_e: "inventory", **{getattr(pygame, f"K_{i}"): f"hotbar.{i}" for i in range(1, 10)},
}
MINETEST_BUTTONS = {1: "attack", 3: "use", 2: "pickItem"}  # left, right, middle click
MINETEST_HELP = [
    "mouse look (click the window to grab the mouse)",
    "WASD move  SPACE jump  SHIFT sneak  CTRL sprint",
    "left click attack/dig   right click use/place",
    "1-9 hotbar   Q drop   E inventory",
    "ESC release mouse (again: quit)  ENTER reset  . pause  H help",
]


class MouseKeyboardAgent:
    """A human with mouse and keyboard, acting in MineRL's Dict action space.

    Keys and buttons count as pressed while held; mouse motion since the last step becomes the camera
    delta (``degrees_per_pixel``; screen y down = pitch down, as in MineRL and VPT).
    """

    def __init__(self, degrees_per_pixel: float = 0.15):
        from worldsim.envs.minerl_actions import noop

        self._noop, self.dpp = noop, degrees_per_pixel
        self.held: set[str] = set()
        self.motion = [0.0, 0.0]

    def reset(self):
        self.motion = [0.0, 0.0]

    def handle(self, event) -> None:
        if event.type == pygame.KEYDOWN and event.key in MINETEST_KEYS:
            self.held.add(MINETEST_KEYS[event.key])
        elif event.type == pygame.KEYUP and event.key in MINETEST_KEYS:
            self.held.discard(MINETEST_KEYS[event.key])
        elif event.type == pygame.MOUSEBUTTONDOWN and event.button in MINETEST_BUTTONS:
            self.held.add(MINETEST_BUTTONS[event.button])
        elif event.type == pygame.MOUSEBUTTONUP and event.button in MINETEST_BUTTONS:
            self.held.discard(MINETEST_BUTTONS[event.button])
        elif event.type == pygame.MOUSEMOTION:  # the viewer passes motion on only while the mouse is grabbed
            self.motion[0] += event.rel[1]
            self.motion[1] += event.rel[0]

    def act(self, obs=None) -> dict:
        a = self._noop()
        for k in self.held:
            a[k] = 1
        a["camera"] = np.clip(np.array(self.motion, np.float32) * self.dpp, -180, 180).astype(np.float32)
        self.motion = [0.0, 0.0]
        return a
