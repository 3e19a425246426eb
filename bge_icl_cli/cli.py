"""``bge-icl``: the command line (``bge-icl demo | embed | search | evaluate | serve``, also ``python -m bge_icl_cli``).

Exit codes: 0 success; 1 bad input or usage (missing file, bad JSON, unknown option or example set, a
missing optional dependency); 2 the model cannot be loaded; 130 interrupted. Usage and input errors are one
line on stderr, never a traceback.

The LangChain and LlamaIndex adapters (and ``langchain-text-splitters``) are imported only inside the
subcommands that use them, so ``bge-icl embed`` works with the core install alone. torch and numpy are
imported only once a command runs, so ``--help`` and usage errors answer at once, and Ctrl-C at any
point exits 130 without a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from bge_icl.choices import DEFAULT_PRECISION, PRECISIONS
from bge_icl.kinds import kind_of
from bge_icl.prompts import WEB_SEARCH_INSTRUCTION
from bge_icl_cli.calibration import check_width, plan_calibration, quantize_run
from bge_icl_cli.common import (
    batching_options,
    data_file,
    load_embedder,
    load_examples,
    model_options,
    prompt_options,
    require,
)
from bge_icl_cli.diagnostics import EMBED_FLAGS, MODEL_FLAGS, Flags, report_warnings
from bge_icl_cli.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, CliError
from bge_icl_cli.evaluate import add_evaluate_parser
from bge_icl_cli.files import check_output, jsonl_records, read_text, split_lines
from bge_icl_cli.serve import add_serve_parser

if TYPE_CHECKING:
    import numpy as np


SEARCH_SUFFIXES = (".txt", ".md")
INPUT_SUFFIXES = (".txt", ".jsonl")
# Folders `search` skips unless --include-hidden: hidden ones (a leading dot) and these dependency/build folders.
SKIPPED_FOLDERS = frozenset({"node_modules", "venv", "env", "site-packages", "__pycache__", "build", "dist"})


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors exit 1 (2 is kept for 'model cannot be loaded')."""

    def error(self, message: str) -> NoReturn:
        raise CliError(f"{message} (see {self.prog} --help)")


# -- bundled data ---------------------------------------------------------------------------------


