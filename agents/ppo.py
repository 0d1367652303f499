"""PPO in one file (CleanRL's recipe): train a policy in worldsim's learned world, or in the real game to compare,
and score it in the real game. `worldsim ppo` (config: configs/ppo.yaml).

    worldsim ppo world=learned steps=200000 out=runs/ppo_learned   # trained only on the model's frames and rewards
    worldsim ppo world=real steps=200000 out=runs/ppo_real         # the same agent and budget on the real game
    worldsim ppo out=runs/ppo_learned eval_only=true               # score a saved policy again

This is what a learned world is for (DIAMOND, GameNGen's agents): experience without the real game. The score
says how much of what the policy learned there holds in the real game; the random agent's score in the same
worlds, and the same budget spent in the real game, are its baselines.

- Policy: NatureCNN's three convolutions (sized for 64 x 64 frames) and one hidden layer, shared by an actor
  (``Discrete`` actions) and a critic. It sees only observations, so one policy runs in either world.
- Envs: ``world=learned`` steps ``num_envs`` worlds as one batch through the native vector env
  (``gym.make_vec("worldsim/Crafter-v0")``, or ``worldsim/World-v0`` with your ``bundle`` for ``env=gym:<id>``);
  ``world=real`` runs the real game in a ``SyncVectorEnv``. Both reset a finished world on the next step
  (Gymnasium's NEXT_STEP autoreset): that step's action is ignored, so it is masked out of the loss, and its
  observation is the finished episode's last, which bootstraps the value where an episode was truncated.
- Checkpoint: ``out/checkpoint/`` (``policy.safetensors`` with the step count and settings,
  ``optimizer.safetensors``), written atomically every ``save_every`` updates and at the end; a killed job
  goes on from the last one (with fresh worlds: the envs are not saved). ``out/log.jsonl``: one line per update.
- Score (``out/score.json``): ``eval_episodes`` real episodes from world seeds ``eval_seed + i``, the policy
  sampling its actions, beside a random agent in the same worlds: return, achievements unlocked (Crafter's
  ``info["achievements"]``; other games: none), length, each episode cut at ``eval_length`` steps.
  ``score_every=K`` also scores the policy on the first ``score_episodes`` of those worlds every K updates
  (``real_return``, ``real_achievements`` in the log): the learning curve in the real game.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from worldsim.checkpoint import (load_optimizer, optimizer_tensors, read_metadata, resolve_dir, tensors_bytes,
                                 write_dir_atomic)

# settings that make a saved policy what it is: resuming with other values would mix two experiments
FIXED = ("env", "world", "bundle", "num_envs", "rollout", "seed")


class Policy(nn.Module):
    """Actor-critic on uint8 (B, H, W, 3) frames."""

    def __init__(self, frame_shape, n_actions: int):
        super().__init__()
        h, w, c = frame_shape

        def layer(m, std=np.sqrt(2)):  # CleanRL's orthogonal init: small logits at first, so actions start uniform
            nn.init.orthogonal_(m.weight, std)
            nn.init.zeros_(m.bias)
            return m

        self.trunk = nn.Sequential(layer(nn.Conv2d(c, 32, 8, 4)), nn.ReLU(), layer(nn.Conv2d(32, 64, 4, 2)), nn.ReLU(),
                                   layer(nn.Conv2d(64, 64, 3, 1)), nn.ReLU(), nn.Flatten())
        with torch.no_grad():
            n = self.trunk(torch.zeros(1, c, h, w)).shape[1]
        self.hidden = nn.Sequential(layer(nn.Linear(n, 512)), nn.ReLU())
        self.actor = layer(nn.Linear(512, n_actions), 0.01)
        self.critic = layer(nn.Linear(512, 1), 1.0)

    def forward(self, obs: torch.Tensor):
        x = self.hidden(self.trunk(obs.permute(0, 3, 1, 2).float() / 255.0))
        return self.actor(x), self.critic(x).squeeze(-1)

    @torch.no_grad()
    def act(self, obs: np.ndarray, generator: torch.Generator | None = None) -> np.ndarray:
        """Sampled actions for a batch of frames."""
        logits, _ = self(torch.as_tensor(obs))
        return torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).squeeze(-1).numpy()


def advantages(rewards, values, terminated, ended, valid, next_value, gamma: float, lam: float) -> np.ndarray:
    """GAE over (T, N) arrays from a NEXT_STEP-autoreset vector env.

    ``ended[t]``: the episode ended at step t (terminated or truncated); ``valid[t]``: step t's action was
    applied (False on the reset step after an end). ``values[t]`` is V(observation before step t); the value
    after step t is ``values[t + 1]`` (``next_value`` after the last), which after an end is V(the episode's
    last observation): used where it was truncated, 0 where it terminated. No advantage crosses an end, and
    reset steps get 0."""
    T = len(rewards)
    adv = np.zeros_like(values, dtype=np.float64)
    last = np.zeros(values.shape[1:], np.float64)
    for t in reversed(range(T)):
        after = values[t + 1] if t + 1 < T else next_value
        delta = rewards[t] + gamma * after * (1.0 - terminated[t]) - values[t]
        last = delta + gamma * lam * last * (1.0 - ended[t])
        last = np.where(valid[t], last, 0.0)
        adv[t] = last
    return adv.astype(np.float32)


def _check(cfg):
    if cfg.world not in ("learned", "real"):
        raise ValueError(f"world must be 'learned' (the model's world) or 'real' (the game), got {cfg.world!r}")
    for key in ("steps", "num_envs", "rollout", "epochs", "minibatches", "save_every"):
        if int(cfg[key]) < 1:
            raise ValueError(f"{key} must be >= 1, got {cfg[key]}")
    if int(cfg.num_envs) * int(cfg.rollout) < int(cfg.minibatches):
        raise ValueError(f"num_envs * rollout ({int(cfg.num_envs) * int(cfg.rollout)}) must be >= minibatches "
                         f"({cfg.minibatches})")


def make_envs(cfg):
    """The training worlds: the learned vector env or the real game's, NEXT_STEP autoreset either way."""
    import worldsim  # noqa: F401  (registers the envs)
    from worldsim.bench import ENV_IDS, learned_env_id
    from worldsim.collect import _make_real_env
    from worldsim.envs.gym_source import is_gym_source, need_bundle

    if not is_gym_source(cfg.env) and cfg.env not in ENV_IDS:
        raise ValueError(f"unknown env {cfg.env!r} for ppo; choose crafter, or gym:<env id> with bundle=")
    N = int(cfg.num_envs)
    if cfg.world == "learned":
        need_bundle(cfg.env, cfg.bundle)
        kw = {"bundle": cfg.bundle} if cfg.bundle else {}
        envs = gym.make_vec(learned_env_id(cfg.env), num_envs=N, vectorization_mode="vector_entry_point",
                            horizon=int(cfg.length), **kw)
    else:
        size = _frame_size(cfg)
        envs = gym.vector.SyncVectorEnv([lambda: _make_real_env(cfg.env, size=size, length=int(cfg.length))
                                         for _ in range(N)])
    if not isinstance(envs.single_action_space, gym.spaces.Discrete):
        raise ValueError(f"ppo trains a Discrete-action policy; env={cfg.env} has {envs.single_action_space}")
    return envs


