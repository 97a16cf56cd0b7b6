"""ELECTRA in one file: shared embeddings, a small generator, a discriminator, the RTD objective.

Data flows one way (docs/ARCHITECTURE.md, sections 1-2):
    masked ids -> generator -> LM head at the masked rows only -> Gumbel-max samples
    -> corrupted ids -> discriminator -> per-token replaced/original logit
    loss = mlm_loss + disc_weight * disc_loss   (the paper's 50; the tiny preset's 10)

The generator head, the corruption and the RTD loss go through ``electra_fast.ops``: fused
Triton kernels on CUDA tensors, plain PyTorch on the CPU, or the one ``Electra(backend=...)`` names
(fixed at construction, shown in the repr). Parameter names follow HuggingFace's
``ElectraModel`` closely enough that ``electra_fast.hf`` maps them one to one (q, k, v are
fused into one ``qkv`` projection here for speed).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import ops
from .config import ElectraConfig
from .kernels.dispatch import resolve_backend, values_readable

IGNORE_INDEX = -100
# Both losses are sum(w * loss) / (sum(w) + 1e-6), as in the official code (the ops' ``eps``)
LOSS_EPS = 1e-6
# ElectraOutput.values: the losses, then the token counts the step metrics are ratios of
VALUE_NAMES = {
    "electra": ("loss", "mlm_loss", "disc_loss", "masked_slots", "mlm_correct", "true_positives",
                "predicted_replaced", "replaced", "real_tokens"),
    "mlm": ("loss", "mlm_loss", "masked_slots", "mlm_correct"),
}
COUNT_NAMES = frozenset(VALUE_NAMES["electra"][3:])


class Embeddings(nn.Module):
    """Token + position + segment embeddings and LayerNorm, shared by both networks."""

    def __init__(self, cfg: ElectraConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.embedding_size, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.embedding_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.embedding_size)
        self.LayerNorm = nn.LayerNorm(cfg.embedding_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def position_segment(self, input_ids, token_type_ids=None):  # (T, E) or (B, T, E)
        """Position + segment embeddings of a batch: what ``forward`` adds to the word embeddings.
        The pre-training step computes it once and passes it to both encoders' embeddings (their
        positions and segments are the same), which saves a few kernels forward and backward."""
        pos = self.position_embeddings.weight[:input_ids.shape[1]]
        if token_type_ids is None:
            return pos + self.token_type_embeddings.weight[0]
        return pos + self.token_type_embeddings(token_type_ids)

    def forward(self, input_ids, token_type_ids=None, word_weight=None, position_segment=None):  # (B, T) -> (B, T, E)
        w = self.word_embeddings.weight if word_weight is None else word_weight
        if position_segment is None:
            position_segment = self.position_segment(input_ids, token_type_ids)
        return self.dropout(self.LayerNorm(F.embedding(input_ids, w) + position_segment))


class Block(nn.Module):
    """BERT post-LN layer: x = LN(x + attn(x)); x = LN(x + ffn(x))."""

    def __init__(self, hidden: int, heads: int, ffn: int, cfg: ElectraConfig):
        super().__init__()
        self.n_head = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.attn_out = nn.Linear(hidden, hidden)
        self.ln1 = nn.LayerNorm(hidden, eps=cfg.layer_norm_eps)
        self.ffn_in = nn.Linear(hidden, ffn)
        self.ffn_out = nn.Linear(ffn, hidden)
        self.ln2 = nn.LayerNorm(hidden, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)
        self.attn_dropout = cfg.attention_dropout

    def forward(self, x, attn_mask=None):  # x (B, T, C); attn_mask (B, 1, 1, T) additive bias or None
        B, T, C = x.shape
        # unbind along the (3) axis, then transpose: the backward stacks dq, dk, dv straight into the
        # (B, T, 3, nh, hd) layout of the projection's output, no extra copy per layer
        q, k, v = (t.transpose(1, 2) for t in self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).unbind(2))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.attn_dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, C)
        x = self.ln1(x + self.dropout(self.attn_out(y)))
        return self.ln2(x + self.dropout(self.ffn_out(F.gelu(self.ffn_in(x)))))


class Encoder(nn.Module):
    """Projection from the shared embedding size (when it differs) and a stack of blocks."""

    def __init__(self, cfg: ElectraConfig, hidden: int, layers: int, heads: int, ffn: int):
        super().__init__()
        self.embeddings_project = nn.Linear(cfg.embedding_size, hidden) if cfg.embedding_size != hidden else None
        self.layers = nn.ModuleList([Block(hidden, heads, ffn, cfg) for _ in range(layers)])

    def forward(self, x, attention_mask=None):  # (B, T, E) -> (B, T, H)
        """``attention_mask``: None (no padding), (B, T) with 1 / True at real tokens, or the
        (B, 1, 1, T) additive bias of :func:`attention_bias`, built once per step by the caller."""
        if attention_mask is not None and attention_mask.dim() == 2:
            attention_mask = attention_bias(attention_mask, x)
        if self.embeddings_project is not None:
            x = self.embeddings_project(x)
        for layer in self.layers:
            x = layer(x, attention_mask)
        return x


def attention_bias(attention_mask: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
    """(B, T) padding mask -> (B, 1, 1, T) additive bias (0 at real tokens, -inf at padding) in
    the dtype attention will run in (the autocast dtype when autocast is on), so that
    scaled_dot_product_attention takes it as is in every layer instead of converting a boolean
    mask per call. None stays None: a batch without padding runs SDPA with no mask at all, which
    keeps it eligible for the flash kernel."""
    if attention_mask is None:
        return None
    dev = x.device.type
    dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
    real = attention_mask.bool()[:, None, None, :]
    return torch.zeros(real.shape, dtype=dtype, device=x.device).masked_fill_(~real, float("-inf"))


class GeneratorHead(nn.Module):
    """dense(E) -> gelu -> LayerNorm; logits = h @ word_emb.T + bias (tied output layer)."""

    def __init__(self, cfg: ElectraConfig, hidden: int):
        super().__init__()
        self.dense = nn.Linear(hidden, cfg.embedding_size)
        self.LayerNorm = nn.LayerNorm(cfg.embedding_size, eps=cfg.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, h):  # (..., Hg) -> (..., E)
        return self.LayerNorm(F.gelu(self.dense(h)))


class DiscriminatorHead(nn.Module):
    """dense(H) -> gelu -> dense(1): one replaced/original logit per token."""

    def __init__(self, cfg: ElectraConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.dense_prediction = nn.Linear(cfg.hidden_size, 1)

    def features(self, h):  # (..., H) -> (..., H), the input of the final projection
        return F.gelu(self.dense(h))

    def forward(self, h):  # (..., H) -> (...)
        return self.dense_prediction(self.features(h)).squeeze(-1)


@dataclass
class ElectraOutput:
    loss: torch.Tensor
    mlm_loss: torch.Tensor
    disc_loss: torch.Tensor
    # The step's losses and token counts, fp32 0-dim tensors on the model's device (``value_names``
    # name them; read them at log intervals only: each read is a host-device sync).
    values: tuple[torch.Tensor, ...] = ()
    value_names: tuple[str, ...] = ()
    # Filled only with return_logits=True (evaluation: ROC AUC needs them).
    disc_logits: torch.Tensor | None = None  # (B, T)
    is_replaced: torch.Tensor | None = None  # (B, T) bool
    samples: torch.Tensor | None = None  # (B, P) the generator's samples (no gradient; None for the MLM objective)
    mlm_predictions: torch.Tensor | None = None  # (B, P) the generator's argmax (return_logits=True)

    @property
    def metrics(self) -> dict[str, torch.Tensor]:
        """The step metrics (``metrics_from_counts``) as 0-dim tensors; computed on each access."""
        return metrics_from_counts(dict(zip(self.value_names, self.values)))


class Electra(nn.Module):
    """The pre-training module: generator + discriminator over shared embeddings (and, with
    ``config.tie_encoders``, one shared encoder).

    ``config.objective``-free: ELECTRA is the default; ``objective="mlm"`` builds the paper's
    BERT baseline (a discriminator-sized network trained with MLM only, no discriminator).

    ``backend`` ("auto", "triton" or "reference") is what every op call of the model passes on
    (``electra_fast.ops``): "auto" runs Triton on CUDA tensors and the reference on the CPU. None
    reads the environment variable ELECTRA_FAST_BACKEND here, once; never at a call.
    """

    def __init__(self, config: ElectraConfig, objective: str = "electra", backend: str | None = None):
        super().__init__()
        if objective not in ("electra", "mlm"):
            raise ValueError(f"objective must be 'electra' or 'mlm', got {objective!r}")
        config.validate()
        self.config = config
        self.objective = objective
        self.backend = resolve_backend(backend)
        cfg = config
        self.embeddings = Embeddings(cfg)
        if objective == "mlm":  # BERT baseline: the generator *is* the full-size network
            gen = (cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.intermediate_size)
        else:
            gen = (cfg.generator_hidden_size, cfg.generator_num_layers, cfg.generator_num_heads,
                   cfg.generator_intermediate_size)
        self.generator = Encoder(cfg, *gen)
        self.generator_head = GeneratorHead(cfg, gen[0])
        if objective == "electra":
            # tie_encoders: one encoder under both names (parameters() and the optimizer see it once)
            self.discriminator = (self.generator if cfg.tie_encoders else
                                  Encoder(cfg, cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.intermediate_size))
            self.discriminator_head = DiscriminatorHead(cfg)
            # GDES (DeBERTa-v3): discriminator word embeddings = gen_emb.detach() + delta.
            self.disc_embedding_delta = (nn.Parameter(torch.zeros(cfg.vocab_size, cfg.embedding_size))
                                         if cfg.gdes else None)
        else:
            self.discriminator = self.discriminator_head = self.disc_embedding_delta = None
        self.apply(self._init_weights)

    def extra_repr(self) -> str:
        return f"objective={self.objective!r}, backend={self.backend!r}"

    def _init_weights(self, m):
        std = self.config.initializer_range  # BERT / ELECTRA: truncated-normal-ish N(0, 0.02)
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=std)
            if m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------ inspection
    def _disc_word_weight(self):
        if self.disc_embedding_delta is None:
            return None
        return self.embeddings.word_embeddings.weight.detach() + self.disc_embedding_delta

    def discriminator_hidden(self, input_ids, token_type_ids=None, attention_mask=None):  # (B, T, H)
        if self.discriminator is None:  # MLM baseline: the full-size network is the generator
            return self.generator(self.embeddings(input_ids, token_type_ids), attention_mask)
        x = self.embeddings(input_ids, token_type_ids, self._disc_word_weight())
        return self.discriminator(x, attention_mask)

    def _check_inputs(self, where: str, input_ids, token_type_ids=None, attention_mask=None, **more) -> None:
        """TypeError / ValueError naming the argument: not a tensor, not (B, T), longer than the
        position table; ids outside the vocabulary (a host read: CPU tensors only, never while
        compiling or inside a training step, see ops.value_checks)."""
        if torch.compiler.is_compiling():
            return
        named = {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask, **more}
        for name, t in named.items():
            if t is not None and not isinstance(t, torch.Tensor):
                raise TypeError(f"{where}: {name} must be a torch.Tensor, got {type(t).__module__}."
                                f"{type(t).__name__} (convert it with torch.as_tensor(...).long())")
        if input_ids.dim() != 2:
            raise ValueError(f"{where}: input_ids must be (batch, seq_len); got shape {tuple(input_ids.shape)}")
        cfg = self.config
        if input_ids.shape[1] > cfg.max_position_embeddings:
            raise ValueError(f"{where}: input_ids has {input_ids.shape[1]} positions; the model has "
                             f"{cfg.max_position_embeddings} position embeddings (config.max_position_embeddings)")
        for name in ("token_type_ids", "attention_mask"):
            t = named[name]
            if t is not None and t.shape != input_ids.shape:
                raise ValueError(f"{where}: {name} must have input_ids' shape {tuple(input_ids.shape)}; got "
                                 f"{tuple(t.shape)}")
        for name, hi in (("input_ids", cfg.vocab_size), ("token_type_ids", cfg.type_vocab_size)):
            t = named[name]
            if t is None or not t.numel() or t.device.type != "cpu" or not values_readable(t):
                continue
            if t.is_floating_point() or t.dtype == torch.bool:
                raise TypeError(f"{where}: {name} must be an integer tensor; got {t.dtype}")
            lo_v, hi_v = int(t.min()), int(t.max())
            if lo_v < 0 or hi_v >= hi:
                raise ValueError(f"{where}: {name} must lie in [0, {hi}); got values in [{lo_v}, {hi_v}]")

    def discriminator_logits(self, input_ids, token_type_ids=None, attention_mask=None) -> torch.Tensor:
        """Replaced-token logits for every position, (B, T)."""
        if self.discriminator_head is None:
            raise ValueError("an objective='mlm' model has no discriminator head")
        self._check_inputs("discriminator_logits", input_ids, token_type_ids, attention_mask)
        return self.discriminator_head(self.discriminator_hidden(input_ids, token_type_ids, attention_mask))

    def generator_logits(self, input_ids, token_type_ids=None, attention_mask=None) -> torch.Tensor:
        """MLM logits at every position, (B, T, V). For inspection and parity checks only:
        the training path evaluates the head at the masked positions alone."""
        self._check_inputs("generator_logits", input_ids, token_type_ids, attention_mask)
        h = self.generator(self.embeddings(input_ids, token_type_ids), attention_mask)
        return self._mlm_logits(self.generator_head(h))

    def _mlm_logits(self, h):
        return h @ self.embeddings.word_embeddings.weight.t() + self.generator_head.bias

    # ------------------------------------------------------------------ pre-training step
    def forward(self, input_ids, token_type_ids=None, attention_mask=None, masked_positions=None, masked_ids=None,
                masked_weights=None, *, original_ids=None, seed: int | torch.Tensor | None = None, return_logits: bool = False) -> ElectraOutput:
        """One pre-training step on a masked batch (the format of ``electra_fast.masking``).

        input_ids (B, T) ids after masking; attention_mask (B, T), None for a batch without padding
        (then attention runs with no mask); masked_positions / masked_ids / masked_weights (B, P):
        positions, original ids there, 1.0 for real slots and 0.0 for padding. ``original_ids``
        (B, T) saves a scatter when the loader has them. ``seed`` (an int or a 1-element int64
        tensor) keys the Gumbel noise; by default it is drawn from torch's generator on the batch's
        device (checkpointed with the run). The MLM objective samples nothing and ignores it.
        """
        if masked_positions is None or masked_ids is None or masked_weights is None:
            raise ValueError("Electra.forward needs masked_positions, masked_ids and masked_weights "
                             "(the masking format of electra_fast.masking)")
        self._check_inputs("forward", input_ids, token_type_ids, attention_mask, masked_positions=masked_positions,
                           masked_ids=masked_ids, masked_weights=masked_weights, original_ids=original_ids)
        cfg = self.config
        sampling = self.discriminator is not None  # the MLM baseline only needs the loss
        if seed is None and sampling:  # a device tensor: no host sync, and torch.compile never recompiles for it
            seed = torch.randint(0, 2**31 - 1, (1,), device=masked_ids.device)
        B, P = masked_positions.shape
        empty_slot = masked_weights == 0
        n_pred = masked_weights.sum()

        # 1. generator on the masked sequence; LM head at the masked rows only
        pos_seg = self.embeddings.position_segment(input_ids, token_type_ids)  # shared by both encoders
        emb = self.embeddings(input_ids, position_segment=pos_seg)
        bias = attention_bias(attention_mask, emb)  # once per step, shared by both encoders
        gen_h = self.generator(emb, bias)  # (B, T, Hg)
        idx = masked_positions.unsqueeze(-1).expand(B, P, gen_h.shape[-1])
        h = self.generator_head(torch.gather(gen_h, 1, idx)).reshape(B * P, -1)  # (B*P, E)
        targets = masked_ids.masked_fill(empty_slot, IGNORE_INDEX).reshape(-1)
        head = (h, self.embeddings.word_embeddings.weight, self.generator_head.bias, targets)
        if sampling:
            mlm_loss, samples, argmax = ops.generator_loss_and_sample(
                *head, temperature=cfg.temperature, seed=seed, ignore_index=IGNORE_INDEX, return_argmax=True,
                eps=LOSS_EPS, backend=self.backend)
        else:  # no Gumbel noise: bench --transfer's MLM pre-training took 614 s instead of 808 (RESULTS.md)
            mlm_loss, argmax = ops.generator_loss(*head, ignore_index=IGNORE_INDEX, return_argmax=True, eps=LOSS_EPS,
                                                  backend=self.backend)
        with torch.no_grad():  # an ignored slot's target is -100, never an argmax
            mlm_correct = (argmax == targets).sum(dtype=torch.float32)
        argmax = argmax.view(B, P)
        predictions = argmax if return_logits else None

        if self.discriminator is None:  # the BERT baseline stops here
            zero = mlm_loss.new_zeros(())
            values = tuple(t.detach() for t in (mlm_loss, mlm_loss, n_pred, mlm_correct))
            return ElectraOutput(loss=mlm_loss, mlm_loss=mlm_loss, disc_loss=zero, values=values,
                                 value_names=VALUE_NAMES["mlm"], mlm_predictions=predictions)

        # 2. corrupt: original ids with the (gradient-free) samples written at the masked positions
        if original_ids is None:
            fill = torch.where(empty_slot, torch.gather(input_ids, 1, masked_positions), masked_ids)
            original_ids = input_ids.scatter(1, masked_positions, fill)
        samples = samples.view(B, P).to(original_ids.dtype)
        corrupted, is_replaced = ops.replace_tokens(original_ids, masked_positions, samples, masked_weights,
                                                     backend=self.backend)

        # 3. discriminator on the corrupted sequence, fused projection + BCE over real tokens
        emb = self.embeddings(corrupted, word_weight=self._disc_word_weight(), position_segment=pos_seg)
        feats = self.discriminator_head.features(self.discriminator(emb, bias))  # (B, T, H)
        pred = self.discriminator_head.dense_prediction
        real = attention_mask.bool() if attention_mask is not None else torch.ones_like(is_replaced)
        disc_loss = ops.rtd_loss(feats, pred.weight.view(-1), pred.bias.view(()), is_replaced, real,
                                 eps=LOSS_EPS, backend=self.backend)
        loss = torch.add(mlm_loss, disc_loss, alpha=cfg.disc_weight)

        with torch.no_grad():
            dt = feats.dtype  # the autocast dtype under autocast (addmv does not autocast); casts are no-ops in fp32
            disc_logits = torch.addmv(pred.bias.detach().to(dt), feats.detach().view(-1, feats.shape[-1]),
                                      pred.weight.detach().view(-1).to(dt)).view(is_replaced.shape)
            values = (loss.detach(), mlm_loss.detach(), disc_loss.detach(), n_pred, mlm_correct,
                      *_rtd_counts(disc_logits, is_replaced, real, attention_mask is not None))
        return ElectraOutput(loss=loss, mlm_loss=mlm_loss, disc_loss=disc_loss, values=values,
                             value_names=VALUE_NAMES["electra"],
                             disc_logits=disc_logits if return_logits else None,
                             is_replaced=is_replaced if return_logits else None, samples=samples,
                             mlm_predictions=predictions)


def _rtd_counts(logits, labels, real, padded: bool):
    """true positives, tokens predicted replaced, replaced tokens, real tokens: fp32 counts in one
    reduction (a handful of kernels: it runs every step). Replaced tokens are real ones."""
    guess = logits > 0
    if padded:
        guess = guess & real
    return torch.stack([guess & labels, guess, labels, real]).sum(dim=(1, 2), dtype=torch.float32).unbind()


def _ratio(num, den, floor: float):
    """num / max(den, floor) for floats and 0-dim tensors alike."""
    return num / (den.clamp_min(floor) if isinstance(den, torch.Tensor) else max(den, floor))


def metrics_from_counts(c) -> dict:
    """The step metrics from the counts of ``VALUE_NAMES`` (one step's, or sums over steps: then
    each metric is the ratio of the sums): accuracy of the generator's argmax (``mlm_accuracy``) and
    of its samples (``sampled_accuracy``) over the masked slots; discriminator accuracy over real
    tokens; precision and recall on replaced tokens; replaced / real tokens."""
    slots = c["masked_slots"]
    out = {"mlm_accuracy": _ratio(c["mlm_correct"], slots, 1e-6)}
    if "real_tokens" not in c:
        return out
    tp, guessed, replaced, real = c["true_positives"], c["predicted_replaced"], c["replaced"], c["real_tokens"]
    # a sample equal to the original leaves its slot unreplaced; wrong = false pos. + false neg.
    out["sampled_accuracy"] = _ratio(slots - replaced, slots, 1e-6)
    out["disc_accuracy"] = _ratio(real - (guessed - tp) - (replaced - tp), real, 1.0)
    out["disc_precision"] = _ratio(tp, guessed, 1.0)
    out["disc_recall"] = _ratio(tp, replaced, 1.0)
    out["replaced_fraction"] = _ratio(replaced, real, 1.0)
    return out
