# The two commands of the README. Both set up .venv first (fast when already set up).
PY := .venv/bin/python
ARGS ?=

.PHONY: setup run lint test test-fast model
setup:
	@bash scripts/setup.sh

run: setup  ## set up, then train on the embedded default (ARGS="meta=tampo ..." adds overrides)
	$(PY) -m launch.run +experiment=introllm $(ARGS)

lint: setup  ## ruff over the whole tree (rules: pyproject.toml [tool.ruff])
	$(PY) -m ruff check .

test: setup lint  ## set up, lint, then run the whole test suite (fast tier + slow end-to-end tests)
	OMP_NUM_THREADS=1 $(PY) -m pytest $(ARGS)

test-fast: setup  ## the fast tier only (a minute or two)
	OMP_NUM_THREADS=1 $(PY) -m pytest -m "not slow" $(ARGS)

model: setup  ## build (or reuse) the embedded tiny model
	$(PY) -m launch.build_model
