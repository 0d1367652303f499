"""How much does a Minetest model's next frame depend on the camera action? (`python docs/camera_sensitivity.py [BUNDLE]`) Start states from the
bundle; compare generated frames for yaw -6/+6 and pitch -6/+6 (same noise) with their spread over noise."""
import sys
import numpy as np, torch
from worldsim.simulator import WorldSimulator, load_bundle
from worldsim.evaluate import stack_actions
from worldsim.envs import minerl_actions
torch.set_num_threads(1)
b = load_bundle(sys.argv[1] if len(sys.argv) > 1 else "worldsim/assets/minetest", "cpu")
W = b.dit.config.context_frames
S = len(b.start_frames)
names = [("yl", (0, -6)), ("yr", (0, 6)), ("pu", (-6, 0)), ("pd", (6, 0))]
sim = WorldSimulator(b, 4, None)
shape = sim.latent_shape
rng = np.random.default_rng(0)
act_d, noise_d = [], []
for s in range(S):
    ctx = b.start_frames[s].numpy()
    ca = {k: v[s].numpy() for k, v in b.start_actions.items()}
    outs = []
    for trial in range(2):
        noise = rng.standard_normal((1, W, *shape)).repeat(4, 0)
        sim.reset(range(4), np.repeat(ctx[None], 4, 0), stack_actions([ca] * 4), noise)
        acts = []
        for n, cam in names:
            a = minerl_actions.noop(); a["camera"] = np.array(cam, np.float32); acts.append(a)
        sn = rng.standard_normal((1, *shape)).repeat(4, 0)
        outs.append(sim.step(stack_actions(acts), sn, np.zeros((4, *shape))).frames.astype(float))
    g = outs[0]
    act_d.append(np.mean([np.abs(g[i] - g[j]).mean() for i in range(4) for j in range(i + 1, 4)]))
    noise_d.append(np.abs(outs[0] - outs[1]).mean())
print(f"mean |frame(a) - frame(a')| over camera actions: {np.mean(act_d):.2f} grey levels; "
      f"same action, other noise: {np.mean(noise_d):.2f}")
