"""HuggingFace transformers compatibility: our ``Electra`` <-> ``ElectraForPreTraining`` +
``ElectraForMaskedLM`` folders (config.json + model.safetensors [+ vocab]), and a fine-tuned
question-answering model -> ``ElectraForQuestionAnswering``.

No transformers import is needed here: the folders are written and read with safetensors and
json, so export works on a machine without transformers. Names follow
``transformers.models.electra.modeling_electra``; q, k and v are stored separately there and
fused into one ``qkv`` projection here.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from .config import ElectraConfig
from .model import Electra

DISC_ARCH = "ElectraForPreTraining"
GEN_ARCH = "ElectraForMaskedLM"
QA_ARCH = "ElectraForQuestionAnswering"


class HFFormatError(ValueError):
    """A folder is not a HuggingFace ELECTRA checkpoint we can read."""


# ---------------------------------------------------------------------------- export
def _hf_config(cfg: ElectraConfig, hidden, layers, heads, ffn, arch) -> dict:
    return {
        "architectures": [arch],
        "model_type": "electra",
        "vocab_size": cfg.vocab_size,
        "embedding_size": cfg.embedding_size,
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": ffn,
        "hidden_act": "gelu",
        "hidden_dropout_prob": cfg.dropout,
        "attention_probs_dropout_prob": cfg.attention_dropout,
        "max_position_embeddings": cfg.max_position_embeddings,
        "type_vocab_size": cfg.type_vocab_size,
        "initializer_range": cfg.initializer_range,
        "layer_norm_eps": cfg.layer_norm_eps,
        "pad_token_id": cfg.pad_token_id,
        "position_embedding_type": "absolute",
        "summary_type": "first",
        "summary_use_proj": True,
        "summary_activation": "gelu",
        "summary_last_dropout": 0.1,
        "tie_word_embeddings": True,
    }


def _encoder_to_hf(enc, prefix="electra.") -> dict[str, torch.Tensor]:
    out = {}
    if enc.embeddings_project is not None:
        out[prefix + "embeddings_project.weight"] = enc.embeddings_project.weight
        out[prefix + "embeddings_project.bias"] = enc.embeddings_project.bias
    for i, blk in enumerate(enc.layers):
        p = f"{prefix}encoder.layer.{i}."
        for part, w, b in zip(("query", "key", "value"), blk.qkv.weight.chunk(3), blk.qkv.bias.chunk(3)):
            out[p + f"attention.self.{part}.weight"] = w
            out[p + f"attention.self.{part}.bias"] = b
        for ours, theirs in (("attn_out", "attention.output.dense"), ("ln1", "attention.output.LayerNorm"),
                             ("ffn_in", "intermediate.dense"), ("ffn_out", "output.dense"),
                             ("ln2", "output.LayerNorm")):
            mod = getattr(blk, ours)
            out[p + theirs + ".weight"] = mod.weight
            out[p + theirs + ".bias"] = mod.bias
    return out


def _embeddings_to_hf(model: Electra, word_weight, prefix="electra.embeddings.") -> dict[str, torch.Tensor]:
    e = model.embeddings
    return {prefix + "word_embeddings.weight": word_weight,
            prefix + "position_embeddings.weight": e.position_embeddings.weight,
            prefix + "token_type_embeddings.weight": e.token_type_embeddings.weight,
            prefix + "LayerNorm.weight": e.LayerNorm.weight,
            prefix + "LayerNorm.bias": e.LayerNorm.bias}


def _save_folder(folder: Path, tensors: dict, config: dict, tokenizer=None) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    # safetensors refuses shared storage: give every tensor its own contiguous copy
    save_file({k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in tensors.items()},
              str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    if tokenizer is not None:
        tokenizer.save(folder)
        (folder / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "ElectraTokenizer", "do_lower_case": True, "model_max_length": config[
                "max_position_embeddings"]}, indent=2) + "\n", encoding="utf-8")
        (folder / "special_tokens_map.json").write_text(json.dumps({
            "pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
            "mask_token": "[MASK]"}, indent=2) + "\n", encoding="utf-8")


def _tokenizer_for(model_cfg: ElectraConfig, tokenizer):
    """Our ElectraTokenizer, or a vocabulary path to load one from; its size must be the model's."""
    if tokenizer is None:
        warnings.warn("save_hf without tokenizer=: the folders get no vocab.txt / tokenizer.json, so they can "
                      "neither be fine-tuned nor loaded with AutoTokenizer; pass the run's vocabulary "
                      "(tokenizer='runs/<run>/vocab')", stacklevel=4)
        return None
    if isinstance(tokenizer, (str, Path)):
        from .tokenizer import load_tokenizer

        tokenizer = load_tokenizer(tokenizer)
    if not hasattr(tokenizer, "save") or not hasattr(tokenizer, "vocab_size"):
        raise TypeError(f"tokenizer must be an ElectraTokenizer or a vocabulary path, got {type(tokenizer).__name__}")
    if tokenizer.vocab_size != model_cfg.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is "
                         f"{model_cfg.vocab_size}; pass the vocabulary the model was trained with")
    return tokenizer


