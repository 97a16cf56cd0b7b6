"""The comparison points for benchmarks: ELECTRA pre-training the way people do it with
HuggingFace transformers today, at our model's sizes, on our masked batches.

``ElectraForMaskedLM`` computes generator logits over the full sequence (B x T x V), the loss
takes the masked positions from them, samples are drawn with Gumbel noise on the full masked
logits in torch, and ``ElectraForPreTraining`` reads the corrupted sequence. Needs the ``test``
extra (transformers).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ElectraConfig


def hf_configs(cfg: ElectraConfig):
    import transformers

    common = dict(vocab_size=cfg.vocab_size, embedding_size=cfg.embedding_size,
                  max_position_embeddings=cfg.max_position_embeddings, type_vocab_size=cfg.type_vocab_size,
                  layer_norm_eps=cfg.layer_norm_eps, hidden_dropout_prob=cfg.dropout,
                  attention_probs_dropout_prob=cfg.attention_dropout, hidden_act="gelu")
    disc = transformers.ElectraConfig(hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
                                      num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
                                      **common)
    gen = transformers.ElectraConfig(hidden_size=cfg.generator_hidden_size, num_hidden_layers=cfg.generator_num_layers,
                                     num_attention_heads=cfg.generator_num_heads,
                                     intermediate_size=cfg.generator_intermediate_size, **common)
    return disc, gen


class HFElectra(nn.Module):
    """ElectraForMaskedLM + ElectraForPreTraining with shared embeddings, HF-style step."""

    def __init__(self, cfg: ElectraConfig):
        super().__init__()
        import transformers

        d_cfg, g_cfg = hf_configs(cfg)
        self.cfg = cfg
        self.generator = transformers.ElectraForMaskedLM(g_cfg)
        self.discriminator = transformers.ElectraForPreTraining(d_cfg)
        # share the embeddings (as the official code and the ELECTRA HF examples do)
        self.generator.electra.embeddings = self.discriminator.electra.embeddings
        self.generator.generator_lm_head.weight = self.discriminator.electra.embeddings.word_embeddings.weight

    def forward(self, input_ids, token_type_ids, attention_mask, masked_positions, masked_ids, masked_weights,
                original_ids=None, **_):
        B, T = input_ids.shape
        labels = torch.full_like(input_ids, -100)
        labels.scatter_(1, masked_positions, torch.where(masked_weights > 0, masked_ids, -100))
        gen = self.generator(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask)
        logits = gen.logits  # (B, T, V): the full sequence, as HF computes it
        mlm_loss = F.cross_entropy(logits.view(-1, logits.shape[-1]).float(), labels.view(-1), ignore_index=-100)
        with torch.no_grad():
            is_masked = labels != -100
            u = torch.rand_like(logits, dtype=torch.float32).clamp_(1e-9, 1 - 1e-9)
            sampled = (logits.float() / self.cfg.temperature - torch.log(-torch.log(u))).argmax(-1)
            if original_ids is None:
                original_ids = torch.where(is_masked, labels, input_ids)
            corrupted = torch.where(is_masked, sampled, original_ids)
            disc_labels = (corrupted != original_ids).float()
        disc = self.discriminator(input_ids=corrupted, token_type_ids=token_type_ids, attention_mask=attention_mask)
        real = attention_mask.float()
        bce = F.binary_cross_entropy_with_logits(disc.logits.float(), disc_labels, reduction="none")
        disc_loss = (bce * real).sum() / (real.sum() + 1e-6)
        return mlm_loss + self.cfg.disc_weight * disc_loss


def random_masked_batch(cfg: ElectraConfig, batch_size: int, seq_len: int | None = None, seed: int = 0,
                        device="cpu") -> dict[str, torch.Tensor]:
    """A synthetic full-length batch in the masking format (for timing and FLOP counts)."""
    import numpy as np

    from .masking import mask_batch

    T = seq_len or cfg.max_seq_length
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, cfg.vocab_size, size=(batch_size, T), dtype=np.int64).astype(np.int32)
    ids[:, 0], ids[:, -1], ids[:, T // 2] = 2, 3, 3  # [CLS] A [SEP] B [SEP]
    m = mask_batch(ids, vocab_size=cfg.vocab_size, mask_token_id=4, special_ids=[0, 1, 2, 3, 4],
                   mask_prob=cfg.mask_prob, max_predictions=cfg.max_predictions if T == cfg.max_seq_length else None,
                   seed=seed)
    types = np.zeros_like(ids)
    types[:, T // 2 + 1:] = 1
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)
    return {"input_ids": t(m.input_ids.astype(np.int64)), "token_type_ids": t(types.astype(np.int64)),
            "attention_mask": torch.ones(batch_size, T, dtype=torch.long, device=device),
            "masked_positions": t(m.masked_positions), "masked_ids": t(m.masked_ids),
            "masked_weights": t(m.masked_weights), "original_ids": t(ids.astype(np.int64))}
