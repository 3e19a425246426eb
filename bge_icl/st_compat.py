"""sentence-transformers interop: wrap a loaded ``SentenceTransformer``; ``encode_query`` / ``encode_document``.

``ICLEmbedder.from_sentence_transformer(model)`` reuses the model's transformer and tokenizer (same device, same
dtype, no second copy of the weights) and adds what sentence-transformers cannot express: the few-shot query
``<instruct>{task}\\n<query>{q}\\n<response>`` with its examples before it. ``encode_query`` /
``encode_document`` have sentence-transformers 5's meaning (a query, a passage) and its argument names, beside
FlagEmbedding's ``encode_queries`` / ``encode_corpus``.

Nothing here imports sentence-transformers: the model is read through its public attributes (module 0's
``auto_model`` and ``tokenizer``, module 1's ``get_config_dict()``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol, cast

import numpy as np
import torch

from bge_icl.choices import ATTENTION_IMPLEMENTATIONS
from bge_icl.loading import adopt_model
from bge_icl.options import MODEL_ALIASES, EmbedderOptions, refuse_options
from bge_icl.precision import Precision
from bge_icl.transformers_compat import attention_implementation


class _Encodes(Protocol):
    """What this mixin needs of the class it is mixed into (:class:`~bge_icl.ICLEmbedder`), typed."""

    @property
    def options(self) -> EmbedderOptions: ...

    def encode_queries(self, queries: Any, batch_size: int | None = None, max_length: int | None = None,
                       convert_to_numpy: bool | None = None, **call: Any) -> Any: ...  # fmt: skip

    def encode_corpus(self, corpus: Any, batch_size: int | None = None, max_length: int | None = None,
                      convert_to_numpy: bool | None = None, **call: Any) -> Any: ...  # fmt: skip

# Options that the SentenceTransformer decides (its weights, where and how they are loaded).
FROM_THE_MODEL = (*MODEL_ALIASES, "devices", "dtype", "attn_implementation", "use_fp16", "use_bf16",
                  "trust_remote_code", "cache_dir", "revision")  # fmt: skip
ST_ARGUMENTS = ("batch_size", "show_progress_bar", "precision", "calibration", "convert_to_numpy",
                "convert_to_tensor", "normalize_embeddings")  # fmt: skip
_PROMPT = (
    "bge-icl builds the query prompt from the instruction and examples: use "
    "with_options(query_instruction_for_retrieval=...) / with_examples(...)"
)
_REFUSED = {
    "prompt": _PROMPT,
    "prompt_name": _PROMPT,
    "truncate_dim": "it changes the vectors, so it is fixed at construction: use with_options(truncate_dim=...)",
    "device": "the device is fixed when the model is loaded: build the embedder with devices=...",
}


def pooling_mode(module: Any) -> str:
    """A sentence-transformers ``Pooling`` module's mode (``"lasttoken"``, ``"mean"``, ...)."""
    config = module.get_config_dict() if hasattr(module, "get_config_dict") else {}
    if "pooling_mode" in config:  # sentence-transformers >= 5.2
        return str(config["pooling_mode"])
    on = [k.removeprefix("pooling_mode_").removesuffix("_tokens") for k, v in config.items() if k.startswith(
        "pooling_mode_") and v is True]  # fmt: skip
    return "+".join(on) or type(module).__name__


def _wrapped_parts(model: Any) -> tuple[Any, Any]:
    """(the transformers model, its tokenizer) of a last-token ``SentenceTransformer``, else a clear error."""
    modules: list[Any] = list(model.children()) if isinstance(model, torch.nn.Module) else []
    if not modules or not hasattr(modules[0], "auto_model") or not hasattr(modules[0], "tokenizer"):
        msg = (
            f"from_sentence_transformer expects a loaded SentenceTransformer whose first module is a Transformer; "
            f"got {type(model).__name__} with modules {[type(m).__name__ for m in modules]}"
        )
        raise TypeError(msg)
    mode = pooling_mode(modules[1]) if len(modules) > 1 else "none (no Pooling module)"
    if mode != "lasttoken":
        msg = (
            f"the SentenceTransformer pools with {mode!r}; bge-en-icl's embedding is the hidden state of the final "
            "EOS token, so only pooling_mode 'lasttoken' can be wrapped"
        )
        raise ValueError(msg)
    extra = [type(m).__name__ for m in modules[2:] if type(m).__name__ != "Normalize"]
    if extra:
        msg = f"the SentenceTransformer has modules after Pooling that bge-icl does not run: {extra}; valid: Normalize"
        raise ValueError(msg)
    return modules[0].auto_model, modules[0].tokenizer


