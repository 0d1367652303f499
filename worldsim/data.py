"""Episodes on disk.

Format (one directory per dataset):

    DATA/
      manifest.json            {"format": "worldsim-episodes/1", "env": {...}, "episodes": [{...}, ...]}
      episodes/ep_000123.npz   one compressed NumPy archive per episode (no pickled objects)

Each episode file holds, for an episode of T steps:

    frames      uint8   (T+1, H, W, 3)  observation before each step, and the last one
    actions     int64   (T,) for Discrete envs (or (T, ...) for other action spaces)
                        actions[i] is taken between frames[i] and frames[i+1]
    action$KEY  for Dict action spaces (MineRL's keyboard + camera), one array per key instead of
                `actions`, named as in MineRL's own rendered.npz: action$forward int64 (T,),
                action$camera float32 (T, 2) [pitch, yaw] degrees, ...; read back as a dict
    rewards     float32 (T,)            reward of step i
    terminated  bool    (T,)            True only on the step that ended the episode (death)
    seed        int64   ()              the world seed
    gui_open    bool    (T+1,)          optional (imported data): frames showing an inventory/menu screen
    clock_start int64   ()              optional: the game's step at frames[0] (default 0: the game began there)
    events      uint8   (T, E)          optional: which of the manifest's env.events (Crafter's achievements)
                                        happened on each step
    counters    int16   (T+1, K)        optional: the manifest's env.counters (Crafter's health, food, drink,
                                        energy) at each frame, read from the game; their rises and falls are
                                        the ticks a world model with ticks reads (tick_names)

An episode that reached its length limit is simply not terminated (truncated). Files are written to a
temporary name and renamed, so a killed job never leaves a half-written episode under its final name;
a corrupt or truncated file found anyway is skipped with a warning.
"""
from __future__ import annotations

import json
import os
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

FORMAT = "worldsim-episodes/1"
KEYS = ("frames", "actions", "rewards", "terminated")
DICT_PREFIX = "action$"


def num_steps(actions) -> int:
    """Number of steps in an action array, or in a dict of per-key arrays (Dict action spaces)."""
    if isinstance(actions, dict):
        lengths = {len(v) for v in actions.values()}
        if len(lengths) != 1:
            raise ValueError(f"action arrays have different lengths: { {k: len(v) for k, v in actions.items()} }")
        return lengths.pop()
    return len(actions)


def stack_actions(rows: list):
    """A list of actions (or action sequences), each an array/scalar or a dict of them -> one batch."""
    if not rows:
        return np.zeros((0,), np.int64)
    if isinstance(rows[0], dict):
        return {k: np.stack([np.asarray(r[k]) for r in rows]) for k in rows[0]}
    return np.stack([np.asarray(r) for r in rows])


def index_actions(actions, idx):
    """actions[idx] for an array or a dict of per-key arrays."""
    if isinstance(actions, dict):
        return {k: v[idx] for k, v in actions.items()}
    return actions[idx]


def episode_path(root: Path, index: int) -> Path:
    return Path(root) / "episodes" / f"ep_{index:06d}.npz"


