"""Ray Serve: ``bge-icl serve``'s app on a local Ray (``ray.init(num_cpus=2)``), tiny checkpoint, 2 replicas of 0.5
CPU. The ``openai`` client's vectors equal the local embedder's; the HTTP API is the one of ``bge-icl serve``; 200
concurrent requests all succeed on both replicas; a replica killed under load is replaced and the client's own
retries answer every request; a model that cannot load never serves; Ray leaves no process behind. The command
line (``bge-icl serve --ray``, 3 replicas of 0.5 CPU): SIGTERM under load answers every request in flight and leaves
no Ray process; SIGTERM while the replicas cannot be placed stops it at once; a replica's load error is printed."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")
pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

from bge_icl import WEB_SEARCH_INSTRUCTION, ICLEmbedder  # noqa: E402
from bge_icl_server import ServerConfig, load_example_set, serve_in_thread  # noqa: E402
from ray_bge_icl.serve import DEPLOYMENT_NAME, app_builder, build_app, replica_health, server_config  # noqa: E402
from tests.bge_icl_cli.test_serve import post_in_threads  # noqa: E402
from tests.bge_icl_server.conftest import PASSAGES, QUERIES, max_diff  # noqa: E402
from tests.bge_icl_server.test_errors import check_error  # noqa: E402
from tests.bge_icl_server.test_load import bench_module  # noqa: E402

APP, SERVED, KEY = "bge-icl", "tiny", "ray-key"
MARK = f"bge-icl-ray-test-{uuid.uuid4().hex[:8]}"  # in the environment of every process this module starts
ROOT = Path(__file__).resolve().parents[2]


def marked_processes(mark: str = MARK) -> list[int]:
    """Live processes (other than this one) whose environment holds ``mark``: Ray's, started by this module."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if mark.encode() in environ and state != "Z":
            found.append(int(entry.name))
    return found


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def cluster(tiny_dir: Path) -> Iterator[str]:
    """Ray (2 CPUs) and Serve on 127.0.0.1, the app deployed with 2 replicas; yields the proxy's URL."""
    os.environ["BGE_ICL_RAY_TEST_MARK"] = MARK
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    except Exception as e:  # noqa: BLE001 - any reason Ray cannot start here is a skip, with the reason
        os.environ.pop("BGE_ICL_RAY_TEST_MARK")
        pytest.skip(f"Ray cannot start here: {type(e).__name__}: {e}")
    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app = build_app(str(tiny_dir), served_name=SERVED, num_replicas=2, examples={"web-search": "web-search"},
                        api_key=KEY, max_inputs=64, num_cpus=0.5, devices="cpu", dtype="float32",
                        deployment_options={"health_check_period_s": 2})  # fmt: skip
        serve.run(app, name=APP, route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()
        os.environ.pop("BGE_ICL_RAY_TEST_MARK", None)


@pytest.fixture(scope="module")
def local(tiny_dir: Path) -> dict[str, ICLEmbedder]:
    from bge_icl_server.config import load_example_set

    web = load_example_set("web-search")
    assert web.instruction == WEB_SEARCH_INSTRUCTION
    base = ICLEmbedder(str(tiny_dir), devices="cpu", dtype="float32", show_progress=False)  # compared within 1e-5
    return {SERVED: base, "web-search": base.with_examples(web.examples).with_options(
        query_instruction_for_retrieval=web.instruction)}  # fmt: skip


def client(url: str, **kwargs: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, **kwargs)  # type: ignore[arg-type]


def test_openai_client_vectors(cluster: str, local: dict[str, ICLEmbedder]) -> None:
    c = client(cluster, max_retries=0)
    for model in (SERVED, "web-search"):
        for input_type, texts in (("query", QUERIES), ("passage", PASSAGES)):
            for fmt in ({}, {"encoding_format": "float"}):
                got = c.embeddings.create(model=model, input=texts, extra_body={"input_type": input_type}, **fmt)
                emb = local[model]
                expected = emb.encode_queries(texts) if input_type == "query" else emb.encode_corpus(texts)
                assert max_diff([d.embedding for d in got.data], expected) <= 1e-5


def test_the_http_api_is_bge_icl_serves(cluster: str) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    assert httpx.get(f"{cluster}/health").json() == {"status": "ready"}
    ids = [m["id"] for m in httpx.get(f"{cluster}/v1/models", headers=auth).json()["data"]]
    assert ids == [SERVED, "web-search", f"{SERVED}:query", "web-search:query"]
    check_error(httpx.get(f"{cluster}/v1/models"), 401, re.escape("no API key: send the header 'Authorization: "
                "Bearer <key>' (the openai client's api_key)"), None, "invalid_api_key")  # fmt: skip
    check_error(httpx.post(f"{cluster}/v1/embeddings", json={"model": SERVED, "input": ["a", "b", "c", None]},
                           headers=auth), 400, re.escape("input[3] is null; each input must be a string"),
                "input[3]")  # fmt: skip
    check_error(httpx.post(f"{cluster}/v1/embeddings", json={"model": "nope", "input": "a"}, headers=auth), 404,
                re.escape("the model 'nope' is not served here; served model ids: tiny, web-search, tiny:query, "
                          "web-search:query"), "model",
                "model_not_found")  # fmt: skip
    check_error(httpx.post(f"{cluster}/v1/embeddings", json={"model": SERVED, "input": ["a"] * 65}, headers=auth),
                413, re.escape("input has 65 items; this server takes at most 64 per request (split the request)"),
                "input", "too_many_inputs")  # fmt: skip
    metrics = httpx.get(f"{cluster}/metrics").text
    for name in ("bge_icl_requests_total", "bge_icl_rows_total", "bge_icl_forward_passes_total", "bge_icl_queue_rows",
                 "bge_icl_request_duration_seconds"):  # fmt: skip
        assert re.search(rf"^{name}[{{ _]", metrics, re.MULTILINE), name


def replica_stats() -> dict[str, dict[str, float]]:
    results = serve.get_app_handle(APP).broadcast("stats").results(timeout_s=30)
    return {r["replica"]: r for r in results}


def test_200_concurrent_requests_on_both_replicas(cluster: str, local: dict[str, ICLEmbedder]) -> None:
    before = replica_stats()
    assert len(before) == 2
    texts = [f"passage {i} about rivers and mountains" for i in range(200)]

    async def all_at_once() -> list[list[float]]:
        c = openai.AsyncOpenAI(base_url=f"{cluster}/v1", api_key=KEY, max_retries=0, timeout=120)
        responses = await asyncio.gather(*(c.embeddings.create(model=SERVED, input=[t]) for t in texts))
        await c.close()
        return [r.data[0].embedding for r in responses]

    got = asyncio.run(all_at_once())
    assert max_diff(got, local[SERVED].encode_corpus(texts)) <= 1e-5
    after = replica_stats()
    served = {rid: after[rid]["rows"] - before.get(rid, {"rows": 0})["rows"] for rid in after}
    assert len(served) == 2 and all(rows > 0 for rows in served.values()), served
    assert sum(served.values()) == 200


def test_a_killed_replica_is_replaced_and_retries_answer_all(cluster: str, local: dict[str, ICLEmbedder]) -> None:
    bench = bench_module()
    calls = bench.workload(120, seed=1, served=SERVED)
    expected = bench.expected_vectors(local, calls)
    replicas = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "SERVE_REPLICA" in a["name"]]
    assert len(replicas) == 2, replicas
    result: dict[str, object] = {}
    statuses: Counter[int] = Counter()  # every attempt the clients saw, retries included
    run = bench.run_load(f"{cluster}/v1", calls, concurrency=16, api_key=KEY, timeout=60, max_retries=5,
                         statuses=statuses)  # fmt: skip
    load = threading.Thread(target=lambda: result.setdefault("load", asyncio.run(run)))
    load.start()
    while sum(statuses.values()) < 10:  # the load is running on both replicas
        time.sleep(0.05)
    killed_at = time.monotonic()
    ray.kill(ray.get_actor(replicas[0], namespace="serve"), no_restart=True)
    assert load.is_alive() and sum(statuses.values()) < 120  # requests were in flight when the replica died
    recovered = None
    while recovered is None and time.monotonic() - killed_at < 120:
        names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "SERVE_REPLICA" in a["name"]]
        states = serve.status().applications[APP].deployments[DEPLOYMENT_NAME].replica_states
        if replicas[0] not in names and len(names) == 2 and states == {"RUNNING": 2}:
            recovered = time.monotonic() - killed_at
        time.sleep(0.2)
    load.join(180)
    outcome = result["load"]
    wrong, worst = bench.wrong_vectors(outcome, expected)  # type: ignore[arg-type]
    failed = outcome.failures  # type: ignore[attr-defined]
    print(f"\nkill test: {len(calls)} requests, {len(failed)} failed, {len(wrong)} wrong (max |diff| {worst:.1e}); "
          f"HTTP statuses seen by the clients, retries included: {dict(statuses)}; "
          f"a new replica RUNNING {recovered:.1f} s after the kill" if recovered else "no new replica")
    assert recovered is not None, "Ray did not bring a second replica back within 120 s"
    assert outcome.failures == [] and len(outcome.vectors) == 120 and wrong == []  # type: ignore[attr-defined]
    assert httpx.get(f"{cluster}/health").status_code == 200


