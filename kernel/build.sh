#!/usr/bin/env bash
# Builds an hk kernel and prints the path of its image (vmlinux, or Image on arm64) on stdout.
#
#   kernel/build.sh guest               the microVM guest kernel (guest.config)
#   kernel/build.sh guest --arch arm64  the arm64 guest kernel for Hypervisor.framework, an
#                                       arm64 Image cross-built with aarch64-linux-gnu-gcc
#                                       (guest.config without its x86 options + guest-arm64.config)
#   kernel/build.sh lab                 the L1 kernel of the nested KVM lab (guest.config + lab.config)
#
# All get kernel/patches/*.patch (each says why it exists; the x86 ones change nothing on arm64).
#
# The result is cached outside the repository, under
# ${HK_CACHE_DIR:-${XDG_CACHE_HOME:-~/.cache}/hk}/kernel/<flavor>-<hash>/, keyed by a hash of
# everything that goes into it (source tarball, fragments, patches, this script, compiler), so a
# second call costs nothing and a changed input rebuilds. <flavor> in the same directory
# points at the newest build; that is where `hk` looks by default.
#
# The source is Debian's linux-source-6.1 package; where it is missing, the kernel.org
# tarball of Linux 6.1, checked against a pinned sha256.
set -euo pipefail

usage() {
	echo "usage: kernel/build.sh guest [--arch x86_64|arm64] | lab" >&2
	exit 2
}
flavor=${1:-}
arch=x86_64
if [[ ${2:-} == --arch ]]; then
	arch=${3:-}
	[[ $# == 3 ]] || usage
elif [[ $# -gt 1 ]]; then
	usage
fi
case "$flavor:$arch" in
guest:x86_64) fragments=(guest.config) ;;
lab:x86_64) fragments=(guest.config lab.config) ;;
guest:arm64) fragments=(guest.config guest-arm64.config) ;;
*) usage ;;
esac
# What the build makes and where it lands in the cache: the x86 names stay as they were.
make_args=()
target=vmlinux
image=vmlinux
if [[ $arch == arm64 ]]; then
	flavor=guest-arm64
	command -v aarch64-linux-gnu-gcc >/dev/null || {
		echo "[kernel:$flavor] aarch64-linux-gnu-gcc is missing: apt-get install gcc-aarch64-linux-gnu" >&2
		exit 1
	}
	make_args=(ARCH=arm64 CROSS_COMPILE=aarch64-linux-gnu-)
	target=Image
	image=Image
fi

here=$(cd "$(dirname "$0")" && pwd)
cache=${HK_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/hk}/kernel
mkdir -p "$cache"
log() { echo "[kernel:$flavor] $*" >&2; }

debian_src=/usr/src/linux-source-6.1.tar.xz
kernelorg_url=https://cdn.kernel.org/pub/linux/kernel/v6.x/linux-6.1.tar.xz
kernelorg_sha256=2ca1f17051a430f6fed1196e4952717507171acfd97d96577212502703b25deb

if [[ -f $debian_src ]]; then
	src=$debian_src
	# The package's version names the source exactly and is far cheaper than hashing 130 MB.
	src_id="debian:$(dpkg-query -W -f='${Version}' linux-source-6.1 2>/dev/null || stat -c %s:%Y "$src")"
else
	src=$cache/linux-6.1.tar.xz
	if [[ ! -f $src ]]; then
		log "Debian's linux-source-6.1 is not installed; downloading $kernelorg_url"
		curl -fL --progress-bar -o "$src.part" "$kernelorg_url"
		mv "$src.part" "$src"
	fi
	src_id="kernel.org:$kernelorg_sha256"
fi

# guest.config is the x86 guest; on arm64 its x86-only options (and the 8250 UART, where
# arm64 has a PL011) are left out, and the rest is the same guest.
x86_only='^CONFIG_(X86_[A-Z_0-9]*|CPU_SUP_[A-Z]*|HYPERVISOR_GUEST|PARAVIRT|KVM_GUEST|PVH|MTRR|HK_CTL|CMDLINE_BOOL|CMDLINE|SERIAL_8250[A-Z_]*)='
fragment() {
	if [[ $arch == arm64 && $1 == guest.config ]]; then
		grep -Ev "$x86_only" "$here/$1"
	else
		cat "$here/$1"
	fi
}

