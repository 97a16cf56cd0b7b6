"""``train --init-from``: continue pre-training a published model (domain-adaptive pre-training).

The source is a HuggingFace ELECTRA pair (discriminator and generator folders, or a parent holding
``discriminator/`` and ``generator/`` as ``export`` writes them), a discriminator folder alone, or
one of our run folders (its newest readable checkpoint). It gives the model's sizes, its weights
and its vocabulary; the schedule (lr, steps, warmup, batch, sequence length) comes from the
command line and the optimizer starts fresh.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import torch

from .config import ElectraConfig
from .model import Electra

# what a model is, as opposed to how it is trained: taken from the source, not from the preset
MODEL_FIELDS = ("vocab_size", "embedding_size", "max_position_embeddings", "type_vocab_size", "pad_token_id",
                "hidden_size", "num_layers", "num_heads", "intermediate_size", "generator_hidden_size",
                "generator_num_layers", "generator_num_heads", "generator_intermediate_size", "dropout",
                "attention_dropout", "layer_norm_eps", "initializer_range", "gdes", "tie_encoders")


class InitFromError(ValueError):
    """A --init-from folder that cannot start a run; one line."""


@dataclasses.dataclass
class InitSource:
    model_config: ElectraConfig  # the sizes to train at (a fresh generator's, for a discriminator alone)
    state: dict[str, torch.Tensor]  # our Electra's state dict; generator entries absent when fresh
    tokenizer: object  # ElectraTokenizer of the source's vocabulary
    vocab_path: Path
    source: str  # for messages
    fresh_generator: bool = False

    def config_for(self, cfg: ElectraConfig) -> ElectraConfig:
        """The run's config: the source's model fields, ``cfg``'s schedule and objective fields."""
        return cfg.replace(**{f: getattr(self.model_config, f) for f in MODEL_FIELDS})

    @torch.no_grad()
    def load_into(self, model: Electra) -> None:
        """Copy the source's weights exactly; with a discriminator alone the generator keeps its fresh init."""
        missing, unexpected = model.load_state_dict(self.state, strict=not self.fresh_generator)
        bad = [k for k in missing if not k.startswith(("generator.", "generator_head."))]
        if bad or unexpected:
            raise InitFromError(f"{self.source}: weights do not fit the model (missing {bad[:3]}, unexpected "
                                f"{list(unexpected)[:3]})")


def _hf_folder(d: Path) -> bool:
    return (d / "config.json").is_file() and any((d / n).is_file() for n in ("model.safetensors", "pytorch_model.bin"))


def _fresh_generator_sizes(h: int, layers: int, preset: str) -> dict:
    """A generator at the preset's width ratio (small/large 1/4, base 1/3: the paper's Table 6)."""
    p = ElectraConfig.preset(preset)
    g = max(1, round(h * p.generator_hidden_size / p.hidden_size))
    heads = max(1, g // 64)
    while g % heads:
        heads -= 1
    return {"generator_hidden_size": g, "generator_num_layers": layers, "generator_num_heads": heads,
            "generator_intermediate_size": 4 * g}


def _hf_tokenizer(folder: Path):
    from .tokenizer import load_tokenizer

    lowercase = True
    tc = folder / "tokenizer_config.json"
    if tc.is_file():
        try:
            lowercase = bool(json.loads(tc.read_text(encoding="utf-8")).get("do_lower_case", True))
        except ValueError:
            pass
    return load_tokenizer(folder, lowercase=lowercase)


def load_init(paths: list[str], preset: str, objective: str = "electra", log=print) -> InitSource:
    """The model, sizes and vocabulary to start a run from (see the module docstring)."""
    first = Path(paths[0])
    if len(paths) == 1:
        from .checkpoint import list_checkpoints

        if list_checkpoints(first):
            return _from_run(first, objective, log)
        if (first / "discriminator").is_dir():
            gen = first / "generator"
            return _from_hf(first / "discriminator", gen if gen.is_dir() else None, preset, objective, log)
        if not _hf_folder(first):
            raise InitFromError(f"--init-from {first}: neither one of our run folders (ckpt-*.pt), nor a HuggingFace "
                                "ELECTRA folder (config.json + model.safetensors), nor a folder holding "
                                "discriminator/ and generator/")
        return _from_hf(first, None, preset, objective, log)
    return _from_hf(first, Path(paths[1]), preset, objective, log)


def _from_run(run: Path, objective: str, log) -> InitSource:
    from .finetune import load_run
    from .recipe import FinetuneError

    try:
        pre = load_run(run, log=log)
    except FinetuneError as e:
        raise InitFromError(str(e)) from None
    if pre.model.objective != objective:
        raise InitFromError(f"--init-from {run} is an objective {pre.model.objective!r} run; this run's --objective "
                            f"is {objective!r}: pass --objective {pre.model.objective}")
    log(f"init: weights of {pre.source}; fresh optimizer and schedule")
    return InitSource(pre.model.config, pre.model.state_dict(), pre.tokenizer, run / "vocab", pre.source)


def _from_hf(disc: Path, gen: Path | None, preset: str, objective: str, log) -> InitSource:
    from .hf import GEN_ARCH, load_hf, read_hf_folder

    if objective != "electra":
        raise InitFromError(f"--init-from {disc}: a HuggingFace ELECTRA model continues with --objective electra")
    for d in (disc, gen):
        if d is not None and not _hf_folder(d):
            raise InitFromError(f"--init-from {d}: not a HuggingFace ELECTRA folder (config.json + model.safetensors)")
    if GEN_ARCH in " ".join(read_hf_folder(disc)[0].get("architectures") or []):
        raise InitFromError(f"--init-from {disc} holds a generator (ElectraForMaskedLM); give the discriminator "
                            "folder first: --init-from DISC [GEN]")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_hf(disc, gen)  # HFFormatError (a ValueError) names the folder and what is wrong
    for w in caught:
        log(f"warning: {w.message}")
    cfg, state = model.config, model.state_dict()
    fresh = gen is None
    if fresh:
        sizes = _fresh_generator_sizes(cfg.hidden_size, cfg.num_layers, preset)
        cfg = cfg.replace(tie_encoders=False, **sizes)
        state = {k: v for k, v in state.items() if not k.startswith(("generator.", "generator_head."))}
        log(f"init: {disc} is a discriminator without a generator; starting a fresh generator of width "
            f"{sizes['generator_hidden_size']} ({preset} preset's ratio to the discriminator's {cfg.hidden_size})")
    tok = _hf_tokenizer(disc)
    if tok.vocab_size != cfg.vocab_size:
        raise InitFromError(f"{disc}: the vocabulary has {tok.vocab_size} tokens but config.json says vocab_size "
                            f"{cfg.vocab_size}; the folder needs the model's own vocab.txt / tokenizer.json")
    source = f"{disc}" + (f" + {gen}" if gen is not None else "") + " (HuggingFace)"
    if not fresh:
        log(f"init: weights of {source}; fresh optimizer and schedule")
    return InitSource(cfg, state, tok, disc, source, fresh_generator=fresh)