@torch.no_grad()
def save_hf(model: Electra, out_dir: str | Path, tokenizer=None) -> tuple[Path, Path]:
    """Write ``out_dir/discriminator`` (ElectraForPreTraining) and ``out_dir/generator``
    (ElectraForMaskedLM), each with the tokenizer files (vocab.txt, tokenizer.json, tokenizer
    config) so that it fine-tunes and loads with ``AutoTokenizer``. ``tokenizer``: our
    ElectraTokenizer or a path to the run's vocabulary (``runs/<run>/vocab``)."""
    out = Path(out_dir)
    cfg = model.config
    tokenizer = _tokenizer_for(cfg, tokenizer)
    if model.discriminator is None:
        raise ValueError("an objective='mlm' model (the BERT baseline) has no discriminator to export")
    disc_words = model.embeddings.word_embeddings.weight
    if model.disc_embedding_delta is not None:  # GDES: the discriminator's effective embeddings
        disc_words = disc_words + model.disc_embedding_delta
    disc = {**_embeddings_to_hf(model, disc_words), **_encoder_to_hf(model.discriminator)}
    disc["discriminator_predictions.dense.weight"] = model.discriminator_head.dense.weight
    disc["discriminator_predictions.dense.bias"] = model.discriminator_head.dense.bias
    disc["discriminator_predictions.dense_prediction.weight"] = model.discriminator_head.dense_prediction.weight
    disc["discriminator_predictions.dense_prediction.bias"] = model.discriminator_head.dense_prediction.bias
    _save_folder(out / "discriminator", disc, _hf_config(cfg, cfg.hidden_size, cfg.num_layers, cfg.num_heads,
                                                         cfg.intermediate_size, DISC_ARCH), tokenizer)

    gen = {**_embeddings_to_hf(model, model.embeddings.word_embeddings.weight), **_encoder_to_hf(model.generator)}
    head = model.generator_head
    gen["generator_predictions.dense.weight"] = head.dense.weight
    gen["generator_predictions.dense.bias"] = head.dense.bias
    gen["generator_predictions.LayerNorm.weight"] = head.LayerNorm.weight
    gen["generator_predictions.LayerNorm.bias"] = head.LayerNorm.bias
    gen["generator_lm_head.weight"] = model.embeddings.word_embeddings.weight  # tied
    gen["generator_lm_head.bias"] = head.bias
    _save_folder(out / "generator", gen, _hf_config(
        cfg, cfg.generator_hidden_size, cfg.generator_num_layers, cfg.generator_num_heads,
        cfg.generator_intermediate_size, GEN_ARCH), tokenizer)
    return out / "discriminator", out / "generator"


