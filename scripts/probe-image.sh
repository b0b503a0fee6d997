#!/usr/bin/env bash
# Builds the probe image flatnet/probe:<hash of its inputs> with no registry: the
# static probe binary (also /agnhost), bash from Debian's bash-static and
# busybox-static's tools, FROM scratch. Also tags it flatnet/probe:latest and with
# the name the seed article uses (k8s.gcr.io/e2e-test-images/agnhost:2.41), and,
# when CLUSTER names a kind cluster, loads all three into it. Unchanged inputs: no
# rebuild.
#
# Prints the image ref (flatnet/probe:<hash>) as the last line of stdout. Pods
# should use that ref (or imagePullPolicy IfNotPresent): with ":latest" kubelet
# tries to pull, and there is no registry.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

IMAGE_REPO=${PROBE_IMAGE_REPO:-flatnet/probe}
SEED_REF=k8s.gcr.io/e2e-test-images/agnhost:2.41
WORK="$OUT_DIR/probe-image"
DEBS="$FLATNET_CACHE/debs"
SELF="$REPO_ROOT/scripts/probe-image.sh"
DOCKERFILE="$REPO_ROOT/probes/image/Dockerfile"

# 1. The binary, rebuilt only when its sources change.
step "probe binary"
src_hash=$(cd "$REPO_ROOT" && { find probes -name '*.go' -not -name '*_test.go' | LC_ALL=C sort | xargs sha256sum; sha256sum go.mod go.sum; go env GOVERSION; } | sha256sum | cut -c1-16)
bin="$BIN_DIR/probe"
if [ -x "$bin" ] && [ "$(cat "$bin.inputs" 2>/dev/null)" = "$src_hash" ]; then
	info "bin/probe up to date ($src_hash)"
else
	(cd "$REPO_ROOT" && CGO_ENABLED=0 run_logged "$OUT_DIR/logs/probe-build.log" \
		go build -trimpath -buildvcs=false -ldflags "-s -w -X main.version=$src_hash" -o "$bin" ./probes/cmd/probe)
	echo "$src_hash" >"$bin.inputs"
	info "built bin/probe ($src_hash)"
fi
if ldd "$bin" >/dev/null 2>&1; then
	die "bin/probe is dynamically linked" "build it with CGO_ENABLED=0"
fi

# 2. bash-static and busybox-static from Debian, as .deb files kept in the cache
#    (downloaded, not installed: the host is left alone).
step "bash-static and busybox-static"
mkdir -p "$DEBS"
for pkg in bash-static busybox-static; do
	if ! ls "$DEBS/${pkg}"_*.deb >/dev/null 2>&1; then
		(cd "$DEBS" && run_logged "$DEBS/download.log" apt-get download "$pkg")
	fi
	info "$(basename "$(ls "$DEBS/${pkg}"_*.deb | tail -n1)")"
done
debs=("$(ls "$DEBS"/bash-static_*.deb | tail -n1)" "$(ls "$DEBS"/busybox-static_*.deb | tail -n1)")

# The tag hashes every input: the binary, the two packages, the Dockerfile and this
# script (which lays out the rootfs). Same inputs, same tag.
tag=$(sha256sum "$bin" "${debs[@]}" "$DOCKERFILE" "$SELF" | awk '{print $1}' | sha256sum | cut -c1-16)
ref="$IMAGE_REPO:$tag"

# 3. The rootfs: / holds probe and agnhost (a link, so it runs as agnhost);
#    /bin holds bash, busybox and busybox's applets.
build_rootfs() {
	local root="$WORK/rootfs" applet deb
	rm -rf "$WORK"
	mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$WORK/debs"
	for deb in "${debs[@]}"; do
		dpkg-deb -x "$deb" "$WORK/debs"
	done
	install -m 0755 "$bin" "$root/probe"
	ln -s probe "$root/agnhost"
	install -m 0755 "$WORK/debs/bin/bash-static" "$root/bin/bash"
	install -m 0755 "$WORK/debs/bin/busybox" "$root/bin/busybox"
	for applet in $("$root/bin/busybox" --list); do
		[ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
	done
	chmod 1777 "$root/tmp"
	printf 'root:x:0:0:root:/:/bin/bash\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
	printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
	printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
	cp "$DOCKERFILE" "$WORK/Dockerfile"
}

# 4. The image (the engine is started elsewhere: scripts/docker-engine.sh).
step "image $ref"
tries=0
until docker info >/dev/null 2>&1; do
	tries=$((tries + 1))
	[ "$tries" -le "${DOCKER_WAIT_SECONDS:-120}" ] || die "no Docker engine answers (docker info failed for ${DOCKER_WAIT_SECONDS:-120}s)" \
		"start one first: scripts/docker-engine.sh"
	[ "$tries" -eq 1 ] && info "waiting for the Docker engine to answer"
	sleep 1
done
if docker image inspect "$ref" >/dev/null 2>&1; then
	info "$ref exists: nothing to build"
else
	build_rootfs
	run_logged "$OUT_DIR/logs/probe-image-build.log" docker build --label "flatnet.probe.sources=$src_hash" -t "$ref" "$WORK"
	# Smoke check, on loopback only (--network none): the seed's shell and
	# command line work from the image's working directory.
	out=$(docker run --rm --network none --entrypoint bash "$ref" -c \
		'ls /bin/sh /bin/nc /bin/wget >/dev/null && cd / && ./agnhost connect 127.0.0.1:1 --timeout=3s --protocol=tcp 2>&1; echo "exit=$?"' 2>&1) || true
	if [ "$out" != "$(printf 'REFUSED\nexit=1')" ]; then
		docker rmi "$ref" >/dev/null 2>&1 || true
		die "the image $ref fails its smoke check" "bash -c './agnhost connect 127.0.0.1:1 ...' printed: $out"
	fi
	info "built $ref (bash, busybox and ./agnhost checked)"
fi
docker tag "$ref" "$IMAGE_REPO:latest"
docker tag "$ref" "$SEED_REF"

# 5. Into the cluster, when there is one.
if [ -n "${CLUSTER:-}" ]; then
	if kind_has_cluster "$CLUSTER"; then
		step "loading into kind cluster $CLUSTER"
		run_logged "$OUT_DIR/logs/probe-image-load.log" "$BIN_DIR/kind" load docker-image --name "$CLUSTER" "$ref" "$IMAGE_REPO:latest" "$SEED_REF"
		info "loaded $ref, $IMAGE_REPO:latest, $SEED_REF"
	else
		warn "CLUSTER=$CLUSTER is not a running kind cluster (bin/kind get clusters): images not loaded"
	fi
fi
echo "$ref"
