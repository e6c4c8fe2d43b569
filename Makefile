VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench

$(STAMP): pyproject.toml constraints-dev.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints-dev.txt -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ntkcheck demo

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/cpu_kernels.py
