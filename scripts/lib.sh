# shellcheck shell=bash
# Shared by every script in scripts/: where things live, how progress is printed,
# and how a pinned Go program is built from the module proxy. Source it; never run it.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=../versions.env
source "$REPO_ROOT/versions.env"
# shellcheck source=../kind-configs/network.env
source "$REPO_ROOT/kind-configs/network.env"

# Machine-wide cache: survives fresh clones (CI clones anew on the same machine),
# so a second run on the same machine skips every build.
FLATNET_CACHE=${FLATNET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/flatnet}
OUT_DIR=${OUT_DIR:-$REPO_ROOT/_output}
BIN_DIR=${BIN_DIR:-$REPO_ROOT/bin}
mkdir -p "$FLATNET_CACHE" "$OUT_DIR" "$BIN_DIR"

# The legacy builder: no buildx plugin is needed, and output is the same everywhere.
export DOCKER_BUILDKIT=0

# [mm:ss] counts from the start of the outermost script: the scripts it runs stamp
# their lines on the same clock, so a log reads in order.
_t0=${FLATNET_T0:-$(date +%s)}
export FLATNET_T0=$_t0
_stamp() { local s=$(( $(date +%s) - _t0 )); printf '%02d:%02d' $((s / 60)) $((s % 60)); }
step() { printf '\033[1m[%s] ==> %s\033[0m\n' "$(_stamp)" "$*" >&2; }
info() { printf '[%s]     %s\n' "$(_stamp)" "$*" >&2; }
warn() { printf '[%s] WARN %s\n' "$(_stamp)" "$*" >&2; }
die() {
	printf '\033[31m[%s] ERROR %s\033[0m\n' "$(_stamp)" "$1" >&2
	shift
	local line
	for line in "$@"; do printf '        %s\n' "$line" >&2; done
	exit 1
}

# run_logged LOG CMD...: run CMD with its output in LOG; on failure show the tail.
run_logged() {
	local log=$1
	shift
	mkdir -p "$(dirname "$log")"
	if ! "$@" >"$log" 2>&1; then
		tail -n 30 "$log" >&2 || true
		die "failed: $*" "full log: $log"
	fi
}

# apt_install PKG...: install the Debian packages that are missing, updating the
# package lists once if needed. Quiet unless something is installed.
apt_install() {
	local missing=() p
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	[ "$(id -u)" -eq 0 ] || die "missing Debian packages: ${missing[*]}" "install them (sudo apt-get install ${missing[*]}) or run as root"
	info "installing Debian packages: ${missing[*]}"
	if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >"$FLATNET_CACHE/apt.log" 2>&1; then
		run_logged "$FLATNET_CACHE/apt.log" apt-get update
		run_logged "$FLATNET_CACHE/apt.log" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
	fi
}

# require_cluster HINT: bin/kubectl exists and the API server of $KUBECONFIG
# answers; otherwise stop, HINT saying how to create cluster $CLUSTER.
require_cluster() {
	[ -x "$BIN_DIR/kubectl" ] || die "no $BIN_DIR/kubectl" "run 'make tools' first"
	timeout 20 "$BIN_DIR/kubectl" get --raw /readyz >/dev/null 2>&1 ||
		die "cluster $CLUSTER does not answer (KUBECONFIG=$KUBECONFIG)" "$1"
}

# kind_has_cluster NAME: whether bin/kind runs a cluster NAME on this machine.
kind_has_cluster() {
	[ -x "$BIN_DIR/kind" ] && "$BIN_DIR/kind" get clusters 2>/dev/null | grep -qx "$1"
}

# kind_load_image WHAT REF LOG: load image REF into kind cluster $CLUSTER when it
# runs here (output in LOG); WHAT names the image in the progress lines.
kind_load_image() {
	local what=$1 ref=$2 log=$3
	if kind_has_cluster "$CLUSTER"; then
		step "$what: loading $ref into kind cluster $CLUSTER"
		run_logged "$log" "$BIN_DIR/kind" load docker-image --name "$CLUSTER" "$ref"
	else
		info "no kind cluster $CLUSTER: image not loaded"
	fi
}

