"""`worldsim play`: the live viewer. A pygame window shows the learned world's frames scaled up; the keyboard
or an agent from agents/ drives it; `compare=true` runs the real game beside it on the same actions;
`record=FILE.mp4` records; ENTER resets, '.' pauses, H toggles the key help, ESC quits. With no display it
says so and writes a video instead.

`env=crafter`: Crafter's own keys. `env=minetest`: first person with MineRL actions: mouse look (the window
grabs the mouse in relative mode; ESC releases it, a click grabs it again), WASD, space jump, shift sneak,
ctrl sprint, left/right click attack/use, 1-9 hotbar.

The viewer talks to the Gymnasium envs only, never to the model.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

HUD_HEIGHT = 64


def has_display() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or os.environ.get("SDL_VIDEODRIVER"))


class FrameWindow:
    """A pygame window showing one or more frames side by side, scaled up, with a text strip below."""

    def __init__(self, frame_hw, scale: int = 8, title: str = "worldsim", panels: int = 1, hud: bool = False):
        import pygame

        pygame.display.init()  # display and font only: no audio device is needed
        pygame.font.init()
        self.pg, self.scale, self.panels = pygame, scale, panels
        self.fw, self.fh = frame_hw[1] * scale, frame_hw[0] * scale
        self.size = (self.fw * panels, self.fh + (HUD_HEIGHT if hud else 0))
        self.screen = pygame.display.set_mode(self.size)
        pygame.display.set_caption(title)
        self.font = pygame.font.Font(None, 22)

    def draw_frame(self, frame: np.ndarray, panel: int = 0, label: str | None = None):
        pg = self.pg
        surf = pg.surfarray.make_surface(np.ascontiguousarray(frame.transpose(1, 0, 2)))
        self.screen.blit(pg.transform.scale(surf, (self.fw, self.fh)), (panel * self.fw, 0))
        if label:
            self._text(label, (panel * self.fw + 6, 6), bg=True)

    def _text(self, text, pos, color=(255, 255, 255), bg=False):
        img = self.font.render(text, True, color)
        if bg:
            box = self.pg.Surface((img.get_width() + 6, img.get_height() + 4), self.pg.SRCALPHA)
            box.fill((0, 0, 0, 150))
            self.screen.blit(box, (pos[0] - 3, pos[1] - 2))
        self.screen.blit(img, pos)

    def draw_hud(self, lines):
        self.screen.fill((20, 20, 24), (0, self.fh, self.size[0], HUD_HEIGHT))
        for i, line in enumerate(lines[:3]):
            self._text(line, (8, self.fh + 6 + 19 * i), color=(220, 220, 220))

    def draw_help(self, lines):
        box = self.pg.Surface((self.fw - 40, 24 * len(lines) + 16), self.pg.SRCALPHA)
        box.fill((0, 0, 0, 170))
        self.screen.blit(box, (20, self.fh - box.get_height() - 20))
        for i, line in enumerate(lines):
            self._text(line, (30, self.fh - box.get_height() - 12 + 24 * i))

    def show(self, frame: np.ndarray):
        self.draw_frame(frame)
        self.flip()

    def flip(self):
        self.pg.event.pump()
        self.pg.display.flip()

    def pixels(self) -> np.ndarray:
        return self.pg.surfarray.array3d(self.screen).transpose(1, 0, 2)

    def close(self):
        self.pg.display.quit()


def number_keys(space, env: str) -> dict:
    """Keyboard play of a Gymnasium source: keys 1-9 and 0 are actions 0-9 of a Discrete space."""
    import gymnasium as gym
    import pygame

    if not isinstance(space, gym.spaces.Discrete) or space.n > 10:
        raise ValueError(f"env={env}: keyboard play takes a Discrete space of up to 10 actions (keys 1-9, 0), not "
                         f"{space}; let an agent drive: agent=random or agent=<module>:<Class>")
    return {getattr(pygame, f"K_{(i + 1) % 10}"): i for i in range(int(space.n))}


def number_help(n: int, meanings) -> list[str]:
    names = [f"{(i + 1) % 10}: {meanings[i] if i < len(meanings) else f'action {i}'}" for i in range(n)]
    rows = ["keys " + "   ".join(names[:5])] + (["     " + "   ".join(names[5:])] if n > 5 else [])
    return rows + ["held key = its action; none held: action 0", "ENTER reset  . pause  H help  ESC quit"]


# env name -> (learned env id, real env id, default scale)
ENVS = {"crafter": ("worldsim/Crafter-v0", "worldsim/RealCrafter-v0", 8),
        "minetest": ("worldsim/Minetest-v0", "worldsim/RealMinetest-v0", 5)}


def describe(action, meanings) -> str:
    """One line naming an action: Crafter's action name, or the held keys and camera of a MineRL action."""
    if isinstance(action, dict):
        keys = [k for k, v in action.items() if k != "camera" and v]
        cam = np.asarray(action.get("camera", (0, 0)), float)
        return (" ".join(keys) or "-") + (f"  camera pitch {cam[0]:+.1f} yaw {cam[1]:+.1f}" if np.any(cam) else "")
    return str(meanings[int(action)]) if meanings else str(action)


