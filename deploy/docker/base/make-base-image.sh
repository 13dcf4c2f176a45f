#!/usr/bin/env bash
# Make a local stand-in for a Debian bookworm + Python 3.11 base image.
#
# No container registry is reachable from the build/test machines, so nothing
# can be pulled.  This script (idempotent; every step is skipped when already
# done):
#   1. installs docker.io and debootstrap with apt-get if they are missing;
#   2. starts dockerd in the background if `docker info` does not answer;
#   3. builds $MOBVIBE_BASE_IMAGE with debootstrap + `docker import` if the
#      image does not exist yet.
#
# Environment overrides:
#   MOBVIBE_BASE_IMAGE          image name   (default mobvibe/python-base:bookworm)
#   MOBVIBE_DEBOOTSTRAP_MIRROR  Debian mirror (default: the one the host's apt uses)
#   MOBVIBE_DOCKERD_ARGS        dockerd flags (default: --storage-driver=vfs
#                               --iptables=false --bridge=none)
#   MOBVIBE_DOCKERD_LOG         dockerd log  (default /tmp/dockerd.log)
set -euo pipefail

IMAGE="${MOBVIBE_BASE_IMAGE:-mobvibe/python-base:bookworm}"
SUITE=bookworm
PACKAGES=python3,python3-venv,python3-pip,ca-certificates
DOCKERD_LOG="${MOBVIBE_DOCKERD_LOG:-/tmp/dockerd.log}"
DOCKERD_TIMEOUT=60
HOST_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt

log() { printf 'make-base-image: %s\n' "$*" >&2; }
die() { printf 'make-base-image: ERROR: %s\n' "$*" >&2; exit 1; }
need_root() { [ "$(id -u)" -eq 0 ] || die "must run as root to $1"; }
# Any other failing command: say which one instead of exiting silently.
set -E
trap 'die "unexpected failure (exit $?) at line $LINENO: $BASH_COMMAND"' ERR

