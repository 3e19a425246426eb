"""``from bge_icl import FlagICLModel`` runs FlagEmbedding 1.4.2 code unchanged.

The core-only tests run everywhere; the ones that compare against FlagEmbedding itself (its signatures,
walked with ``inspect``, and its vectors) run where it imports (transformers 4.x, ``.venv-ref``).
"""

from __future__ import annotations

import importlib.util
import inspect
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bge_icl import FlagICLModel, ICLEmbedder
from bge_icl.options import MODEL_ALIASES, EmbedderOptions
from tests.bge_icl.cases import PASSAGES, QUERIES, WEB
from tests.conftest import NOTEBOOK_EXAMPLES

HAS_FLAG = importlib.util.find_spec("FlagEmbedding") is not None
needs_flag = pytest.mark.skipif(not HAS_FLAG, reason="FlagEmbedding needs transformers 4.x (.venv-ref)")
NO_POOL_METHODS = ("start_multi_process_pool", "stop_multi_process_pool", "encode_multi_process")


def _reference() -> Any:
    import FlagEmbedding

    return FlagEmbedding.FlagICLModel


def _pair(tiny_dir: Path, **kwargs: Any) -> tuple[Any, FlagICLModel]:
    common = {"examples_for_task": NOTEBOOK_EXAMPLES, "query_instruction_for_retrieval": WEB, "devices": "cpu"}
    flag = _reference()(str(tiny_dir), use_fp16=False, **common, **kwargs)
    return flag, FlagICLModel(str(tiny_dir), use_fp16=False, **common, **kwargs)


def _as_numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().float().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


# -- the reference's surface, walked with inspect ------------------------------------------------------


@needs_flag
def test_every_constructor_argument_is_an_option() -> None:
    params = inspect.signature(_reference().__init__).parameters
    names = {n for n, p in params.items() if n != "self" and p.kind is not inspect.Parameter.VAR_KEYWORD}
    missing = sorted(names - set(EmbedderOptions.OPTION_NAMES) - set(MODEL_ALIASES))
    assert not missing, f"FlagICLModel arguments bge-icl does not take: {missing}"


@needs_flag
def test_every_public_method_exists_with_the_reference_arguments() -> None:
    ref = _reference()
    public = [n for n, v in inspect.getmembers(ref) if not n.startswith("_") and callable(v)]
    assert {"encode_queries", "encode_corpus", "encode", "set_examples", "stop_self_pool"} <= set(public)
    for name in public:
        ours = getattr(FlagICLModel, name, None)
        assert callable(ours), f"FlagICLModel has no {name}()"
        if name in NO_POOL_METHODS:
            continue
        theirs = [
            (n, p.kind) for n, p in inspect.signature(getattr(ref, name)).parameters.items() if p.kind <= p.KEYWORD_ONLY
        ]
        mine = dict(inspect.signature(ours).parameters)
        for position, (arg, kind) in enumerate(theirs):
            assert arg in mine, f"{name}() lacks FlagEmbedding's argument {arg!r}"
            if kind is inspect.Parameter.POSITIONAL_OR_KEYWORD:
                assert list(mine).index(arg) == position, f"{name}(): {arg!r} is not at position {position}"


@needs_flag
def test_every_public_attribute_exists(tiny_dir: Path) -> None:
    flag, ours = _pair(tiny_dir)
    missing = sorted(n for n in vars(flag) if not n.startswith("_") and not hasattr(ours, n))
    assert not missing, f"FlagEmbedding's FlagICLModel attributes bge_icl.FlagICLModel lacks: {missing}"
    assert ours.prefix == flag.prefix and ours.suffix == flag.suffix
    assert ours.target_devices == flag.target_devices == ["cpu"]


# -- the same calls give the same vectors ---------------------------------------------------------------


@needs_flag
def test_call_arguments_mean_what_they_mean_in_flagembedding(tiny_dir: Path) -> None:
    flag, ours = _pair(tiny_dir, passage_max_length=48)
    for method in ("encode_queries", "encode_corpus", "encode"):
        texts = QUERIES if method == "encode_queries" else PASSAGES
        for kwargs in ({"batch_size": 4}, {"max_length": 24}, {"convert_to_numpy": False}):
            theirs, mine = getattr(flag, method)(texts, **kwargs), getattr(ours, method)(texts, **kwargs)
            assert isinstance(mine, torch.Tensor) is isinstance(theirs, torch.Tensor), (method, kwargs)
            assert np.abs(_as_numpy(mine) - _as_numpy(theirs)).max() <= 1e-5, (method, kwargs)
    one_flag, one_ours = flag.encode_queries(QUERIES[0], 8), ours.encode_queries(QUERIES[0], 8)  # positional
    assert one_ours.shape == one_flag.shape == (64,)
    np.testing.assert_allclose(one_ours, one_flag, atol=1e-5)
    theirs = flag.encode(PASSAGES, instruction="Represent this passage", instruction_format="{}: {}")
    mine = ours.encode(PASSAGES, instruction="Represent this passage", instruction_format="{}: {}")
    assert np.abs(mine - theirs).max() <= 1e-5


@needs_flag
def test_truncate_dim_as_flagembedding(tiny_dir: Path) -> None:
    flag, ours = _pair(tiny_dir, truncate_dim=24)
    for method, texts in (("encode_queries", QUERIES), ("encode_corpus", PASSAGES)):
        theirs, mine = getattr(flag, method)(texts), getattr(ours, method)(texts)
        assert mine.shape == theirs.shape == (len(texts), 24)
        assert np.abs(mine - theirs).max() <= 1e-5
    assert ours.dimension == 24


