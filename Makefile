# Two commands for a newcomer: `make demo` and `make test`. Both create the virtualenv on
# first use and reuse it afterwards (the stamp file is refreshed when pyproject.toml changes).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export TF_USE_LEGACY_KERAS := 1
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: install demo test test-fast serve proto bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/shoprec demo

test: $(STAMP)
	$(BIN)/python -m pytest

# Everything but the end-to-end model training (seconds instead of minutes).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

serve: $(STAMP)
	$(BIN)/shoprec serve

# Regenerates the committed gRPC code from serving/proto/recommender.proto.
proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. serving/proto/recommender.proto

clean:
	rm -rf var
