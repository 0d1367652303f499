"""`worldsim import vpt|minerl SRC`: convert recorded human Minecraft play into worldsim episodes.

Both sources become episodes in MineRL 1.0's action space (`minerl_action_space()`): one int64 array per
button key and a float32 (T, 2) `camera` [pitch, yaw] in degrees, stored as `action$KEY` (see data.py).
Frames are center-cropped to the target aspect ratio (the longer side is trimmed, nothing is squashed),
then resized with an antialiased filter: VPT's 640x360 (16:9) becomes 480x360 (4:3), then 128x96.

VPT contractor data (OpenAI Video-PreTraining)
    SRC is a folder searched recursively for `NAME.mp4` with `NAME.jsonl` beside it, or an index file
    `{"basedir": ..., "relpaths": ["data/6.13/NAME.mp4", ...]}` (VPT's published index files; a relative
    basedir, or a URL one, is taken as the index file's own folder, where the files must already be
    downloaded). Video is 640x360 at 20 fps; jsonl line i is the input recorded while frame i was shown.
    The conversion follows VPT's own loader (data_loader.py + json_action_to_env_action):
    keys w/s/a/d/space/left.shift/left.control/e/escape/q/f/1-9 -> forward/back/left/right/jump/sneak/
    sprint/inventory/ESC/drop/swapHands/hotbar.N; mouse buttons 0/1/2 -> attack/use/pickItem;
    camera = (dy, dx) * 360/2400 degrees (kept as float; VPT's loader truncates it to int by accident);
    a change of the `hotbar` field sets hotbar.{new+1} on that step (scroll-wheel changes are not
    recorded as keys); an attack held from the first frame (a recorder glitch) is dropped until attack is
    pressed anew. Unlike VPT's behavioural cloning we keep no-op steps: the world model needs every frame.
    `isGuiOpen` is kept per frame as `gui_open` (the recordings have no mouse cursor drawn in; VPT draws
    one, we only flag those frames). No rewards (all 0); no deaths are marked (terminated all False).

MineRL v0.4 dataset
    SRC is a folder searched recursively for trajectory folders holding `recording.mp4` and
    `rendered.npz` (`action$forward`, `action$camera`, ..., `reward`, `observation$...` ignored), and
    optionally `metadata.json`. As in MineRL's DataPipeline, the npz holds T actions and rewards for T+1
    states, action i / reward i belonging to the transition from state i to i+1, and the states are the
    LAST T+1 video frames (the video may start before the experiment: `true_video_frame_count` in
    metadata.json, or the frame count, minus T+1 leading frames are skipped). Keys with a MineRL 1.0
    name map as is; missing ones are 0; the enum actions craft/equip/nearbyCraft/nearbySmelt have no 1.0
    counterpart and are dropped, except `place` != none, which is a right click and becomes `use`.
    Episodes end by success, death or timeout and the data does not say which: terminated all False.

Output: `out/manifest.json` + `out/episodes/ep_NNNNNN.npz`, resumable (inputs whose episode is already
on disk are skipped: each episode file records its input as `source`), every `test_every`-th episode in
the "test" split. An input that cannot be decoded is skipped with a warning naming it.
"""
from __future__ import annotations

import collections
import itertools
import json
import warnings
import zipfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from worldsim.model import space_to_spec
from worldsim.collect import action_counts, print_histograms
from worldsim.data import episode_path, fit_frames, load_manifest, read_episode, save_manifest, write_episode

from worldsim.envs import minerl_actions as _minerl
from worldsim.envs.minerl_actions import action_space as minerl_action_space  # noqa: F401  (re-exported)

MINERL_BUTTONS = _minerl.KEYS
MINERL_KEYS = (*MINERL_BUTTONS, "camera")


SOURCES = ("vpt", "minerl")
F32 = np.float32
FPS = 20

# VPT: jsonl key name -> MineRL action; mouse button index -> action.
VPT_KEYS = {"key.keyboard.w": "forward", "key.keyboard.s": "back", "key.keyboard.a": "left", "key.keyboard.d": "right",
            "key.keyboard.space": "jump", "key.keyboard.left.shift": "sneak", "key.keyboard.left.control": "sprint",
            "key.keyboard.e": "inventory", "key.keyboard.escape": "ESC", "key.keyboard.q": "drop",
            "key.keyboard.f": "swapHands", **{f"key.keyboard.{i}": f"hotbar.{i}" for i in range(1, 10)}}
VPT_BUTTONS = {0: "attack", 1: "use", 2: "pickItem"}
CAMERA_SCALE = 360.0 / 2400.0  # degrees per mouse count: the recorder's sensitivity, as in VPT's loader

