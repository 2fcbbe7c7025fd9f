# The two commands a newcomer needs: `make demo` and `make test`.
# Everything is built with CMake; this file only strings the steps together.
JOBS ?= $(shell nproc)
BUILD ?= build
ASAN_BUILD ?= build-asan
TSAN_BUILD ?= build-tsan
MATRIX_BUILD ?= build-matrix
MATRIX_COMPILERS ?= gcc clang
MATRIX_TYPES ?= Release Debug RelWithDebInfo MinSizeRel
# The real guests' image (Debian's kernel and a busybox initramfs), built
# from Debian packages by scripts/guest-image.sh; the real-guest tests and
# the demo use it.
GUEST_IMAGE ?= build/vm
export MV_GUEST_IMAGE := $(abspath $(GUEST_IMAGE))
CMAKE_FLAGS ?=
# The developers' and CI's builds treat warnings as errors; a plain cmake
# build (a user's or an embedder's) does not.
WERROR := -DMV_WERROR=ON

.PHONY: all deps build build-asan build-tsan build-matrix guest-image guest-ram demo test test-fast bench clean

all: build

deps:
	@scripts/install-deps.sh

build: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo $(WERROR) $(CMAKE_FLAGS) >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

build-asan: deps
	@cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DMV_SANITIZE=ON $(WERROR) $(CMAKE_FLAGS) >/dev/null
	@cmake --build $(ASAN_BUILD) -j $(JOBS)

build-tsan: deps
	@cmake -S . -B $(TSAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DMV_TSAN=ON $(WERROR) $(CMAKE_FLAGS) >/dev/null
	@cmake --build $(TSAN_BUILD) -j $(JOBS) --target test_pod test_logdirty test_share test_share_guest test_scrub test_tmem test_races \
		test_domain test_vmm test_fc vmm_stub fc_standin memvisor_agent

# Every build type with every compiler, warnings as errors, each in its own
# directory under $(MATRIX_BUILD): optimisation levels and compilers differ in
# what they warn about.  Builds only, no tests run here.
build-matrix: deps
	@set -e; for cc in $(MATRIX_COMPILERS); do for type in $(MATRIX_TYPES); do \
		dir=$(MATRIX_BUILD)/$$cc-$$type; echo "== $$cc $$type ($$dir)"; \
		cmake -S . -B $$dir -DCMAKE_C_COMPILER=$$cc -DCMAKE_BUILD_TYPE=$$type \
			$(WERROR) $(CMAKE_FLAGS) >/dev/null; \
		cmake --build $$dir -j $(JOBS); \
	done; done; echo "build-matrix: all builds succeeded"

# Without it (no QEMU, no Debian mirror) the real-guest tests skip, saying
# why, and the demo runs built-in guests.
guest-image: deps
	@scripts/guest-image.sh $(GUEST_IMAGE) || \
		echo "memvisor: no guest image: real-guest tests will skip and the demo will use built-in guests"

# Real guests' RAM for `memvisor bench share` (six guests booted under QEMU
# with different workloads, their RAM kept as raw dumps in $(GUEST_IMAGE)/ram;
# out of the repository).  The bench captures them itself when they are
# missing; this target does it ahead of time.
guest-ram: build guest-image
	@scripts/guest-ram.sh --image $(GUEST_IMAGE) --out $(GUEST_IMAGE)/ram >/dev/null

demo: build guest-image
	@$(BUILD)/memvisor demo

# The whole suite, in the normal build and again under ASan+UBSan; the
# concurrency tests (fault service, dirty logging, sharing, scrubbing, tmem,
# races, domains, the VMM and Firecracker hand-overs) once more under TSan
# (the failure-injection table is left out: it injects one failure at a
# time rather than racing threads, and takes seven minutes there; so is the
# tmem suite's second run with the other store, whose locking is the same).
# First every build type with both compilers (build-matrix, under a
# minute on two cores), so that a warning only an optimisation level or
# only clang reports fails here rather than in a user's build.
test: build-matrix build build-asan build-tsan guest-image
	@echo "== normal build"
	@cd $(BUILD) && ctest --output-on-failure -j 1
	@echo "== ASan+UBSan build"
	@cd $(ASAN_BUILD) && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
		UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest --output-on-failure -j 1
	@echo "== TSan build (concurrency tests)"
	@cd $(TSAN_BUILD) && TSAN_OPTIONS=halt_on_error=1 \
		ctest --output-on-failure -j 1 -R '^test_(pod|logdirty|share|share_guest|scrub|tmem|races|domain|vmm|fc)\.' \
		-E '\.other_tmem_store$$'

test-fast: build
	@cd $(BUILD) && ctest --output-on-failure

bench: build
	@$(BUILD)/memvisor bench pod --json

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(TSAN_BUILD) $(MATRIX_BUILD)
