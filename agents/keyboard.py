"""A human at the keyboard, with Crafter's own key bindings (as in crafter's run_gui)."""
from __future__ import annotations

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
