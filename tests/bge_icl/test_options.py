"""Options, inputs and loading errors: each names the bad value and the valid ones."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bge_icl import EmbedderOptions, FlagICLModel, ICLEmbedder
from bge_icl.inputs import as_text_list
from bge_icl.loading import auto_dtype, cpu_has_bf16_units, looks_like_a_path, resolve_devices, resolve_dtype


@pytest.mark.parametrize(
    ("devices", "expected"),
    [("cpu", ["cpu"]), (torch.device("cpu"), ["cpu"]), (["cpu"], ["cpu"]), (["cpu", "cpu"], ["cpu", "cpu"])],
)
def test_resolve_devices(devices: object, expected: list[str]) -> None:
    assert resolve_devices(devices) == expected  # type: ignore[arg-type]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU fallback")
def test_auto_devices_without_gpus_is_the_cpu() -> None:
    assert resolve_devices("auto") == ["cpu"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
@pytest.mark.parametrize("devices", [0, [0], "cuda", "cuda:1"])
def test_cuda_without_cuda_is_an_error(devices: object) -> None:
    with pytest.raises(ValueError, match="CUDA is not available here; use devices='cpu'"):
        resolve_devices(devices)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("devices", "error", "message"),
    [
        ([], ValueError, "devices=[] names no device"),
        (1.5, TypeError, "devices entry 1.5 is float"),
        (True, TypeError, "devices=True is not a device"),
        ("gpu", ValueError, "devices entry 'gpu' is not a torch device"),
    ],
)
def test_bad_devices(devices: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        resolve_devices(devices)  # type: ignore[arg-type]


def test_dtypes() -> None:
    assert resolve_dtype("auto", "cpu", cpu_bf16=False) == torch.float32
    assert resolve_dtype("auto", "cpu", cpu_bf16=True) == torch.bfloat16
    assert resolve_dtype("auto", "cpu") == auto_dtype("cpu")
    assert resolve_dtype("auto", "cuda:0") == torch.float16
    assert resolve_dtype("bf16", "cpu") == torch.bfloat16
    with pytest.raises(ValueError, match=re.escape("dtype='int8' is not supported; valid: 'auto', 'float16'")):
        resolve_dtype("int8", "cpu")
    with pytest.raises(ValueError, match=re.escape("dtype=torch.int64 is not supported")):
        resolve_dtype(torch.int64, "cpu")


@pytest.mark.parametrize(("cpu_bf16", "expected"), [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_dtype_on_the_cpu_is_bf16_only_with_bf16_units(cpu_bf16: bool, expected: torch.dtype) -> None:
    assert auto_dtype("cpu", cpu_bf16=cpu_bf16) == expected
    assert auto_dtype("cuda:0", cpu_bf16=cpu_bf16) == torch.float16  # the CPU's units say nothing about a GPU


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="reads the CPU's flags from Linux's /proc/cpuinfo")
def test_bf16_units_are_what_the_cpu_flags_say() -> None:
    flags = set(re.findall(r"^flags\s*:(.*)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)[0].split())
    assert cpu_has_bf16_units() == bool(flags & {"amx_bf16", "avx512_bf16"})


def test_auto_dtype_is_reported_and_flag_model_keeps_float32_on_the_cpu(tiny_dir: Path) -> None:
    emb = ICLEmbedder(str(tiny_dir), devices="cpu")
    assert emb.options.dtype == "auto"
    assert emb.torch_dtype == (torch.bfloat16 if cpu_has_bf16_units() else torch.float32)
    assert f"dtype={emb.torch_dtype}" in repr(emb)
    flag = FlagICLModel(str(tiny_dir), devices="cpu")  # FlagEmbedding's vectors: float32 on the CPU
    assert flag.torch_dtype == torch.float32 and flag.options.dtype == "float32"
    same = ICLEmbedder.from_options(flag.options)  # what an adapter wrapping it takes: the same weights
    assert same.replicas[0].model is flag.replicas[0].model


def test_flagembedding_use_fp16_false_means_float32(tiny_dir: Path) -> None:
    assert ICLEmbedder(str(tiny_dir), devices="cpu", use_fp16=False).torch_dtype == torch.float32
    assert ICLEmbedder(str(tiny_dir), devices="cpu", use_fp16=True).torch_dtype == torch.float32  # FlagEmbedding's CPU
    assert ICLEmbedder(str(tiny_dir), devices="cpu", dtype="bfloat16").torch_dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size must be a positive int, got 0"),
        ({"query_max_length": -1}, "query_max_length must be a positive int, got -1"),
        ({"max_batch_tokens": 2.5}, "max_batch_tokens must be a positive int, got 2.5"),
        ({"on_truncation": "skip"}, "on_truncation='skip' is not supported; valid: ('warn', 'error', 'ignore')"),
        ({"query_max_length": 4}, "query_max_length=4 leaves no room for the query"),
        ({"passage_max_length": 2}, "passage_max_length=2 leaves no room for text next to 2 special tokens"),
        ({"query_instruction_format": "{}"}, "must have exactly 2 positional '{}' slots"),
    ],
)
def test_bad_options(tiny_dir: Path, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        ICLEmbedder(str(tiny_dir), devices=kwargs.pop("devices", "cpu"), **kwargs)  # type: ignore[arg-type]


def test_mistyped_local_path_says_the_directory_does_not_exist(tmp_path: Path) -> None:
    (tmp_path / "bge-en-icl").mkdir()
    for missing in (str(tmp_path / "bge-en-lcl"), str(tmp_path / "models" / "bge")):
        expected = f"cannot load model {missing!r}: the directory {missing} does not exist; the nearest existing "
        with pytest.raises(OSError, match=re.escape(expected + f"folder is {tmp_path} (it holds: bge-en-icl)")):
            ICLEmbedder(missing, devices="cpu")


@pytest.mark.parametrize(("name", "is_path"), [("./ckpt", True), ("~/ckpt", True), ("/abs/ckpt", True),
                                               ("a/b/c", True), ("BAAI/bge-en-icl", False), ("gpt2", False)])
def test_what_counts_as_a_path(name: str, is_path: bool) -> None:
    assert looks_like_a_path(name) is is_path


def test_missing_hub_model_names_the_hf_command(tmp_path: Path) -> None:
    code = "from bge_icl import ICLEmbedder\nICLEmbedder('nope-org/nope-model', devices='cpu')"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert proc.returncode != 0
    assert "OSError: cannot load model 'nope-org/nope-model'" in proc.stderr
    assert "`hf download BAAI/bge-en-icl`" in proc.stderr and "huggingface-cli" not in proc.stderr


def test_directory_without_a_model_explains_the_fix(tmp_path: Path) -> None:
    with pytest.raises(OSError, match=re.escape("FileNotFoundError: no config.json in")):
        ICLEmbedder(str(tmp_path), devices="cpu")


def test_tokenizer_without_eos_is_rejected(tiny_dir: Path, tmp_path: Path) -> None:
    import json
    import shutil

    broken = tmp_path / "no-eos-token"
    shutil.copytree(tiny_dir, broken)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        data = json.loads((broken / name).read_text())
        data["eos_token"] = None
        data["add_eos_token"] = False
        (broken / name).write_text(json.dumps(data))
    tj = json.loads((broken / "tokenizer.json").read_text())
    tj["post_processor"] = None
    (broken / "tokenizer.json").write_text(json.dumps(tj))
    with pytest.raises(ValueError, match="has no EOS token; bge-en-icl pools"):
        ICLEmbedder(str(broken), devices="cpu")


def test_trust_remote_code_is_off_by_default() -> None:
    assert EmbedderOptions.model_fields["trust_remote_code"].default is False
    assert EmbedderOptions().trust_remote_code is False


@pytest.mark.parametrize(
    ("texts", "error", "message"),
    [
        (["ok", None], TypeError, "item 1 is NoneType, expected str"),
        (["ok", "ok", 3], TypeError, "item 2 is int, expected str"),
        ([b"bytes"], TypeError, "item 0 is bytes, expected str"),
        ([["nested"]], TypeError, "item 0 is list, expected str"),
        (b"bytes", TypeError, "texts must be a str or a list of str, got bytes"),
        ({"a": 1}, TypeError, "texts must be a str or a list of str, got dict"),
        (42, TypeError, "texts must be a str or a list of str, got int"),
        (["fine", "bad \ud800 surrogate"], ValueError, "item 1 is not valid Unicode"),
    ],
)
def test_bad_inputs(texts: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        as_text_list(texts)  # type: ignore[arg-type]


def test_accepted_inputs(tiny_dir: Path) -> None:
    emb = ICLEmbedder(str(tiny_dir), devices="cpu")
    base = emb.encode_corpus(["a", "b"])
    for texts in (("a", "b"), (t for t in ["a", "b"])):
        np.testing.assert_allclose(emb.encode_corpus(texts), base, atol=1e-6)
    odd = emb.encode_corpus(["", "   ", "nul\x00byte", "ctrl\x07\x1b", "😀", "שלום"])
    assert np.isfinite(odd).all()
    np.testing.assert_allclose(np.linalg.norm(odd, axis=1), 1.0, atol=1e-5)
