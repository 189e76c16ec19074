# nextplay: `make demo` runs the pipeline end to end, `make test` runs the tests, `make lint` checks the imports.
# Everything is installed into .venv/ by `make venv` (idempotent; see scripts/bootstrap_venv.sh).
PY := .venv/bin/python
export SPARK_LOCAL_IP ?= 127.0.0.1
export PYSPARK_PYTHON := $(CURDIR)/.venv/bin/python
export PYTHONUNBUFFERED := 1

.PHONY: venv jars hdfs-jars browser demo lint test test-fast test-cluster test-all bench bench-quick clean wheel

venv: .venv/.nextplay-stamp jars

.venv/.nextplay-stamp: setup.py requirements/pinned.txt scripts/bootstrap_venv.sh
	bash scripts/bootstrap_venv.sh

jars: .cache/jars/.done

.cache/jars/.done: scripts/delta-jars.pom.xml
	mvn -q -f scripts/delta-jars.pom.xml dependency:copy-dependencies -Djars.dir=$(CURDIR)/.cache/jars
	touch $@

# Hadoop's in-process test cluster (HDFS), for the cluster tests only: never part of the product.
hdfs-jars: .cache/hdfs-jars/.done

.cache/hdfs-jars/.done: scripts/hdfs-minicluster.pom.xml
	mvn -q -f scripts/hdfs-minicluster.pom.xml dependency:copy-dependencies -Djars.dir=$(CURDIR)/.cache/hdfs-jars
	touch $@

# Debian's Chromium and ChromeDriver, for the test that opens the MLflow UI in a real browser
# (tests/test_mlflow_ui.py); the system browser, never a downloaded build.
browser: /usr/bin/chromedriver

# A failed install leaves that one test failing with what to run, not the whole suite unrun.
/usr/bin/chromedriver:
	-$(if $(filter 0,$(shell id -u)),,sudo) sh -c 'export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q chromium chromium-driver || { apt-get update -q && apt-get install -y -q chromium chromium-driver; }'

DEMO_SQL := SELECT user_id, rank, track_id, round(score, 3) AS score, model_version \
	FROM predictions WHERE user_id IN (SELECT DISTINCT user_id FROM predictions ORDER BY user_id LIMIT 3) \
	AND rank <= 5 ORDER BY user_id, rank

# The whole pipeline on ~1M synthetic plays, then a look at what it wrote.
demo: venv
	.venv/bin/nextplay pipeline --conf conf/local.yml --next-day
	@echo; echo '$$ .venv/bin/nextplay sql --lake lake "$(DEMO_SQL)"'
	@.venv/bin/nextplay sql --lake lake "$(DEMO_SQL)"
	@echo; echo "Open the MLflow UI on these runs:  .venv/bin/mlflow ui --backend-store-uri sqlite:///mlruns.db"
	@echo "then the run's page printed above (the experiment's runs: http://127.0.0.1:5000/#/experiments/1/runs?workflowType=machine_learning)"

# The package's import graph: stages import only earlier stages, and imports sit at the top of modules
# unless deferred for a stated reason (tests/test_imports.py; also part of `make test`).
lint: .venv/.nextplay-stamp
	$(PY) -m pytest -q tests/test_imports.py

# The full suite, slow and cluster tests included (what CI runs), in two worker processes that take a
# test file each (`--dist loadfile`: a file's shared fixtures, such as a started cluster, start once).
test: venv hdfs-jars browser
	$(PY) -m pytest -q -m "not gpu" -n 2 --dist loadfile --durations=25

# Only the fast unit and integration tests, for the edit-run loop.
test-fast: venv
	$(PY) -m pytest -q -m "not slow and not gpu"

# Only the pipeline on a real cluster (HDFS, a Spark master, two workers that share no disk).
# NEXTPLAY_CLUSTER_EVENTS=10000000 NEXTPLAY_CLUSTER_EXECUTOR_MEMORY=2g make test-cluster runs it at scale.
test-cluster: venv hdfs-jars
	$(PY) -m pytest -q -m cluster tests/cluster --durations=15

bench-quick: venv
	$(PY) -m bench.run --quick

bench: venv
	$(PY) -m bench.run

wheel: venv
	$(PY) -m pip wheel --no-deps -w dist .

clean:
	rm -rf lake mlruns.db mlartifacts checkpoints spark-warehouse data/generated bench/out
