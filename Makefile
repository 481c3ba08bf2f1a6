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
# The package tests also need lintian (e2e/package_test.go, deploy/).
TEST_TOOLS    += lintian dpkg-deb
TEST_PACKAGES += lintian dpkg

.PHONY: all build run test test-deps vet bpf-check bench install clean release deb

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
	rm -rf bin $(DIST)

# Release build: a static binary (no cgo), paths trimmed, version and
# commit stamped, no build id, so that two builds of one commit are the
# same bytes; the tarball's entries carry SOURCE_DATE_EPOCH (the last
# commit's time by default) as their time, root as their owner, in name
# order, compressed without a timestamp.
DIST              ?= dist
ARCH              ?= $(shell $(GO) env GOARCH)
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
RELEASE_LDFLAGS   := -s -w -buildid= $(LDFLAGS)
RELEASE_NAME      := relinkd-$(VERSION)-linux-$(ARCH)
TAR_FLAGS         := --sort=name --mtime=@$(SOURCE_DATE_EPOCH) --owner=0 --group=0 --numeric-owner \
                     --format=gnu --mode=go-w,u+rw,a+rX

release:
	rm -rf $(DIST)/$(RELEASE_NAME) $(DIST)/$(RELEASE_NAME).tar.gz
	mkdir -p $(DIST)/$(RELEASE_NAME)
	CGO_ENABLED=0 GOOS=linux GOARCH=$(ARCH) $(GO) build -trimpath -buildvcs=false -ldflags "$(RELEASE_LDFLAGS)" \
	  -o $(DIST)/$(RELEASE_NAME)/relinkd ./cmd/relinkd
	cp deploy/systemd/relinkd.service configs/relinkd.yaml README.md $(DIST)/$(RELEASE_NAME)/
	@if [ -e LICENSE ]; then cp LICENSE $(DIST)/$(RELEASE_NAME)/; else echo "warning: no LICENSE file in the repository: the tarball has none"; fi
	tar $(TAR_FLAGS) -C $(DIST) -cf - $(RELEASE_NAME) | gzip -n -9 > $(DIST)/$(RELEASE_NAME).tar.gz
	cd $(DIST) && sha256sum $(RELEASE_NAME).tar.gz $(RELEASE_NAME)/relinkd > SHA256SUMS
	@cat $(DIST)/SHA256SUMS

# Debian package, built by nfpm (run from the module proxy at a pinned
# version; the binary does not depend on it) from the release binary.
# Debian versions start with a digit: a tag v1.2.3 gives 1.2.3, an
# untagged commit 0~gitCOMMIT.
NFPM           ?= $(GO) run github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.48.0
DEB_VERSION    ?= $(shell v='$(VERSION)'; case "$$v" in (v[0-9]*) echo "$${v\#v}" | tr - + ;; ([0-9]*) echo "$$v" ;; (*) echo "0~git$(COMMIT)" ;; esac)
DEB_ARCH       ?= $(ARCH)
DEB_MAINTAINER ?= relinkd maintainers <relinkd@users.noreply.github.com>
DEB            := $(DIST)/relinkd_$(DEB_VERSION)_$(DEB_ARCH).deb

deb: release
	rm -rf $(DIST)/pkg && mkdir -p $(DIST)/pkg
	cp $(DIST)/$(RELEASE_NAME)/relinkd $(DIST)/pkg/relinkd
	@# The shipped unit, with the package's binary path: nothing else changes.
	sed 's|^ExecStart=/usr/local/bin/relinkd |ExecStart=/usr/bin/relinkd |' deploy/systemd/relinkd.service > $(DIST)/pkg/relinkd.service
	grep -q '^ExecStart=/usr/bin/relinkd ' $(DIST)/pkg/relinkd.service
	deploy/debian/copyright.sh > $(DIST)/pkg/copyright
	printf 'relinkd ($(DEB_VERSION)) unstable; urgency=medium\n\n  * Built from commit $(COMMIT).\n\n -- $(DEB_MAINTAINER)  %s\n' \
	  "$$(LC_ALL=C date -u -d @$(SOURCE_DATE_EPOCH) '+%a, %d %b %Y %H:%M:%S +0000')" | gzip -n -9 > $(DIST)/pkg/changelog.gz
	gzip -n -9 < README.md > $(DIST)/pkg/README.md.gz
	cp configs/relinkd.yaml deploy/debian/postinst deploy/debian/prerm deploy/debian/postrm deploy/debian/lintian-overrides \
	  deploy/systemd/relinkd-bpf.conf $(DIST)/pkg/
	@# nfpm reads these from its environment (nfpm.yaml); they are not
	@# exported from make, so that make's own children (go test) do not
	@# inherit them.
	cd $(DIST)/pkg && DEB_LICENSE="$$($(CURDIR)/deploy/debian/copyright.sh --license)" \
	  DEB_VERSION='$(DEB_VERSION)' DEB_ARCH='$(DEB_ARCH)' DEB_MAINTAINER='$(DEB_MAINTAINER)' SOURCE_DATE_EPOCH='$(SOURCE_DATE_EPOCH)' \
	  $(NFPM) package --config $(CURDIR)/deploy/debian/nfpm.yaml --packager deb --target $(abspath $(DEB))
	cd $(DIST) && sha256sum $(notdir $(DEB)) >> SHA256SUMS
	@echo $(DEB)
