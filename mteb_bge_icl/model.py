"""``BgeIclMtebModel``: an MTEB 2.x encoder that embeds each task's queries with its instruction and examples."""

from __future__ import annotations

import codecs
import difflib
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mteb
import numpy as np
from mteb import get_model_meta
from mteb.abstasks.abstask import AbsTask
from mteb.abstasks.aggregated_task import AbsTaskAggregate
from mteb.models.abs_encoder import AbsEncoder
from mteb.types import PromptType

from bge_icl.encoder import ICLEmbedder
from bge_icl.errors import in_context
from bge_icl.prompts import validate_examples
from bge_icl.quickstart import DEFAULT_MODEL

if TYPE_CHECKING:
    from mteb.abstasks.task_metadata import TaskMetadata
    from mteb.models.model_meta import ModelMeta
    from torch.utils.data import DataLoader

REGISTERED = DEFAULT_MODEL  # the name bge-en-icl has in MTEB's model registry
TASK_KEYS = ("instruction", "examples")
TaskPrompts = Mapping[str, Mapping[str, Any]]


def load_task_prompts(source: TaskPrompts | str | os.PathLike[str] | None) -> dict[str, dict[str, Any]]:
    """``{task name: {"instruction"?: str, "examples"?: [{"instruct"?, "query", "response"}, ...]}}``, checked.

    Args:
        source: The mapping, a JSON file holding it, or None (no task has its own: zero-shot, MTEB's prompts).

    Raises:
        OSError: The file cannot be read.
        ValueError: Not UTF-8 (a BOM is fine), not valid JSON, an unknown key, or malformed examples (the task is
            named).
        TypeError: A value of the wrong type.
    """
    if source is None:
        return {}
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        try:
            source = json.loads(_utf8(path.read_bytes(), f"task prompts file {path}"))
        except json.JSONDecodeError as e:
            msg = f"task prompts file {path} is not valid JSON: {e}"
            raise ValueError(msg) from e
    if not isinstance(source, Mapping):
        msg = f"task prompts must map task names to {{'instruction', 'examples'}}, got {type(source).__name__}"
        raise TypeError(msg)
    checked: dict[str, dict[str, Any]] = {}
    for name, spec in source.items():
        if not isinstance(spec, Mapping):
            msg = f"task {name!r}: expected an object with keys {TASK_KEYS}, got {type(spec).__name__}"
            raise TypeError(msg)
        unknown = sorted(set(spec) - set(TASK_KEYS))
        if unknown:
            msg = f"task {name!r} has unknown key(s) {unknown}; valid keys are {TASK_KEYS}"
            raise ValueError(msg)
        instruction = spec.get("instruction")
        if instruction is not None and not isinstance(instruction, str):
            msg = f"task {name!r}: 'instruction' is {type(instruction).__name__}, expected str"
            raise TypeError(msg)
        try:  # an example without "instruct" takes the task's instruction, known only when the task runs
            validate_examples(spec.get("examples"), instruction or "the task's instruction")
        except (TypeError, ValueError) as e:
            raise in_context(e, f"task {name!r}") from e
        checked[str(name)] = {key: spec[key] for key in TASK_KEYS if spec.get(key) is not None}
    return checked


def _utf8(data: bytes, what: str) -> str:
    """``data`` as UTF-8 text (a BOM dropped), else a ValueError naming ``what``, the line and the column."""
    data = data.removeprefix(codecs.BOM_UTF8)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        start = data.rfind(b"\n", 0, e.start) + 1
        column = len(data[start : e.start].decode("utf-8", errors="replace")) + 1
        line = data.count(b"\n", 0, e.start) + 1
        msg = f"{what} is not UTF-8: byte 0x{data[e.start]:02x} on line {line}, column {column}; save it as UTF-8"
        raise ValueError(msg) from None


