"""A replaced-token-detection step in your own trainer, with electra_fast's fused ops.

Runs as is on the CPU (reference path) or a CUDA GPU (Triton path):
    python examples/fused_ops_step.py
or with the backend named at the call sites (triton on the CPU needs TRITON_INTERPRET=1):
    python examples/fused_ops_step.py triton
"""

import sys

import torch
import torch.nn as nn

from electra_fast.ops import generator_loss_and_sample, replace_tokens, rtd_loss

device = "cuda" if torch.cuda.is_available() else "cpu"
backend = sys.argv[1] if len(sys.argv) > 1 else "auto"  # auto: Triton on CUDA, the reference on the CPU
V, E, H, B, T, P = 1000, 64, 128, 4, 32, 5

# your own networks: any generator producing (B, T, E) features and any discriminator encoder
word_emb = nn.Embedding(V, E).to(device)
nn.init.normal_(word_emb.weight, std=0.02)
generator = nn.Sequential(nn.Linear(E, E), nn.GELU(), nn.LayerNorm(E)).to(device)
discriminator = nn.Sequential(nn.Linear(E, H), nn.GELU()).to(device)
lm_bias = nn.Parameter(torch.zeros(V, device=device))
rtd_head = nn.Linear(H, 1).to(device)

# a masked batch: original ids, P masked positions per row (the format of electra_fast.masking)
original = torch.randint(5, V, (B, T), device=device)
positions = torch.stack([torch.randperm(T - 1, device=device)[:P].sort().values + 1 for _ in range(B)])
weights = torch.ones(B, P, device=device)
masked_input = original.scatter(1, positions, 4)  # [MASK] = 4

# 1. generator LM head at the masked rows only: MLM loss + Gumbel-max samples, no [M, V] logits
h = generator(word_emb(masked_input))  # (B, T, E)
h_masked = torch.gather(h, 1, positions[..., None].expand(B, P, E)).reshape(B * P, E)
targets = torch.gather(original, 1, positions).reshape(-1)
mlm_loss, samples = generator_loss_and_sample(h_masked, word_emb.weight, lm_bias, targets, seed=1234,
                                              backend=backend)

# 2. corrupt: samples written into the original ids, and the is-replaced labels, in one pass
corrupted, is_replaced = replace_tokens(original, positions, samples.view(B, P), weights, backend=backend)

# 3. discriminator + fused H -> 1 projection and BCE over real tokens
d = discriminator(word_emb(corrupted))  # (B, T, H)
real = torch.ones(B, T, dtype=torch.bool, device=device)
disc_loss = rtd_loss(d, rtd_head.weight.view(-1), rtd_head.bias.view(()), is_replaced, real, backend=backend)

loss = mlm_loss + 50.0 * disc_loss  # ELECTRA's weighting
loss.backward()
print(f"mlm_loss={mlm_loss.item():.3f} disc_loss={disc_loss.item():.3f} "
      f"replaced={is_replaced.float().mean().item():.3f}")
