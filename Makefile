# syncnode: the entry points README names.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: test lint build fmt clean devnet interop-deps chaos adversarial bench bench-quick fuzz parity-db soak image image-test lab lab-quick

## make test: format check, clippy with -D warnings, the vendored parity-db's check and tests, then
## the whole test suite (nextest if present).
test: lint build interop-deps parity-db
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --no-fail-fast; \
	else \
		$(CARGO) test --workspace --no-fail-fast; \
	fi

## The vendored parity-db (not a workspace member): that it is the published crate plus the files
## of vendor/parity-db/patches/, then its own tests, with the dependency versions it was published
## with. db::tests::test_random is skipped: a randomized soak of 6+ minutes on 2 cores, about the
## patched code no more than the other tests are.
parity-db:
	CARGO=$(CARGO) ./scripts/parity-db-patches.sh
	CARGO_TARGET_DIR=$(CURDIR)/target/parity-db $(CARGO) test --locked \
		--manifest-path vendor/parity-db/Cargo.toml -- --skip db::tests::test_random

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## make devnet: a local testnet on 127.0.0.1 (producer, two nodes from genesis, one from a
## checkpoint that backfills); ends when all are synced with full history. DEVNET_ARGS adds flags.
## Built without incremental artifacts: a cold build is faster, and a warm one is rebuilt only
## for the workspace's own crates.
devnet:
	CARGO_INCREMENTAL=0 $(CARGO) build -p syncnode
	./target/debug/syncnode devnet $(DEVNET_ARGS)

## make adversarial: the hostile-peer scenarios of tests/hostile.rs at full size, one at a time,
## with their figures (sync time with and without hostile peers, peak RSS, bans) on stderr.
ADVERSARIAL_BLOCKS ?= 20000
adversarial: build
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		ADVERSARIAL_BLOCKS=$(ADVERSARIAL_BLOCKS) $(CARGO) nextest run -p syncnode-e2e --test hostile \
			--no-capture --test-threads 1; \
	else \
		ADVERSARIAL_BLOCKS=$(ADVERSARIAL_BLOCKS) $(CARGO) test -p syncnode-e2e --test hostile -- \
			--nocapture --test-threads 1; \
	fi

## The end-to-end tests run the real binary: build it first.
build:
	$(CARGO) build --workspace --bins

## make chaos: the crash soak: a node killed by SIGKILL 50 times (CHAOS_KILLS) at random moments
## while it syncs, backfills and feeds a subscriber; CHAOS_BLOCKS sizes the chain, CHAOS_PAYLOAD its
## blocks (1,024 bytes: in the payload files), CHAOS_SEED replays.
CHAOS_KILLS ?= 50
chaos: build
	CHAOS_KILLS=$(CHAOS_KILLS) $(CARGO) test -p syncnode-e2e --test chaos -- --nocapture

## The js-libp2p interoperability test's client packages (pinned by package-lock.json).
interop-deps:
	@if [ ! -d tests/interop/node_modules/libp2p ]; then \
		npm ci --prefix tests/interop --no-audit --no-fund; \
	fi

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean

## make bench: sync speed, memory and serving against this machine's limits, in one run (up to
## 30 min); the table goes to stdout and target/bench/ with a plot. bench-quick: smaller, < 3 min.
bench:
	CARGO=$(CARGO) ./scripts/bench.sh

bench-quick:
	CARGO=$(CARGO) ./scripts/bench.sh --quick

## make soak: a producer at 100 ms slots (SOAK_SLOT_MS), three followers and a /blocks/stream
## subscriber for SOAK_MINUTES (default 60); RSS per node per minute, the slope over the second
## half, the heads. Fails above SOAK_MAX_SLOPE_KIB (KiB/min, default 64) or when the heads differ.
soak:
	CARGO=$(CARGO) ./scripts/soak.sh

## make fuzz: each cargo-fuzz target of fuzz/ for FUZZ_SECONDS (default 600) from its seeds.
fuzz:
	CARGO=$(CARGO) ./fuzz/run.sh

## make image: the container image IMAGE (default syncnode:dev): a static binary (cargo profile
## IMAGE_PROFILE, default release) on an empty base, user 10001, a /data volume, P2P and HTTP
## ports, a health check on /status. make image-test:
## builds it, runs a seeder and two nodes from it on 127.0.0.1 and checks that they sync, turn
## healthy and stop with exit code 0 (needs a docker daemon; not part of make test).
image:
	CARGO=$(CARGO) ./scripts/image.sh

image-test:
	CARGO=$(CARGO) ./scripts/image-test.sh

## make lab: syncnode over emulated links (docs/lab.md): wan_sync from 8 seeders at 50 ms and
## 20 Mbit/s, the same with 2 hostile seeders, a 50-node network (churn, gossip, join), memory and
## load; a table on stdout and target/lab/results.json. lab-quick: every section smaller.
## Uses the release build, the one operators run (a first build takes about 11 min on 2 cores;
## why in docs/lab.md). LAB_ARGS adds flags.
lab:
	CARGO_INCREMENTAL=0 $(CARGO) build --release -p syncnode
	python3 scripts/lab.py --bin target/release/syncnode --out target/lab $(LAB_ARGS)

lab-quick:
	CARGO_INCREMENTAL=0 $(CARGO) build --release -p syncnode
	python3 scripts/lab.py --bin target/release/syncnode --out target/lab --quick $(LAB_ARGS)
