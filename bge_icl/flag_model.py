"""``FlagICLModel``: FlagEmbedding 1.4.2's ``FlagICLModel`` surface on bge-icl, a small subclass of ``ICLEmbedder``.

``from bge_icl import FlagICLModel`` runs existing FlagEmbedding code: everything public there works here with the
same meaning (``encode_queries(q, batch_size=16, max_length=256, convert_to_numpy=False)``, ``encode``,
``set_examples(...)``, ``truncate_dim``, ``target_devices``, the options as attributes, ...), except FlagEmbedding's
multi-process pool: bge-icl runs one thread per replica in the calling process (``devices=[...]``), so the pool
methods raise ``NotImplementedError`` naming that, and stopping a pool that cannot exist does nothing.
``tests/bge_icl/test_flag_drop_in.py`` walks FlagEmbedding's signatures with ``inspect`` so a new argument there
shows up as a failing test here.

Unlike :class:`~bge_icl.ICLEmbedder`, which never changes once built, a ``FlagICLModel`` changes its examples in
place with :meth:`FlagICLModel.set_examples`, as FlagEmbedding's does: it swaps the one prompt layout (and the
options that report it). Adapters wrapping one take an immutable :class:`~bge_icl.ICLEmbedder` on the same weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from typing_extensions import Unpack

from bge_icl.encoder import ICLEmbedder
from bge_icl.loading import resolve_devices
from bge_icl.options import CallOptions, EmbedderOptions
from bge_icl.prompts import unescape_newlines

NO_POOL = (
    "bge-icl has no multi-process pool: one embedder runs one thread per replica in this process. "
    "Pass devices=['cuda:0', 'cuda:1', ...] (or 'auto') and call encode_queries / encode_corpus"
)


class FlagICLModel(ICLEmbedder):
    """FlagEmbedding 1.4.2's ``FlagICLModel``, on bge-icl's embedder: the same arguments, methods and vectors.

    The options are also readable as attributes (``model.query_max_length``), as FlagEmbedding keeps them.

    Example:
        >>> from bge_icl import FlagICLModel  # doctest: +SKIP
        >>> model = FlagICLModel("BAAI/bge-en-icl", examples_for_task=examples,
        ...                      query_instruction_for_retrieval=task, use_fp16=True)  # doctest: +SKIP
        >>> model.encode_queries(["how much protein should a female eat"]).shape  # doctest: +SKIP
        (1, 4096)
    """

    pool: None = None
    """FlagEmbedding's corpus process pool: never started here (see :data:`NO_POOL`)."""
    query_pool: None = None
    """FlagEmbedding's query process pool: never started here."""

    def _setup(self, options: EmbedderOptions) -> None:
        if options.dtype == "auto" and all(d == "cpu" for d in resolve_devices(options.devices)):
            options = options.replace(dtype="float32")  # FlagEmbedding's meaning of its default on the CPU
        super()._setup(options)
        object.__setattr__(self, "_initial_examples", options.examples_for_task)

    def __getattr__(self, name: str) -> Any:
        if name in EmbedderOptions.OPTION_NAMES:  # FlagEmbedding keeps its arguments as attributes
            return getattr(self._options, name)
        return super().__getattr__(name)

    @property
    def model_name_or_path(self) -> str:
        """The model option as given (FlagEmbedding's name for it)."""
        return self._options.model_name

    @property
    def model(self) -> Any:
        """The ``transformers`` base model (the first replica's)."""
        return self.replicas[0].model

    @property
    def tokenizer(self) -> Any:
        """The Hugging Face tokenizer."""
        return self.replicas[0].tokenizer.tokenizer

    @property
    def target_devices(self) -> list[str]:
        """The devices holding a replica, as strings (FlagEmbedding's name)."""
        return [str(d) for d in self.replica_devices]

    @property
    def kwargs(self) -> dict[str, Any]:
        """FlagEmbedding keeps unknown constructor arguments here; bge-icl rejects them, so this is empty."""
        return {}

    def set_examples(self, examples_for_task: Sequence[Mapping[str, str]] | None = None) -> None:
        """FlagEmbedding's ``set_examples``: change the few-shot prefix (and its key/value cache) in place.

        ``None`` goes back to the examples the embedder was built with, as in FlagEmbedding. Unlike
        FlagEmbedding, :attr:`options` then reports the examples in use. The way that never changes an object
        under its users: :meth:`~bge_icl.ICLEmbedder.with_examples`.
        """
        examples = self._initial_examples if examples_for_task is None else examples_for_task
        fresh = self.with_examples(examples)
        with contextlib.ExitStack() as held:  # no batch of this embedder runs while its prompt changes
            for replica in self.replicas:
                held.enter_context(replica.lock)
            object.__setattr__(self, "_options", fresh.options)
            object.__setattr__(self, "_layout", fresh.layout)
            object.__setattr__(self, "_runner", fresh.runner)

    def get_model_torch_dtype(self) -> torch.dtype:
        """The model's dtype, fixed at load."""
        return self.torch_dtype

    @staticmethod
    def get_target_devices(devices: Any) -> list[str]:
        """FlagEmbedding-style ``devices`` as a list of device strings (``None`` = the first GPU, else the CPU)."""
        return resolve_devices(devices)

    @staticmethod
    def get_detailed_instruct(instruction_format: str, instruction: str, sentence: str) -> str:
        """``instruction_format.format(instruction, sentence)``, a literal ``\\n`` read as a newline."""
        return unescape_newlines(instruction_format).format(instruction, sentence)

    @staticmethod
    def get_detailed_example(instruction_format: str, instruction: str, query: str, response: str) -> str:
        """One formatted few-shot example, as FlagEmbedding builds it."""
        return unescape_newlines(instruction_format).format(instruction, query, response)

    def encode(
        self,
        sentences: str | Iterable[str],
        batch_size: int | None = None,
        max_length: int | None = None,
        convert_to_numpy: bool | None = None,
        instruction: str | None = None,
        instruction_format: str | None = None,
        **call: Unpack[CallOptions],
    ) -> np.ndarray | torch.Tensor:
        """FlagEmbedding's ``encode``: passages, each after ``instruction`` when one is given.

        ``instruction_format`` defaults to ``"{}{}"`` (FlagEmbedding's ``AbsEmbedder`` default).
        """
        if instruction is not None:
            fmt = "{}{}" if instruction_format is None else instruction_format
            items = [sentences] if isinstance(sentences, str) else list(sentences)
            formatted = [self.get_detailed_instruct(fmt, instruction, s) for s in items]
            sentences = formatted[0] if isinstance(sentences, str) else formatted
        return self.encode_corpus(sentences, batch_size, max_length, convert_to_numpy, **call)

    def encode_single_device(self, sentences: str | Iterable[str], batch_size: int = 256,
                             max_length: int = 512, convert_to_numpy: bool = True, device: Any = None,
                             **call: Unpack[CallOptions]) -> np.ndarray | torch.Tensor:  # fmt: skip
        """FlagEmbedding's per-device passage encoder: ``encode_corpus`` on this embedder's device(s)."""
        self._check_device(device)
        return self.encode_corpus(sentences, batch_size, max_length, convert_to_numpy, **call)

    def encode_queries_single_device(self, queries: str | Iterable[str], batch_size: int = 256,
                                     max_length: int = 512, convert_to_numpy: bool = True, device: Any = None,
                                     **call: Unpack[CallOptions]) -> np.ndarray | torch.Tensor:  # fmt: skip
        """FlagEmbedding's per-device query encoder: ``encode_queries`` on this embedder's device(s)."""
        self._check_device(device)
        return self.encode_queries(queries, batch_size, max_length, convert_to_numpy, **call)

    def _check_device(self, device: Any) -> None:
        if device is not None and resolve_devices(device)[0] not in self.target_devices:
            msg = f"device={device!r}: the model is loaded on {self.target_devices}; build an ICLEmbedder(devices=...)"
            raise ValueError(msg)

    def stop_self_pool(self) -> None:
        """Nothing to stop: no process pool is ever started, and the model stays where it was loaded."""

    def stop_self_query_pool(self) -> None:
        """Nothing to stop (see :meth:`stop_self_pool`)."""

    def start_multi_process_pool(self, *args: Any, **kwargs: Any) -> Any:
        """Not supported: raises ``NotImplementedError`` naming ``devices=[...]``."""
        raise NotImplementedError(NO_POOL)

    @staticmethod
    def stop_multi_process_pool(pool: Any) -> None:
        """Not supported: raises ``NotImplementedError`` naming ``devices=[...]``."""
        raise NotImplementedError(NO_POOL)

    def encode_multi_process(self, *args: Any, **kwargs: Any) -> Any:
        """Not supported: raises ``NotImplementedError`` naming ``devices=[...]``."""
        raise NotImplementedError(NO_POOL)
