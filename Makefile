# storyadapter: `make demo` renders a sample story on the tiny model; `make test` runs the test suite.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= outputs/demo
# What make install installs: exactly the versions make test passed with, from requirements/lock-$(TORCH_VARIANT).txt
# (hashes checked). cpu (no NVIDIA GPU here): torch's CPU build, so a CPU machine never downloads the CUDA wheels;
# cuda: PyPI's CUDA build. The CPU build comes from a wheel folder pip is configured with (find-links), else from
# TORCH_CPU_INDEX.
TORCH_VARIANT ?= $(if $(shell command -v nvidia-smi 2>/dev/null),cuda,cpu)
PIP_WHEEL_FOLDER := $(or $(PIP_FIND_LINKS),$(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null))
TORCH_CPU_INDEX ?= $(if $(PIP_WHEEL_FOLDER),,https://download.pytorch.org/whl/cpu)
LOCK := requirements/lock-$(TORCH_VARIANT).txt

.PHONY: install lock test demo ui bench bench-gpu bench-sim bench-methods gpu-wheels slurm-demo clean

$(STAMP): pyproject.toml $(LOCK) requirements/no-deps.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --require-hashes -r $(LOCK) $(if $(and $(filter cpu,$(TORCH_VARIANT)),$(TORCH_CPU_INDEX)),--extra-index-url $(TORCH_CPU_INDEX))
	# Only open-clip-torch's CLIP vocabulary file is used; its dependencies (torchvision) would replace torch.
	$(PY) -m pip install -q --no-deps --require-hashes -r requirements/no-deps.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# Two pytest workers: most tests wait on launcher subprocesses and Ray, so two overlap well on two cores.
# --dist loadfile keeps each file's tests (module fixtures, the one Slurm queue) in one worker.
test: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -ra -n 2 --dist loadfile

# The last line: model=tiny draws noise, as the demo's gallery and first comic page say too (outputs/notice.py).
demo: install
	HF_HUB_OFFLINE=1 $(PY) -m storyadapter.launch story=office model=tiny render=tiny \
		cluster.workers=2 output_dir=$(DEMO_DIR) resume=true
	@echo "open $(DEMO_DIR)/index.html (comic pages in $(DEMO_DIR)/comic/)"
	@echo "random weights: these frames are noise; see README 'Real weights'"

# The lock files from the newest releases pyproject.toml allows (torch stays at requirements/torch-*.in's version).
# Then run make test: it reinstalls from the new lock and says whether the new set passes.
lock: install
	PY=$(PY) scripts/lock.sh

# Web UI on http://127.0.0.1:7860/ (renders go to outputs/webui/).
ui: install
	HF_HUB_OFFLINE=1 $(PY) -m storyadapter.webui

clean:
	rm -rf $(VENV) outputs multirun

# Renders the office story on the tiny model as a Slurm batch job (jobs/storyadapter.sbatch) and waits for it.
# Needs a Slurm cluster: `sudo scripts/slurm-up.sh` makes a one-node one here.
SLURM_DEMO_DIR ?= outputs/slurm-demo
slurm-demo: install
	@command -v sbatch >/dev/null || { echo "slurm-demo: sbatch not found; run scripts/slurm-up.sh (as root) first" >&2; exit 1; }
	mkdir -p $(SLURM_DEMO_DIR)
	WAIT=1 PYTHON=$(abspath $(PY)) OUTPUT=$(abspath $(SLURM_DEMO_DIR))/slurm-%j.out HF_HUB_OFFLINE=1 \
		jobs/storyadapter.sbatch story=office model=tiny render=tiny output_dir=$(abspath $(SLURM_DEMO_DIR))/render \
		|| { tail -n 30 $(SLURM_DEMO_DIR)/slurm-*.out >&2; exit 1; }
	@echo "open $(SLURM_DEMO_DIR)/render/index.html (job log: $(SLURM_DEMO_DIR)/slurm-<job id>.out)"

# Throughput benchmark (bench/throughput.py): engine vs upstream-style loop vs plain loop, cost growth with story
# length, driver overhead, and the same engine vs in-process ratio on model=flux-tiny (bench/flux.py). Results in
# bench/results/<name>.{json,md,png}. FLUX.1-dev's GPU memory per model.offload choice, counted on the meta device:
# bench/results/flux_memory.{json,md}.
bench: install
	HF_HUB_OFFLINE=1 $(PY) -m bench.throughput preset=cpu
	HF_HUB_OFFLINE=1 $(PY) -m bench.early_stop
	HF_HUB_OFFLINE=1 $(PY) -m bench.methods all
	HF_HUB_OFFLINE=1 $(PY) -m bench.story_cost
	HF_HUB_OFFLINE=1 $(PY) -m bench.flux_memory

# Full-size random-weight SDXL on a GPU (bf16, SDPA, 1024², 50 steps); needs a CUDA build of torch.
# COMPILE=1 adds torch.compile; PEAK_TFLOPS is one GPU's dense bf16 peak (H100 SXM: 989).
# PARTS picks what runs (growth,sweeps,loops,shared,flux; docs/gpu.md splits them over a GPU lease's calls); flux:
# model=flux-random, 1024², 28 steps, s/frame, share of peak and peak memory at N = 25, 100, 400 (bench/flux.py).
COMPILE ?= 0
PEAK_TFLOPS ?= 989
PARTS ?= growth,sweeps,loops,shared,flux
bench-gpu: install
	HF_HUB_OFFLINE=1 $(PY) -m bench.throughput preset=gpu peak_tflops=$(PEAK_TFLOPS) 'parts=[$(PARTS)]' \
		compile=$(if $(filter 1 true yes,$(COMPILE)),true,false)
	HF_HUB_OFFLINE=1 $(PY) -m bench.methods all --model sdxl-random --size 1024 --steps 50 --frames 8 --name methods-gpu

# Wheels the lent GPU machine lacks (diffusers, hydra, omegaconf, antlr4, ray in two parts ...) into the git-ignored
# .whl, .whl-ray1, .whl-ray2; scripts/gpu-setup.sh installs them there. Needs network to PyPI.
gpu-wheels: install
	PY=$(PY) scripts/gpu-wheels.sh

# The engine on a simulated cluster (8 nodes x 8 fake GPUs, ray.cluster_utils) with model=sim: scaling on 1-64 GPUs,
# node loss, a cluster that shrinks 8 -> 6 -> 8 nodes and one that grows 2 -> 8, no capacity, driver memory at 5,000
# frames. No torch, no GPU. Results in bench/results/sim.{json,md}. One scenario, smaller:
# python -m bench.sim only=grow_from_2 nodes=8 gpus_per_node=1 frames=96 name=sim_small (docs/benchmarks.md).
bench-sim: install
	$(PY) -m bench.sim

# Per-method cost on the tiny model (also part of `make bench`), the ID bank of the full-size model counted on the
# meta device, and how ID banks should reach the actors (object store vs re-render); see docs/methods.md.
bench-methods: install
	HF_HUB_OFFLINE=1 $(PY) -m bench.methods all
	HF_HUB_OFFLINE=1 $(PY) -m bench.csa_bank
	HF_HUB_OFFLINE=1 $(PY) -m bench.id_banks
