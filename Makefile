# Capstan — the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /usr/bin/env bash -o pipefail
.SHELLFLAGS := -ec
BIN := $(CURDIR)/bin
export PATH := $(BIN):$(PATH)
# envtest reads the apiserver and etcd from here.
export KUBEBUILDER_ASSETS := $(BIN)
GO_TEST_FLAGS ?=

.PHONY: all
all: build

##@ Development

.PHONY: tools
tools: ## Build the local cluster's binaries, istiod and controller-gen from Go modules (cached).
	hack/build-tools.sh

$(BIN)/controller-gen:
	hack/build-tools.sh controller-gen

.PHONY: generate
generate: $(BIN)/controller-gen ## Regenerate deepcopy code.
	$(BIN)/controller-gen object:headerFile=hack/boilerplate.go.txt paths=./api/...

.PHONY: manifests
manifests: $(BIN)/controller-gen ## Regenerate the CRD, the operator's RBAC and its webhook configuration from the Go markers.
	$(BIN)/controller-gen crd paths=./api/... output:crd:artifacts:config=config/crd/bases
	@# CEL sees only declared fields: declare the Helm values Capstan owns in spec.values.
	go run ./hack/crdvalues
	$(BIN)/controller-gen rbac:roleName=capstan-manager paths=./controllers/... output:rbac:artifacts:config=config/rbac
	$(BIN)/controller-gen webhook paths=./internal/webhook/... output:webhook:artifacts:config=config/webhook

.PHONY: fmt
fmt:
	gofmt -w $$(git ls-files '*.go')

.PHONY: vet
vet:
	go vet ./...

.PHONY: build
build: ## Build the operator binary into bin/capstan.
	CGO_ENABLED=0 go build -trimpath -o $(BIN)/capstan .

##@ Tests

.PHONY: test
test: test-unit test-integration test-e2e ## Run every test: unit, envtest integration, e2e on a local cluster.

.PHONY: test-unit
test-unit: tools ## Unit tests: values, rendering, drift and prune decisions, webhook rules, manifests, image.
	go test $(GO_TEST_FLAGS) . ./api/... ./internal/... ./config/... ./test/bench/... ./test/harness/... ./test/chart/...

.PHONY: test-integration
test-integration: tools ## The controller against a real kube-apiserver and etcd (envtest), in a loopback-only network namespace.
	go test -c $(GO_TEST_FLAGS) -o $(BIN)/controllers.test ./controllers
	@# envtest's apiserver would call the webhooks Istio's charts create at Service IPs:
	@# inside the namespace no such call can leave the machine. The suite reads ../config.
	cd controllers && ../hack/in-netns.sh $(BIN)/controllers.test -ginkgo.v

.PHONY: test-e2e
test-e2e: tools build ## Whole flows on a local kwok cluster with the real istiod, in a loopback-only network namespace.
	go test -c -tags e2e -o $(BIN)/e2e.test ./test/e2e
	go test -c -tags e2e -o $(BIN)/harness.test ./test/harness
	go test -c -tags e2e -o $(BIN)/chart.test ./test/chart
	hack/in-netns.sh $(BIN)/harness.test -test.v -test.timeout 10m
	hack/in-netns.sh $(BIN)/chart.test -test.v -test.timeout 10m
	hack/in-netns.sh $(BIN)/e2e.test -test.v -test.timeout 20m -ginkgo.v

.PHONY: bench
bench: tools build ## Time to converge, API requests and memory on a local cluster (not part of `make test`).
	go test -c -tags e2e -o $(BIN)/bench.test ./test/bench
	@# -test.run is a regular expression: TestBench, TestBenchCA and TestBenchDataPlane.
	hack/in-netns.sh $(BIN)/bench.test -test.v -test.timeout 45m -test.run '^TestBench'

##@ Local cluster

.PHONY: demo
demo: tools build ## Start a local cluster, run Capstan, install Istio's control plane and show it.
	hack/demo.sh

.PHONY: cluster-up
cluster-up: tools ## Start a persistent local cluster in the network namespace "capstan".
	hack/cluster.sh up

.PHONY: cluster-down
cluster-down: ## Stop the local cluster and remove its network namespace.
	hack/cluster.sh down

##@ Against a real cluster (current kubeconfig context)

.PHONY: install
install: ## Install the MeshControlPlane CRD.
	$(BIN)/kubectl apply --server-side -k config/crd

.PHONY: uninstall
uninstall: ## Remove the MeshControlPlane CRD.
	$(BIN)/kubectl delete -k config/crd --ignore-not-found

.PHONY: run
run: build ## Run the operator on this machine against the current context.
	$(BIN)/capstan --health-probe-bind-address=127.0.0.1:8081 --enable-webhooks=false

.PHONY: deploy
deploy: ## Deploy the operator with kustomize (config/default).
	$(BIN)/kubectl apply --server-side -k config/default

##@ Packaging

.PHONY: bundle
bundle: ## Generate the OLM bundle (bundle/, bundle.Dockerfile) from config/; commit the result.
	hack/build-tools.sh kubectl
	go run ./hack/bundlegen

.PHONY: help
help:
	@awk 'BEGIN {FS = ":.*##"} /^[a-zA-Z_-]+:.*?##/ { printf "  %-18s %s\n", $$1, $$2 } /^##@/ { printf "\n%s\n", substr($$0, 5) }' $(MAKEFILE_LIST)
