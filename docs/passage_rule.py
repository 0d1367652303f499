"""Which tile groups real Crafter moves pass, read from data, and a bundle that forces it (README, Crafter:
terrain prior, "a blocked-move rule"): for every move of data/crafter_detour's training split, the group of the
cell the move faces (next to the player) and whether the view scrolled (codebook.passage_counts); prints the
groups the rule decides (at most 2 % or at least 98 % of 20 or more moves passed) and writes a copy of the
shipped bundle to OUT with the counts and decode.passage=true (the simulator then makes a move over a blocking
group stay and one over a passable group scroll, whatever the model's frame did).

    python docs/passage_rule.py OUT
"""
import json
import pathlib
import shutil
import sys

from worldsim import DEFAULT_CRAFTER_BUNDLE
from worldsim.codebook import passage_counts, passage_rule
from worldsim.data import load_episodes
from worldsim.simulator import load_bundle

out = pathlib.Path(sys.argv[1])
b = load_bundle(str(DEFAULT_CRAFTER_BUNDLE))
eps = load_episodes(pathlib.Path("data/crafter_detour"), split="train")
c = passage_counts(b.codec, b.codebook.float().cpu(), b.codebook_groups.cpu(), eps, b.env["map"],
                   b.env["action_space"]["n"])
rule, n = passage_rule(c), c[:, 0]
print(f"{int(n.sum())} real moves, {int(c[:, 1].sum())} scrolled")
for v, name in ((0, "blocking"), (1, "passable"), (-1, "undecided")):
    print(f"{name}: {int((rule == v).sum())} groups, {int(n[rule == v].sum())} moves, {int(c[rule == v, 1].sum())} passed")
shutil.copytree(DEFAULT_CRAFTER_BUNDLE, out, dirs_exist_ok=True)
meta = json.loads((out / "bundle.json").read_text())
meta["codebook"]["passage"] = {"counts": c.tolist(), "data": "data/crafter_detour"}
meta["decode"]["passage"] = True
(out / "bundle.json").write_text(json.dumps(meta, indent=1))
print("written", out)
