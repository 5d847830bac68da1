# The two commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint setup clean fuzz

setup: $(STAMP)

$(STAMP): requirements.txt constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt -c constraints.txt
	# the library itself, editable: scripts, tests and benchmarks import it as users do
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# The embedded default: a simulated night, calibrated, registered and stacked.
run: $(STAMP)
	$(BIN)/snakemake --cores all --resources gpu=1

lint: $(STAMP)
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile rules/
	$(BIN)/ruff check scripts tests benchmarks

# Three workers on the 2 CI cores, one test file each (module fixtures run once): the workflow
# tests spend much of their time waiting on Snakemake, SLURM's status checks and apt, and a third
# worker's CPU work fills it (clean clone, 2 cores: 21:39 with two workers, 19:23 with three;
# 14:28 on 2026-12-03 with the files in their measured order: this machine's speed varies).
test: lint
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -n 3 --dist loadfile --no-loadscope-reorder --durations=20

# Coverage-guided fuzzing (atheris) of our parsers: SER, FITS headers, config, frame names.
# FUZZ_SECONDS per target; corpus, logs and crashing inputs under FUZZ_DIR.
FUZZ_SECONDS ?= 60
FUZZ_DIR ?= /tmp/astroflow-fuzz
fuzz: $(STAMP)
	$(BIN)/python tests/fuzz/run.py --seconds $(FUZZ_SECONDS) --workdir $(FUZZ_DIR)

clean:
	rm -rf results resources logs .snakemake
	find benchmarks -mindepth 1 -maxdepth 1 -type d ! -name configs -exec rm -rf {} +