def _frame_size(cfg):
    """The real game's frame size: the bundle's (a learned world was trained at it), else the game's default."""
    from worldsim.collect import DEFAULT_SIZE
    from worldsim.envs.gym_source import is_gym_source

    if cfg.bundle:
        from worldsim.checkpoint import bundle_path

        with open(bundle_path(cfg.bundle) / "bundle.json") as f:
            h, w = json.load(f)["autoencoder"]["frame_size"]
        return int(h) if h == w else [int(h), int(w)]  # the real Crafter env takes one side
    if is_gym_source(cfg.env):  # 64 high with the env's aspect, known once it has drawn a frame
        from worldsim.collect import _make_real_env

        probe = _make_real_env(cfg.env, length=1)
        probe.reset(seed=0)
        probe.close()
        return probe.size
    return DEFAULT_SIZE[cfg.env]


def save(path: Path, policy: Policy, opt, meta: dict) -> None:
    opt_t, opt_m = optimizer_tensors(opt)
    write_dir_atomic(path, {"policy.safetensors": tensors_bytes(policy.state_dict(), meta),
                            "optimizer.safetensors": tensors_bytes(opt_t, opt_m)})


def load_policy(out) -> tuple[Policy, dict]:
    """The policy saved under ``out`` (a ``worldsim ppo`` run directory) and its metadata."""
    from safetensors.torch import load_file

    ckpt = resolve_dir(Path(out) / "checkpoint")
    if ckpt is None:
        raise FileNotFoundError(f"no PPO checkpoint under {out}/checkpoint; train one with worldsim ppo out={out}")
    meta = read_metadata(ckpt / "policy.safetensors")
    policy = Policy(meta["frame_shape"], meta["n_actions"])
    policy.load_state_dict(load_file(ckpt / "policy.safetensors"))
    return policy, meta


