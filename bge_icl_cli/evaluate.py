"""``bge-icl evaluate``: score example sets on your own labelled queries (BEIR files), one row per set.

The inputs are BEIR's formats: ``queries.jsonl`` and ``corpus.jsonl`` with ``_id`` (or ``id``) and ``text`` per line
(a corpus line's ``title`` is put before its text with a space, as MTEB does), and a qrels TSV with a header line
and ``query-id<TAB>corpus-id<TAB>score`` rows: three files, or a BEIR dataset folder (``--data DIR``: those files
as ``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``). The metrics are :mod:`bge_icl.evaluation`'s.

What it shares with the other subcommands (errors, model options, examples, files) is in :mod:`bge_icl_cli.common`.
torch, numpy and the core's evaluation module load only when the command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

from bge_icl.prompts import WEB_SEARCH_INSTRUCTION
from bge_icl_cli.common import batching_options, load_embedder, load_examples, model_options, require
from bge_icl_cli.diagnostics import FLAGS, report_warnings
from bge_icl_cli.errors import CliError
from bge_icl_cli.files import jsonl_records, read_text, split_lines

EXAMPLES_NONE = "none"
METRIC_LABELS = {"ndcg": "nDCG", "recall": "recall", "mrr": "MRR", "map": "MAP"}
QRELS_HEADER = ("query-id", "corpus-id", "score")
DEFAULT_SPLIT = "test"
BEIR_LAYOUT = "corpus.jsonl, queries.jsonl, qrels/<split>.tsv"


def add_evaluate_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``evaluate`` subcommand to ``sub`` (the ``add_subparsers()`` object)."""
    p = sub.add_parser("evaluate", help="score example sets on your labelled queries: nDCG, recall, MRR, MAP at k")
    p.add_argument("--data", default=None, metavar="DIR", help=f"a BEIR dataset folder: {BEIR_LAYOUT}")
    p.add_argument("--split", default=None, help=f"the qrels split of --data (default {DEFAULT_SPLIT})")
    p.add_argument("--queries", default=None, help='BEIR queries .jsonl: one {"_id", "text"} object per line')
    p.add_argument("--corpus", default=None, help='BEIR corpus .jsonl: {"_id", "title"?, "text"} per line')
    p.add_argument("--qrels", default=None, help="qrels .tsv: a header line, then query-id, corpus-id, score rows")
    p.add_argument(
        "--examples",
        action="append",
        default=None,
        metavar="NAME|FILE|none",
        help="an example set to score (repeat for more): a bundled set, a JSON file, or none (zero-shot); default none",
    )
    p.add_argument("--instruction", default=WEB_SEARCH_INSTRUCTION, help="task instruction put before each query")
    p.add_argument("--k", default="1,5,10", help="cut-offs, comma-separated (default 1,5,10)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    batching_options(p, per_kind=True)
    model_options(p)
    p.set_defaults(func=cmd_evaluate, flags=FLAGS)
    return p


def beir_files(args: argparse.Namespace) -> tuple[str, str, str]:
    """(queries, corpus, qrels) paths: ``--data DIR`` (BEIR's layout, ``qrels/<--split>.tsv``), or the three flags.

    Raises:
        CliError: Both or neither given, ``--split`` without ``--data``, or a folder without the split's qrels.
    """
    given = {"--queries": args.queries, "--corpus": args.corpus, "--qrels": args.qrels}
    if args.data is None:
        if args.split is not None:
            raise CliError("--split picks qrels/<split>.tsv in --data DIR; with --qrels FILE name the file itself")
        missing = [flag for flag, value in given.items() if value is None]
        if missing:
            msg = "give --data DIR (a BEIR dataset folder) or --queries, --corpus and --qrels; missing "
            raise CliError(msg + ", ".join(missing))
        return args.queries, args.corpus, args.qrels
    if any(value is not None for value in given.values()):
        raise CliError("--data DIR replaces --queries, --corpus and --qrels; give one or the other")
    folder = Path(args.data)
    if not folder.is_dir():
        raise CliError(f"--data {args.data} is not a folder (BEIR's layout: {BEIR_LAYOUT})")
    split = args.split or DEFAULT_SPLIT
    qrels = folder / "qrels" / f"{split}.tsv"
    if not qrels.is_file():
        splits = ", ".join(sorted(f.stem for f in (folder / "qrels").glob("*.tsv"))) or "none"
        raise CliError(f"--data {args.data} has no qrels/{split}.tsv (splits there: {splits}); pick one with --split")
    return str(folder / "queries.jsonl"), str(folder / "corpus.jsonl"), str(qrels)


def parse_k(text: str, error: type[Exception]) -> tuple[int, ...]:
    """``--k``: ``"1,5,10"`` -> ``(1, 5, 10)``, sorted, without repeats."""
    try:
        ks = [int(part) for part in text.split(",")]
    except ValueError:
        ks = []
    if not ks or any(k <= 0 for k in ks):
        raise error(f"--k must be positive integers separated by commas, like 1,5,10; got {text!r}")
    return tuple(sorted(set(ks)))


def read_beir_jsonl(path: str, *, titles: bool) -> dict[str, str]:
    """id -> text of a BEIR ``.jsonl`` (``_id`` or ``id``, ``text``; with ``titles``, ``title + " " + text``)."""
    texts: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for number, record in jsonl_records(read_text(path), path):
        where = f"{path} line {number}"
        key = "_id" if "_id" in record else "id"
        ident, text = record.get(key), record.get("text")
        if isinstance(ident, bool) or not isinstance(ident, str | int):
            fields = ", ".join(sorted(record)) or "none"
            raise CliError(f'{where} has no string "_id" (fields: {fields})')
        if not isinstance(text, str):
            fields = ", ".join(sorted(record)) or "none"
            raise CliError(f'{where} has no string "text" (fields: {fields})')
        ident = str(ident)
        if ident in texts:
            raise CliError(f"{where} repeats _id {ident!r} (first on line {first_line[ident]})")
        texts[ident] = passage_text(record.get("title"), text) if titles else text
        first_line[ident] = number
    if not texts:
        raise CliError(f"{path} has no records")
    return texts


def passage_text(title: Any, text: str) -> str:
    """A BEIR passage as MTEB embeds it: ``title + " " + text`` when it has a title, stripped."""
    return f"{title} {text}".strip() if isinstance(title, str) and title else text.strip()


def read_qrels(path: str, queries: dict[str, str], corpus: dict[str, str]) -> dict[str, dict[str, int]]:
    """query id -> {doc id: grade} of a qrels TSV with a header; every id must be in ``queries`` / ``corpus``."""
    qrels: dict[str, dict[str, int]] = {}
    header_seen = False
    for number, line in enumerate(split_lines(read_text(path)), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        where = f"{path} line {number}"
        if not header_seen:
            if tuple(f.strip().lower() for f in fields) != QRELS_HEADER:
                expected = "<TAB>".join(QRELS_HEADER)
                raise CliError(f"{where} is not the header: expected {expected!r}, got {line!r}")
            header_seen = True
            continue
        if len(fields) != 3:
            raise CliError(f"{where} has {len(fields)} tab-separated fields, expected 3: query-id, corpus-id, score")
        qid, did, grade = (f.strip() for f in fields)
        try:
            value = int(grade)
        except ValueError:
            raise CliError(f"{where}: score {grade!r} is not an integer grade") from None
        if qid not in queries:
            raise CliError(f"{where}: query {qid!r} is not in {_where_ids('queries', queries)}")
        if did not in corpus:
            raise CliError(f"{where}: passage {did!r} is not in {_where_ids('corpus', corpus)}")
        if did in qrels.setdefault(qid, {}):
            raise CliError(f"{where} judges query {qid!r} / passage {did!r} a second time")
        qrels[qid][did] = value
    if not header_seen:
        raise CliError(f"{path} is empty: expected a header line, then query-id, corpus-id, score rows")
    if not qrels:
        raise CliError(f"{path} has a header but no judgments")
    return qrels


def _where_ids(name: str, ids: dict[str, str]) -> str:
    shown = ", ".join(repr(i) for i in list(ids)[:3])
    return f"the {name} ({len(ids)} ids: {shown}{', ...' if len(ids) > 3 else ''})"


def examples_to_compare(specs: list[str] | None, instruction: str) -> dict[str, Any]:
    """``--examples`` in order: name -> examples (None for ``none``)."""
    sets: dict[str, Any] = {}
    for spec in specs or [EXAMPLES_NONE]:
        if spec in sets:
            raise CliError(f"--examples {spec} is given twice")
        sets[spec] = None if spec == EXAMPLES_NONE else load_examples(spec, instruction)
    return sets


def format_table(results: dict[str, dict[str, float]], k_values: tuple[int, ...]) -> str:
    """One row per example set, one column per metric and k."""
    columns = [(f"{m}_at_{k}", f"{label}@{k}".rjust(7)) for k in k_values for m, label in METRIC_LABELS.items()]
    first = max(len("examples"), *(len(name) for name in results))
    lines = ["  ".join(["examples".ljust(first), *(label for _, label in columns)])]
    for name, scores in results.items():
        cells = (f"{scores[key]:.4f}".rjust(len(label)) for key, label in columns)
        lines.append("  ".join([name.ljust(first), *cells]))
    return "\n".join(lines)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Read the BEIR files, score each example set, print the table (or JSON)."""
    ks = parse_k(args.k, CliError)
    sets = examples_to_compare(args.examples, args.instruction)
    queries_path, corpus_path, qrels_path = beir_files(args)
    queries = read_beir_jsonl(queries_path, titles=False)
    corpus = read_beir_jsonl(corpus_path, titles=True)
    qrels = read_qrels(qrels_path, queries, corpus)
    require("pytrec_eval", "bge-icl evaluate", "eval")
    from bge_icl.evaluation import compare_example_sets

    judged = [q for q in queries if qrels.get(q)]  # read_qrels checked every id; the core checks its own rules
    unjudged = len(queries) - len(judged)
    limits = {name: getattr(args, name) for name in ("query_max_length", "passage_max_length")}
    emb = load_embedder(
        args,
        query_instruction_for_retrieval=args.instruction,
        show_progress=True,
        batch_size=args.batch_size,
        **{name: value for name, value in limits.items() if value is not None},
    )
    if unjudged:
        print(f"bge-icl: {unjudged} of {len(queries)} queries have no qrels and are not scored", file=sys.stderr)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = compare_example_sets(emb, sets, queries, corpus, qrels, ks)
    report_warnings(caught, args.flags)  # the unjudged queries were said above, from the data's fields
    if args.json:
        summary = {"queries": len(judged), "unjudged_queries": unjudged, "passages": len(corpus)}
        print(json.dumps({**summary, "k_values": list(ks), "results": results}, indent=2))
    else:
        print(f"{len(judged)} judged queries, {len(corpus)} passages; instruction: {args.instruction!r}")
        print(format_table(results, ks))
    return 0
