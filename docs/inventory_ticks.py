"""Do the learned Crafter world's health, food, drink and energy move as the real game's do? (docs/results.md:
Training an agent in the learned world, "The inventory's clock")

    python docs/inventory_ticks.py [BUNDLE] [--steps 600] [--seeds 0,1,2,3] [--out FILE.json] [KEY=VALUE ...]

Crafter's four stats move on hidden counters (food falls a point about every 25-35 steps, drink every 20-30,
energy every 30 awake; health follows them), so a one-step model that draws the mean of the next frame may never
move them: in its world nobody would need to eat, drink or sleep.
Both worlds are driven by the explorer (the eval's agent) from seed 1,000,000 + 7,919 k: the real game
(worldsim/RealCrafter-v0, reset after a death) first, then the learned env (worldsim/Crafter-v0, which never ends
here; KEY=VALUE settings go to it). The stats are read off the frames: the inventory's first four tiles (its
first 7-pixel row under the 7 map rows) are health, food, drink and energy while each is above 0, and the real
steps give each (stat, value) tile's pixels (info["inventory"]); a learned tile reads as the nearest of them,
or as unreadable if none is within 12 grey levels (mean absolute). Printed per world and side: per stat, its
falls and rises per 100 steps, the steps between its moves, and the share of steps unreadable; reversals counts
moves undone on the next step (flicker), which the real game never shows. Frames with a stat at 0 (a tile
missing, the rest shifted) are skipped. A bundle with ticks (its env draws each count's falls and rises) also
gets, per world, the ticks drawn per 100 steps and the share of them the frame showed ("drawn").
"""
import argparse
import json

import gymnasium as gym
import numpy as np
import yaml

import worldsim  # noqa: F401
from worldsim.agents import make_agent

ap = argparse.ArgumentParser()
ap.add_argument("bundle", nargs="?", help="default: the shipped model")
ap.add_argument("--steps", type=int, default=600)
ap.add_argument("--seeds", default="0,1,2,3")
ap.add_argument("--out")
ap.add_argument("settings", nargs="*", metavar="KEY=VALUE")
args = ap.parse_args()
if args.bundle and "=" in args.bundle:  # a setting, not a bundle
    args.settings.insert(0, args.bundle)
    args.bundle = None
kw = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.settings)}
if args.bundle:
    kw["bundle"] = args.bundle
UNIT, TOP = 7, 49  # Crafter 64x64: 7-pixel tiles, the map view's 7 tile rows above the inventory
STATS = ("health", "food", "drink", "energy")
FAR = 12.0


def stat_tiles(frame):  # (64, 64, 3) uint8 -> (4, 147) the first four inventory tiles' pixels
    row = frame[TOP:TOP + UNIT, :4 * UNIT].astype(np.float32)
    return row.reshape(UNIT, 4, UNIT, 3).transpose(1, 0, 2, 3).reshape(4, -1)


def explore(make, seed, on_step):
    env = make()
    agent = make_agent("explorer", env.action_space, seed=seed)
    obs, info = env.reset(seed=seed)
    agent.reset()
    for t in range(args.steps):
        obs, _, term, trunc, info = env.step(agent.act(obs))
        on_step(t, obs, info)
        if term or trunc:
            obs, info = env.reset(seed=seed + 100 + t)
            agent.reset()
            on_step(t, None, None)  # a new game: no move across it
    env.close()


bank = {}  # (stat, value) -> tile pixels, from the real game


def scores(values):
    """values: (T, 4) stat values, -1 unreadable, -2 a break (a new game / skipped frame)."""
    out = {}
    for k, name in enumerate(STATS):
        v = values[:, k]
        ok = (v[1:] >= 0) & (v[:-1] >= 0)
        d = np.where(ok, v[1:] - v[:-1], 0)
        moves = np.flatnonzero(d != 0)
        back = int(sum(1 for i in moves if i + 1 < len(d) and d[i + 1] == -d[i]))
        out[name] = {"falls_per_100": round(100 * float((d < 0).sum()) / len(v), 2),
                     "rises_per_100": round(100 * float((d > 0).sum()) / len(v), 2),
                     "steps_between_moves": round(float(np.diff(moves).mean()), 1) if len(moves) > 1 else None,
                     "reversals": back, "unreadable": round(float((v == -1).mean()), 3)}
    return out


