"""`worldsim <job> [key=value ...]`: every job is a Hydra config in worldsim/configs (configs/ in the repo).

Jobs: collect, train, play, eval, bench, import, codebook, heads, ticks, rollout, ppo. `worldsim <job> --cfg` prints the composed config.
Flags of the form `--name` are shorthand for `name=true` (e.g. `worldsim play --compare`).
`worldsim import vpt|minerl DIR` is shorthand for `worldsim import source=vpt|minerl src=DIR`.
"""
from __future__ import annotations

import sys

from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

JOBS = {
    "collect": "worldsim.collect:collect",
    "train": "worldsim.train:train",
    "play": "worldsim.play:play",
    "eval": "worldsim.evaluate:evaluate",
    "bench": "worldsim.bench:bench",
    "import": "worldsim.importers:import_data",
    "codebook": "worldsim.codebook:codebook_job",
    "heads": "worldsim.heads:heads_job",
    "ticks": "worldsim.ticks:ticks_job",
    "rollout": "worldsim.rollout:rollout",
    "ppo": "worldsim.agents.ppo:ppo_job",
}


def load_config(job: str, overrides: list[str] | None = None):
    # compose() rather than @hydra.main: no working-directory change or log folders, and jobs stay callable
    # from Python (the tests call them the same way the CLI does).
    with initialize_config_module(config_module="worldsim.configs", version_base="1.3"):
        return compose(config_name=job, overrides=list(overrides or []))


def run_job(job: str, overrides: list[str] | None = None):
    if job not in JOBS:
        raise SystemExit(f"unknown job {job!r}; choose one of: {', '.join(JOBS)}")
    cfg = load_config(job, overrides)
    mod, fn = JOBS[job].split(":")
    return getattr(__import__(mod, fromlist=[fn]), fn)(cfg)


def main(argv: list[str] | None = None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    job, rest = argv[0], argv[1:]
    if "--cfg" in rest:
        print(OmegaConf.to_yaml(load_config(job, [a for a in rest if a != "--cfg"])))
        return 0
    if job == "import":  # positional form: worldsim import SOURCE DIR
        positional = [a for a in rest if "=" not in a and not a.startswith("-")]
        rest = [a for a in rest if a not in positional] + [f"{k}={v}" for k, v in zip(("source", "src"), positional)]
    overrides = [f"{a[2:]}=true" if a.startswith("--") and "=" not in a else a.lstrip("-") for a in rest]
    try:
        run_job(job, overrides)
    except KeyboardInterrupt:
        print("interrupted")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