# MineRL v0.4 enum actions without a 1.0 key (place is handled separately: it becomes `use`).
MINERL_V04_ENUMS = ("craft", "equip", "nearbyCraft", "nearbySmelt")


# ---------------------------------------------------------------------------------------------- frames

def _fit_all(raw_frames, size, chunk: int = 64) -> np.ndarray:
    """Resize an iterable of raw frames in chunks, so a long 640x360 video never sits in memory whole."""
    out, buf = [], []
    for fr in raw_frames:
        buf.append(fr)
        if len(buf) == chunk:
            out.append(fit_frames(np.stack(buf), size))
            buf = []
    if buf:
        out.append(fit_frames(np.stack(buf), size))
    return np.concatenate(out) if out else np.zeros((0, *size, 3), np.uint8)


def _video_frames(path: Path):
    """Yield a video's RGB frames (uint8 (h, w, 3)) through imageio's ffmpeg plugin."""
    import imageio.v3 as iio

    with iio.imopen(path, "r", plugin="FFMPEG") as f:
        it = f.iter()
        try:
            yield from it
        finally:
            it.close()


def read_video(path: Path, size, count: int | None = None) -> np.ndarray:
    """The first `count` frames (all if None) of a video, fitted to `size` (H, W)."""
    return _fit_all(itertools.islice(_video_frames(path), count), size)


# ---------------------------------------------------------------------------------------------- VPT

def read_jsonl(path: Path) -> list[dict]:
    """One record per line; a malformed line (e.g. a recording cut off mid-write) ends the file there."""
    records = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                warnings.warn(f"{path}:{n}: bad JSON ({e}); using the {len(records)} lines before it", stacklevel=2)
                break
    return records


def vpt_actions(records: list[dict]) -> tuple[dict, np.ndarray]:
    """VPT jsonl records -> (MineRL actions, one per record, as {key: array}; gui_open bool per record)."""
    T = len(records)
    acts = {k: np.zeros(T, np.int64) for k in MINERL_BUTTONS}
    camera = np.zeros((T, 2), np.float64)
    gui = np.zeros(T, bool)
    stuck, prev_buttons, last_hotbar = False, set(), 0
    for i, rec in enumerate(records):
        mouse, keys = rec.get("mouse") or {}, (rec.get("keyboard") or {}).get("keys") or []
        buttons = list(mouse.get("buttons") or [])
        new = mouse.get("newButtons")
        if new is None:  # older recorder versions: a press is a button down now but not on the previous line
            new = [b for b in buttons if b not in prev_buttons]
        prev_buttons = set(buttons)
        # Some recordings start with attack held down by the recorder until the player clicks: VPT drops it
        # until attack is pressed anew.
        if i == 0:
            stuck = 0 in new
        elif stuck and 0 in new:
            stuck = False
        if stuck:
            buttons = [b for b in buttons if b != 0]
        for k in keys:
            if k in VPT_KEYS:
                acts[VPT_KEYS[k]][i] = 1
        for b in buttons:
            if b in VPT_BUTTONS:
                acts[VPT_BUTTONS[b]][i] = 1
        camera[i] = float(mouse.get("dy", 0)) * CAMERA_SCALE, float(mouse.get("dx", 0)) * CAMERA_SCALE
        # Scrolling the hotbar isn't recorded as input; the selected slot is, so a change becomes the key
        # press that would have made it (VPT starts from slot 0, as the game does).
        hotbar = rec.get("hotbar")
        hotbar = last_hotbar if hotbar is None else int(hotbar)  # absent before recorder 6.11
        if hotbar != last_hotbar and 0 <= hotbar <= 8:
            acts[f"hotbar.{hotbar + 1}"][i] = 1
        last_hotbar = hotbar
        gui[i] = bool(rec.get("isGuiOpen", False))
    # More than half a turn in 1/20 s is a recorder glitch (VPT means to zero these too), and outside the space.
    camera[np.abs(camera) > 180] = 0
    acts["camera"] = camera.astype(np.float32)
    return acts, gui


