"""The learned world as a Gymnasium environment (`worldsim/Crafter-v0`) and a native batched VectorEnv.

Both talk to the model only through `WorldSimulator`; agents and the viewer talk only to these envs.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space
from safetensors.torch import load_file

from worldsim.checkpoint import read_metadata, tensors_bytes
from worldsim.data import atomic_write_bytes, fit_frames, stack_actions, tick_names
from worldsim.envs.spaces import check_action as _check_action, check_actions
from worldsim.model import spec_to_space
from worldsim.simulator import WorldSimulator, load_bundle, unlit_context

NO_DEFAULT = "required"  # worldsim/World-v0's default_bundle: bundle= must be given
OPTION_KEYS = {"context_frames", "context_actions", "image", "start_index", "clock"}


def _load(env, bundle, device, batch_size, sampling_steps, context_noise, frame_size=None, default=None,
          guidance=None, tile_hold=None, quantize=None, detail_carry=None, carry_gate=None, reencode=None,
          snap=None, certain=None, amp=None, view_memory=None, seed_floor=None, map_memory=None, new_ground=None,
          terrain_floor=None, ticks=None, light=None, light_noise=None, fresh_window=None) -> gym.Space:
    """Set up what both envs share (bundle, simulator, observation space, action meanings); returns the
    action space of one world."""
    from worldsim import DEFAULT_CRAFTER_BUNDLE

    if bundle is None and default == NO_DEFAULT:
        raise ValueError("worldsim/World-v0 runs a model you trained: gym.make('worldsim/World-v0', "
                         "bundle='runs/<run>/bundle') (the bundle `worldsim train` wrote)")
    env.bundle = load_bundle(str(bundle or default or DEFAULT_CRAFTER_BUNDLE), device)
    env.sim = WorldSimulator(env.bundle, batch_size, sampling_steps, context_noise,
                             tuple(frame_size) if frame_size is not None else None, guidance, tile_hold, quantize,
                             detail_carry=detail_carry, carry_gate=carry_gate, reencode=reencode, snap=snap,
                             certain=certain, amp=amp, view_memory=view_memory, seed_floor=seed_floor,
                             map_memory=map_memory, new_ground=new_ground, terrain_floor=terrain_floor,
                             ticks=ticks, light=light, light_noise=light_noise, fresh_window=fresh_window)
    env.action_meanings = list(env.bundle.env.get("action_meanings", []))
    # bundles with event heads (Crafter's achievements; a bundle trained on a collection that records events
    # names them before `worldsim heads events=true` gives it the heads)
    K = int(env.bundle.dit.config.events)
    env.event_names = list(env.bundle.env.get("events", []))[:K] if K else []
    if len(env.event_names) != K:
        raise ValueError(f"{env.bundle.path}: the world model has {K} event heads, bundle.json's env names "
                         f"{len(env.event_names)} events")
    env.event_reward = float(env.bundle.env.get("event_reward", 0.0))
    n = env.sim.n_ticks  # ticks (models with them): the game's counters rising and falling, drawn each step
    env.tick_names = tick_names(env.bundle.env.get("counters", [])) if n else []
    if len(env.tick_names) != n:
        raise ValueError(f"{env.bundle.path}: the world model draws {n} tick types, bundle.json's env names the "
                         f"counters of {len(env.tick_names)}")
    env.rest_range = _rest_range(env.bundle)
    env.context_frames = env.sim.window  # the most frames a reset's options["context_frames"] may give
    return spec_to_space(env.bundle.env["action_space"])


@dataclass(frozen=True)
class WorldState:
    """One learned world's saved state: ``env.unwrapped.get_state()``, or ``get_state(i)`` of a vector env.

    It holds what the world's next steps depend on: the model's window of recent frames (its KV cache), the
    newest latents and frames shown, the game clock, the map or view memory, the step count, whether the
    episode had ended, and the world's random generators. ``set_state`` makes a world continue from it,
    in the same env or another of the same bundle and settings, any number of times: the same actions then
    give the same frames, rewards and ends (with ``seed=`` the noise is new instead). Planning (try each
    action, or many futures, from one state) and counterfactual rollouts (go back and act otherwise) use it;
    one vector env steps all the branches in one batched pass. A state is read-only; about 2.5 MiB for the
    shipped Crafter model (``nbytes``).
    """
    sim: dict
    obs: np.ndarray
    steps: int
    done: bool
    rng: np.random.Generator
    end_rng: np.random.Generator
    events: np.ndarray | None = None  # (K,) int64 how often each event happened this episode (event bundles)
    rest: np.ndarray | None = None  # (3,) float64 the rest reward's running sum and its bounds (`_rest_start`)

    @property
    def nbytes(self) -> int:
        tensors = [*self.sim["cache"], *self.sim["tensors"].values()]
        return int(sum(t.numel() * t.element_size() for t in tensors) + self.obs.nbytes
                   + (0 if self.events is None else self.events.nbytes))

    def generators(self, seed: int | None = None) -> tuple[np.random.Generator, np.random.Generator]:
        """The noise and end generators a world continues with: copies of the saved ones (so the state can be
        gone back to again), or with `seed` new ones from it."""
        if seed is None:
            return copy.deepcopy(self.rng), copy.deepcopy(self.end_rng)
        rng = np.random.default_rng(seed)
        return rng, _end_draws(rng)

    def save(self, path: str | Path) -> None:
        """Write the state to one safetensors file (tensors, and the rest as JSON in its metadata), atomically."""
        tensors = {f"tensor.{k}": v for k, v in self.sim["tensors"].items()}
        tensors.update({"cache.k": self.sim["cache"][0], "cache.v": self.sim["cache"][1],
                        "cache.valid": self.sim["cache"][2], "obs": torch.from_numpy(self.obs)})
        if self.events is not None:
            tensors["events"] = torch.from_numpy(self.events)
        if self.rest is not None:
            tensors["rest"] = torch.from_numpy(np.asarray(self.rest, np.float64))
        meta = {"format": STATE_FORMAT, "fingerprint": self.sim["fingerprint"], "time": self.sim["time"],
                "clock": self.sim["clock"], "steps": self.steps, "done": self.done,
                "rng": _generator_json(self.rng), "end_rng": _generator_json(self.end_rng)}
        data = tensors_bytes(tensors, meta)
        atomic_write_bytes(Path(path), lambda f: f.write(data))

    @classmethod
    def load(cls, path: str | Path) -> "WorldState":
        """A state `save` wrote; a clear error for any other file."""
        path = Path(path)
        try:
            meta = read_metadata(path)
            tensors = load_file(path)
        except Exception as e:  # safetensors raises its own errors for a truncated or foreign file
            raise ValueError(f"{path} is not a saved worldsim state ({type(e).__name__}: {e})") from None
        if meta.get("format") != STATE_FORMAT:
            raise ValueError(f"{path} is not a saved worldsim state (format {meta.get('format')!r}, "
                             f"expected {STATE_FORMAT!r})")
        sim = {"fingerprint": meta["fingerprint"], "time": int(meta["time"]), "clock": int(meta["clock"]),
               "cache": (tensors["cache.k"], tensors["cache.v"], tensors["cache.valid"]),
               "tensors": {k[len("tensor."):]: v for k, v in tensors.items() if k.startswith("tensor.")}}
        return cls(sim, tensors["obs"].numpy(), int(meta["steps"]), bool(meta["done"]),
                   _generator(meta["rng"]), _generator(meta["end_rng"]),
                   tensors["events"].numpy() if "events" in tensors else None,
                   tensors["rest"].numpy() if "rest" in tensors else None)


STATE_FORMAT = "worldsim-state/1"


def _generator_json(g: np.random.Generator) -> dict:
    """A generator as JSON: its bit generator's state and its seed sequence (`reset` spawns the end generator
    from it), so a loaded one draws and spawns as the saved one would."""
    ss = g.bit_generator.seed_seq
    return {"state": g.bit_generator.state, "entropy": ss.entropy, "spawn_key": list(ss.spawn_key),
            "pool_size": ss.pool_size, "n_children_spawned": ss.n_children_spawned}


def _generator(d: dict) -> np.random.Generator:
    ss = np.random.SeedSequence(d["entropy"], spawn_key=tuple(d["spawn_key"]), pool_size=d["pool_size"],
                                n_children_spawned=d["n_children_spawned"])
    bits = getattr(np.random, d["state"]["bit_generator"])(ss)
    bits.state = d["state"]
    return np.random.Generator(bits)


def _check_state(state):
    if not isinstance(state, WorldState):
        raise TypeError(f"set_state takes a WorldState (from get_state()), got {type(state).__name__}")
    return state


class WorldEnv(gym.Env):
    """A world generated frame by frame by worldsim's diffusion world model.

    With the default bundle this is Crafter:

    - Observation: ``Box(0, 255, (64, 64, 3), uint8)``.
    - Action: ``Discrete(17)`` with Crafter's meanings (``env.unwrapped.action_meanings``):
      0 noop, 1 move_left, 2 move_right, 3 move_up, 4 move_down, 5 do, 6 sleep, 7 place_stone,
      8 place_table, 9 place_furnace, 10 place_plant, 11 make_wood_pickaxe, 12 make_stone_pickaxe,
      13 make_iron_pickaxe, 14 make_wood_sword, 15 make_stone_sword, 16 make_iron_sword.
    - Reward and ``terminated`` come from the model's reward and termination heads; ``truncated`` after
      ``horizon`` steps. A step ends the episode with the termination head's probability
      (``info["terminated_prob"]``), drawn from a generator spawned from ``np_random``'s seed, so the frames
      do not depend on it: ends in Crafter are chancy (a zombie's next blow), a one-step world model draws the
      likeliest frame, and a threshold of 0.5 would never end an episode (docs/results.md: Reward and termination
      heads). ``termination_threshold=x`` ends when the probability exceeds x instead (deterministic; 2.0
      never ends). ``reward_floor=f`` gives 0 where the reward head's value is smaller than f in size: in the
      model's own rollouts the head returns many small values that add up (docs/results.md: Reward floor). Default:
      the bundle's (``inference.reward_floor``; 0 gives every value). Bundles with reward classes (the
      world model's ``reward_values``, e.g. Crafter's health changes -0.2, -0.1, 0, +0.1) draw one value per
      step with the head's probabilities instead (same generator; no floor), as the game pays whole health
      points where a regression would pay their average; ``info["reward_expected"]`` is its expectation.
      With ``rest_sum_range`` in bundle.json's env (``worldsim heads`` measures it on real episodes; the shipped
      Crafter model: [-0.9, 0], health starting full) only values that keep the episode's running sum within it
      are drawn (after a caller's context, whose start is unknown, within its width), so no episode pays more
      health than a real one can.
    - Bundles with event heads (the shipped Crafter model: its 22 achievements, ``env.unwrapped.event_names``)
      draw each step's events with their probabilities (from the same generator as the ends) and pay
      ``event_reward`` (Crafter: 1) on a step where one happens for the first time in the episode, as the
      game does; the reward head gives the rest (Crafter: health). ``info["achievements"]`` counts each
      event this episode, as real Crafter's info does (the Crafter score reads it); ``info["events"]`` names
      this step's, ``info["event_prob"]`` gives their probabilities (a planner's expected reward).
    - Bundles with ticks (``env.unwrapped.tick_names``: the game's counters falling or rising, Crafter's
      ``food_down``...) draw each step's ticks from the tick head (``np_random``), which reads the newest
      frame and the steps since each tick last happened, and the frame then shows them (a bundle given its
      ticks by ``worldsim ticks`` pastes each tick's glyph into its counter's tile: ``worldsim/ticks.py``):
      ``info["ticks"]`` names this step's, ``info["tick_prob"]`` gives their probabilities; ``ticks=False``
      draws none (the frames are then the model's without them), ``ticks=True`` draws them all where the
      bundle ships fewer (``inference.ticks``), a list of names draws those alone (the shipped Crafter model:
      ``["energy_up"]``, a sleep restoring energy, while no count falls). Between ticks the counters' tiles
      keep what was last shown there. Why: Crafter's food, drink and energy fall on hidden clocks that no few
      frames show, and a model left to guess draws "no change" every step (docs/results.md, "The inventory's clock"). A bundle whose env names
      ``sleep_clock: crafter`` keeps the game's clock for a sleeper's energy (a point every 11 steps asleep).

    ``worldsim/World-v0`` is the same env for a bundle you trained (``bundle=`` required), e.g. on your own
    Gymnasium env (``worldsim collect env=gym:<id>``): the spaces are the source env's (a Box's bounds
    included), the frames its rendered frames at the collected size.

    With the Minetest bundle (``worldsim/Minetest-v0``) the spaces are those of ``worldsim/RealMinetest-v0``:
    MineRL 1.0's ``Dict`` of keys + ``camera`` and ``Box(0, 255, (96, 128, 3), uint8)``; keys left out of
    an action dict count as not pressed. ``frame_size=(H, W)`` runs the same weights at another size
    (VAE bundles; a tile autoencoder is tied to its frame size and says so).

    ``reset(seed=..., options=...)`` starts from one of the start states shipped with the model (picked
    with ``np_random``, or ``options={"start_index": i}``), or from a context the caller gives:
    ``{"context_frames": uint8 (T, H, W, 3), "context_actions": int (T-1,)}`` where
    ``context_actions[i]`` was taken between frame i and i+1 (the next ``step(a)`` applies ``a`` to the
    last frame; T <= ``env.unwrapped.context_frames``, the model's window), or ``{"image": uint8 (H, W, 3)}``;
    ``{"clock": n}`` says the last context frame is the game's step n (default T-1: a context that begins with the game, as
    the shipped start states do), for models that read the game's clock (its day and night).
    All sampling noise comes from ``np_random``: the same seed, start and actions give the same frames.
    ``get_state()`` saves the world (a ``WorldState``) and ``set_state(state)`` goes back to it: the same
    actions then give the same frames (planning, counterfactual rollouts; ``WorldVectorEnv.set_state``
    branches one state into many worlds stepped together).
    ``guidance=g`` (> 1) samples with classifier-free guidance on the action, for models trained with
    ``diffusion.action_dropout``: each denoising step runs the batch with and without its action (one
    stacked pass). Default: the bundle's (the shipped Crafter model has guidance 2 distilled into one pass: 1).
    ``tile_hold=t`` (patch-autoencoder bundles): a tile whose latent moved less than t (RMS over channels,
    normalised units) from the latent its shown pixels came from keeps those pixels, so what the model left
    unchanged is shown exactly as before instead of re-decoded. With detail carry it holds still views instead:
    on a null action (no key, no camera) a cell whose latent is within t of its centre keeps its pixels, so
    standing still shows the same frame (the shipped Minetest model: 0.3). Default: the bundle's (0 = off).
    ``detail_carry=k``, ``carry_gate=g`` (residual models): the model's change, decode(frame) - decode(its
    centre), is added to the last shown frame moved by the camera, so detail the decoder blurs is kept; k < 1
    fades the difference from the model's decode, g (grey levels) shows strongly changed pixels as decoded.
    Default: the bundle's (the shipped Minetest model: 0.9 and 16; ``detail_carry=0`` turns it off).
    ``reencode=True``: each generated frame becomes context as the encoding of the frame shown, not as the
    sampled latent, which keeps long rollouts on the autoencoder's manifold (one encoder pass per step).
    Default: the bundle's.
    ``snap=True`` (bundles with a latent codebook): each generated latent token becomes its nearest codebook
    entry, a tile the game draws, before it is shown and kept as context. Default: the bundle's (the shipped
    Crafter model: on; ``snap=False`` turns it off). ``snap="sample"`` (bundles with a token head): where the
    head gives no group of entries more than ``certain`` (default the bundle's; the shipped model: 0.95) the
    token is drawn from its probabilities instead, so new ground is not always the commonest tile and the
    world does not freeze into it, at a cost in next-frame PSNR (docs/results.md: both measured).
    ``quantize="int8"`` (CPU): the world model's attention and MLP layers run as int8 dynamic-quantized
    GEMMs, faster on CPU at a small cost in fidelity (docs/results.md: both measured); ``"none"``: fp32. Default: None,
    the bundle's (``inference.quantize`` in bundle.json, on CPU only; the shipped Crafter model: int8).
    ``amp="bf16"`` (for GPUs): every model pass runs under ``torch.autocast`` to bfloat16 (not with int8).
    ``view_memory=N`` (camera models): the last N views made from where the player stands are kept, and
    turning back shows what they showed (``ViewMemory`` in worldsim/simulator.py); a key pressed clears them.
    Default: the bundle's (``inference.view_memory``); 0 turns it off.
    ``seed_floor=F`` (with nearest snap and a token head): on a frame whose commonest tile group covers a share
    F of its tokens, the cell of newly revealed ground the head is least sure of is drawn from the head, so an
    explorer's world does not fill with grass. Default: the bundle's (``decode.seed_floor``); 0 turns it off.
    ``map_memory`` (top-down games whose bundle describes the map, ``env.map``): ground that scrolled out of
    view and back in shows what it showed before (``MapMemory`` in worldsim/simulator.py). Default: the
    bundle's (``inference.map_memory``).
    ``new_ground="terrain"`` (with the map memory, nearest snap and a terrain prior in the bundle): ground a move
    brings into view that no one has seen is drawn from the terrain prior, tile groups as often as real worlds
    have them around such a view, instead of the model's likeliest tile (grass, into which an explorer's world
    froze); ``terrain_floor=F`` draws only where the view's commonest tile group covers a share F. Defaults: the
    bundle's (``decode.new_ground``, ``decode.terrain_floor``); ``"nearest"`` turns it off.
    ``light`` (bundles whose model draws the world without the game's light, ``env.light``, as the shipped
    Crafter model does): the frames are lit by each world's game clock
    as Crafter lights them, its 300-step day and night, the night's noise drawn from each step's sampling noise
    (so from ``np_random``; ``light_noise="mean"`` shows its mean); ``info["canvas"]`` holds the frame before
    the light. A bundle with ``env.sleep`` also leaves a sleeper's grey view to the env: its model draws the
    sleeping sprite in colour, and where it does the env greys the view as Crafter does. Context frames given lit
    are drawn back without the light (``envs/real_crafter.py: unlight``; by day to a grey level or two, at night
    what the noise covered is lost), so ``options={"clock": n}`` matters for them; a sleeper's grey view cannot be
    drawn back, so give a sleeper's context as canvases (``light=False``, and frames from
    ``RealCrafterEnv(light=False, grey_sleep=False)``). ``light=False`` shows the model's frames as drawn, and context
    frames given in the reset options are taken as such (what that env shows). Default:
    the bundle's (``inference.light``).
    ``fresh_window=k``: every k-th step the model's KV cache is rebuilt from its window of frames alone, as a reset
    builds it, instead of keeping each frame's keys as they were made (which carry history from further back than
    training showed; on Crafter it froze a player in place). 1: every step, which costs one more model pass over
    the window per step (Results: the freeze); 0: never. Default: the bundle's (``inference.fresh_window``).
    """

    metadata = {"render_modes": ["rgb_array", "human"], "render_fps": 15}

    def __init__(self, bundle: str | Path | None = None, render_mode: str | None = None, horizon: int = 10000,
                 sampling_steps: int | None = None, context_noise: float | None = None,
                 termination_threshold: float | None = None, device: str = "cpu", frame_size: tuple[int, int] | None = None,
                 default_bundle: str | Path | None = None, guidance: float | None = None,
                 tile_hold: float | None = None, quantize: str | None = None,
                 detail_carry: float | None = None, carry_gate: float | None = None, reencode: bool | None = None,
                 snap: bool | str | None = None, certain: float | None = None, amp: str | None = None,
                 view_memory: int | None = None, seed_floor: float | None = None,
                 map_memory: bool | None = None, new_ground: str | None = None,
                 terrain_floor: float | None = None, reward_floor: float | None = None, ticks: bool | list | None = None,
                 light: bool | None = None, light_noise: str | None = None, fresh_window: int | bool | None = None):
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None, got {render_mode!r}")
        self.render_mode, self.horizon, self.threshold = render_mode, int(horizon), _threshold(termination_threshold)
        self.action_space = _load(self, bundle, device, 1, sampling_steps, context_noise, frame_size, default_bundle,
                                  guidance, tile_hold, quantize, detail_carry, carry_gate, reencode, snap, certain, amp,
                                  view_memory, seed_floor, map_memory, new_ground, terrain_floor, ticks, light,
                                  light_noise, fresh_window)
        self.reward_floor = _reward_floor(reward_floor, self.bundle)
        self.observation_space = gym.spaces.Box(0, 255, self.sim.frame_shape, np.uint8)
        self._obs, self._t, self._window, self._done = None, 0, None, False
        self._events = np.zeros(len(self.event_names), np.int64)
        self._rest = np.zeros((1, 3))

    def get_state(self) -> WorldState:
        """This world's state now (see WorldState): ``set_state`` continues from it."""
        if self._obs is None:
            raise RuntimeError("call reset() before get_state(): there is no world yet")
        return WorldState(self.sim.row_state(0), self._obs.copy(), int(self._t), bool(self._done),
                          copy.deepcopy(self.np_random), copy.deepcopy(self._end_rng), _events_copy(self._events),
                          _rest_copy(self, self._rest[0]))

    def set_state(self, state: WorldState, seed: int | None = None):
        """Continue from a saved state (this env's or another's of the same bundle and settings); returns its
        observation. ``seed``: new sampling noise from this seed instead of the state's own generators."""
        state = _check_state(state)
        self.sim.load_rows([0], [state.sim])
        self._obs, self._t, self._done = state.obs.copy(), state.steps, state.done
        self.np_random, self._end_rng = state.generators(seed)
        self._events = _state_events(state, len(self.event_names))
        self._rest[0] = _state_rest(self, state)
        if self.render_mode == "human":
            self.render()
        return self._obs.copy()

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._end_rng = _end_draws(self.np_random)
        frames, actions, info = _start(self, self.action_space, options, self.np_random)
        canvas = _context_canvases(self.sim, frames[None], [info["clock"]], [info["start"]])
        self.sim.reset([0], frames[None], stack_actions([actions]),
                       self.np_random.standard_normal((1, len(frames), *self.sim.latent_shape)), [info["clock"]],
                       canvas=canvas)
        self._obs, self._t, self._done = (frames if canvas is None else canvas[0])[-1].copy(), 0, False
        self._events = np.zeros(len(self.event_names), np.int64)
        self._rest[0] = _rest_start(self, info["start"])
        if self.render_mode == "human":
            self.render()
        return self._obs.copy(), info

    def step(self, action):
        if self._obs is None:
            raise RuntimeError("call reset() before step()")
        action = _check_action(self.action_space, action)
        shape = (1, *self.sim.latent_shape)
        res = self.sim.step(stack_actions([action]), self.np_random.standard_normal(shape),
                            self.np_random.standard_normal(shape),
                            tick_uniform=self.np_random.random((1, len(self.tick_names))) if self.tick_names else None)
        self._obs, self._t = res.frames[0], self._t + 1
        terminated = bool(_ends(res.terminated_prob, self.threshold, [self._end_rng])[0])
        truncated = self._t >= self.horizon
        self._done = terminated or truncated
        if self.render_mode == "human":
            self.render()
        rest, expected = _rest_rewards(self, res, [self._end_rng], self._rest)
        reward = float(rest[0])
        info = {"terminated_prob": float(res.terminated_prob[0])}
        if expected is not None:
            info["reward_expected"] = float(expected[0])
        if self.event_names:
            happened, paid = _draw_events(res.event_prob, [self._end_rng], self._events[None])
            reward += self.event_reward * float(paid[0])
            info["events"] = [n for n, h in zip(self.event_names, happened[0]) if h]
            info["event_prob"] = res.event_prob[0]
            info["achievements"] = dict(zip(self.event_names, self._events.tolist()))
        if self.tick_names:
            info["ticks"] = [n for n, h in zip(self.tick_names, res.ticks[0]) if h]
            info["tick_prob"] = res.tick_prob[0]
        if res.canvas is not None:
            info["canvas"] = res.canvas[0]
        return self._obs.copy(), reward, terminated, truncated, info

    def render(self):
        if self._obs is None:
            return None
        if self.render_mode == "human":
            if self._window is None:
                from worldsim.play import FrameWindow

                self._window = FrameWindow(self.observation_space.shape[:2], scale=8, title="worldsim")
            self._window.show(self._obs)
            return None
        return self._obs.copy()

    def close(self):
        if self._window is not None:
            self._window.close()
            self._window = None