def sample_corpus() -> list[dict[str, str]]:
    """The demo's bundled passages: ``[{"id": ..., "text": ...}, ...]``."""
    text = data_file("sample_corpus.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in split_lines(text) if line.strip()]


def input_format(path_str: str, given: str | None = None) -> str:
    """``"txt"`` or ``"jsonl"``: ``given`` (``--format``), else the file's suffix in any case; stdin is txt."""
    if given is not None:
        return given
    if path_str == "-":
        return "txt"
    suffix = Path(path_str).suffix.lower()
    if suffix not in INPUT_SUFFIXES:
        raise CliError(f"input {path_str} must be a .txt (one text per line) or .jsonl file, or pass --format")
    return suffix.removeprefix(".")


def read_texts(path_str: str, field: str = "text", fmt: str | None = None) -> tuple[list[str], list[Any]]:
    """Texts and ids from a ``.txt`` (one text per non-blank line) or ``.jsonl`` (``field`` of each record) file.

    ``-`` reads standard input. Lines end at ``"\\n"`` only (:func:`~bge_icl_cli.files.split_lines`). Ids are a JSONL
    record's ``id`` when it has one, else the 1-based line number.
    """
    kind = input_format(path_str, fmt)
    text = read_text(path_str)
    where = "stdin" if path_str == "-" else path_str
    texts: list[str] = []
    ids: list[Any] = []
    if kind == "txt":
        numbered = [(n, line) for n, line in enumerate(split_lines(text), start=1) if line.strip()]
        return [line for _, line in numbered] or _no_texts(where), [n for n, _ in numbered]
    for number, record in jsonl_records(text, where):
        if field not in record:
            fields = ", ".join(sorted(record)) or "none"
            raise CliError(f"{where} line {number} has no field {field!r} (fields: {fields}); use --field NAME")
        if not isinstance(record[field], str):
            kind_name = type(record[field]).__name__
            raise CliError(f"{where} line {number}: field {field!r} is {kind_name}, expected a string")
        texts.append(record[field])
        ids.append(record.get("id", number))
    return texts or _no_texts(where), ids


def _no_texts(where: str) -> NoReturn:
    raise CliError(f"{where} has no texts")


def write_vectors(path: Path, ids: Sequence[Any], vectors: np.ndarray) -> None:
    """``.npy``: the (N, dim) matrix in its dtype (float32, or int8/uint8 with ``--precision``); ``.jsonl``:
    ``{"id": ..., "vector": [...]}`` per line."""
    import numpy as np

    if path.suffix == ".npy":
        np.save(path, vectors if vectors.dtype in (np.int8, np.uint8) else vectors.astype(np.float32, copy=False))
        return
    with path.open("w", encoding="utf-8") as f:
        for i, row in zip(ids, vectors, strict=True):
            f.write(json.dumps({"id": i, "vector": row.tolist()}) + "\n")


# -- the model --------------------------------------------------------------------------------------


def _encode_reporting_truncation(
    encode: Callable[[list[str]], Any], texts: list[str], flags: Flags, ids: Sequence[Any] | None = None
) -> np.ndarray:
    """Run ``encode``; report each warning as one stderr line (truncation in the subcommand's flags), then, when
    something was cut, how many texts in all."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vectors = encode(texts)
    truncated = report_warnings(caught, flags, ids)
    if truncated:
        print(f"bge-icl: {truncated} of {len(texts)} texts truncated", file=sys.stderr)
    return vectors


def _snippet(text: str, width: int = 80) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


# -- subcommands -------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    """The model card's 2x2 similarity matrix, then top-3 hits on the sample corpus from both adapters."""
    from bge_icl.quickstart import DOCUMENTS, EXAMPLES, QUERIES

    lc_vectorstores = require("langchain_core.vectorstores", "bge-icl demo", "all")
    lc = require("langchain_bge_icl", "bge-icl demo", "all")
    li_core = require("llama_index.core", "bge-icl demo", "all")
    li_schema = require("llama_index.core.schema", "bge-icl demo", "all")
    li = require("llamaindex_bge_icl", "bge-icl demo", "all")

    core = load_embedder(args, examples_for_task=EXAMPLES, query_instruction_for_retrieval=WEB_SEARCH_INSTRUCTION)
    print(f"model: {args.model} ({core.device}, {str(core.torch_dtype).removeprefix('torch.')}, dim {core.dimension})")
    sim = core.encode_queries(QUERIES) @ core.encode_corpus(DOCUMENTS).T  # (2, 2)
    print("model card example: query x passage cosine similarity")
    for query, row in zip(QUERIES, sim, strict=True):
        print(f"  {query!r:42} " + "  ".join(f"{s:.4f}" for s in row))
    print("  (with the real BAAI/bge-en-icl weights the model card shows [[0.6064, 0.302], [0.257, 0.5366]])")

    corpus = sample_corpus()
    texts, ids = [p["text"] for p in corpus], [p["id"] for p in corpus]
    lc_embed = lc.BgeIclEmbeddings.from_embedder(core)
    store = lc_vectorstores.InMemoryVectorStore.from_texts(texts, embedding=lc_embed, ids=ids)
    li_embed = li.BgeIclEmbedding.from_embedder(core)
    nodes = [li_schema.TextNode(text=t, id_=i) for t, i in zip(texts, ids, strict=True)]
    index = li_core.VectorStoreIndex(nodes, embed_model=li_embed)
    retriever = index.as_retriever(similarity_top_k=3)

    print(f"\nsample corpus: {len(texts)} passages, top 3 per query")
    agree = True
    for query in QUERIES:
        lc_hits = [(doc.id, score) for doc, score in store.similarity_search_with_score(query, k=3)]
        li_hits = [(hit.node.node_id, float(hit.score or 0.0)) for hit in retriever.retrieve(query)]
        print(f"  {query!r}")
        for name, hits in (("LangChain ", lc_hits), ("LlamaIndex", li_hits)):
            print(f"    {name}: " + ", ".join(f"{pid} ({score:.4f})" for pid, score in hits))
        agree = agree and [h[0] for h in lc_hits] == [h[0] for h in li_hits]
    print(f"LangChain and LlamaIndex agree: {'yes' if agree else 'NO'}")
    return EXIT_OK if agree else EXIT_USAGE


def cmd_embed(args: argparse.Namespace) -> int:
    """Embed a .txt/.jsonl file of queries or passages into .npy or .jsonl.

    Every check on the arguments, the input, the examples, ``-o`` and ``--calibration`` runs before the model loads.
    """
    output = check_output(args.output)
    texts, ids = read_texts(args.input, args.field, args.format)
    examples = load_examples(args.examples, args.instruction)
    kind = kind_of(args.kind)  # the command line's --kind query|corpus, in the core's words
    calibration = plan_calibration(args.precision, args.calibration, len(texts), kind)
    limit_name = "query_max_length" if kind == "queries" else "passage_max_length"
    limit = {} if args.max_length is None else {limit_name: args.max_length}
    emb = load_embedder(
        args,
        examples_for_task=examples,
        query_instruction_for_retrieval=args.instruction,
        show_progress=True,  # --quiet turns it off (load_embedder)
        batch_size=args.batch_size,
        **limit,
    )
    check_width(calibration, emb.dimension)
    encode = emb.encode_queries if kind == "queries" else emb.encode_corpus
    vectors = quantize_run(calibration, _encode_reporting_truncation(encode, texts, args.flags, ids))
    write_vectors(output, ids, vectors)
    print(f"wrote {vectors.shape[0]} x {vectors.shape[1]} {args.kind} vectors ({args.precision}) to {output}")
    return EXIT_OK


def _skipped(folder: Path, include_hidden: bool) -> bool:
    return not include_hidden and (folder.name.startswith(".") or folder.name in SKIPPED_FOLDERS)


def search_files(paths: Sequence[str], include_hidden: bool = False) -> list[Path]:
    """The ``.txt``/``.md`` files (any case) named or under the folders named, sorted within each folder.

    Below a folder, hidden folders and dependency/build folders (:data:`SKIPPED_FOLDERS`) are skipped unless
    ``include_hidden``; a file or folder named on the command line is always read.
    """
    files: list[Path] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            for root, dirs, names in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not _skipped(Path(root) / d, include_hidden))
                hidden = lambda n: not include_hidden and n.startswith(".")  # noqa: E731
                found = (Path(root) / n for n in sorted(names) if not hidden(n))
                files.extend(f for f in found if f.suffix.lower() in SEARCH_SUFFIXES and f.is_file())
        elif path.is_file():
            if path.suffix.lower() not in SEARCH_SUFFIXES:
                raise CliError(f"{p}: search reads .txt and .md files")
            files.append(path)
        else:
            raise CliError(f"{p} does not exist")
    if not files:
        raise CliError(f"no .txt or .md files in {' '.join(paths)}")
    return files


