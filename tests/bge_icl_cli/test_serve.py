"""``bge-icl serve`` as a user runs it: a real subprocess on 127.0.0.1 (a free port), stopped by SIGTERM or Ctrl-C
while a request is in flight (the request completes, exit 0); flags, the API key from the environment, and the
one-line errors (a missing extra, a port in use, a model that cannot be loaded)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bge_icl import ICLEmbedder
from bge_icl_cli.cli import build_parser, main
from bge_icl_cli.serve import BATCHING_FLAGS, DEFAULT_DRAIN_TIMEOUT_S, LIMIT_FLAGS

CPU = ["--devices", "cpu"]
ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"}
ENV.pop("BGE_ICL_API_KEY", None)


def test_flags_are_the_cores_options_and_the_servers_limits(capsys: pytest.CaptureFixture[str]) -> None:
    from bge_icl import EmbedderOptions

    pytest.importorskip("fastapi")
    from bge_icl_server.config import ServerConfig

    assert main(["serve", "--help"]) == 0
    shown = "".join(capsys.readouterr().out.split())  # argparse wraps lines (at hyphens, too)
    for name in (*BATCHING_FLAGS, *LIMIT_FLAGS):
        field = (EmbedderOptions if name in BATCHING_FLAGS else ServerConfig).model_fields[name]
        default = "" if field.default is None else f" (default {field.default:,})"
        flag = "".join(f"--{name.replace('_', '-')} {name.upper()} {field.description}{default}".split())
        assert flag in shown, name
    args = build_parser().parse_args(["serve", "--model", "m"])  # a flag left out keeps the declared default
    assert all(getattr(args, name) is None for name in (*BATCHING_FLAGS, *LIMIT_FLAGS))
    assert DEFAULT_DRAIN_TIMEOUT_S == pytest.importorskip("bge_icl_server.shutdown").DEFAULT_DRAIN_TIMEOUT_S < 30


def test_without_the_extra_serve_prints_an_install_hint(monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    monkeypatch.setitem(sys.modules, "fastapi", None)  # what `import fastapi` meets where it is not installed
    assert main(["serve", "--model", "x"]) == 1
    assert capsys.readouterr().err == "bge-icl: error: bge-icl serve needs fastapi: pip install 'bge-icl[serve]'\n"


pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
httpx = pytest.importorskip("httpx")


@contextmanager
def serving(*argv: object, env: dict[str, str] | None = None) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``bge-icl serve ARGV --port 0`` in a subprocess; yields it and its URL once /health answers 200."""
    proc = subprocess.Popen([sys.executable, "-m", "bge_icl_cli", "serve", *map(str, argv), "--port", "0"],
                            stderr=subprocess.PIPE, text=True, env=env or ENV)  # fmt: skip
    try:
        first = proc.stderr.readline()  # type: ignore[union-attr]
        match = re.match(r"bge-icl: listening on (http://127\.0\.0\.1:\d+) \(model ids: (.+)\); loading ", first)
        assert match, first + proc.stderr.read()  # type: ignore[union-attr]
        url = match.group(1)
        deadline = time.monotonic() + 120
        while httpx.get(f"{url}/health").status_code != 200:
            assert time.monotonic() < deadline and proc.poll() is None, "the server did not get ready"
            time.sleep(0.05)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_signal_finishes_the_request_in_flight_then_exits_0(tiny_dir: Path, sig: signal.Signals) -> None:
    texts = [f"passage {i} about mountains and rivers " * 20 for i in range(150)]  # seconds of work on this model
    with serving("--model", tiny_dir, *CPU, "--dtype", "float32", "--examples", "web-search") as (proc, url):
        result: dict[str, httpx.Response] = {}
        call = threading.Thread(target=lambda: result.setdefault("r", httpx.post(
            f"{url}/v1/embeddings", json={"model": tiny_dir.name, "input": texts}, timeout=120)))  # fmt: skip
        call.start()
        deadline = time.monotonic() + 60
        while not re.search(r"^bge_icl_queue_rows [1-9]", httpx.get(f"{url}/metrics").text, re.M):  # in flight
            assert time.monotonic() < deadline
            time.sleep(0.01)
        proc.send_signal(sig)
        call.join(120)
        assert proc.wait(60) == 0
        log = proc.stderr.read()  # type: ignore[union-attr]
    response = result["r"]
    assert response.status_code == 200, response.text
    local = ICLEmbedder(str(tiny_dir), devices="cpu", dtype="float32", show_progress=False)  # float32: within 1e-5
    expected = local.encode_corpus(texts)
    got = [d["embedding"] for d in response.json()["data"]]
    assert len(got) == 150 and abs(expected - got).max() <= 1e-5
    assert re.search(r"ready: model ids .*, dimension 64, cpu, float32, loaded", log)  # the resolved dtype
    assert re.search(rf"request \w+ POST /v1/embeddings model={tiny_dir.name} inputs=150 bytes=\d+ status=200", log)
    assert "Shutting down" in log and "mountains" not in log and "Traceback" not in log