def convert_vpt(mp4: Path, jsonl: Path, size, max_frames: int = 0) -> dict:
    """One VPT recording -> {frames (T+1, H, W, 3), actions {key: (T, ...)}, rewards (T,), gui_open (T+1,)}.

    jsonl line i is the input while frame i was on screen, so action i goes from frame i to frame i+1
    (as VPT's loader pairs them): N frames and N lines give T = N-1 steps, the last line's input having
    no frame showing its effect. If the counts differ, both are cut to the shorter, with a warning.
    """
    records = read_jsonl(jsonl)
    want = min(len(records), max_frames) if max_frames else None
    frames = read_video(mp4, size, want)
    n = min(len(frames), len(records))
    short = len(frames) < want if want is not None else len(frames) != len(records)  # capped: video may be longer
    if short:
        warnings.warn(f"{mp4}: {len(frames)} video frames but {len(records)} jsonl lines; using the first {n}",
                      stacklevel=2)
    if n < 2:
        raise ValueError(f"only {n} usable frames")
    acts, gui = vpt_actions(records[:n])
    return {"frames": frames[:n], "actions": {k: v[:n - 1] for k, v in acts.items()},
            "rewards": np.zeros(n - 1, np.float32), "gui_open": gui}


def _vpt_inputs(src: Path) -> list[tuple[str, Path, Path]]:
    """(name, mp4, jsonl) for a folder or an index JSON; name identifies the input when resuming."""
    if src.is_file():
        try:
            index = json.loads(src.read_text())
            basedir, relpaths = index["basedir"], index["relpaths"]
            if not (isinstance(basedir, str) and isinstance(relpaths, list) and all(isinstance(p, str) for p in relpaths)):
                raise TypeError("basedir must be a string and relpaths a list of strings")
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
            raise SystemExit(f"{src}: not a VPT index file ({type(e).__name__}: {e}); expected JSON "
                             '{"basedir": DIR, "relpaths": ["PATH.mp4", ...]}, or pass a folder') from e
        # VPT's published indexes name a URL; the files must then lie beside the index, under their relpaths.
        base = src.parent if "://" in basedir else src.parent / basedir
        inputs, missing = [], []
        for rel in relpaths:
            mp4 = base / rel
            (inputs if mp4.is_file() and mp4.with_suffix(".jsonl").is_file() else missing).append(rel)
        if missing:
            warnings.warn(f"{src}: {len(missing)} of {len(relpaths)} listed recordings are missing (.mp4 or .jsonl "
                          f"not under {base}), e.g. {missing[0]}", stacklevel=2)
        inputs = [(rel, base / rel, (base / rel).with_suffix(".jsonl")) for rel in inputs]
        if not inputs:
            raise SystemExit(f"{src}: none of the {len(relpaths)} recordings it lists is under {base}")
        return inputs
    inputs = []
    for mp4 in sorted(src.rglob("*.mp4")):
        if mp4.with_suffix(".jsonl").is_file():
            inputs.append((mp4.relative_to(src).as_posix(), mp4, mp4.with_suffix(".jsonl")))
        else:
            warnings.warn(f"skipping {mp4}: no {mp4.with_suffix('.jsonl').name} beside it", stacklevel=2)
    if not inputs:
        raise SystemExit(f"no VPT recordings (NAME.mp4 with NAME.jsonl beside it) under {src}")
    return inputs


# ---------------------------------------------------------------------------------------------- MineRL

def minerl_actions(npz: Path) -> tuple[dict, np.ndarray]:
    """MineRL v0.4 rendered.npz -> (MineRL 1.0 actions {key: (T, ...)}, rewards (T,))."""
    with np.load(npz, allow_pickle=False) as z:
        def get(key):
            try:
                return z[key]
            except ValueError as e:  # object arrays need pickle, which we never load from downloaded files
                raise ValueError(f"{key} is a pickled object array, which is not loaded ({e})") from e

        if "reward" not in z.files:
            raise ValueError("no `reward` array: not a MineRL rendered.npz")
        rewards = get("reward").astype(np.float32).reshape(-1)
        found, use_from_place, ignored = {}, None, []
        for key in z.files:
            if not key.startswith("action$"):
                continue
            name = key[len("action$"):]
            if name in MINERL_KEYS:
                found[name] = get(key)
            elif name == "place":
                try:
                    place = get(key)
                except ValueError as e:
                    warnings.warn(f"{npz}: {e}; `use` from place left 0", stacklevel=2)
                    continue
                # place is an enum: "none" (or 0) is no click, anything else places a block (a right click).
                use_from_place = place != "none" if place.dtype.kind in "US" else place != 0
            elif name not in MINERL_V04_ENUMS:
                ignored.append(name)
    if not found and use_from_place is None:
        raise ValueError(f"no MineRL keyboard/mouse actions (action keys: {ignored}); obfuscated (VectorObf) data "
                         "cannot be mapped")
    if ignored:
        warnings.warn(f"{npz}: ignoring unknown action keys {ignored}", stacklevel=2)
    arrays = [rewards, *found.values(), *([] if use_from_place is None else [use_from_place])]
    T = min(len(v) for v in arrays)
    if any(len(v) != T for v in arrays):
        warnings.warn(f"{npz}: action/reward arrays of different lengths; using the first {T}", stacklevel=2)
    acts = {k: np.asarray(found[k][:T]).astype(np.int64).reshape(T) if k in found else np.zeros(T, np.int64)
            for k in MINERL_BUTTONS}
    if use_from_place is not None:
        acts["use"] = np.maximum(acts["use"], use_from_place[:T].astype(np.int64).reshape(T))
    cam = np.asarray(found["camera"][:T], np.float32).reshape(T, 2) if "camera" in found else np.zeros((T, 2), F32)
    acts["camera"] = np.clip(cam, -180, 180)
    return acts, rewards[:T]