def _read_chunks(files: list[Path], splitter: Any) -> list[tuple[Path, str]]:
    """Each readable file's chunks; unreadable ones (not UTF-8, no permission) are skipped with one warning line."""
    chunks: list[tuple[Path, str]] = []
    unreadable: list[Path] = []
    for f in files:
        try:
            text = read_text(str(f))
        except CliError:  # not UTF-8, or no permission
            unreadable.append(f)
            continue
        chunks.extend((f, chunk) for chunk in splitter.split_text("\n".join(split_lines(text))))
    if unreadable:
        named = ", ".join(str(f) for f in unreadable[:3]) + (", ..." if len(unreadable) > 3 else "")
        print(f"bge-icl: warning: skipped {len(unreadable)} unreadable file(s) (not UTF-8 text): {named}",
              file=sys.stderr)  # fmt: skip
    if not chunks:
        raise CliError(f"the files hold no text: {' '.join(str(f) for f in files)}")
    return chunks


def cmd_search(args: argparse.Namespace) -> int:
    """Chunk .txt/.md files, embed the chunks, print the top-k for the query."""
    if args.k <= 0:
        raise CliError(f"-k must be positive, got {args.k}")
    if args.chunk_size <= 0:
        raise CliError(f"--chunk-size must be positive, got {args.chunk_size}")
    if not 0 <= args.chunk_overlap < args.chunk_size:
        raise CliError(f"--chunk-overlap must be between 0 and --chunk-size - 1, got {args.chunk_overlap}")
    splitters = require("langchain_text_splitters", "bge-icl search", "langchain")
    files = search_files(args.paths, args.include_hidden)
    examples = load_examples(args.examples, args.instruction)
    splitter = splitters.RecursiveCharacterTextSplitter(chunk_size=args.chunk_size, chunk_overlap=args.chunk_overlap)
    chunks = _read_chunks(files, splitter)
    import numpy as np

    emb = load_embedder(args, examples_for_task=examples, query_instruction_for_retrieval=args.instruction)
    passages = _encode_reporting_truncation(emb.encode_corpus, [c for _, c in chunks], args.flags)  # (N, dim)
    query = emb.encode_queries([args.query])[0]  # (dim,)
    scores = passages @ query  # (N,)
    top = np.argsort(-scores, kind="stable")[: args.k]
    print(f"{len(chunks)} chunks from {len(files)} file(s); top {len(top)} for {args.query!r}:")
    for rank, i in enumerate(top, start=1):
        path, chunk = chunks[i]
        print(f"{rank:3}. {scores[i]:.4f}  {path}  {_snippet(chunk)}")
    return EXIT_OK


