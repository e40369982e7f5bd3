#!/usr/bin/env bash
# Prepare this machine to run and test strata: Debian packages, /dev/fuse, and a venv in .venv with
# the patched pyfuse3 and the project installed editable. With --stock, also .venv-stock: the same
# project over the stock pyfuse3 from PyPI (what `pip install strata` gives), for the test pass
# of scripts/test.sh that checks strata without the patch. Meant for Debian 12 as root;
# idempotent, and fast when nothing changed (apt is skipped when every package is installed, pip
# when pyproject.toml is unchanged, the pyfuse3 build when a venv holds the wanted build).
set -euo pipefail
umask 022  # the venv must stay readable by unprivileged users (rootless tests run from it)

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
[[ -f pyproject.toml ]] || { echo "setup: error: no pyproject.toml in $repo" >&2; exit 1; }

step() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

stock=0
for arg in "$@"; do
    case $arg in
        --stock) stock=1 ;;
        *) die "unknown argument '$arg' (usage: setup.sh [--stock])" ;;
    esac
done

# fuse3/libfuse3-dev/pkg-config/gcc/python3-dev build pyfuse3; python3-venv makes the venv;
# busybox-static is the demo image; attr/acl are used by tests; fuse-overlayfs and unionfs-fuse are
# comparison peers for tests and benchmarks; mmdebstrap builds the Debian rootfs of the slow tests;
# uidmap (newuidmap) serves rootless containers with subordinate ids, iproute2 the bridge network;
# patch applies scripts/pyfuse3/*.patch; podman and runc run fuse-strata as a mount_program in
# tests/fuse/test_podman.py and are the container start-up reference of the bench; libseccomp2
# compiles containers' seccomp filters (through pyseccomp), and the security tests build their
# static probes with gcc (libc6-dev comes with it); strace shows the durability tests the order of
# a copy-up's fsync and rename; skopeo seeds the registry tests' registries and reads back what
# `strata push` wrote (an independent client, from containers/image, as podman's); nftables
# (nft) masquerades the bridge network's traffic out of the host (runtime/network.py); passt
# (pasta) and slirp4netns serve rootless containers' networks (runtime/usernet.py; no service);
# dnsmasq-base is the DNS tests' outside resolver and loopback stub (tests/runtime/test_dns.py;
# the bare binary: unlike the dnsmasq package, it starts no service); dpkg-dev (dpkg-source),
# meson and ninja-build build libfuse 3.17 from Debian's source package for the patched pyfuse3.
packages=(fuse3 libfuse3-dev pkg-config python3-venv python3-dev gcc busybox-static attr acl
          fuse-overlayfs unionfs-fuse mmdebstrap uidmap iproute2 patch podman runc libseccomp2
          strace skopeo nftables dnsmasq-base passt
          slirp4netns dpkg-dev meson ninja-build)

# The system interpreter on purpose: PATH may hold a pyenv or similar python that other users
# cannot read.
python=/usr/bin/python3
venv=$repo/.venv
venv_stock=$repo/.venv-stock

# --- 1. Debian packages ----------------------------------------------------------------------
missing=()
for pkg in "${packages[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
    [[ $status == installed ]] || missing+=("$pkg")
