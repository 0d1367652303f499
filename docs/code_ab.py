"""Two versions of the code, stepped in alternation: milliseconds per step and whether their frames and rewards are
the same bit for bit.

    git worktree add /tmp/base COMMIT
    python docs/code_ab.py /tmp/base [ROUNDS=3] [BATCH=1] [QUANTIZE]

Each round runs the shipped Crafter env once from the other tree and once from this one, each in a fresh
process (seed 0, random actions seeded 0, 30 warm-up steps, then 400 timed steps at batch 1 or 20 batched), so
this VM's drift between minutes falls on both alike. QUANTIZE (none or int8): the env's `quantize` (default: the
bundle's, int8 for the shipped Crafter model; the issue's speed target names fp32, `none`). The other tree is put
first on PYTHONPATH; `envs/` is always this checkout's (the editable install maps `worldsim.envs` to it), so
compare changes outside it.
Prints each round's ms per step, and compares the two trees' frames and rewards of the warm-up and the first
20 timed steps.
"""
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CHILD = r"""
import sys, time, numpy as np, gymnasium as gym
import worldsim
tree, out, B = sys.argv[1], sys.argv[2], int(sys.argv[3])
kw = {"quantize": sys.argv[4]} if len(sys.argv) > 4 else {}
assert worldsim.__file__.startswith(tree), worldsim.__file__
env = gym.make("worldsim/Crafter-v0", **kw) if B == 1 else gym.make_vec("worldsim/Crafter-v0", num_envs=B, **kw)
env.reset(seed=0)
env.action_space.seed(0)
frames, rewards = [], []
for _ in range(30):
    o, r, *_ = env.step(env.action_space.sample())
    frames.append(o); rewards.append(r)
n = 400 if B == 1 else 20
t = time.perf_counter()
for i in range(n):
    o, r, *_ = env.step(env.action_space.sample())
    if i < 20:
        frames.append(o); rewards.append(r)
ms = 1000 * (time.perf_counter() - t) / n
np.savez(out, frames=np.array(frames), rewards=np.array(rewards))
print(f"{ms:.2f}")
"""


def run(tree: Path, out: Path, batch: int, quantize: list) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree), "TQDM_DISABLE": "1"}
    r = subprocess.run([sys.executable, "-c", CHILD, str(tree), str(out), str(batch), *quantize], env=env,
                       cwd=tempfile.gettempdir(),
                       capture_output=True, text=True, check=True)
    return float(r.stdout.strip().splitlines()[-1])


def main():
    other = Path(sys.argv[1]).resolve()
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    batch = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    quantize = sys.argv[4:5]
    here = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as d:
        a, b = Path(d) / "other.npz", Path(d) / "here.npz"
        times = []
        for i in range(rounds):
            times.append((run(other, a, batch, quantize), run(here, b, batch, quantize)))
            print(f"round {i + 1}: {other} {times[-1][0]:.2f} ms, this tree {times[-1][1]:.2f} ms per step (batch {batch})")
        med = np.median(np.array(times), axis=0)
        print(f"median: {med[0]:.2f} against {med[1]:.2f} ms ({100 * (1 - med[1] / med[0]):.1f} % less time in this tree)")
        x, y = np.load(a), np.load(b)
        print("frames the same bit for bit:", np.array_equal(x["frames"], y["frames"]),
              "| rewards the same:", np.array_equal(x["rewards"], y["rewards"]))


if __name__ == "__main__":
    main()
