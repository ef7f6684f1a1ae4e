# ssprl_d2: every user-facing command. Each target installs what it needs first (idempotent).
PY := .venv/bin/python
SETUP := bash scripts/setup_env.sh

.PHONY: setup demo test lint bench clean-demo

setup:
	@$(SETUP)

## The main job on the bundled demo data (CPU): pre-train -> convert -> transfer, with a table.
demo: setup
	$(PY) tools/run_demo.py --output-dir output/demo

## The whole test suite (fast, CPU).
# Tiny tensors: one OpenMP thread per worker, two pytest workers (2-core CI).
test: setup
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest tests -q -ra -n 2 --durations=15

lint: setup
	$(PY) -m flake8 ssprl_d2 tools tests benchmarks

bench: setup
	$(PY) benchmarks/bench_data.py
	$(PY) benchmarks/bench_step.py
