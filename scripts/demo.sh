#!/usr/bin/env bash
# The README's first command: set up, build the demo image, mount it with strata as a container
# rootfs, change it from inside a chroot, unmount, and show what landed in the upper directory
# (a copied-up file and a whiteout) and that the lower layers did not change; then run a container
# on the same image with `strata run`. Run as root.
set -euo pipefail
umask 022

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

strata=$repo/.venv/bin/strata
layers=demo/layers
container=demo/container
upper=$container/upper
work=$container/work
mnt=$container/rootfs
mnt_abs=$repo/$mnt  # checked against /proc/self/mounts, which needs no stat of a possibly dead mount

heading() { printf '\n== %s\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }
ok() { printf 'ok: %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
is_mounted() { grep -qF " $mnt_abs " /proc/self/mounts; }
unmount() {
    if is_mounted; then
        "$strata" umount "$mnt" || fusermount3 -u -z "$mnt" || true
    fi
}
# A fingerprint of the lower layers: names, types, modes, owners, sizes, mtimes, contents, xattrs.
fingerprint() {
    (
        cd "$layers"
        find . -printf '%p %M %U:%G %s %T@ %l\n' | LC_ALL=C sort
        find . -type f -exec sha256sum {} + | LC_ALL=C sort
        getfattr -R -h -d -m - . 2>/dev/null | LC_ALL=C sort
    ) | sha256sum | cut -c1-16
}
# show_upper: one line per entry, whiteouts and copy-ups called out
in_lower() { [[ -e $layers/update/$1 || -L $layers/update/$1 || -e $layers/base/$1 ]]; }
show_upper() {
    local path rel mode size note
    while IFS= read -r path; do
        rel=${path#"$upper"/}
        mode=$(stat -c %A "$path")
        size=$(stat -c %s "$path")
        if in_lower "$rel"; then note="copied up"; else note="new"; fi
        case $(stat -c %F "$path") in
        "character special file")
            size=$(stat -c '%t,%T' "$path")
            note="whiteout: a $size character device" ;;
        directory)
            rel+=/ size=""
            [[ $note == new ]] || note="copied up (a parent, with its metadata)" ;;
        *)
            [[ $rel == */.wh.* || $rel == .wh.* ]] && note="whiteout: a .wh. file" ;;
        esac
        printf '  %s %5s  %-16s <- %s\n' "$mode" "$size" "$rel" "$note"
    done < <(find "$upper" -mindepth 1 | LC_ALL=C sort)
}

[[ $EUID -eq 0 ]] || fail "run as root (the demo installs packages, mounts and uses chroot)"

heading "Set-up"
# strata's bridge, made by the first container below, goes at the end unless it was up already
bridge_before=$([[ -e /sys/class/net/strata0 ]] && echo yes || echo no)
bash scripts/setup.sh
bash scripts/make-demo-image.sh

heading "The image: two layers"
echo "update layer ($layers/update), OCI style: .wh.NAME deletes NAME, .wh..wh..opq makes a dir opaque"
find "$layers/update" -mindepth 1 -printf '  %y %P\n' | LC_ALL=C sort -k2
echo "base layer ($layers/base): a busybox rootfs, $(find "$layers/base" -type l | wc -l) applet" \
    "symlinks to /bin/busybox plus:"
find "$layers/base" -mindepth 1 ! -type l ! -type d -printf '  %y %P\n' | LC_ALL=C sort -k2
before=$(fingerprint)

heading "Mount"
# A fresh container each run; never delete through a mount left behind by an interrupted run.
unmount
is_mounted && fail "$mnt is still mounted"
rm -rf "$container"
mkdir -p "$upper" "$work" "$mnt"
trap unmount EXIT
trap 'exit 130' INT TERM
run "$strata" mount --lower "$layers/update" --lower "$layers/base" \
    --upper "$upper" --work "$work" "$mnt"
is_mounted || fail "$mnt is not mounted"
grep -F " $mnt_abs " /proc/self/mounts

heading "The merged view"
run ls -C "$mnt"
run ls -l "$mnt/etc"
run cat "$mnt/etc/motd"
grep -q "update layer" "$mnt/etc/motd" || fail "etc/motd should come from the update layer"
ok "etc/motd comes from the update layer"
run ls -la "$mnt/usr/share"
[[ ! -e $mnt/usr/share/hello.txt ]] || fail "usr/share/hello.txt should be deleted"
ok "usr/share/hello.txt is gone (update has usr/share/.wh.hello.txt); no .wh. name is listed"
run ls -la "$mnt/opt/app"
[[ $(ls -A "$mnt/opt/app") == v2.txt ]] || fail "opt/app should hold only v2.txt"
ok "opt/app shows only the update layer's v2.txt (opaque dir hides base's v1.txt, config.ini)"

heading "Inside the container (chroot $mnt)"
chroot "$mnt" /bin/sh -c '
    set -e
    run() { echo "# $1"; eval "$1"; }
    run "cat /etc/motd"
    run "echo demo:x:1000:1000:demo user:/home/demo:/bin/sh >> /etc/passwd"
    run "tail -n 2 /etc/passwd"
    run "rm /etc/hostname"
    run "echo written inside the container > /root/notes.txt"
    run "ls /etc"