class SentenceTransformersCompat:
    """sentence-transformers' names on :class:`~bge_icl.ICLEmbedder` (it inherits this class)."""

    @classmethod
    def from_sentence_transformer(cls, model: Any, /, **options: Any) -> Any:
        """An embedder on an already loaded ``SentenceTransformer``'s weights (same device and dtype, no copy).

        The model's transformer and tokenizer are used as they are; bge-icl's own prompt, truncation
        (``passage_max_length`` 512, not the model's ``max_seq_length``) and EOS rule apply. The weights join
        bge-icl's registry, so ``with_options`` / ``with_examples`` and embedders built later on the same
        path, device and dtype share them too.

        Args:
            model: A ``SentenceTransformer`` whose modules are Transformer, Pooling (``lasttoken``) and
                optionally Normalize, e.g. ``SentenceTransformer("BAAI/bge-en-icl")``.
            **options: Any :class:`~bge_icl.options.EmbedderOptions` field but those the model decides
                (:data:`FROM_THE_MODEL`; ``model=`` too: ``model`` is positional only).

        Raises:
            TypeError: ``model`` is not a SentenceTransformer, or an option the model decides is given.
            ValueError: The model does not pool the last token, or has modules bge-icl does not run.

        Example:
            >>> st = SentenceTransformer("BAAI/bge-en-icl", model_kwargs={"dtype": "float16"})  # doctest: +SKIP
            >>> emb = ICLEmbedder.from_sentence_transformer(st, examples_for_task=examples)  # doctest: +SKIP
            >>> emb.encode_query(["how much protein should a female eat"]).shape  # doctest: +SKIP
            (1, 4096)
        """
        why = ("from_sentence_transformer takes {} from the SentenceTransformer (its weights, device and dtype); "
               "pass only prompt, length and batching options")  # fmt: skip
        refuse_options(options, FROM_THE_MODEL, why, TypeError)
        auto, tokenizer = _wrapped_parts(model)
        attn = attention_implementation(auto)
        if attn not in ATTENTION_IMPLEMENTATIONS:
            msg = f"the SentenceTransformer's attention implementation {attn!r} is not supported; valid: " + str(
                ATTENTION_IMPLEMENTATIONS
            )
            raise ValueError(msg)
        loaded = adopt_model(auto, tokenizer, attn)
        build = cast("Callable[..., Any]", cls)  # ICLEmbedder (or a subclass), whose options these are
        return build(loaded.source, devices=str(loaded.device), dtype=loaded.dtype, attn_implementation=attn, **options)

    def encode_query(self, inputs: str | Iterable[str], **kwargs: Any) -> Any:
        """sentence-transformers' ``encode_query``: queries, here with the few-shot prefix and instruction.

        Args:
            inputs: One query or a list of them.
            **kwargs: sentence-transformers' names (:data:`ST_ARGUMENTS`): ``batch_size``,
                ``show_progress_bar``, ``precision`` (and ``calibration``, see :mod:`bge_icl.precision`),
                ``convert_to_numpy``, ``convert_to_tensor``, ``normalize_embeddings`` (None = the embedder's
                option; another value than the option raises, since the option fixes the vectors).

        Returns:
            An array (N, dimension) (or (dimension,) for one ``str``); a torch tensor with
            ``convert_to_tensor=True``; a list of 1-D tensors with ``convert_to_numpy=False``.
        """
        return self._st_encode(inputs, "queries", **kwargs)

    def encode_document(self, inputs: str | Iterable[str], **kwargs: Any) -> Any:
        """sentence-transformers' ``encode_document``: passages as they are; arguments as :meth:`encode_query`."""
        return self._st_encode(inputs, "passages", **kwargs)

    def _st_encode(self, inputs: str | Iterable[str], kind: str, batch_size: int | None = None,
                   show_progress_bar: bool | None = None, precision: Precision = "float32",
                   calibration: np.ndarray | None = None, convert_to_numpy: bool = True,
                   convert_to_tensor: bool = False, normalize_embeddings: bool | None = None,
                   **rest: Any) -> Any:  # fmt: skip
        refused = next((name for name in rest if name in _REFUSED), None)
        if refused is not None:
            msg = f"{refused}= is not taken here: {_REFUSED[refused]}"
            raise TypeError(msg)
        if rest:
            msg = f"unknown argument(s) {sorted(rest)}; valid: {list(ST_ARGUMENTS)}"
            raise TypeError(msg)
        me = cast(_Encodes, self)  # typed: mypy checks every call below
        if normalize_embeddings is not None and bool(normalize_embeddings) != me.options.normalize_embeddings:
            msg = (
                f"normalize_embeddings={normalize_embeddings} differs from this embedder's option "
                f"normalize_embeddings={me.options.normalize_embeddings}; use with_options(normalize_embeddings=...)"
            )
            raise ValueError(msg)
        encode = me.encode_queries if kind == "queries" else me.encode_corpus
        out = encode(inputs, batch_size, None, True, show_progress=show_progress_bar, precision=precision,
                     calibration=calibration)  # fmt: skip
        if convert_to_tensor or (not convert_to_numpy and out.ndim == 1):
            return torch.from_numpy(out)
        return out if convert_to_numpy else list(torch.from_numpy(out))