@torch.no_grad()
def save_hf_qa(model, out_dir: str | Path, tokenizer=None) -> Path:
    """Write a fine-tuned ``squad.SpanExtractor`` as an ``ElectraForQuestionAnswering`` folder:
    the encoder under ``electra.`` and the H -> 2 span head as ``qa_outputs`` (start, end)."""
    out = Path(out_dir)
    cfg = model.config
    tensors = {**_embeddings_to_hf(model, model.embeddings.word_embeddings.weight), **_encoder_to_hf(model.encoder)}
    tensors["qa_outputs.weight"] = model.classifier.weight
    tensors["qa_outputs.bias"] = model.classifier.bias
    config = _hf_config(cfg, cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.intermediate_size, QA_ARCH)
    config["num_labels"] = 2  # qa_outputs: start and end
    _save_folder(out, tensors, config, tokenizer)
    return out


# ---------------------------------------------------------------------------- import
def read_hf_folder(folder: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json as a dict, state dict) of a HuggingFace folder; weights are read with
    safetensors or ``torch.load(weights_only=True)``: a checkpoint cannot run code."""
    folder = Path(folder)
    if not folder.is_dir():
        raise HFFormatError(f"{folder}: no such folder")
    cfg_path = folder / "config.json"
    if not cfg_path.exists():
        raise HFFormatError(f"{folder}: no config.json; expected a HuggingFace ELECTRA folder")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise HFFormatError(f"{cfg_path}: not valid JSON ({str(e).splitlines()[0][:120]})") from None
    if not isinstance(config, dict):
        raise HFFormatError(f"{cfg_path}: expected a JSON object, got {type(config).__name__}")
    if config.get("model_type", "electra") != "electra":
        raise HFFormatError(f"{cfg_path}: model_type is {config.get('model_type')!r}, expected 'electra'")
    if config.get("hidden_act", "gelu") != "gelu":
        raise HFFormatError(f"{cfg_path}: hidden_act {config['hidden_act']!r} is not supported (gelu only)")
    weights = next((folder / n for n in ("model.safetensors", "pytorch_model.bin") if (folder / n).exists()), None)
    if weights is None:
        raise HFFormatError(f"{folder}: no model.safetensors or pytorch_model.bin")
    try:
        if weights.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(weights))
        else:
            state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated / corrupted file, or a pickle weights_only refuses
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise HFFormatError(f"{weights}: unreadable weights ({first})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise HFFormatError(f"{weights}: not a state dict of tensors")
    return config, state


def _architecture(config: dict, state: dict) -> str | None:
    """'generator' or 'discriminator' when config.json or the weights say which one a folder holds."""
    arch = " ".join(config.get("architectures") or [])
    if GEN_ARCH in arch or any(k.startswith("generator_predictions.") for k in state):
        return "generator"
    if DISC_ARCH in arch or any(k.startswith("discriminator_predictions.") for k in state):
        return "discriminator"
    return None


def _strip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys without the model prefix ('electra.'), known stray buffers dropped."""
    out = {}
    for k, v in state.items():
        if k.endswith(("position_ids", "embeddings.token_type_ids")):
            continue
        out[k[len("electra."):] if k.startswith("electra.") else k] = v
    return out


def _load_encoder(enc, state: dict, used: set, where: str) -> None:
    def take(k):
        if k not in state:
            raise HFFormatError(f"{where}: missing weight {k!r}")
        used.add(k)
        return state[k]

    with torch.no_grad():
        if enc.embeddings_project is not None:
            enc.embeddings_project.weight.copy_(take("embeddings_project.weight"))
            enc.embeddings_project.bias.copy_(take("embeddings_project.bias"))
        else:  # present but unused when E == H in some exports
            used.update(k for k in state if k.startswith("embeddings_project."))
        for i, blk in enumerate(enc.layers):
            p = f"encoder.layer.{i}."
            blk.qkv.weight.copy_(torch.cat([take(p + f"attention.self.{n}.weight") for n in ("query", "key", "value")]))
            blk.qkv.bias.copy_(torch.cat([take(p + f"attention.self.{n}.bias") for n in ("query", "key", "value")]))
            for ours, theirs in (("attn_out", "attention.output.dense"), ("ln1", "attention.output.LayerNorm"),
                                 ("ffn_in", "intermediate.dense"), ("ffn_out", "output.dense"),
                                 ("ln2", "output.LayerNorm")):
                getattr(blk, ours).weight.copy_(take(p + theirs + ".weight"))
                getattr(blk, ours).bias.copy_(take(p + theirs + ".bias"))


