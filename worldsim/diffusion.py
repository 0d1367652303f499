"""EDM diffusion (Karras et al. 2022) around the world model: preconditioning, diffusion-forcing loss, sampler.

Latents are normalised to unit variance, so sigma_data = 1. Each frame of a training sequence gets its own
noise level (diffusion forcing); half the sequences instead keep every frame but the last near-clean, with
a small random "context noise" level the model is told about, which is exactly the inference-time
situation and what makes the model robust to its own slightly-off past frames (anti-drift).

`residual=True` centres the denoiser's skip connection on the previous frame's clean latent instead of
zero: the network predicts what changes, and its zero output means "the frame stays as it was". For a
world model with a warp input the centre is that input itself, the previous frame as committed to the
context and shifted by the camera action, so the zero output means "the view turned as the camera did".
The network and its KV cache are unchanged; only the preconditioning (`denoised`), the loss target and the
sampler's starting point know the previous frame.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import EDMEulerScheduler

from worldsim.data import index_actions
from worldsim.model import ModelOutput


@dataclass
class EDMConfig:
    sigma_data: float = 1.0
    p_mean: float = -0.4  # log-normal training noise levels
    p_std: float = 1.2
    sigma_min: float = 0.002
    sigma_max: float = 20.0
    rho: float = 7.0
    sampling_steps: int = 3  # few-step Euler sampler
    teacher_forcing_prob: float = 0.5  # share of sequences with near-clean context and one noisy last frame
    context_noise_max: float = 0.3  # training: context noise level ~ U(0, max)
    context_noise: float = 0.05  # inference: noise level added to each generated frame before it becomes context
    reward_pos_weight: float = 10.0  # training: weight of transitions with |reward| > 0.5 in the reward loss
    # (achievements are rare, about 1 step in 100 in Crafter: unweighted, the head learns to predict ~0)
    action_dropout: float = 0.0  # training: share of frames whose action is hidden (the null embedding),
    # so the model also learns the action-free prediction that classifier-free guidance extrapolates from
    guidance: float = 1.0  # inference: classifier-free guidance on the action (1 = off; > 1 needs a model
    # trained with action_dropout > 0, and costs a second network pass per sampling step)
    guidance_keep_mean: bool = False  # guidance > 1 (inference and distillation): the guided frame keeps the
    # conditional prediction's per-channel mean over the frame, so guidance extrapolates the action's local effect
    # (a scroll, the player's turn) and not a global colour shift: at guidance 2 the Crafter model's light stopped
    # following dusk (docs/results.md, "Light")
    residual: bool = False  # denoise the change from the previous frame's clean latent instead of the frame:
    # D = prev + c_skip (x - prev) + c_out F. The network's zero output is "copy the last frame" (with a warp input:
    # the last frame shifted by the camera), so a step where little changes comes out near-exact instead of
    # rebuilt from noise (Crafter: most steps change a few tiles)


class EDM:
    def __init__(self, cfg: EDMConfig):
        self.cfg = cfg
        self._sigmas: dict[int, list[float]] = {}

    def guide(self, free, cond, guidance: float):
        """Classifier-free guidance on (B, C, h, w) predictions (denoised frames, or raw outputs at one input:
        the skip term is the same in both and cancels): free + guidance (cond - free), with guidance_keep_mean
        shifted back to cond's per-channel mean over the frame."""
        out = free + guidance * (cond - free)
        if self.cfg.guidance_keep_mean:
            out = out - out.mean(dim=(-2, -1), keepdim=True) + cond.mean(dim=(-2, -1), keepdim=True)
        return out

    # ---- preconditioning -----------------------------------------------------------------------
    def c_noise(self, sigma):
        """Noise level -> scalar in [0, 1000] for the sinusoidal embedding (diffusers' Timesteps expects that range)."""
        c = self.cfg
        s = sigma.clamp(c.sigma_min, c.sigma_max)
        return 1000 * (s.log() - math.log(c.sigma_min)) / (math.log(c.sigma_max) - math.log(c.sigma_min))

    def scalings(self, sigma):
        sd = self.cfg.sigma_data
        var = sigma**2 + sd**2
        return sd**2 / var, sigma * sd / var.sqrt(), 1 / var.sqrt()  # c_skip, c_out, c_in

    @staticmethod
    def _bc(s, x):  # broadcast per-frame sigma over (C, h, w)
        return s.reshape(*s.shape, *([1] * (x.dim() - s.dim())))

    def raw_target(self, z, x, sigma, prev=None):
        """The raw network output that denoises x (at level sigma) to z: denoised(x, sigma, raw, prev) = z; what is
        left of z after the skip connection."""
        _, c_out, _ = self.scalings(sigma)
        return (z - self.denoised(x, sigma, 0.0, prev)) / self._bc(c_out, z)

    def model_input(self, x, sigma):
        _, _, c_in = self.scalings(sigma)
        return x * self._bc(c_in, x), self.c_noise(sigma)

    def denoised(self, x, sigma, raw, prev=None):
        """The denoised estimate; prev: the previous frame's clean latent (residual models), which the skip
        connection is centred on."""
        c_skip, c_out, _ = self.scalings(sigma)
        if prev is None:
            return self._bc(c_skip, x) * x + self._bc(c_out, x) * raw
        return prev + self._bc(c_skip, x) * (x - prev) + self._bc(c_out, x) * raw

    @staticmethod
    def previous_frames(z):
        """(B, T, ...) -> each frame's predecessor; frame 0 has none (itself, and it is never a residual target)."""
        return torch.cat([z[:, :1], z[:, :-1]], dim=1)

    def residual_anchor(self, model, z, warp_in, actions, has_action):
        """(B, T, C, h, w) what a residual model's skip connection is centred on for each frame (None when not
        residual): the previous frame's clean latent, or for a model with a warp input that input itself
        (warp_in shifted by each frame's action; unshifted where the action is hidden, as the network sees it).
        Why the warp input and not the clean frame: it is what the simulator has at inference (the committed,
        context-noised frame), and on held-out Minetest the last frame shifted by the camera, with no model,
        scored 96.8 % camera following and +2.29 dB pooled over copy-last (docs/results.md: `warp_copy`)."""
        if not self.cfg.residual:
            return None
        if warp_in is not None:
            return model.warped_previous(warp_in, actions, has_action)
        return self.previous_frames(z)

    # ---- training --------------------------------------------------------------------------------
    def context_previous(self, z, generator=None):
        """Each frame's predecessor as the simulator keeps it, a lightly noised context frame (levels
        U(0, context_noise_max)): what a world model with a warp input reads beside the frame."""
        prev = self.previous_frames(z)
        lvl = torch.rand(*z.shape[:2], device=z.device, generator=generator) * self.cfg.context_noise_max
        return prev + self._bc(lvl, z) * torch.randn(z.shape, device=z.device, generator=generator)

    def sample_sigmas(self, B, T, device, generator=None, teacher_forcing: bool | None = None):
        """Per-frame noise levels and which frames are denoising targets (the rest are context).
        teacher_forcing=True gives every sequence the inference layout (near-clean context, the last frame the
        target); None draws it per sequence with probability teacher_forcing_prob."""
        c = self.cfg
        sig = (torch.randn(B, T, device=device, generator=generator) * c.p_std + c.p_mean).exp()
        is_target = torch.ones(B, T, dtype=torch.bool, device=device)
        tf = torch.rand(B, device=device, generator=generator) < c.teacher_forcing_prob
        if teacher_forcing is not None:
            tf = torch.full_like(tf, bool(teacher_forcing))
        ctx = torch.rand(B, T, device=device, generator=generator) * c.context_noise_max
        ctx_frames = tf[:, None] & (torch.arange(T, device=device) < T - 1)[None]
        sig = torch.where(ctx_frames, ctx, sig)
        is_target &= ~ctx_frames
        if c.residual:  # frame 0 has no previous frame to be the change from
            is_target[:, 0] = False
        return sig, is_target

    @staticmethod
    def changed_tokens(z, threshold: float):
        """(B, T, h, w) bool: the latent tokens of each frame that differ from the frame before by more than
        `threshold` (mean absolute over channels, normalised units); a window's first frame has none. 0.2 finds
        every Crafter tile that changed by a visible glyph (an inventory digit: median 1.0) and 71 % of all
        tiles that changed by more than 8 grey levels, the rest being daylight drift, with 0.2 % false."""
        d = (z[:, 1:] - z[:, :-1]).abs().mean(dim=2) > threshold
        return torch.cat([torch.zeros_like(d[:, :1]), d], dim=1)

    @staticmethod
    def novel_tokens(z, threshold: float):
        """(B, T, h, w) bool: the tokens of each frame that differ by more than `threshold` (as changed_tokens)
        from every token of the frame before in the 3 x 3 cells around theirs: what a step made (wood in the
        inventory, a struck tree, a creature stepping in), not ground a scroll of one cell brought along,
        which is most of changed_tokens on a move step. A window's first frame has none."""
        a, b = z[:, :-1], z[:, 1:]
        h, w = z.shape[-2:]
        pad = F.pad(a.flatten(0, 1), (1, 1, 1, 1), mode="replicate").unflatten(0, a.shape[:2])
        near = torch.stack([(b - pad[..., i:i + h, j:j + w]).abs().mean(dim=2) for i in range(3) for j in range(3)])
        d = near.min(0).values > threshold
        return torch.cat([torch.zeros_like(d[:, :1]), d], dim=1)

    @staticmethod
    def token_weights(changed, weight: float):
        """Per-token loss weights (B, ..., 1, h, w): `weight` on changed tokens, 1 elsewhere, scaled to mean 1
        per batch so the learning rate means the same at every weight."""
        w = 1 + (weight - 1) * changed.float()
        return (w / w.mean()).unsqueeze(-3)

    def loss(self, model, z, actions, has_action, reward, terminated, has_transition, generator=None,
             teacher_forcing: bool | None = None, change_weight: float = 1.0, change_threshold: float = 0.2,
             clock=None, novel_weight: float = 1.0, ticks=None, tick_since=None, tick_skip_last: bool = False):
        """z: (B, T, C, h, w) clean normalised latents. Returns total loss and its parts.
        ticks, tick_since: (B, T, K) the ticks of the step into each frame and the steps since each type last
        happened (WindowDataset), for models with ticks: the frames read the ticks, the tick head learns them
        (not from the last step with tick_skip_last: see _tick_loss).
        clock: int (B, T) each frame's step count since the game began (models with a clock).
        teacher_forcing: as in `sample_sigmas` (True: only the last frame is a target).
        change_weight: the loss of the tokens that changed from the frame before (changed_tokens at
        change_threshold) counts this many times: what a step does (a struck tree, an inventory count) is a
        few tokens of a frame that mostly stays, and the mean loss would rather get the rest right.
        novel_weight: the same for the novel tokens (novel_tokens), on top: on a move step nearly every map
        token changed (the scroll), so change_weight alone hardly lifts an inventory count among them."""
        B, T = z.shape[:2]
        if frame_context(model):  # its context frames attend to themselves alone: only the last frame is a target
            teacher_forcing = True
        sigma, is_target = self.sample_sigmas(B, T, z.device, generator, teacher_forcing)
        has_action = self.drop_actions(has_action, generator)
        noise = torch.randn(z.shape, device=z.device, generator=generator)
        x = z + self._bc(sigma, z) * noise
        inp, c_noise = self.model_input(x, sigma)
        warp_in = self.context_previous(z, generator) if warps(model) else None
        out = model(inp, c_noise, actions, has_action, prev=warp_in, clock=clock, ticks=ticks)
        prev = self.residual_anchor(model, z, warp_in, actions, has_action)
        target = self.raw_target(z, x, sigma, prev)
        err = F.mse_loss(out.out.float(), target, reduction="none")
        if change_weight != 1:
            err = err * self.token_weights(self.changed_tokens(z, change_threshold), change_weight)
        if novel_weight != 1:
            err = err * self.token_weights(self.novel_tokens(z, change_threshold), novel_weight)
        per_frame = err.mean(dim=(2, 3, 4))
        diff = (per_frame * is_target).sum() / is_target.sum().clamp(min=1)
        rew, term = self._head_losses(out, sigma, reward, terminated, has_transition, model)
        tick = self._tick_loss(model, out, sigma, actions, has_action, ticks, tick_since, tick_skip_last)
        return diff + rew + 0.1 * term + 0.1 * tick, {"diffusion": diff.item(), "reward": rew.item(),
                                                      "termination": term.item(),
                                                      **({"tick": tick.item()} if ticks is not None else {})}

    def drop_actions(self, has_action, generator=None):
        """Training: hide the action of a share action_dropout of the frames (guidance needs the action-free
        prediction)."""
        if self.cfg.action_dropout <= 0:
            return has_action
        return has_action & (torch.rand(has_action.shape, device=has_action.device, generator=generator)
                             >= self.cfg.action_dropout)

    def _tick_loss(self, model, out, sigma, actions, has_action, ticks, tick_since, skip_last: bool = False):
        """The tick head's loss (BCE): each near-clean frame's features, with the next step's action and the
        steps since each tick, predict that step's ticks, as the simulator draws them from its newest committed
        frame. Steps whose action was dropped (action_dropout) do not count, nor with skip_last the window's
        last step: windows drawn more often where it ticks (dit.tick_weight) would teach the head that ticks
        are that much commoner than they are."""
        if getattr(model, "tick_head", None) is None:
            return torch.zeros((), device=sigma.device)
        if ticks is None:
            raise ValueError("this world model has ticks: pass ticks and tick_since (episodes with counters)")
        nxt = np.s_[:, 1:]
        mask = (has_action[:, 1:] & (sigma[:, :-1] <= self.cfg.context_noise_max)).float()
        if skip_last:
            mask[:, -1] = 0
        logits = model.tick_logits(out.features[:, :-1].mean(dim=-2), index_actions(actions, nxt),
                                   has_action[:, 1:], tick_since[:, 1:])
        bce = F.binary_cross_entropy_with_logits(logits.float(), ticks[:, 1:].float(), reduction="none").mean(-1)
        return (bce * mask).sum() / mask.sum().clamp(min=1)

    def _head_losses(self, out, sigma, reward, terminated, has_transition, model=None):
        """Reward (MSE, achievement steps up-weighted) and termination (BCE) losses of the heads.
        Heads learn from near-clean frames: at inference they read the committed (context-noised) frame.
        heads_input="pair" heads learn only where they read what the env gives them, two frames each attending
        to itself alone: not the first frame (no frame before it) nor the last (it attends to the window).
        heads_input="sample_pair" heads learn only at the last frame, the one that attends to the window (beside
        the frame before it, which attends to itself alone), and at any noise level (it reads a sampling pass)."""
        head_mask = has_transition & (sigma <= self.cfg.context_noise_max)
        mode = getattr(getattr(model, "config", None), "heads_input", "window")
        if mode == "pair":
            head_mask = head_mask.clone()
            head_mask[:, 0] = head_mask[:, -1] = False
        elif mode == "sample_pair":
            head_mask = torch.zeros_like(has_transition)
            head_mask[:, -1] = has_transition[:, -1]
        n = head_mask.sum().clamp(min=1)
        w_rew = 1 + (self.cfg.reward_pos_weight - 1) * (reward.abs() > 0.5).float()
        rew = (F.mse_loss(out.reward.float(), reward, reduction="none") * w_rew * head_mask).sum() / n
        term = (F.binary_cross_entropy_with_logits(out.term_logit.float(), terminated.float(), reduction="none",
                                                   pos_weight=torch.tensor(10.0, device=sigma.device)) * head_mask).sum() / n
        return rew, term

    # ---- cached inference: one definition for the simulator and for training on the model's own frames ----
    @torch.no_grad()
    def prefill(self, model, cache, rows, z, actions, has_action, times, noise, level: float, clock=None,
                ticks=None, return_out: bool = False):
        """Commit context latents z (b, T, C, h, w) into batch `rows` of a KV cache at `times`, each frame
        context-noised (z + level * noise, as context always is). clock: int (b, T) the frames' game steps
        (models with a clock). ticks: (b, T, K) the ticks into each frame (models with ticks). Returns the
        committed latents, and with return_out the pass's ModelOutput too, of the newest frame alone (T = 1: its
        heads and features, which the simulator reads; the other frames' outputs are not computed)."""
        zc = z + level * noise
        inp, c_noise = self.model_input(zc, torch.full(z.shape[:2], level, device=z.device))
        out = model(inp, c_noise, actions, has_action, times=times, return_kv=True,
                    prev=self.previous_frames(zc) if warps(model) else None, clock=clock, ticks=ticks,
                    context_only=True, newest=True)
        cache.clear(rows)
        cache.write_frames(rows, out.kv, times.tolist())
        return (zc, out) if return_out else zc

    @torch.no_grad()
    def step_cached(self, model, cache, t: int, a, prev, prev_ctx, noise, context_noise, level: float,
                    steps: int | None = None, guidance: float = 1.0, project=None, fill=None, clock=None,
                    ticks=None, commit: bool = True, prev_features=None, pending: dict | None = None, has=None,
                    merge: bool = True):
        """One frame of a cached rollout at time t: sample it with the Euler sampler, every pass attending to
        the cache's window, then commit it lightly noised (context_noise * level) in one more pass.
        commit=False leaves that pass out (the ModelOutput returned holds the last sampling pass's features
        alone): for a caller that rebuilds the cache from its window right after, which writes this frame's keys
        again and reads its heads there.
        prev: (B, C, h, w) the newest clean latent; prev_ctx: the same as committed (a warp model reads it).
        fill: for a warp model, a function of its warp input (B, C, h, w) that returns the input to use (the
        simulator's view memory: cells taken from views it holds); every pass, and a residual model's centre,
        then read that one. clock: int (B,) the new frame's game step (models with a clock). ticks: (B, K) the
        ticks of this step, drawn by the caller (models with ticks): every pass reads them. prev_features:
        (B, dim) the previous frame's commit-pass features, averaged over its tokens (heads_input="pair" heads
        read them beside the new frame's).
        pending (heads_input="sample_pair"): the frame of time t - 1, not committed yet, committed first: a dict of
        its committed latent "z" (B, C, h, w), "actions" into it, "has" (B,) and, for models that read them,
        "clock" and "ticks". With guidance 1 and `merge` that commit shares the first sampling pass
        (`forward_cached_pair`), otherwise it is a pass of its own (the same numbers). Then this frame is not committed (commit=False): it is the next step's
        pending frame, and the heads read the last sampling pass beside the pending frame's commit (`pair_heads`).
        has: (B,) bool whether each row's action is known (default all; a reset's one-frame context has none).
        Returns (new latent, committed latent, the residual centre or None, the commit pass's ModelOutput:
        the heads read the committed frame; with commit=False and no pending frame a ModelOutput of the last
        sampling pass's features alone)."""
        B = prev.shape[0]
        has = torch.ones(B, dtype=torch.bool, device=prev.device) if has is None else has
        pv = prev_ctx if warps(model) else None
        if pending is not None and (commit or pv is not None):
            raise ValueError("a pending frame is committed with the next frame's sampling pass, which then stays "
                             "uncommitted (commit=False), and a warp model cannot read it there")
        # residual models: what the skip connection is centred on, with the action and, for guidance's
        # action-free half, without it (a warp model's free half sees the frame unshifted)
        centre = centre_free = None
        acts = {k: v[:, None] for k, v in a.items()} if isinstance(a, dict) else a[:, None]
        wp = wp2 = None  # the warp input, made once when `fill` rebuilds it
        if fill is not None and pv is not None:
            wp = fill(model.warped_previous(pv[:, None], acts, has[:, None])[:, 0])
            if guidance != 1.0:  # the action-free half sees the frame unshifted, as without the fill
                wp2 = torch.cat([wp, model.warped_previous(pv[:, None], acts, ~has[:, None])[:, 0]])
        if self.cfg.residual:
            def centre_of(has_action):  # one-frame sequences: the newest clean latent is their previous frame
                return self.residual_anchor(model, prev[:, None], None if pv is None else pv[:, None], acts,
                                            has_action[:, None])[:, 0]
            centre = centre_of(has) if wp is None else wp  # residual_anchor of a warp model is its warp input
            centre_free = centre_of(~has) if guidance != 1.0 else None
        if guidance != 1.0:  # the batch twice, with and without its action: one pass, not two
            a2, has2 = batch_twice(a), torch.cat([has, ~has])
            pv2 = None if pv is None else batch_twice(pv)
            clock2 = None if clock is None else torch.cat([clock, clock])
            ticks2 = None if ticks is None else torch.cat([ticks, ticks])

        last = {}  # the last sampling pass's features (the action-conditioned half), for `project`
        if pending is not None:  # its model input, at the context level
            p_inp, p_noise = self.model_input(pending["z"], torch.full((B,), level, device=prev.device))
            if guidance != 1.0 or not merge:  # a pass of its own (the guided pass runs the batch twice, the cache once)
                last["commit"] = model.forward_cached(p_inp, p_noise, pending["actions"], pending["has"], cache, t - 1,
                                                      commit=True, outputs="features", clock=pending.get("clock"),
                                                      ticks=pending.get("ticks")).features

        def denoise(x, sigma):
            inp, c_noise = self.model_input(x, sigma)
            if pending is not None and "commit" not in last:  # the pending commit and this pass, in one
                def two(u, v):
                    return None if u is None else torch.stack([u, v], 1)
                acts = ({k: two(pending["actions"][k], a[k]) for k in a} if isinstance(a, dict)
                        else two(pending["actions"], a))
                o = model.forward_cached_pair(two(p_inp, inp), two(p_noise, c_noise), acts, two(pending["has"], has),
                                              cache, t, clock=two(pending.get("clock"), clock),
                                              ticks=two(pending.get("ticks"), ticks))
                last["commit"], last["features"] = o.features[:, 0], o.features[:, 1]
                return self.denoised(x, sigma, o.out, centre)
            if guidance == 1.0:
                o = model.forward_cached(inp, c_noise, a, has, cache, t, prev=pv, warped=wp, outputs="frame", clock=clock,
                                         ticks=ticks)
                last["features"] = o.features
                return self.denoised(x, sigma, o.out, centre)
            # classifier-free guidance: push past the action-free prediction, on the denoised frames (each half
            # has its own centre)
            o = model.forward_cached(torch.cat([inp, inp]), torch.cat([c_noise, c_noise]), a2, has2, cache, t,
                                     prev=pv2, warped=wp2, outputs="frame", clock=clock2, ticks=ticks2)
            last["features"] = o.features[:B]
            raw, free = o.out.chunk(2)
            return self.guide(self.denoised(x, sigma, free, centre_free), self.denoised(x, sigma, raw, centre),
                              guidance)

        z = self.sample(denoise, noise, steps, centre)
        if project is not None:  # the latent the context keeps instead of the sample (the simulator's snap, re-encode)
            z = project(z, centre, last["features"])
        zc = z + level * context_noise
        if pending is not None:
            return z, zc, centre, model.pair_heads(last["features"], last["commit"])
        if not commit:
            return z, zc, centre, ModelOutput(None, None, None, features=last["features"])
        inp, c_noise = self.model_input(zc, torch.full((B,), level, device=z.device))
        out = model.forward_cached(inp, c_noise, a, has, cache, t, commit=True, prev=pv, warped=wp, outputs="heads",
                                   clock=clock, ticks=ticks, prev_features=prev_features)
        return z, zc, centre, out

    @torch.no_grad()
    def rollout(self, model, z, actions, has_action, steps: int, generator=None, clock=None):
        """Scheduled sampling on the model's own rollouts (Bengio et al. 2015): frames W .. W+steps-1 of each
        (B, W+steps+1, C, h, w) sequence are replaced by what the model generates from the real context
        z[:, :W] and the real actions, exactly as the simulator does (`prefill`, then `step_cached` with the
        configured sampling steps, guidance and context noise); the last frame stays real. Returns the new
        latents (clean samples).

        Why: teacher-forced training only ever shows the model real (lightly noised) context, but a rollout
        feeds it its own frames, whose errors it was never taught to undo: the Minetest model's closed loop
        left the autoencoder's manifold within 200 steps (docs/results.md). Trained to predict the real frame from
        generated context, it learns to pull its own drift back."""
        W, c = model.config.context_frames, self.cfg
        B, T, C, h, w = z.shape
        if T != W + steps + 1:
            raise ValueError(f"rollout of {steps} steps needs {W + steps + 1} frames per sequence, got {T}")

        def randn(*shape):
            return torch.randn(*shape, device=z.device, generator=generator)

        def at(t):  # the actions of frames t (an int or a slice) of each sequence
            return index_actions(actions, (slice(None), t))

        p = model.config.patch_size
        cache = model.new_cache(B, (h // p) * (w // p), device=z.device, dtype=next(model.parameters()).dtype)
        gen = z.clone()
        zc = self.prefill(model, cache, list(range(B)), z[:, :W], at(slice(0, W)), has_action[:, :W], torch.arange(W),
                          randn(B, W, C, h, w), c.context_noise, clock=None if clock is None else clock[:, :W])[:, -1]
        for t in range(W, W + steps):
            gen[:, t], zc, _, _ = self.step_cached(model, cache, t, at(t), gen[:, t - 1], zc, randn(B, C, h, w),
                                                   randn(B, C, h, w), c.context_noise, guidance=c.guidance,
                                                   clock=None if clock is None else clock[:, t])
        return gen

    def energy_loss(self, model, z, actions, has_action, reward, terminated, has_transition, generator=None,
                    clock=None):
        """Energy score of the one-step sampler (Gneiting & Raftery 2007): from the same near-clean context, the
        last frame is denoised twice from pure noise at sigma_max, as a 1-step simulator samples it, and
        ES = (|D1 - z| + |D2 - z|) / 2 - |D1 - D2| / 2, each norm over the whole frame's latent, as an RMS.

        Why: the denoising loss is an MSE, so a one-step sample is the conditional mean, and what the context
        cannot tell (terrain a move reveals, the far side of a turn) comes out as its average: Crafter's
        rollouts freeze into grass, Minetest's blur into fog (docs/results.md). The energy score is a proper scoring
        rule, lowest when the samples are distributed as the real frames: its -|D1 - D2| term pays the network
        to use its input noise and sample the unknown part instead of averaging it. Heads keep their usual
        loss (first copy)."""
        B, T = z.shape[:2]
        c, dev = self.cfg, z.device
        sigma = torch.rand(B, T, device=dev, generator=generator) * c.context_noise_max
        sigma[:, -1] = c.sigma_max
        x = z + self._bc(sigma, z) * torch.randn(z.shape, device=dev, generator=generator)
        x2 = x.clone()  # the same context, another draw of the target's noise
        x2[:, -1] = z[:, -1] + c.sigma_max * torch.randn(z[:, -1].shape, device=dev, generator=generator)
        has_action = self.drop_actions(has_action, generator)
        xx, ss = torch.cat([x, x2]), torch.cat([sigma, sigma])
        a2, has2 = batch_twice(actions), torch.cat([has_action, has_action])
        inp, c_noise = self.model_input(xx, ss)
        warp_in = self.context_previous(z, generator) if warps(model) else None
        w2 = None if warp_in is None else batch_twice(warp_in)
        out = model(inp, c_noise, a2, has2, prev=w2, clock=None if clock is None else torch.cat([clock, clock]))
        prev = self.residual_anchor(model, torch.cat([z, z]), w2, a2, has2)
        d1, d2 = self.denoised(xx, ss, out.out.float(), prev)[:, -1].chunk(2)
        es = energy_score(d1, d2, z[:, -1])
        rew, term = self._head_losses(ModelOutput(out.out[:B], out.reward[:B], out.term_logit[:B]), sigma, reward,
                                      terminated, has_transition)
        return es + rew + 0.1 * term, {"energy": es.item(), "reward": rew.item(), "termination": term.item()}

    def distill_loss(self, model, teacher, guidance: float, z, actions, has_action, reward, terminated,
                     has_transition, generator=None, real=None, change_weight: float = 1.0,
                     change_threshold: float = 0.2, change_real: bool = False, clock=None,
                     novel_weight: float = 1.0, ticks=None, tick_since=None, tick_skip_last: bool = False,
                     feature_weight: float = 0.0):
        """Guidance distillation (Meng et al. 2023, "On distillation of guided diffusion models"): the
        student's plain conditional prediction learns the teacher's guided one, free + g (cond - free), so
        inference gets guidance's action following from one network pass instead of a doubled batch.
        guidance 1 is self-distillation (the teacher's own prediction): with `real` (B,) set, those rows learn
        the real frame instead, so a distilled model is corrected where it is wrong without undoing the
        guidance elsewhere (plain denoising training would: it learns the unguided conditional mean).
        change_real: the tokens the real step changed (changed_tokens at change_threshold) learn the real frame
        too, where a teacher that never learnt an event (a struck tree's wood) would teach it to stay away;
        change_weight weights them as in `loss`, novel_weight the novel ones (novel_tokens) on top.

        Only the inference layout is trained: near-clean context (levels U(0, context_noise_max)) and the
        last frame the target, whose action alone the teacher's free pass hides, exactly as the simulator
        does. Half the targets sit at sigma_max, the one level a 1-step sampler uses; the rest follow the
        training distribution so that more sampling steps stay usable. Heads keep their usual loss.
        ticks, tick_since: as in `loss`, for a student with ticks; a teacher with ticks reads them too, one
        without reads none (give `real` for the windows whose last step ticks: it cannot show them).
        feature_weight > 0: the student's last-block tokens of every frame also learn the teacher's (squared error
        relative to their variance, the teacher's plain conditional pass), weighted so; the heads, tick head and
        token head read those tokens, so a student of another build (fewer blocks) keeps them working."""
        B, T = z.shape[:2]
        c, dev = self.cfg, z.device
        sigma = torch.rand(B, T, device=dev, generator=generator) * c.context_noise_max
        last = (torch.randn(B, device=dev, generator=generator) * c.p_std + c.p_mean).exp()
        at_max = torch.rand(B, device=dev, generator=generator) < 0.5
        sigma[:, -1] = torch.where(at_max, torch.full_like(last, c.sigma_max), last)
        x = z + self._bc(sigma, z) * torch.randn(z.shape, device=dev, generator=generator)
        inp, c_noise = self.model_input(x, sigma)
        warp_in = self.context_previous(z, generator) if warps(model) or warps(teacher) else None
        with torch.no_grad():
            if guidance == 1:  # self-distillation: the teacher's own prediction, no action-free pass needed
                t_out = teacher(inp, c_noise, actions, has_action, prev=warp_in, clock=clock,
                                ticks=ticks if teacher.config.ticks else None)
                target, feat = t_out.out.float()[:, -1], t_out.features
            else:
                free_has = has_action.clone()
                free_has[:, -1] = False
                both = teacher(torch.cat([inp, inp]), torch.cat([c_noise, c_noise]), batch_twice(actions),
                               torch.cat([has_action, free_has]),
                               prev=None if warp_in is None else batch_twice(warp_in),
                               clock=None if clock is None else torch.cat([clock, clock]),
                               ticks=torch.cat([ticks, ticks]) if teacher.config.ticks else None)
                cond, free = both.out.float().chunk(2)
                target = self.guide(free[:, -1], cond[:, -1], guidance)
                feat = both.features[:B]  # the conditional pass's tokens
            changed = self.changed_tokens(z[:, -2:], change_threshold)[:, -1] if change_real or change_weight != 1 else None
            if real is not None or change_real:  # these rows / tokens learn the real frame, not the teacher
                use_real = torch.zeros(target.shape[0], 1, *target.shape[2:], dtype=torch.bool, device=dev)
                if real is not None:  # (B,) bool: rows (a correction)
                    use_real = use_real | self._bc(real, use_real)
                if change_real:
                    use_real = use_real | changed.unsqueeze(1)
                raw = self.raw_target(z[:, -1], x[:, -1], sigma[:, -1]).float()
                target = torch.where(use_real, raw, target)
        out = model(inp, c_noise, actions, has_action, prev=warp_in, clock=clock, ticks=ticks)
        err = F.mse_loss(out.out[:, -1].float(), target, reduction="none")
        if change_weight != 1:
            err = err * self.token_weights(changed, change_weight)
        if novel_weight != 1:
            err = err * self.token_weights(self.novel_tokens(z[:, -2:], change_threshold)[:, -1], novel_weight)
        diff = err.mean()
        rew, term = self._head_losses(out, sigma, reward, terminated, has_transition, model)
        tick = self._tick_loss(model, out, sigma, actions, has_action, ticks, tick_since, tick_skip_last)
        loss = diff + rew + 0.1 * term + 0.1 * tick
        parts = {"distill": diff.item(), "reward": rew.item(), "termination": term.item(),
                 **({"tick": tick.item()} if ticks is not None else {})}
        if feature_weight:
            feat = feat.float()
            fd = F.mse_loss(out.features.float(), feat) / feat.var().clamp_min(1e-8)
            loss = loss + feature_weight * fd
            parts["features"] = fd.item()
        return loss, parts

    # ---- sampling ------------------------------------------------------------------------------
    def sampling_sigmas(self, steps: int | None = None) -> list[float]:
        """Karras schedule, taken from diffusers' EDM scheduler table; ends with 0."""
        n = steps or self.cfg.sampling_steps
        if n in self._sigmas:  # computed once per step count: this runs in the per-frame hot path
            return self._sigmas[n]
        c = self.cfg
        sched = EDMEulerScheduler(sigma_min=c.sigma_min, sigma_max=c.sigma_max, sigma_data=c.sigma_data, rho=c.rho)
        sched.set_timesteps(n)
        self._sigmas[n] = [float(s) for s in sched.sigmas]
        return self._sigmas[n]

    @torch.no_grad()
    def sample(self, denoise_fn, noise, steps: int | None = None, prev=None):
        """Deterministic Euler sampler. denoise_fn(x, sigma_tensor) -> denoised x. noise: unit Gaussian.
        prev: residual models start from the previous frame plus noise, as their training inputs are."""
        sigmas = self.sampling_sigmas(steps)
        x = noise * sigmas[0] if prev is None else prev + noise * sigmas[0]
        for s, s_next in zip(sigmas[:-1], sigmas[1:]):
            sig = torch.full(x.shape[:1], s, device=x.device, dtype=x.dtype)
            d = denoise_fn(x, sig)
            x = d if s_next == 0 else x + (s_next - s) * (x - d) / s
        return x


def energy_score(d1, d2, y):
    """Two samples d1, d2 and the real y, (B, ...): the energy score with one norm per frame, scaled by
    1/sqrt(its size) (an RMS), averaged over the batch. A prediction that ignores its noise (d1 = d2) scores
    its RMS error; samples from y's own distribution score lower than its mean does.
    Why one norm per frame: per token it is proper only for each token's own distribution, so independent
    tokens score as well as a coherent frame; trained that way (Minetest, 750 steps) the samples were
    mosaics of tokens, and rollouts of them turned into a snow-coloured texture within 50 steps (docs/results.md)."""
    def norm(v):
        return v.flatten(1).pow(2).mean(1).add(1e-12).sqrt()
    return (0.5 * (norm(d1 - y) + norm(d2 - y)) - 0.5 * norm(d1 - d2)).mean()


def warps(model) -> bool:
    """Whether a world model (or its torch.compile wrapper) reads a shifted previous frame (WorldDiT warp_action)."""
    return getattr(getattr(model, "config", None), "warp_action", None) is not None


def frame_context(model) -> bool:
    """Whether a world model's context frames attend to themselves alone (WorldDiT context_attention="frame")."""
    return getattr(getattr(model, "config", None), "context_attention", "window") == "frame"


def batch_twice(actions):
    """A batch stacked onto itself (a tensor, or a dict of tensors for Dict action spaces)."""
    return {k: torch.cat([v, v]) for k, v in actions.items()} if isinstance(actions, dict) else torch.cat([actions, actions])