def atomic_write_bytes(path: Path, write_fn) -> None:
    """Call write_fn(file) on a temp file in the target's directory, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_episode(path: Path, frames, actions, rewards, terminated, seed: int = -1, **extra) -> None:
    """Write one episode atomically. `actions` is an array, or a dict of per-key arrays (Dict spaces);
    `extra` arrays (e.g. gui_open) are stored alongside."""
    frames = np.asarray(frames, dtype=np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (T+1, H, W, 3) uint8, got {frames.shape}")
    T = len(frames) - 1
    arrays = dict(frames=frames, rewards=np.asarray(rewards, dtype=np.float32),
                  terminated=np.asarray(terminated, dtype=bool), seed=np.int64(seed))
    if isinstance(actions, dict):
        arrays.update({DICT_PREFIX + k: np.asarray(v) for k, v in actions.items()})
    else:
        arrays["actions"] = np.asarray(actions)
    for k, v in arrays.items():
        if (k.startswith(DICT_PREFIX) or k in ("actions", "rewards", "terminated")) and len(v) != T:
            raise ValueError(f"{k} has length {len(v)}, expected {T} (one per step)")
    arrays.update({k: np.asarray(v) for k, v in extra.items()})
    atomic_write_bytes(path, lambda f: np.savez_compressed(f, **arrays))


def read_episode(path: Path) -> dict:
    """Load one episode; raises ValueError naming the file if it is corrupt or inconsistent."""
    try:
        with np.load(path, allow_pickle=False) as z:
            ep = {k: z[k] for k in z.files if not k.startswith(DICT_PREFIX) and k != "actions"}
            keyed = {k[len(DICT_PREFIX):]: z[k] for k in z.files if k.startswith(DICT_PREFIX)}
            ep["actions"] = keyed if keyed else z["actions"]
            missing = [k for k in KEYS if k not in ep]
            if missing:
                raise KeyError(f"missing {missing}")
            ep["seed"] = int(ep["seed"]) if "seed" in ep else -1
        T = num_steps(ep["actions"])
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
        raise ValueError(f"corrupt episode file {path}: {e}") from e
    if ep["frames"].ndim != 4 or len(ep["frames"]) != T + 1 or len(ep["rewards"]) != T or len(ep["terminated"]) != T:
        raise ValueError(f"inconsistent episode file {path}: frames {ep['frames'].shape}, {T} actions")
    return ep


def load_manifest(root: Path) -> dict:
    p = Path(root) / "manifest.json"
    if not p.exists():
        return {"format": FORMAT, "env": {}, "episodes": []}
    m = json.loads(p.read_text())
    if m.get("format") != FORMAT:
        raise ValueError(f"{p}: unknown format {m.get('format')!r}, expected {FORMAT!r}")
    return m


def save_manifest(root: Path, manifest: dict) -> None:
    data = json.dumps(manifest, indent=1).encode()
    atomic_write_bytes(Path(root) / "manifest.json", lambda f: f.write(data))


def load_episodes(root: Path, split: str | None = None, min_steps: int = 1) -> list[dict]:
    """All readable episodes of a dataset (optionally one split), skipping corrupt files with a warning."""
    root = Path(root)
    manifest = load_manifest(root)
    entries = manifest["episodes"] or [{"file": str(p.relative_to(root))}
                                       for p in sorted((root / "episodes").glob("ep_*.npz"))]
    out = []
    for e in entries:
        if split is not None and e.get("split", "train") != split:
            continue
        try:
            ep = read_episode(root / e["file"])
        except (ValueError, FileNotFoundError) as err:
            warnings.warn(f"skipping episode: {err}", stacklevel=2)
            continue
        if (manifest.get("env") or {}).get("light") and "canvas" not in ep:
            # collected without the game's light (collect light=false): the frames are the canvases a model under
            # the env's light reads, so jobs that start it from real context take them as such (not unlit again)
            ep["canvas"] = ep["frames"]
        if num_steps(ep["actions"]) >= min_steps:
            out.append(ep)
    return out


def fit_frames(frames: np.ndarray, size) -> np.ndarray:
    """(n, h, w, 3) uint8 -> (n, H, W, 3): center-crop the longer side to H:W, then antialiased resize."""
    H, W = size
    n, h, w, _ = frames.shape
    if w * H > h * W:  # too wide (16:9 source, 4:3 target): trim left and right
        cw = max(1, round(h * W / H))
        frames = frames[:, :, (w - cw) // 2:(w - cw) // 2 + cw]
    elif w * H < h * W:  # too tall: trim top and bottom
        ch = max(1, round(w * H / W))
        frames = frames[:, (h - ch) // 2:(h - ch) // 2 + ch]
    if frames.shape[1:3] == (H, W):
        return np.ascontiguousarray(frames)
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    # antialias=True low-passes when shrinking (plain bilinear would alias 5x downscales) and is plain
    # bilinear when enlarging (MineRL's 64x64).
    y = F.interpolate(x, size=(H, W), mode="bilinear", antialias=True, align_corners=False)
    return y.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def episode_clock(ep: dict, i=0):
    """The game's step count at frame i of an episode (its clock_start, 0 by default, plus i)."""
    return int(ep.get("clock_start", 0)) + i


def tick_names(counters: list) -> list[str]:
    """The tick types of a game's counters (the manifest's env.counters): each counter's fall, then its rise."""
    return [f"{c}_{way}" for c in counters for way in ("down", "up")]


def tick_selection(on, names: list, what: str = "ticks"):
    """A ticks setting: True, False, or the tick types to draw, any sequence of `names` (a Hydra ListConfig, a
    tuple) -> bool or list[str]; a name not in `names`, or anything else, is refused by `what`."""
    if not isinstance(on, (bool, np.bool_, str, dict)) and hasattr(on, "__iter__"):
        on = [str(n) for n in on]
        bad = [n for n in on if n not in names]
        if bad:
            raise ValueError(f"{what} names tick types {bad!r} this bundle does not have; its are {names}")
        return on
    if not isinstance(on, (bool, np.bool_)):
        raise ValueError(f"{what} must be true, false, null (the bundle's default) or a list of tick types "
                         f"(this bundle's: {names}), got {on!r}")
    return bool(on)