class WorldVectorEnv(gym.vector.VectorEnv):
    """``num_envs`` learned worlds stepped by one batched forward pass per denoising step (not N copies).

    Autoreset follows Gymnasium's default (NEXT_STEP): after a sub-env ends, the next ``step`` resets it
    to a default start and returns its first observation with reward 0; its action is ignored.
    ``reset(options=...)`` takes WorldEnv's options, for every world, or a list of them, one per world (each its
    own context; contexts of one call have the same length).
    ``get_state(i)`` saves world i (a ``WorldState``); ``set_state(state, indices)`` puts a state (one for all, or
    one per index) into those worlds: from one state, one batched ``step`` tries a different action in each
    world (with the state's own noise in every one, so they differ by the action alone), or with ``seed=`` draws
    different futures of the same action.
    """

    metadata = {"render_modes": ["rgb_array"], "autoreset_mode": AutoresetMode.NEXT_STEP, "render_fps": 15}

    def __init__(self, num_envs: int = 1, bundle: str | Path | None = None, render_mode: str | None = None,
                 horizon: int = 10000, sampling_steps: int | None = None, context_noise: float | None = None,
                 termination_threshold: float | None = None, device: str = "cpu", frame_size: tuple[int, int] | None = None,
                 default_bundle: str | Path | None = None, guidance: float | None = None,
                 tile_hold: float | None = None, quantize: str | None = None,
                 detail_carry: float | None = None, carry_gate: float | None = None, reencode: bool | None = None,
                 snap: bool | str | None = None, certain: float | None = None, amp: str | None = None,
                 view_memory: int | None = None, seed_floor: float | None = None,
                 map_memory: bool | None = None, new_ground: str | None = None,
                 terrain_floor: float | None = None, reward_floor: float | None = None, ticks: bool | list | None = None,
                 light: bool | None = None, light_noise: str | None = None, fresh_window: int | bool | None = None,
                 **kwargs):
        if kwargs:
            raise TypeError(f"unexpected arguments for WorldVectorEnv: {sorted(kwargs)}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array' for the vector env, got {render_mode!r}")
        self.num_envs, self.render_mode = int(num_envs), render_mode
        self.horizon, self.threshold = int(horizon), _threshold(termination_threshold)
        self.single_action_space = _load(self, bundle, device, self.num_envs, sampling_steps, context_noise,
                                         frame_size, default_bundle, guidance, tile_hold, quantize,
                                         detail_carry, carry_gate, reencode, snap, certain, amp, view_memory,
                                         seed_floor, map_memory, new_ground, terrain_floor, ticks, light, light_noise,
                                         fresh_window)
        self.reward_floor = _reward_floor(reward_floor, self.bundle)
        self.single_observation_space = gym.spaces.Box(0, 255, self.sim.frame_shape, np.uint8)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.rngs = [np.random.default_rng() for _ in range(self.num_envs)]
        self.end_rngs = [_end_draws(r) for r in self.rngs]
        self._obs = np.zeros((self.num_envs, *self.sim.frame_shape), np.uint8)
        self._t = np.zeros(self.num_envs, np.int64)
        self._autoreset = np.zeros(self.num_envs, bool)
        self._events = np.zeros((self.num_envs, len(self.event_names)), np.int64)
        self._rest = np.zeros((self.num_envs, 3))
        self._started = False

    def _reset_rows(self, rows, options=None):
        frames, actions, clocks, starts = [], [], [], []
        for i in rows:
            f, a, info = _start(self, self.single_action_space, options[i] if isinstance(options, list) else options,
                                self.rngs[i])
            frames.append(f), actions.append(a), clocks.append(info["clock"]), starts.append(info["start"])
        lengths = {len(f) for f in frames}
        if len(lengths) != 1:  # default starts all have the same length; a given context is shared by all rows
            raise ValueError("all reset contexts of one call must have the same length")
        noise = np.stack([self.rngs[i].standard_normal((len(frames[0]), *self.sim.latent_shape)) for i in rows])
        canvas = _context_canvases(self.sim, np.stack(frames), clocks, starts)
        self.sim.reset(rows, np.stack(frames), stack_actions(actions), noise, clocks, canvas=canvas)
        for k, (i, f, start) in enumerate(zip(rows, frames, starts)):
            self._obs[i], self._t[i] = (f if canvas is None else canvas[k])[-1], 0
            self._rest[i] = _rest_start(self, start)
        self._events[rows] = 0

    def get_state(self, index: int = 0) -> WorldState:
        """World `index`'s state now (see WorldState)."""
        if not self._started:
            raise RuntimeError("call reset() before get_state(): there are no worlds yet")
        index = int(index)
        if not 0 <= index < self.num_envs:
            raise IndexError(f"world {index} is out of range for {self.num_envs} worlds")
        return WorldState(self.sim.row_state(index), self._obs[index].copy(), int(self._t[index]),
                          bool(self._autoreset[index]), copy.deepcopy(self.rngs[index]),
                          copy.deepcopy(self.end_rngs[index]),
                          _events_copy(self._events[index]), _rest_copy(self, self._rest[index]))

    def set_state(self, state: WorldState | list[WorldState], indices=None, seed: int | list[int] | None = None):
        """Worlds `indices` (default: all) continue from saved states: one state for all of them, or a list, one
        per index. seed: new sampling noise instead of each state's own generators (an int gives world k of
        the indices seed + k, or a list one seed each). A world saved after its episode ended resets at the
        next step, as autoreset would have. Returns the observations of all worlds."""
        indices = list(range(self.num_envs)) if indices is None else [int(i) for i in np.atleast_1d(indices)]
        many = isinstance(state, (list, tuple))
        states = [_check_state(s) for s in state] if many else [_check_state(state)] * len(indices)
        if len(states) != len(indices):
            raise ValueError(f"{len(states)} states for {len(indices)} worlds (give one state, or one per index)")
        if not self._started and sorted(indices) != list(range(self.num_envs)):
            raise RuntimeError("call reset() first, or set the state of every world")
        seeds = _seeds(seed, len(indices))
        self.sim.load_rows(indices, [s.sim for s in states])
        for i, s, sd in zip(indices, states, seeds):
            self._obs[i], self._t[i], self._autoreset[i] = s.obs, s.steps, s.done
            self.rngs[i], self.end_rngs[i] = s.generators(sd)
            self._events[i] = _state_events(s, len(self.event_names))
            self._rest[i] = _state_rest(self, s)
        self._started = True
        return self._obs.copy()

    def reset(self, *, seed: int | list[int] | None = None, options: dict | None = None):
        seeds = _seeds(seed, self.num_envs)
        if isinstance(options, (list, tuple)):
            if len(options) != self.num_envs:
                raise ValueError(f"got {len(options)} reset options for {self.num_envs} envs (one dict per env, or one "
                                 "dict for all)")
            options = list(options)
        if seed is not None or not self._started:
            self.rngs = [np.random.default_rng(s) for s in seeds]
            self.end_rngs = [_end_draws(r) for r in self.rngs]
        self._reset_rows(list(range(self.num_envs)), options)
        self._autoreset[:] = False
        self._started = True
        return self._obs.copy(), {}

    def step(self, actions):
        if not self._started:
            raise RuntimeError("call reset() before step()")
        actions = check_actions(self.single_action_space, actions, self.num_envs)
        # each world draws from its own generator (its noise depends on its seed alone, not on the batch it is
        # in), both draws in one call: the sampler's noise, then the context noise. Its frames can still differ
        # with the batch beside it: int8's activation scale spans the batch, and fp32 sums may round otherwise
        # (README: Batch and reproducibility)
        draws = np.stack([r.standard_normal((2, *self.sim.latent_shape)) for r in self.rngs])
        noise, ctx = draws[:, 0], draws[:, 1]
        ticks = np.stack([r.random(len(self.tick_names)) for r in self.rngs]) if self.tick_names else None
        res = self.sim.step(actions, noise, ctx, tick_uniform=ticks)
        self._obs[:] = res.frames
        self._t += 1
        terminated = _ends(res.terminated_prob, self.threshold, self.end_rngs)  # drawn first, then the reward
        rewards, expected = _rest_rewards(self, res, self.end_rngs, self._rest)
        info = {"terminated_prob": res.terminated_prob}
        if expected is not None:
            info["reward_expected"] = expected
        if self.event_names:
            happened, paid = _draw_events(res.event_prob, self.end_rngs, self._events)
            rewards += self.event_reward * paid
            info["events"], info["event_prob"] = happened, res.event_prob
        if self.tick_names:
            info["ticks"], info["tick_prob"] = res.ticks, res.tick_prob
        if res.canvas is not None:
            info["canvas"] = res.canvas
        truncated = self._t >= self.horizon
        resetting = np.flatnonzero(self._autoreset)
        if len(resetting):  # NEXT_STEP autoreset: these rows start over; their step result is discarded
            self._reset_rows(resetting.tolist())
            rewards[resetting], terminated[resetting], truncated[resetting] = 0.0, False, False
            if self.event_names:
                info["events"][resetting] = False
            if self.tick_names:
                info["ticks"][resetting] = False
            if "canvas" in info:  # the new start's last context frame, as the model reads it
                info["canvas"][resetting] = self.sim.shown[resetting].cpu().numpy()
        self._autoreset = terminated | truncated
        if self.event_names:  # counts this episode (a world reset here starts its new episode at 0)
            info["achievements"] = self._events.copy()
        return self._obs.copy(), rewards, terminated, truncated, info

    def render(self):
        return self._obs.copy() if self.render_mode == "rgb_array" else None


