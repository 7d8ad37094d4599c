# The two commands of the README's quickstart, `make demo` and `make test`, set up everything
# they need by themselves (tools/setup_env.sh: .venv with torch, detectron2 and the built
# extension), skipping what is already done.
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: setup build test test-fast demo benchmark clean

setup:
	@bash tools/setup_env.sh

# The CUDA kernels are compiled wherever a CUDA toolkit exists, GPU or not (FORCE_CUDA=1).
build:
	@export CUDA_HOME=$${CUDA_HOME:-$$( [ -x /usr/local/cuda/bin/nvcc ] && echo /usr/local/cuda )}; \
	if [ -n "$$CUDA_HOME" ] && [ "$${GN_DETECTRON_CPU_ONLY:-0}" != 1 ]; then export FORCE_CUDA=$${FORCE_CUDA:-1}; fi; \
	$(PY) setup.py -q build_ext --inplace

test: setup
	$(PY) -m pytest tests $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest tests -m "not slow" $(PYTEST_ARGS)

# The main job: Mask R-CNN with GN trained and evaluated on the built-in shapes dataset, then
# pictures of its predictions and training curves.
demo: setup
	$(PY) tools/train_net.py --config-file configs/shapes/mask_rcnn_gn.yaml
	$(PY) tools/visualize.py --config-file configs/shapes/mask_rcnn_gn.yaml

# The demo's Mask R-CNN trained with GN, BN (training mode) and frozen BN at 2 images per batch,
# box and mask AP side by side (three demo-length trainings; not part of `make demo`).
.PHONY: compare
compare: setup
	$(PY) tools/compare_norms.py

benchmark: setup
	$(PY) tools/benchmark_gn.py --json output/benchmark_gn.json

clean:
	rm -rf build gn_detectron/_C*.so