def config_from_hf(disc: dict, gen: dict | None = None) -> ElectraConfig:
    """Our config from HF config.json dicts (generator sizes default to 1/4 of the discriminator)."""
    h = disc["hidden_size"]
    g_h = gen["hidden_size"] if gen else max(64, h // 4)
    return ElectraConfig(
        vocab_size=disc["vocab_size"], embedding_size=disc.get("embedding_size", h),
        max_position_embeddings=disc.get("max_position_embeddings", 512),
        type_vocab_size=disc.get("type_vocab_size", 2), pad_token_id=disc.get("pad_token_id", 0),
        hidden_size=h, num_layers=disc["num_hidden_layers"], num_heads=disc["num_attention_heads"],
        intermediate_size=disc["intermediate_size"],
        generator_hidden_size=g_h,
        generator_num_layers=gen["num_hidden_layers"] if gen else disc["num_hidden_layers"],
        generator_num_heads=gen["num_attention_heads"] if gen else max(1, g_h // 64),
        generator_intermediate_size=gen["intermediate_size"] if gen else 4 * g_h,
        dropout=disc.get("hidden_dropout_prob", 0.1),
        attention_dropout=disc.get("attention_probs_dropout_prob", 0.1),
        layer_norm_eps=disc.get("layer_norm_eps", 1e-12),
        initializer_range=disc.get("initializer_range", 0.02),
        max_seq_length=min(128, disc.get("max_position_embeddings", 512)),
    )


def _same_encoder(cfg: ElectraConfig, d_state: dict, g_state: dict) -> bool:
    """True when the generator folder holds the discriminator's own encoder, tensor for tensor."""
    if cfg.generator_size_mismatches():
        return False
    keys = [k for k in d_state if k.startswith(("encoder.", "embeddings_project."))]
    return bool(keys) and all(k in g_state and torch.equal(g_state[k], d_state[k]) for k in keys)


def load_hf(discriminator_dir: str | Path, generator_dir: str | Path | None = None) -> Electra:
    """Build our ``Electra`` from HuggingFace folders (e.g. a google/electra-* checkpoint on disk).

    ELECTRA shares embeddings: the discriminator's are used. Without ``generator_dir`` the
    generator is freshly initialised at 1/4 of the discriminator's width. A generator folder that
    holds the discriminator's own encoder (a ``tie_encoders`` model's export) gives a tied model.
    """
    d_cfg, d_state = read_hf_folder(discriminator_dir)
    g_cfg, g_state = read_hf_folder(generator_dir) if generator_dir is not None else (None, None)
    if _architecture(d_cfg, d_state) == "generator":
        raise HFFormatError(f"discriminator_dir {discriminator_dir} holds a generator (ElectraForMaskedLM); "
                            "call load_hf(discriminator_dir, generator_dir) with the discriminator folder first")
    if g_cfg is not None and _architecture(g_cfg, g_state) == "discriminator":
        raise HFFormatError(f"generator_dir {generator_dir} holds a discriminator (ElectraForPreTraining); "
                            "call load_hf(discriminator_dir, generator_dir) with the generator folder second")
    try:
        return _build(discriminator_dir, generator_dir, d_cfg, d_state, g_cfg, g_state)
    except KeyError as e:
        raise HFFormatError(f"{discriminator_dir if generator_dir is None else (discriminator_dir, generator_dir)}: "
                            f"missing {e.args[0]!r} (config.json key or weight); not an ELECTRA folder") from None
    except (RuntimeError, TypeError, ValueError) as e:
        if isinstance(e, HFFormatError):
            raise
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise HFFormatError(f"{discriminator_dir}: weights or config.json do not fit an ELECTRA model "
                            f"({first})") from None


def _build(discriminator_dir, generator_dir, d_cfg, d_state, g_cfg, g_state) -> Electra:
    if g_cfg is not None:
        for k in ("vocab_size", "embedding_size", "max_position_embeddings", "type_vocab_size"):
            if g_cfg.get(k) != d_cfg.get(k):
                raise HFFormatError(f"generator {k}={g_cfg.get(k)} differs from the discriminator's {d_cfg.get(k)}")
    d_state = _strip(d_state)
    g_state = _strip(g_state) if g_state is not None else None
    cfg = config_from_hf(d_cfg, g_cfg)
    if g_state is not None and _same_encoder(cfg, d_state, g_state):
        cfg = cfg.replace(tie_encoders=True)  # exported from a tie_encoders model: keep it tied
    model = Electra(cfg)
    used: set = set()
    e = model.embeddings
    with torch.no_grad():
        for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
            getattr(e, name).weight.copy_(d_state[f"embeddings.{name}.weight"])
            used.add(f"embeddings.{name}.weight")
        e.LayerNorm.weight.copy_(d_state["embeddings.LayerNorm.weight"])
        e.LayerNorm.bias.copy_(d_state["embeddings.LayerNorm.bias"])
        used.update({"embeddings.LayerNorm.weight", "embeddings.LayerNorm.bias"})
        _load_encoder(model.discriminator, d_state, used, str(discriminator_dir))
        dh = model.discriminator_head
        for ours, theirs in ((dh.dense, "discriminator_predictions.dense"),
                             (dh.dense_prediction, "discriminator_predictions.dense_prediction")):
            if theirs + ".weight" in d_state:
                ours.weight.copy_(d_state[theirs + ".weight"])
                ours.bias.copy_(d_state[theirs + ".bias"])
                used.update({theirs + ".weight", theirs + ".bias"})
            else:
                warnings.warn(f"{discriminator_dir}: no {theirs} weights (not an ElectraForPreTraining "
                              "checkpoint?); the discriminator head stays freshly initialised", stacklevel=2)
    _warn_unused(d_state, used, discriminator_dir, ignore=("classifier.", "discriminator_predictions."))

    if g_state is not None:
        used = set()
        if not torch.equal(g_state.get("embeddings.word_embeddings.weight", e.word_embeddings.weight),
                           e.word_embeddings.weight):
            warnings.warn("the generator's embeddings differ from the discriminator's; ELECTRA shares them, "
                          "so the discriminator's are used", stacklevel=2)
        used.update(k for k in g_state if k.startswith("embeddings."))
        with torch.no_grad():
            _load_encoder(model.generator, g_state, used, str(generator_dir))
            gh = model.generator_head
            gh.dense.weight.copy_(g_state["generator_predictions.dense.weight"])
            gh.dense.bias.copy_(g_state["generator_predictions.dense.bias"])
            gh.LayerNorm.weight.copy_(g_state["generator_predictions.LayerNorm.weight"])
            gh.LayerNorm.bias.copy_(g_state["generator_predictions.LayerNorm.bias"])
            gh.bias.copy_(g_state["generator_lm_head.bias"])
        used.update({"generator_predictions.dense.weight", "generator_predictions.dense.bias",
                     "generator_predictions.LayerNorm.weight", "generator_predictions.LayerNorm.bias",
                     "generator_lm_head.bias", "generator_lm_head.weight"})
        _warn_unused(g_state, used, generator_dir)
    return model


def _warn_unused(state, used, where, ignore=()):
    extra = sorted(k for k in state if k not in used and not k.startswith(ignore))
    if extra:
        warnings.warn(f"{where}: ignored {len(extra)} unexpected weight(s): {', '.join(extra[:5])}"
                      + (" ..." if len(extra) > 5 else ""), stacklevel=3)