def convert_minerl(traj: Path, size, max_frames: int = 0) -> dict:
    """One MineRL v0.4 trajectory folder -> {frames (T+1, H, W, 3), actions {key: (T, ...)}, rewards (T,)}.

    MineRL's DataPipeline semantics: T actions/rewards, T+1 states = the last T+1 frames of the video's
    first `true_video_frame_count`; reward i is received for action i. A video with fewer frames is
    aligned from its start (as MineRL does) and the actions cut to fit, with a warning.
    """
    acts, rewards = minerl_actions(traj / "rendered.npz")
    T = len(rewards)
    frames = _video_frames(traj / "recording.mp4")
    meta = traj / "metadata.json"
    if meta.is_file():
        count = json.loads(meta.read_text()).get("true_video_frame_count")
        if count:
            frames = itertools.islice(frames, int(count))
    # Keep only the last T+1 raw frames (MineRL v0.4 videos are 64x64, so this is small) and resize those.
    raw = collections.deque(frames, maxlen=T + 1)
    if len(raw) < T + 1:
        warnings.warn(f"{traj}: {len(raw)} video frames for {T} actions; using the first {max(len(raw) - 1, 0)} "
                      "actions", stacklevel=2)
    n = min(len(raw), max_frames) if max_frames else len(raw)
    if n < 2:
        raise ValueError(f"only {n} usable frames")
    frames = _fit_all(itertools.islice(raw, n), size)
    return {"frames": frames, "actions": {k: v[:n - 1] for k, v in acts.items()}, "rewards": rewards[:n - 1]}


def _minerl_inputs(src: Path) -> list[tuple[str, Path]]:
    inputs = []
    for npz in sorted(src.rglob("rendered.npz")):
        traj = npz.parent
        if (traj / "recording.mp4").is_file():
            inputs.append((traj.relative_to(src).as_posix() if traj != src else traj.name, traj))
        else:
            warnings.warn(f"skipping {traj}: rendered.npz without recording.mp4", stacklevel=2)
    if not inputs:
        raise SystemExit(f"no MineRL trajectories (folders with recording.mp4 and rendered.npz) under {src}")
    return inputs


# ---------------------------------------------------------------------------------------------- import job

def _entry(root: Path, index: int, split: str, name: str, ep: dict) -> dict:
    acts = ep["actions"]
    path = episode_path(root, index)
    gui = ep.get("gui_open")
    return {"file": path.relative_to(root).as_posix(), "index": index, "split": split, "seed": -1, "source": name,
            "steps": len(ep["rewards"]), "frames": len(ep["frames"]), "terminated": False,
            "return": float(np.sum(ep["rewards"])), "bytes": path.stat().st_size,
            "action_counts": action_counts(acts),
            "gui_frames": int(np.sum(gui)) if gui is not None else 0}


