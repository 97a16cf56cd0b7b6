"""ELECTRA configuration: model sizes and pre-training hyper-parameters, with the official presets.

Numbers for small / base / large come from the paper (Clark et al., 2020, Tables 6-7) and the
official code (google-research/electra, configure_pretraining.py); ``tiny`` is ours, sized so
that a 2-core CPU learns something visible in a few minutes.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class ElectraConfig:
    # --- shared embeddings ---
    vocab_size: int = 30522  # BERT uncased WordPiece
    embedding_size: int = 128
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    pad_token_id: int = 0
    # --- discriminator (the network that is kept) ---
    hidden_size: int = 256
    num_layers: int = 12
    num_heads: int = 4
    intermediate_size: int = 1024
    # --- generator: same depth, narrower (1/4 for small and large, 1/3 for base) ---
    generator_hidden_size: int = 64
    generator_num_layers: int = 12
    generator_num_heads: int = 1  # max(1, hidden // 64)
    generator_intermediate_size: int = 256  # 4 x hidden
    # --- regularisation / numerics ---
    dropout: float = 0.1
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    # --- objective (docs/ARCHITECTURE.md, section 1) ---
    mask_prob: float = 0.15
    disc_weight: float = 50.0
    temperature: float = 1.0
    # DeBERTa-v3 gradient-disentangled embedding sharing: the discriminator reads
    # word_emb.detach() + delta, so RTD gradients never reach the generator's embeddings.
    gdes: bool = False
    # The paper's "tie all weights" (section 3.1): the generator runs the discriminator's own
    # encoder, only the two heads differ. Needs equal generator and discriminator sizes. The
    # official presets share the embeddings only and keep the generator small.
    tie_encoders: bool = False
    # --- pre-training schedule (configure_pretraining.py) ---
    learning_rate: float = 5e-4
    batch_size: int = 128
    max_seq_length: int = 128
    train_steps: int = 1_000_000
    warmup_steps: int = 10_000
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-6
    max_grad_norm: float = 1.0

    def __post_init__(self) -> None:
        self.validate()

    @property
    def max_predictions(self) -> int:
        """Masked positions per sequence: int((p + 0.005) * max_len), 19 at length 128."""
        return max_predictions(self.mask_prob, self.max_seq_length)

    def flops_per_token(self, seq_len: int | None = None, objective: str = "electra") -> float:
        """Training FLOPs per token of one ELECTRA step (forward + backward), analytic: the model
        FLOPs behind MFU (``FLOPS_PER_TOKEN_FORMULA``), checked against torch's FLOP counter in
        tests/test_flops.py.

        6 x multiply-adds per token (2 FLOPs each, forward + 2x for backward) of:
          discriminator  L  x (4 H^2 + 2 H F + 2 T H)    qkv+out, FFN, QK^T and AV
          generator      Lg x (4 Hg^2 + 2 Hg Fg + 2 T Hg)
          E -> H and E -> Hg projections (when E differs), discriminator head H^2 + H
          LM head        P / T x (Hg E + E V)            at the P masked positions only
        with T the sequence length (default ``max_seq_length``) and P = max_predictions(mask_prob, T).
        The same number for every implementation of a config: work beyond it (HF's full-sequence
        logits) counts as waste, not as work. With ``tie_encoders`` the one encoder runs twice.
        ``objective="mlm"``: the BERT baseline, the discriminator-sized network with the LM head and
        no generator or discriminator head.
        """
        if objective not in ("electra", "mlm"):
            raise ValueError(f"objective must be 'electra' or 'mlm', got {objective!r}")
        T = seq_len or self.max_seq_length
        H, F, L = self.hidden_size, self.intermediate_size, self.num_layers
        G, FG, LG = self.generator_hidden_size, self.generator_intermediate_size, self.generator_num_layers
        E, V = self.embedding_size, self.vocab_size
        P = max_predictions(self.mask_prob, T)
        encoder = L * (4 * H * H + 2 * H * F + 2 * T * H)
        if objective == "mlm":
            macs = encoder + (E * H if E != H else 0) + P / T * (H * E + E * V)
        else:
            macs = encoder + LG * (4 * G * G + 2 * G * FG + 2 * T * G)
            macs += (E * H if E != H else 0) + (E * G if E != G else 0) + H * H + H
            macs += P / T * (G * E + E * V)
        return 6.0 * macs

    # ---------------------------------------------------------------- presets
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ElectraConfig:
        """Return a preset (``tiny``, ``small``, ``base``, ``large``) with optional overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        cfg = cls(**PRESETS[name])
        return cfg.replace(**overrides)

    def replace(self, **overrides: Any) -> ElectraConfig:
        unknown = set(overrides) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown ElectraConfig field(s): {', '.join(sorted(unknown))}")
        cfg = dataclasses.replace(self, **overrides)
        cfg.validate()
        return cfg

    def generator_size_mismatches(self) -> list[tuple[str, str]]:
        """(generator field, discriminator field) pairs whose sizes differ: empty when one encoder
        could serve both networks (``tie_encoders``)."""
        return [(g, d) for g, d in (("generator_hidden_size", "hidden_size"), ("generator_num_layers", "num_layers"),
                                    ("generator_num_heads", "num_heads"),
                                    ("generator_intermediate_size", "intermediate_size"))
                if getattr(self, g) != getattr(self, d)]

    def validate(self) -> None:
        """Raise ValueError naming the first field that is of the wrong type, non-finite or out of range."""

        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            want = {"int": int, "float": (int, float), "bool": bool}[f.type]
            if isinstance(v, bool) != (f.type == "bool") or not isinstance(v, want):
                raise ValueError(f"ElectraConfig.{f.name} must be {f.type}, got {v!r}")
            if f.type == "float" and not math.isfinite(v):
                raise ValueError(f"ElectraConfig.{f.name} must be finite, got {v}")
        for name, lo, hi, what in (("dropout", 0.0, 1.0, "[0, 1)"), ("attention_dropout", 0.0, 1.0, "[0, 1)"),
                                   ("adam_beta1", 0.0, 1.0, "[0, 1)"), ("adam_beta2", 0.0, 1.0, "[0, 1)")):
            if not lo <= getattr(self, name) < hi:
                raise ValueError(f"ElectraConfig.{name} must be in {what}, got {getattr(self, name)}")
        for name in ("learning_rate", "layer_norm_eps", "initializer_range", "adam_eps", "max_grad_norm",
                     "disc_weight"):
            if not getattr(self, name) > 0:
                raise ValueError(f"ElectraConfig.{name} must be > 0, got {getattr(self, name)}")
        for name in ("weight_decay", "warmup_steps", "pad_token_id"):
            if getattr(self, name) < 0:
                raise ValueError(f"ElectraConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.pad_token_id >= self.vocab_size:
            raise ValueError(f"ElectraConfig.pad_token_id {self.pad_token_id} is not below vocab_size "
                             f"{self.vocab_size}")
        for name in ("vocab_size", "embedding_size", "hidden_size", "num_layers", "num_heads",
                     "intermediate_size", "generator_hidden_size", "generator_num_layers",
                     "generator_num_heads", "generator_intermediate_size", "max_position_embeddings",
                     "batch_size", "max_seq_length", "train_steps", "type_vocab_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ElectraConfig.{name} must be positive, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.tie_encoders and (pairs := self.generator_size_mismatches()):
            raise ValueError("tie_encoders needs the generator's sizes to equal the discriminator's: "
                             + ", ".join(f"{g}={getattr(self, g)} but {d}={getattr(self, d)}" for g, d in pairs))
        if self.generator_hidden_size % self.generator_num_heads:
            raise ValueError(f"generator_hidden_size {self.generator_hidden_size} is not divisible by "
                             f"generator_num_heads {self.generator_num_heads}")
        if not 0.0 < self.mask_prob < 1.0:
            raise ValueError(f"mask_prob must be in (0, 1), got {self.mask_prob}")
        if self.max_seq_length > self.max_position_embeddings:
            raise ValueError(f"max_seq_length {self.max_seq_length} exceeds the model's "
                             f"{self.max_position_embeddings} position embeddings")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")

    # ---------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ElectraConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown ElectraConfig field(s) in config: {', '.join(sorted(unknown))}")
        cfg = cls(**d)
        cfg.validate()
        return cfg

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            Path(path).write_text(text + "\n", encoding="utf-8")
        return text

    @classmethod
    def from_json(cls, path_or_text: str | Path) -> ElectraConfig:
        p = Path(path_or_text)
        text = p.read_text(encoding="utf-8") if not str(path_or_text).lstrip().startswith("{") else str(path_or_text)
        return cls.from_dict(json.loads(text))


FLOPS_PER_TOKEN_FORMULA = (
    "model FLOPs/token = 6 x [L(4H^2+2HF+2TH) + Lg(4Hg^2+2HgFg+2THg) + EH + EHg + H^2 + H + P/T (Hg E + E V)] "
    "(matmul multiply-adds of fwd, x3 for fwd+bwd, LM head at the P masked rows; the same for every "
    "implementation of a config)")


def max_predictions(mask_prob: float, seq_len: int) -> int:
    """int((p + 0.005) * max_len), as the official configure_pretraining.py."""
    return max(1, int((mask_prob + 0.005) * seq_len))


def _gen(hidden: int) -> dict[str, int]:
    return {"generator_hidden_size": hidden, "generator_num_heads": max(1, hidden // 64),
            "generator_intermediate_size": 4 * hidden}


PRESETS: dict[str, dict[str, Any]] = {
    # Ours: a CPU demo, minutes on 2 cores (vocabulary size: the trained tokenizer's). Short rows (attention finds
    # the neighbours early), one tied encoder (the MLM loss trains the discriminator's attention), wider initial
    # weights and more masking than the official presets, and the discriminator's loss weighted 10x instead of
    # 50x (with one shared encoder, 50x drowns the MLM signal the encoder transfers), lr 4e-3 over 2,800 steps
    # (~10 minutes on 2 cores) and Adam's beta2 0.98, not 0.999 (a second-moment average over ~50 steps rather
    # than ~1,000 suits a 2,800-step run: held-out AUC 0.755-0.758 against 0.743-0.749, each the mean of ten or
    # more masking draws); the runs that chose each value, and why: benchmarks/RESULTS.md, "Default
    # pre-training run" and "Does pre-training transfer?".
    "tiny": dict(vocab_size=4096, embedding_size=128, hidden_size=128, num_layers=2, num_heads=2,
                 intermediate_size=512, max_position_embeddings=128, initializer_range=0.1,
                 learning_rate=4e-3, batch_size=128, max_seq_length=32, train_steps=2800,
                 warmup_steps=100, mask_prob=0.25, dropout=0.0, attention_dropout=0.0, tie_encoders=True,
                 disc_weight=10.0, adam_beta2=0.98,
                 **{"generator_num_layers": 2, "generator_hidden_size": 128, "generator_num_heads": 2,
                    "generator_intermediate_size": 512}),
    "small": dict(embedding_size=128, hidden_size=256, num_layers=12, num_heads=4, intermediate_size=1024,
                  generator_num_layers=12, learning_rate=5e-4, batch_size=128, max_seq_length=128,
                  train_steps=1_000_000, warmup_steps=10_000, mask_prob=0.15, **_gen(64)),
    "base": dict(embedding_size=768, hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072,
                 generator_num_layers=12, learning_rate=2e-4, batch_size=256, max_seq_length=512,
                 train_steps=766_000, warmup_steps=10_000, mask_prob=0.15, **_gen(256)),
    "large": dict(embedding_size=1024, hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096,
                  generator_num_layers=24, learning_rate=2e-4, batch_size=2048, max_seq_length=512,
                  train_steps=400_000, warmup_steps=10_000, mask_prob=0.25, **_gen(256)),
}