def test_api_key_from_the_environment_and_flags(tiny_dir: Path, tmp_path: Path) -> None:
    examples = tmp_path / "faq.json"
    examples.write_text(json.dumps([{"query": "q", "response": "r"}]))
    with serving("--model", tiny_dir, *CPU, "--dtype", "float32", "--served-name", "plain",
                 "--examples", f"faq={examples}", "--instruction", "Find the FAQ entry.", "--max-inputs", "3",
                 "--batch-size", "2", "--threads", "1",
                 env={**ENV, "BGE_ICL_API_KEY": "from-env"}) as (proc, url):  # fmt: skip
        assert httpx.get(f"{url}/v1/models").status_code == 401
        listing = httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer from-env"}).json()
        assert [m["id"] for m in listing["data"]] == ["plain", "faq", "plain:query", "faq:query"]
        too_many = httpx.post(f"{url}/v1/embeddings", json={"model": "faq", "input": ["a"] * 4},
                              headers={"Authorization": "Bearer from-env"})  # fmt: skip
        assert too_many.status_code == 413
        response = httpx.post(f"{url}/v1/embeddings", json={"model": "faq", "input": ["a q"], "input_type": "query"},
                              headers={"Authorization": "Bearer from-env"})  # fmt: skip
        local = ICLEmbedder(str(tiny_dir), devices="cpu", dtype="float32",
                            examples_for_task=[{"query": "q", "response": "r"}],
                            query_instruction_for_retrieval="Find the FAQ entry.")  # fmt: skip
        assert abs(local.encode_queries(["a q"]) - response.json()["data"][0]["embedding"]).max() <= 1e-5
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        log = proc.stderr.read()  # type: ignore[union-attr]
    assert "torch threads: 1" in log and "auth on: /v1/ needs 'Authorization: Bearer <key>'" in log
    assert "from-env" not in log