# ---------------------------------------------------------------- packages --
ensure_packages() {
    local missing=()
    command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
    # docker.io also ships the CLI; a stray CLI-only binary does not count.
    if ! command -v docker >/dev/null 2>&1 && [[ ${#missing[@]} -eq 0 ]]; then
        missing+=(docker.io)
    fi
    command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
    if [[ ${#missing[@]} -eq 0 ]]; then
        log "docker.io and debootstrap already installed"
        return
    fi
    need_root "install ${missing[*]}"
    local t0=$SECONDS aptlog=/tmp/make-base-image-apt.log
    log "installing ${missing[*]} with apt-get (log: $aptlog)"
    if ! { apt-get update -q && DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -q --no-install-recommends "${missing[@]}"; } \
            >"$aptlog" 2>&1; then
        tail -n 20 "$aptlog" >&2
        die "apt-get could not install ${missing[*]} (see $aptlog)"
    fi
    log "installed ${missing[*]} in $((SECONDS - t0))s"
}

# ------------------------------------------------------------------ engine --
ensure_engine() {
    if docker info >/dev/null 2>&1; then
        log "docker engine already running"
        return
    fi
    need_root "start dockerd"
    local args pid deadline t0=$SECONDS
    read -r -a args <<<"${MOBVIBE_DOCKERD_ARGS:---storage-driver=vfs --iptables=false --bridge=none}"
    # A dockerd that was killed leaves its pid file behind and the next one
    # refuses to start.
    if [[ -f /var/run/docker.pid ]]; then
        pid=$(cat /var/run/docker.pid 2>/dev/null || true)
        if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
            die "dockerd (pid $pid) is running but 'docker info' fails; see $DOCKERD_LOG"
        fi
        rm -f /var/run/docker.pid
    fi
    log "starting dockerd ${args[*]} (log: $DOCKERD_LOG)"
    setsid nohup dockerd "${args[@]}" </dev/null >>"$DOCKERD_LOG" 2>&1 &
    pid=$!
    deadline=$((SECONDS + DOCKERD_TIMEOUT))
    until docker info >/dev/null 2>&1; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 15 "$DOCKERD_LOG" >&2
            die "dockerd exited during start-up (see $DOCKERD_LOG)"
        fi
        if ((SECONDS >= deadline)); then
            tail -n 15 "$DOCKERD_LOG" >&2
            die "dockerd (pid $pid) did not answer 'docker info' within ${DOCKERD_TIMEOUT}s (see $DOCKERD_LOG)"
        fi
        sleep 1
    done
    log "docker engine up (dockerd pid $pid) after $((SECONDS - t0))s"
}

# ------------------------------------------------------- host apt settings --
# First URI of an enabled "deb" source for suite $1 in the host's apt sources
# (one-line *.list files and deb822 *.sources files).
apt_uri_for_suite() {
    local suite=$1 f found=""
    local lists=() deb822=()
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        if [[ -r $f ]]; then lists+=("$f"); fi
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        if [[ -r $f ]]; then deb822+=("$f"); fi
    done
    if [[ ${#lists[@]} -gt 0 ]]; then
        found=$(awk -v s="$suite" '
            { sub(/#.*/, "") }
            $1 == "deb" {
                i = 2
                if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                if ($(i + 1) == s) print $i
            }' "${lists[@]}")
    fi
    if [[ -z $found && ${#deb822[@]} -gt 0 ]]; then
        found=$(awk -v s="$suite" '
            BEGIN { RS = ""; FS = "\n" }
            {
                types = ""; uris = ""; suites = ""; enabled = "yes"
                for (j = 1; j <= NF; j++) {
                    line = $j
                    if (line ~ /^[ \t]*#/) continue
                    k = tolower(line); sub(/:.*/, "", k)
                    v = line; sub(/^[^:]*:[ \t]*/, "", v)
                    if (k == "types") types = " " v " "
                    else if (k == "uris") uris = v
                    else if (k == "suites") suites = " " v " "
                    else if (k == "enabled") enabled = tolower(v)
                }
                if (enabled != "no" && types ~ / deb / && suites ~ (" " s " ")) {
                    split(uris, u, /[ \t]+/); print u[1]
                }
            }' "${deb822[@]}")
    fi
    printf '%s\n' "${found%%$'\n'*}"
}

# ---------------------------------------------------------------- pip conf --
# Write the image's /etc/pip.conf: the host's network-related pip settings
# (index URLs, trusted hosts, proxy, timeouts) plus the CA bundle.  Host-local
# paths (find-links, constraint, file:// indexes) do not exist in the image and
# are dropped.
write_pip_conf() {
    local out=$1 pip_cmd=() line scope key value name
    local -A conf=()
    local order=(index-url extra-index-url trusted-host proxy timeout retries disable-pip-version-check)
    if command -v pip3 >/dev/null 2>&1; then pip_cmd=(pip3)
    elif command -v pip >/dev/null 2>&1; then pip_cmd=(pip)
    elif python3 -m pip --version >/dev/null 2>&1; then pip_cmd=(python3 -m pip)
    fi
    take() {  # take KEY VALUE SOURCE
        local k=$1 v=$2 src=$3 url kept=()
        if [[ $k == default-timeout ]]; then k=timeout; fi
        case $k in
            index-url|extra-index-url)
                for url in $v; do
                    if [[ $url == http://* || $url == https://* ]]; then kept+=("$url")
                    else log "pip: not copying $k $url from $src (host-local)"; fi
                done
                if [[ ${#kept[@]} -gt 0 ]]; then conf[$k]="${kept[*]}"; fi
                ;;
            trusted-host|proxy|timeout|retries|disable-pip-version-check)
                conf[$k]=$v ;;
            cert|client-cert) ;;  # replaced by the image's own bundle below
            *) log "pip: not copying $k=$v from $src (host-local or not network-related)" ;;
        esac
        return 0
    }
    # Config files first (global < user < site), then PIP_* variables, which
    # override them, as in pip itself.
    if [[ ${#pip_cmd[@]} -gt 0 ]]; then
        while IFS= read -r line; do
            [[ $line =~ ^([^.]+)\.([^=]+)=\'(.*)\'$ ]] || continue
            scope=${BASH_REMATCH[1]} key=${BASH_REMATCH[2]} value=${BASH_REMATCH[3]}
            [[ $scope == :env: ]] && continue
            take "$key" "$value" "pip config ($scope)"
        done < <("${pip_cmd[@]}" config list 2>/dev/null || true)
    fi
    while IFS= read -r name; do
        [[ $name == PIP_CONFIG_FILE ]] && continue
        key=${name#PIP_}; key=${key,,}; key=${key//_/-}
        take "$key" "${!name}" "\$$name"
    done < <(compgen -e | grep '^PIP_' || true)
    if [[ -z ${conf[proxy]:-} ]]; then
        value=${HTTPS_PROXY:-${https_proxy:-${HTTP_PROXY:-${http_proxy:-}}}}
        if [[ -n $value ]]; then conf[proxy]=$value; fi
    fi
    {
        printf '# Written by deploy/docker/base/make-base-image.sh from the host pip settings.\n'
        printf '[global]\ncert = %s\n' "$HOST_CA_BUNDLE"
        for key in "${order[@]}"; do
            if [[ -n ${conf[$key]:-} ]]; then printf '%s = %s\n' "$key" "${conf[$key]}"; fi
        done
    } >"$out"
    unset -f take
}

# ------------------------------------------------------------------- image --
cleanup_rootfs() {  # unmount anything debootstrap left mounted, then delete
    local dir=$1 mnt
    [[ -n $dir && -d $dir ]] || return 0
    while read -r mnt; do
        umount -l "$mnt" 2>/dev/null || true
    done < <(awk -v d="$dir/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r)
    rm -rf --one-file-system "$dir"
}

build_image() {
    local t0 mirror security apt_proxy workdir rootfs extra
    mirror="${MOBVIBE_DEBOOTSTRAP_MIRROR:-$(apt_uri_for_suite "$SUITE")}"
    mirror="${mirror:-http://deb.debian.org/debian}"
    security=$(apt_uri_for_suite "$SUITE-security")
    security="${security:-${mirror%/debian}/debian-security}"
    # debootstrap downloads with wget, which follows http_proxy/https_proxy.
    apt_proxy=""
    eval "$(apt-config shell apt_proxy Acquire::http::Proxy)"
    if [[ -n $apt_proxy && -z ${http_proxy:-} ]]; then
        export http_proxy=$apt_proxy
        log "using the host's apt proxy $apt_proxy for debootstrap"
    fi

    workdir=$(mktemp -d /var/tmp/mobvibe-base.XXXXXX)
    # shellcheck disable=SC2064  # expand $workdir now
    trap "cleanup_rootfs '$workdir'" EXIT
    rootfs=$workdir/rootfs

    t0=$SECONDS
    log "debootstrap $SUITE from $mirror into $rootfs (log: $workdir/debootstrap.log)"
    if ! debootstrap --variant=minbase --include="$PACKAGES" \
            "$SUITE" "$rootfs" "$mirror" >"$workdir/debootstrap.log" 2>&1; then
        cp "$workdir/debootstrap.log" /tmp/make-base-image-debootstrap.log
        if [[ -f $rootfs/debootstrap/debootstrap.log ]]; then
            tail -n 20 "$rootfs/debootstrap/debootstrap.log" >&2
        fi
        tail -n 20 "$workdir/debootstrap.log" >&2
        die "debootstrap failed (log copied to /tmp/make-base-image-debootstrap.log)"
    fi
    log "debootstrap done in $((SECONDS - t0))s"

    t0=$SECONDS
    # CA: the host reaches PyPI/Debian through a TLS-intercepting proxy whose
    # CA lives only in the host bundle.  Install the certificates the image
    # lacks as local CAs (so update-ca-certificates in a later build keeps
    # them and OpenSSL's hashed lookup finds them), then use the host bundle.
    if [[ -r $HOST_CA_BUNDLE ]]; then
        mkdir -p "$rootfs/usr/local/share/ca-certificates"
        extra=$(awk -v known="$rootfs$HOST_CA_BUNDLE" \
                    -v outdir="$rootfs/usr/local/share/ca-certificates" '
            BEGIN {
                while ((getline line < known) > 0) {
                    sub(/[ \t\r]+$/, "", line)
                    if (line ~ /-BEGIN CERTIFICATE-/) { cur = ""; inb = 1 }
                    if (inb) cur = cur line "\n"
                    if (line ~ /-END CERTIFICATE-/) { seen[cur] = 1; inb = 0 }
                }
            }
            { sub(/[ \t\r]+$/, "") }
            /-BEGIN CERTIFICATE-/ { cur = ""; inb = 1 }
            inb { cur = cur $0 "\n" }
            /-END CERTIFICATE-/ {
                inb = 0
                if (!(cur in seen)) {
                    n++; f = sprintf("%s/host-extra-ca-%02d.crt", outdir, n)
                    printf "%s", cur > f; close(f)
                }
            }
            END { print n + 0 }' "$HOST_CA_BUNDLE")
        if [[ $extra -gt 0 ]]; then
            chroot "$rootfs" update-ca-certificates >/dev/null 2>&1 ||
                log "warning: update-ca-certificates in the image failed"
        fi
        cp "$HOST_CA_BUNDLE" "$rootfs$HOST_CA_BUNDLE"
        log "CA bundle copied from the host ($extra certificate(s) not in Debian's set added)"
    else
        log "warning: no $HOST_CA_BUNDLE on the host; keeping Debian's CA bundle"
    fi

    write_pip_conf "$rootfs/etc/pip.conf"
    log "pip config for the image: $(grep -v '^#' "$rootfs/etc/pip.conf" | tr '\n' ' ')"

    # apt inside the image: same mirrors as the host, plus updates/security,
    # and the host's Acquire settings (proxy, Check-Valid-Until, ...).
    cat >"$rootfs/etc/apt/sources.list" <<SOURCES
deb $mirror $SUITE main
deb $mirror $SUITE-updates main
deb $security $SUITE-security main
SOURCES
    apt-config dump 2>/dev/null |
        grep -E '^Acquire::((https?|ftp)::Proxy|Check-Valid-Until|Check-Date)' \
            >"$rootfs/etc/apt/apt.conf.d/99host-acquire" || true
    if [[ ! -s $rootfs/etc/apt/apt.conf.d/99host-acquire ]]; then
        rm -f "$rootfs/etc/apt/apt.conf.d/99host-acquire"
    fi

    # Slim down: package caches and lists are re-fetched by `apt-get update`.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
        "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/* \
        "$rootfs"/tmp/* "$rootfs"/var/tmp/*
    mkdir -p "$rootfs/var/lib/apt/lists/partial"

    log "importing $rootfs as $IMAGE"
    tar --numeric-owner -C "$rootfs" -c . |
        docker import \
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'ENV LANG=C.UTF-8' \
            --change 'CMD ["python3"]' \
            --message "debootstrap --variant=minbase $SUITE ($PACKAGES) from $mirror" \
            - "$IMAGE" >/dev/null
    log "import done in $((SECONDS - t0))s"
    cleanup_rootfs "$workdir"
    trap - EXIT
}

ensure_image() {
    if docker image inspect "$IMAGE" >/dev/null 2>&1; then
        log "image $IMAGE already present; nothing to build"
        return
    fi
    need_root "build $IMAGE with debootstrap"
    build_image
    local version
    version=$(docker run --rm --network none "$IMAGE" \
        python3 -c 'import ssl, sys, venv; print(sys.version.split()[0])') ||
        die "the new image $IMAGE cannot run python3"
    log "built $IMAGE: python3 $version"
}

# The compose CLI lets the tests check deploy/docker-compose.yml with the tool
# itself; they skip that check without it, so a failure here is not fatal.
ensure_compose() {
    if docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null 2>&1; then
        return
    fi
    [ "$(id -u)" -eq 0 ] || { log "no compose CLI (not root: not installing docker-compose)"; return; }
    if DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            docker-compose >/tmp/make-base-image-compose.log 2>&1; then
        log "installed docker-compose"
    else
        log "could not install docker-compose (see /tmp/make-base-image-compose.log)"
    fi
}

main() {
    ensure_packages
    ensure_compose
    ensure_engine
    ensure_image
    log "ready: $IMAGE ($(docker image inspect --format '{{.Size}}' "$IMAGE" |
        awk '{ printf "%.0f MB", $1 / 1e6 }'))"
}

main "$@"
