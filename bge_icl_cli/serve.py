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
# The core's batching and length options (EmbedderOptions) and the server's limits (ServerConfig), as flags: only
# their names are here. Their help and defaults are the declared ones, read when --help is formatted (so that
# building the parser imports neither torch nor the server); a flag left out keeps the declared default.
BATCHING_FLAGS = ("batch_size", "max_batch_tokens", "batch_wait_ms", "query_max_length", "passage_max_length")
LIMIT_FLAGS = ("max_inputs", "max_request_bytes", "max_queue_rows")
# The core's option names (and the server's limits) -> this subcommand's flags, for errors worded from fields.
SERVE_FLAGS: dict[str, str] = {**MODEL_FLAGS, **{name: f"--{name.replace('_', '-')}" for name in
                                                  (*BATCHING_FLAGS, *LIMIT_FLAGS, "threads")}}  # fmt: skip


def declared_help(name: str) -> str | None:
    """The doc and default of the option or limit behind flag ``name`` (None for another flag)."""
    if name == "quiet":  # the server shows no progress bar: -q quiets its log
        return "warnings only in the log (no line per request, no start-up lines)"
    if name in BATCHING_FLAGS:
        from bge_icl.options import EmbedderOptions

        field = EmbedderOptions.model_fields[name]
    elif name in LIMIT_FLAGS:
        try:
            from bge_icl_server.config import ServerConfig
        except ImportError:  # the extra is missing: the command says so when run
            return "a limit of the server (needs bge-icl[serve])"
        field = ServerConfig.model_fields[name]
    else:
        return None
    doc = " ".join((field.description or "").split())
    return doc if field.default is None else f"{doc} (default {field.default:,})"


class _DeclaredHelp(argparse.HelpFormatter):
    """Help of the core's options and the server's limits, from where they are declared."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        declared = declared_help(action.dest)
        return super()._get_help_string(action) if declared is None else declared.replace("%", "%%")


def number(text: str) -> int | float:
    """A flag's number: an int when it reads as one, else a float (the core's or the server's check judges it)."""
    try:
        return int(text)
    except ValueError:
        return float(text)


def add_serve_parser(sub: Any) -> None:
    """Register ``bge-icl serve`` on ``bge-icl``'s subcommands."""
    description = ("POST /v1/embeddings (OpenAI + NVIDIA NIM fields), GET /v1/models, /health, /metrics. "
                   "Each --examples set is a model id; the served name runs zero-shot.")
    p = sub.add_parser("serve", help="an OpenAI-compatible embeddings server (needs bge-icl[serve])",
                       description=description, formatter_class=_DeclaredHelp)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = a free one, printed at start)")
    p.add_argument("--examples", action="append", default=[], metavar="NAME=FILE|BUILTIN",
                   help="serve an example set as model id NAME: a JSON file or a bundled set (web-search); "
                        "repeatable; a bundled name alone is served under its own name")  # fmt: skip
    p.add_argument("--instruction", default=None,
                   help="task instruction of the served name's queries and of file example sets (a bundled set "
                        "brings its own); default none")  # fmt: skip
    key = p.add_mutually_exclusive_group()
    key.add_argument("--api-key", default=None,
                     help=f"require 'Authorization: Bearer KEY' on /v1/ (default: ${API_KEY_ENV}); printable ASCII, "
                          "not empty; visible to other users in the process list: prefer --api-key-file")  # fmt: skip
    key.add_argument("--api-key-file", type=Path, default=None, metavar="PATH",
                     help="read the API key from this file (its first line)")
    p.add_argument("--allow-dimensions", action="store_true",
                   help="let a request's dimensions cut the vectors below the model's dimension (the model is not "
                        "trained for shortened vectors: refused by default)")  # fmt: skip
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="let browser pages of ORIGIN call the server (CORS; '*' for any); repeatable; default none")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads for CPU work (default: torch's, one per core); set it when other processes "
                        "share the cores")  # fmt: skip
    p.add_argument("--served-name", default=None,
                   help="model id of zero-shot queries (default: the checkpoint's directory name, or the hub id)")
    for name in (*LIMIT_FLAGS, *BATCHING_FLAGS):
        p.add_argument(f"--{name.replace('_', '-')}", type=number, default=None, help="(declared)")
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
    limits = {name: getattr(args, name) for name in LIMIT_FLAGS if getattr(args, name) is not None}
    try:  # the limits are this command's own flags: checked, and worded, as the core's counts
        for name, value in {**limits, "threads": args.threads}.items():
            if value is not None:
                positive_int(name, value)
    except OptionError as e:
        raise CliError(option_words(e, SERVE_FLAGS)) from e
    try:  # ServerConfig checks the options with the core's one check (EmbedderOptions.checked)
        config = ServerConfig(
            model=args.model,
            served_name=args.served_name or "",
            example_sets=example_sets(args.examples, args.instruction),
            instruction=args.instruction,
            api_key=api_key(args),
            allow_dimensions=args.allow_dimensions,
            cors_origins=tuple(args.cors_origin),
            options=options,
            **limits,
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
    return _run(config, args.host, args.port, args.quiet, args.drain_timeout, args.threads)



def api_key(args: argparse.Namespace) -> str | None:
    """The key of ``--api-key``, ``--api-key-file`` (its first line) or ``$BGE_ICL_API_KEY``; an empty one is kept
    (an unset variable in a script), so that the config refuses it rather than serve without a key."""
    if args.api_key_file is not None:
        try:
            lines = args.api_key_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise CliError(f"--api-key-file {args.api_key_file}: cannot read it ({e})") from e
        return lines[0] if lines else ""
    return args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV)


def auth_warning(host: str, api_key: str | None) -> str | None:
    """The warning for a server that anyone on the network can call: a non-loopback ``host`` without a key."""
    if api_key is not None or host in ("127.0.0.1", "::1", "localhost") or host.startswith("127."):
        return None
    return (f"no API key, and {host} is reachable from other machines: anyone who reaches it can embed; "
            "pass --api-key-file (or $BGE_ICL_API_KEY)")


def _run(config: Any, host: str, port: int, quiet: bool, drain_timeout: float, threads: int | None = None) -> int:
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
    if threads is not None:  # after the first line (it names the URL)
        import torch

        torch.set_num_threads(threads)
        logging.getLogger("bge_icl_server").info("torch threads: %d", threads)
    warning = auth_warning(host, config.api_key)
    if warning:
        logging.getLogger("bge_icl_server").warning("%s", warning)
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