' 2>&1
[[ ! -e $mnt/etc/hostname ]] || fail "etc/hostname should be deleted"

heading "Unmount"
run "$strata" umount "$mnt"
is_mounted && fail "$mnt is still mounted after strata umount"
ok "$mnt is unmounted"

heading "What landed in the upper directory ($upper)"
show_upper
[[ $(stat -c %F "$upper/etc/hostname" 2>/dev/null) == "character special file" \
    || -e $upper/etc/.wh.hostname ]] || fail "no whiteout for etc/hostname in the upper"
grep -q '^demo:' "$upper/etc/passwd" || fail "the copied-up etc/passwd lacks the new line"
xattrs=$(getfattr -R -h -d -m - --absolute-names "$upper" 2>/dev/null || true)
if [[ -n $xattrs ]]; then
    echo "xattrs strata keeps in the upper (never visible through the mount):"
    sed '/^$/d; s/^/  /' <<<"$xattrs"
fi

heading "The lower layers are unchanged"
after=$(fingerprint)
echo "fingerprint before: $before  after: $after"
[[ $before == "$after" ]] || fail "the lower layers changed"
grep -q '^demo:' "$layers/base/etc/passwd" && fail "the base layer's etc/passwd was written"
[[ -f $layers/base/etc/hostname ]] || fail "the base layer's etc/hostname was deleted"
ok "base etc/passwd has no demo line and base etc/hostname still exists"

heading "Remount: the changes persist"
run "$strata" mount --lower "$layers/update" --lower "$layers/base" \
    --upper "$upper" --work "$work" "$mnt"
run tail -n 1 "$mnt/etc/passwd"
run ls "$mnt/etc"
[[ ! -e $mnt/etc/hostname ]] || fail "etc/hostname came back after remount"
run "$strata" umount "$mnt"

heading "A container on the same image: strata run"
# New mount, PID, UTS and IPC namespaces on a fresh writable layer: the shell is PID 1, has its own
# hostname, sees the image (not the changes above, which belong to the other container layer).
out=$(run "$strata" run --rm --hostname demo --lower "$layers/update" --lower "$layers/base" \
    /bin/sh -c 'echo "pid $$ on $(hostname)"; cat /etc/motd; echo changed > /etc/motd; ps')
printf '%s\n' "$out"
grep -q '^pid 1 on demo$' <<<"$out" || fail "the container's shell is not PID 1 on host 'demo'"
ok "the container ran as PID 1 in its own namespaces; its layer was removed with --rm"
# Confined by default as podman confines a container: its capabilities, a seccomp filter, a
# read-only /proc/sys; mounting fails.
out=$(run "$strata" run --rm --lower "$layers/update" --lower "$layers/base" /bin/sh -c \
    'grep -E "^(CapEff|Seccomp):" /proc/self/status
     { echo 1 > /proc/sys/vm/drop_caches; } 2>/dev/null || echo "/proc/sys: read-only"
     mkdir -p /m; mount -t tmpfs none /m 2>/dev/null || echo "mount: not permitted"')
printf '%s\n' "$out"
grep -q $'^CapEff:\t00000000800405fb$' <<<"$out" && grep -q $'^Seccomp:\t2$' <<<"$out" &&
    grep -q '^mount: not permitted$' <<<"$out" || fail "the container is not confined"
ok "the container had podman's capabilities and a seccomp filter, and could not mount"

heading "Its own network: the bridge, NAT and a published port"
# As under docker: an address on strata's bridge, and -p publishes a port of the container on the
# host (here on 127.0.0.1, a free port). The bridge stays for the next container, as docker0
# does; `strata network prune` removes it (done here if the demo made it).
"$strata" rm -f demo-web >/dev/null 2>&1 || true
run "$strata" run -d --name demo-web -p 127.0.0.1::80 --lower "$layers/update" --lower "$layers/base" \
    /bin/sh -c 'mkdir /www && echo "hello from $(hostname -i) over the bridge" > /www/index.html && exec httpd -f -p 80 -h /www'
echo "\$ $strata port demo-web 80"
address=$("$strata" port demo-web 80)
echo "$address"
echo "\$ python3 -c 'urllib.request.urlopen(\"http://$address/\")'"
page=""
for _ in $(seq 100); do  # until httpd answers (it starts in a few ms)
    page=$(python3 -c "import urllib.request,sys; sys.stdout.write(urllib.request.urlopen('http://$address/', timeout=2).read().decode())" 2>/dev/null) && break
    sleep 0.05
done
printf '%s\n' "$page"
run "$strata" rm -f demo-web
[[ $page == "hello from 10.90."*" over the bridge" ]] || fail "the published port did not answer"
ok "the container had its own address on the bridge and answered on a published port"
[[ $bridge_before == yes ]] || run "$strata" network prune

is_mounted && fail "strata run left a mount behind"
[[ $(fingerprint) == "$before" ]] || fail "the container changed a lower layer"
ok "nothing left mounted, lower layers unchanged"

heading "Done"
echo "Try it yourself:"
echo "  $strata mount --lower $layers/update --lower $layers/base --upper $upper --work $work $mnt"
echo "  chroot $mnt /bin/sh"
echo "  $strata umount $mnt"
echo "  $strata run --rm -it --lower $layers/update --lower $layers/base /bin/sh"