# import_rootfs DIR REF [--change INSTRUCTION]...: docker image REF of the files
# under DIR (FROM scratch, no Dockerfile, every file owned by root), its config
# set by the --change instructions (ENTRYPOINT, USER, LABEL ...).
import_rootfs() {
	local dir=$1 ref=$2
	shift 2
	tar -C "$dir" --owner=0 --group=0 --numeric-owner -c . | docker import "$@" - "$ref" >/dev/null ||
		die "docker import of $ref failed"
}

# image_size REF: the size of image REF as docker reports it, in MB.
image_size() {
	docker image inspect -f '{{.Size}}' "$1" | awk '{printf "%.1f MB", $1/1e6}'
}

# debian_mirror: the Debian mirror this machine's apt uses, deb.debian.org if none.
debian_mirror() {
	local m
	m=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
	[ -n "$m" ] || m=$(awk '$1 == "deb" && $3 ~ /^'"$DEBIAN_SUITE"'$/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
	echo "${m:-http://deb.debian.org/debian}"
}

# rootfs_image NAME REPO PACKAGES WORKDIR: prints REPO:<suite>-<hash of the package
# list>, a docker image of a $DEBIAN_SUITE debootstrap minbase with PACKAGES, built
# (in WORKDIR) only when no image has that ref yet.
rootfs_image() {
	local name=$1 repo=$2 pkgs=$3 work=$4 key ref dir
	key=$(echo "$DEBIAN_SUITE $pkgs" | sha256sum | cut -c1-12)
	ref="$repo:$DEBIAN_SUITE-$key"
	if docker image inspect "$ref" >/dev/null 2>&1; then
		info "$name rootfs: cached ($ref)"
		echo "$ref"
		return
	fi
	apt_install debootstrap
	dir="$work/rootfs-$name"
	rm -rf "$dir"
	info "$name rootfs: debootstrap $DEBIAN_SUITE from $(debian_mirror) (about a minute)"
	run_logged "$work/debootstrap-$name.log" debootstrap --variant=minbase \
		--include="$(echo "$pkgs" | tr ' ' ',')" "$DEBIAN_SUITE" "$dir" "$(debian_mirror)"
	# Trim what a container never reads.
	rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/* \
		"$dir"/usr/share/doc/* "$dir"/usr/share/man/* "$dir"/usr/share/locale/*
	tar -C "$dir" -c . | docker import - "$ref" >/dev/null
	rm -rf "$dir"
	echo "$ref"
}

# GOBUILD_ENV: the environment of our go builds (build, test -c): the collector of
# the compiler and linker they run relaxed. GOGC=400 buys ~6% of a cold build's CPU
# (CoreDNS on 2 cores: 153 vs 162-165 CPU-s) with memory; GOMEMLIMIT keeps each
# process's heap near 1.5 GiB when a package needs more. The caller's values win.
GOBUILD_ENV=("GOGC=${GOGC:-400}" "GOMEMLIMIT=${GOMEMLIMIT:-1536MiB}")
# gobuild ARGS...: go ARGS in GOBUILD_ENV (under nice: nice env "${GOBUILD_ENV[@]}" go ...).
gobuild() {
	env "${GOBUILD_ENV[@]}" go "$@"
}

# tool_key DIR PKG [go build args...]: the inputs of a tool built from the module in
# DIR (scripts/tools.sh): Go's version, the package and flags, DIR's go.mod and go.sum.
tool_key() {
	local dir=$1 pkg=$2
	shift 2
	{ go env GOVERSION; echo "$pkg $*"; cat "$dir/go.mod" "$dir/go.sum"; } | sha256sum | cut -c1-16
}

# reuse_build NAME KEY OUT: true when OUT was built from inputs KEY (OUT.inputs), or
# is now a copy of the machine's (cache_put), so a fresh clone (CI's) skips a build
# this machine did; false when it must be built.
reuse_build() {
	local name=$1 key=$2 out=$3 c="$FLATNET_CACHE/bin/$1.$2"
	[ -x "$out" ] && [ "$(cat "$out.inputs" 2>/dev/null)" = "$key" ] && return 0
	[ -x "$c" ] || return 1
	mkdir -p "$(dirname "$out")"
	cp -f "$c" "$out.tmp" && mv -f "$out.tmp" "$out" && echo "$key" >"$out.inputs"
}

# cache_put NAME KEY OUT: keep OUT, built from inputs KEY, as the machine's copy of
# NAME; one a name (an older key's copy goes). A cache it cannot write costs the next
# clone a build, not this one its result: it warns.
cache_put() {
	local name=$1 key=$2 out=$3 d="$FLATNET_CACHE/bin"
	{ mkdir -p "$d" && rm -f "$d/$name".* && cp -f "$out" "$d/$name.$key.tmp" && mv -f "$d/$name.$key.tmp" "$d/$name.$key"; } ||
		warn "could not keep $name in the machine's cache $d (the next clone builds it again)"
}

# go_build_pinned NAME MODULE VERSION PKG OUT [go build args...]
# Builds PKG of MODULE@VERSION (from the module proxy) into OUT, in a scratch module
# under the cache so upstream's go.mod (with its own replace directives) is respected
# the way Go resolves dependencies. Skips when OUT exists for the same inputs.
# PINNED_MAIN=<file.go>: build that main package of ours instead of PKG, in the same
# scratch module (PKG's dependencies, at MODULE@VERSION's own versions).
go_build_pinned() {
	local name=$1 module=$2 version=$3 pkg=$4 out=$5
	shift 5
	local key src target=$pkg main_sum=""
	[ -z "${PINNED_MAIN:-}" ] || main_sum=$(sha256sum <"$PINNED_MAIN")
	key=$(printf '%s\n' "$module" "$version" "$pkg" "$*" "${CGO_ENABLED:-}" "$(go env GOVERSION)" "$main_sum" | sha256sum | cut -c1-16)
	if [ -x "$out" ] && [ "$(cat "$out.inputs" 2>/dev/null)" = "$key" ]; then
		info "$name $version: up to date"
		return 0
	fi
	src="$FLATNET_CACHE/src/$name-$version"
	mkdir -p "$src" "$(dirname "$out")"
	if [ ! -f "$src/go.mod" ] || ! grep -q "$module $version" "$src/go.mod"; then
		rm -f "$src/go.mod" "$src/go.sum"
		(cd "$src" && go mod init "flatnet.local/build/$name" >/dev/null 2>&1)
		info "$name $version: resolving modules"
		(cd "$src" && run_logged "$src/get.log" go get "$pkg@$version")
	fi
	rm -f "$src/main.go"
	if [ -n "${PINNED_MAIN:-}" ]; then
		cp "$PINNED_MAIN" "$src/main.go"
		target=.
	fi
	info "$name $version: building ${PINNED_MAIN:+${PINNED_MAIN#"$REPO_ROOT"/} on }$pkg (cold: minutes; cached after)"
	(cd "$src" && run_logged "$src/build.log" gobuild build -trimpath -o "$out" "$@" "$target")
	echo "$key" >"$out.inputs"
}

# k8s_ldflags: the version stamps Kubernetes' own build sets, so binaries report
# $KUBERNETES_VERSION (kind reads it, kubelet registers with it).
k8s_ldflags() {
	local minor=${KUBERNETES_VERSION#v} k v flags="-s -w"
	minor=${minor#*.}
	minor=${minor%%.*}
	for k in client-go/pkg/version component-base/version; do
		for v in "gitVersion=$KUBERNETES_VERSION" "gitMajor=1" "gitMinor=$minor" \
			"gitTreeState=clean" "buildDate=1970-01-01T00:00:00Z"; do
			flags+=" -X k8s.io/$k.$v"
		done
	done
	echo "$flags"
}
