# One command for each job; each creates what it needs on a fresh clone.
#   make demo   - set up .venv and run `bge-icl demo`: the model-card example, then a small corpus through the
#                 LangChain and LlamaIndex adapters (BAAI/bge-en-icl; MODEL=path for a local checkpoint)
#   make test   - set up .venv (transformers 5.x), .venv-ref (transformers 4.57 + FlagEmbedding 1.4.2) and
#                 .venv-floor (transformers 4.46, the oldest supported); lint, type-check, run the whole suite on
#                 5.x, build the docs, then the core suite on 4.57 (with FlagICLModel parity) and on 4.46.
#   make bench-serve - many callers on one model in process (dynamic batching), then an HTTP load test of
#                 `bge-icl serve` and infinity-emb side by side (in .venv-infinity).
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
REF := .venv-ref
FLOOR := .venv-floor
INFINITY := .venv-infinity
INFINITY_EMB ?= infinity-emb[server,torch]==0.0.78
PIP_FLAGS := -q --disable-pip-version-check
MODEL ?= BAAI/bge-en-icl

.PHONY: demo demo-tiny test lint clean bench-cpu bench-prefix bench-gpu-files bench-serve

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_FLAGS) "$(TORCH)"
	$(VENV)/bin/pip install $(PIP_FLAGS) -e ".[test]"
	touch $@

$(REF)/.installed: pyproject.toml
	$(PYTHON) -m venv $(REF)
	$(REF)/bin/pip install $(PIP_FLAGS) "$(TORCH)"
	$(REF)/bin/pip install $(PIP_FLAGS) -e ".[testing,eval]" "transformers==4.57.*" "FlagEmbedding==1.4.2" "pytest>=8" "pytest-asyncio>=0.24" "hypothesis>=6.100"
	touch $@

# The oldest transformers that pyproject.toml admits: the core suite must pass there too.
$(FLOOR)/.installed: pyproject.toml
	$(PYTHON) -m venv $(FLOOR)
	$(FLOOR)/bin/pip install $(PIP_FLAGS) "$(TORCH)"
	$(FLOOR)/bin/pip install $(PIP_FLAGS) -e ".[testing]" "transformers==4.46.*" "pytest>=8" "pytest-asyncio>=0.24" "hypothesis>=6.100"
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/bge-icl demo --model "$(MODEL)"

demo-tiny: $(VENV)/.installed
	$(VENV)/bin/python -c "from bge_icl.testing import build_checkpoint; build_checkpoint('.cache/tiny-bge-icl')"
	$(VENV)/bin/bge-icl demo --model .cache/tiny-bge-icl --devices cpu

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: $(VENV)/.installed $(REF)/.installed $(FLOOR)/.installed lint
	$(VENV)/bin/python -m pytest -q
	$(VENV)/bin/mkdocs build --strict  # not -q: mkdocs 1.6 then stops counting warnings and --strict passes anyway
	$(REF)/bin/python -m pytest -q -p no:cacheprovider tests/bge_icl tests/bge_icl_cli
	$(FLOOR)/bin/python -m pytest -q -p no:cacheprovider tests/bge_icl tests/bge_icl_cli --ignore=tests/bge_icl/test_parity_flagembedding.py

# infinity-emb, for bench-serve only (never for make test): its own venv, torch pinned first (the CPU build).
# protobuf and sentencepiece: infinity's transformers needs them to load bge-en-icl's tokenizer.
$(INFINITY)/.installed:
	$(PYTHON) -m venv $(INFINITY)
	$(INFINITY)/bin/pip install $(PIP_FLAGS) "$(TORCH)"
	$(INFINITY)/bin/pip install $(PIP_FLAGS) "$(INFINITY_EMB)" protobuf sentencepiece
	touch $@

clean:
	rm -rf $(VENV) $(REF) $(FLOOR) $(INFINITY) .cache

# Records into benchmarks/results.json and redraws docs/img/benchmarks-cpu.png; update docs/benchmarks.md by hand.
bench-cpu: $(REF)/.installed $(VENV)/.installed
	$(REF)/bin/python benchmarks/bench_cpu.py --repeats 3 --record benchmarks/results.json
	$(VENV)/bin/python benchmarks/plot.py

# The shared-prefix path vs the copy path, prefix scaling (2 vs 8 examples), tokenization and peak memory, on CPU.
bench-prefix: $(VENV)/.installed
	$(VENV)/bin/python benchmarks/bench_prefix.py --repeats 3

# `bge-icl serve` under 256 requests from 32 concurrent clients (every vector checked), then infinity-emb on the same
# checkpoint and load; figures appended to benchmarks/serve-results.jsonl; update docs/benchmarks.md by hand.
bench-serve: $(VENV)/.installed $(INFINITY)/.installed
	$(VENV)/bin/python benchmarks/bench_serve.py --repeats 3 --record benchmarks/serve-results.jsonl
	$(VENV)/bin/python benchmarks/bench_serve_http.py --record benchmarks/serve-results.jsonl

# Tokenizer files for benchmarks/bench_gpu.py on a GPU machine without mistral-common (carry .cache/bench-tokenizer).
bench-gpu-files: $(VENV)/.installed
	$(VENV)/bin/python -c "from bge_icl.testing import build_tokenizer; build_tokenizer('.cache/bench-tokenizer')"
