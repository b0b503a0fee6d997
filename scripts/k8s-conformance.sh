#!/usr/bin/env bash
# `make k8s-conformance`: the [sig-network] specs marked [Conformance] of Kubernetes'
# own e2e suite (k8s.io/kubernetes/test/e2e at $KUBERNETES_VERSION), offline:
#   e2e.test   go test -c of k8s.io/kubernetes/test/e2e from the module proxy, in a
#              scratch module under the cache (staging modules replaced by their
#              v0.x tags, as upstream's go.mod does with ./staging), cached by version
#   images     every image those specs run, built here from Go modules and Debian
#              packages under the exact name test/utils/image/manifest.go gives it,
#              loaded into the cluster's nodes
#   run        the focus '\[sig-network\].*\[Conformance\]' minus the skips in
#              suites/k8s-conformance-skips (<regexp><TAB><reason>), JUnit into
#              _artifacts/k8s-conformance/, a summary, non-zero exit on failure
#
#   k8s-conformance.sh [all|build|images|run|list]     (default: all = images + run)
# KUBECONFIG defaults to the kind cluster $CLUSTER of `make cluster` (images are loaded
# into that kind cluster). FOCUS= replaces the focus, SKIP= adds a skip regexp, NODES=
# sets ginkgo's parallel processes (default 3).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CLUSTER=${CLUSTER:-flatnet}
export KUBECONFIG=${KUBECONFIG:-$OUT_DIR/$CLUSTER.kubeconfig}
ART=${ARTIFACTS:-$REPO_ROOT/_artifacts/k8s-conformance}
SKIPS_FILE="$REPO_ROOT/suites/k8s-conformance-skips"
FOCUS=${FOCUS:-'\[sig-network\].*\[Conformance\]'}
GOVER=$(go env GOVERSION)
E2E_DIR="$FLATNET_CACHE/k8s-e2e/$KUBERNETES_VERSION-$GOVER"
E2E_TEST="$E2E_DIR/e2e.test"
E2E_SRC="$FLATNET_CACHE/src/k8s-e2e-$KUBERNETES_VERSION"
# The staging modules (k8s.io/api, client-go, ...) are tagged v0.<minor>.<patch>.
STAGING_VERSION="v0.${KUBERNETES_VERSION#v1.}"