@needs_flag
def test_set_examples_as_flagembedding(tiny_dir: Path) -> None:
    flag, ours = _pair(tiny_dir)
    other = [{"instruct": "Retrieve a definition.", "query": "apex", "response": "The top of something."}]
    for examples in (other, None):  # None: back to the constructor's examples, as in FlagEmbedding
        flag.set_examples(examples)
        ours.set_examples(examples)
        assert ours.prefix == flag.prefix
        assert np.abs(ours.encode_queries(QUERIES) - flag.encode_queries(QUERIES)).max() <= 1e-5


# -- bge-icl's side of the drop-in (runs everywhere) --------------------------------------------------


def test_set_examples_changes_prefix_cache_and_reported_options(tiny_dir: Path) -> None:
    emb = FlagICLModel(str(tiny_dir), examples_for_task=NOTEBOOK_EXAMPLES, query_instruction_for_retrieval=WEB,
                       devices="cpu")  # fmt: skip
    before = emb.encode_queries(QUERIES)
    length = emb.prefix_length
    emb.set_examples(NOTEBOOK_EXAMPLES[:1])
    assert emb.options.examples_for_task == tuple(NOTEBOOK_EXAMPLES[:1])  # what the vectors are made with
    assert emb.prefix.count("<response>") == 1
    expected = emb.with_examples(NOTEBOOK_EXAMPLES[:1]).with_options(prefix_cache=False).encode_queries(QUERIES)
    assert np.abs(emb.encode_queries(QUERIES) - expected).max() <= 1e-5
    assert emb.prefix_length is not None and length is not None and emb.prefix_length < length
    emb.set_examples()
    np.testing.assert_allclose(emb.encode_queries(QUERIES), before, atol=1e-6)


def test_set_examples_never_changes_an_adapter_built_on_the_model(tiny_dir: Path) -> None:
    pytest.importorskip("langchain_core")
    from langchain_bge_icl import BgeIclEmbeddings

    core = FlagICLModel(str(tiny_dir), devices="cpu", query_instruction_for_retrieval=WEB)
    adapter = BgeIclEmbeddings.from_embedder(core)
    before = adapter.embed_query(QUERIES[0])
    core.set_examples(NOTEBOOK_EXAMPLES)  # FlagEmbedding's in-place change: the adapter keeps a fixed embedder
    assert adapter.examples_for_task is None and adapter.embedder.examples == ()
    assert adapter.embed_query(QUERIES[0]) == before
    assert type(adapter.embedder) is ICLEmbedder and adapter.embedder.replicas[0] is core.replicas[0]
    assert core.options.examples_for_task == tuple(NOTEBOOK_EXAMPLES)


def test_iclembedder_itself_never_changes_in_place(emb: ICLEmbedder) -> None:
    assert not hasattr(emb, "set_examples")
    with pytest.raises(AttributeError, match=re.escape("ICLEmbedder reads its options from .options: use "
                                                       ".options.query_max_length")):  # fmt: skip
        _ = emb.query_max_length  # FlagICLModel keeps FlagEmbedding's attribute names; ICLEmbedder does not


def test_convert_to_numpy_false_returns_a_torch_tensor(tiny_dir: Path) -> None:
    emb = FlagICLModel(str(tiny_dir), devices="cpu", convert_to_numpy=False)
    out = emb.encode_corpus(PASSAGES)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == (len(PASSAGES), 64)
    assert isinstance(emb.encode_corpus(PASSAGES, convert_to_numpy=True), np.ndarray)
    assert isinstance(emb.encode_corpus("one"), torch.Tensor)


def test_truncate_dim_is_checked_and_normalized(tiny_dir: Path) -> None:
    emb = FlagICLModel(str(tiny_dir), devices="cpu", truncate_dim=16)
    out = emb.encode_corpus(PASSAGES)
    assert out.shape == (len(PASSAGES), 16) and emb.dimension == 16
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match=re.escape("truncate_dim=65 exceeds the model's dimension 64")):
        FlagICLModel(str(tiny_dir), devices="cpu", truncate_dim=65)
    with pytest.raises(ValueError, match=re.escape("truncate_dim must be a positive int, got 0")):
        FlagICLModel(str(tiny_dir), devices="cpu", truncate_dim=0)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"batch_size": 0}, ValueError, "batch_size must be a positive int, got 0"),
        ({"max_length": 2}, ValueError, "max_length=2 leaves no room"),
        ({"convert_to_numpy": "no"}, TypeError, "convert_to_numpy must be a bool, got 'no'"),
        ({"normalize": True}, TypeError, "unknown argument(s) ['normalize']; valid: ['batch_size', 'max_length'"),
    ],
)
def test_bad_call_arguments_are_named(emb: ICLEmbedder, kwargs: dict[str, Any], error: type, message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        emb.encode_corpus(PASSAGES, **kwargs)


def test_process_pool_methods_name_the_alternative(tiny_dir: Path) -> None:
    emb = FlagICLModel(str(tiny_dir), devices="cpu")
    for call in (emb.start_multi_process_pool, emb.encode_multi_process, lambda: emb.stop_multi_process_pool({})):
        with pytest.raises(NotImplementedError, match=re.escape("Pass devices=['cuda:0', 'cuda:1', ...]")):
            call()
    emb.stop_self_pool()  # nothing to stop; the embedder keeps working
    emb.stop_self_query_pool()
    assert emb.encode_corpus(["still here"]).shape == (1, 64)
    assert emb.get_model_torch_dtype() == torch.float32
    assert emb.get_target_devices("cpu") == ["cpu"]
    assert emb.get_detailed_instruct("{}: {}", "task", "text") == "task: text"
