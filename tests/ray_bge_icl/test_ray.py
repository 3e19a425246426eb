"""Ray Data on a local 2-CPU Ray instance: same vectors as local encoding, in order, other columns kept."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

from bge_icl import ICLEmbedder  # noqa: E402
from ray_bge_icl import embed_dataset  # noqa: E402
from tests.bge_icl.cases import WEB  # noqa: E402
from tests.conftest import NOTEBOOK_EXAMPLES  # noqa: E402


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _texts(n: int) -> list[str]:
    return [
        f"passage {i} about " + " ".join(["rivers", "mountains", "proteins", "summits"][: 1 + i % 4]) for i in range(n)
    ]


@pytest.mark.parametrize("kind", ["corpus", "query"])
def test_embed_dataset_matches_local_encoding(local_ray: None, tiny_dir: Path, kind: str) -> None:
    texts = _texts(300)
    options = {
        "model_name_or_path": str(tiny_dir),
        "devices": "cpu",
        "dtype": "float32",  # Ray's batches are cut unlike the local call's: compared within float32's 1e-5
        "examples_for_task": NOTEBOOK_EXAMPLES,
        "query_instruction_for_retrieval": WEB,
    }
    ds = ray.data.from_items([{"id": i, "text": t, "source": f"doc-{i % 7}"} for i, t in enumerate(texts)])
    rows = embed_dataset(ds, kind=kind, concurrency=2, num_gpus=0, rows_per_batch=64, **options).take_all()
    local = ICLEmbedder(**options)  # type: ignore[arg-type]
    expected = local.encode_queries(texts) if kind == "query" else local.encode_corpus(texts)
    assert [r["id"] for r in rows] == list(range(300))
    assert all(r["source"] == f"doc-{r['id'] % 7}" and r["text"] == texts[r["id"]] for r in rows)
    got = np.stack([r["embedding"] for r in rows])
    assert got.shape == (300, local.dimension)
    assert np.abs(got - expected).max() <= 1e-5


def test_bad_arguments_fail_on_the_driver(local_ray: None, tiny_dir: Path) -> None:
    ds = ray.data.from_items([{"body": "x"}])
    with pytest.raises(ValueError, match=re.escape("column='text' is not in the dataset; its columns are ['body']")):
        embed_dataset(ds, model_name_or_path=str(tiny_dir), num_gpus=0)
    valid = "valid: ('queries', 'query', 'passages', 'passage', 'corpus', 'document', 'documents')"
    with pytest.raises(ValueError, match=re.escape(f"kind='docs' is not supported; {valid}")):  # bge_icl.kinds
        embed_dataset(ds, column="body", kind="docs", num_gpus=0)
    with pytest.raises(TypeError, match=re.escape("unknown option 'device' (did you mean devices?); valid options:")):
        embed_dataset(ds, column="body", device="cpu", num_gpus=0)
