# ppvae: the two quickstart commands are `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# pip on this machine refuses newer builds; pin them so every install is the same
PINS := torch==2.14.1 torchvision==0.29.1
DEMO := runs/demo

.PHONY: install demo test notebooks lint clean assignment docs docs-check wheel-check graphviz

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(PINS) -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/ppvae train --dataset digits --out $(DEMO) --overwrite
	@echo "demo outputs are in $(DEMO)/ (config.json, history.csv, metrics.csv, *.png)"

# the notebooks run in their smoke mode here (PPVAE_SMOKE); `make notebooks` runs them in full
test: install lint graphviz
	PPVAE_SMOKE=1 $(BIN)/python -m pytest -q tests $(wildcard notebooks/*.ipynb) --nbmake

# every notebook top to bottom at full size: about 5 minutes on 2 idle cores, an hour per cell
# allowed for a busy machine
notebooks: install graphviz
	env -u CI -u PPVAE_SMOKE $(BIN)/python -m pytest -q $(wildcard notebooks/*.ipynb) \
		--nbmake --nbmake-timeout=3600

# the coursework (notebooks/assignments/, otter-assign format): the student notebook (solutions
# and hidden tests stripped) and the autograder zip; grade a submission with
# `$(BIN)/otter run -a $(ASSIGNMENT_OUT)/autograder/*.zip SUBMISSION.ipynb`
ASSIGNMENT := notebooks/assignments/vae_em_assignment.ipynb
ASSIGNMENT_OUT := build/assignment
assignment: install
	rm -rf $(ASSIGNMENT_OUT)
	$(BIN)/otter assign $(ASSIGNMENT) $(ASSIGNMENT_OUT)
	@echo "student notebook: $(ASSIGNMENT_OUT)/student/; autograder: $(ASSIGNMENT_OUT)/autograder/"

# Graphviz's dot (the diagrams in the tests and notebooks): Debian's package when missing and
# root; else one line saying how to install it
graphviz:
	@.ci/graphviz

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) runs site dist docs/_generated

# the documentation site in site/html: the README's guide, the notebooks with the outputs of
# their smoke mode (executed here; a notebook unchanged since is reused), the API reference;
# strict: a warning, a broken cross-reference or a public name without a docstring fails
DOCS := site/html
DOCS_STAMP := $(VENV)/.installed-docs

$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet $(PINS) -e ".[dev,docs]"
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	$(BIN)/python -m sphinx -W --keep-going -n -q -E -b html docs $(DOCS)
	@echo "the site is in $(DOCS)/ (open $(DOCS)/index.html)"

# the built site in headless Chromium (apt-get install chromium chromium-driver)
docs-check: docs
	$(BIN)/python docs/browser_check.py $(DOCS)

# the wheel installed into a fresh venv outside the source tree, and used there
wheel-check: $(DOCS_STAMP)
	PYTHON=$(PYTHON) .ci/wheel-check
