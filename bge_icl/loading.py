"""Model loading: device, dtype and attention implementation are decided here, once.

Loaded models live in a process-wide registry, so two embedders (or a LangChain and a LlamaIndex
adapter) with the same model, device, dtype and attention settings share one set of weights.
"""

from __future__ import annotations

import importlib.util
import os
import re
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from huggingface_hub.errors import HFValidationError

from bge_icl.choices import DTYPE_SPELLINGS, check_attention, check_devices, check_dtype
from bge_icl.decoder import DecoderModel
from bge_icl.errors import OptionValueError
from bge_icl.tokenization import PromptTokenizer
from bge_icl.transformers_compat import dtype_kwarg

DTYPES: dict[str, torch.dtype] = {name: getattr(torch, canonical) for name, canonical in DTYPE_SPELLINGS.items()}
"""Every accepted dtype name (:data:`bge_icl.choices.DTYPE_SPELLINGS`) -> its torch dtype."""
DeviceSpec = str | int | torch.device | list[str] | list[int] | tuple[str | int, ...] | None


def resolve_devices(devices: DeviceSpec) -> list[str]:
    """Turn FlagEmbedding-style ``devices`` into a list of torch device strings.

    ``None`` means the first CUDA GPU, else the CPU; ``"auto"`` means every visible CUDA GPU, else the
    CPU. An int ``i`` (or a list of ints) means ``cuda:i``. Strings are used as given; a device listed
    twice gets two replicas.

    Raises:
        OptionTypeError: ``devices`` has another type (:func:`check_devices`).
        OptionValueError: The list is empty, a name is not a device, or a CUDA device is asked for and CUDA is not
            available.

    Example:
        >>> resolve_devices("cpu")
        ['cpu']
    """
    checked = check_devices(devices)
    if checked is None:
        return ["cuda:0" if torch.cuda.is_available() else "cpu"]
    if checked == "auto":
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())] or ["cpu"]
    out = []
    for d in checked if isinstance(checked, tuple) else (checked,):
        name = f"cuda:{d}" if isinstance(d, int) else d
        try:
            dev = torch.device(name)
        except RuntimeError as e:
            msg = f"devices entry {d!r} is not a torch device; valid examples: 'cpu', 'cuda', 'cuda:1', 0"
            raise OptionValueError(msg, option="devices", value=devices) from e
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                msg = f"device {name!r} was asked for, but CUDA is not available here; use devices='cpu'"
                raise OptionValueError(msg, option="devices", value=devices)
            index = dev.index if dev.index is not None else 0
            if index >= torch.cuda.device_count():
                msg = f"device {name!r} does not exist: {torch.cuda.device_count()} CUDA device(s) are visible"
                raise OptionValueError(msg, option="devices", value=devices)
            name = f"cuda:{index}"
        out.append(name)
    return out


BF16_UNIT_CHECKS = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
"""torch's answers to "does this CPU have AMX tiles / AVX512-BF16" (``torch.cpu``), either one enough for bf16."""


def cpu_has_bf16_units() -> bool:
    """Whether this CPU computes bf16 matmuls natively (AMX-BF16 or AVX512-BF16), as torch reports it.

    Sapphire Rapids and later Xeons (AMX), Cooper Lake Xeons and Zen 4/5 (AVX512-BF16) do; there torch's bf16
    ``linear`` runs several times faster than float32. A torch without the checks answers False.
    """
    return any(getattr(torch.cpu, check, lambda: False)() for check in BF16_UNIT_CHECKS)


def auto_dtype(device: str, cpu_bf16: bool | None = None) -> torch.dtype:
    """What ``dtype="auto"`` means on ``device``: float16 on a GPU; on the CPU bfloat16 where it has bf16 units,
    else float32. The one place that decides it.

    Args:
        device: A torch device string.
        cpu_bf16: Whether the CPU has bf16 units; None asks :func:`cpu_has_bf16_units`, False keeps float32
            (FlagEmbedding's meaning, which :class:`~bge_icl.FlagICLModel` keeps).

    Example:
        >>> auto_dtype("cpu", cpu_bf16=True), auto_dtype("cpu", cpu_bf16=False)
        (torch.bfloat16, torch.float32)
    """
    if torch.device(device).type != "cpu":
        return torch.float16
    has_units = cpu_has_bf16_units() if cpu_bf16 is None else cpu_bf16
    return torch.bfloat16 if has_units else torch.float32


def resolve_dtype(dtype: str | torch.dtype, device: str, cpu_bf16: bool | None = None) -> torch.dtype:
    """``"auto"`` is :func:`auto_dtype` (``cpu_bf16`` passed on); otherwise the named dtype.

    Raises:
        OptionValueError: An unknown dtype name or a non-floating torch dtype (:func:`~bge_icl.choices.check_dtype`).
    """
    name = check_dtype(dtype)
    if name == "auto":
        return auto_dtype(device, cpu_bf16)
    return DTYPES[name]


