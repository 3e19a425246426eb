"""Loading on the CPU: weights that safetensors maps from the checkpoint file are copied into torch's own memory."""

from __future__ import annotations

from pathlib import Path

import torch

from bge_icl import ICLEmbedder
from bge_icl.loading import own_weights


def test_own_weights_copies_a_foreign_buffer_and_keeps_its_values() -> None:
    layer = torch.nn.Linear(4, 3)
    values = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    foreign = bytearray(values.numpy().tobytes())  # memory torch did not allocate, as a file mapping is
    layer.weight.data = torch.frombuffer(foreign, dtype=torch.float32).view(3, 4)
    assert not layer.weight.untyped_storage().resizable()
    assert own_weights(layer) == 1  # the weight; the bias was torch's already
    assert layer.weight.untyped_storage().resizable()
    assert torch.equal(layer.weight, values)
    foreign[:4] = b"\xff\xff\xff\xff"  # the copy no longer sees the buffer
    assert torch.equal(layer.weight, values)
    assert own_weights(layer) == 0


def test_a_checkpoint_loaded_in_its_own_dtype_runs_from_torch_memory(tiny_dir: Path) -> None:
    """tiny_dir is saved in float32: loaded in float32, safetensors maps the file (before the copy, every weight was
    a view of its pages, read by every pass)."""
    emb = ICLEmbedder(str(tiny_dir), devices="cpu", dtype="float32")
    params = list(emb.replicas[0].model.parameters())
    assert params and all(p.untyped_storage().resizable() for p in params)
    again = ICLEmbedder(str(tiny_dir), devices="cpu", dtype="float32", normalize_embeddings=False)
    assert again.replicas[0].model is emb.replicas[0].model  # the same weights: copied once, at the first load