class Viewer:
    """The play loop, one `tick()` per step: events -> action -> env.step -> draw -> record."""

    def __init__(self, cfg):
        import gymnasium as gym
        import imageio.v2 as imageio

        import worldsim  # noqa: F401  (registers the envs)
        from worldsim.agents import make_agent
        from worldsim.agents.keyboard import HELP, MINETEST_HELP, KeyboardAgent, MouseKeyboardAgent

        from worldsim.envs.gym_source import LEARNED_ID, GymImageEnv, is_gym_source, need_bundle

        gym_source = is_gym_source(cfg.env)  # a model you trained on a Gymnasium env (worldsim/World-v0)
        if not gym_source and cfg.env not in ENVS:
            raise ValueError(f"unknown env {cfg.env!r}; available: {', '.join(ENVS)}, or gym:<env id> with bundle=")
        need_bundle(cfg.env, cfg.bundle)
        env_id, real_id, default_scale = ENVS.get(cfg.env, (LEARNED_ID, None, 6))
        self.cfg, self.headless = cfg, not has_display()
        self.record, self.agent_name, self.max_steps = cfg.record, cfg.agent, int(cfg.steps)
        if self.headless:
            self.record = self.record or "worldsim_play.mp4"
            self.agent_name = self.agent_name or ("random" if gym_source else "explorer")
            self.max_steps = self.max_steps or int(cfg.headless_steps)
            print(f"no display found (DISPLAY is not set): the {self.agent_name} agent plays {self.max_steps} steps "
                  f"and the video is written to {self.record}")
            os.environ["SDL_VIDEODRIVER"] = "dummy"
        kw = {"sampling_steps": cfg.sampling_steps, "device": cfg.device, "guidance": cfg.get("guidance"),
              "tile_hold": cfg.get("tile_hold"), "quantize": cfg.get("quantize"),
              "detail_carry": cfg.get("detail_carry"), "carry_gate": cfg.get("carry_gate"),
              "reencode": cfg.get("reencode"), "snap": cfg.get("snap"),
              "certain": cfg.get("certain"), "amp": cfg.get("amp"), "view_memory": cfg.get("view_memory"),
              "seed_floor": cfg.get("seed_floor"), "map_memory": cfg.get("map_memory"),
              "new_ground": cfg.get("new_ground"), "terrain_floor": cfg.get("terrain_floor"), "ticks": cfg.get("ticks"),
              "light": cfg.get("light"), "light_noise": cfg.get("light_noise"), "fresh_window": cfg.get("fresh_window")}
        if cfg.bundle:
            kw["bundle"] = cfg.bundle
        self.env = gym.make(env_id, **kw)
        if gym_source:  # the real game at the model's frame size
            source = self.env.unwrapped.bundle.env
            self.real = (GymImageEnv(cfg.env, size=source["frame_shape"][:2], **source.get("make_kwargs", {}))
                         if cfg.compare else None)
            self.real_name = "real " + cfg.env[len("gym:"):]
        else:
            self.real = gym.make(real_id) if cfg.compare else None
            self.real_name = "real " + real_id.split("/Real")[1].split("-")[0]
        self.meanings = self.env.unwrapped.action_meanings
        self.mouse = isinstance(self.env.action_space, gym.spaces.Dict)  # first person: mouse look
        self.win = FrameWindow(self.env.observation_space.shape[:2], cfg.scale or default_scale, "worldsim play",
                               panels=2 if self.real else 1, hud=True)
        self.help = MINETEST_HELP if self.mouse else HELP
        if self.agent_name:
            self.agent = make_agent(self.agent_name, self.env.action_space, seed=cfg.seed)
        elif gym_source:
            self.agent = KeyboardAgent(number_keys(self.env.action_space, cfg.env))
            self.help = number_help(self.env.action_space.n, self.meanings)
        else:
            self.agent = MouseKeyboardAgent() if self.mouse else KeyboardAgent()
        self.grab(self.mouse and not self.agent_name)
        self.writer = (imageio.get_writer(self.record, fps=cfg.fps, codec="libx264", quality=7, macro_block_size=8)
                       if self.record else None)
        self.seed = int(cfg.seed)
        self.paused, self.show_help, self.running = False, self.agent_name is None, True
        self.steps, self.sps, self.last_action = 0, 0.0, None
        self.reset()

    def grab(self, on: bool):
        """Relative mouse mode: the cursor is hidden and confined, and motion arrives as relative deltas."""
        pg = self.win.pg
        pg.event.set_grab(on)
        pg.mouse.set_visible(not on)
        self.grabbed = on  # our own record: SDL's dummy (headless) driver cannot grab

    def reset(self):
        if self.real is not None:  # the model starts from the real game's first frame
            self.real_obs, _ = self.real.reset(seed=self.seed)
            self.obs, _ = self.env.reset(seed=self.seed, options={"image": self.real_obs})
        else:
            self.obs, _ = self.env.reset(seed=self.seed)
            self.real_obs = None
        self.agent.reset()
        self.ret, self.ended = 0.0, ""

    def next_episode(self):
        self.seed += 1
        self.reset()

    def handle(self, ev):
        pg = self.win.pg
        if ev.type == pg.KEYDOWN and ev.key == pg.K_ESCAPE and self.mouse and self.grabbed:
            self.grab(False)  # first ESC releases the mouse; the next one quits
        elif ev.type == pg.QUIT or (ev.type == pg.KEYDOWN and ev.key == pg.K_ESCAPE):
            self.running = False
        elif ev.type == pg.MOUSEBUTTONDOWN and self.mouse and not self.agent_name and not self.grabbed:
            self.grab(True)  # a click into the window grabs the mouse again (and is not an action)
        elif ev.type == pg.MOUSEMOTION and not self.grabbed:
            pass  # a free cursor is not looking around
        elif ev.type == pg.KEYDOWN and ev.key == pg.K_RETURN:
            self.next_episode()
        elif ev.type == pg.KEYDOWN and ev.key == pg.K_PERIOD:
            self.paused = not self.paused
        elif ev.type == pg.KEYDOWN and ev.key == pg.K_h:
            self.show_help = not self.show_help
        elif hasattr(self.agent, "handle"):
            self.agent.handle(ev)

    def tick(self):
        for ev in self.win.pg.event.get():
            self.handle(ev)
        if not self.running:
            return
        if not self.paused and not self.ended:
            action = self.agent.act(self.obs)
            t0 = time.perf_counter()
            self.obs, reward, terminated, truncated, _ = self.env.step(action)
            dt = time.perf_counter() - t0
            self.sps = 1 / dt if self.sps == 0 else 0.9 * self.sps + 0.1 / dt
            if self.real is not None:
                self.real_obs, *_ = self.real.step(action)
            self.ret += reward
            self.steps += 1
            self.last_action = action
            if terminated or truncated:
                self.ended = "episode ended (terminated)" if terminated else "episode ended (horizon)"
        win = self.win
        win.draw_frame(self.obs, 0, "model" if self.real is not None else None)
        if self.real is not None:
            win.draw_frame(self.real_obs, 1, self.real_name)
        status = "PAUSED" if self.paused else (self.ended + " - ENTER to reset" if self.ended else "")
        name = describe(self.last_action, self.meanings) if self.last_action is not None else "-"
        win.draw_hud([f"model {self.sps:5.1f} steps/s   step {self.steps}   return {self.ret:+.2f}   {status}",
                      f"action: {name}   driver: {self.agent_name or 'keyboard'}" + ("   REC" if self.writer else ""),
                      "H help"])
        if self.show_help:
            win.draw_help(self.help)
        win.flip()
        if self.writer is not None and not self.paused:
            self.writer.append_data(win.pixels())
        if self.max_steps and self.steps >= self.max_steps:
            self.running = False
        if self.ended and self.agent_name:  # an agent starts the next episode by itself
            self.next_episode()

    def run(self):
        clock = self.win.pg.time.Clock()
        while self.running:
            self.tick()
            if not self.headless:
                clock.tick(self.cfg.fps)
        return self.close()

    def close(self):
        if self.writer is not None:
            self.writer.close()
            self.writer = None
            print(f"video written to {Path(self.record).resolve()}")
        self.win.close()
        self.env.close()
        if self.real is not None:
            self.real.close()
        return {"steps": self.steps, "return": self.ret, "video": self.record}


def play(cfg):
    return Viewer(cfg).run()
