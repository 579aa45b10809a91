# syncnode: the entry points README names.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: test lint build fmt clean

## make test: format check, clippy with -D warnings, then the whole test suite (nextest if present).
test: lint build
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --no-fail-fast; \
	else \
		$(CARGO) test --workspace --no-fail-fast; \
	fi

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## The end-to-end tests run the real binary: build it first.
build:
	$(CARGO) build --workspace --bins

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
