# Two commands on a fresh machine: `make run` (the embedded stack and the main job) and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint lock clean stop proto bench bench-serving bench-telemetry bench-models bench-model-drift bench-quantization bench-reader chromium bench-shadow bench-background

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# MLflow, the models, the RAG corpus and the Evidently UI come up as needed, then the service runs in the
# foreground; Ctrl-C stops it and whatever this run started.
run: install
	$(BIN)/vigil up

test: install chromium
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest

# Debian's chromium for the browser tests (marker `browser`), installed with apt where this runs as root or with
# passwordless sudo; elsewhere, or when the install fails, a one-line note and those tests skip (under CI=true
# they fail: a CI machine must run them). This target itself never fails.
chromium:
	@bash scripts/install-chromium.sh || true

lint: install
	$(BIN)/ruff check .
	$(BIN)/deptry .  # every imported package declared, every declared one used
	$(BIN)/mypy
	$(BIN)/mypy bench  # scripts, not a package: checked on their own

stop: install
	$(BIN)/vigil mlflow down

# Re-resolve every dependency and write the constraints file (needs a clean venv to be exact).
lock:
	rm -rf /tmp/vigil-lock && $(PYTHON) -m venv /tmp/vigil-lock
	/tmp/vigil-lock/bin/pip install --quiet -e ".[dev]"
	/tmp/vigil-lock/bin/pip freeze --exclude-editable | sed 's/+cpu$$//' > constraints.txt

# The Open Inference Protocol stubs. Generated into a private descriptor pool: Triton's client registers the same
# `inference.*` names in the default pool, and tests and tools load both.
proto: install
	$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. service/oip/grpc_service.proto
	sed -i 's/^DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile(/POOL = _descriptor_pool.DescriptorPool()\nDESCRIPTOR = POOL.AddSerializedFile(/' service/oip/grpc_service_pb2.py
	echo 'POOL: _descriptor_pool.DescriptorPool' >> service/oip/grpc_service_pb2.pyi

bench-serving: install
	$(BIN)/vigil mlflow up
	$(BIN)/vigil train embedder --if-missing
	$(BIN)/vigil train sentiment --if-missing
	$(BIN)/python bench/serving.py --variant torch:VIGIL_MODEL_RUNTIME=torch \
		--variant uncoalesced:VIGIL_MODEL_CALLS_IN_FLIGHT=1000 --variant onnx-1-thread:VIGIL_ONNX_THREADS=1

bench-reader: install
	$(BIN)/vigil mlflow up
	$(BIN)/vigil train embedder --if-missing
	$(BIN)/vigil train reader --if-missing
	$(BIN)/python bench/reader.py

# The service while the reader trains in the background, at the lowest priority and at normal priority.
bench-background: install
	$(BIN)/vigil mlflow up
	$(BIN)/vigil train embedder --if-missing
	$(BIN)/vigil train sentiment --if-missing
	$(BIN)/python bench/background.py

bench-telemetry: install
	$(BIN)/vigil mlflow up
	$(BIN)/vigil train sentiment --if-missing
	$(BIN)/python bench/telemetry_overhead.py

# The user's own model (examples/train_tips.py, trained when missing) against `mlflow models serve`, and sentiment
# with and without two more models.
bench-models: install
	$(BIN)/vigil mlflow up
	$(BIN)/vigil train embedder --if-missing
	$(BIN)/vigil train sentiment --if-missing
	$(BIN)/python bench/models.py

bench-model-drift: install
	$(BIN)/python bench/model_drift.py

# Every request shadowed by a challenger (a copy of the champion) against none, REST at c=1 and c=32 (issue 17).
bench-shadow: install
	$(BIN)/vigil mlflow up
	$(BIN)/vigil train embedder --if-missing
	$(BIN)/vigil train sentiment --if-missing
	$(BIN)/python bench/shadow.py

# Float vs INT8 graphs of the classifier, with and without length bucketing, in process (issue 16, item 2).
bench-quantization: install
	$(BIN)/vigil mlflow up
	$(BIN)/vigil train sentiment --if-missing
	$(BIN)/python bench/quantization.py

bench: bench-serving bench-telemetry bench-models bench-model-drift bench-quantization bench-reader bench-shadow bench-background

clean:
	rm -rf $(VENV)