def run_task_names(tasks: Any) -> list[str]:
    """The names of the tasks ``mteb.evaluate`` runs for ``tasks``: one task, an iterable of them (a benchmark),
    and an aggregate task's parts beside it."""
    items = [tasks] if isinstance(tasks, AbsTask) else list(tasks)
    names: list[str] = []
    for task in items:
        names.append(task.metadata.name)
        if isinstance(task, AbsTaskAggregate):
            names.extend(part.metadata.name for part in task.metadata.tasks)
    return names


def _folded(name: str) -> str:
    return "".join(c for c in name.casefold() if c.isalnum())


class BgeIclMtebModel(AbsEncoder):
    """bge-en-icl for ``mteb.evaluate``: each task's queries get its instruction and its few-shot examples.

    For a task named in ``tasks``, queries are embedded with its ``"instruction"`` (else MTEB's prompt for the
    task) and its ``"examples"`` (else zero-shot); other tasks run zero-shot with MTEB's prompt, as bge-en-icl
    was evaluated. A prompt name must be a task name exactly: :func:`evaluate` (``mteb.evaluate`` after
    :meth:`check_task_names`) refuses names that are no task of the run, and a task that runs while the prompts
    name it in another spelling (``"Scifact"`` for ``SciFact``) raises instead of running zero-shot. Documents
    (``PromptType.document``) are embedded as they are, the same vectors for every task; texts of symmetric tasks
    (STS, classification, clustering: no prompt type) are embedded as queries.
    The per-task embedders share the loaded weights (:meth:`~bge_icl.ICLEmbedder.with_options`) and are cached
    by task name. MTEB's ``batch_size`` is ignored (the embedder batches by its token budget);
    ``show_progress_bar`` is honoured.

    Args:
        embedder: The embedder; its passage options (model, dtype, ``passage_max_length``, ...) are used as they are.
        tasks: Task prompts (see :func:`load_task_prompts`): a mapping, a JSON file, or None.

    Example:
        >>> model = BgeIclMtebModel(ICLEmbedder("BAAI/bge-en-icl"), tasks={
        ...     "SciFact": {"instruction": "Given a scientific claim, retrieve documents that support or refute it.",
        ...                 "examples": [{"query": "...", "response": "..."}]}})  # doctest: +SKIP
        >>> mteb.evaluate(model, mteb.get_tasks(tasks=["SciFact"]))  # doctest: +SKIP
    """

    def __init__(self, embedder: ICLEmbedder, tasks: TaskPrompts | str | os.PathLike[str] | None = None) -> None:
        self.model = embedder
        self.task_prompts = load_task_prompts(tasks)
        self.mteb_model_meta = _model_meta(embedder, self.task_prompts)
        self._embedders: dict[tuple[str, str | None], ICLEmbedder] = {}

    @classmethod
    def load(cls, model_name: str = REGISTERED, revision: str | None = None, *, device: str | None = None,
             tasks: TaskPrompts | str | os.PathLike[str] | None = None, **options: Any) -> BgeIclMtebModel:  # fmt: skip
        """Load the model (the shape of MTEB's loaders); ``**options`` are :class:`~bge_icl.EmbedderOptions`."""
        return cls(ICLEmbedder(model_name, revision=revision, devices=device, **options), tasks)

    def check_task_names(self, tasks: Any) -> None:
        """Refuse task prompts that name no task of a run (``tasks`` as ``mteb.evaluate`` takes them).

        Raises:
            ValueError: A name matches no task; the message lists the run's tasks and the near matches.
        """
        run = run_task_names(tasks)
        unmatched = [name for name in self.task_prompts if name not in run]
        if not unmatched:
            return
        named = []
        for name in unmatched:
            near = [t for t in run if _folded(t) == _folded(name)] or difflib.get_close_matches(name, run, n=2)
            hint = f" (did you mean {' or '.join(repr(t) for t in near)}?)" if near else ""
            named.append(f"{name!r}{hint}")
        which = "is" if len(unmatched) == 1 else "are"
        msg = (
            f"the task prompts name {', '.join(named)}, which {which} no task of this run; its tasks: "
            f"{', '.join(repr(t) for t in run)}"
        )
        raise ValueError(msg)

    def embedder_for(self, task_metadata: TaskMetadata, prompt_type: PromptType | None = None) -> ICLEmbedder:
        """The embedder for a task's queries: its instruction and examples (cached by task name).

        Raises:
            ValueError: The task has no prompts, but the prompts name it in another spelling (case, punctuation).
        """
        key = (task_metadata.name, prompt_type.value if prompt_type else None)
        if task_metadata.name not in self.task_prompts:
            twin = next((n for n in self.task_prompts if _folded(n) == _folded(task_metadata.name)), None)
            if twin is not None:
                msg = (
                    f"the task prompts name {twin!r}, but the task is {task_metadata.name!r}: name it exactly, or it "
                    "runs zero-shot"
                )
                raise ValueError(msg)
        if key not in self._embedders:
            spec = self.task_prompts.get(task_metadata.name, {})
            instruction = spec.get("instruction") or self.get_instruction(task_metadata, prompt_type) or None
            self._embedders[key] = self.model.with_options(
                query_instruction_for_retrieval=instruction, examples_for_task=spec.get("examples")
            )
        return self._embedders[key]

    def encode(self, inputs: DataLoader[Any], *, task_metadata: TaskMetadata, hf_split: str, hf_subset: str,
               prompt_type: PromptType | None = None, **kwargs: Any) -> np.ndarray:  # fmt: skip
        """Embed the ``"text"`` of every batch of ``inputs``: (N, dimension) float32."""
        texts = [text for batch in inputs for text in batch["text"]]
        show = kwargs.get("show_progress_bar")
        call: dict[str, Any] = {} if show is None else {"show_progress": bool(show)}
        if prompt_type == PromptType.document:
            return np.asarray(self.model.encode_corpus(texts, convert_to_numpy=True, **call))
        queries = self.embedder_for(task_metadata, prompt_type)
        return np.asarray(queries.encode_queries(texts, convert_to_numpy=True, **call))


