#!/usr/bin/env bash
# Builds an hk kernel and prints the path of its vmlinux on stdout.
#
#   kernel/build.sh guest   the microVM guest kernel (guest.config)
#   kernel/build.sh lab     the L1 kernel of the nested KVM lab (guest.config + lab.config)
#
# Both get kernel/patches/*.patch (each says why it exists).
#
# The result is cached outside the repository, under
# ${HK_CACHE_DIR:-${XDG_CACHE_HOME:-~/.cache}/hk}/kernel/<flavor>-<hash>/, keyed by a hash of
# everything that goes into it (source tarball, fragments, patches, this script, compiler), so a
# second call costs nothing and a changed input rebuilds. <flavor>/vmlinux in the same
# directory points at the newest build; that is where `hk` looks by default.
#
# The source is Debian's linux-source-6.1 package; where it is missing, the kernel.org
# tarball of Linux 6.1, checked against a pinned sha256.
set -euo pipefail

flavor=${1:-}
case "$flavor" in
guest) fragments=(guest.config) ;;
lab) fragments=(guest.config lab.config) ;;
*)
	echo "usage: kernel/build.sh guest|lab" >&2
	exit 2
	;;
esac

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

key=$({
	echo "$src_id"
	cc --version | head -1
	# Comments change no kernel, so editing them costs no rebuild.
	grep -v '^[[:space:]]*#' "$here/build.sh"
	for f in "${fragments[@]}"; do grep -v '^[[:space:]]*#' "$here/$f"; done
	cat "$here"/patches/*.patch
} | sha256sum | cut -c1-16)
out=$cache/$flavor-$key
latest=$cache/$flavor

if [[ -f $out/vmlinux ]]; then
	ln -sfn "$out" "$latest"
	echo "$out/vmlinux"
	exit 0
fi

# One build per key at a time; a second caller waits and then finds the result.
exec 9>"$cache/.$flavor-$key.lock"
flock 9
if [[ -f $out/vmlinux ]]; then
	ln -sfn "$out" "$latest"
	echo "$out/vmlinux"
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
make -s tinyconfig >/dev/null
frag_paths=()
for f in "${fragments[@]}"; do frag_paths+=("$here/$f"); done
scripts/kconfig/merge_config.sh -m .config "${frag_paths[@]}" >/dev/null
make -s olddefconfig >/dev/null

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
log "compiling vmlinux with -j$jobs (a few minutes on 2 cores; progress every 250 objects)"
start=$SECONDS
make -j"$jobs" vmlinux 2>&1 | tee build.log | awk -v start="$start" '
	/^  (CC|AS|AR|LD)/ { n++; if (n % 250 == 0) { printf "[kernel] %d objects built\n", n > "/dev/stderr"; fflush("/dev/stderr") } }
	/error:/ { print > "/dev/stderr" }' || true
if [[ ! -f vmlinux ]]; then
	tail -40 build.log >&2
	log "build failed"
	exit 1
fi
log "built in $((SECONDS - start)) s"

mkdir -p "$out.tmp"
cp vmlinux "$out.tmp/vmlinux"
cp .config "$out.tmp/config"
rm -rf "$out"
mv "$out.tmp" "$out"
ln -sfn "$out" "$latest"
echo "$out/vmlinux"