def episode_ticks(ep: dict) -> np.ndarray:
    """(T, 2K) float32 0/1: which counter fell or rose on each step (tick_names' order), from `counters`."""
    d = np.diff(np.asarray(ep["counters"], np.int64), axis=0)
    return np.stack([d < 0, d > 0], axis=-1).reshape(len(d), -1).astype(np.float32)


def ticks_since(ticks: np.ndarray) -> np.ndarray:
    """(T, K) ticks -> (T, K) int64: at each step, the steps since that tick type last happened, counting a
    tick just before the episode's first step (a new game's hidden clocks start at zero), so step j after a
    tick at step i reads j - i. What the env's tick head reads (TickHead): a hunger clock's next tick is
    due a fixed number of steps after its last."""
    T, K = ticks.shape
    last = np.full(K, -1, np.int64)
    out = np.zeros((T, K), np.int64)
    for j in range(T):
        out[j] = j - last
        last = np.where(ticks[j] > 0, j, last)
    return out


def still_steps(ep: dict, threshold: float = 1.0) -> np.ndarray:
    """(T,) bool: steps that took an action (not the null one: some key or value non-zero) yet left the frame
    unchanged (mean absolute change under `threshold` grey levels): Crafter's blocked moves and "do" on
    nothing, walking into a wall. Night's render noise stays under the threshold."""
    change = np.abs(np.diff(ep["frames"].astype(np.int16), axis=0)).mean(axis=(1, 2, 3))
    acts = ep["actions"]
    parts = acts.values() if isinstance(acts, dict) else [acts]
    acted = np.stack([np.asarray(a).reshape(len(change), -1).any(1) for a in parts]).any(0)
    return acted & (change < threshold)


def _share_weight(share: float, windows: int, count):
    """The weight that draws `count` windows of `windows` about a share `share` of the time; a count under 20
    counts as 20, so a few windows are not drawn hundreds of times each (event_weights, action_weights)."""
    return share * windows / np.maximum(count, 20)