def train(cfg, policy: Policy | None = None) -> dict:
    _check(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    envs = make_envs(cfg)
    N, T = int(cfg.num_envs), int(cfg.rollout)
    frame_shape, n_actions = envs.single_observation_space.shape, int(envs.single_action_space.n)
    torch.manual_seed(int(cfg.seed))
    policy = policy or Policy(frame_shape, n_actions)
    opt = torch.optim.Adam(policy.parameters(), lr=float(cfg.lr), eps=1e-5)
    settings = {k: cfg[k] for k in FIXED}
    step, update = 0, 0
    ckpt = resolve_dir(out / "checkpoint")
    if ckpt is not None:  # resume: the weights, optimizer and counts of the last checkpoint
        saved, meta = load_policy(out)
        if meta["settings"] != settings:
            raise ValueError(f"{out} holds a run with other settings ({meta['settings']}); give another out= "
                             f"or the same settings ({settings})")
        policy.load_state_dict(saved.state_dict())
        load_optimizer(opt, (ckpt / "optimizer.safetensors").read_bytes())
        step, update = int(meta["step"]), int(meta["update"])
        print(f"resuming {out} at step {step} (update {update}), with fresh worlds")
    meta = {"frame_shape": list(frame_shape), "n_actions": n_actions, "settings": settings}

    obs, _ = envs.reset(seed=[int(cfg.seed) + 1000 * update + i for i in range(N)])
    valid_next = np.ones(N, bool)
    ep_return, ep_len = np.zeros(N), np.zeros(N, int)
    log = open(out / "log.jsonl", "a")
    buf = {k: [] for k in ("obs", "actions", "logp", "values", "rewards", "terminated", "ended", "valid")}
    total = int(cfg.steps)
    while step < total:
        t0 = time.perf_counter()
        finished, reward_sum = [], 0.0
        for v in buf.values():
            v.clear()
        for _ in range(T):
            with torch.no_grad():
                logits, value = policy(torch.as_tensor(obs))
            dist = torch.distributions.Categorical(logits=logits)
            action = dist.sample()
            buf["obs"].append(obs)
            buf["actions"].append(action.numpy())
            buf["logp"].append(dist.log_prob(action).numpy())
            buf["values"].append(value.numpy())
            buf["valid"].append(valid_next)
            obs, reward, terminated, truncated, _ = envs.step(action.numpy())
            ended = terminated | truncated
            buf["rewards"].append(reward.astype(np.float32))
            buf["terminated"].append(terminated.astype(np.float32))
            buf["ended"].append(ended.astype(np.float32))
            ep_return += reward * valid_next
            ep_len += valid_next
            reward_sum += float((reward * valid_next).sum())
            for i in np.flatnonzero(ended & valid_next):
                finished.append((float(ep_return[i]), int(ep_len[i]), bool(terminated[i])))
                ep_return[i], ep_len[i] = 0.0, 0
            valid_next = ~ended
            step += N
        collect_s = time.perf_counter() - t0
        with torch.no_grad():
            next_value = policy(torch.as_tensor(obs))[1].numpy()
        b = {k: np.stack(v) for k, v in buf.items()}
        adv = advantages(b["rewards"], b["values"], b["terminated"], b["ended"], b["valid"], next_value,
                         float(cfg.gamma), float(cfg.gae_lambda))
        stats = _update(policy, opt, b, adv, cfg, frac=1.0 - (step - N * T) / total)
        update += 1
        row = {"update": update, "step": step, "reward_per_1000": 1000 * reward_sum / max(1, b["valid"].sum()),
               "episodes": len(finished), "terminated": sum(f[2] for f in finished),
               "mean_return": float(np.mean([f[0] for f in finished])) if finished else None,
               "mean_length": float(np.mean([f[1] for f in finished])) if finished else None,
               "env_steps_per_s": N * T / collect_s, "update_s": time.perf_counter() - t0 - collect_s, **stats}
        print(f"step {step}/{total}  reward/1000 {row['reward_per_1000']:.2f}  episodes {len(finished)}  "
              f"env {row['env_steps_per_s']:.0f} steps/s  update {row['update_s']:.1f} s  "
              f"entropy {stats['entropy']:.3f}")
        if int(cfg.score_every) and update % int(cfg.score_every) == 0:  # the learning curve in the real game
            sc = score(policy, cfg, int(cfg.score_episodes), int(cfg.eval_seed), int(cfg.eval_length))
            row.update(real_return=sc["return"], real_achievements=sc["achievements"], real_length=sc["length"])
            print(f"  real game, {cfg.score_episodes} episodes: return {sc['return']:.2f}, "
                  f"achievements {sc['achievements']:.2f}, length {sc['length']:.0f}")
        log.write(json.dumps(row) + "\n")
        log.flush()
        if update % int(cfg.save_every) == 0 or step >= total:
            save(out / "checkpoint", policy, opt, {**meta, "step": step, "update": update})
    log.close()
    envs.close()
    return {"step": step, "update": update}


def _update(policy: Policy, opt, b: dict, adv: np.ndarray, cfg, frac: float) -> dict:
    """PPO's clipped objective, a value loss and an entropy bonus, over the valid steps, in minibatches."""
    mask = b["valid"].reshape(-1).astype(bool)
    obs = torch.as_tensor(b["obs"].reshape(-1, *b["obs"].shape[2:])[mask])
    actions = torch.as_tensor(b["actions"].reshape(-1)[mask])
    old_logp = torch.as_tensor(b["logp"].reshape(-1)[mask])
    A = torch.as_tensor(adv.reshape(-1)[mask])
    returns = A + torch.as_tensor(b["values"].reshape(-1)[mask])
    for g in opt.param_groups:  # linear learning-rate decay over the whole run (CleanRL's anneal_lr)
        g["lr"] = float(cfg.lr) * max(frac, 0.0)
    n = len(actions)
    size = max(1, n // int(cfg.minibatches))
    stats = []
    for _ in range(int(cfg.epochs)):
        perm = torch.randperm(n)
        for s in range(0, n, size):
            idx = perm[s:s + size]
            logits, value = policy(obs[idx])
            dist = torch.distributions.Categorical(logits=logits)
            logp = dist.log_prob(actions[idx])
            ratio = torch.exp(logp - old_logp[idx])
            a = A[idx]
            if len(idx) > 1:
                a = (a - a.mean()) / (a.std() + 1e-8)
            clip = float(cfg.clip)
            pg = torch.max(-a * ratio, -a * ratio.clamp(1 - clip, 1 + clip)).mean()
            vf = 0.5 * ((value - returns[idx]) ** 2).mean()
            ent = dist.entropy().mean()
            loss = pg + float(cfg.vf_coef) * vf - float(cfg.ent_coef) * ent
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(policy.parameters(), float(cfg.max_grad_norm))
            opt.step()
            with torch.no_grad():
                kl = ((ratio - 1) - (logp - old_logp[idx])).mean()
            stats.append((pg.item(), vf.item(), ent.item(), kl.item()))
    pg, vf, ent, kl = np.mean(stats, 0)
    return {"policy_loss": float(pg), "value_loss": float(vf), "entropy": float(ent), "approx_kl": float(kl)}


def score(policy: Policy | None, cfg, episodes: int, seed: int, length: int) -> dict:
    """Episodes of the real game from world seeds seed + i, driven by the policy (None: uniform random actions).
    Returns the mean return, achievements unlocked and length, and each episode's."""
    from worldsim.collect import _make_real_env

    env = _make_real_env(cfg.env, size=_frame_size(cfg), length=int(length))
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    rows = []
    try:
        for i in range(episodes):
            obs, _ = env.reset(seed=seed + i)
            ret, n, info = 0.0, 0, {}
            while True:
                a = policy.act(obs[None], gen)[0] if policy is not None else rng.integers(env.action_space.n)
                obs, r, terminated, truncated, info = env.step(int(a))
                ret, n = ret + float(r), n + 1
                if terminated or truncated:
                    break
            unlocked = sorted(k for k, v in info.get("achievements", {}).items() if v > 0)
            rows.append({"return": ret, "length": n, "died": bool(terminated), "achievements": unlocked})
    finally:
        env.close()
    return {"return": float(np.mean([r["return"] for r in rows])),
            "achievements": float(np.mean([len(r["achievements"]) for r in rows])),
            "length": float(np.mean([r["length"] for r in rows])), "episodes": rows}


def ppo_job(cfg) -> dict:
    torch.set_num_threads(int(cfg.threads) or torch.get_num_threads())
    out = Path(cfg.out)
    if not cfg.eval_only:
        train(cfg)
    policy, meta = load_policy(out)
    res = {"settings": meta["settings"], "trained_steps": meta["step"], "eval_episodes": int(cfg.eval_episodes),
           "eval_length": int(cfg.eval_length), "eval_seed": int(cfg.eval_seed)}
    if int(cfg.eval_episodes) > 0:
        t0 = time.perf_counter()
        args = (cfg, int(cfg.eval_episodes), int(cfg.eval_seed), int(cfg.eval_length))
        res["policy"], res["random"] = score(policy, *args), score(None, *args)
        res["eval_s"] = time.perf_counter() - t0
        print(f"real game, {cfg.eval_episodes} episodes: policy return {res['policy']['return']:.2f}, "
              f"achievements {res['policy']['achievements']:.2f}, length {res['policy']['length']:.0f}; random "
              f"{res['random']['return']:.2f}, {res['random']['achievements']:.2f}, {res['random']['length']:.0f}")
        with open(out / "score.json", "w") as f:
            json.dump(res, f, indent=1)
    return res
