#!/usr/bin/env bash
# Builds flatnet's kind node image with no registry, for Kubernetes K8S_VERSION
# (default KUBERNETES_VERSION of versions.env; any release the Go module proxy serves):
#   Kubernetes binaries (version ldflags) from the module proxy (scripts/node-bin.sh),
#   etcd, CoreDNS and crictl from the module proxy at what that release's kubeadm
#   lists (versions.env pins the default's), a pause of our own, CNI's loopback, a Debian
#   rootfs from debootstrap, and control-plane images FROM scratch (kube-proxy on a
#   small Debian rootfs: it runs iptables/nft) preloaded into the node's containerd.
# The tag is a hash of every input, so an unchanged rebuild is a lookup. Prints the
# image reference as the last line of stdout. NODE_IMAGE=<ref> skips all of it.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=node-image/release.sh
source "$REPO_ROOT/scripts/node-image/release.sh"

if [ -n "${NODE_IMAGE:-}" ]; then
	docker image inspect "$NODE_IMAGE" >/dev/null 2>&1 ||
		die "NODE_IMAGE=$NODE_IMAGE is not in the local engine" "load it first (docker load / docker pull), or unset NODE_IMAGE to build one"
	info "node image: using NODE_IMAGE=$NODE_IMAGE"
	echo "$NODE_IMAGE"
	exit 0
fi

[ "$K8S_VERSION" = "$KUBERNETES_VERSION" ] || k8s_release_check
HERE="$REPO_ROOT/scripts/node-image"
GOVER=$(go env GOVERSION)
NODE_PACKAGES="systemd systemd-sysv dbus containerd runc iptables nftables iproute2 conntrack ethtool socat ebtables kmod procps ca-certificates libseccomp2 iputils-ping"
PROXY_PACKAGES="iptables nftables conntrack kmod"

# Every input of the image; the tag is their hash.
inputs_hash() {
	{
		cat "$REPO_ROOT/versions.env" "$0" "$REPO_ROOT/scripts/node-bin.sh"
		echo "$K8S_VERSION $GOVER $NODE_PACKAGES $PROXY_PACKAGES"
		grep -F github.com/containernetworking/plugins "$REPO_ROOT/go.mod"
		(cd "$HERE" && find . -type f | LC_ALL=C sort | xargs sha256sum)
	} | sha256sum | cut -c1-12
}
TAG="$K8S_VERSION-$(inputs_hash)"
IMAGE="flatnet/node:$TAG"
if docker image inspect "$IMAGE" >/dev/null 2>&1; then
	info "node image $IMAGE: up to date"
	echo "$IMAGE"
	exit 0
fi
# A cold build needs room for the Go caches, the rootfs and the images (~8 GB measured).
need_gb=10
for dir in "$FLATNET_CACHE" "$(docker info -f '{{.DockerRootDir}}' 2>/dev/null || echo /var/lib/docker)"; do
	mkdir -p "$dir" 2>/dev/null || true
	free_gb=$(df -P -BG "$dir" 2>/dev/null | awk 'NR == 2 {sub("G", "", $4); print $4}')
	[ -z "$free_gb" ] || [ "$free_gb" -ge "$need_gb" ] ||
		die "not enough disk space to build the node image: ${free_gb} GB free on $dir, ${need_gb} GB needed" \
			"free some space (docker system prune; go clean -cache), or give NODE_IMAGE=<an image you have>"
done
step "node image $IMAGE: building (cold: ~15 min on 2 idle cores; cached after)"

WORK="$OUT_DIR/node-image-$K8S_VERSION"
rm -rf "$WORK"
mkdir -p "$WORK"

