#!/usr/bin/env bash
# Builds the flatnet agent image with no registry: static Go binaries (the
# agent, flatnet-certgen for the agent manifest's CronJob, the flatnet CNI
# plugin and CNI's portmap plugin, which flatnet runs for pods with hostPorts;
# the agent installs both on its node) in an image imported from a tarball
# (FROM scratch, no Dockerfile, no base image to pull). The tag is a hash of every input, so an
# unchanged tree reuses the image. Loads it into kind cluster $CLUSTER when that
# cluster exists. The image ref is the last line on stdout.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CLUSTER=${CLUSTER:-flatnet}
REPO=flatnet/agent
WORK="$OUT_DIR/agent-image"

# Inputs: the module files, every non-test source under dataplane/ (the agent
# links the datapath too), and this script.
inputs_hash() {
	cd "$REPO_ROOT"
	{
		go env GOVERSION
		sha256sum go.mod go.sum "scripts/agent-image.sh"
		find dataplane -type f ! -name '*_test.go' ! -path 'dataplane/manifests/*' ! -path '*/testdata/*' -print0 |
			sort -z | xargs -0 sha256sum
	} | sha256sum | cut -c1-16
}

timeout 20 docker info >/dev/null 2>&1 || die "no Docker engine answers" "run 'make engine' first"

TAG=$(inputs_hash)
REF="$REPO:$TAG"
if docker image inspect "$REF" >/dev/null 2>&1; then
	info "agent image $REF: up to date"
else
	step "agent image: building $REF"
	rm -rf "$WORK" && mkdir -p "$WORK/rootfs/flatnet/cni" "$WORK/rootfs/run/flatnet" "$WORK/rootfs/tmp"
	build() { # OUT PKG
		(cd "$REPO_ROOT" && CGO_ENABLED=0 run_logged "$WORK/build.log" nice env "${GOBUILD_ENV[@]}" go build -trimpath -ldflags "-s -w" -o "$1" "$2")
	}
	build "$WORK/rootfs/flatnet-agent" ./dataplane/cmd/flatnet-agent
	build "$WORK/rootfs/flatnet-certgen" ./dataplane/cmd/flatnet-certgen
	build "$WORK/rootfs/flatnet/cni/flatnet" ./dataplane/cmd/flatnet-cni
	build "$WORK/rootfs/flatnet/cni/portmap" github.com/containernetworking/plugins/plugins/meta/portmap
	import_rootfs "$WORK/rootfs" "$REF" \
		--change 'ENTRYPOINT ["/flatnet-agent"]' \
		--change "LABEL org.opencontainers.image.title=flatnet-agent org.opencontainers.image.revision=$TAG"
	info "agent image $REF: $(image_size "$REF")"
fi

kind_load_image "agent image" "$REF" "$WORK.load.log"
echo "$REF"
