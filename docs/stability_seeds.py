"""2,000-step stability of the shipped Crafter model under several snap settings, three explorer seeds each
(each seed also draws its own start state and bank of real frames from data/crafter-heldout).

    python docs/stability_seeds.py true sample:0.95 sample:0.98    # snap[:certain]
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
out = {}
for setting in sys.argv[1:]:
    snap, certain = (setting.split(":") + [None])[:2]
    for seed in (1, 2, 3):
        cfg = OmegaConf.merge(base, {"seed": 1000000 + 7919 * seed, "snap": snap, "certain": None if certain is None else float(certain)})
        r = stability_eval(cfg, b, eps, 2000, 500)
        blocks = r["blocks"]
        key = f"{setting} seed{seed}"
        out[key] = blocks
        print(key, " | ".join(f"fz {x['frozen_share']:.2f} ch {x['change']:.2f} nn {x['nn_psnr']:.1f} sp {x['spread']:.1f}" for x in blocks), flush=True)
json.dump(out, open("docs/stability_seeds.json", "w"), indent=1)
