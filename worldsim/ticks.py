"""`worldsim ticks bundle=B data=D`: give a trained bundle the game's ticks without training its world model.

A tick is one of the game's counters falling or rising (Crafter's health, food, drink and energy: `data.tick_names`),
on hidden clocks no window of frames shows (hunger drops food every 25-30 steps). A world model trained on frames
alone never draws them: one sampling step draws the conditional mean, the old digit (docs/results.md, Ticks), and
two CPU fine-tunes that gave the world model the ticks as an input learnt to draw them at the game's rates but
showed at most 3.6 % of them in the frame. This job adds both halves outside the world model's trunk:
- the tick head (`model.TickHead`), fit on the frozen world model's own features of the frame before, as the
  simulator reads them (its commit pass; with heads_input="sample_pair" its sampling pass), with the step's action
  and the steps since each tick: it draws each step's ticks;
- the tick display (`TickDisplay`), a table read from the collection's frames: which tile each tick type redraws
  (the HUD cell of its counter) and, for each glyph that tile showed before the tick, the glyph after. The
  simulator pastes the glyph into the frame a drawn tick happens on and commits its encoding, so the model's
  context holds the new count from then on.
Why a table, not more training: a counter's glyph is drawn by the game, exactly, in a fixed cell (on 18,296
recorded Crafter steps every tick changed its counter's cell and no other step did, and each glyph before a
food, drink or energy tick had one glyph after), so the table is exact where a network fine-tuned on this CPU
was not; the world model keeps the drawn glyph as it keeps every HUD tile.
"""
from __future__ import annotations

import collections
import json
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from worldsim.checkpoint import tensors_bytes, write_dir_atomic
from worldsim.data import episode_ticks, index_actions, stack_actions, tick_names, tick_selection, ticks_since

DISPLAY_FILE = "tick_display.safetensors"


