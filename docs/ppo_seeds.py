"""PPO runs' real-game scores side by side, and their mean over seeds (docs/results.md: Training an agent in
the learned world).

    python docs/ppo_seeds.py SCORE.json [SCORE.json ...] [--out FILE]

Each SCORE.json is a run's `score.json` (`worldsim ppo ... out=RUN`, or a copy under docs/). Prints per run the
policy's and the same process's random agent's return and achievements over its eval episodes, the policy's
margin over that random agent, then the mean and the spread (sample standard deviation) of each over the runs.
"""
import argparse
import json
import statistics

ap = argparse.ArgumentParser()
ap.add_argument("scores", nargs="+")
ap.add_argument("--out")
args = ap.parse_args()
rows = []
for path in args.scores:
    s = json.loads(open(path).read())
    p, r = s["policy"], s["random"]
    rows.append({"file": path, "seed": s["settings"].get("seed"), "steps": s["trained_steps"],
                 "episodes": s["eval_episodes"], "return": p["return"], "achievements": p["achievements"],
                 "random_return": r["return"], "random_achievements": r["achievements"],
                 "margin": p["return"] - r["return"]})
keys = ("return", "achievements", "random_return", "random_achievements", "margin")
print("run | seed | steps | return | achievements | random return | random achievements | margin")
for row in rows:
    print(f"{row['file']} | {row['seed']} | {row['steps']} | " + " | ".join(f"{row[k]:.2f}" for k in keys))
summary = {k: {"mean": statistics.mean(row[k] for row in rows),
               "sd": statistics.stdev(row[k] for row in rows) if len(rows) > 1 else 0.0} for k in keys}
print(f"mean of {len(rows)} | | | " + " | ".join(f"{summary[k]['mean']:.2f} ± {summary[k]['sd']:.2f}" for k in keys))
if args.out:
    with open(args.out, "w") as f:
        json.dump({"runs": rows, "mean_sd": summary}, f, indent=1)
