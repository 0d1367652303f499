"""2,000-step stability of the shipped Crafter model under several snap settings, three explorer seeds each
(each seed also draws its own start state and bank of real frames from data/crafter-heldout).

    python docs/stability_seeds.py true sample:0.95 sample:0.98    # snap[:certain]

A setting may instead be eval options, KEY=VALUE joined by commas; --steps N and --block N set the rollout,
--out FILE where the blocks go (default docs/stability_seeds.json):

    python docs/stability_seeds.py new_ground=terrain --steps 10000 --block 1000 --out docs/stability_seeds_terrain.json
"""
import json
import sys
import warnings
from pathlib import Path

import torch
from omegaconf import OmegaConf

from worldsim import DEFAULT_CRAFTER_BUNDLE
from worldsim.data import load_episodes
from worldsim.evaluate import stability_eval
from worldsim.simulator import load_bundle
warnings.filterwarnings("ignore")
torch.set_num_threads(2)
base = OmegaConf.load("configs/eval.yaml")
eps = load_episodes(Path("data/crafter-heldout"))
b = load_bundle(str(DEFAULT_CRAFTER_BUNDLE))
args, opts = sys.argv[1:], {"--steps": "2000", "--block": "500", "--out": "docs/stability_seeds.json"}
for flag in opts:
    if flag in args:
        i = args.index(flag)
        opts[flag] = args[i + 1]
        del args[i:i + 2]
out = {}
for setting in args:
    if "=" in setting:
        over = {k: OmegaConf.create({"v": v}).v for k, v in (kv.split("=", 1) for kv in setting.split(","))}
    else:
        snap, certain = (setting.split(":") + [None])[:2]
        over = {"snap": snap, "certain": None if certain is None else float(certain)}
    for seed in (1, 2, 3):
        cfg = OmegaConf.merge(base, {"seed": 1000000 + 7919 * seed, **over})
        r = stability_eval(cfg, b, eps, int(opts["--steps"]), int(opts["--block"]))
        blocks = r["blocks"]
        key = f"{setting} seed{seed}"
        out[key] = blocks
        print(key, " | ".join(f"fz {x['frozen_share']:.2f} ch {x['change']:.2f} nn {x['nn_psnr']:.1f} sp {x['spread']:.1f}" for x in blocks), flush=True)
json.dump(out, open(opts["--out"], "w"), indent=1)
