# Two commands do all the set-up on a fresh machine:
#   make book   - create .venv if needed, install, execute every notebook on the embedded default, build the HTML book
#   make test   - create .venv if needed, install, run pytest over tests/ and --nbval over notebooks/
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.dualcam-installed
WIDGETS := book/_static/widgets
MATHJAX := book/_static/mathjax
NB_THREADS ?= 2
PYTEST_ARGS ?=

.PHONY: install book book-stored test unit nbval book-check widgets clean real-run

# Reinstall only when the pinned requirements or the package metadata change. --no-compile: byte-compiling all of
# torch's files at install time took 44 s of the 2-minute install here; Python compiles the modules it imports anyway.
$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --no-compile --upgrade pip
	$(BIN)/python -m pip install -q --no-compile -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	@touch $(STAMP)

install: $(STAMP)

# Widget JavaScript (RequireJS + the ipywidgets HTML manager) and MathJax come from the npm registry with a pinned
# lockfile and are served from book/_static, so widgets and math render with no internet.
$(WIDGETS)/embed-amd.js: book/widgets/package.json book/widgets/package-lock.json
	cd book/widgets && npm ci --no-audit --no-fund --ignore-scripts --silent
	rm -rf $(WIDGETS) $(MATHJAX)
	mkdir -p $(WIDGETS)/@jupyter-widgets/html-manager/dist $(MATHJAX)
	cp book/widgets/node_modules/requirejs/require.js $(WIDGETS)/require.js
	cp -r book/widgets/node_modules/@jupyter-widgets/html-manager/dist/. $(WIDGETS)/@jupyter-widgets/html-manager/dist/
	rm -f $(WIDGETS)/@jupyter-widgets/html-manager/dist/*.map $(WIDGETS)/@jupyter-widgets/html-manager/dist/embed.js
	cp $(WIDGETS)/@jupyter-widgets/html-manager/dist/embed-amd.js $(WIDGETS)/embed-amd.js
	cd book/widgets/node_modules/mathjax/es5 && cp -r tex-chtml.js input output ui a11y adaptors ../../../../_static/mathjax/
	# The widget CSS asks for its icon fonts relative to each page: put copies beside the pages (html_extra_path).
	rm -rf book/_extra
	for d in book notebooks; do mkdir -p book/_extra/$$d/@jupyter-widgets/html-manager/dist && \
	  cp book/widgets/node_modules/@jupyter-widgets/html-manager/dist/*.{woff2,woff,ttf,eot,svg} \
	     book/_extra/$$d/@jupyter-widgets/html-manager/dist/; done
	@touch $@

widgets: $(WIDGETS)/embed-amd.js

book: install widgets
	OMP_NUM_THREADS=$(NB_THREADS) $(BIN)/jupyter-book build . -W -n --keep-going
	@echo "Book built: _build/html/index.html"

# CI only: the same build from the stored outputs, right after `make test` has re-executed every notebook under nbval
# and checked that those outputs reproduce (executing them all a second time would double CI's longest step).
book-stored: install widgets
	sed 's/^  execute_notebooks: cache$$/  execute_notebooks: "off"/' _config.yml > _config_stored_outputs.yml
	grep -q 'execute_notebooks: "off"' _config_stored_outputs.yml
	$(BIN)/jupyter-book build . -W -n --keep-going --config _config_stored_outputs.yml
	rm -f _config_stored_outputs.yml

# The built book opened in headless Chromium: a page with a figure and a widget renders, no missing scripts.
book-check:
	$(BIN)/python scripts/check_book_render.py _build/html

unit: install
	$(BIN)/pytest tests $(PYTEST_ARGS)

nbval: install
	OMP_NUM_THREADS=$(NB_THREADS) $(BIN)/pytest --nbval --nbval-current-env --nbval-sanitize-with notebooks/nbval_sanitize.cfg notebooks $(PYTEST_ARGS)

test: install
	OMP_NUM_THREADS=$(NB_THREADS) $(BIN)/pytest tests notebooks --nbval --nbval-current-env --nbval-sanitize-with notebooks/nbval_sanitize.cfg $(PYTEST_ARGS)

clean:
	rm -rf _build $(WIDGETS) $(MATHJAX) book/_extra
