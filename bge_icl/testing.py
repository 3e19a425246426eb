"""Offline stand-ins for BAAI/bge-en-icl: the real tokenizer and seeded random-weight checkpoints.

The real weights cannot be fetched in CI, so tests, docs examples and benchmarks use:

- :func:`build_tokenizer`: bge-en-icl's tokenizer, rebuilt from the Mistral-7B v1 sentencepiece
  model shipped in the ``mistral-common`` wheel, with ``<instruct>``, ``<query>``, ``<response>``
  (ids 32000-32002), BOS and EOS added, ``<unk>`` as left padding. The ``tokenizer.json`` is built
  with the ``tokenizers`` library exactly as transformers 4.x converts the slow tokenizer, so
  transformers 4.x and 5.x tokenize identically.
- :func:`build_checkpoint`: a ``MistralModel`` with that tokenizer and random weights (seeded), plus the
  sentence-transformers files of the hub repo (:func:`write_sentence_transformers_files`), so
  ``SentenceTransformer(path)`` loads it as it loads ``BAAI/bge-en-icl``.

Needs the ``testing`` extra: ``pip install 'bge-icl[testing]'``.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import shutil
from pathlib import Path
from typing import Any

from bge_icl.optional import optional_import

SPECIAL_TOKENS = {0: "<unk>", 1: "<s>", 2: "</s>", 32000: "<instruct>", 32001: "<query>", 32002: "<response>"}
ICL_TOKENS = ("<instruct>", "<query>", "<response>")
VOCAB_SIZE = 32003


def sentencepiece_model_path() -> Path:
    """Path of ``tokenizer.model.v1`` (Mistral-7B v0.1 sentencepiece) inside ``mistral-common``."""
    optional_import("mistral_common", "testing", "bge_icl.testing")
    return Path(str(importlib.resources.files("mistral_common") / "data" / "tokenizer.model.v1"))


def _backend_tokenizer_json(add_eos_token: bool) -> str:
    spm = optional_import("sentencepiece", "testing", "bge_icl.testing")
    tk = optional_import("tokenizers", "testing", "bge_icl.testing")
    sp = spm.SentencePieceProcessor(model_file=str(sentencepiece_model_path()))
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    # Merges as transformers 4.x's SentencePieceExtractor orders them: by the merged piece's score.
    ranked: list[tuple[float, int, tuple[str, str]]] = []
    for piece, pid in vocab.items():
        splits = [(piece[:k], piece[k:]) for k in range(1, len(piece)) if piece[:k] in vocab and piece[k:] in vocab]
        splits.sort(key=lambda m: (vocab[m[0]], vocab[m[1]]))
        ranked.extend((-sp.get_score(pid), pid, m) for m in splits)
    ranked.sort(key=lambda r: (r[0], r[1]))
    merges = [m for _, _, m in ranked]
    model = tk.models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True)
    tok = tk.Tokenizer(model)
    # legacy=True layout: prepend "▁" and turn spaces into "▁" in the normalizer, no pre-tokenizer.
    tok.normalizer = tk.normalizers.Sequence([tk.normalizers.Prepend("▁"), tk.normalizers.Replace(" ", "▁")])
    tok.decoder = tk.decoders.Sequence(
        [tk.decoders.Replace("▁", " "), tk.decoders.ByteFallback(), tk.decoders.Fuse(), tk.decoders.Strip(" ", 1, 0)]
    )
    tok.add_special_tokens([tk.AddedToken(SPECIAL_TOKENS[i], normalized=False, special=True) for i in (0, 1, 2)])
    tok.add_special_tokens([tk.AddedToken(t, normalized=False, special=True) for t in ICL_TOKENS])
    single = "<s>:0 $A:0" + (" </s>:0" if add_eos_token else "")
    pair = single + " <s>:1 $B:1" + (" </s>:1" if add_eos_token else "")
    tok.post_processor = tk.processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=[("<s>", 1), ("</s>", 2)]
    )
    return str(tok.to_str())


def build_tokenizer(directory: str | os.PathLike[str], *, add_eos_token: bool = True) -> Path:
    """Write bge-en-icl's tokenizer files into ``directory``.

    Args:
        directory: Created if missing.
        add_eos_token: False writes a variant that does not append EOS (to test the EOS guarantee).

    Returns:
        The directory, loadable with ``AutoTokenizer.from_pretrained``.

    Example:
        >>> from transformers import AutoTokenizer  # doctest: +SKIP
        >>> AutoTokenizer.from_pretrained(build_tokenizer("/tmp/tok"))("embedding")["input_ids"]  # doctest: +SKIP
        [1, 28643, 2]
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(sentencepiece_model_path(), out / "tokenizer.model")
    (out / "tokenizer.json").write_text(_backend_tokenizer_json(add_eos_token), encoding="utf-8")

    def entry(content: str) -> dict[str, Any]:
        return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}

    config = {
        "add_bos_token": True,
        "add_eos_token": add_eos_token,
        "add_prefix_space": True,
        "added_tokens_decoder": {str(i): {**entry(t), "special": True} for i, t in SPECIAL_TOKENS.items()},
        "additional_special_tokens": list(ICL_TOKENS),
        "bos_token": "<s>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "</s>",
        "legacy": True,
        "model_max_length": 1000000000000000019884624838656,
        "pad_token": "<unk>",
        "padding_side": "left",
        "sp_model_kwargs": {},
        "spaces_between_special_tokens": False,
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": "<unk>",
        "use_default_system_prompt": False,
    }
    special_map = {
        "additional_special_tokens": list(ICL_TOKENS),
        "bos_token": entry("<s>"),
        "eos_token": entry("</s>"),
        "pad_token": entry("<unk>"),
        "unk_token": entry("<unk>"),
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (out / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2), encoding="utf-8")
    (out / "added_tokens.json").write_text(
        json.dumps({t: 32000 + i for i, t in enumerate(ICL_TOKENS)}, indent=2), encoding="utf-8"
    )
    return out


