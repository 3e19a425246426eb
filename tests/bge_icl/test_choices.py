"""The choices module and the options import no torch, and check dtype, attention and prefix attention values
without torch (no resolver, no fake device)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch

from bge_icl.choices import (
    ATTENTION_IMPLEMENTATIONS,
    DTYPES,
    PREFIX_ATTENTION,
    check_attention,
    check_devices,
    check_dtype,
    check_prefix_attention,
)
from bge_icl.errors import OptionTypeError, OptionValueError
from bge_icl.loading import DTYPES as TORCH_DTYPES


def test_the_options_and_the_choices_import_no_torch_numpy_or_transformers() -> None:
    code = (
        "import sys\nimport bge_icl.choices, bge_icl.options\n"
        "from bge_icl.options import EmbedderOptions\n"
        "EmbedderOptions(dtype='bf16', attn_implementation='sdpa', prefix_attention='copy', devices=['cpu', 0])\n"
        "heavy = [m for m in ('torch', 'numpy', 'transformers', 'huggingface_hub') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr


def test_dtype_names_and_torch_dtypes_check_to_the_canonical_name() -> None:
    assert [check_dtype(name) for name in ("auto", "fp16", "half", "bf16", "float")] == [
        "auto", "float16", "float16", "bfloat16", "float32"]  # fmt: skip
    assert check_dtype(torch.bfloat16) == "bfloat16"
    assert {str(TORCH_DTYPES[name]).removeprefix("torch.") for name in DTYPES} == set(DTYPES)
    with pytest.raises(OptionValueError, match=re.escape("dtype='fp8' is not supported; valid: 'auto', 'float16'")):
        check_dtype("fp8")
    with pytest.raises(OptionValueError, match=re.escape(
            "dtype=torch.int8 is not supported; valid: 'auto', 'float16', 'bfloat16', 'float32'")) as info:
        check_dtype(torch.int8)
    assert (info.value.option, info.value.value) == ("dtype", torch.int8)


def test_attention_and_prefix_attention_are_checked_against_their_lists() -> None:
    assert [check_attention(a) for a in (None, *ATTENTION_IMPLEMENTATIONS)] == [None, *ATTENTION_IMPLEMENTATIONS]
    with pytest.raises(OptionValueError, match=re.escape(f"attn_implementation='flash' is not supported; valid: "
                                                         f"{ATTENTION_IMPLEMENTATIONS}")):  # fmt: skip
        check_attention("flash")
    assert [check_prefix_attention(p) for p in PREFIX_ATTENTION] == list(PREFIX_ATTENTION)
    with pytest.raises(OptionValueError, match=re.escape(f"prefix_attention='flash' is not supported; valid: "
                                                         f"{PREFIX_ATTENTION}")) as info:  # fmt: skip
        check_prefix_attention("flash")
    assert info.value.option == "prefix_attention"


def test_devices_accept_torch_devices_and_numpy_ints_and_refuse_bools() -> None:
    import numpy as np

    assert check_devices([torch.device("cuda", 1), np.int64(0), "cpu"]) == ("cuda:1", 0, "cpu")
    with pytest.raises(OptionTypeError, match=re.escape("devices=True is not a device")):
        check_devices(True)
    with pytest.raises(OptionTypeError, match=re.escape("devices entry np.True_ is bool;")):
        check_devices([np.bool_(True)])
