VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: study demo test bench lint gpu-prepare

$(STAMP): pyproject.toml constraints-dev.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints-dev.txt -e ".[test]"
	touch $(STAMP)

study: $(STAMP)
	for s in init drift agreement; do $(VENV)/bin/ntkcheck study $$s --preset quick --out runs/quick || exit 1; done

demo: $(STAMP)
	$(VENV)/bin/ntkcheck demo

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m pip install --quiet -c constraints-dev.txt -e ".[lint]"
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy ntkcheck

bench: $(STAMP)
	$(PY) benchmarks/cpu_kernels.py

gpu-prepare: $(STAMP)
	$(PY) benchmarks/gpu_session.py prepare
