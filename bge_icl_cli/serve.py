"""``bge-icl serve``: an OpenAI-compatible embeddings server (:mod:`bge_icl_server`, extra ``bge-icl[serve]``).

One process: FastAPI on uvicorn, the core's batching behind it. It binds 127.0.0.1 unless ``--host`` says
otherwise. SIGTERM or Ctrl-C stops accepting, lets the requests in flight finish for up to ``--drain-timeout``
seconds (the rest get 503 with Retry-After) and exits 0; a second signal exits at once
(:mod:`bge_icl_server.shutdown`). ``--ray`` is :mod:`bge_icl_cli.serve_ray`. Exit codes as for
every subcommand: 1 bad flags, a port in use or a missing extra; 2 the model cannot be loaded.

The parser imports neither the server nor torch (``bge-icl --help`` answers at once); the command imports them.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bge_icl_cli.common import devices_arg, model_options, require
from bge_icl_cli.diagnostics import MODEL_FLAGS, one_line, option_words
from bge_icl_cli.errors import EXIT_MODEL, EXIT_OK, CliError

if TYPE_CHECKING:
    from bge_icl_server import EmbeddingService, ExampleSet

API_KEY_ENV = "BGE_ICL_API_KEY"
DEFAULT_DRAIN_TIMEOUT_S = 20.0  # bge_icl_server.shutdown's (a test checks); here, --help imports no server
# Batching and length options of the core (EmbedderOptions), spelled out so that --help does not import torch;
# a test checks that each is an option of the core with this meaning. None = the core's default.
BATCHING_FLAGS = {
    "batch_size": (int, "most texts per forward pass (default: 32 on CPU; on GPU the token budget decides)"),
    "max_batch_tokens": (int, "most tokens of cost per forward pass; bounds how long a request waits behind another "
                              "one's pass (default: 4,096 on GPU, 512 on CPU)"),
    "batch_wait_ms": (float, "how long a free model may wait for more requests' rows before a pass under half its "
                             "budget (default 0: never)"),
    "query_max_length": (int, "token limit of a query, the examples not counted (default 512)"),
    "passage_max_length": (int, "token limit of a passage (default 512)"),
}
# The server's limits: ServerConfig's fields and defaults (a test checks them against bge_icl_server.config).
LIMIT_FLAGS = {
    "max_inputs": (2048, "most texts per request; more is a 413"),
    "max_request_bytes": (16 * 2**20, "largest request body in bytes; larger is a 413"),
    "max_queue_rows": (8192, "most texts of requests in flight; past it a request gets 503 with Retry-After"),
}


# The core's option names (and the server's limits) -> this subcommand's flags, for errors worded from fields.
SERVE_FLAGS: dict[str, str] = {**MODEL_FLAGS, **{name: f"--{name.replace('_', '-')}" for name in
                                                  (*BATCHING_FLAGS, *LIMIT_FLAGS)}}  # fmt: skip


def add_serve_parser(sub: Any) -> None:
    """Register ``bge-icl serve`` on ``bge-icl``'s subcommands."""
    description = ("POST /v1/embeddings (OpenAI + NVIDIA NIM fields), GET /v1/models, /health, /metrics. "
                   "Each --examples set is a model id; the served name runs zero-shot.")
    p = sub.add_parser("serve", help="an OpenAI-compatible embeddings server (needs bge-icl[serve])",
                       description=description)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = a free one, printed at start)")
    p.add_argument("--examples", action="append", default=[], metavar="NAME=FILE|BUILTIN",
                   help="serve an example set as model id NAME: a JSON file or a bundled set (web-search); "
                        "repeatable; a bundled name alone is served under its own name")  # fmt: skip
    p.add_argument("--instruction", default=None,
                   help="task instruction of the served name's queries and of file example sets (a bundled set "
                        "brings its own); default none")  # fmt: skip
    p.add_argument("--api-key", default=None,
                   help=f"require 'Authorization: Bearer KEY' on /v1/ (default: ${API_KEY_ENV})")
    p.add_argument("--served-name", default=None,
                   help="model id of zero-shot queries (default: the checkpoint's directory name, or the hub id)")
    for name, (default, doc) in LIMIT_FLAGS.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=default, help=f"{doc} (default {default:,})")
    for name, (kind, doc) in BATCHING_FLAGS.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, default=None, help=doc)
    # Shutdown and Ray (issue 28): how the server stops, and where --ray puts its replicas.
    p.add_argument("--drain-timeout", type=float, default=DEFAULT_DRAIN_TIMEOUT_S, metavar="SECONDS",
                   help="after SIGTERM or Ctrl-C, how long the requests in flight may take; the rest then get 503 "
                        f"with Retry-After (default {DEFAULT_DRAIN_TIMEOUT_S:g}); a second signal exits at "
                        "once")  # fmt: skip
    p.add_argument("--ray", action="store_true",
                   help="serve as a Ray Serve application (needs bge-icl[ray]): the cluster at $RAY_ADDRESS, else a "
                        "local one; Ray's proxy listens on --host/--port")  # fmt: skip
    p.add_argument("--replicas", type=int, default=1,
                   help="with --ray: replicas, each one model (one GPU each where the cluster has GPUs); default 1")
    p.add_argument("--cpus-per-replica", type=float, default=1.0, metavar="CPUS",
                   help="with --ray: CPUs Ray reserves for each replica (default 1; e.g. 0.5 for 3 replicas on 2 CPUs)")
    model_options(p)
    p.set_defaults(func=cmd_serve)