# --- e2e.test --------------------------------------------------------------------
# The scratch module: requires k8s.io/kubernetes at the cluster's version, replaces
# each staging module its go.mod replaces with ./staging/src/... by the published
# tag, and imports what test/e2e's own e2e_test.go imports (so `go mod tidy` pulls
# the test's dependencies too).
e2e_module() {
	local kdir key
	key=$(cat "$REPO_ROOT/tools/go.mod" "$0" | sha256sum | cut -c1-16)
	mkdir -p "$E2E_SRC"
	[ -f "$E2E_SRC/go.sum" ] && [ "$(cat "$E2E_SRC/.tidy" 2>/dev/null)" = "$key" ] && return 0
	rm -f "$E2E_SRC/go.mod" "$E2E_SRC/go.sum" "$E2E_SRC/.tidy"
	info "e2e.test $KUBERNETES_VERSION: resolving k8s.io/kubernetes and its staging modules"
	(cd "$E2E_SRC" && run_logged "$E2E_SRC/get.log" go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION")
	kdir=$(cd "$E2E_SRC" && go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | awk -F'"' '/"Dir":/ {print $4}')
	[ -f "$kdir/go.mod" ] || die "k8s.io/kubernetes@$KUBERNETES_VERSION: no go.mod in the module cache ($kdir)"
	{
		echo "module flatnet.local/build/k8s-e2e"
		echo
		awk '/^go / || /^godebug / {print}' "$kdir/go.mod"
		echo
		echo "require k8s.io/kubernetes $KUBERNETES_VERSION"
		echo
		# The versions flatnet's tools/go.mod selects (the cluster's own binaries are built
		# with them), so e2e.test shares the Go build cache with the node image; ginkgo
		# and gomega stay at what this Kubernetes release tests with.
		echo "require ("
		awk '/^require \(/ {f = 1; next} f && /^\)/ {f = 0} f && NF >= 2 {print "\t" $1 " " $2}' "$REPO_ROOT/tools/go.mod" |
			grep -vE '^\s(k8s\.io/kubernetes|github\.com/onsi/(ginkgo/v2|gomega)) '
		echo ")"
		echo
		echo "replace ("
		awk '/=> \.\/staging\/src\// {print "\t" $1 " => " $1 " '"$STAGING_VERSION"'"}' "$kdir/go.mod"
		echo ")"
	} >"$E2E_SRC/go.mod"
	{
		echo "//go:build tools"
		echo
		echo "// Package tools pins what k8s.io/kubernetes/test/e2e, its test, agnhost and the ginkgo CLI import."
		echo "package tools"
		echo
		echo "import ("
		echo "	_ \"k8s.io/kubernetes/test/e2e\""
		echo "	_ \"k8s.io/kubernetes/test/images/agnhost\""
		echo "	_ \"github.com/onsi/ginkgo/v2/ginkgo\""
		sed -n '/^import (/,/^)/p' "$kdir/test/e2e/e2e_test.go" | grep -oE '"[a-z][^"]*\.[^"]*"' | sort -u |
			while read -r p; do echo "	_ $p"; done
		echo ")"
	} >"$E2E_SRC/tools.go"
	info "e2e.test $KUBERNETES_VERSION: go mod tidy (downloads what the cache lacks)"
	(cd "$E2E_SRC" && run_logged "$E2E_SRC/tidy.log" go mod tidy)
	echo "$key" >"$E2E_SRC/.tidy"
}

build_e2e() {
	local deps key t0 pid total now log="$E2E_DIR/build.log"
	e2e_module
	# The key: every module version e2e.test is made of, the Go version and ldflags.
	deps=$(cd "$E2E_SRC" && go list -deps -test -f '{{with .Module}}{{.Path}}@{{.Version}}{{with .Replace}}=>{{.Version}}{{end}} {{end}}{{.ImportPath}}' \
		k8s.io/kubernetes/test/e2e) || die "go list of k8s.io/kubernetes/test/e2e failed" "module: $E2E_SRC"
	key=$( (echo "$deps" | awk 'NF == 2 {print $1}' | sort -u; echo "$GOVER $(k8s_ldflags)") | sha256sum | cut -c1-16)
	if [ -x "$E2E_TEST" ] && [ "$(cat "$E2E_TEST.inputs" 2>/dev/null)" = "$key" ]; then
		info "e2e.test $KUBERNETES_VERSION: cached ($E2E_TEST)"
		return 0
	fi
	step "e2e.test $KUBERNETES_VERSION: building (cold: ~20 min on 2 idle cores; cached after)"
	mkdir -p "$E2E_DIR"
	total=$(echo "$deps" | grep -c ' ' || true)
	t0=$(date +%s)
	# -x prints one compile command per package not in the build cache: the ticker
	# counts them. CGO off and -trimpath as the node image's binaries, so their
	# dependencies come from the build cache. nice: the machine is shared.
	(cd "$E2E_SRC" && CGO_ENABLED=0 exec nice -n 10 go test -c -x -vet=off -trimpath -p "${E2E_BUILD_P:-1}" \
		-ldflags "$(k8s_ldflags)" -o "$E2E_TEST.tmp" k8s.io/kubernetes/test/e2e) >"$log" 2>&1 &
	pid=$!
	while kill -0 "$pid" 2>/dev/null; do
		sleep 30
		kill -0 "$pid" 2>/dev/null || break
		if grep -q '/link -o' "$log"; then
			now="linking e2e.test"
		else
			now="compiling $(grep -o '/compile -o .* -p [^ ]*' "$log" | tail -n 1 | awk '{print $NF}')"
		fi
		info "e2e.test: $(grep -c '/compile -o' "$log" || true) of $total packages compiled (the rest cached), $(($(date +%s) - t0)) s, $now"
	done
	if ! wait "$pid"; then
		grep -v -E '^(mkdir|cat|cd|echo|EOF|packagefile|rm|mv|cp|WORK=|#|modinfo|build|/usr|	)' "$log" | tail -n 30 >&2
		die "building e2e.test failed" "full log (go test -c -x): $log"
	fi
	mv "$E2E_TEST.tmp" "$E2E_TEST"
	echo "$key" >"$E2E_TEST.inputs"
	gzip -f "$log"
	info "e2e.test $KUBERNETES_VERSION: built in $(($(date +%s) - t0)) s ($(du -m "$E2E_TEST" | cut -f1) MB)"
}

# go_e2e NAME PKG: a binary of the scratch module (same versions as e2e.test), CGO off.
go_e2e() {
	local name=$1 pkg=$2 out="$E2E_DIR/$1"
	(cd "$E2E_SRC" && CGO_ENABLED=0 nice -n 10 go build -trimpath -ldflags "-s -w" -o "$out.tmp" "$pkg") >"$E2E_DIR/$name.log" 2>&1 ||
		{ tail -n 20 "$E2E_DIR/$name.log" >&2; die "building $name ($pkg) failed" "log: $E2E_DIR/$name.log"; }
	mv "$out.tmp" "$out"
}

# conformance ARGS...: suites/cmd/conformance, the Go half of this script (skip list,
# image names, summary).
conformance() {
	(cd "$REPO_ROOT" && go run ./suites/cmd/conformance "$@")
}

# --- images ----------------------------------------------------------------------
# What the conformance [sig-network] specs run (test/e2e/network, common/network and
# the framework helpers they call): agnhost (most pods; exec'd sh, curl, nc, dig,
# getent, hostname), jessie-dnsutils (the DNS specs' second querier: sh, dig,
# getent), nginx (the Endpoints/EndpointSlice specs' pods only need it to run) and
# busybox (the framework's default test pod); pause is the node image's own.
E2E_IMAGES="Agnhost JessieDnsutils Nginx BusyBox"
# A Debian rootfs with what upstream's agnhost image installs from Alpine
# (bind-tools curl netcat-openbsd iproute2 bash) plus nginx, shared by the three
# Debian-based images so the nodes store its layer once.
BASE_PACKAGES="bash curl netcat-openbsd iproute2 bind9-dnsutils procps iputils-ping nginx-light ca-certificates"

# build_image REF CONTEXT: docker build, tagged REF plus a content-hash tag, skipped
# when REF already carries the same inputs (label flatnet.inputs).
build_image() {
	local ref=$1 ctx=$2 key
	key=$( (cd "$ctx" && find . -type f | LC_ALL=C sort | xargs sha256sum) | sha256sum | cut -c1-16)
	if [ "$(docker image inspect -f '{{index .Config.Labels "flatnet.inputs"}}' "$ref" 2>/dev/null)" = "$key" ]; then
		info "$ref: up to date"
		return
	fi
	run_logged "$WORK/build-$(basename "$ctx").log" docker build --label "flatnet.inputs=$key" -t "$ref" "$ctx"
	info "$ref: built"
}

images() {
	local base ref kdir deb root applet out id
	declare -A refs
	build_e2e
	step "e2e images: $E2E_IMAGES (from Go modules and Debian packages)"
	kdir=$(cd "$E2E_SRC" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)
	# The names test/utils/image/manifest.go gives them: "ID registry/name:version" lines.
	# shellcheck disable=SC2086 # one argument per image ID
	out=$(conformance images --manifest "$kdir/test/utils/image/manifest.go" $E2E_IMAGES Pause) ||
		die "could not read the e2e images' names from $kdir/test/utils/image/manifest.go"
	while read -r id ref; do refs[$id]=$ref; done <<<"$out"
	WORK="$OUT_DIR/k8s-conformance-images"
	rm -rf "$WORK"
	mkdir -p "$WORK"
	if [ ! -x "$E2E_DIR/agnhost" ] || [ "$(cat "$E2E_DIR/agnhost.inputs" 2>/dev/null)" != "$(cat "$E2E_TEST.inputs")" ]; then
		info "agnhost: building k8s.io/kubernetes/test/images/agnhost $KUBERNETES_VERSION"
		go_e2e agnhost k8s.io/kubernetes/test/images/agnhost
		cp "$E2E_TEST.inputs" "$E2E_DIR/agnhost.inputs"
	fi
	base=$(rootfs_image e2e-base flatnet/e2e-base "$BASE_PACKAGES" "$WORK" | tail -n 1)

	# agnhost: upstream's layout (/agnhost entrypoint, pause by default, porter's
	# TLS pair in /, /uploads for netexec, agnhost-2, the user and group in image).
	mkdir -p "$WORK/agnhost"
	cp "$E2E_DIR/agnhost" "$kdir/test/images/agnhost/porter/localhost.crt" "$kdir/test/images/agnhost/porter/localhost.key" "$WORK/agnhost/"
	chmod u+w "$WORK/agnhost/"*
	cat >"$WORK/agnhost/Dockerfile" <<DOCKERFILE
FROM $base
COPY agnhost localhost.crt localhost.key /
RUN mkdir /uploads && ln -s agnhost /agnhost-2 && \\
    groupadd -g 50000 group-defined-in-image && \\
    useradd -u 1000 -M -N -G group-defined-in-image user-defined-in-image
WORKDIR /
EXPOSE 80 8080 8081 9376 5000
ENTRYPOINT ["/agnhost"]
CMD ["pause"]
DOCKERFILE
	build_image "${refs[Agnhost]}" "$WORK/agnhost"

	# jessie-dnsutils: a Debian with dig (upstream: debian + dnsutils), a shell by default.
	mkdir -p "$WORK/jessie-dnsutils"
	printf 'FROM %s\nCMD ["/bin/bash"]\n' "$base" >"$WORK/jessie-dnsutils/Dockerfile"
	build_image "${refs[JessieDnsutils]}" "$WORK/jessie-dnsutils"

	# nginx: Debian's nginx in the foreground on port 80 (IPv4: a pod may have no IPv6).
	mkdir -p "$WORK/nginx"
	cat >"$WORK/nginx/Dockerfile" <<DOCKERFILE
FROM $base
RUN sed -i '/listen \[::\]/d' /etc/nginx/sites-available/default && \\
    ln -sf /dev/stdout /var/log/nginx/access.log && ln -sf /dev/stderr /var/log/nginx/error.log
EXPOSE 80
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
DOCKERFILE
	build_image "${refs[Nginx]}" "$WORK/nginx"

	# busybox: Debian's busybox-static and its applets in /bin, FROM scratch.
	mkdir -p "$FLATNET_CACHE/debs"
	ls "$FLATNET_CACHE/debs"/busybox-static_*.deb >/dev/null 2>&1 ||
		(cd "$FLATNET_CACHE/debs" && run_logged "$FLATNET_CACHE/debs/download.log" apt-get download busybox-static)
	deb=$(ls "$FLATNET_CACHE/debs"/busybox-static_*.deb | tail -n 1)
	root="$WORK/busybox/rootfs"
	mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$WORK/busybox/deb"
	dpkg-deb -x "$deb" "$WORK/busybox/deb"
	install -m 0755 "$WORK/busybox/deb/bin/busybox" "$root/bin/busybox"
	for applet in $("$root/bin/busybox" --list); do
		[ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
	done
	chmod 1777 "$root/tmp"
	printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n' >"$root/etc/passwd"
	printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
	printf 'FROM scratch\nCOPY rootfs/ /\nCMD ["sh"]\n' >"$WORK/busybox/Dockerfile"
	rm -rf "$WORK/busybox/deb"
	build_image "${refs[BusyBox]}" "$WORK/busybox"

	# Smoke checks, loopback only (--network none): what the specs exec works.
	out=$(docker run --rm --network none --entrypoint sh "${refs[Agnhost]}" -c \
		'for c in curl nc dig getent hostname ip bash; do command -v $c >/dev/null || echo "missing $c"; done
		 /agnhost connect 127.0.0.1:1 --timeout=3s --protocol=tcp 2>&1; echo "exit=$?"' 2>&1) || true
	[ "$out" = "$(printf 'REFUSED\nexit=1')" ] || die "${refs[Agnhost]} fails its smoke check" "printed: $out"
	out=$(docker run --rm --network none "${refs[JessieDnsutils]}" sh -c 'command -v dig && command -v getent' 2>&1) ||
		die "${refs[JessieDnsutils]} fails its smoke check" "printed: $out"
	out=$(docker run --rm --network none "${refs[BusyBox]}" sh -c 'wget --help 2>&1 | head -n 1; nslookup 2>&1 | head -n 1' 2>&1) ||
		die "${refs[BusyBox]} fails its smoke check" "printed: $out"
	out=$(docker run --rm --network none --entrypoint sh "${refs[Nginx]}" -c \
		'nginx -g "daemon on;" && sleep 1 && curl -fsS -o /dev/null http://127.0.0.1:80/ && echo ok' 2>&1) || true
	[ "$(tail -n 1 <<<"$out")" = ok ] || die "${refs[Nginx]} fails its smoke check" "printed: $out"
	info "smoke checks passed: agnhost (curl nc dig getent ip bash, ./agnhost connect), jessie-dnsutils, busybox, nginx"

	# Into the cluster's nodes.
	if kind_has_cluster "$CLUSTER"; then
		step "loading into kind cluster $CLUSTER: ${refs[*]}"
		run_logged "$OUT_DIR/logs/k8s-conformance-load.log" "$BIN_DIR/kind" load docker-image --name "$CLUSTER" \
			"${refs[Agnhost]}" "${refs[JessieDnsutils]}" "${refs[Nginx]}" "${refs[BusyBox]}"
		local node
		for node in $("$BIN_DIR/kind" get nodes --name "$CLUSTER"); do
			docker exec "$node" crictl inspecti "${refs[Pause]}" >/dev/null 2>&1 ||
				die "node $node has no ${refs[Pause]}" "the node image preloads it: rebuild the cluster (make cluster-down cluster)"
		done
		info "loaded; ${refs[Pause]} already on every node"
	else
		warn "CLUSTER=$CLUSTER is not a kind cluster here: load these images onto the nodes of $KUBECONFIG yourself:"
		printf '        %s\n' "${refs[@]}" >&2
	fi
}

# --- run -------------------------------------------------------------------------
# read_skips: --skip REGEXP for each line of the skips file (suites/skiplist reads it), and SKIP=.
SKIP_ARGS=()
read_skips() {
	local out
	out=$(conformance skip-args "$SKIPS_FILE") || die "$SKIPS_FILE: not a skip list" "format: <regexp><TAB><reason>"
	[ -z "$out" ] || mapfile -t SKIP_ARGS <<<"$out"
	[ -z "${SKIP:-}" ] || SKIP_ARGS+=(--skip "$SKIP")
}

ginkgo_cli() {
	if [ ! -x "$E2E_DIR/ginkgo" ] || [ "$(cat "$E2E_DIR/ginkgo.inputs" 2>/dev/null)" != "$(cat "$E2E_TEST.inputs")" ]; then
		info "ginkgo CLI: building the version e2e.test imports"
		go_e2e ginkgo github.com/onsi/ginkgo/v2/ginkgo
		cp "$E2E_TEST.inputs" "$E2E_DIR/ginkgo.inputs"
	fi
}

# The specs the focus selects, from ginkgo's JSON report: specs.json and JUnit of those
# only (the report itself lists every spec of the suite) and a summary on stderr. Reasons
# of skips come from the skips file (or the spec's own Skip message). Sets PASSED, FAILED.
summarize() {
	local counts
	counts=$(conformance summarize --report "$ART/report.json" --focus "$FOCUS" --skips "$SKIPS_FILE" \
		--skip "${SKIP:-}" --out "$ART") || die "could not summarize $ART/report.json"
	read -r PASSED FAILED <<<"$counts"
}

# e2e_args: the framework's flags for this cluster.
e2e_args() {
	local workers
	workers=$("$BIN_DIR/kubectl" get nodes --no-headers -l '!node-role.kubernetes.io/control-plane' 2>/dev/null | wc -l)
	# skeleton: no cloud provider; no SSH log dump (the namespace's events are still
	# dumped on failure); the node OS as the node image's.
	echo --kubeconfig="$KUBECONFIG" --provider=skeleton --num-nodes="$workers" --node-os-distro=debian \
		--disable-log-dump --dump-logs-on-failure=true
}

run() {
	local rc=0 t0 nodes=${NODES:-3}
	build_e2e
	ginkgo_cli
	read_skips
	[ -x "$BIN_DIR/kubectl" ] || die "no $BIN_DIR/kubectl" "run 'make tools' first"
	timeout 20 "$BIN_DIR/kubectl" get --raw /readyz >/dev/null 2>&1 ||
		die "no cluster answers at KUBECONFIG=$KUBECONFIG" \
			"create one: make cluster images deploy CLUSTER=$CLUSTER (then make k8s-conformance CLUSTER=$CLUSTER)"
	rm -rf "$ART"
	mkdir -p "$ART"
	step "k8s conformance: ginkgo -p $nodes --focus '$FOCUS' (${#SKIP_ARGS[@]} skip args from $(basename "$SKIPS_FILE")) -> $ART"
	info "cluster: $("$BIN_DIR/kubectl" version -o json 2>/dev/null | jq -r .serverVersion.gitVersion), $("$BIN_DIR/kubectl" get nodes --no-headers | wc -l) nodes (KUBECONFIG=$KUBECONFIG)"
	t0=$(date +%s)
	# shellcheck disable=SC2046
	"$E2E_DIR/ginkgo" --nodes="$nodes" --focus "$FOCUS" "${SKIP_ARGS[@]}" --timeout=2h --no-color \
		--silence-skips --json-report=report.json --output-dir="$ART" \
		"$E2E_TEST" -- $(e2e_args) 2>&1 | tee "$ART/e2e.log" >&2 || rc=$?
	info "ran in $(($(date +%s) - t0)) s (ginkgo exit $rc); log: $ART/e2e.log"
	[ -f "$ART/report.json" ] || die "ginkgo wrote no report (exit $rc)" "log: $ART/e2e.log"
	summarize
	printf '  JUnit: %s\n  run time: %d s\n\n' "$ART/junit.xml" "$(($(date +%s) - t0))" >&2
	if [ "$rc" -ne 0 ] || [ "$FAILED" -ne 0 ]; then
		die "k8s conformance failed: $FAILED failed (ginkgo exit $rc)" "log: $ART/e2e.log" "JUnit: $ART/junit.xml"
	fi
	info "k8s conformance passed ($PASSED specs)"
}

# list: the specs the focus selects and which of them the skips file drops (dry run).
list() {
	build_e2e
	ginkgo_cli
	read_skips
	local out
	out=$("$E2E_DIR/ginkgo" --dry-run -v --no-color --focus "$FOCUS" "${SKIP_ARGS[@]}" --silence-skips "$E2E_TEST" -- \
		--kubeconfig=/dev/null 2>&1) || true
	# Spec texts, without the label list ginkgo -v prints after each.
	grep -E '^ *\[sig-' <<<"$out" | sed -E -e 's/^ +//' -e 's/ \[[A-Za-z-]+(, [A-Za-z-]+)*\]$//' | sort -u >&2 || true
	grep -E '^Ran [0-9]+ of' <<<"$out" >&2 || true
}

main() {
	case "${1:-all}" in
	all) images && run ;;
	build) build_e2e ;;
	images) images ;;
	run) run ;;
	list) list ;;
	*) die "usage: $0 [all|build|images|run|list]" ;;
	esac
}
# One line: bash has parsed all of it before running any, so editing this file
# while it runs cannot change what runs.
main "$@"; exit $?
