# Thin wrapper over CMake. `make run` and `make test` work on a fresh machine.
BUILD      ?= build
ASAN_BUILD ?= build-asan
FUZZ_BUILD ?= build-fuzz
AARCH64_BUILD ?= build-aarch64
JOBS       ?= $(shell nproc)
# the bundled trained model (docs/model-card.md) when present, else a tiny random one
MODEL      ?= $(if $(wildcard models/default.gguf),models/default.gguf,models/tiny.gguf)
PROMPT     ?= The people of the United States
FUZZ_SECONDS ?= 30

.PHONY: all deps build asan fuzz test test-fast test-asan test-fuzz test-aarch64 test-slow run bench clean

all: build

deps:
	@scripts/install-deps.sh

build: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

asan: deps
	@cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DMOE_SANITIZE=ON >/dev/null
	@cmake --build $(ASAN_BUILD) -j $(JOBS)

fuzz: deps
	@CC=clang CXX=clang++ cmake -S . -B $(FUZZ_BUILD) -DCMAKE_BUILD_TYPE=Debug -DMOE_FUZZ=ON >/dev/null
	@cmake --build $(FUZZ_BUILD) -j $(JOBS) --target fuzz_all

# The whole default suite: unit + vector tests, then the sanitizer pass, then bounded fuzzing,
# then the aarch64 build (NEON kernels and the engine) under qemu.
test: test-fast test-asan test-fuzz test-aarch64

test-fast: build
	@cd $(BUILD) && ctest -LE "slow|gpu|mpi" --output-on-failure -j $(JOBS)

test-asan: asan
	@cd $(ASAN_BUILD) && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
	  ctest -L asan -LE "slow|gpu|mpi" --output-on-failure -j $(JOBS)

test-fuzz: fuzz
	@FUZZ_SECONDS=$(FUZZ_SECONDS) scripts/run-fuzz.sh $(FUZZ_BUILD)

# NEON forms against the refs, and the engine against ../shared/vectors, cross-built for aarch64
# and run under qemu user-mode emulation (scripts/test-aarch64.sh; docs/engine.md).
test-aarch64: deps
	@JOBS=$(JOBS) scripts/test-aarch64.sh $(AARCH64_BUILD)

test-slow: build
	@cd $(BUILD) && ctest -L slow --output-on-failure

# The bundled default model (trained, see docs/model-card.md); without it a tiny random model, made once.
run: build
	@test -f $(MODEL) || $(BUILD)/moe init --preset tiny --seed 1 -o $(MODEL)
	@if [ "$(MODEL)" = models/default.gguf ]; then \
	  echo "make run: $(MODEL) is the bundled 6 M-parameter MoE trained on U.S. State of the Union addresses"; \
	  echo "          (docs/model-card.md): English in the style of those speeches, not a chat assistant."; \
	else \
	  echo "make run: $(MODEL) has random weights, so the text below is noise;"; \
	  echo "          it shows the whole path working: load, tokenize, prefill, decode, sample, stream."; \
	fi
	$(BUILD)/moe run -m $(MODEL) -p "$(PROMPT)" -n 48 --seed 1

bench: build
	@test -f models/bench-v2lite-4L-q8_0.gguf || $(BUILD)/moe init --preset bench-v2lite-4L --dtype q8_0 -o models/bench-v2lite-4L-q8_0.gguf
	$(BUILD)/moe bench -m models/bench-v2lite-4L-q8_0.gguf

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(FUZZ_BUILD) $(AARCH64_BUILD)
