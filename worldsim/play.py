"""`worldsim play`: the live viewer. A pygame window shows the learned world's frames scaled up; the keyboard
(Crafter's own keys) or an agent from agents/ drives it; `compare=true` runs real Crafter beside it on the
same actions; `record=FILE.mp4` records. With no display it says so and writes a video instead.

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


def play(cfg):
    import gymnasium as gym
    import imageio.v2 as imageio

    import worldsim  # noqa: F401  (registers the envs)
    from worldsim.agents import make_agent
    from worldsim.agents.keyboard import HELP, KeyboardAgent

    if cfg.env != "crafter":
        raise ValueError(f"unknown env {cfg.env!r}; available: crafter")
    headless = not has_display()
    record = cfg.record
    agent_name = cfg.agent
    max_steps = int(cfg.steps)
    if headless:
        record = record or "worldsim_play.mp4"
        agent_name = agent_name or "explorer"
        max_steps = max_steps or int(cfg.headless_steps)
        print(f"no display found (DISPLAY is not set): the {agent_name} agent plays {max_steps} steps "
              f"and the video is written to {record}")
        os.environ["SDL_VIDEODRIVER"] = "dummy"

    kw = {"sampling_steps": cfg.sampling_steps, "device": cfg.device}
    if cfg.bundle:
        kw["bundle"] = cfg.bundle
    env = gym.make("worldsim/Crafter-v0", **kw)
    real = gym.make("worldsim/RealCrafter-v0") if cfg.compare else None
    meanings = env.unwrapped.action_meanings
    win = FrameWindow(env.observation_space.shape[:2], cfg.scale, "worldsim play", panels=2 if real else 1, hud=True)
    agent = make_agent(agent_name, env.action_space, seed=cfg.seed) if agent_name else KeyboardAgent()
    writer = imageio.get_writer(record, fps=cfg.fps, codec="libx264", quality=7, macro_block_size=8) if record else None

    def reset(seed):
        if real is not None:  # the model starts from the real game's first frame
            real_obs, _ = real.reset(seed=seed)
            obs, _ = env.reset(seed=seed, options={"image": real_obs})
            return obs, real_obs
        obs, _ = env.reset(seed=seed)
        return obs, None

    seed = int(cfg.seed)
    obs, real_obs = reset(seed)
    agent.reset()
    pg = win.pg
    clock = pg.time.Clock()
    paused, show_help, running = False, agent_name is None, True
    steps, ret, sps, last_action, ended = 0, 0.0, 0.0, 0, ""
    while running:
        for ev in pg.event.get():
            if ev.type == pg.QUIT or (ev.type == pg.KEYDOWN and ev.key in (pg.K_ESCAPE, pg.K_q)):
                running = False
            elif ev.type == pg.KEYDOWN and ev.key == pg.K_RETURN:
                seed += 1
                obs, real_obs = reset(seed)
                agent.reset()
                ret, ended = 0.0, ""
            elif ev.type == pg.KEYDOWN and ev.key == pg.K_PERIOD:
                paused = not paused
            elif ev.type == pg.KEYDOWN and ev.key in (pg.K_h, pg.K_F1):
                show_help = not show_help
        if not running:
            break
        if not paused and not ended:
            action = agent.act(obs)
            t0 = time.perf_counter()
            obs, reward, terminated, truncated, _ = env.step(action)
            dt = time.perf_counter() - t0
            sps = 1 / dt if sps == 0 else 0.9 * sps + 0.1 / dt
            if real is not None:
                real_obs, *_ = real.step(action)
            ret += reward
            steps += 1
            last_action = int(action)
            if terminated or truncated:
                ended = "episode ended (terminated)" if terminated else "episode ended (horizon)"
        win.draw_frame(obs, 0, "model" if real is not None else None)
        if real is not None:
            win.draw_frame(real_obs, 1, "real Crafter")
        status = "PAUSED" if paused else (ended + " - ENTER to reset" if ended else "")
        win.draw_hud([f"model {sps:5.1f} steps/s   step {steps}   return {ret:+.2f}   {status}",
                      f"action: {meanings[last_action] if meanings else last_action}"
                      f"   driver: {agent_name or 'keyboard'}" + ("   REC" if writer else ""),
                      "H help"])
        if show_help:
            win.draw_help(HELP)
        win.flip()
        if writer is not None and not paused:
            writer.append_data(win.pixels())
        if max_steps and steps >= max_steps:
            break
        if ended and agent_name:  # an agent starts the next episode by itself
            seed += 1
            obs, real_obs = reset(seed)
            agent.reset()
            ret, ended = 0.0, ""
        if not headless:
            clock.tick(cfg.fps)
    if writer is not None:
        writer.close()
        print(f"video written to {Path(record).resolve()}")
    win.close()
    env.close()
    return {"steps": steps, "return": ret, "video": record}
