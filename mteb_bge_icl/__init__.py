"""MTEB 2.x: run bge-en-icl the way it was meant to run, each task with its instruction and few-shot examples.

MTEB registers ``BAAI/bge-en-icl`` with its plain sentence-transformers loader and ``use_instructions=False``, so an
MTEB run gives the model neither an instruction nor examples. :class:`BgeIclMtebModel` wraps an
:class:`~bge_icl.ICLEmbedder` and gives each task the instruction and examples you name for it; :func:`evaluate` is
``mteb.evaluate`` after checking that every task named is a task of the run.

Needs the ``mteb`` extra: ``pip install 'bge-icl[mteb]'``.

Example:
    >>> import mteb  # doctest: +SKIP
    >>> model = BgeIclMtebModel(ICLEmbedder("BAAI/bge-en-icl"), tasks="task-examples.json")  # doctest: +SKIP
    >>> result = evaluate(model, mteb.get_tasks(tasks=["SciFact"]))  # doctest: +SKIP
"""

from __future__ import annotations

from bge_icl.optional import missing_extra

try:
    import mteb  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised only without mteb
    raise missing_extra("mteb", "mteb", "mteb_bge_icl (MTEB 2.x)", e) from e

from mteb_bge_icl.model import TASK_KEYS, BgeIclMtebModel, evaluate, load_task_prompts, run_task_names

__all__ = ["TASK_KEYS", "BgeIclMtebModel", "evaluate", "load_task_prompts", "run_task_names"]
