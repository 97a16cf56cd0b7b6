"""The fine-tuning recipe every task shares: GLUE, a user's TSV and the probe (``finetune.py``) and
SQuAD (``squad.py``) all build on it, so neither of those imports the other's internals.

The recipe is the paper's (Clark et al., 2020, section 3.1 and Table 7; ``finetune.py`` says more):
the pre-trained encoder with a task head (:class:`SequenceClassifier`, which ``squad.SpanExtractor``
extends), AdamW with layer-wise learning-rate decay, warmup and linear decay (:func:`make_optimizer`),
one epoch of clipped steps (:func:`train_epoch`), the non-finite check, and the ``best/`` model
folder (:func:`save_classifier` / :func:`load_classifier`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .config import ElectraConfig
from .model import Electra, Embeddings, Encoder
from .tokenizer import ElectraTokenizer


class FinetuneError(ValueError):
    """A checkpoint or an option cannot be used; the message says what to change."""


@dataclass
class Hyper:
    """One fine-tuning run's hyper-parameters (``finetune._hyper`` fills them from the flags)."""

    epochs: int = 3
    lr: float = 1e-3
    layer_decay: float = 0.8
    batch_size: int = 32
    """The paper's Table 7: 3 epochs of batch 32; the peak lr and its decay per layer by model size
    (``finetune.DEFAULT_LR``, ``DEFAULT_LAYER_DECAY``)."""
    seq_len: int = 128
    seed: int = 42
    """Tokens per example (SQuAD: 384, run_squad.py's) and the seed of the head, dropout and batch order."""
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    dropout: float = 0.1
    max_grad_norm: float = 1.0
    """The rest of section 3.1's recipe: AdamW weight decay, warmup share of the steps, dropout, clipping."""
    eval_batch_size: int = 128


# ============================================================================ the model
class SequenceClassifier(nn.Module):
    """ELECTRA encoder (shared embeddings + discriminator) -> [CLS] -> dropout -> linear."""

    def __init__(self, config: ElectraConfig, num_outputs: int, dropout: float = 0.1):
        super().__init__()
        cfg = config.replace(dropout=dropout, attention_dropout=dropout)  # the paper fine-tunes with 0.1
        self.config = cfg
        self.num_outputs = num_outputs
        self.embeddings = Embeddings(cfg)
        self.encoder = Encoder(cfg, cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.intermediate_size)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(cfg.hidden_size, num_outputs)
        nn.init.normal_(self.classifier.weight, std=cfg.initializer_range)
        nn.init.zeros_(self.classifier.bias)

    @classmethod
    def from_electra(cls, electra: Electra, num_outputs: int, dropout: float = 0.1) -> SequenceClassifier:
        """Copy the encoder ELECTRA keeps: the discriminator, or for the BERT (MLM) baseline the
        full-size generator; the word embeddings with the GDES delta folded in."""
        model = cls(electra.config, num_outputs, dropout)
        with torch.no_grad():
            model.embeddings.load_state_dict(electra.embeddings.state_dict())
            if electra.disc_embedding_delta is not None:
                model.embeddings.word_embeddings.weight.add_(electra.disc_embedding_delta)
            encoder = electra.discriminator if electra.discriminator is not None else electra.generator
            model.encoder.load_state_dict(encoder.state_dict())
        return model

    def hidden(self, input_ids, token_type_ids=None, attention_mask=None):  # (B, T) -> (B, T, H)
        return self.encoder(self.embeddings(input_ids, token_type_ids), attention_mask)

    def forward(self, input_ids, token_type_ids=None, attention_mask=None):  # -> (B, K), or (B,) if K == 1
        cls_vec = self.hidden(input_ids, token_type_ids, attention_mask)[:, 0]  # (B, H)
        out = self.classifier(self.dropout(cls_vec))
        return out.squeeze(-1) if self.num_outputs == 1 else out