def _intact(path: Path) -> bool:
    # A cheap check (the zip directory sits at the end, so a truncated file fails) instead of decoding
    # every episode on resume: files are written atomically, so a partial one can't have its final name.
    try:
        with zipfile.ZipFile(path) as z:
            return {"frames.npy", "rewards.npy", "terminated.npy"} <= set(z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _episodes_on_disk(root: Path, manifest: dict, split_of) -> dict:
    """source name -> manifest entry for every intact episode, including files written by a run that was
    killed before it saved the manifest (their `source` array says which input they came from)."""
    have, indices = {}, set()
    for e in manifest["episodes"]:
        if _intact(root / e["file"]) and "source" in e:
            have[e["source"]] = e
            indices.add(e["index"])
        else:
            warnings.warn(f"episode {e['file']} is missing or corrupt; importing its input again", stacklevel=2)
    for path in sorted((root / "episodes").glob("ep_*.npz")):
        index = int(path.stem[3:])
        if index in indices:
            continue
        try:
            ep = read_episode(path)
            name = str(ep["source"])
        except (ValueError, KeyError) as e:
            warnings.warn(f"{path}: {e}; it will be overwritten", stacklevel=2)
            continue
        if name not in have:
            have[name] = _entry(root, index, split_of(index), name, ep)
    return have


def _summary(manifest: dict, imported: int) -> None:
    eps = manifest["episodes"]
    frames = sum(e["frames"] for e in eps)
    H, W, _ = manifest["env"]["frame_shape"]
    on_disk = sum(e["bytes"] for e in eps) / max(frames, 1)
    print(f"\n{len(eps)} episodes ({imported} imported now), {frames} frames, {on_disk:.0f} bytes per frame on disk "
          f"({H * W * 3} raw), {sum(e['gui_frames'] for e in eps) / max(frames, 1):.1%} of frames with a GUI open")
    print_histograms(manifest)  # the same key and camera-bin histograms as `worldsim collect`


def _required(cfg, key: str):
    from omegaconf import OmegaConf

    if key not in cfg or OmegaConf.is_missing(cfg, key) or cfg[key] in (None, ""):
        raise SystemExit(f"import needs `{key}`: worldsim import vpt|minerl DIR (or source=... src=...)")
    return cfg[key]


def import_data(cfg) -> dict:
    """The `import` job: convert every input under cfg.src into episodes under cfg.out; returns the manifest."""
    source = str(_required(cfg, "source"))
    if source not in SOURCES:
        raise SystemExit(f"unknown import source {source!r}; choose one of {', '.join(SOURCES)}")
    src = Path(str(_required(cfg, "src"))).expanduser()
    if not src.exists():
        raise SystemExit(f"{src} does not exist")
    size = cfg.size
    size = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 1:
        raise SystemExit(f"size must be [H, W], got {list(size)}")
    if source == "minerl" and src.is_file():
        raise SystemExit(f"{src} is a file; give the MineRL dataset folder")
    inputs = _vpt_inputs(src) if source == "vpt" else _minerl_inputs(src)
    max_frames, test_every = int(cfg.get("max_frames", 0) or 0), int(cfg.get("test_every", 0) or 0)

    root = Path(cfg.out)
    root.mkdir(parents=True, exist_ok=True)
    manifest = load_manifest(root)
    env = {"name": source, "action_space": space_to_spec(minerl_action_space()), "action_keys": list(MINERL_KEYS), "size": list(size),
           "frame_shape": [*size, 3], "fps": FPS}
    old = manifest.get("env") or {}
    if manifest["episodes"] and (old.get("name") != source or list(old.get("frame_shape", [])) != env["frame_shape"]):
        raise SystemExit(f"{root} already holds {old.get('name')} episodes of shape {old.get('frame_shape')}; "
                         f"import {source} at {list(size)} into another `out`")
    manifest["env"] = env

    def split_of(i):
        return "test" if test_every and i % test_every == test_every - 1 else "train"

    have = _episodes_on_disk(root, manifest, split_of)
    todo = [inp for inp in inputs if inp[0] not in have]
    if have:
        print(f"resuming: {len(have)} episodes already in {root}, {len(todo)} inputs to import")
    manifest["episodes"] = sorted(have.values(), key=lambda e: e["index"])
    save_manifest(root, manifest)
    used = {e["index"] for e in have.values()}
    free = (i for i in itertools.count() if i not in used)
    imported = 0
    for name, *paths in tqdm(todo, desc=f"import {source}", unit="file"):
        try:
            ep = convert_vpt(*paths, size, max_frames) if source == "vpt" else convert_minerl(*paths, size, max_frames)
        except Exception as e:  # one bad download must not stop a long import
            msg = str(e).strip().splitlines() or [""]
            warnings.warn(f"skipping {paths[0]}: {type(e).__name__}: {msg[0]}", stacklevel=2)
            continue
        index = next(free)
        T = len(ep["rewards"])
        extra = {"gui_open": ep["gui_open"]} if "gui_open" in ep else {}
        write_episode(episode_path(root, index), ep["frames"], ep["actions"], ep["rewards"], np.zeros(T, bool),
                      seed=-1, source=np.array(name), **extra)
        have[name] = _entry(root, index, split_of(index), name, ep)
        manifest["episodes"] = sorted(have.values(), key=lambda e: e["index"])
        save_manifest(root, manifest)
        imported += 1
    _summary(manifest, imported)
    return manifest
