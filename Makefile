# Astrolabe — see README.md for the two commands a newcomer runs.
GO      ?= go
BIN     := bin/astrolabe
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
GOBIN   := $(shell $(GO) env GOPATH)/bin
FUZZTIME ?= 10s

.PHONY: all build build-vddk demo test deps lint lint-api generated web web-check unit fuzz fuzz-long clean image image-test image-boot-test image-ci

all: build

build:
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN) ./cmd/astrolabe

# With the VDDK binding (cgo; VDDK itself is loaded at run time).
build-vddk:
	CGO_ENABLED=1 $(GO) build -tags vddk -ldflags "-X main.version=$(VERSION)" -o $(BIN)-vddk ./cmd/astrolabe

# The main job on the embedded default: sample PEs in a local directory.
demo: build
	./scripts/demo.sh

# Everything CI runs: install test tools, lint, all tests, short fuzzing.
test: deps lint unit fuzz image-ci

deps:
	./scripts/install-test-deps.sh

# The VDDK binding (cgo, build tag vddk) and the code that uses it.
VDDK_PKGS := ./vddk/... ./pe/internal/... ./pe/ivd ./pe/vm

lint: generated lint-api web-check
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags vddk $(VDDK_PKGS)
	$(GOBIN)/staticcheck ./...
	$(GOBIN)/staticcheck -tags vddk $(VDDK_PKGS)

# api/openapi.yaml: no error, warning, info or hint from either linter
# (Redocly's recommended rules with warnings as errors, Spectral's OpenAPI
# rules); scripts/deps.d/openapi-lint.sh fetches the versions pinned here.
include api/lint-tools.env
NPX := REDOCLY_TELEMETRY=off REDOCLY_SUPPRESS_UPDATE_NOTICE=true npm_config_update_notifier=false npx --yes --prefer-offline
lint-api:
	$(NPX) @redocly/cli@$(REDOCLY_CLI_VERSION) lint --extends recommended-strict --format stylish api/openapi.yaml
	$(NPX) @stoplight/spectral-cli@$(SPECTRAL_CLI_VERSION) lint --fail-severity hint --ruleset api/.spectral.yaml api/openapi.yaml

# The code generated from api/openapi.yaml must be what the spec gives now.
generated:
	$(GO) generate ./api
	@git diff --exit-code --stat -- api || { echo "api/: generated code is stale; run 'go generate ./api' and commit"; exit 1; }

# The web page (web/): its client generated from api/openapi.yaml, type
# checked with tsc --strict and bundled by esbuild, from the lockfile.
# The bundle is committed so that go build needs no npm; web-check fails
# when it or the generated client is stale.
web:
	cd web && npm ci --no-audit --no-fund --ignore-scripts && npm run build

web-check: web
	@git diff --exit-code --stat -- web/src/api.gen.ts web/dist || { echo "web/: the generated client or the bundle is stale; run 'make web' and commit"; exit 1; }
	@out=$$(git status --porcelain -- web/src web/dist); if [ -n "$$out" ]; then echo "web/: files not committed:"; echo "$$out"; exit 1; fi

# cmd/astrolabe drives real clients (awscli, s3cmd, mc, qemu 10, rsync over
# a Debian tree) and takes several minutes on its own: more than go test's
# default 10.
unit:
	$(GO) test -count=1 -timeout 25m ./...
	$(GO) test -count=1 -tags vddk $(VDDK_PKGS)

# Seconds of fuzzing per target in CI; `make fuzz-long` for a real run.
FUZZ_TARGETS := pe:FuzzParseID pe:FuzzOpenZip pe/fs:FuzzExtract nbd:FuzzHandshake nbd:FuzzRequests nbd:FuzzExtendedInStep \
	appliance/s3export:FuzzS3Request appliance/s3export:FuzzSigV4 appliance/s3export:FuzzChunked \
	repo:FuzzCheckPack repo:FuzzOpenIndex internal/calendar:FuzzParseSchedule appliance/nfsexport:FuzzCheckCall
fuzz:
	GO=$(GO) ./scripts/fuzz.sh $(FUZZTIME) $(FUZZ_TARGETS)

fuzz-long:
	$(MAKE) fuzz FUZZTIME=10m

clean:
	rm -rf bin

# The appliance image (root; see images/build.sh) and its boot test.
image:
	./images/build.sh

image-test:
	$(GO) test -count=1 ./images/...

image-boot-test: image
	./images/boot-test.sh

# Build twice (cache and file list checked), size budget, boot test.
image-ci:
	./images/ci.sh
