"""Held-out evaluation of a pre-training run: MLM accuracy (all masked positions and the hidden
ones, with honest baselines), discriminator accuracy, precision / recall on replaced tokens and
ROC AUC. Runs eagerly under no_grad at eval steps and at the end of a run; host reads are fine here.
"""

from __future__ import annotations

import numpy as np
import torch

_MODEL_KEYS = ("input_ids", "token_type_ids", "attention_mask", "masked_positions", "masked_ids",
               "masked_weights", "original_ids")


def model_inputs(batch: dict) -> dict:
    """The entries of a loader batch that Electra.forward takes."""
    return {k: batch[k] for k in _MODEL_KEYS if k in batch}


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve by the rank statistic (ties get average ranks)."""
    labels = labels.astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    s = scores[order]
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


@torch.no_grad()
def evaluate(model, batches, device, autocast, most_frequent_id: int | None = None) -> dict:
    """Held-out metrics: MLM accuracy, discriminator accuracy, precision / recall on replaced
    tokens, ROC AUC.

    A masked position either hides its token (``[MASK]``, or a random token for the MLM baseline)
    or shows it unchanged (ELECTRA's 15%, BERT's 10%), where copying the input is already right.
    So besides ``mlm_accuracy`` over all masked positions this reports ``mlm_accuracy_hidden`` over
    the hidden ones alone, and with ``most_frequent_id`` the matching baselines: copy the visible
    token, else guess the most frequent one (``mlm_baseline_accuracy``), and the most frequent
    token at the hidden positions (``mlm_baseline_accuracy_hidden``)."""
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    n = 0
    scores, labels = [], []
    count = {k: 0.0 for k in ("total", "hits", "hidden", "hidden_hits", "base_hits", "base_hidden_hits")}
    for i, batch in enumerate(batches):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with autocast:
            out = model(**model_inputs(batch), seed=10_007 + i, return_logits=True)
        for k, v in out.metrics.items():
            sums[k] = sums.get(k, 0.0) + float(v)
        sums["loss"] = sums.get("loss", 0.0) + float(out.loss)
        n += 1
        slot = batch["masked_weights"] > 0
        target = batch["masked_ids"]
        hidden = slot & (torch.gather(batch["input_ids"], 1, batch["masked_positions"]) != target)
        right = out.mlm_predictions == target
        count["total"] += float(slot.sum())
        count["hits"] += float((right & slot).sum())
        count["hidden"] += float(hidden.sum())
        count["hidden_hits"] += float((right & hidden).sum())
        if most_frequent_id is not None:
            guess = (target == most_frequent_id) & hidden
            count["base_hidden_hits"] += float(guess.sum())
            count["base_hits"] += float(guess.sum() + (slot & ~hidden).sum())
        if out.disc_logits is not None:
            real = batch["attention_mask"].bool()
            scores.append(out.disc_logits[real].float().cpu().numpy())
            labels.append(out.is_replaced[real].cpu().numpy())
    model.train(was_training)
    res = {k: v / max(n, 1) for k, v in sums.items()}
    total, hidden = max(count["total"], 1.0), max(count["hidden"], 1.0)
    res["mlm_accuracy"] = count["hits"] / total  # weighted by masked positions, not per batch
    res["mlm_accuracy_hidden"] = count["hidden_hits"] / hidden
    if most_frequent_id is not None:
        res["mlm_baseline_accuracy"] = count["base_hits"] / total
        res["mlm_baseline_accuracy_hidden"] = count["base_hidden_hits"] / hidden
    if scores:
        res["disc_auc"] = roc_auc(np.concatenate(scores), np.concatenate(labels))
    return res
