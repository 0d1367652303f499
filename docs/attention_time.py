"""The world model's attention at a step's shapes (81 queries over 81 or 405 keys, 3 heads of 64: a frame alone
and a frame over the 4-frame window and itself) through `scaled_dot_product_attention`, as the model calls it,
against two matmuls and a softmax. Microseconds a call (mean of 200 after 20), batch 1, 16 and 64, this CPU's
threads.

    python docs/attention_time.py
"""
import time

import torch
import torch.nn.functional as F

torch.set_grad_enabled(False)


def us(f, n=200):
    for _ in range(20):
        f()
    t = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - t) / n * 1e6


for B in (1, 16, 64):
    for L in (81, 405):
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(B, 3, n, 64, generator=g) for n in (81, L, L))

        def by_hand():
            s = torch.matmul(q.mul(0.125), k.mT)
            torch.softmax(s, -1, out=s)
            return torch.matmul(s, v)
        diff = (by_hand() - F.scaled_dot_product_attention(q, k, v)).abs().max().item()
        print(f"batch {B:>2d}, {L} keys: sdpa {us(lambda: F.scaled_dot_product_attention(q, k, v)):7.0f} us, "
              f"matmuls and softmax {us(by_hand):7.0f} us (largest difference {diff:.1e})")