# ---- shared helpers ------------------------------------------------------------------------------------


def _seeds(seed, n: int) -> list:
    """One seed per world: None for none, an int s for s, s + 1, ..., or a list of n."""
    if seed is None:
        return [None] * n
    if isinstance(seed, (int, np.integer)):
        return [int(seed) + i for i in range(n)]
    seeds = list(seed)
    if len(seeds) != n:
        raise ValueError(f"got {len(seeds)} seeds for {n} worlds")
    return seeds


def _threshold(t):
    if t is None:
        return None
    t = float(t)
    if np.isnan(t):
        raise ValueError("termination_threshold must be a number or None (draw ends with the head's probability)")
    return t


def _reward_floor(floor, bundle) -> float:
    """The env's reward floor: the argument, else the bundle's `inference.reward_floor`, else 0 (every value)."""
    given = (bundle.meta.get("inference") or {}).get("reward_floor", 0.0) if floor is None else floor
    try:
        floor = float(given)
    except (TypeError, ValueError):
        floor = float("nan")
    if isinstance(given, bool) or not np.isfinite(floor) or floor < 0:
        raise ValueError(f"reward_floor must be a number >= 0 (0: every reward the head gives), got {given!r}")
    return floor


def _floored(reward: np.ndarray, floor: float) -> np.ndarray:
    """The reward head's values as float64, those under `floor` in size set to 0."""
    reward = np.asarray(reward, np.float64)
    return np.where(np.abs(reward) < floor, 0.0, reward) if floor > 0 else reward


