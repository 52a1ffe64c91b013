# Set-up from scratch on a fresh machine, then the job. `make test` is what CI runs (.ci/run).
VENV ?= .venv
PY := $(VENV)/bin/python
# torch 2.14.1 is the CUDA 13.0 build that lies on the development machines' disk.
TORCH_SPEC ?= torch==2.14.1
# No GPU to detect here: build the CUDA kernels for Hopper (H100/H200).
export TORCH_CUDA_ARCH_LIST ?= 9.0a
export MAX_JOBS ?= 2
NATIVE_SOURCES := CMakeLists.txt setup.py pyproject.toml $(shell find csrc -type f 2>/dev/null)

.PHONY: demo test bench build studies clean gpu-static

demo: $(VENV)/.built
	$(PY) -m lqkernels.demo

# The suite runs the CPU kernels of the best instruction set this machine has; the kernel tests then
# run again under every lower one it runs (LQK_CPU_CAPABILITY), so no dispatched path goes untested.
KERNEL_TESTS := tests/test_measures.py tests/test_measure_properties.py tests/test_selection.py \
	tests/test_sparse_linear.py tests/test_op_registration.py tests/test_cpu_dispatch.py
LOWER_CAPABILITIES = $(shell $(PY) -c "import lqkernels._C as c; print(' '.join(c.cpu_capabilities().split(',')[:-1]))")

test: $(VENV)/.built
	TRITON_INTERPRET=1 $(PY) -m pytest tests -q
	for capability in $(LOWER_CAPABILITIES); do \
	  echo "kernel tests with LQK_CPU_CAPABILITY=$$capability"; \
	  LQK_CPU_CAPABILITY=$$capability $(PY) -m pytest $(KERNEL_TESTS) -q -k "not triton" || exit 1; \
	done

bench: $(VENV)/.built
	mkdir -p out
	$(PY) -m pytest benchmarks -q --benchmark-only --benchmark-json=out/bench.json
	$(PY) benchmarks/ratios.py out/bench.json

build: $(VENV)/.built

# Static check of every GPU kernel without a GPU (registers, spills, hot-loop SASS) against
# benchmarks/gpu_static_baseline.json; needs nvcc and triton.
gpu-static: $(VENV)/.built
	$(PY) benchmarks/gpu_static.py

# The papers' numerical studies (experiments/), then docs/RESULTS.md from their tables.
studies: $(VENV)/.built
	for study in experiments/study*.py; do $(PY) $$study || exit 1; done
	$(PY) experiments/collect.py

$(VENV)/.deps:
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)" "cmake>=3.26" ninja setuptools wheel numpy
	touch $@

$(VENV)/.built: $(VENV)/.deps $(NATIVE_SOURCES)
	$(PY) -m pip install -q --no-build-isolation -e ".[test]"
	$(PY) -m lqkernels.info
	touch $@

clean:
	rm -rf build lqkernels/*.so out $(VENV)
