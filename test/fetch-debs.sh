#!/usr/bin/env bash
# Fetches Debian packages of other suites (trixie, sid) and unpacks them into a
# folder of ours, without touching the machine's apt sources or installing
# anything: containerd 1.7 (trixie) and 2.1 (sid) for the compatibility matrix,
# oras (trixie) to push wasm OCI artifacts as users do.
#
#   test/fetch-debs.sh OUT_DIR
#
# Leaves OUT_DIR/containerd-1.7/usr/bin/containerd, OUT_DIR/containerd-2.1/...,
# OUT_DIR/oras/usr/bin/oras. Idempotent: what is already there is kept.
set -euo pipefail
out=$(realpath -m "$1")
mkdir -p "$out"
apt_dir="$out/apt"

# The mirror and keyring are the machine's own: read from its sources file,
# never written here.
src=/etc/apt/sources.list.d/debian.sources
[ -f "$src" ] || src=/etc/apt/sources.list
uri=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' "$src" | grep -v security | head -n 1)
[ -n "$uri" ] || uri=$(sed -n 's/^deb \(\[[^]]*\] \)\{0,1\}\([^ ]*\) .*/\2/p' "$src" | grep -v security | head -n 1)
keyring=$(sed -n 's/^Signed-By: *//p' "$src" | head -n 1)
[ -n "$keyring" ] || keyring=/usr/share/keyrings/debian-archive-keyring.gpg

apt_opts=(
	-o "Dir::Etc::SourceList=$apt_dir/sources.list"
	-o "Dir::Etc::SourceParts=-"
	-o "Dir::State::Lists=$apt_dir/lists"
	-o "Dir::Cache=$apt_dir/cache"
	-o "Dir::State::status=$apt_dir/status"
	-o "APT::Sandbox::User=root"
)

fetch() { # fetch NAME PACKAGE/SUITE
	local name=$1 pkg=$2
	[ -d "$out/$name/usr" ] && return 0
	if [ ! -f "$apt_dir/ready" ]; then
		mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
		: > "$apt_dir/status"
		echo "deb [signed-by=$keyring] $uri trixie main" > "$apt_dir/sources.list"
		echo "deb [signed-by=$keyring] $uri sid main" >> "$apt_dir/sources.list"
		apt-get "${apt_opts[@]}" update -qq
		touch "$apt_dir/ready"
	fi
	(cd "$apt_dir" && rm -f ./*.deb && apt-get "${apt_opts[@]}" download -qq "$pkg")
	mkdir -p "$out/$name.tmp"
	dpkg-deb -x "$apt_dir"/*.deb "$out/$name.tmp"
	rm -f "$apt_dir"/*.deb
	mv "$out/$name.tmp" "$out/$name"
	echo "$name: $(ls "$out/$name/usr/bin" | tr '\n' ' ')"
}

fetch containerd-1.7 containerd/trixie
fetch containerd-2.1 containerd/sid
fetch oras oras/trixie
