#!/usr/bin/env bash
# Makes sure a Docker engine that can start --privileged containers (kind needs it)
# answers on DOCKER_HOST or /var/run/docker.sock.
#
#   1. an engine already answers and runs a privileged container -> used as is;
#   2. an engine answers but cannot -> stop with what is wrong; a working engine of
#      someone else's is never touched;
#   3. no engine -> build dockerd (moby v2) and runc from the Go module proxy at the
#      versions pinned in versions.env, take containerd and iptables from Debian,
#      and start dockerd in the background, tracked by pid file, logging to a file.
#
# Why not Debian's docker.io: its dockerd 20.10 asks for every capability when it
# starts a privileged container, and these machines' bounding set lacks
# CAP_SYS_RESOURCE, so runc fails ("unable to apply caps"). moby v2 derives the set
# from its own process; it needs runc >= 1.2 (time namespace), hence both from source.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ENGINE_DIR="$FLATNET_CACHE/engine/moby-$MOBY_VERSION-runc-$RUNC_VERSION"
ENGINE_BIN="$ENGINE_DIR/bin"
PIDFILE=/run/flatnet/dockerd.pid
LOG="$FLATNET_CACHE/engine/dockerd.log"
SOCK=/var/run/docker.sock
CHECK_IMAGE=flatnet/engine-check:1

command -v docker >/dev/null || die "the docker client is not installed" \
	"install a Docker CLI >= 25 (API 1.44+), e.g. Docker's static client, and re-run"

# privileged_ok: the engine can create and start a privileged container. Uses a
# one-file image made here (busybox from Debian), since nothing can be pulled.
privileged_ok() {
	if ! docker image inspect "$CHECK_IMAGE" >/dev/null 2>&1; then
		apt_install busybox-static
		local d
		d=$(mktemp -d)
		cp /bin/busybox "$d/busybox"
		tar -C "$d" -c . | docker import - "$CHECK_IMAGE" >/dev/null || { rm -rf "$d"; return 1; }
		rm -rf "$d"
	fi
	docker run --rm --privileged --network none "$CHECK_IMAGE" /busybox true >"$FLATNET_CACHE/engine-check.log" 2>&1
}

engine_answers() { timeout 10 docker info >/dev/null 2>&1; }

if engine_answers; then
	if privileged_ok; then
		info "docker engine: ready ($(docker version -f '{{.Server.Version}}' 2>/dev/null), privileged containers work)"
		exit 0
	fi
	if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
		die "the engine flatnet started (pid $(cat "$PIDFILE")) cannot run a privileged container" \
			"$(tail -n 3 "$FLATNET_CACHE/engine-check.log" 2>/dev/null)" "its log: $LOG"
	fi
	die "the running Docker engine cannot start --privileged containers, which kind needs" \
		"$(tail -n 2 "$FLATNET_CACHE/engine-check.log" 2>/dev/null)" \
		"flatnet leaves an engine it did not start alone. Stop it (e.g. 'pkill dockerd'; it is" \
		"Debian's dockerd 20.10 on these machines) and re-run: flatnet then starts its own."
fi

# An engine socket we cannot use is someone else's business: say so, touch nothing.
if [ -S "$SOCK" ] && [ -z "${DOCKER_HOST:-}" ]; then
	if ! [ -r "$SOCK" ] || ! [ -w "$SOCK" ]; then
		die "$SOCK exists but $(id -un) cannot use it (owner $(stat -c %U:%G "$SOCK"))" \
			"add yourself to its group (usermod -aG $(stat -c %G "$SOCK") $(id -un)) or run as root"
	fi
	if pgrep -x dockerd >/dev/null && ! { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }; then
		die "a dockerd (pid $(pgrep -x dockerd | head -1)) owns $SOCK but does not answer" \
			"it is not flatnet's: check its log, or stop it and re-run to let flatnet start its own"
	fi