done
if ((${#missing[@]} == 0)); then
    step "apt: all ${#packages[@]} packages already installed"
else
    [[ $EUID -eq 0 ]] || die "missing packages (${missing[*]}); run as root to install them"
    step "apt: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends -o Dpkg::Use-Pty=0 "${missing[@]}" >/dev/null
fi

# --- 2. /dev/fuse ------------------------------------------------------------------------------
if [[ ! -c /dev/fuse ]]; then
    [[ $EUID -eq 0 ]] || die "/dev/fuse is missing; run as root"
    modprobe fuse 2>/dev/null || true
    [[ -c /dev/fuse ]] || mknod -m 0666 /dev/fuse c 10 229
fi
if [[ $EUID -eq 0 ]]; then
    chmod 0666 /dev/fuse  # Debian's udev default; containers often ship it 0600
fi
# pasta and slirp4netns open /dev/net/tun as the user (rootless networks): Debian's udev makes it
# 0666, containers often ship it 0600
if [[ $EUID -eq 0 && -c /dev/net/tun ]]; then
    chmod 0666 /dev/net/tun
fi
if [[ -r /dev/fuse && -w /dev/fuse ]]; then
    step "fuse: /dev/fuse is usable ($(stat -c %A /dev/fuse))"
else
    die "/dev/fuse is not usable by $(id -un)"
fi

# --- 3. venvs: python, pyfuse3, the project --------------------------------------------------
[[ -x $python ]] || die "$python not found (install python3)"
want_version=$("$python" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')

make_venv() {  # VENV: (re)create it unless it has the wanted python
    local venv=$1 have_version have_home
    have_version=$("$venv/bin/python" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' \
        2>/dev/null || true)
    have_home=$(sed -n 's/^home *= *//p' "$venv/pyvenv.cfg" 2>/dev/null || true)
    if [[ $have_version == "$want_version" && $have_home == "$(dirname "$python")" ]]; then
        step "venv: $venv exists (python $have_version from $python)"
        return
    fi
    if [[ -e $venv ]]; then
        step "venv: recreating $venv (found python '${have_version:-none}' from '${have_home:-?}')"
        rm -rf "$venv"
    else
        step "venv: creating $venv with $python $want_version"
    fi
    "$python" -m venv "$venv"
}

# pyfuse3 is built from its PyPI sdist, with scripts/pyfuse3/*.patch applied for .venv
# (scripts/pyfuse3/README.md describes each hunk; unionfs/fusefeatures.py probes them) and as
# released for .venv-stock. Installed before the project so pip never builds another one. Each
# built wheel is kept in a cache keyed by the patches (none for stock), pyfuse3 version, python
# and libfuse, so a fresh venv only installs it; nothing runs when the venv's pyfuse3 version
# (3.5.0+strata.pKEY, or 3.5.0 for stock) is the wanted one.
# The patched pyfuse3 links libfuse >= 3.17 statically (FUSE passthrough: fuse_file_info's
# backing_id, FUSE_CAP_PASSTHROUGH; Debian 12 has 3.14). It is built from the fuse3 source package
# of Debian trixie, fetched by apt with a sources list of its own (the machine's apt configuration
# is untouched) and so checked against the signed Sources index, into a private prefix in the
# cache: only the library, static and position-independent, no utilities (mounting as a user
# still runs Debian's fusermount3 from PATH; no symbol versions, which only a shared library
# needs and which a static link into pyfuse3 cannot resolve). Nothing is rebuilt while the prefix holds a build.
libfuse_suite=trixie
libfuse_cache=${XDG_CACHE_HOME:-$HOME/.cache}/strata/libfuse-$libfuse_suite
build_libfuse() {  # -> $libfuse_cache/prefix with lib/libfuse3.a and lib/pkgconfig/fuse3.pc
    local work=$libfuse_cache/work apt_opts
    rm -rf "$work" "$libfuse_cache/prefix"
    mkdir -p "$work/lists/partial" "$work/src"
    chmod 755 "$work/src"  # apt's _apt user downloads into it
    echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg]" \
        "http://deb.debian.org/debian $libfuse_suite main" >"$work/sources.list"
    apt_opts=(-o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
              -o "Dir::State::Lists=$work/lists" -o Debug::NoLocking=1)
    apt-get -qq "${apt_opts[@]}" update &&
        (cd "$work/src" && apt-get -qq "${apt_opts[@]}" source --download-only "fuse3/$libfuse_suite") &&
        dpkg-source -x "$work"/src/fuse3_*.dsc "$work/fuse3" &&
        meson setup "$work/build" "$work/fuse3" --prefix="$libfuse_cache/prefix" --libdir=lib \
            --buildtype=release -Ddefault_library=static -Db_staticpic=true -Dutils=false \
            -Dexamples=false -Dtests=false -Dinitscriptdir= -Duseroot=false \
            -Ddisable-libc-symbol-version=true &&
        ninja -C "$work/build" && meson install -C "$work/build" &&
        # the archive by its path: setuptools puts the system's library directory, where
        # Debian's libfuse3.so (3.14) lives, before pkg-config's -L, and -lfuse3 would find it
        sed -i 's|-lfuse3|${libdir}/libfuse3.a|' "$libfuse_cache/prefix/lib/pkgconfig/fuse3.pc" &&
        rm -rf "$work"
}
if [[ ! -f $libfuse_cache/prefix/lib/libfuse3.a ]]; then
    step "libfuse: building fuse3 from Debian $libfuse_suite's source package"
    log=$(mktemp)
    if ! build_libfuse >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        die "building libfuse from Debian $libfuse_suite's fuse3 source package failed"
    fi
    rm -f "$log"
fi
libfuse_pc=$libfuse_cache/prefix/lib/pkgconfig
libfuse_version=$(PKG_CONFIG_PATH=$libfuse_pc pkg-config --modversion fuse3)
step "libfuse: $libfuse_version (static, $libfuse_cache/prefix) for the patched pyfuse3"

pyfuse3_version=3.5.0
patch_dir=$repo/scripts/pyfuse3
pf_base="pyfuse3 $pyfuse3_version python $want_version"

build_pyfuse3() {  # VENV CACHE VERSION [PATCH...] -> a wheel in CACHE; prints pip's, patch's output
    local venv=$1 cache=$2 version=$3 build rc=0 p
    shift 3
    local pip=("$venv/bin/python" -m pip -q --disable-pip-version-check)
    build=$(mktemp -d)
    # --no-binary pyfuse3, not :all:, which would also build its build dependencies (Cython)
    # from source just to read pyfuse3's metadata: minutes of compiling.
    "${pip[@]}" download --no-binary pyfuse3 --no-deps -d "$build" "pyfuse3==$pyfuse3_version" \
        && tar -xzf "$build/pyfuse3-$pyfuse3_version.tar.gz" -C "$build" || rc=1
    for p in "$@"; do
        ((rc)) || patch -d "$build/pyfuse3-$pyfuse3_version" -p1 --forward <"$p" || rc=1
    done
    ((rc)) || SETUPTOOLS_SCM_PRETEND_VERSION=$version \
        "${pip[@]}" wheel --no-deps -w "$build/wheel" "$build/pyfuse3-$pyfuse3_version" || rc=1
    ((rc)) || { mkdir -p "$cache" && cp "$build"/wheel/pyfuse3-*.whl "$cache/"; } || rc=1
    rm -rf "$build"
    return $rc
}

install_pyfuse3() {  # VENV patched|stock
    local venv=$1 kind=$2 key want cache have log
    local patches=()
    if [[ $kind == patched ]]; then
        patches=("$patch_dir"/*.patch)
        key=$( { echo "$pf_base fuse3 $libfuse_version"; cat "${patches[@]}"; } | sha256sum |
            cut -c1-12)
        want=$pyfuse3_version+strata.p$key
    else
        key=stock-$(echo "$pf_base fuse3 $(pkg-config --modversion fuse3)" | sha256sum | cut -c1-12)
        want=$pyfuse3_version
    fi
    cache=${XDG_CACHE_HOME:-$HOME/.cache}/strata/pyfuse3-$key
    have=$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("pyfuse3"))' \
        2>/dev/null || true)
    if [[ $have == "$want" ]]; then
        step "pyfuse3: $want ($kind) already installed in $venv"
        return
    fi
    log=$(mktemp)
    if ! compgen -G "$cache/pyfuse3-*.whl" >/dev/null; then
        step "pyfuse3: building $want ($kind${patches:+: $(cd "$patch_dir" && echo *.patch)})"
        # the patched build compiles against, and links, the private libfuse
        if ! PKG_CONFIG_PATH=${patches:+$libfuse_pc} \
            build_pyfuse3 "$venv" "$cache" "$want" "${patches[@]}" >"$log" 2>&1; then
            cat "$log" >&2
            rm -rf "$log" "$cache"
            die "building the $kind pyfuse3 failed"
        fi
    fi
    step "pyfuse3: installing $want ($kind) into $venv (was: ${have:-none})"
    if ! "$venv/bin/python" -m pip -q --disable-pip-version-check install --no-deps \
        --force-reinstall "$cache"/pyfuse3-*.whl >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        die "installing the $kind pyfuse3 failed"
    fi
    rm -f "$log"
}

# The project, editable, with the test extras. The stamp covers what an editable install depends
# on: pyproject.toml, the repo path, the python.
want_stamp=$( { sha256sum pyproject.toml; echo "$repo $want_version"; } | sha256sum | cut -d' ' -f1)
install_project() {  # VENV
    local venv=$1 log
    local stamp=$venv/.strata-setup-stamp
    if [[ -f $stamp && $(cat "$stamp") == "$want_stamp" && -x $venv/bin/strata ]]; then
        step "pip: strata already installed in $venv (pyproject.toml unchanged)"
        return
    fi
    step "pip: installing strata editable with test extras into $venv"
    rm -f "$stamp"
    log=$(mktemp)
    if ! "$venv/bin/python" -m pip install -q --disable-pip-version-check -e ".[test]" >"$log" 2>&1
    then
        cat "$log" >&2
        rm -f "$log"
        die "pip install into $venv failed"
    fi
    rm -f "$log"
    echo "$want_stamp" >"$stamp"
}

make_venv "$venv"
install_pyfuse3 "$venv" patched
install_project "$venv"
if ((stock)); then
    make_venv "$venv_stock"
    install_pyfuse3 "$venv_stock" stock
    install_project "$venv_stock"
fi

# --- 4. bytecode ----------------------------------------------------------------------------------
# pip compiles what it installs, but not an editable project's own sources, and with
# PYTHONDONTWRITEBYTECODE set (as on some hosts) Python never writes them either: every `strata
# run` would then compile the modules it imports again (about 30 ms of its 150). Up-to-date files
# are skipped; a file edited since is compiled in memory until the next set-up.
"$venv/bin/python" -m compileall -q -j 0 unionfs runtime images bench >/dev/null ||
    step "bytecode: compileall failed; commands start slower"

# --- 5. docker's seccomp profile, for the tests ---------------------------------------------------
# tests/runtime/test_security.py compares strata's default filter with docker's own default.json,
# as Debian ships it in golang-github-docker-docker-dev (the .deb is fetched and unpacked, not
# installed: it would pull in a Go tree). Skipped quietly when apt cannot fetch it.
docker_profile=/var/cache/strata-tests/docker-seccomp-default.json
if [[ $EUID -eq 0 && ! -s $docker_profile ]]; then
    fetch=$(mktemp -d)
    chmod 755 "$fetch"  # apt's _apt user downloads into it
    if (cd "$fetch" && apt-get download -qq golang-github-docker-docker-dev >/dev/null 2>&1) &&
        dpkg-deb -x "$fetch"/golang-github-docker-docker-dev_*.deb "$fetch/x"; then
        mkdir -p "$(dirname "$docker_profile")"
        cp "$fetch"/x/usr/share/gocode/src/github.com/docker/docker/profiles/seccomp/default.json \
            "$docker_profile" && step "docker's seccomp profile: $docker_profile"
    else
        step "docker's seccomp profile: could not fetch golang-github-docker-docker-dev (a test skips)"
    fi
    rm -rf "$fetch"
fi

# --- 6. a registry for the registry tests -------------------------------------------------------
# tests/helpers/registry.py runs Debian's docker-registry (distribution 2.8.2) on 127.0.0.1 with a
# config of its own per test. The package is fetched and unpacked, not installed: installing it
# would start a registry service listening on all interfaces. Skipped quietly when apt cannot
# fetch it (the registry tests then skip).
registry_dir=/var/cache/strata-tests/docker-registry
if [[ $EUID -eq 0 && ! -x $registry_dir/usr/bin/docker-registry ]]; then
    fetch=$(mktemp -d)
    chmod 755 "$fetch"  # apt's _apt user downloads into it
    if (cd "$fetch" && apt-get download -qq docker-registry >/dev/null 2>&1) &&
        dpkg-deb -x "$fetch"/docker-registry_*.deb "$fetch/x"; then
        rm -rf "$registry_dir"
        mkdir -p "$(dirname "$registry_dir")"
        mv "$fetch/x" "$registry_dir" && step "docker-registry: $registry_dir/usr/bin/docker-registry"
    else
        step "docker-registry: could not fetch the package (the registry tests skip)"
    fi
    rm -rf "$fetch"
fi

# --- 7. commands on the default PATH --------------------------------------------------------------
# mount(8) and fstab run `fuse-strata` through mount.fuse3 with a fixed PATH, so as root link the
# commands into /usr/local/bin; a link or file that is not ours is left alone.
if [[ $EUID -eq 0 ]]; then
    for cmd in strata fuse-strata; do
        link=/usr/local/bin/$cmd
        if [[ -L $link && $(readlink "$link") == "$venv/bin/$cmd" ]]; then
            continue
        elif [[ -e $link || -L $link ]]; then
            step "path: $link exists and is not this checkout's; left alone"
        else
            ln -s "$venv/bin/$cmd" "$link"
            step "path: linked $link -> $venv/bin/$cmd"
        fi
    done
fi

step "done: $("$venv/bin/python" -c 'import unionfs; print("unionfs", unionfs.__version__)')," \
    "commands in $venv/bin (strata, fuse-strata)"