def test_a_replica_whose_model_cannot_load_never_serves(cluster: str, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    app = build_app(str(tmp_path / "empty"), num_replicas=1, num_cpus=0.25, devices="cpu",
                    deployment_options={"max_constructor_retry_count": 1})  # fmt: skip
    with pytest.raises(RuntimeError):
        serve.run(app, name="broken", route_prefix="/broken")
    status = serve.status().applications["broken"]
    assert status.status == "DEPLOY_FAILED"
    assert "config.json" in status.deployments[DEPLOYMENT_NAME].message  # the load error, as the core words it
    serve.delete("broken")
    assert httpx.get(f"{cluster}/health").status_code == 200  # the other application is untouched


def test_replica_health_follows_the_service(tiny_dir: Path, tmp_path: Path) -> None:
    """Ray's check_health: raises while the model is not loaded, and once the forward passes keep failing."""
    import torch

    from bge_icl_server import EmbeddingService, create_app

    model = shutil.copytree(tiny_dir, tmp_path / "copy")  # its own weights: breaking them leaves the others alone
    config = ServerConfig(model=str(model), served_name=SERVED, options={"devices": "cpu", "dtype": "float32"})
    service = EmbeddingService(config)
    with pytest.raises(RuntimeError, match=re.escape(f"the model {model} is new")):
        replica_health(create_app(config, service))
    with serve_in_thread(config, service=service, wait_ready=False) as running:
        service.load()
        replica_health(running.app)
        layer = service.embedder(SERVED, "passages").replicas[0].model.layers[0].mlp.up_proj
        weight, layer.weight = layer.weight, torch.nn.Parameter(torch.zeros(3, 3))
        try:
            for _ in range(3):
                response = httpx.post(f"{running.api_url}/embeddings", json={"model": SERVED, "input": "x"})
                assert response.status_code == 500
            with pytest.raises(RuntimeError, match="the last forward passes failed"):
                replica_health(running.app)
        finally:
            layer.weight = weight


def test_the_docs_config_file_builds_the_application() -> None:
    yaml = pytest.importorskip("yaml")
    from ray.serve.schema import ServeDeploySchema

    text = (ROOT / "docs" / "scale-out.md").read_text(encoding="utf-8")
    block = re.search(r"```yaml\n(applications:.*?)```", text, re.DOTALL)
    assert block
    schema = ServeDeploySchema.model_validate(yaml.safe_load(block.group(1)))
    spec = schema.applications[0]
    assert spec.import_path == "ray_bge_icl.serve:app_builder"
    app = app_builder(spec.args)
    deployment = app._bound_deployment
    assert deployment.name == DEPLOYMENT_NAME
    assert deployment.ray_actor_options == {"num_cpus": 1, "num_gpus": 1}
    assert deployment._deployment_config.autoscaling_config.max_replicas == 8
    assert deployment._deployment_config.max_ongoing_requests == 32
    with pytest.raises(ValueError, match="pass num_replicas or autoscaling_config, not both"):
        build_app("BAAI/bge-en-icl", num_replicas=2, autoscaling_config={"max_replicas": 2})
    with pytest.raises(ValueError, match=re.escape("examples['x']: unknown example set 'nope'")):
        build_app("BAAI/bge-en-icl", examples={"x": "nope"})


def test_shutdown_leaves_no_process_behind(cluster: str) -> None:
    assert marked_processes(), "the marker should find Ray's processes while it runs"
    serve.shutdown()
    ray.shutdown()
    deadline = time.monotonic() + 60
    while marked_processes() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert marked_processes() == []


@contextmanager
def ray_command(*argv: object, mark: str) -> Iterator[subprocess.Popen[str]]:
    """``bge-icl serve --ray ARGV`` on a local Ray whose processes carry ``mark``; killed if still running, then
    waits (60 s at most) for no marked process to be left, and asserts it."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1", "BGE_ICL_RAY_TEST_MARK": mark,
           "RAY_raylet_start_wait_time_s": "120"}  # fmt: skip
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen([sys.executable, "-m", "bge_icl_cli", "serve", "--ray", "--devices", "cpu", "--dtype",
                             "float32", *map(str, argv)], env=env, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        deadline = time.monotonic() + 60
        while marked_processes(mark) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert marked_processes(mark) == []


def test_bge_icl_serve_ray_drains_on_sigterm_and_leaves_no_process(tiny_dir: Path,
                                                                   local: dict[str, ICLEmbedder]) -> None:  # fmt: skip
    port = free_port()
    texts = [f"passage {i} about mountains and rivers " * 20 for i in range(400)]  # seconds of work per request
    with ray_command("--replicas", 3, "--cpus-per-replica", 0.5, "--model", tiny_dir, "--served-name", SERVED,
                     "--examples", "web-search", "--port", port, mark=f"{MARK}-cli") as proc:  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 240
        while True:  # 200 once one replica serves (3 replicas of 0.5 CPU fit on 2 CPUs)
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()  # type: ignore[union-attr]
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            time.sleep(0.5)
        got = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0).embeddings.create(
            model="web-search", input=QUERIES, extra_body={"input_type": "query"})  # fmt: skip
        assert max_diff([d.embedding for d in got.data], local["web-search"].encode_queries(QUERIES)) <= 1e-5
        calls, answers = post_in_threads(url, SERVED, 4, texts)
        time.sleep(1.5)  # the requests are in flight (each takes seconds)
        proc.send_signal(signal.SIGTERM)
        for t in calls:
            t.join(120)
        assert proc.wait(120) == 0
        log = proc.stderr.read()  # type: ignore[union-attr]
    statuses = [a.status_code if isinstance(a, httpx.Response) else a for a in answers]
    assert statuses == [200] * 4, (statuses, log[-2000:])
    expected = local[SERVED].encode_corpus(texts)
    assert all(max_diff([d["embedding"] for d in a.json()["data"]], expected) <= 1e-5 for a in answers)  # type: ignore[union-attr]
    assert "bge-icl: drained in" in log and "Traceback" not in log


def test_sigterm_while_replicas_cannot_start_stops_at_once(tiny_dir: Path) -> None:
    """Bug 4 of issue 28: replicas that never fit (64 CPUs each) kept the command deploying, deaf to signals."""
    with ray_command("--replicas", 2, "--cpus-per-replica", 64, "--model", tiny_dir, "--port", free_port(),
                     mark=f"{MARK}-deploy") as proc:  # fmt: skip
        first = proc.stderr.readline()  # type: ignore[union-attr]
        while "deploying 2 replica(s)" not in first:
            assert proc.poll() is None, first
            first = proc.stderr.readline()  # type: ignore[union-attr]
        time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        assert proc.wait(60) == 0
        assert time.monotonic() - stopped < 60
        assert "Traceback" not in proc.stderr.read()  # type: ignore[union-attr]


def test_a_replica_load_error_reaches_the_command_line(tmp_path: Path) -> None:
    """Item 10 of issue 28: the replica's own error, worded as without --ray, not "Failed to update the deployments"."""
    (tmp_path / "empty").mkdir()
    with ray_command("--model", tmp_path / "empty", "--port", free_port(), mark=f"{MARK}-broken") as proc:
        assert proc.wait(240) == 2
        last = proc.stderr.read().strip().splitlines()[-1]  # type: ignore[union-attr]
    assert last.startswith("bge-icl: error: ") and "config.json" in last, last
    assert last.endswith("Or pass --model PATH to a local checkpoint directory."), last


def test_build_app_takes_every_server_config_field() -> None:
    fields = {"served_name": "plain", "instruction": "Find it.", "api_key": "k", "max_inputs": 3,
              "max_request_bytes": 1000, "max_queue_rows": 5, "allow_dimensions": True,
              "cors_origins": ("https://a.example",)}  # fmt: skip
    assert set(fields) == set(ServerConfig.model_fields) - {"model", "example_sets", "options"}
    got = server_config("BAAI/bge-en-icl", {"ws": "web-search"}, **fields, batch_size=4, devices="cpu")
    sets = {"ws": load_example_set("web-search")}
    assert got == ServerConfig(model="BAAI/bge-en-icl", example_sets=sets, options={"batch_size": 4, "devices": "cpu"},
                               **fields)  # fmt: skip
    assert server_config("BAAI/bge-en-icl", served_name=None) == ServerConfig(model="BAAI/bge-en-icl")
    with pytest.raises(ValueError, match="max_inputs"):
        build_app("BAAI/bge-en-icl", max_inputs=0)
