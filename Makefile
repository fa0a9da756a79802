# Two commands for a new user:
#   make run    set up, then run the monitor on its built-in default
#               (bundled sample audio, dashboard at http://127.0.0.1:8765/)
#   make test   set up (system packages too), then lint, type-check and run the tests
#
# GPU users: make setup TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu124"

VENV ?= .venv
PY := $(VENV)/bin/python
# CPU build of PyTorch (a bare `torch` pulls a multi-GB CUDA build).
TORCH_SPEC ?= torch==2.13.0
ARGS ?=
SYSTEM_PACKAGES := mosquitto mosquitto-clients pulseaudio pulseaudio-utils libportaudio2 \
	libasound2-plugins libsndfile1 espeak-ng sox ffmpeg chromium chromium-driver openssl
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup run test lint system-deps bench fuzz soak clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[all]"
	$(VENV)/bin/emotion-monitor convert-whisper --log-level WARNING
	touch $@

setup: $(VENV)/.installed

run: setup
	$(VENV)/bin/emotion-monitor run $(ARGS)

system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing system packages:$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

lint: setup
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: system-deps setup lint
	$(PY) -m pytest -q

bench: setup
	$(VENV)/bin/emotion-monitor bench $(ARGS)

# Every parser of outside input with 10,000 generated cases each (CI runs a few hundred).
fuzz: setup
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest -q tests/fuzz -o timeout=3600 $(ARGS)

# 24 hours of audio through the daemon with every publisher on; RSS, files, threads sampled.
soak: setup
	$(PY) tools/soak.py --hours 24 --streams 4 $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