# The real bge-en-icl architecture (its config.json); benchmarks build random-weight copies of it.
BGE_EN_ICL_CONFIG: dict[str, Any] = {
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 32768,
    "sliding_window": 4096,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-5,
    "vocab_size": VOCAB_SIZE,
}


REAL_SHAPED_LAYERS = 2
"""Layers of :func:`build_real_shaped_checkpoint` by default (bge-en-icl has 32): its figures are per layer."""


def real_shaped_config(num_hidden_layers: int = REAL_SHAPED_LAYERS) -> dict[str, Any]:
    """bge-en-icl's real widths (hidden 4096, MLP 14336, 32 / 8 heads, its vocabulary) with ``num_hidden_layers``."""
    return {**BGE_EN_ICL_CONFIG, "num_hidden_layers": num_hidden_layers}


def build_real_shaped_checkpoint(
    directory: str | os.PathLike[str], *, num_hidden_layers: int = REAL_SHAPED_LAYERS, seed: int = 0
) -> Path:
    """A random-weight checkpoint of bge-en-icl's real layer shapes with few layers, for benchmarks (not tests: 2
    layers hold 0.57 B parameters, 1.1 GB on disk in bfloat16).

    The weights are saved in bfloat16 (``torch_dtype`` in its config), so every dtype loads the same values.

    Args:
        directory: Created if missing.
        num_hidden_layers: How many of bge-en-icl's 32 layers.
        seed: Seeds the weight initialization.

    Returns:
        The directory, loadable with ``ICLEmbedder(str(path))``.
    """
    import torch
    from transformers import MistralModel

    out = Path(directory)
    build_tokenizer(out)
    torch.manual_seed(seed)
    model = MistralModel(mistral_config(**real_shaped_config(num_hidden_layers)))
    torch.nn.Module.to(model, torch.bfloat16)  # in place; save_pretrained records the dtype
    model.save_pretrained(out)
    write_sentence_transformers_files(out, model.config.hidden_size)
    return out


def mistral_config(**overrides: Any) -> Any:
    """A ``MistralConfig`` for bge-en-icl's vocabulary; ``overrides`` set sizes (tiny by default)."""
    from transformers import MistralConfig

    values: dict[str, Any] = {
        "vocab_size": VOCAB_SIZE,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "sliding_window": 4096,
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-5,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "tie_word_embeddings": False,
        "use_cache": False,
        "architectures": ["MistralModel"],
    }
    values.update(overrides)
    return MistralConfig(**values)


def write_sentence_transformers_files(directory: str | os.PathLike[str], hidden_size: int) -> None:
    """bge-en-icl's sentence-transformers configuration, as its hub repo ships it.

    Modules Transformer + Pooling (``pooling_mode_lasttoken``, ``include_prompt`` true), no Normalize,
    ``max_seq_length`` 32,768.
    """
    out = Path(directory)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    modes = ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens", "weightedmean_tokens", "lasttoken")
    pooling: dict[str, Any] = {"word_embedding_dimension": hidden_size}
    pooling.update({f"pooling_mode_{m}": m == "lasttoken" for m in modes})
    pooling["include_prompt"] = True
    (out / "modules.json").write_text(json.dumps(modules, indent=2), encoding="utf-8")
    (out / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": 32768, "do_lower_case": False}, indent=2), encoding="utf-8"
    )
    (out / "1_Pooling").mkdir(exist_ok=True)
    (out / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2), encoding="utf-8")


def build_checkpoint(
    directory: str | os.PathLike[str], *, seed: int = 0, add_eos_token: bool = True, **config: Any
) -> Path:
    """Write a random-weight ``MistralModel`` plus bge-en-icl's tokenizer into ``directory``.

    Args:
        directory: Created if missing.
        seed: Seeds the weight initialization, so a checkpoint is reproducible.
        add_eos_token: Passed to :func:`build_tokenizer`.
        **config: ``MistralConfig`` overrides, e.g. ``hidden_size=512, num_hidden_layers=8``.

    Returns:
        The directory, loadable with ``ICLEmbedder(str(path))``.

    Example:
        >>> path = build_checkpoint("/tmp/tiny-bge-icl", hidden_size=64)  # doctest: +SKIP
        >>> ICLEmbedder(str(path)).dimension  # doctest: +SKIP
        64
    """
    import torch
    from transformers import MistralModel

    out = Path(directory)
    build_tokenizer(out, add_eos_token=add_eos_token)
    torch.manual_seed(seed)
    model = MistralModel(mistral_config(**config))
    model.save_pretrained(out)
    write_sentence_transformers_files(out, model.config.hidden_size)
    return out