class TickDisplay:
    """What each tick type does to the frame: the tile it redraws and a glyph table, read from real frames.

    cells: int64 (K, 2) the (row, column) of the latent/tile grid each tick type redraws, (-1, -1) where none
    was found; before, after: uint8 (E, p, p, 3) glyphs; tick: int64 (E,) the type of each entry; layout: the
    tile autoencoder's (patch, row offset, column offset) in the frame; tolerance: the mean absolute difference
    (grey levels) within which a shown tile can be a table glyph (decoded tiles are near, not equal)."""

    def __init__(self, cells, before, after, tick, layout: tuple[int, int, int], tolerance: float):
        self.cells, self.before, self.after, self.tick = cells.long(), before, after, tick.long()
        self.layout, self.tolerance = tuple(int(v) for v in layout), float(tolerance)

    def to(self, device) -> "TickDisplay":
        return TickDisplay(self.cells.to(device), self.before.to(device), self.after.to(device),
                           self.tick.to(device), self.layout, self.tolerance)

    def tensors(self) -> dict:
        return {"cells": self.cells, "before": self.before, "after": self.after, "tick": self.tick}

    @classmethod
    def load(cls, path: Path, info: dict, device="cpu") -> "TickDisplay":
        from safetensors.torch import load_file

        t = load_file(path)
        return cls(t["cells"], t["before"], t["after"], t["tick"], info["layout"], info["tolerance"]).to(device)

    def with_inverses(self, pairs) -> "TickDisplay":
        """pairs: (a, b) tick types that undo each other on one tile (a counter's fall and rise). Each gains the
        other's entries reversed, for the glyphs it has no entry for. Why: a table read off real frames knows a
        counter's rises only from the counts the collection saw rise (the shipped Crafter table: energy's from 4
        up), so a sleeper at energy 1 drew rises the frame could not show and never woke; the game draws a count
        as its digit whichever way it got there, so a rise from n to n + 1 shows the glyphs of the fall from
        n + 1 to n, swapped. A type of a pair whose tile was never found (no rise in the collection) takes the
        other's tile."""
        before, after, tick = list(self.before), list(self.after), list(self.tick)
        cells = self.cells.clone()
        for a, b in pairs:
            if cells[a, 0] < 0 or cells[b, 0] < 0:  # one never seen: it redraws the tile the other does
                cells[a] = cells[b] = torch.maximum(cells[a], cells[b])
            if (cells[a] != cells[b]).any() or cells[a, 0] < 0:
                continue
            for src, dst in ((a, b), (b, a)):
                for e in torch.nonzero(self.tick == src).flatten().tolist():
                    glyph = self.after[e].float()
                    known = [g for g, k in zip(before, tick) if int(k) == dst]
                    if known and min(float((g.float() - glyph).abs().mean()) for g in known) <= self.tolerance:
                        continue
                    before.append(self.after[e]), after.append(self.before[e]), tick.append(torch.tensor(dst))
        return TickDisplay(cells, torch.stack(before), torch.stack(after), torch.stack(tick).long(), self.layout,
                           self.tolerance)

    @torch.no_grad()
    def apply(self, frames: torch.Tensor, ticks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """frames uint8 (B, H, W, 3), ticks (B, K) 0/1 -> (the frames with each drawn tick's glyph pasted, bool
        (B, h, w) the cells pasted). A tile is matched to its type's nearest `before` glyph, and left alone where
        that is not within the tolerance or not at most half as far as the next nearest (a count the table never
        saw, a tile the model blurred between two digits: decoded tiles are up to ~4.5 grey levels off, and two
        of Crafter's digits differ by 4). Types are applied in order, so a fall and a rise of one counter on the
        same step cancel."""
        p, oy, ox = self.layout
        out = frames.clone()
        h = (frames.shape[1] - oy) // p
        w = (frames.shape[2] - ox) // p
        changed = torch.zeros(frames.shape[0], h, w, dtype=torch.bool, device=frames.device)
        for k in range(len(self.cells)):
            y, x = (int(v) for v in self.cells[k])
            rows = torch.nonzero(ticks[:, k] > 0).flatten()
            if y < 0 or not len(rows):
                continue
            ent = torch.nonzero(self.tick == k).flatten()
            if not len(ent):
                continue
            ys, xs = slice(oy + y * p, oy + (y + 1) * p), slice(ox + x * p, ox + (x + 1) * p)
            tile = out[rows, ys, xs].float()  # (n, p, p, 3)
            d = (tile[:, None] - self.before[ent].float()[None]).abs().mean((2, 3, 4))  # (n, E_k)
            two, near = d.topk(min(2, d.shape[1]), dim=1, largest=False)
            best = near[:, 0]
            ok = two[:, 0] <= self.tolerance  # a glyph of this counter at all
            if two.shape[1] > 1:  # and clearly the one: at most half as far as the next (tiles differ by a digit)
                ok &= two[:, 0] <= 0.5 * two[:, 1]
            if ok.any():
                out[rows[ok], ys, xs] = self.after[ent[best[ok]]]
                changed[rows[ok], y, x] = True
        return out, changed


def tile_cells(frames: np.ndarray, layout: tuple[int, int, int], h: int, w: int) -> np.ndarray:
    """uint8 (N, H, W, 3) -> (N, h, w, p, p, 3) each latent cell's tile of pixels."""
    p, oy, ox = layout
    g = frames[:, oy:oy + h * p, ox:ox + w * p]
    return g.reshape(len(frames), h, p, w, p, 3).transpose(0, 1, 3, 2, 4, 5)


def fit_display(episodes: list, layout: tuple[int, int, int], h: int, w: int, min_share: float = 0.9,
                min_count: int = 2, tolerance: float = 8.0) -> tuple[TickDisplay, dict]:
    """Read the tick display off real episodes with `counters`: each type's cell is the tile that changed on the
    largest share of its ticks (kept if that share is at least min_share); each glyph that cell showed before
    the type's ticks gets the glyph most often shown after (kept if seen min_count times; Crafter draws a count
    of 0 as an empty tile, so that is a glyph too)."""
    ticked = [(ep, episode_ticks(ep)) for ep in episodes if "counters" in ep]
    if not ticked:
        raise ValueError("the tick display is read from episodes that record the game's counters, and these record none")
    K = ticked[0][1].shape[1]
    changes, occurs = collections.Counter(), collections.Counter()
    diffs = []
    for ep, ticks in ticked:
        cells = tile_cells(ep["frames"], layout, h, w)
        diffs.append((cells, (cells[1:] != cells[:-1]).any((3, 4, 5))))  # (T, h, w)
        for t, k in zip(*np.nonzero(ticks)):
            occurs[k] += 1
            for y, x in zip(*np.nonzero(diffs[-1][1][t])):
                changes[(k, y, x)] += 1
    cell_of = np.full((K, 2), -1, np.int64)
    info = {}
    for k in range(K):
        best = max(((c, y, x) for (kk, y, x), c in changes.items() if kk == k), default=None)
        share = best[0] / occurs[k] if best else 0.0
        info[k] = {"ticks": int(occurs[k]), "share": round(float(share), 4)}
        if best and share >= min_share:
            cell_of[k] = best[1:]
    trans = collections.defaultdict(collections.Counter)  # (k, glyph before) -> glyph after
    for (ep, ticks), (cells, diff) in zip(ticked, diffs):
        for t, k in zip(*np.nonzero(ticks)):
            y, x = cell_of[k]
            if y >= 0 and diff[t, y, x]:
                trans[(k, cells[t, y, x].tobytes())][cells[t + 1, y, x].tobytes()] += 1
    p = layout[0]
    before, after, tick = [], [], []
    for k in range(K):
        if cell_of[k, 0] < 0:
            continue
        n_changes = kept = 0
        for (kk, bef), afters in trans.items():
            if kk != k:
                continue
            glyph, n = afters.most_common(1)[0]
            n_changes += sum(afters.values())
            if n >= min_count:
                kept += n
                before.append(np.frombuffer(bef, np.uint8).reshape(p, p, 3))
                after.append(np.frombuffer(glyph, np.uint8).reshape(p, p, 3))
                tick.append(k)
        info[k].update(cell=cell_of[k].tolist(), glyphs=int(sum(t == k for t in tick)), changes=n_changes,
                       explained=round(kept / max(1, n_changes), 4))
    before = np.stack(before) if before else np.zeros((0, p, p, 3), np.uint8)
    after = np.stack(after) if after else np.zeros((0, p, p, 3), np.uint8)
    display = TickDisplay(torch.from_numpy(cell_of), torch.from_numpy(before), torch.from_numpy(after),
                          torch.from_numpy(np.asarray(tick, np.int64)), layout, tolerance)
    return display, {"layout": list(layout), "tolerance": float(tolerance), "types": info}


def tick_examples(bundle, episodes: list, batch: int = 64, seed: int = 0, cap: int | None = None):
    """The tick head's examples as the simulator makes them: each transition with W real frames before it,
    stepped by the model (`heads.step_transitions`), gives the features of the frame the model made that the
    next step's tick draw reads (`StepResult.features`); the next step's real action, its ticks and the steps since each tick before it go with them. Returns
    (features (N, dim), actions, ticks (N, K), since (N, K))."""
    from worldsim.heads import step_transitions
    from worldsim.simulator import WorldSimulator

    W = bundle.dit.config.context_frames
    items = [(e, s) for e, ep in enumerate(episodes) for s in range(len(ep["frames"]) - W - 1)]
    if not items:
        raise ValueError(f"no episode is longer than the world model's context ({W} frames) plus two steps")
    if cap is not None and len(items) > cap:
        keep = np.sort(np.random.default_rng(seed).choice(len(items), int(cap), replace=False))
        items = [items[i] for i in keep]
    ticks = {e: episode_ticks(episodes[e]) for e in {e for e, _ in items}}
    since = {e: ticks_since(t) for e, t in ticks.items()}
    sim = WorldSimulator(bundle, min(batch, len(items)))
    feats = [res.features[:k].float().cpu()
             for res, k in step_transitions(sim, episodes, items, np.random.default_rng(seed))]
    acts = stack_actions([index_actions(episodes[e]["actions"], s + W) for e, s in items])
    return (torch.cat(feats), torch.as_tensor(acts), torch.from_numpy(np.stack([ticks[e][s + W] for e, s in items])),
            torch.from_numpy(np.stack([since[e][s + W] for e, s in items])))


def cached_tick_examples(bundle, data_dir: Path, split: str, batch: int, seed: int, cap: int | None,
                         cache_dir: Path | None):
    """`tick_examples` of one collection's split (None if it is empty), kept in `cache_dir` under the key of
    `heads.features_key` (the world model, its settings, the collection, split, sample and batch), so that
    refits of the head skip the stepping, most of the job's time (~20 minutes per 18,000 transitions on 2
    cores). An unreadable cache file is computed again, with a warning."""
    from safetensors.torch import load_file

    from worldsim.data import atomic_write_bytes, load_episodes
    from worldsim.heads import features_key

    file = None
    if cache_dir is not None:
        file = Path(cache_dir) / f"ticks_{features_key(bundle, data_dir, split, seed, cap, batch)}.safetensors"
        if file.exists():
            try:
                t = load_file(file)
                return t["features"], t["actions"], t["ticks"], t["since"]
            except Exception as e:  # a torn or foreign file
                warnings.warn(f"ticks examples cache {file} unreadable ({e}); computing it again")
    eps = load_episodes(data_dir, split=split)
    if not eps:
        return None
    out = tick_examples(bundle, eps, batch, seed, cap)
    if file is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        data = tensors_bytes(dict(zip(("features", "actions", "ticks", "since"), (t.contiguous() for t in out))))
        atomic_write_bytes(file, lambda f: f.write(data))
    return out


def tick_report(dit, ex, names: list) -> dict:
    """Per type: the real ticks of the examples and the number the head's probabilities expect; and the mean
    log-loss beside that of each type's constant rate (what a head that reads nothing scores)."""
    feats, acts, y, since = ex
    has = torch.ones(len(feats), dtype=torch.bool)
    with torch.no_grad():
        p = torch.sigmoid(dit.tick_logits(feats, acts, has, since).float())
        unknown = torch.sigmoid(dit.tick_logits(feats, acts, has, torch.full_like(since, dit.tick_head.horizon)).float())
    y = y.float()
    rate = y.mean(0).clamp(1e-6, 1 - 1e-6)
    const = -(y * rate.log() + (1 - y) * (1 - rate).log()).mean()
    return {"steps": len(y), "log_loss": round(float(F.binary_cross_entropy(p, y)), 5),
            "log_loss_constant_rate": round(float(const), 5),
            "log_loss_phase_unknown": round(float(F.binary_cross_entropy(unknown, y)), 5),
            "types": {n: {"real": int(y[:, k].sum()), "expected": round(float(p[:, k].sum()), 2)}
                      for k, n in enumerate(names)}}


def fit_tick_head(dit, ex, steps: int, batch: int, lr: float, seed: int) -> float:
    """Train dit's tick head alone (the world model and its action embedding frozen) on examples `ex`:
    binary cross-entropy per type, so its probabilities keep the data's rates. Every example is also given
    once with every count of steps since at "long ago" (the head's horizon), which is what the simulator
    reads after a reset from frames that do not begin a game (the clocks' phases unknown): there the head
    learns each tick's rate given the frame and the action alone. Returns the last batch's loss."""
    from worldsim.codebook import fit_classifier

    feats, acts, y, since = ex
    feats, acts, y = torch.cat([feats, feats]), torch.cat([acts, acts]), torch.cat([y, y])
    since = torch.cat([since, torch.full_like(since, dit.tick_head.horizon)])
    with torch.no_grad():
        emb = dit.action_embed(acts, torch.ones(len(feats), dtype=torch.bool))
    g = torch.Generator().manual_seed(seed)
    dit.tick_head.train()
    loss = fit_classifier(dit.tick_head, (feats, emb, since), y.float(), len(feats), steps, batch, g, lr=lr,
                          loss_fn=F.binary_cross_entropy_with_logits)
    dit.eval()
    return float(loss.detach())


def ticks_job(cfg):
    """`worldsim ticks bundle=B data=D`: fit B's tick head (B must not have one yet; head=false skips it) and its
    tick display (display=false skips it) on D's train splits, report the head on the test splits, and rewrite
    B atomically: its world model gains the ticks (`WorldDiT.with_ticks`: the input at zero weight, so its
    frames do not change) and the head; the display goes beside it (`tick_display.safetensors`)."""
    from worldsim.autoencoder import latent_shape, tile_layout
    from worldsim.checkpoint import bundle_and_training_data, data_dirs
    from worldsim.data import load_manifest

    path, b, train = bundle_and_training_data(cfg.bundle, cfg.data, str(cfg.get("device", "cpu")))
    counters = {json.dumps(load_manifest(d)["env"].get("counters")) for d in data_dirs(cfg.data)}
    counters = json.loads(counters.pop()) if len(counters) == 1 else None
    if not counters or any("counters" not in ep for ep in train):
        raise ValueError(f"ticks: {cfg.data} must record the game's counters, the same ones in every collection "
                         f"(env.counters in the manifest: collect again with this version)")
    names = tick_names(counters)
    have = (b.env.get("counters"), int(b.dit.config.ticks))
    head, show = bool(cfg.get("head", True)), bool(cfg.get("display", True))
    if not (head or show):
        raise ValueError("ticks: head=false and display=false leave nothing to fit")
    if head and have[1]:
        if not cfg.get("refit", False):
            raise ValueError(f"{path} already has a tick head ({have[1]} types): head=false fits only the display, "
                             f"refit=true fits the head again (a head this job fit: its world model never learnt "
                             f"to show ticks)")
        if b.dit.tick_embed.weight.abs().max() > 0:
            raise ValueError(f"{path}'s world model was trained to show its ticks (dit.ticks=true): its tick head "
                             f"is refit with it, by `worldsim train`, not by refit=true")
        b.dit = b.dit.without_ticks()  # what the job fits on: the world model as it computes with no tick
    if not head and (not have[1] or have[0] != counters):
        raise ValueError(f"head=false: {path} needs a tick head for the counters {counters}, and has "
                         f"{have[1]} tick types for {have[0]}")
    info: dict = {"data": [str(d) for d in data_dirs(cfg.data)], "counters": counters}
    files = {}
    if head:
        cap, cache, seed, batch = cfg.get("max_transitions"), cfg.get("examples_cache"), int(cfg.seed), int(cfg.batch_size)
        cap = None if cap is None else int(cap)
        dirs = data_dirs(cfg.data)
        # per collection (capped per collection, so a small one is not drowned by a large one)
        parts = [cached_tick_examples(b, d, "train", batch, seed + 100 * i, cap, cache) for i, d in enumerate(dirs)]
        ex = tuple(torch.cat(x) for x in zip(*[p for p in parts if p is not None]))
        tests = {str(d): te for i, d in enumerate(dirs)
                 if (te := cached_tick_examples(b, d, "test", batch, seed + 1 + i, None, cache)) is not None}
        torch.manual_seed(seed)
        b.dit = b.dit.cpu().with_ticks(len(names))
        info["loss"] = fit_tick_head(b.dit, ex, int(cfg.steps), int(cfg.head_batch), float(cfg.lr), seed)
        info["train"] = tick_report(b.dit, ex, names)
        print(f"tick head on the train splits: {info['train']}")
        for d, te in tests.items():
            info.setdefault("test", {})[d] = r = tick_report(b.dit, te, names)
            print(f"{d} test split: {r}")
        files["world_model.safetensors"] = tensors_bytes(b.dit.state_dict())
    if show:
        layout = tile_layout(b.ae, *b.env["frame_shape"][:2])
        if layout is None:
            raise ValueError(f"{path}: the tick display pastes glyphs into tiles, and its autoencoder has none "
                             f"(a patch autoencoder, autoencoder=tile7, draws one latent per tile)")
        _, h, w = latent_shape(b.ae, *b.env["frame_shape"][:2])
        display, dinfo = fit_display(train, layout, h, w, float(cfg.min_share), int(cfg.min_count),
                                     float(cfg.tolerance))
        files[DISPLAY_FILE] = tensors_bytes(display.tensors())
        print("tick display: " + ", ".join(f"{names[k]} {v.get('cell', 'none')} ({v.get('glyphs', 0)} glyphs)"
                                           for k, v in dinfo["types"].items()))
        dinfo["types"] = {names[k]: v for k, v in dinfo["types"].items()}
    files_all = {p.name: p.read_bytes() for p in path.iterdir() if p.is_file()}
    files_all.update(files)
    meta = json.loads(files_all["bundle.json"])
    meta["world_model"]["ticks"] = len(names)
    meta["env"]["counters"] = counters
    if show:
        meta["tick_display"] = dinfo
    meta.setdefault("inference", {})["ticks"] = tick_selection(cfg.get("default_on", True), names, "default_on")
    meta.setdefault("trained", {})["ticks"] = info
    files_all["bundle.json"] = json.dumps(meta, indent=1).encode()
    write_dir_atomic(path, files_all)
    print(f"ticks ({', '.join(names)}) written to {path}")
    return info
