#!/usr/bin/env bash
# Builds what test/vm/run boots, from Debian packages only, into DIR
# (target/vm): the kernel of the machine's Debian release (`linux-image-amd64`'s
# dependency, or KERNEL_PACKAGE) and busybox-static, fetched with
# `apt-get download` and unpacked with `dpkg-deb -x` (never installed);
# `depmod -b` over the unpacked modules (Debian's kernel packages ship no
# modules.dep); and an initramfs of busybox, test/vm/init, the units the guest
# boots into (test/vm/units/) and the modules that mount its root
# (virtio_pci, 9pnet_virtio, 9p, overlay, with their dependencies).
#
#   DIR/vmlinuz         the kernel
#   DIR/initrd.img      the initramfs
#   DIR/kernel/         the unpacked package (its lib/modules is the guest's)
#   DIR/kernel.release  the kernel's release (6.1.0-57-amd64)
#
# Nothing is fetched again when DIR already holds that kernel package; the
# initramfs is rebuilt every time (a second): its inputs are in the repo.
# Needs: apt-get, dpkg-deb, depmod and modprobe (kmod), cpio, gzip.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=$(mkdir -p "${1:-target/vm}" && cd "${1:-target/vm}" && pwd)

for tool in apt-get dpkg-deb depmod modprobe cpio gzip; do
	command -v "$tool" >/dev/null || { echo "test/vm/build.sh: $tool is missing (make vm-deps)" >&2; exit 1; }
done

package=${KERNEL_PACKAGE:-$(apt-cache depends linux-image-amd64 2>/dev/null |
	sed -n 's/^ *Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' | head -n 1)}
[ -n "$package" ] || { echo "test/vm/build.sh: no linux-image-*-amd64 package known to apt (apt-get update?)" >&2; exit 1; }
release=${package#linux-image-}

download() { # package... into $dir/debs
	mkdir -p "$dir/debs"
	(cd "$dir/debs" && apt-get download -q -o APT::Sandbox::User=root "$@" >/dev/null)
}

if [ "$(cat "$dir/kernel.package" 2>/dev/null)" != "$package" ]; then
	echo "test/vm/build.sh: fetching $package"
	rm -rf "$dir/kernel" "$dir/debs" "$dir/kernel.package" "$dir/kernel.release"
	download "$package"
	dpkg-deb -x "$dir"/debs/"$package"_*.deb "$dir/kernel"
	depmod -b "$dir/kernel" "$release"
	rm -f "$dir"/debs/"$package"_*.deb
	echo "$release" > "$dir/kernel.release"
	echo "$package" > "$dir/kernel.package"
fi
cp "$dir/kernel/boot/vmlinuz-$release" "$dir/vmlinuz"

if [ ! -x "$dir/busybox/bin/busybox" ]; then
	download busybox-static
	rm -rf "$dir/busybox"
	dpkg-deb -x "$dir"/debs/busybox-static_*.deb "$dir/busybox"
	rm -f "$dir"/debs/busybox-static_*.deb
fi

# The initramfs, from scratch.
root=$(mktemp -d "$dir/initramfs.XXXXXX")
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,dev,proc,sys,host,rw,newroot,lib/modules,etc/vm-units}
cp "$dir/busybox/bin/busybox" "$root/bin/busybox"
cp "$here/init" "$root/init"
chmod 0755 "$root/init"
cp "$here"/units/* "$root/etc/vm-units/"
: > "$root/modules"
for module in virtio_pci 9pnet_virtio 9p overlay; do
	modprobe -d "$dir/kernel" -S "$release" --show-depends "$module" | while read -r kind path _; do
		[ "$kind" = insmod ] || continue
		name=$(basename "$path")
		grep -qx "$name" "$root/modules" && continue
		cp "$path" "$root/lib/modules/$name"
		echo "$name" >> "$root/modules"
	done
done
echo "$release" > "$root/etc/vm-release"
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -9) > "$dir/initrd.img.new"
mv "$dir/initrd.img.new" "$dir/initrd.img"
echo "test/vm/build.sh: $dir/vmlinuz ($release), $dir/initrd.img ($(wc -l < "$root/modules") modules)"