def layerwise_param_groups(model: SequenceClassifier, lr: float, layer_decay: float,
                           weight_decay: float = 0.01) -> list[dict]:
    """AdamW groups: head lr; encoder layer i of L gets lr * d^(L - i) (the top one lr * d);
    embeddings and embeddings_project lr * d^(L + 1). No weight decay on LayerNorm and biases."""
    L = len(model.encoder.layers)
    parts = [("head", 0, [model.classifier])]
    parts += [(f"layer {i}", L - i, [layer]) for i, layer in enumerate(model.encoder.layers)]
    parts += [("embeddings", L + 1, [model.embeddings, model.encoder.embeddings_project])]
    groups = []
    for name, depth, modules in parts:
        decay, no_decay = [], []
        for top in modules:
            if top is None:
                continue
            for mod in top.modules():
                for pname, p in mod.named_parameters(recurse=False):
                    if p.requires_grad:
                        (no_decay if isinstance(mod, nn.LayerNorm) or pname == "bias" else decay).append(p)
        for params, wd, kind in ((decay, weight_decay, "decay"), (no_decay, 0.0, "no decay")):
            if params:
                groups.append({"params": params, "lr": lr * layer_decay ** depth, "weight_decay": wd,
                               "name": f"{name} ({kind})"})
    covered = {id(p) for g in groups for p in g["params"]}
    missed = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in covered]
    if missed:
        raise AssertionError(f"parameters without a learning-rate group: {missed}")
    return groups


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Multiplier of the peak lr for update ``step`` (0-based): linear warmup times linear decay
    to zero, multiplied as in the official optimization.py."""
    return min(1.0, (step + 1) / max(1, warmup)) * max(0.0, 1.0 - step / max(1, total))


# ============================================================================ training
def make_batch(data, rows, pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, token_type_ids, attention_mask) of ``rows``, padded to the longest row of the batch.
    ``data`` holds per-example token ``ids`` and segment ``types`` (finetune's Encoded, squad's Features)."""
    lengths = np.array([len(data.ids[r]) for r in rows])
    T = int(lengths.max())
    ids = np.full((len(rows), T), pad_id, dtype=np.int64)
    types = np.zeros((len(rows), T), dtype=np.int64)
    for j, r in enumerate(rows):  # filled in numpy: a torch tensor per row cost ~2 ms a fine-tuning step
        ids[j, :lengths[j]] = data.ids[r]
        types[j, :lengths[j]] = data.types[r]
    mask = (np.arange(T) < lengths[:, None]).astype(np.int64)
    return tuple(torch.from_numpy(a).to(device) for a in (ids, types, mask))


def seed_all(seed: int) -> None:
    """torch and numpy seeded for a run (head initialisation, dropout, batch order)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def make_optimizer(model: SequenceClassifier, hp: Hyper, n_train: int):
    """(AdamW with layer-wise lr groups, its warmup + linear-decay scheduler, total steps, warmup
    steps) for ``hp.epochs`` epochs over ``n_train`` rows: the recipe every fine-tuning task shares."""
    groups = layerwise_param_groups(model, hp.lr, hp.layer_decay, hp.weight_decay)
    # One fused kernel over all tensors where torch has it (CPU and CUDA, torch >= 2.4): on the CPU the
    # per-tensor loop took 12% of a fine-tuning step of the tiny preset, the fused step about a third of that.
    fused = all(p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
    opt = torch.optim.AdamW(groups, lr=hp.lr, betas=(0.9, 0.999), eps=1e-6, fused=True if fused else None)
    total = math.ceil(n_train / hp.batch_size) * hp.epochs
    warmup = max(1, round(hp.warmup_fraction * total))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, warmup, total))
    return opt, sched, total, warmup


def train_epoch(model: nn.Module, batch_loss, order: np.ndarray, hp: Hyper, opt, sched, bar, epoch: int) -> float:
    """One epoch over the rows in ``order``, ``hp.batch_size`` at a time: ``batch_loss(rows)`` ->
    backward -> clipping -> AdamW -> schedule. Returns the mean training loss (the tasks differ only
    in ``batch_loss``)."""
    model.train()
    loss_sum, n_batches = torch.zeros(()), 0
    for b in range(0, len(order), hp.batch_size):
        loss = batch_loss(order[b:b + hp.batch_size])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), hp.max_grad_norm)
        opt.step()
        sched.step()
        loss_sum += loss.detach().cpu()
        n_batches += 1
        bar.update(1)
        if n_batches % 10 == 0:
            bar.set_postfix(epoch=epoch, loss=f"{loss_sum.item() / n_batches:.4f}")
    return loss_sum.item() / max(1, n_batches)


def check_finite(model: nn.Module, train_loss: float, epoch: int, best_epoch: int | None) -> None:
    """Non-finite training is a failure: raise FinetuneError (before anything of the epoch is saved)."""
    params_ok = bool(torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all())
    if math.isfinite(train_loss) and params_ok:
        return
    what = "training loss" if not math.isfinite(train_loss) else "parameters"
    kept = f"best/ keeps epoch {best_epoch}" if best_epoch else "nothing was saved"
    raise FinetuneError(f"non-finite {what} in epoch {epoch} ({kept}); lower --lr")


# ============================================================================ the best/ folder
def save_classifier(model: SequenceClassifier, folder: Path, meta: dict, tokenizer: ElectraTokenizer | None) -> None:
    """``model.safetensors`` (the classifier's state dict) + ``config.json`` (our ElectraConfig,
    the head, the task's labels) + the vocabulary: ``load_classifier`` rebuilds it."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()},
              str(folder / "model.safetensors"), metadata={"format": "pt"})
    info = {"electra_config": model.config.to_dict(), "num_outputs": model.num_outputs, **meta}
    (folder / "config.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    if tokenizer is not None:
        tokenizer.save(folder)


def load_classifier(folder: str | Path) -> tuple[SequenceClassifier, dict]:
    """A classifier written by ``save_classifier`` (eval mode) and its config.json."""
    from safetensors.torch import load_file

    folder = Path(folder)
    info = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    cfg = ElectraConfig.from_dict(info["electra_config"])
    model = SequenceClassifier(cfg, info["num_outputs"], dropout=cfg.dropout)
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    return model.eval(), info
