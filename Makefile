# One command for each job; each creates what it needs on a fresh clone.
#   make demo   - set up .venv and run `bge-icl demo`: the model-card example, then a small corpus through the
#                 LangChain and LlamaIndex adapters (BAAI/bge-en-icl; MODEL=path for a local checkpoint)
#   make test   - set up .venv (transformers 5.x), .venv-ref (transformers 4.57 + FlagEmbedding 1.4.2) and
#                 .venv-floor (transformers 4.46, the oldest supported); lint, type-check, run the whole suite on
#                 5.x, build the docs, then the core suite on 4.57 (with FlagICLModel parity) and on 4.46.
#   make bench-stores - pgvector at 4,096 dimensions: recall@10 and latency of the binary-quantize recipe vs exact
#                 search, on 20,000 vectors (a bundled PostgreSQL + pgvector, started by the benchmark).
#   make bench-serve - many callers on one model in process (dynamic batching), then an HTTP load test of
#                 `bge-icl serve` and infinity-emb side by side (in .venv-infinity).
PYTHON ?= python3
TORCH ?= $(shell grep -v '^\#' locks/torch.txt)
VENV := .venv
REF := .venv-ref
FLOOR := .venv-floor
INFINITY := .venv-infinity
LATEST := .venv-latest
TOOLS := .venv-tools
MODEL ?= BAAI/bge-en-icl

# Every environment installs exact versions from its lock (locks/*.txt, made from locks/*.in by `make lock`) with uv,
# pinned here; pyproject.toml keeps the version ranges a user's pip resolves. uv reads no pip.conf, so it is given the
# find-links that pip is given (PIP_FIND_LINKS, else pip's config): where the CPU build of torch lies on these machines.
UV_VERSION := 0.13.10
UV := $(TOOLS)/bin/uv
FIND_LINKS := $(or $(PIP_FIND_LINKS),$(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null))
UV_SOURCES := $(foreach link,$(FIND_LINKS),--find-links $(link))
# Copies, not hard links into uv's cache: nltk (under llama-index-core) refuses to read a multiply-linked file.
UV_INSTALL := $(UV) pip install -q --link-mode copy
LOCK_PYTHON := 3.11
LOCKED := $(TOOLS)/bin/python locks/check.py

# A venv from a lock: torch first (locks/torch.txt), then the lock's exact versions with no resolution, then this
# package itself (editable, no dependencies), then the check that what is installed is what the lock says.
define locked_venv
	rm -rf $(1)
	$(PYTHON) -m venv $(1)
	$(UV_INSTALL) --python $(1)/bin/python $(UV_SOURCES) "$(TORCH)"
	$(UV_INSTALL) --python $(1)/bin/python $(UV_SOURCES) --no-deps -r $(2)
	$(if $(3),$(UV_INSTALL) --python $(1)/bin/python --no-deps -e .)
	$(LOCKED) $(1)/bin/python $(2)
	touch $(1)/.installed
endef

.PHONY: demo demo-tiny test lint check-locks lock lock-upgrade test-latest clean bench-cpu bench-prefix bench-gpu-files bench-serve bench-stores

$(TOOLS)/.installed:
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install -q --disable-pip-version-check "uv==$(UV_VERSION)"
	touch $@

$(VENV)/.installed: $(TOOLS)/.installed locks/test.txt locks/torch.txt pyproject.toml
	$(call locked_venv,$(VENV),locks/test.txt,editable)

$(REF)/.installed: $(TOOLS)/.installed locks/ref.txt locks/torch.txt pyproject.toml
	$(call locked_venv,$(REF),locks/ref.txt,editable)

# The oldest transformers that pyproject.toml admits: the core suite must pass there too.
$(FLOOR)/.installed: $(TOOLS)/.installed locks/floor.txt locks/torch.txt pyproject.toml
	$(call locked_venv,$(FLOOR),locks/floor.txt,editable)

# infinity-emb, for bench-serve only (never for make test): its own venv, torch pinned first (the CPU build).
$(INFINITY)/.installed: $(TOOLS)/.installed locks/infinity.txt locks/torch.txt
	$(call locked_venv,$(INFINITY),locks/infinity.txt,)

