#!/usr/bin/env bash
# Builds the hubble-relay image with no registry, as agent-image.sh builds the
# agent's: upstream hubble-relay at HUBBLE_VERSION (static; scripts/hubble-build.sh)
# in an image imported from a tarball (FROM scratch, no Dockerfile), laid out as
# Cilium's image is: /usr/bin/hubble-relay, entrypoint `hubble-relay serve`, user
# 65532, a writable GOPS_CONFIG_DIR for the gops agent the chart's config turns
# on. The tag is a hash of the binary and this script, so an unchanged build
# reuses the image. Loads it into kind cluster $CLUSTER when that cluster exists.
# The image ref is the last line on stdout.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CLUSTER=${CLUSTER:-flatnet}
REPO=flatnet/hubble-relay
WORK="$OUT_DIR/relay-image"

timeout 20 docker info >/dev/null 2>&1 || die "no Docker engine answers" "run 'make engine' first"

bash "$REPO_ROOT/scripts/hubble-build.sh" hubble-relay "$BIN_DIR/hubble-relay"
TAG=$(cd "$REPO_ROOT" && sha256sum "$BIN_DIR/hubble-relay" scripts/relay-image.sh | cut -d' ' -f1 | sha256sum | cut -c1-16)
REF="$REPO:$TAG"
if docker image inspect "$REF" >/dev/null 2>&1; then
	info "hubble-relay image $REF: up to date"
else
	step "hubble-relay image: building $REF"
	rm -rf "$WORK" && mkdir -p "$WORK/rootfs/usr/bin" "$WORK/rootfs/home/gops" "$WORK/rootfs/tmp"
	cp "$BIN_DIR/hubble-relay" "$WORK/rootfs/usr/bin/hubble-relay"
	chmod 0777 "$WORK/rootfs/home/gops"
	chmod 1777 "$WORK/rootfs/tmp"
	import_rootfs "$WORK/rootfs" "$REF" \
		--change 'ENV PATH=/usr/bin:/bin' \
		--change 'ENV GOPS_CONFIG_DIR=/home/gops' \
		--change 'USER 65532:65532' \
		--change 'ENTRYPOINT ["/usr/bin/hubble-relay"]' \
		--change 'CMD ["serve"]' \
		--change "LABEL org.opencontainers.image.title=hubble-relay org.opencontainers.image.version=$HUBBLE_VERSION org.opencontainers.image.revision=$TAG"
	info "hubble-relay image $REF: $(image_size "$REF")"
fi

kind_load_image "hubble-relay image" "$REF" "$WORK.load.log"
echo "$REF"