out = {"bundle": args.bundle or "shipped", "settings": kw, "steps": args.steps, "worlds": {}}
seeds = [1000000 + 7919 * int(k) for k in args.seeds.split(",")]
real_values = {}
for seed in seeds:  # the real game first: it also fills the bank
    vals = np.full((args.steps, 4), -2)

    def real_step(t, obs, info):
        if obs is None:
            vals[t] = -2
            return
        inv = info["inventory"]
        if all(inv[s] > 0 for s in STATS):
            tiles = stat_tiles(obs)
            for k, s in enumerate(STATS):
                bank.setdefault((k, inv[s]), tiles[k])
            vals[t] = [inv[s] for s in STATS]
    explore(lambda: gym.make("worldsim/RealCrafter-v0"), seed, real_step)
    real_values[seed] = vals
print(f"bank: {len(bank)} (stat, value) tiles from the real game")
# per stat: the values seen and their tiles' pixels
per_stat = [(np.array([v for (k2, v) in sorted(bank) if k2 == k]),
             np.stack([px for (k2, _), px in sorted(bank.items()) if k2 == k])) for k in range(4)]


def read(frame):
    row = []
    for (values, px), tile in zip(per_stat, stat_tiles(frame)):
        d = np.abs(px - tile).mean(-1)
        row.append(int(values[d.argmin()]) if d.min() <= FAR else -1)
    return row


def drawn_scores(values, drawn):
    """A bundle with ticks: per stat, the ticks its env drew per 100 steps and the share of them the frame showed
    (the stat's tile read one lower after a drawn fall, one higher after a rise)."""
    out = {}
    for k, name in enumerate(STATS):
        row = {}
        for way, col, sign in (("falls", 2 * k, -1), ("rises", 2 * k + 1, 1)):
            steps = [t for t in np.flatnonzero(drawn[:, col]) if t > 0]
            shown = [t for t in steps if values[t, k] >= 0 and values[t - 1, k] >= 0
                     and np.sign(values[t, k] - values[t - 1, k]) == sign]
            row[f"drawn_{way}_per_100"] = round(100 * len(steps) / len(values), 2)
            row[f"{way}_shown"] = round(len(shown) / len(steps), 3) if steps else None
        out[name] = row
    return out


for k, seed in zip(args.seeds.split(","), seeds):
    vals = np.full((args.steps, 4), -2)
    drawn = np.zeros((args.steps, 8), bool)

    def learned_step(t, obs, info):
        vals[t] = -2 if obs is None else read(obs)
        for name in (info or {}).get("ticks", []):  # a bundle with ticks: what its env drew this step
            stat, way = name.rsplit("_", 1)
            if stat in STATS:
                drawn[t, 2 * STATS.index(stat) + (way == "up")] = True
    explore(lambda: gym.make("worldsim/Crafter-v0", termination_threshold=2.0, horizon=args.steps + 1, **kw),
            seed, learned_step)
    row = {"real": scores(real_values[seed]), "learned": scores(vals)}
    if drawn.any():
        row["drawn"] = drawn_scores(vals, drawn)
        print(k, "drawn", json.dumps(row["drawn"]), flush=True)
    out["worlds"][k] = row
    for side in ("real", "learned"):
        print(k, side, json.dumps(row[side]), flush=True)
for side in ("real", "learned"):
    out[side] = {s: {m: round(float(np.mean([w[side][s][m] for w in out["worlds"].values()])), 2)
                     for m in ("falls_per_100", "rises_per_100", "reversals", "unreadable")} for s in STATS}
    print(side, "mean over worlds:", json.dumps(out[side]))
if all("drawn" in w for w in out["worlds"].values()):
    out["drawn"] = {s: {m: round(float(np.mean([w["drawn"][s][m] for w in out["worlds"].values()
                                                 if w["drawn"][s][m] is not None] or [np.nan])), 3)
                        for m in next(iter(out["worlds"].values()))["drawn"][s]} for s in STATS}
    print("drawn mean over worlds:", json.dumps(out["drawn"]))
if args.out:
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