# --- Debian root filesystems (cached by package list) and binaries ------------------
# debootstrap mostly downloads and unpacks while the Go builds use the CPU: the two
# root filesystems are made in the background, beside the binaries.
apt_install debootstrap
t0=$SECONDS
rootfs_image node flatnet/node-rootfs "$NODE_PACKAGES" "$WORK" >"$WORK/node-rootfs.ref" &
node_pid=$!
rootfs_image kube-proxy flatnet/kube-proxy-rootfs "$PROXY_PACKAGES" "$WORK" >"$WORK/proxy-rootfs.ref" &
proxy_pid=$!
BIN=$(bash "$REPO_ROOT/scripts/node-bin.sh" | tail -n 1)
wait "$node_pid" || die "the node's root filesystem failed (output above)"
wait "$proxy_pid" || die "kube-proxy's root filesystem failed (output above)"
NODE_ROOTFS=$(tail -n 1 "$WORK/node-rootfs.ref")
PROXY_ROOTFS=$(tail -n 1 "$WORK/proxy-rootfs.ref")
info "node image: binaries and root filesystems in $((SECONDS - t0))s"
# Another release runs the etcd, CoreDNS and pause its kubeadm lists (node-bin.sh
# built those); the default's are pinned in versions.env and checked below.
[ "$K8S_VERSION" = "$KUBERNETES_VERSION" ] || k8s_release_images "$BIN/kubeadm"
t0=$SECONDS

# --- control-plane images ----------------------------------------------------------
# image_from BASE REF BINARY... : an image with the binaries in /usr/local/bin.
image_from() {
	local base=$1 ref=$2 ctx
	shift 2
	ctx="$WORK/ctx-$(echo "$ref" | tr '/:' '__')"
	mkdir -p "$ctx"
	cp "$@" "$ctx/"
	{
		echo "FROM $base"
		local b
		for b in "$@"; do echo "COPY $(basename "$b") /usr/local/bin/"; done
		echo 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin'
	} >"$ctx/Dockerfile"
	run_logged "$WORK/build-images.log" docker build -q -t "$ref" "$ctx"
}
step "control-plane images"
R=registry.k8s.io
CP_IMAGES=()
for c in kube-apiserver kube-controller-manager kube-scheduler; do
	image_from scratch "$R/$c:$K8S_VERSION" "$BIN/$c"
	CP_IMAGES+=("$R/$c:$K8S_VERSION")
done
image_from "$PROXY_ROOTFS" "$R/kube-proxy:$K8S_VERSION" "$BIN/kube-proxy"
image_from scratch "$R/etcd:${ETCD_VERSION#v}-0" "$BIN/etcd"
# CoreDNS's Deployment runs /coredns (the image's entrypoint); pause runs /pause.
mkdir -p "$WORK/ctx-coredns" "$WORK/ctx-pause"
cp "$BIN/coredns" "$WORK/ctx-coredns/"
printf 'FROM scratch\nCOPY coredns /coredns\nENTRYPOINT ["/coredns"]\n' >"$WORK/ctx-coredns/Dockerfile"
run_logged "$WORK/build-images.log" docker build -q -t "$R/coredns/coredns:$COREDNS_VERSION" "$WORK/ctx-coredns"
cp "$BIN/pause" "$WORK/ctx-pause/"
printf 'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n' >"$WORK/ctx-pause/Dockerfile"
run_logged "$WORK/build-images.log" docker build -q -t "$R/pause:$PAUSE_VERSION" "$WORK/ctx-pause"
CP_IMAGES+=("$R/kube-proxy:$K8S_VERSION" "$R/etcd:${ETCD_VERSION#v}-0"
	"$R/coredns/coredns:$COREDNS_VERSION" "$R/pause:$PAUSE_VERSION")

# Check the tags are exactly what this kubeadm asks for, before baking them in.
want=$("$BIN/kubeadm" config images list --kubernetes-version "$K8S_VERSION" 2>/dev/null | sort)
have=$(printf '%s\n' "${CP_IMAGES[@]}" | sort)
[ "$want" = "$have" ] || die "the control-plane images built do not match kubeadm's list" \
	"kubeadm wants: $(echo $want)" "built:        $(echo $have)" "fix versions.env (ETCD/COREDNS/PAUSE) to what kubeadm $K8S_VERSION lists"
