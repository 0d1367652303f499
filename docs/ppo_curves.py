"""Learning curves of `worldsim ppo` runs: the reward each run's training world paid (per 1,000 steps) and, where
it was scored along the way (`score_every`), its return in the real game, against env steps.

    python docs/ppo_curves.py OUT.png LABEL=RUN_DIR [LABEL=RUN_DIR ...] [--random R]

``--random R`` draws the random agent's real-game return (from a run's score.json) as a line.
"""
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

args = sys.argv[1:]
random_return = None
if "--random" in args:
    i = args.index("--random")
    random_return = float(args[i + 1])
    del args[i:i + 2]
out, runs = args[0], [a.split("=", 1) for a in args[1:]]
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
for label, run in runs:
    rows = [json.loads(line) for line in open(Path(run) / "log.jsonl")]
    ax1.plot([r["step"] for r in rows], [r["reward_per_1000"] for r in rows], label=label)
    scored = [r for r in rows if "real_return" in r]
    if scored:
        ax2.plot([r["step"] for r in scored], [r["real_return"] for r in scored], "o-", label=label)
if random_return is not None:
    ax2.axhline(random_return, color="grey", ls="--", label="random agent")
ax1.set(xlabel="env steps", ylabel="reward per 1,000 steps", title="in its training world")
ax2.set(xlabel="env steps", ylabel="return per episode", title="in the real game")
for ax in (ax1, ax2):
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
fig.tight_layout()
fig.savefig(out, dpi=110)
print(f"wrote {out}")