def example_sets(specs: list[str], instruction: str | None) -> dict[str, ExampleSet]:
    """``--examples`` values (``NAME=FILE|BUILTIN``, or a bundled set's name alone) as example sets by model id."""
    from bge_icl_server.config import load_example_set

    sets: dict[str, ExampleSet] = {}
    for spec in specs:
        name, sep, source = spec.partition("=")
        if not sep:
            name, source = Path(spec).stem, spec
        if not name.strip() or not source:
            raise CliError(f"--examples {spec!r}: expected NAME=FILE or NAME=BUILTIN (e.g. search=web-search)")
        if name in sets:
            raise CliError(f"--examples: the model id {name!r} is given twice")
        try:
            sets[name] = load_example_set(source, instruction)
        except ValueError as e:
            raise CliError(f"--examples {spec}: {e}") from e
    return sets


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the server until SIGTERM or Ctrl-C (then finish the requests in flight, exit 0)."""
    for module in ("fastapi", "uvicorn", "prometheus_client"):
        require(module, "bge-icl serve", "serve")
    from pydantic import ValidationError

    from bge_icl.errors import OptionError
    from bge_icl.options import option_errors, positive_int
    from bge_icl_server.config import ServerConfig

    options: dict[str, Any] = {"devices": devices_arg(args.devices), "dtype": args.dtype}
    options.update({name: getattr(args, name) for name in BATCHING_FLAGS if getattr(args, name) is not None})
    try:  # the limits are this command's own flags: checked, and worded, as the core's counts
        for name in LIMIT_FLAGS:
            positive_int(name, getattr(args, name))
    except OptionError as e:
        raise CliError(option_words(e, SERVE_FLAGS)) from e
    try:  # ServerConfig checks the options with the core's one check (EmbedderOptions.checked)
        config = ServerConfig(
            model=args.model,
            served_name=args.served_name or "",
            example_sets=example_sets(args.examples, args.instruction),
            instruction=args.instruction,
            api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
            options=options,
            **{name: getattr(args, name) for name in LIMIT_FLAGS},
        )
    except OptionError as e:  # a type error passes through pydantic as it was raised
        raise CliError(option_words(e, SERVE_FLAGS)) from e
    except ValidationError as e:  # each error's cause: an OptionError worded from its fields
        words = [option_words(c, SERVE_FLAGS) if isinstance(c, OptionError) else one_line(str(c))
                 for c in option_errors(e)]  # fmt: skip
        raise CliError("; ".join(words) or one_line(str(e))) from e
    except ValueError as e:
        raise CliError(one_line(str(e))) from e
    if not args.drain_timeout > 0:
        raise CliError(f"--drain-timeout must be a positive number of seconds, got {args.drain_timeout:g}")
    if args.ray:
        from bge_icl_cli.serve_ray import run_ray

        return run_ray(config, args, load_failure)
    if args.replicas != 1 or args.cpus_per_replica != 1:
        raise CliError("--replicas and --cpus-per-replica need --ray (one process serves one model; see --devices "
                       "for several GPUs)")  # fmt: skip
    return _run(config, args.host, args.port, args.quiet, args.drain_timeout)


def _run(config: Any, host: str, port: int, quiet: bool, drain_timeout: float) -> int:
    from bge_icl_server.app import create_app
    from bge_icl_server.background import listen, url_of
    from bge_icl_server.shutdown import DrainingServer

    try:
        sock = listen(host, port)
    except OSError as e:
        raise CliError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip
    app = create_app(config)
    service: EmbeddingService = app.state.service
    server = DrainingServer(app, drain_timeout)
    print(f"bge-icl: listening on {url_of(sock)} (model ids: {', '.join(config.model_ids)}); loading "
          f"{config.model}; GET /health answers 200 once ready", file=sys.stderr, flush=True)  # fmt: skip
    asyncio.run(_serve(server, service, sock))
    if service.state == "failed":
        raise load_failure(service.error)
    return EXIT_OK


def load_failure(error: BaseException | None) -> CliError:
    """The command's error for a model that did not load (exit 2 where the checkpoint cannot be read)."""
    from bge_icl.errors import OptionError

    text = option_words(error, SERVE_FLAGS) if isinstance(error, OptionError) else one_line(str(error))
    if isinstance(error, OSError):
        return CliError(f"{text} Or pass --model PATH to a local checkpoint directory.", EXIT_MODEL)
    return CliError(text)


async def _serve(server: Any, service: EmbeddingService, sock: Any) -> None:
    async def stop_if_the_model_fails() -> None:
        while service.state in ("new", "loading"):
            await asyncio.sleep(0.1)
        if service.state == "failed":
            server.should_exit = True

    watcher = asyncio.create_task(stop_if_the_model_fails())
    try:
        await server.serve(sockets=[sock])
    finally:
        watcher.cancel()