fi
[ -n "${DOCKER_HOST:-}" ] && die "DOCKER_HOST=$DOCKER_HOST does not answer" "start that engine, or unset DOCKER_HOST to let flatnet run its own"
[ "$(id -u)" -eq 0 ] || die "no Docker engine is running, and starting one needs root" "run as root (sudo make ...)"

step "docker engine: none running; setting up dockerd $MOBY_VERSION + runc $RUNC_VERSION"
apt_install containerd iptables libseccomp-dev pkg-config busybox-static ca-certificates
mkdir -p "$ENGINE_BIN" /run/flatnet
# Side by side: one resolves its modules (network) while the other compiles.
(CGO_ENABLED=1 go_build_pinned runc github.com/opencontainers/runc "$RUNC_VERSION" \
	github.com/opencontainers/runc "$ENGINE_BIN/runc" -tags seccomp \
	-ldflags "-X main.version=${RUNC_VERSION#v}") &
runc_pid=$!
CGO_ENABLED=0 go_build_pinned dockerd github.com/moby/moby/v2 "$MOBY_VERSION" \
	github.com/moby/moby/v2/cmd/dockerd "$ENGINE_BIN/dockerd" \
	-tags "exclude_graphdriver_btrfs exclude_graphdriver_devicemapper no_btrfs" \
	-ldflags "-X github.com/moby/moby/v2/dockerversion.Version=${MOBY_VERSION#v}"
wait "$runc_pid" || die "building runc failed (output above)"

# Our own dockerd that no longer answers may still be shutting down (stopping its
# containers after a SIGTERM): a second one would refuse its pid file. Wait for it.
old_pid=$(cat "$PIDFILE" 2>/dev/null || true) # dockerd removes the file as it exits
if [ -n "$old_pid" ] && kill -0 "$old_pid" 2>/dev/null; then
	info "docker engine: the previous dockerd (pid $old_pid) is still stopping; waiting up to 60 s"
	for _ in $(seq 60); do kill -0 "$old_pid" 2>/dev/null || break; sleep 1; done
	kill -0 "$old_pid" 2>/dev/null &&
		die "flatnet's previous dockerd (pid $old_pid) neither answers nor exits" \
			"stop it (kill $old_pid) and re-run; its log: $LOG"
fi
# A stale pid file or socket from a previous session (processes are gone, disk stays).
if [ -f "$PIDFILE" ] && ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then rm -f "$PIDFILE"; fi
[ -S "$SOCK" ] && ! pgrep -x dockerd >/dev/null && rm -f "$SOCK"
# containerd left behind by a dead dockerd keeps its socket and pid; dockerd restarts its own.
rm -f /var/run/docker/containerd/containerd.pid 2>/dev/null || true

step "docker engine: starting dockerd (log: $LOG)"
mkdir -p "$(dirname "$LOG")"
# runc first in PATH: Debian's 1.1 lacks the time namespace moby v2 asks for.
# --userland-proxy=false: no docker-proxy binary; published ports use iptables only.
PATH="$ENGINE_BIN:$PATH" setsid nohup dockerd \
	--pidfile "$PIDFILE" \
	--userland-proxy=false \
	>>"$LOG" 2>&1 </dev/null &
for i in $(seq 1 60); do
	engine_answers && break
	if ! kill -0 $! 2>/dev/null; then
		tail -n 20 "$LOG" >&2
		die "dockerd exited while starting" "full log: $LOG"
	fi
	sleep 1
	[ $((i % 10)) -eq 0 ] && info "waiting for dockerd ($i s)"
done
engine_answers || die "dockerd did not answer within 60 s" "log: $LOG"
privileged_ok || die "flatnet's dockerd runs but cannot start a privileged container" \
	"$(tail -n 3 "$FLATNET_CACHE/engine-check.log")" "log: $LOG"
info "docker engine: ready (dockerd $(docker version -f '{{.Server.Version}}'), pid $(cat "$PIDFILE"))"