def _end_draws(rng: np.random.Generator) -> np.random.Generator:
    """The generator a world's ends are drawn from: spawned from its noise generator's seed sequence, which
    draws nothing from that stream, so the same seed gives the same frames whether ends are drawn or not."""
    return np.random.default_rng(rng.bit_generator.seed_seq.spawn(1)[0])


def _ends(prob: np.ndarray, threshold: float | None, rngs: list) -> np.ndarray:
    """Which rows end: probability above the threshold, or with no threshold each drawn with its probability."""
    if threshold is not None:
        return prob > threshold
    return np.array([r.random() < p for r, p in zip(rngs, prob)], bool)


def _draw_events(prob: np.ndarray, rngs: list, counts: np.ndarray):
    """Each row's events drawn with their probabilities (B, K), each from its row's end generator; counts (B, K)
    are updated in place. Returns (happened (B, K) bool, paid (B,) float: 1 where an event happened for the
    first time in the episode)."""
    happened = np.stack([r.random(prob.shape[1]) < p for r, p in zip(rngs, prob)])
    paid = (happened & (counts == 0)).any(1).astype(np.float64)
    counts += happened
    return happened, paid


def _rest_rewards(env, res, rngs: list, rest: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """What a step pays besides events, (B,) float64, and its expectation (None without reward classes). With
    reward classes one value is drawn per row (as the game pays whole health points; no floor needed), among
    those that keep the episode's running sum within the bundle's `rest_sum_range` (`rest`: (B, 3) each row's
    running sum and bounds, `_rest_start`, updated in place); without them the reward head's values over the
    env's floor."""
    if res.reward_prob is None:
        return _floored(res.reward, env.reward_floor), None
    values = np.asarray(env.sim.dit.config.reward_values, np.float64)
    prob = np.asarray(res.reward_prob, np.float64)
    if env.rest_range is not None:
        prob = prob * _fits(rest, values, env.rest_range[1] - env.rest_range[0])
        # where the head gives no weight to any value that fits, pay 0 (it always fits: `_rest_range` checks it)
        prob[prob.sum(1) <= 0, np.argmin(np.abs(values))] = 1.0
    prob = prob / prob.sum(1, keepdims=True)
    drawn = _draw_values(prob, rngs, values)
    if env.rest_range is not None:
        rest[:, 0] += drawn
        rest[:, 1], rest[:, 2] = np.minimum(rest[:, 1], rest[:, 0]), np.maximum(rest[:, 2], rest[:, 0])
    return drawn, prob @ values


def _fits(rest: np.ndarray, values: np.ndarray, width: float) -> np.ndarray:
    """(B, V) whether each value keeps each row's running sum (`rest` (B, 3): sum, lowest, highest) within a
    span of `width`."""
    after = rest[:, :1] + values[None]
    return np.maximum(rest[:, 2:3], after) - np.minimum(rest[:, 1:2], after) <= width + 1e-9


def _rest_range(bundle) -> tuple[float, float] | None:
    """The bundle's `rest_sum_range` ([lo, hi], bundle.json's env; `worldsim heads` measures it), for bundles
    with reward classes: the range the running sum of the rest of the reward took in real episodes, each from 0
    at its start. Why: what it sums is a bounded quantity (Crafter: health, 9 points, paid in tenths as it
    changes), so a real episode pays at most -0.9 of it, and never more than it lost back; drawn step by step
    with no memory, a long dark spell in the learned world paid a blow after blow (docs/results.md: Training an agent)."""
    given = bundle.env.get("rest_sum_range")
    if given is None or not bundle.dit.config.reward_values:
        return None
    try:
        lo, hi = (float(x) for x in given)
    except (TypeError, ValueError):
        lo = hi = float("nan")
    if not (np.isfinite(lo) and np.isfinite(hi) and lo <= 0 <= hi):
        raise ValueError(f"{bundle.path}: bundle.json's env.rest_sum_range must be [lo, hi] with lo <= 0 <= hi, got {given!r}")
    if not np.isclose(bundle.dit.config.reward_values, 0.0).any():
        raise ValueError(f"{bundle.path}: env.rest_sum_range needs 0 among the reward classes (a step that pays nothing "
                         f"always fits), got {list(bundle.dit.config.reward_values)}")
    return lo, hi


def _rest_start(env, start: str) -> np.ndarray:
    """A world's rest-reward state at reset: [running sum, lowest, highest], where a value fits while the span
    from lowest to highest stays within the range's width. From a shipped start (the game's own beginning) the
    sum is known to start at 0, so the bounds start at the range itself; from a caller's context ("context",
    "image") only the width is known."""
    if env.rest_range is None or start in ("context", "image"):
        return np.zeros(3)
    return np.array([0.0, *env.rest_range])


def _rest_copy(env, rest: np.ndarray) -> np.ndarray | None:
    return rest.copy() if env.rest_range is not None else None


def _state_rest(env, state: "WorldState") -> np.ndarray:
    """A state's rest-reward sum and bounds (a state saved without them: what a caller's context starts with)."""
    if env.rest_range is None or state.rest is None:
        return np.zeros(3)
    return np.asarray(state.rest, np.float64).copy()


def _draw_values(prob: np.ndarray, rngs: list, values) -> np.ndarray:
    """(B,) float64 one of `values` per row, drawn with its row's probabilities (B, V) from its end generator."""
    cum = np.cumsum(np.asarray(prob, np.float64), axis=1)
    idx = [min(int(np.searchsorted(c, r.random() * c[-1], side="right")), len(c) - 1) for r, c in zip(rngs, cum)]
    return np.asarray(values, np.float64)[idx]


def event_pay_chance(prob: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """(B,) the chance a step pays the event reward as the env draws its events: that some event not seen
    before in the episode (`seen` (B, K) bool) happens, each with its probability (B, K). What a planner
    expects a step to pay, and what `worldsim eval` sums against the steps the game paid."""
    return 1 - np.prod(np.where(seen, 1.0, 1 - np.asarray(prob, np.float64)), axis=1)


def _events_copy(events: np.ndarray) -> np.ndarray | None:
    """A world's event counts for its saved state (None for a bundle without event heads)."""
    return events.copy() if len(events) else None


def _state_events(state: "WorldState", K: int) -> np.ndarray:
    """A state's event counts for a world with K event heads (a fingerprint already matched the bundle)."""
    if not K:
        return np.zeros(0, np.int64)
    if state.events is None or len(state.events) != K:
        raise ValueError(f"the state holds no counts for this bundle's {K} events")
    return np.asarray(state.events, np.int64).copy()


def _start(env, action_space, options, rng):
    """Context frames (T, H, W, 3), actions (T-1,) and info for a reset, from options or a shipped start;
    info["clock"] is the game step of the last context frame."""
    options = dict(options or {})
    unknown = set(options) - OPTION_KEYS
    if unknown:
        raise ValueError(f"unknown reset option(s) {sorted(unknown)}; valid: {sorted(OPTION_KEYS)}")
    frames, acts, info = _context(env, action_space, options, rng)
    clock = options.get("clock", len(frames) - 1)
    if not isinstance(clock, (int, np.integer)) or isinstance(clock, bool) or clock < len(frames) - 1:
        raise ValueError(f"options['clock'] must be an integer >= {len(frames) - 1}: the game step of the last of the "
                         f"{len(frames)} context frames (the first at step clock - {len(frames) - 1}); got {clock!r}")
    return frames, acts, {**info, "clock": int(clock)}


def _context(env, action_space, options, rng):
    """_start's frames, actions and info, before the clock."""
    shape, W = env.sim.frame_shape, env.sim.window
    if "image" in options:
        if "context_frames" in options:
            raise ValueError("give either options['image'] or options['context_frames'], not both")
        frames = _check_frames(np.asarray(options["image"])[None], shape, "options['image']", single=True)
        return frames, _no_actions(action_space), {"start": "image"}
    if "context_frames" in options:
        frames = _check_frames(np.asarray(options["context_frames"]), shape, "options['context_frames']")
        if len(frames) > W:
            raise ValueError(f"options['context_frames'] has {len(frames)} frames, more than the model's window of {W}")
        acts = options.get("context_actions")
        if acts is None:
            if len(frames) > 1:
                raise ValueError(f"options['context_actions'] is required with {len(frames)} context frames "
                                 f"(one action between each pair: {len(frames) - 1})")
            acts = []
        elif isinstance(acts, dict):  # a dict of per-key arrays, as stored in episodes
            n = {len(v) for v in acts.values()}
            acts = [{k: np.asarray(v)[i] for k, v in acts.items()} for i in range(n.pop())] if len(n) == 1 else None
            if acts is None:
                raise ValueError("options['context_actions'] arrays have different lengths")
        acts = list(acts) if not isinstance(acts, np.ndarray) or acts.ndim else [acts]
        if len(acts) != len(frames) - 1:
            raise ValueError(f"options['context_actions'] has {len(acts)} actions; expected {len(frames) - 1} "
                             f"(one between each pair of the {len(frames)} context frames)")
        checked = []
        for i, a in enumerate(acts):
            try:
                checked.append(_check_action(action_space, a))
            except ValueError as e:
                raise ValueError(f"options['context_actions'][{i}]: {e}") from None
        acts = checked
        return frames, (stack_actions(acts) if acts else _no_actions(action_space)), {"start": "context"}
    if "context_actions" in options:
        raise ValueError("options['context_actions'] given without options['context_frames']")
    n = len(env.bundle.start_frames)
    idx = options.get("start_index")
    idx = int(rng.integers(n)) if idx is None else int(idx)
    if not 0 <= idx < n:
        raise ValueError(f"options['start_index']={idx} is out of range: the model ships {n} start states")
    frames, acts = env.bundle.start_frames[idx].numpy(), env.bundle.start_actions
    acts = {k: v[idx].numpy() for k, v in acts.items()} if isinstance(acts, dict) else acts[idx].numpy()
    if frames.shape[1:] != tuple(shape):  # running at another frame size than the model trained at
        frames = fit_frames(frames, shape[:2])
    return frames, acts, {"start": f"shipped:{idx}"}


def _context_canvases(sim, frames: np.ndarray, clocks, starts):
    """With ``light=False`` a canvas bundle's env shows the frames before the light, so context frames given in
    the reset options are taken as such; the shipped start frames are lit and are drawn back without it. None
    where the env shows lit frames (the simulator works their canvases out itself)."""
    if not sim.canvas_model or sim.light:
        return None
    out = frames.copy()
    lit = [i for i, start in enumerate(starts) if start not in ("image", "context")]
    if lit:
        out[lit] = unlit_context(frames[lit], [clocks[i] for i in lit])
    return out


def _no_actions(space: gym.Space):
    if isinstance(space, gym.spaces.Dict):
        return {k: np.zeros((0, *sub.shape), sub.dtype if isinstance(sub, gym.spaces.Box) else np.int64)
                for k, sub in space.spaces.items()}
    return np.zeros((0, *space.shape), np.int64)


def _check_frames(frames: np.ndarray, shape, name, single=False) -> np.ndarray:
    want = f"uint8 array of shape {shape}" if single else f"uint8 array of shape (T, {', '.join(map(str, shape))})"
    if frames.dtype != np.uint8:
        raise ValueError(f"{name} must be a {want}, got dtype {frames.dtype}")
    if frames.ndim != 4 or tuple(frames.shape[1:]) != tuple(shape) or len(frames) == 0:
        got = frames.shape[1:] if single else frames.shape
        raise ValueError(f"{name} must be a {want}, got shape {got}")
    return frames
