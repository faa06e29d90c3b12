# Stowage build entry points. `make test` is what CI runs (see .ci/run).
PROTOC_GEN_GO_VERSION      := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2
GOBIN ?= $(shell go env GOPATH)/bin

.PHONY: build generate tools test

build:
	go build -o bin/stowage ./cmd/stowage

tools:
	GOBIN=$(GOBIN) go install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	GOBIN=$(GOBIN) go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)

# Regenerates api/*/v1/*.pb.go (needs protoc and its well-known types: apt-get install protobuf-compiler libprotobuf-dev).
generate: tools
	PATH=$(GOBIN):$$PATH protoc -I api --go_out=api --go_opt=paths=source_relative \
		--go-grpc_out=api --go-grpc_opt=paths=source_relative \
		api/stowage/v1/stowage.proto api/stowage/v1/secrets.proto api/stowage/v1/files.proto api/stowage/v1/auth.proto \
		api/pluginregistration/v1/registration.proto api/agent/v1/agent.proto

test:
	bash hack/test.sh
