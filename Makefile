# Ghost Tracks: `make demo` runs the whole pipeline on a built-in sample,
# `make test` runs the test suite. Both create and fill .venv themselves.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cksum < requirements.txt | cut -d' ' -f1)
DEMO   ?= demo

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	rm -f $(VENV)/.installed-* && touch $(STAMP)

demo: $(STAMP)
	mkdir -p $(DEMO)
	$(PY) make_sample.py -o $(DEMO)/sample.root --tracks 200000 --track matching --seed 1
	$(PY) make_dataset.py -f $(DEMO)/sample.root --output $(DEMO)/dataset --track matching \
		--plot --plots-dir $(DEMO)/plots/features
	$(PY) training.py -f $(DEMO)/dataset -n 4 --epochs 8 --save --int8 --baseline \
		--output-dir $(DEMO)/model --path $(DEMO)/ray_results
	$(PY) make_sample.py -o $(DEMO)/fresh.root --tracks 200000 --track matching --seed 2
	$(PY) inference.py -f $(DEMO)/fresh.root --model $(DEMO)/model/ghost_model.onnx \
		--compare $(DEMO)/model/ghost_model_int8.onnx --ranking \
		--plots-dir $(DEMO)/plots/analysis --output $(DEMO)/fresh_ghost_prob.root
	@echo "demo done: the headline above is the network on a fresh file; the one page to"
	@echo "open is $(DEMO)/plots/analysis/index.html (the training report and the features"
	@echo "are in $(DEMO)/model/training_report/ and $(DEMO)/plots/features/)"

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -n 3 tests

bench: $(STAMP)
	bash bench/run_all.sh

clean:
	rm -rf $(DEMO) .pytest_cache