info "images: $(echo "$have" | tr '\n' ' ')"
docker save -o "$WORK/images.tar" "${CP_IMAGES[@]}"
info "node image: control-plane images in $((SECONDS - t0))s"
t0=$SECONDS

# --- the node image ----------------------------------------------------------------
step "node image: assembling"
ctx="$WORK/ctx-node"
mkdir -p "$ctx/bin"
cp -a "$HERE/files" "$ctx/files"
sed -i "s/@PAUSE_VERSION@/$PAUSE_VERSION/" "$ctx/files/etc/containerd/config.toml"
echo "$K8S_VERSION" >"$ctx/files/kind/version"
mkdir -p "$ctx/cni"
cp "$BIN/kubeadm" "$BIN/kubelet" "$BIN/kubectl" "$BIN/crictl" "$ctx/bin/"
# containerd 1.6's CRI sets up each pod's lo with CNI's loopback plugin from
# /opt/cni/bin, whatever the CNI (kind's own node image ships it too).
cp "$BIN/loopback" "$ctx/cni/"
cat >"$ctx/Dockerfile" <<DOCKERFILE
FROM $NODE_ROOTFS
COPY files/ /
COPY bin/ /usr/local/bin/
COPY cni/ /opt/cni/bin/
# systemd in a container: no gettys, no udev, no time sync, no kernel module loading.
RUN systemctl mask getty.target console-getty.service systemd-udevd.service \
      systemd-udev-trigger.service systemd-timesyncd.service systemd-modules-load.service \
      systemd-resolved.service apt-daily.timer apt-daily-upgrade.timer e2scrub_reap.service \
      sys-kernel-debug.mount sys-kernel-tracing.mount 2>/dev/null; \
    systemctl enable containerd.service kubelet.service && \
    mkdir -p /opt/cni/bin /etc/cni/net.d /etc/kubernetes/manifests /var/lib/kubelet /var/lib/flatnet && \
    update-alternatives --set iptables /usr/sbin/iptables-nft && \
    echo 'ReadKMsg=no' >>/etc/systemd/journald.conf
ENV container=docker
STOPSIGNAL SIGRTMIN+3
ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]
DOCKERFILE
run_logged "$WORK/build-node.log" docker build -t "$IMAGE-stage" "$ctx"

# containerd's store lives in the image, so kind's anonymous /var volume is seeded
# with the images: run containerd once in a build container, import, commit.
step "node image: preloading ${#CP_IMAGES[@]} images into the node's containerd"
cid=$(docker run -d --privileged --network none --entrypoint /bin/sh \
	-v "$WORK/images.tar:/images.tar:ro" "$IMAGE-stage" -c \
	'containerd >/var/log/containerd-build.log 2>&1 & pid=$!
	 for i in $(seq 60); do ctr version >/dev/null 2>&1 && break; sleep 0.5; done
	 ctr -n k8s.io images import --all-platforms --no-unpack /images.tar && ctr -n k8s.io images ls -q || exit 1
	 kill $pid; wait $pid; exit 0')
rc=$(docker wait "$cid")
docker logs "$cid" >"$WORK/preload.log" 2>&1
if [ "$rc" != 0 ]; then
	docker rm -f "$cid" >/dev/null
	tail -n 20 "$WORK/preload.log" >&2
	die "importing images into the node's containerd failed" "log: $WORK/preload.log"
fi
docker commit \
	--change 'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]' --change 'CMD []' \
	"$cid" "$IMAGE" >/dev/null
docker rm -f "$cid" >/dev/null
docker rmi "$IMAGE-stage" >/dev/null
rm -f "$WORK/images.tar"
info "node image: assembled and preloaded in $((SECONDS - t0))s"
info "node image $IMAGE: $(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"
echo "$IMAGE"
