#!/usr/bin/env bash
# Build strata's small default image under demo/layers (gitignored), from Debian's busybox-static:
#
#   demo/layers/base     a busybox rootfs: /bin/busybox + applet symlinks, /etc, /usr/share/hello.txt,
#                        /opt/app/{v1.txt,config.ini}
#   demo/layers/update   a second layer in the OCI layout: a new /etc/motd (modify), /etc/release
#                        (add), usr/share/.wh.hello.txt (delete hello.txt) and
#                        opt/app/.wh..wh..opq + opt/app/v2.txt (replace the directory's contents)
#
# Deterministic (fixed modes, owners and mtimes) and idempotent: the layers are rebuilt from scratch
# in a temporary directory and swapped in, so an interrupted run never leaves a half-built image.
set -euo pipefail
umask 022

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

busybox=/bin/busybox
epoch=2024-01-01T00:00:00Z  # every file's mtime, so two builds are identical
out=demo/layers
tmp=demo/.layers.tmp

die() { printf 'make-demo-image: error: %s\n' "$*" >&2; exit 1; }

[[ -x $busybox ]] || die "$busybox not found (apt-get install busybox-static, or run scripts/setup.sh)"
# Rebuilding layers that a live mount is using is unsupported: refuse instead.
if grep -qF " $repo/demo/" /proc/self/mounts; then
    die "something is mounted under $repo/demo; unmount it first (strata umount MNT)"
fi

rm -rf "$tmp"
mkdir -p "$tmp/base" "$tmp/update"

# put LAYER PATH MODE [CONTENT]: a regular file with exactly CONTENT
put() {
    mkdir -p "$(dirname "$1/$2")"
    printf '%s' "${4-}" >"$1/$2"
    chmod "$3" "$1/$2"
}

# --- base: a busybox rootfs --------------------------------------------------------------------
base=$tmp/base
mkdir -p "$base"/{bin,sbin,usr/bin,usr/sbin,usr/share,etc,root,home,dev,proc,sys,tmp,opt/app}
chmod 0700 "$base/root"
chmod 1777 "$base/tmp"
cp "$busybox" "$base/bin/busybox"
chmod 0755 "$base/bin/busybox"
# One relative symlink per applet (bin/sh -> busybox, usr/bin/awk -> ../../bin/busybox), so the
# layer also makes sense when inspected from the host. The applets' directories exist already.
while read -r applet; do
    [[ $applet == */* && $applet != bin/busybox ]] || continue
    dir=${applet%/*}
    slashes=${dir//[^\/]/}
    up=..
    for ((i = 0; i < ${#slashes}; i++)); do up+=/..; done
    target=$up/bin/busybox
    [[ $dir == bin ]] && target=busybox
    ln -sfn "$target" "$base/$applet"
done < <("$busybox" --list-full | LC_ALL=C sort)

put "$base" etc/passwd 0644 'root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
'
put "$base" etc/group 0644 'root:x:0:
nogroup:x:65534:
'
put "$base" etc/shadow 0640 'root:*:19723:0:99999:7:::
nobody:*:19723:0:99999:7:::
'
put "$base" etc/hostname 0644 'strata-demo
'
put "$base" etc/motd 0644 'Welcome to the strata demo image (base layer).
'
put "$base" etc/profile 0644 'export PATH=/bin:/sbin:/usr/bin:/usr/sbin
export PS1="\h:\w\$ "
'
put "$base" usr/share/hello.txt 0644 'Hello from the base layer. The update layer deletes this file.
'
put "$base" opt/app/v1.txt 0644 'app version 1 (base layer)
'
put "$base" opt/app/config.ini 0644 '[app]
version = 1
'

# --- update: modify, add, delete, replace a directory -------------------------------------------
update=$tmp/update
put "$update" etc/motd 0644 'Welcome to the strata demo image (update layer: this file replaced the base one).
'
put "$update" etc/release 0644 'strata-demo 2 (added by the update layer)
'
put "$update" usr/share/.wh.hello.txt 0644            # whiteout: hello.txt is deleted
put "$update" opt/app/.wh..wh..opq 0644               # opaque: base's opt/app contents are hidden
put "$update" opt/app/v2.txt 0644 'app version 2 (update layer; v1.txt and config.ini are gone)
'

# --- fixed owners and times, then swap in --------------------------------------------------------
if [[ $EUID -eq 0 ]]; then
    chown -hR 0:0 "$tmp"
fi
find "$tmp" -depth -exec touch -h -d "$epoch" {} +

rm -rf "$out"
mv "$tmp" "$out"

count() { find "$1" -mindepth 1 | wc -l; }
printf 'make-demo-image: %s/base (%s entries), %s/update (%s entries)\n' \
    "$out" "$(count "$out/base")" "$out" "$(count "$out/update")"