def resolve_attention(attn_implementation: str | None, device: str) -> str:
    """``None`` picks ``flash_attention_2`` on a GPU when flash-attn is installed, else ``sdpa``."""
    if attn_implementation is None:
        on_gpu = torch.device(device).type == "cuda"
        return "flash_attention_2" if on_gpu and importlib.util.find_spec("flash_attn") else "sdpa"
    return str(check_attention(attn_implementation))


@dataclass(eq=False)
class LoadedModel:
    """One loaded model, its tokenizer, and the lock that serializes forward passes on it.

    Attributes:
        model: The ``transformers`` base model (``MistralModel`` for bge-en-icl), in eval mode.
        tokenizer: Its tokenizer, wrapped with bge-en-icl's query and passage rules.
        device: Where the model lives.
        dtype: The model's parameter dtype.
        attn_implementation: The attention kernel family in use.
        key: The registry key.
        lock: Held while a pass runs on this model (its scheduler's worker takes it) and while its prefix KV is
            built, so a warm-up or ``FlagICLModel.set_examples`` waits for the running pass, never runs inside it.
    """

    model: DecoderModel
    tokenizer: PromptTokenizer
    device: torch.device
    dtype: torch.dtype
    attn_implementation: str
    key: RegistryKey
    lock: threading.RLock = field(default_factory=threading.RLock)

    @property
    def hidden_size(self) -> int:
        """Embedding dimension."""
        return int(self.model.config.hidden_size)

    @property
    def source(self) -> str:
        """What was loaded: the resolved local directory (symlinks and ``~`` resolved) or the hub id."""
        return self.key.source


_REGISTRY: weakref.WeakValueDictionary[RegistryKey, LoadedModel] = weakref.WeakValueDictionary()
_REGISTRY_LOCK = threading.Lock()


DOWNLOAD_HINT = (
    "download the model once with network access (`hf download BAAI/bge-en-icl`, from huggingface_hub) into the "
    "cache that HF_HOME points at, and set HF_HUB_OFFLINE=1 to use only that cache"
)
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def looks_like_a_path(name: str) -> bool:
    """Whether ``name`` can only be meant as a local path, not a hub id (``org/model``).

    Example:
        >>> looks_like_a_path("./models/bge"), looks_like_a_path("BAAI/bge-en-icl")
        (True, False)
    """
    if not _HUB_ID.fullmatch(name) or name.startswith((".", "~")):
        return True
    return "/" in name and os.path.isdir(name.split("/")[0])  # "models/bge" where ./models exists


def _missing_directory(name: str) -> OSError:
    path = Path(os.path.expanduser(name)).absolute()
    nearest = next((p for p in path.parents if p.is_dir()), None)
    near = f"; the nearest existing folder is {nearest}" if nearest is not None else ""
    listing = sorted(c.name for c in nearest.iterdir() if c.is_dir())[:8] if nearest is not None else []
    holds = f" (it holds: {', '.join(listing)})" if listing else ""
    msg = f"cannot load model {name!r}: the directory {path} does not exist{near}{holds}"
    return OSError(msg)


def _not_found(model_name_or_path: str, error: Exception) -> OSError:
    first_line = str(error).splitlines()[0] if str(error) else ""
    msg = (
        f"cannot load model {model_name_or_path!r}: it is not a local directory with a model, and it could not "
        f"be loaded from the Hugging Face cache or Hub ({type(error).__name__}: {first_line}). "
        "Fixes: pass a local directory that holds config.json, the weights and the tokenizer; or "
        f"{DOWNLOAD_HINT}."
    )
    return OSError(msg)


def load_replicas(
    model_name: str,
    *,
    devices: DeviceSpec,
    dtype: str | torch.dtype,
    attn_implementation: str | None,
    use_fp16: bool | None = None,
    use_bf16: bool | None = None,
    **load_options: Any,
) -> list[LoadedModel]:
    """One :func:`load_model` per entry of ``devices`` (a device listed twice gets two replicas).

    ``use_fp16=False`` / ``use_bf16=True`` (FlagEmbedding's flags) pick float32 / bfloat16 (float32 on the CPU) when
    ``dtype="auto"``, and ``use_fp16=True`` on the CPU float32 (FlagEmbedding's meaning of its flags); otherwise
    ``"auto"`` is :func:`auto_dtype` (bfloat16 on a CPU with bf16 units).
    """
    devs = resolve_devices(devices)
    if dtype == "auto" and (use_fp16 is False or use_bf16 or (use_fp16 and devs[0] == "cpu")):
        dtype = "bfloat16" if use_bf16 and devs[0] != "cpu" else "float32"
    return [
        load_model(
            model_name,
            device=device,
            dtype=resolve_dtype(dtype, device),
            attn_implementation=resolve_attention(attn_implementation, device),
            replica=devs[:k].count(device),
            **load_options,
        )
        for k, device in enumerate(devs)
    ]


def model_source(model_name_or_path: str) -> str:
    """What a model name loads: the resolved local directory (``~`` and symlinks resolved) if it is one, else the
    name as given (a hub id)."""
    resolved = os.path.realpath(os.path.expanduser(model_name_or_path))
    return resolved if os.path.isdir(resolved) else model_name_or_path


