# Thin wrapper over CMake + Ninja. The two commands a newcomer needs:
#   make run    install build deps, build, start taskstreamd with a demo setup
#   make test   install test deps, build (plain, ASan+UBSan, TSan), run the suite
#   make bench  install nginx + nchan, build, run the benchmarks side by side and
#               write docs/performance.md (BENCH_ARGS="..." passes options to bench/run.py)
#   make install  install what `make build` built under PREFIX (/usr/local),
#                 DESTDIR honoured; `make build` itself never installs packages
BUILD ?= build
CC ?= gcc
JOBS ?= $(shell nproc)

.PHONY: all deps build install run test test-plain test-asan test-tsan docs clean format bench fuzz

all: build

deps:
	@scripts/deps.sh build

build:
	@cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

# The demo allow-list of command tasks and the demo ticker (both off by
# default in taskstreamd); `make run COMMANDS_FILE=` runs without commands.
COMMANDS_FILE ?= examples/commands.json
KINDS ?= ticker,command

run: deps build
	KINDS="$(KINDS)" COMMANDS_FILE="$(COMMANDS_FILE)" $(BUILD)/taskstreamd $(RUN_ARGS)

PREFIX ?= /usr/local
install: build
	cmake --install $(BUILD) --prefix $(PREFIX)

docs: build
	$(BUILD)/taskstreamd --help-markdown > docs/configuration.md

test:
	@scripts/deps.sh test
	$(MAKE) test-plain test-asan test-tsan

# gcc, -Werror, the whole suite.
test-plain:
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER=gcc >/dev/null
	cmake --build $(BUILD) -j $(JOBS)
	cd $(BUILD) && ctest --output-on-failure -j 2

# clang with ASan+UBSan, the whole suite.
test-asan:
	cmake -S . -B $(BUILD)-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DCMAKE_C_COMPILER=clang \
		-DSANITIZE=address,undefined >/dev/null
	cmake --build $(BUILD)-asan -j $(JOBS)
	cd $(BUILD)-asan && ctest --output-on-failure -j 2

# clang with TSan, the threaded tests (unit and e2e).
test-tsan:
	cmake -S . -B $(BUILD)-tsan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DCMAKE_C_COMPILER=clang \
		-DSANITIZE=thread >/dev/null
	cmake --build $(BUILD)-tsan -j $(JOBS)
	cd $(BUILD)-tsan && ctest --output-on-failure -j 2 -L threaded

# libFuzzer on every parser (tests/fuzz), FUZZ_SECONDS each (clang only). New
# inputs go to $(BUILD)-fuzz/corpus/<target>, seeded from tests/fuzz/corpus;
# a crash leaves crash-* in $(BUILD)-fuzz and stops the run.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS = task_request commands_file last_event_id config sse_roundtrip http_head token
fuzz:
	cmake -S . -B $(BUILD)-fuzz -G Ninja -DCMAKE_BUILD_TYPE=Debug -DCMAKE_C_COMPILER=clang \
		-DFUZZ=ON >/dev/null
	cmake --build $(BUILD)-fuzz -j $(JOBS) $(addprefix --target fuzz_,$(FUZZ_TARGETS))
	set -e; for t in $(FUZZ_TARGETS); do \
		mkdir -p $(BUILD)-fuzz/corpus/$$t; \
		echo "== fuzz_$$t for $(FUZZ_SECONDS)s"; \
		$(BUILD)-fuzz/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -max_len=4096 -print_final_stats=1 \
			-dict=tests/fuzz/taskstream.dict -artifact_prefix=$(BUILD)-fuzz/ \
			$(BUILD)-fuzz/corpus/$$t tests/fuzz/corpus/$$t; \
	done

# The benchmarks of docs/performance.md (bench/run.py; three to four minutes,
# needs the machine to itself for figures worth keeping).
bench:
	@scripts/deps.sh bench
	@cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	@cmake --build $(BUILD) -j $(JOBS) --target taskstreamd sseload floor
	python3 bench/run.py --taskstreamd $(BUILD)/taskstreamd --sseload $(BUILD)/sseload \
		--write docs/performance.md $(BENCH_ARGS)

clean:
	rm -rf $(BUILD) $(BUILD)-asan $(BUILD)-tsan $(BUILD)-fuzz

format:
	clang-format -i src/*.c src/*.h include/*.h tests/unit/*.c tests/fuzz/*.c examples/*.c bench/*.c
