#!/bin/sh
# Build musedrp-base:TAG and musedrp-<service>:TAG for each service given, with docker where a
# daemon answers, else podman.  Usage: docker/images.sh VERSION GIT_SHA TAG SERVICE...
#
# podman (DESIGN.md, "Containers do run here"): runc and no default ulimits
# (docker/containers.conf), RUN steps in a chroot, never a pull during the build, the Docker
# image format (OCI's drops the HEALTHCHECK).  When no
# registry can be reached, the Debian 12 base is made locally with debootstrap from the mirror
# apt already uses, and imported under the name the Dockerfile asks for.  pip in the build sees
# this machine's index settings and CA bundle through read-only mounts (docker/pip_mounts.py);
# nothing of the machine is copied into an image.
set -eu
VERSION=$1 GIT_SHA=$2 TAG=$3
shift 3
HERE=$(cd "$(dirname "$0")" && pwd)
DEBIAN=docker.io/library/debian:12-slim

SERVICE_OPTS=""
if docker info >/dev/null 2>&1; then
	build() { docker build "$@"; }
else
	export CONTAINERS_CONF="${CONTAINERS_CONF:-$HERE/containers.conf}"
	if ! podman image exists "$DEBIAN" && ! podman pull -q "$DEBIAN" >/dev/null 2>&1; then
		mirror=$(sed -n 's|^URIs: *\(\S*debian\)/*$|\1|p; s|^deb \(\S*debian\)/* bookworm .*|\1|p' \
			/etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null | head -n 1)
		root=$(mktemp -d)
		echo "no registry: making $DEBIAN with debootstrap from ${mirror:?no Debian mirror in apt\'s sources}"
		debootstrap --variant=minbase bookworm "$root" "$mirror" >/dev/null
		# as Debian's slim images: no documentation, manuals or translations, no apt caches
		printf 'path-exclude /usr/share/%s/*\n' doc man locale info \
			>"$root/etc/dpkg/dpkg.cfg.d/slim"
		rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/* \
			"$root"/usr/share/info/* "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
		tar -C "$root" -c . | podman import -q - "$DEBIAN"
		rm -rf "$root"
	fi
	# shellcheck disable=SC2046 # one word per option
	build() { podman build --format docker --pull=never --isolation chroot $(python3 "$HERE/pip_mounts.py") "$@"; }
	# podman 4.3 takes a cached ENV step whatever the build argument in it: the second service
	# image would be the first one.  Service images are metadata only: build them uncached.
	SERVICE_OPTS=--no-cache
fi

build -f "$HERE/base.Dockerfile" --build-arg VERSION="$VERSION" --build-arg GIT_SHA="$GIT_SHA" \
	-t "musedrp-base:$TAG" "$HERE/.."
for s in "$@"; do
	# shellcheck disable=SC2086 # empty: no option
	build $SERVICE_OPTS -f "$HERE/service.Dockerfile" --build-arg BASE="musedrp-base:$TAG" \
		--build-arg SERVICE="$s" -t "musedrp-$s:$TAG" "$HERE/.."
done
