# relinkd — see README.md. `make run` starts the daemon on the embedded
# default configuration; `make test` installs what the tests need and runs them.

GO      ?= go
BIN     ?= bin/relinkd
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS := -X main.version=$(VERSION) -X main.commit=$(COMMIT)
PREFIX  ?= /usr/local

# Programs the tests drive: filesystems they create, lsof for parity, jq;
# mmdebstrap and systemd-nspawn boot the unit under a real systemd
# (e2e/systemd_test.go), nsenter runs commands inside that container;
# clang and llvm-strip regenerate the BPF sweep (bpf-check), which includes
# libbpf-dev's bpf_helpers.h.
TEST_TOOLS    := mkfs.ext4 mkfs.xfs mkfs.btrfs lsof jq unshare losetup python3 setfacl \
                 mmdebstrap systemd-nspawn nsenter clang llvm-strip
TEST_PACKAGES := e2fsprogs xfsprogs btrfs-progs lsof jq util-linux mount python3 acl attr \
                 mmdebstrap systemd-container clang llvm libbpf-dev

.PHONY: all build run test test-deps vet bpf-check bench install clean

all: build

build:
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/relinkd

run: build
	$(BIN) run

# Installs missing test tools through apt-get (root only; a developer
# without root gets skips with reasons instead).
test-deps:
	@missing=""; for t in $(TEST_TOOLS); do command -v $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing test tools (missing:$$missing)"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(TEST_PACKAGES) >/dev/null; \
	  else echo "missing test tools:$$missing (tests needing them will skip)"; fi; \
	fi

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }
	$(GO) vet ./...

# The BPF sweep's object and bindings are committed (go build needs no
# clang); this regenerates them and fails if they differ from the commit.
# Byte-identical with Debian 12's clang 14 (bpf2go pins -fno-ident and the
# debug prefix map; pkg/scanner/gen.go the other flags).
bpf-check:
	@command -v clang >/dev/null || { echo "bpf-check: clang missing (make test-deps)"; exit 1; }
	$(GO) generate ./pkg/scanner
	@git diff --exit-code --stat -- pkg/scanner/sweep_bpfel.go pkg/scanner/sweep_bpfel.o || \
	  { echo "bpf-check: the committed BPF object differs from what pkg/scanner/bpf/sweep.c compiles to (clang $$(clang -dumpversion))"; exit 1; }

test: test-deps vet bpf-check
	$(GO) test -race -count=1 -timeout 40m ./...

bench: build test-deps
	$(GO) run ./bench/scan
	$(GO) run ./bench/relink
	$(GO) run ./bench/daemon

install: build
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/relinkd
	install -D -m 0644 deploy/systemd/relinkd.service $(DESTDIR)/etc/systemd/system/relinkd.service
	@if [ -e $(DESTDIR)/etc/relinkd/relinkd.yaml ]; then echo "keeping existing /etc/relinkd/relinkd.yaml"; \
	else install -D -m 0644 configs/relinkd.yaml $(DESTDIR)/etc/relinkd/relinkd.yaml; fi

clean:
	rm -rf bin