class WindowDataset(torch.utils.data.Dataset):
    """Fixed-length windows of `length` frames cut from episodes, with the action that led to each frame.

    has_action[i] is False only for the first frame of an episode (nothing led to it); has_transition marks
    frames whose reward/termination targets are real; clock is each frame's game step (episode_clock).
    Episodes with `counters` also give ticks (L, 2K), the ticks of the step into each frame (episode_ticks;
    zeros where no step led to it), and tick_since (L, 2K), ticks_since at that step.
    """

    def __init__(self, episodes: list[dict], length: int, latents: list[torch.Tensor] | None = None,
                 mark_still: bool = False, still_threshold: float = 1.0):
        self.episodes, self.length, self.latents = episodes, length, latents
        self.index = [(e, s) for e, ep in enumerate(episodes) for s in range(len(ep["frames"]) - length + 1)]
        if not self.index:
            raise ValueError(f"no episode has {length} frames; collect longer episodes or shorten the window")
        # mark_still: items carry "still" (the last frame follows a still step: still_steps)
        self.still_threshold = still_threshold
        self.still = [still_steps(ep, still_threshold) for ep in episodes] if mark_still else None
        with_counters = {"counters" in ep for ep in episodes}
        if len(with_counters) > 1:
            raise ValueError("some episodes have counters (collected with env.counters) and some do not: train ticks "
                             "on collections that all record them")
        self.ticks = [episode_ticks(ep) for ep in episodes] if with_counters == {True} else None
        self.since = None if self.ticks is None else [ticks_since(t) for t in self.ticks]

    def __len__(self):
        return len(self.index)

    def still_weights(self, weight: float) -> torch.Tensor:
        """Sampling weight per window: `weight` where the window's last frame follows a still step
        (still_steps), else 1."""
        still = self.still or [still_steps(ep, self.still_threshold) for ep in self.episodes]
        return torch.tensor([weight if still[e][s + self.length - 2] else 1.0 for e, s in self.index],
                            dtype=torch.float64)

    def tick_weights(self, weight: float) -> torch.Tensor:
        """Sampling weight per window: `weight` where the window's last step ticks (episodes with counters), else 1."""
        if self.ticks is None or self.length < 2:
            return torch.ones(len(self.index), dtype=torch.float64)
        return torch.tensor([weight if self.ticks[e][s + self.length - 2].any() else 1.0 for e, s in self.index],
                            dtype=torch.float64)

    def action_weights(self, shares: dict) -> torch.Tensor:
        """Sampling weight per window so that windows whose last step took action k (a discrete action's index)
        are drawn about a share shares[k] of the time: weighted share * windows / (windows ending on k), at least
        1; a window whose action has no share weighs 1. Why: an action the collecting agents seldom took is drawn
        in so few batches that a fine-tune does not learn what it does (as event_weights for events). An action
        seen in fewer than 20 windows counts as 20. Windows of one frame (no step) weigh 1."""
        L = self.length
        w = torch.ones(len(self.index), dtype=torch.float64)
        if L < 2 or not shares:
            return w
        if isinstance(self.episodes[0]["actions"], dict):
            raise ValueError("action shares are for discrete actions; these episodes' actions are a Dict")
        last = np.array([int(self.episodes[e]["actions"][s + L - 2]) for e, s in self.index])
        for k, share in shares.items():
            ends = last == int(k)
            if ends.any():
                w[torch.as_tensor(ends)] = max(1.0, float(_share_weight(share, len(self.index), int(ends.sum()))))
        return w

    def event_weights(self, share: float) -> torch.Tensor:
        """Sampling weight per window so that each event type (episodes collected with `events`, e.g. Crafter's
        achievements) ends about a share `share` of the windows drawn: a window whose last transition has
        event k is weighted share * windows / (windows ending on k), at least 1 (the largest over its events).
        Why: a rare event whose frame change is plain once seen (Crafter's waking: 56 in 17,000 steps) is drawn
        in so few batches that a fine-tune never learns it; common events (drinking, 5 %) keep weight 1.
        An event seen in fewer than 20 windows counts as 20, so one window is not drawn hundreds of times.
        The shares come out a little under `share` (the weights raise the total too). Episodes without events,
        and windows of one frame (no transition), weigh 1."""
        eps, L = self.episodes, self.length
        if L < 2:
            return torch.ones(len(self.index), dtype=torch.float64)
        last = [eps[e]["events"][s + L - 2].astype(bool) if "events" in eps[e] else None for e, s in self.index]
        sizes = {len(v) for v in last if v is not None}
        if len(sizes) > 1:
            raise ValueError(f"the episodes' event lists differ in length ({sorted(sizes)}): collections of one game")
        w = torch.ones(len(self.index), dtype=torch.float64)
        if not sizes:
            return w
        k = sizes.pop()
        has = np.array([v if v is not None else np.zeros(k, bool) for v in last])
        counts = has.sum(0)
        per = np.where(counts > 0, _share_weight(share, len(self.index), counts), 1.0)  # (K,)
        return torch.as_tensor(np.maximum(1.0, (has * per).max(1)), dtype=torch.float64)

    def __getitem__(self, i):
        e, s = self.index[i]
        ep, L = self.episodes[e], self.length
        prev = np.arange(s - 1, s + L - 1)  # step index that led to each frame
        valid = prev >= 0
        p = np.clip(prev, 0, None)
        def pick(a):  # the action that led to each frame; zeros where none did
            return torch.as_tensor(np.where(valid.reshape(-1, *[1] * (a.ndim - 1)), a[p], 0))

        acts = ep["actions"]
        item = {
            "actions": {k: pick(v) for k, v in acts.items()} if isinstance(acts, dict) else pick(acts),
            "has_action": torch.as_tensor(valid),
            "reward": torch.as_tensor(np.where(valid, ep["rewards"][p], 0), dtype=torch.float32),
            "terminated": torch.as_tensor(np.where(valid, ep["terminated"][p], False)),
            "has_transition": torch.as_tensor(valid),
            "clock": torch.arange(s, s + L) + episode_clock(ep),
        }
        if self.still is not None:
            item["still"] = torch.tensor(bool(self.still[e][s + L - 2]))
        if self.ticks is not None:
            item["ticks"] = torch.as_tensor(np.where(valid[:, None], self.ticks[e][p], 0), dtype=torch.float32)
            item["tick_since"] = torch.as_tensor(np.where(valid[:, None], self.since[e][p], 0))
        if self.latents is not None:
            item["latents"] = self.latents[e][s:s + L]
        else:
            item["frames"] = torch.as_tensor(ep["frames"][s:s + L])
        return item
