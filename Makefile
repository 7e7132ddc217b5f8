# kubetrain: `make run` trains the example job on this machine, `make test` runs every test.
# Both start by creating the Python environment (.venv) if it is missing or out of date.

VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
JOB ?= examples/mnist.yaml

.PHONY: install run test lint demo tools bench bench-serving bench-operator bench-storage bench-trials clean

## install: a .venv with the `kubetrain` command, TensorFlow CPU and the test tools
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	# -P: the project's own operator/ package must not shadow the standard library's `operator`
	# (on some builds of Python 3.11, `python3 -m venv` run here fails on it).
	$(PYTHON) -P -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[train,operator,dev]"
	# tf-keras without its dependencies: they would pull the full GPU `tensorflow` wheel.
	$(BIN)/pip install --quiet --no-deps "tf-keras==2.21.*"
	# TF Serving's protos for the model server's gRPC API, without the full `tensorflow` they
	# require (tensorflow-cpu provides it).
	$(BIN)/pip install --quiet --no-deps "tensorflow-serving-api==2.21.*"
	touch $@

## run: train the example TrainingJob with local worker processes and export the best model
run: install
	$(BIN)/kubetrain run $(JOB) $(ARGS)

## test: lint, then every test. The Kubernetes tests start the local cluster and build the
## images into it (or use the cluster KUBECONFIG names); PYTEST_ARGS='-m "not cluster"' skips
## them, and with them the cluster and image builds.
test: install
	$(BIN)/ruff check .
	# PYTHONSAFEPATH: the tests' `python -m ...` processes start here, where operator/ would
	# shadow the standard library's module of that name.
	PYTHONSAFEPATH=1 $(BIN)/pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

## demo: the local cluster, the images, the chart, the MNIST job trained and promoted, and
## a prediction through the serving Service
demo:
	hack/demo.sh

## tools: pinned helm, kubectl and kubeconform under ~/.cache/kubetrain/tools
tools:
	hack/tools/install.sh

## bench: accuracy and throughput on the real data in ../shared/data
bench: install
	$(BIN)/python bench/trainer_accuracy.py

bench-serving: install
	$(BIN)/python bench/serving_batching.py

bench-operator: install
	$(BIN)/python bench/operator_reconcile.py

bench-trials: install
	$(BIN)/python bench/trials_search.py

bench-storage: install
	$(BIN)/python bench/object_storage.py

clean:
	rm -rf runs .pytest_cache

include hack/cluster/cluster.mk