# `make lock`: bring every lock (locks/*.txt) in line with locks/*.in and pyproject.toml, keeping the versions it
# already pins where they still fit (after adding or changing a dependency). `make lock-upgrade`: the newest versions
# that fit, today. Then `make test` (it rebuilds the venvs from the new locks) before committing; docs/contributing.md.
LOCK_ENVS := test ref floor infinity
COMPILE = $(UV) pip compile -q locks/$(1).in $(UV_SOURCES) --python-version $(LOCK_PYTHON) --constraint locks/torch.txt \
	--no-emit-package torch --no-emit-package bge-icl --custom-compile-command "make lock" -o $(2)

lock: $(TOOLS)/.installed
	$(foreach env,$(LOCK_ENVS),$(call COMPILE,$(env),locks/$(env).txt) &&) true

lock-upgrade: $(TOOLS)/.installed
	$(foreach env,$(LOCK_ENVS),$(call COMPILE,$(env),locks/$(env).txt) --upgrade &&) true

# Each lock still fits pyproject.toml and its .in file (resolving again from the lock's own pins changes nothing),
# and each environment holds exactly its lock (a venv changed by hand, or a stale one, fails here).
check-locks: $(VENV)/.installed $(REF)/.installed $(FLOOR)/.installed
	$(foreach env,$(LOCK_ENVS),cp locks/$(env).txt $(TOOLS)/$(env).txt && $(call COMPILE,$(env),$(TOOLS)/$(env).txt) && \
	  { cmp -s locks/$(env).txt $(TOOLS)/$(env).txt || { echo "locks/$(env).txt is stale: run make lock"; exit 1; }; } &&) true
	$(LOCKED) $(VENV)/bin/python locks/test.txt
	$(LOCKED) $(REF)/bin/python locks/ref.txt
	$(LOCKED) $(FLOOR)/bin/python locks/floor.txt

# Drift on purpose: a throwaway venv from pyproject.toml's ranges alone (the newest of everything), then lint and the
# whole suite there. Not part of `make test`.
test-latest: $(TOOLS)/.installed
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(UV_INSTALL) --python $(LATEST)/bin/python $(UV_SOURCES) "$(TORCH)"
	$(UV_INSTALL) --python $(LATEST)/bin/python $(UV_SOURCES) -e ".[test]"
	$(LATEST)/bin/ruff check .
	$(LATEST)/bin/mypy
	$(LATEST)/bin/python -m pytest -q -p no:cacheprovider

demo: $(VENV)/.installed
	$(VENV)/bin/bge-icl demo --model "$(MODEL)"

demo-tiny: $(VENV)/.installed
	$(VENV)/bin/python -c "from bge_icl.testing import build_checkpoint; build_checkpoint('.cache/tiny-bge-icl')"
	$(VENV)/bin/bge-icl demo --model .cache/tiny-bge-icl --devices cpu

lint: $(VENV)/.installed check-locks
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: $(VENV)/.installed $(REF)/.installed $(FLOOR)/.installed lint
	$(VENV)/bin/python -m pytest -q
	$(VENV)/bin/mkdocs build --strict  # not -q: mkdocs 1.6 then stops counting warnings and --strict passes anyway
	$(REF)/bin/python -m pytest -q -p no:cacheprovider tests/bge_icl tests/bge_icl_cli
	$(FLOOR)/bin/python -m pytest -q -p no:cacheprovider tests/bge_icl tests/bge_icl_cli --ignore=tests/bge_icl/test_parity_flagembedding.py

clean:
	rm -rf $(VENV) $(REF) $(FLOOR) $(INFINITY) $(LATEST) $(TOOLS) .cache

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

# pgvector's HNSW over binary_quantize(embedding)::bit(4096) plus an exact re-rank, against exact search: recall@10 and
# latency for a few candidate counts; figures appended to benchmarks/stores-results.jsonl; update docs/benchmarks.md.
bench-stores: $(VENV)/.installed
	$(VENV)/bin/python benchmarks/bench_stores.py --record benchmarks/stores-results.jsonl

# Tokenizer files for benchmarks/bench_gpu.py on a GPU machine without mistral-common (carry .cache/bench-tokenizer).
bench-gpu-files: $(VENV)/.installed
	$(VENV)/bin/python -c "from bge_icl.testing import build_tokenizer; build_tokenizer('.cache/bench-tokenizer')"