def evaluate(model: BgeIclMtebModel, tasks: Any, **kwargs: Any) -> Any:
    """``mteb.evaluate(model, tasks, **kwargs)``, after :meth:`BgeIclMtebModel.check_task_names`: a task prompt
    that names no task of the run is an error before anything runs, not a task run zero-shot.

    Raises:
        ValueError: A task prompt names no task of ``tasks`` (the message lists them and the near matches).
    """
    model.check_task_names(tasks)
    encoder: Any = model  # an AbsEncoder; mypy does not match its keyword-only encode() to MTEB's protocol
    return mteb.evaluate(encoder, tasks, **kwargs)


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:12]


def _model_meta(embedder: ICLEmbedder, task_prompts: dict[str, dict[str, Any]]) -> ModelMeta:
    """MTEB's entry for bge-en-icl, marked as using instructions, its experiment named after the task prompts and
    everything that changes a vector (the embedder's passage and query fingerprints: model, revision, dtype,
    dimension, normalization, both max lengths, the prompt), so that a result cache never hands back the results of
    other settings, nor of the plain sentence-transformers run."""
    registered = get_model_meta(REGISTERED)
    source = embedder.options.model_name
    same = source == REGISTERED
    vectors = _digest({kind: embedder.fingerprint(kind) for kind in ("passages", "queries")})
    return registered.model_copy(
        update={
            "loader": None,
            "name": REGISTERED if same else f"local/{Path(source).name}",
            "revision": embedder.options.revision or (registered.revision if same else None),
            "embed_dim": embedder.dimension,
            "use_instructions": True,
            "experiment_kwargs": {
                "bge_icl_task_prompts": _digest(task_prompts) if task_prompts else "none",
                "bge_icl_vectors": vectors,
            },
        }
    )