def test_the_key_comes_from_a_file_or_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bge_icl_cli.serve import api_key

    key_file = tmp_path / "key"
    key_file.write_text("s3cret\nignored\n", encoding="utf-8")
    parse = build_parser().parse_args
    monkeypatch.setenv("BGE_ICL_API_KEY", "from-env")
    assert api_key(parse(["serve", "--api-key-file", str(key_file)])) == "s3cret"
    assert api_key(parse(["serve", "--api-key", "flag"])) == "flag"
    assert api_key(parse(["serve"])) == "from-env"
    monkeypatch.delenv("BGE_ICL_API_KEY")
    assert api_key(parse(["serve"])) is None


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def test_usage_errors_are_one_line(tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.key"
    empty.write_text("\n", encoding="utf-8")
    cases = [
        (["--examples", "nope"], "bge-icl: error: --examples nope: unknown example set 'nope': bundled sets are "
                                 "web-search; or a JSON file\n"),
        (["--examples", "=web-search"], "bge-icl: error: --examples '=web-search': expected NAME=FILE or "
                                        "NAME=BUILTIN (e.g. search=web-search)\n"),
        (["--examples", "a=web-search", "--examples", "a=web-search"],
         "bge-icl: error: --examples: the model id 'a' is given twice\n"),
        (["--examples", f"{tiny_dir.name}=web-search"],
         f"bge-icl: error: the served name {tiny_dir.name!r} is also an example set's name; "),
        (["--batch-size", "0"], "bge-icl: error: --batch-size must be a positive int, got 0\n"),
        (["--max-inputs", "0"], "bge-icl: error: --max-inputs must be a positive int, got 0\n"),
        (["--dtype", "float8"], "bge-icl: error: --dtype float8 is not supported; valid: 'auto', 'float16', "),
        (["--replicas", "2"], "bge-icl: error: --replicas and --cpus-per-replica need --ray (one process serves one "
                              "model; see --devices for several GPUs)\n"),
        (["--cpus-per-replica", "0.5"], "bge-icl: error: --replicas and --cpus-per-replica need --ray"),
        (["--ray", "--replicas", "0"], "bge-icl: error: --replicas must be positive, got 0\n"),
        (["--ray", "--cpus-per-replica", "-1"], "bge-icl: error: --cpus-per-replica must be a number of CPUs >= 0, "
                                                "got -1\n"),
        (["--drain-timeout", "0"], "bge-icl: error: --drain-timeout must be a positive number of seconds, got 0\n"),
        (["--api-key", ""], "bge-icl: error: the API key is empty (an unset variable?): give a key, or none at all "
                            "to serve without one\n"),
        (["--api-key", "clé"], "bge-icl: error: the API key holds a space, a control or a non-ASCII character"),
        (["--api-key-file", empty], "bge-icl: error: the API key is empty"),
        (["--api-key-file", tmp_path / "nope"], f"bge-icl: error: --api-key-file {tmp_path / 'nope'}: cannot read "
                                                "it"),
        (["--threads", "0"], "bge-icl: error: --threads must be a positive int, got 0\n"),
    ]  # fmt: skip
    for argv, message in cases:
        code, err = run(capsys, "serve", "--model", tiny_dir, *CPU, *argv)
        assert (code, err[: len(message)]) == (1, message), err
        assert err.count("\n") == 1


def test_an_empty_key_in_the_environment_is_refused(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    monkeypatch.setenv("BGE_ICL_API_KEY", "")
    code, err = run(capsys, "serve", "--model", tiny_dir, *CPU)
    assert (code, err.startswith("bge-icl: error: the API key is empty")) == (1, True), err


def test_a_reachable_host_without_a_key_is_warned_about() -> None:
    from bge_icl_cli.serve import auth_warning

    assert auth_warning("0.0.0.0", None) == (
        "no API key, and 0.0.0.0 is reachable from other machines: anyone who reaches it can embed; pass "
        "--api-key-file (or $BGE_ICL_API_KEY)")  # fmt: skip
    assert auth_warning("10.1.2.3", None) is not None and auth_warning("::", None) is not None
    assert [auth_warning(h, None) for h in ("127.0.0.1", "::1", "localhost", "127.0.0.2")] == [None] * 4
    assert auth_warning("0.0.0.0", "key") is None


def test_ray_mode_without_ray_prints_an_install_hint(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    monkeypatch.setitem(sys.modules, "ray.serve", None)
    code, err = run(capsys, "serve", "--ray", "--model", tiny_dir, *CPU)
    assert (code, err) == (1, "bge-icl: error: bge-icl serve --ray needs ray: pip install 'bge-icl[ray]'\n")


def test_a_port_in_use_is_an_error(tiny_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, err = run(capsys, "serve", "--model", tiny_dir, *CPU, "--port", port)
    assert (code, err) == (1, f"bge-icl: error: cannot listen on 127.0.0.1:{port}: Address already in use\n")


def test_a_model_that_cannot_be_loaded_is_exit_2(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    argv = [sys.executable, "-m", "bge_icl_cli", "serve", "--model", str(tmp_path / "empty"), *CPU, "--port", "0"]
    proc = subprocess.run(argv, capture_output=True, text=True, env=ENV, timeout=120, check=False)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("bge-icl: error: ")
    assert last.endswith("Or pass --model PATH to a local checkpoint directory.")


def post_in_threads(url: str, model: str, requests: int, texts: list[str]) -> tuple[list[threading.Thread],
                                                                                     list[object]]:  # fmt: skip
    """``requests`` concurrent ``POST /v1/embeddings`` of ``texts`` on threads; their responses (or errors) land in
    the list."""
    answers: list[object] = []

    def call() -> None:
        try:
            answers.append(httpx.post(f"{url}/v1/embeddings", json={"model": model, "input": texts}, timeout=120))
        except httpx.HTTPError as e:
            answers.append(e)

    threads = [threading.Thread(target=call) for _ in range(requests)]
    for t in threads:
        t.start()
    return threads, answers


def _flood(url: str, model: str, requests: int, texts: list[str]) -> tuple[list[threading.Thread], list[object]]:
    """:func:`post_in_threads`, returning once all of them are in flight: more rows wait than ``requests - 1``
    requests hold (the core's queue counts down as passes run, so the full count may never be seen)."""
    threads, answers = post_in_threads(url, model, requests, texts)
    deadline = time.monotonic() + 60
    while queue_rows(url) <= (requests - 1) * len(texts):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return threads, answers


def queue_rows(url: str) -> float:
    """The server's ``bge_icl_queue_rows`` gauge."""
    line = next(x for x in httpx.get(f"{url}/metrics").text.splitlines() if x.startswith("bge_icl_queue_rows "))
    return float(line.split()[1])


def test_the_drain_is_bounded_and_the_rest_get_503_with_retry_after(tiny_dir: Path) -> None:
    texts = [f"passage {i} about mountains and rivers " * 20 for i in range(400)]  # seconds of work each
    with serving("--model", tiny_dir, *CPU, "--drain-timeout", "1") as (proc, url):
        threads, answers = _flood(url, tiny_dir.name, 4, texts)
        stopped = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(120)
        assert proc.wait(60) == 0
        took = time.monotonic() - stopped
        log = proc.stderr.read()  # type: ignore[union-attr]
    statuses = sorted(a.status_code for a in answers if isinstance(a, httpx.Response))
    assert len(statuses) == 4 and set(statuses) <= {200, 503} and 503 in statuses, answers  # never a 500
    cut = next(a for a in answers if isinstance(a, httpx.Response) and a.status_code == 503)
    assert cut.headers["retry-after"] == "1"
    assert cut.json()["error"] == {"message": "the server is shutting down and did not serve this request; retry "
                                   "after 1 s", "type": "server_error", "param": None, "code": "shutting_down"}
    assert took < 30, took  # 1 s of drain, then the passes already running finish; not the whole queue
    assert "Traceback" not in log and "CancelledError" not in log and "cut off by the end of the drain" in log


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_a_second_signal_exits_at_once(tiny_dir: Path, sig: signal.Signals) -> None:
    texts = [f"passage {i} about mountains and rivers " * 20 for i in range(150)]
    with serving("--model", tiny_dir, *CPU) as (proc, url):
        threads, _ = _flood(url, tiny_dir.name, 4, texts)
        proc.send_signal(sig)
        time.sleep(0.3)
        again = time.monotonic()
        proc.send_signal(sig)
        assert proc.wait(30) == 128 + sig
        assert time.monotonic() - again < 5
        log = proc.stderr.read()  # type: ignore[union-attr]
        for t in threads:
            t.join(120)
    assert f"bge-icl: {sig.name} again: exiting now, without waiting for the requests in flight" in log
    assert "Traceback" not in log
