"""What the learned Crafter env's long explorer rollout does at night: `worldsim eval`'s stability rollout (same
env, explorer and seeds), every frame kept, per block of steps.

    python docs/night_rollout.py STEPS [BUNDLE] [--block N] [--threads T] [--save OUT.npz | --load OUT.npz]
                                 [--strip PNG START STOP EVERY]

Prints per block: frame change and the share of unchanged steps (as `worldsim eval`), the map view's brightness
(its mean grey level; the game's night darkens it), the spread of its 7 x 9 tiles' mean colours (how much
the view shows: a uniform field has none), how many of the explorer's moves changed the frame by less
than its blocked threshold (1.5 grey levels: it then strikes and turns away), and its sleep actions; and the
same for the held-out real episodes in data/crafter-heldout. Rollouts with other thread counts differ (the
float sums differ, and 10,000 steps amplify it): eval's own run used threads=1.
"""
import argparse

import numpy as np
import torch

ap = argparse.ArgumentParser()
ap.add_argument("steps", type=int)
ap.add_argument("bundle", nargs="?", default=None)
ap.add_argument("--block", type=int, default=500)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--save", default=None)
ap.add_argument("--load", default=None, help="analyse a rollout saved with --save instead of running one")
ap.add_argument("--real", default="data/crafter-heldout")
ap.add_argument("--strip", nargs=4, default=None, metavar=("PNG", "START", "STOP", "EVERY"),
                help="write the frames after steps START, START + EVERY, ... below STOP side by side")
args = ap.parse_args()

MOVES, SLEEP, BLOCKED, MAP_ROWS = (1, 2, 3, 4), 6, 1.5, 49  # Crafter's map view: 7 rows of 7-pixel tiles


def stats(frames, actions):
    """Per step (aligned with actions): frame change into it, its map's brightness and tile spread, whether the
    action was a move, a sleep."""
    f = frames.astype(np.int16)
    change = np.abs(np.diff(f, axis=0)).mean(axis=(1, 2, 3))
    tiles = f[1:, :MAP_ROWS, :63].reshape(len(f) - 1, 7, 7, 9, 7, 3).mean(axis=(2, 4))  # (T, 7, 9, 3)
    return (change, f[1:, :MAP_ROWS].mean(axis=(1, 2, 3)), tiles.std(axis=(1, 2)).mean(-1),
            np.isin(actions, MOVES), actions == SLEEP)


def row(name, change, bright, spread, move, sleep):
    still_moves = (move & (change < BLOCKED)).sum() / max(move.sum(), 1)
    print(f"{name:>13}  change {change.mean():5.2f}  unchanged {100 * (change < 0.05).mean():5.1f} %  brightness "
          f"{bright.mean():6.1f}  tile spread {spread.mean():5.1f}  moves under {BLOCKED} {100 * still_moves:5.1f} % "
          f"of {move.sum():4d}  sleep {sleep.sum():3d}")


if __name__ == "__main__":
    import gymnasium as gym

    import worldsim  # noqa: F401  (registers the envs)
    from worldsim.agents import make_agent
    from worldsim.data import load_episodes

    if args.load:
        with np.load(args.load) as z:
            frames, actions = z["frames"][:args.steps + 1], z["actions"][:args.steps]
    else:
        torch.set_num_threads(args.threads)
        env = gym.make("worldsim/Crafter-v0", termination_threshold=2.0, horizon=args.steps + 1,
                       **({"bundle": args.bundle} if args.bundle else {}))
        agent = make_agent("explorer", env.action_space, seed=1000000)  # configs/eval.yaml's seed, as eval
        obs, _ = env.reset(seed=1000000)
        agent.reset()
        frames = np.zeros((args.steps + 1, *obs.shape), np.uint8)
        actions = np.zeros(args.steps, np.int64)
        frames[0] = obs
        for t in range(args.steps):
            actions[t] = agent.act(obs)
            obs, *_ = env.step(actions[t])
            frames[t + 1] = obs
        env.close()
    if args.save:
        np.savez_compressed(args.save, frames=frames, actions=actions)
    if args.strip:
        import imageio.v2 as imageio

        path, a, b, every = args.strip[0], *map(int, args.strip[1:])
        imageio.imwrite(path, np.concatenate([np.pad(frames[i], ((0, 0), (0, 2), (0, 0)), constant_values=255)
                                              for i in range(a, b, every)], 1))
    real = [stats(ep["frames"], np.asarray(ep["actions"])) for ep in load_episodes(args.real)]
    row("real held-out", *(np.concatenate(x) for x in zip(*real)))
    s = stats(frames, actions)
    for b in range(0, args.steps, args.block):
        row(f"{b + 1}-{min(b + args.block, args.steps)}", *(x[b:b + args.block] for x in s))