key=$({
	echo "$src_id"
	cc --version | head -1
	[[ $arch == x86_64 ]] || { echo "$arch"; aarch64-linux-gnu-gcc --version | head -1; }
	# Comments change no kernel, so editing them costs no rebuild.
	grep -v '^[[:space:]]*#' "$here/build.sh"
	for f in "${fragments[@]}"; do fragment "$f" | grep -v '^[[:space:]]*#'; done
	cat "$here"/patches/*.patch
} | sha256sum | cut -c1-16)
out=$cache/$flavor-$key
latest=$cache/$flavor

if [[ -f $out/$image ]]; then
	ln -sfn "$out" "$latest"
	echo "$out/$image"
	exit 0
fi

# One build per key at a time; a second caller waits and then finds the result.
exec 9>"$cache/.$flavor-$key.lock"
flock 9
if [[ -f $out/$image ]]; then
	ln -sfn "$out" "$latest"
	echo "$out/$image"
	exit 0
fi

# A tarball that lay in the cache could have been truncated or replaced since its download.
if [[ $src_id == kernel.org:* ]] && ! echo "$kernelorg_sha256  $src" | sha256sum -c --quiet - 2>/dev/null; then
	rm -f "$src"
	log "$src does not match the pinned sha256 $kernelorg_sha256; removed it, run again to download"
	exit 1
fi

work=$(mktemp -d "$cache/.build-$flavor-XXXXXX")
trap 'rm -rf "$work"' EXIT
log "unpacking $src"
tar -xJf "$src" -C "$work" --strip-components=1
cd "$work"
for p in "$here"/patches/*.patch; do
	log "applying $(basename "$p")"
	patch -s -p1 <"$p"
done

log "configuring: tinyconfig + ${fragments[*]}"
make -s "${make_args[@]}" tinyconfig >/dev/null
frag_paths=()
for f in "${fragments[@]}"; do
	fragment "$f" >"$work/$f"
	frag_paths+=("$work/$f")
done
scripts/kconfig/merge_config.sh -m .config "${frag_paths[@]}" >/dev/null
make -s "${make_args[@]}" olddefconfig >/dev/null

# merge_config.sh only warns when olddefconfig drops an option (an unmet dependency);
# a kernel silently missing virtio-vsock is worse than a failed build.
missing=0
for f in "${frag_paths[@]}"; do
	while IFS= read -r line; do
		case "$line" in
		CONFIG_*=n)
			opt=${line%%=*}
			if grep -q "^$opt=[ym]" .config; then
				log "wanted $opt off, but it is on"
				missing=1
			fi
			;;
		CONFIG_*=*)
			if ! grep -qx -- "$line" .config; then
				log "wanted $line, got: $(grep "^${line%%=*}=" .config || echo 'not set')"
				missing=1
			fi
			;;
		esac
	done <"$f"
done
[[ $missing == 0 ]] || { log "configuration check failed"; exit 1; }

jobs=$(($(nproc) + 1))
log "compiling $target with -j$jobs (a few minutes on 2 cores; progress every 250 objects)"
start=$SECONDS
make -j"$jobs" "${make_args[@]}" "$target" 2>&1 | tee build.log | awk -v start="$start" '
	/^  (CC|AS|AR|LD)/ { n++; if (n % 250 == 0) { printf "[kernel] %d objects built\n", n > "/dev/stderr"; fflush("/dev/stderr") } }
	/error:/ { print > "/dev/stderr" }' || true
built=vmlinux
[[ $arch == x86_64 ]] || built=arch/arm64/boot/Image
if [[ ! -f $built ]]; then
	tail -40 build.log >&2
	log "build failed"
	exit 1
fi
log "built in $((SECONDS - start)) s"

mkdir -p "$out.tmp"
cp "$built" "$out.tmp/$image"
cp .config "$out.tmp/config"
rm -rf "$out"
mv "$out.tmp" "$out"
ln -sfn "$out" "$latest"
echo "$out/$image"
