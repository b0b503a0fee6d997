#!/usr/bin/env bash
# Builds a Prometheus image with no registry: Debian's own prometheus package
# (and the libc and javascript packages its binary and classic web UI use),
# unpacked with dpkg-deb into a rootfs imported FROM scratch, as agent-image.sh
# does. Nothing is compiled: a cold build is a ~25 MB download from the Debian
# mirror and a few seconds. The tag is a hash of the package versions and this
# script. Loads it into kind cluster $CLUSTER when that cluster exists. The image
# ref is the last line on stdout.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CLUSTER=${CLUSTER:-flatnet}
REPO=flatnet/prometheus
WORK="$OUT_DIR/prometheus-image"
# The binary needs libc only; the rest are the classic UI's assets, which the
# package links to from /usr/share/prometheus/web/static.
PACKAGES=(prometheus libc6 fonts-glyphicons-halflings libjs-bootstrap libjs-bootstrap4 libjs-d3
	libjs-eonasdan-bootstrap-datetimepicker libjs-jquery libjs-jquery-hotkeys libjs-moment
	libjs-moment-timezone libjs-mustache libjs-popper.js libjs-rickshaw)

timeout 20 docker info >/dev/null 2>&1 || die "no Docker engine answers" "run 'make engine' first"
command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null ||
	die "apt-get and dpkg-deb are needed (a Debian machine)" "or build your own image and pass PROMETHEUS_IMAGE=..."

# candidates: "PKG=VERSION" apt would download, one per line, for every package it knows.
candidates() {
	apt-cache policy "${PACKAGES[@]}" 2>/dev/null |
		awk '/^[^ ].*:$/ {p = substr($1, 1, length($1) - 1)} /Candidate:/ && $2 != "(none)" {print p "=" $2}'
}
mapfile -t versions < <(candidates)
if [ ${#versions[@]} -ne ${#PACKAGES[@]} ]; then
	[ "$(id -u)" -eq 0 ] || die "apt does not know every package of ${PACKAGES[*]}" "run 'sudo apt-get update'"
	run_logged "$FLATNET_CACHE/apt.log" apt-get update
	mapfile -t versions < <(candidates)
	[ ${#versions[@]} -eq ${#PACKAGES[@]} ] || die "Debian packages missing: only ${versions[*]} of ${PACKAGES[*]}"
fi

TAG=$(printf '%s\n' "${versions[@]}" | cat - "$REPO_ROOT/scripts/prometheus-image.sh" | sha256sum | cut -c1-16)
REF="$REPO:$TAG"
if docker image inspect "$REF" >/dev/null 2>&1; then
	info "prometheus image $REF: up to date"
else
	step "prometheus image: building $REF from Debian's ${versions[0]}"
	debs="$FLATNET_CACHE/debs/prometheus-$(printf '%s\n' "${versions[@]}" | sha256sum | cut -c1-16)"
	mkdir -p "$debs"
	if ! ls "$debs"/prometheus_*.deb >/dev/null 2>&1; then
		info "downloading ${#versions[@]} packages"
		# apt's sandbox user may not write here; the download then runs as us.
		(cd "$debs" && run_logged "$debs/download.log" apt-get download -o APT::Sandbox::User=root "${versions[@]}")
	fi
	rm -rf "$WORK" && mkdir -p "$WORK/rootfs"
	for d in "$debs"/*.deb; do dpkg-deb -x "$d" "$WORK/rootfs"; done
	r="$WORK/rootfs"
	# Only what a container needs: no docs, man pages, init scripts, locales.
	rm -rf "$r/usr/share/doc" "$r/usr/share/man" "$r/usr/share/lintian" "$r/usr/share/locale" \
		"$r/etc/init.d" "$r/etc/default" "$r/etc/logrotate.d" "$r/usr/lib/systemd" "$r/usr/bin/promtool" \
		"$r/usr/lib/x86_64-linux-gnu/gconv" "$r/usr/share/nodejs" "$r/usr/share/sass"
	# moment-timezone ships every variant (200 MB); the UI loads one.
	find "$r/usr/share/javascript/moment-timezone" -mindepth 1 -maxdepth 1 ! -name moment-timezone-with-data.min.js -exec rm -rf {} +
	# usrmerge: the binary asks for /lib64/ld-linux-x86-64.so.2.
	[ -e "$r/lib64" ] || ln -s usr/lib64 "$r/lib64"
	[ -e "$r/lib" ] || ln -s usr/lib "$r/lib"
	mkdir -p "$r/tmp" "$r/prometheus" "$r/etc/prometheus"
	chmod 1777 "$r/tmp" "$r/prometheus"
	printf 'root:x:0:0::/:/nonexistent\nnobody:x:65534:65534::/nonexistent:/nonexistent\n' >"$r/etc/passwd"
	printf 'root:x:0:\nnogroup:x:65534:\n' >"$r/etc/group"
	if [ "$(id -u)" -eq 0 ]; then
		chroot "$r" /usr/bin/prometheus --version >"$WORK/version" 2>&1 ||
			die "the unpacked prometheus does not run: $(cat "$WORK/version")"
	else
		echo "${versions[0]}" >"$WORK/version"
	fi
	import_rootfs "$r" "$REF" \
		--change 'ENTRYPOINT ["/usr/bin/prometheus"]' \
		--change 'CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]' \
		--change 'USER 65534:65534' \
		--change 'WORKDIR /prometheus' \
		--change "LABEL org.opencontainers.image.title=prometheus org.opencontainers.image.version=${versions[0]#prometheus=} org.opencontainers.image.revision=$TAG"
	info "prometheus image $REF: $(head -n1 "$WORK/version"); $(image_size "$REF")"
fi

kind_load_image "prometheus image" "$REF" "$WORK.load.log"
echo "$REF"
