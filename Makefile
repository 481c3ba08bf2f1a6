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
# (e2e/systemd_test.go), nsenter runs commands inside that container.
TEST_TOOLS    := mkfs.ext4 mkfs.xfs mkfs.btrfs lsof jq unshare losetup python3 setfacl \
                 mmdebstrap systemd-nspawn nsenter
TEST_PACKAGES := e2fsprogs xfsprogs btrfs-progs lsof jq util-linux mount python3 acl attr \
                 mmdebstrap systemd-container

.PHONY: all build run test test-deps vet bench install clean

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

test: test-deps vet
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
