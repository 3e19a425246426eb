"""``bge_icl.optional``: a missing optional library names the extra that installs it."""

from __future__ import annotations

import re
import sys

import pytest

from bge_icl.optional import install_hint, missing_extra, optional_import


def test_optional_import_returns_the_module() -> None:
    assert optional_import("json", extra="eval", needed_by="a test") is sys.modules["json"]


def test_a_missing_module_names_what_needs_it_and_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pytrec_eval", None)  # import now raises ImportError
    expected = "retrieval metrics needs pytrec_eval, which could not be imported ("
    with pytest.raises(ImportError, match=re.escape(expected)) as caught:
        optional_import("pytrec_eval", extra="eval", needed_by="retrieval metrics")
    assert str(caught.value).endswith("); install it with: pip install 'bge-icl[eval]'")
    assert caught.value.name == "pytrec_eval" and isinstance(caught.value.__cause__, ImportError)


def test_the_hint_takes_several_extras() -> None:
    assert install_hint("ray,serve") == "pip install 'bge-icl[ray,serve]'"
    error = missing_extra("ray.serve", "ray,serve", "ray_bge_icl.serve", ImportError("No module named 'ray'"))
    assert str(error) == (
        "ray_bge_icl.serve needs ray.serve, which could not be imported (No module named 'ray'); "
        "install it with: pip install 'bge-icl[ray,serve]'"
    )


@pytest.mark.parametrize(
    ("module", "loader", "library", "extra"),
    [
        ("bge_icl.evaluation", "_pytrec_eval", "pytrec_eval", "eval"),
        ("bge_icl_client.remote", "_httpx", "httpx", "client"),
    ],
)
def test_the_lazy_imports_name_their_extra(
    module: str, loader: str, library: str, extra: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    load = getattr(pytest.importorskip(module), loader)
    monkeypatch.setitem(sys.modules, library, None)  # import now raises ImportError
    with pytest.raises(ImportError, match=re.escape(f"needs {library}, which could not be imported")):
        load()
    with pytest.raises(ImportError, match=re.escape(f"install it with: pip install 'bge-icl[{extra}]'")):
        load()