# -- the parser ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``bge-icl`` argument parser."""
    parser = _Parser(prog="bge-icl", description="BAAI/bge-en-icl in-context-learning embeddings.")
    sub = parser.add_subparsers(dest="command", metavar="{demo,embed,search,evaluate,serve}", required=True)

    demo = sub.add_parser("demo", help="the model card's example, then a small corpus through LangChain and LlamaIndex")
    model_options(demo)
    demo.set_defaults(func=cmd_demo, flags=MODEL_FLAGS)

    embed = sub.add_parser("embed", help="embed a .txt/.jsonl file into .npy or .jsonl")
    embed.add_argument("input", help=".txt (one text per line) or .jsonl (one object per line); - = stdin")
    embed.add_argument(
        "--format", choices=("txt", "jsonl"), default=None, help="input format (default: from the suffix; stdin: txt)"
    )
    embed.add_argument("-o", "--output", required=True, help=".npy (float32 matrix) or .jsonl (id + vector per line)")
    embed.add_argument(
        "--kind", choices=("corpus", "query"), required=True, help="passages as they are, or ICL queries"
    )
    embed.add_argument("--field", default="text", help="the text field of .jsonl records (default: text)")
    batching_options(embed, per_kind=False)
    embed.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=DEFAULT_PRECISION,
        help=f"output precision (all but {DEFAULT_PRECISION} need bge-icl[sentence-transformers]; default "
        f"{DEFAULT_PRECISION})",
    )
    embed.add_argument(
        "--calibration",
        default=None,
        help="int8/uint8 ranges (.npy content, at exactly this path): read if it exists, else written from these "
        "vectors (default: calibrate on them)",
    )
    prompt_options(embed)
    model_options(embed)
    embed.set_defaults(func=cmd_embed, flags=EMBED_FLAGS)

    search = sub.add_parser("search", help="chunk .txt/.md files and print the chunks closest to a query")
    search.add_argument("paths", nargs="+", help=".txt/.md files or folders (searched recursively)")
    search.add_argument("--query", required=True, help="the query")
    search.add_argument("-k", type=int, default=5, help="how many chunks to print (default 5)")
    search.add_argument("--chunk-size", type=int, default=1000, help="characters per chunk (default 1000)")
    search.add_argument("--chunk-overlap", type=int, default=100, help="characters shared by neighbours (default 100)")
    search.add_argument(
        "--include-hidden",
        action="store_true",
        help=f"also read hidden folders and {', '.join(sorted(SKIPPED_FOLDERS))} (skipped by default)",
    )
    prompt_options(search)
    model_options(search)
    search.set_defaults(func=cmd_search, flags=MODEL_FLAGS)

    add_evaluate_parser(sub)
    add_serve_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``bge-icl``; returns the exit code (0 ok, 1 bad input or usage, 2 model cannot be loaded, 130 Ctrl-C)."""
    try:
        args = build_parser().parse_args(argv)
        code: int = args.func(args)
    except CliError as e:
        print(f"bge-icl: error: {e}", file=sys.stderr)
        return e.code
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    except KeyboardInterrupt:
        print("bge-icl: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return code


def entry() -> NoReturn:
    """The ``bge-icl`` script: :func:`main`, then exit with its code.

    After Ctrl-C the process leaves at once with 130 (``os._exit``, output flushed): a second
    ``KeyboardInterrupt`` raised while the interpreter shuts down (torch, tokenizers) would otherwise turn the
    exit status into "killed by SIGINT".
    """
    code = main()
    if code == EXIT_INTERRUPTED:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