@dataclass(frozen=True)
class RegistryKey:
    """What makes two loads one set of weights: equal keys share one :class:`LoadedModel`."""

    source: str
    device: str
    dtype: torch.dtype
    attn_implementation: str
    trust_remote_code: bool = False
    cache_dir: str | None = None
    revision: str | None = None
    replica: int = 0


def load_model(
    model_name_or_path: str,
    *,
    device: str,
    dtype: torch.dtype,
    attn_implementation: str,
    trust_remote_code: bool = False,
    cache_dir: str | None = None,
    revision: str | None = None,
    replica: int = 0,
    show_progress: bool = True,
) -> LoadedModel:
    """Load (or reuse) a model and tokenizer, placed on ``device`` in ``dtype``, in eval mode.

    Two calls with the same arguments return the same :class:`LoadedModel` while either caller
    still holds it. ``replica`` > 0 asks for another copy on the same device (for ``devices=["cpu", "cpu"]``).
    ``show_progress=False`` hides transformers' weight-loading progress bar.

    Raises:
        OSError: The path or hub id cannot be loaded; the message says how to fix it.
    """
    source = model_source(model_name_or_path)
    if not os.path.isdir(source):
        if looks_like_a_path(model_name_or_path):
            raise _missing_directory(model_name_or_path)
    elif not os.path.isfile(os.path.join(source, "config.json")):
        raise _not_found(model_name_or_path, FileNotFoundError(f"no config.json in {source}"))
    key = RegistryKey(source, device, dtype, attn_implementation, trust_remote_code, cache_dir, revision, replica)
    with _REGISTRY_LOCK:
        found = _REGISTRY.get(key)
        if found is not None:
            return found
        from transformers import AutoModel, AutoTokenizer

        common: dict[str, Any] = {"trust_remote_code": trust_remote_code, "cache_dir": cache_dir, "revision": revision}
        bars = transformers.utils.logging.is_progress_bar_enabled()
        if not show_progress:
            transformers.utils.logging.disable_progress_bar()
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, **common)
            # One dict[str, Any]: transformers 5.25 types from_pretrained's keywords, and the dtype's name varies.
            model_kwargs: dict[str, Any] = {dtype_kwarg(): dtype, "attn_implementation": attn_implementation, **common}
            model = AutoModel.from_pretrained(source, **model_kwargs)
        except (OSError, HFValidationError) as e:  # 4.x raises HFValidationError for a missing absolute path
            raise _not_found(model_name_or_path, e) from e
        finally:
            if bars:
                transformers.utils.logging.enable_progress_bar()
        prompt_tokenizer = PromptTokenizer(tokenizer)  # raises when there is no EOS token
        model = model.to(device).eval()
        if model.device.type == "cpu":
            own_weights(model)
        loaded = LoadedModel(model, prompt_tokenizer, torch.device(device), dtype, attn_implementation, key)
        _REGISTRY[key] = loaded
        return loaded


@torch.no_grad()
def own_weights(model: torch.nn.Module) -> int:
    """Copy each parameter that lives in memory torch did not allocate into torch's own, one at a time; returns how
    many were copied.

    safetensors maps the checkpoint file when its dtype is the one asked for, so on the CPU such weights are the
    file's pages (4 KiB pages, rows not even 64-byte aligned). Every pass streams all the weights through the
    matmuls, which ran 1.2x slower from the mapping than from a copy for one query (few rows: reading the weights is
    the pass) and 1.04x at 512 rows (bge-en-icl's real shapes, bf16; docs/benchmarks.md). The mapping's pages are
    the page cache's, reclaimable: the copy needs the weights' size in memory once, as the mapping did to run fast.
    """
    copied = 0
    for param in model.parameters():
        if not param.untyped_storage().resizable():  # not torch's: a file mapping or a foreign buffer
            param.data = param.data.clone()
            copied += 1
    return copied


def adopt_model(model: Any, tokenizer: Any, attn_implementation: str) -> LoadedModel:
    """Register an already loaded ``model`` (a SentenceTransformer's, say) as :func:`load_model` would load it.

    The key is the one :func:`load_model` computes for the model's path, device and dtype (replica 0, default
    hub settings), so embedders built with those options, ``with_options`` copies included, use these weights
    and load no second copy. The model is put in eval mode; it is not moved or cast.

    Raises:
        ValueError: The tokenizer has no EOS token.
    """
    param = next(model.parameters())
    device = resolve_devices(str(param.device))[0]
    key = RegistryKey(model_source(str(model.config.name_or_path)), device, param.dtype, attn_implementation)
    with _REGISTRY_LOCK:
        found = _REGISTRY.get(key)
        if found is not None and found.model is model:
            return found
        loaded = LoadedModel(model.eval(), PromptTokenizer(tokenizer), torch.device(device), param.dtype,
                             attn_implementation, key)  # fmt: skip
        _REGISTRY[key] = loaded
        return loaded
