"""Ray Serve: the embeddings server of ``bge-icl serve`` as a Ray Serve application, one model per replica.

Each replica builds the same FastAPI app as ``bge-icl serve`` (:func:`bge_icl_server.create_app`, mounted with
``serve.ingress``: same routes, bodies, errors, auth and metrics names) from the same
:class:`~bge_icl_server.ServerConfig`, loads the model and builds its prefix caches before it takes traffic,
and batches its own requests. A replica whose model fails to load never becomes ready; one whose forward passes
keep failing fails Ray's health check (``check_health``), and Ray replaces it.

Needs ``pip install 'bge-icl[ray,serve]'``.

Example:
    >>> from ray import serve  # doctest: +SKIP
    >>> app = build_app(model="BAAI/bge-en-icl", num_replicas=2, examples={"web-search": "web-search"})
    >>> serve.run(app, name="bge-icl", route_prefix="/")  # doctest: +SKIP
    >>> # clients: base_url="http://<head>:8000/v1", as for bge-icl serve
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI

from bge_icl.optional import missing_extra
from bge_icl.quickstart import DEFAULT_MODEL
from bge_icl_server import EmbeddingService, ServerConfig, create_app, load_example_set
from bge_icl_server.shutdown import send_error, shutting_down

try:
    import ray
    from ray import serve
except ImportError as e:  # pragma: no cover - exercised only without ray
    raise missing_extra("ray.serve", "ray,serve", "ray_bge_icl.serve", e) from e

DEPLOYMENT_NAME = "BgeIclEmbeddings"
# Ray's default (5) would leave each replica's batcher few requests to merge.
DEFAULT_MAX_ONGOING_REQUESTS = 32
# build_app's keywords that go to application() (the deployment), not to the ServerConfig.
DEPLOYMENT_KEYWORDS = ("num_replicas", "num_cpus", "num_gpus", "autoscaling_config", "max_ongoing_requests",
                       "deployment_options")  # fmt: skip


def replica_health(app: FastAPI) -> None:
    """Raise when the replica serving ``app`` should be replaced (Ray Serve's ``check_health`` contract).

    Raises:
        RuntimeError: The model is not loaded, or its last forward passes failed; the message says which.
    """
    service: EmbeddingService = app.state.service
    if service.state != "ready":
        msg = f"the model {service.config.model} is {service.state}" + (f": {service.error}" if service.error else "")
        raise RuntimeError(msg)
    if not service.healthy:
        msg = "the last forward passes failed (see the replica's log); replace this replica"
        raise RuntimeError(msg)


def replica_stats(app: FastAPI) -> dict[str, Any]:
    """This replica's id and counters: texts embedded, forward passes, texts in flight."""
    service: EmbeddingService = app.state.service
    stats = service.stats()  # the model's: every model id's rows and passes together
    return {
        "replica": serve.get_replica_context().replica_id.unique_id,
        "rows": sum(stats.replica_rows),
        "forward_passes": stats.forward_passes,
        "queued_rows": service.queued_rows,
    }


@ray.remote(num_cpus=0)
class Control:
    """What ``bge-icl serve --ray`` and its replicas tell each other (one small actor, no CPU):

    - why a replica's model did not load, as the exception itself (its fields kept; Ray's own status only says
      that the deployment failed);
    - the drain: once :meth:`drain` is called, replicas answer new requests 503 with ``Retry-After``, finish the
      ones in flight, and report how many are left, until :meth:`drained`.
    """

    def __init__(self) -> None:
        self._error: BaseException | None = None
        self._draining = False
        self._in_flight: dict[str, int] = {}  # replica -> requests in flight, as it last reported
        self._since_drain: set[str] = set()  # replicas that reported since the drain began

    def report_error(self, error: BaseException) -> None:
        """Keep ``error`` unless one was reported before."""
        self._error = self._error or error

    def first_error(self) -> BaseException | None:
        """The first reported load error, or None."""
        return self._error

    def drain(self) -> None:
        """Begin the drain."""
        self._draining = True

    def report(self, replica: str, in_flight: int) -> bool:
        """A replica's requests in flight; returns whether to drain."""
        self._in_flight[replica] = in_flight
        if self._draining:
            self._since_drain.add(replica)
        return self._draining

    def drained(self) -> bool:
        """Whether every replica that ever reported has reported since the drain began, with no request left."""
        return all(r in self._since_drain and not n for r, n in self._in_flight.items())


class _ReplicaDrain:
    """A replica's side of the drain: tells :class:`Control` its requests in flight every ``period_s``, learns
    whether to drain."""

    def __init__(self, control: Any, period_s: float = 0.2) -> None:
        self.in_flight, self.draining = 0, False
        replica = serve.get_replica_context().replica_id.unique_id

        def tell() -> None:
            while True:
                self.draining = ray.get(control.report.remote(replica, self.in_flight))
                time.sleep(period_s)

        threading.Thread(target=tell, name="bge-icl-drain", daemon=True).start()


class _Draining:
    """ASGI middleware of a replica: counts its requests in flight; answers 503 once the drain began."""

    def __init__(self, app: Any, drain: _ReplicaDrain) -> None:
        self.app, self.drain = app, drain

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":  # the lifespan lasts as long as the app: not a request
            await self.app(scope, receive, send)
            return
        if self.drain.draining:
            await send_error(send, shutting_down())
            return
        self.drain.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.drain.in_flight -= 1


def deployment(config: ServerConfig, control: Any = None, **deployment_options: Any) -> serve.Deployment:
    """The Ray Serve deployment serving ``config``; ``deployment_options`` go to ``serve.deployment``.

    Args:
        config: What each replica serves.
        control: A :class:`Control` actor (load errors, the drain), or None.
        **deployment_options: ``serve.deployment``'s options.
    """

    def asgi_app() -> FastAPI:  # runs in each replica as it starts: Ray routes to it once this returns
        service = EmbeddingService(config)
        try:
            service.load()  # raises when the model cannot be loaded: the replica never becomes ready
        except Exception as error:  # any load error: reported as it is, then raised to Ray
            if control is not None:
                ray.get(control.report_error.remote(error))
            raise
        app = create_app(config, service)
        if control is not None:
            app.add_middleware(_Draining, drain=_ReplicaDrain(control))
        return app

    @serve.ingress(asgi_app)
    class BgeIclEmbeddings:
        """One bge-en-icl model with its prefix caches and its own batching, behind the ``bge-icl serve`` app."""

        def check_health(self) -> None:
            replica_health(self.app)  # type: ignore[attr-defined]

        def stats(self) -> dict[str, Any]:
            return replica_stats(self.app)  # type: ignore[attr-defined]

    options = {"name": DEPLOYMENT_NAME, **deployment_options}
    made: serve.Deployment = serve.deployment(**options)(BgeIclEmbeddings)
    return made


def build_app(
    model: str = DEFAULT_MODEL, *, examples: Mapping[str, str] | None = None, **settings: Any
) -> serve.Application:
    """The Ray Serve application of ``bge-icl serve``, for ``serve.run`` (or ``serve run`` via :func:`app_builder`).

    Args:
        model: Hub id or checkpoint directory (reachable from every replica's node).
        examples: Example sets by model id: a bundled set's name or a JSON file, read here (``--examples``).
        **settings: :func:`application`'s keywords (``num_replicas``, ``num_cpus``, ``num_gpus``,
            ``autoscaling_config``, ``max_ongoing_requests``, ``deployment_options``); then
            :class:`~bge_icl_server.ServerConfig`'s fields (``served_name``, ``instruction``, ``api_key``,
            ``max_inputs``, ``max_request_bytes``, ``max_queue_rows``, ``allow_dimensions``, ...; None: its
            default); the rest are :class:`~bge_icl.options.EmbedderOptions` (``dtype``, ``batch_size``, ...).

    Raises:
        ValueError: A bad option, example set or limit (before anything is deployed); both ``num_replicas`` and
            ``autoscaling_config``.
        TypeError: An unknown option.
    """
    deploy = {name: settings.pop(name) for name in DEPLOYMENT_KEYWORDS if name in settings}
    return application(server_config(model, examples, **settings), **deploy)


def server_config(
    model: str = DEFAULT_MODEL, examples: Mapping[str, str] | None = None, **settings: Any
) -> ServerConfig:
    """The :class:`~bge_icl_server.ServerConfig` of :func:`build_app`'s ``model``, ``examples`` and ``settings``
    (its fields by name, None for their default; the rest are ``options``).

    Raises:
        ValueError: A bad example set (``examples[name]`` in the message), option or limit.
        TypeError: An unknown option.
    """
    fields = {name: settings.pop(name) for name in list(settings) if name in ServerConfig.model_fields}
    sets = {}
    for name, spec in (examples or {}).items():
        try:
            sets[name] = load_example_set(spec, fields.get("instruction"))
        except ValueError as e:
            msg = f"examples[{name!r}]: {e}"
            raise ValueError(msg) from e
    given = {name: value for name, value in fields.items() if value is not None}
    return ServerConfig(model=model, example_sets=sets, options=settings, **given)


def application(
    config: ServerConfig,
    *,
    num_replicas: int | None = None,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    autoscaling_config: Mapping[str, Any] | None = None,
    max_ongoing_requests: int = DEFAULT_MAX_ONGOING_REQUESTS,
    deployment_options: Mapping[str, Any] | None = None,
    control: Any = None,
) -> serve.Application:
    """The application serving a ready-made ``config`` (``bge-icl serve --ray`` builds one from its flags).

    Args:
        config: What each replica serves.
        num_replicas: Replicas, each one model (default 1; None with ``autoscaling_config``).
        num_cpus: CPUs per replica (default 1).
        num_gpus: GPUs per replica (default: 1 when the Ray cluster has GPUs, else 0).
        autoscaling_config: Ray Serve's autoscaling (``min_replicas``, ``max_replicas``,
            ``target_ongoing_requests``, ...), instead of a fixed ``num_replicas``.
        max_ongoing_requests: Requests a replica takes at once (its batcher merges them; default 32).
        deployment_options: Any other ``serve.deployment`` option (``health_check_period_s``, ...).
        control: As for :func:`deployment`.
    """
    if num_replicas is not None and autoscaling_config is not None:
        msg = "pass num_replicas or autoscaling_config, not both (autoscaling decides the number of replicas)"
        raise ValueError(msg)
    if num_gpus is None:
        num_gpus = 1 if ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0 else 0
    actor_options = {"num_cpus": 1 if num_cpus is None else num_cpus, "num_gpus": num_gpus}
    scaling: dict[str, Any] = (
        {"autoscaling_config": dict(autoscaling_config)}
        if autoscaling_config is not None
        else {"num_replicas": 1 if num_replicas is None else num_replicas}
    )
    extra = dict(deployment_options or {})
    extra["ray_actor_options"] = {**actor_options, **extra.get("ray_actor_options", {})}
    return deployment(config, control, max_ongoing_requests=max_ongoing_requests, **scaling, **extra).bind()


def app_builder(args: dict[str, Any]) -> serve.Application:
    """``serve run`` / a Serve config file's ``import_path: ray_bge_icl.serve:app_builder``: ``args`` are
    :func:`build_app`'s keyword arguments."""
    return build_app(**args)
