"""``bge-icl serve --ray``: the server as a Ray Serve application (:mod:`ray_bge_icl.serve`), needs ``bge-icl[ray]``.

The command starts Ray (the cluster at ``$RAY_ADDRESS``, else a local one), deploys without blocking and watches
the deployment itself, so that:

- SIGTERM or Ctrl-C works at any point: while Ray starts or the replicas load, it stops the start-up and takes
  everything down; once serving, it drains (through :class:`ray_bge_icl.serve.Control`: the replicas answer new
  requests 503 with Retry-After and finish the ones in flight, for up to ``--drain-timeout`` seconds), then stops
  Serve and the local Ray, leaving no Ray process behind. A second signal skips the drain.
- A replica whose model does not load reports its own error (:class:`ray_bge_icl.serve.Control`), which the
  command words as ``bge-icl serve`` does, instead of Ray's "Failed to update the deployments".
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from bge_icl_cli.common import require
from bge_icl_cli.diagnostics import one_line
from bge_icl_cli.errors import EXIT_MODEL, EXIT_OK, CliError

APP = "bge-icl"
POLL_S = 0.25


class _Interrupted(Exception):
    """A signal arrived while a Ray call that cannot be polled (start-up, the drain) was running."""


class _Signals:
    """SIGTERM / SIGINT while ``--ray`` runs: counted; they interrupt the call in progress when it cannot be polled."""

    def __init__(self) -> None:
        self.count = 0
        self.interrupt = True

    def __call__(self, sig: int, frame: FrameType | None) -> None:
        self.count += 1
        if self.count == 1 and not self.interrupt:
            print(f"bge-icl: {signal.Signals(sig).name}: finishing the requests in flight (again to stop at once)",
                  file=sys.stderr, flush=True)  # fmt: skip
        if self.interrupt:
            raise _Interrupted

    def install(self) -> dict[int, Any]:
        """Handle both signals here; returns the handlers they had."""
        return {sig: signal.signal(sig, self) for sig in (signal.SIGINT, signal.SIGTERM)}


def run_ray(config: Any, args: argparse.Namespace, load_failure: Callable[[BaseException], CliError]) -> int:
    """Deploy ``config`` on Ray Serve and serve until a signal; ``load_failure`` words a replica's load error."""
    require("ray.serve", "bge-icl serve --ray", "ray")
    if args.replicas <= 0:
        raise CliError(f"--replicas must be positive, got {args.replicas}")
    if not args.cpus_per_replica >= 0:
        raise CliError(f"--cpus-per-replica must be a number of CPUs >= 0, got {args.cpus_per_replica:g}")
    port = args.port
    if port == 0:  # Ray's proxy binds the port itself: pick a free one
        from bge_icl_server.background import listen

        with listen(args.host, 0) as probe:
            port = probe.getsockname()[1]
    signals = _Signals()
    previous = signals.install()
    local = not os.environ.get("RAY_ADDRESS")
    control = None
    try:
        _start_ray(local, signals)
        control = _deploy(config, args, port, signals)
        if _wait_running(control, signals, load_failure):
            print(f"bge-icl: ready: {args.replicas} replica(s) on Ray", file=sys.stderr, flush=True)
            while not signals.count:
                time.sleep(POLL_S)
    except _Interrupted:
        pass
    finally:
        signals.interrupt = False  # from here on, signals are polled
        if control is not None and signals.count == 1:  # replicas may be serving, even before all are ready
            _drain(control, args.drain_timeout, signals)
        _take_down(local)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return EXIT_OK


def _start_ray(local: bool, signals: _Signals) -> None:
    import ray

    try:
        ray.init(address=None if local else os.environ["RAY_ADDRESS"], include_dashboard=False, log_to_driver=False)
    except SystemExit:  # SIGTERM meets the handler ray.init installs while it starts (it exits the process)
        raise _Interrupted from None
    except Exception as e:  # Ray raises a plain Exception when its processes do not start in time
        raise CliError(f"Ray did not start: {one_line(str(e))}") from e
    signals.install()  # again, over ray.init's


def _deploy(config: Any, args: argparse.Namespace, port: int, signals: _Signals) -> Any:
    """Start Serve and, without waiting for it, the application; returns its :class:`Control` actor."""
    from ray import serve
    from ray.exceptions import RayError

    from ray_bge_icl.serve import Control, application

    try:
        serve.start(http_options={"host": args.host, "port": port})
    except RayError as e:  # its proxy or controller did not come up (a busy machine: Ray's own timeouts)
        raise CliError(f"Ray Serve did not start: {one_line(str(e))}") from e
    shown = f"http://[{args.host}]:{port}" if ":" in args.host else f"http://{args.host}:{port}"
    print(f"bge-icl: listening on {shown} (model ids: {', '.join(config.model_ids)}); deploying {args.replicas} "
          f"replica(s) of {config.model} on Ray; GET /health answers 200 once ready", file=sys.stderr,
          flush=True)  # fmt: skip
    control = Control.options(name=f"{APP}-control").remote()  # type: ignore[attr-defined]
    app = application(config, num_replicas=args.replicas, num_cpus=args.cpus_per_replica, control=control)
    serve.run_many([serve.RunTarget(app, name=APP, route_prefix="/")], wait_for_ingress_deployment_creation=False,
                   wait_for_applications_running=False)  # fmt: skip
    signals.interrupt = False  # from here on the command polls the signals
    return control


def _wait_running(control: Any, signals: _Signals, load_failure: Callable[[BaseException], CliError]) -> bool:
    """Poll the application until it runs (True), a signal comes (False), or it fails (CliError)."""
    import ray
    from ray import serve

    while not signals.count:
        error = ray.get(control.first_error.remote())
        if error is not None:
            raise load_failure(error)
        status = serve.status().applications.get(APP)
        if status is not None and status.status == "RUNNING":
            return True
        if status is not None and status.status == "DEPLOY_FAILED":
            why = " ".join([status.message, *(d.message for d in status.deployments.values())])
            raise CliError(f"the Ray Serve application did not start: {one_line(why)}", EXIT_MODEL)
        time.sleep(POLL_S)
    return False


def _drain(control: Any, timeout: float, signals: _Signals) -> None:
    """Let the replicas finish their requests in flight (new ones get 503) for up to ``timeout`` seconds; a second
    signal ends the wait."""
    import ray

    ray.get(control.drain.remote())
    start = time.monotonic()
    while signals.count < 2 and time.monotonic() - start < timeout:
        if ray.get(control.drained.remote()):
            print(f"bge-icl: drained in {time.monotonic() - start:.1f} s", file=sys.stderr, flush=True)
            return
        time.sleep(POLL_S)
    print(f"bge-icl: stopping with requests in flight ({'a second signal' if signals.count > 1 else 'drain timeout'})",
          file=sys.stderr, flush=True)  # fmt: skip


def _take_down(local: bool) -> None:
    """Delete the application, then stop Serve and the Ray this command started (all of its processes)."""
    import ray
    from ray import serve

    if ray.is_initialized():
        if local:
            serve.shutdown()
        else:
            serve.delete(APP, _blocking=False)
    if local:
        ray.shutdown()  # also after a start-up cut short, which may have started Ray's processes already
