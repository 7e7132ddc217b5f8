# Development cluster targets. Included by the root Makefile, or used alone:
#   make -f hack/cluster/cluster.mk cluster
# Paths are found from this file's own location, so either way works.

KUBETRAIN_CLUSTER_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))
KUBETRAIN_IMAGES_DIR := $(abspath $(KUBETRAIN_CLUSTER_DIR)/../images)

.PHONY: cluster cluster-down cluster-status images

## cluster: build (cached) and start the local cluster; last line is `export KUBECONFIG=...`
## NODES=3: three nodes (each past the first in its own network namespace); unset, a running
## cluster keeps its count, a new one has one node
cluster:
	@$(if $(NODES),KUBETRAIN_CLUSTER_NODES=$(NODES) )$(KUBETRAIN_CLUSTER_DIR)/up.sh

## cluster-down: stop everything the cluster started, by PID
cluster-down:
	@$(KUBETRAIN_CLUSTER_DIR)/down.sh

## cluster-status: show the cluster's processes and node
cluster-status:
	@$(KUBETRAIN_CLUSTER_DIR)/status.sh || true

## images: build localhost/kubetrain-{operator,trainer}:dev and import them into every node
images:
	@$(KUBETRAIN_IMAGES_DIR)/build.sh

