"""`fuse-strata` through a resident mount server: mounts that start in milliseconds, not in the
~0.3 s Python needs to import trio, pyfuse3 and the union core.

Why: a container engine starts its mount program for every container and, with a
`mount_program`, for every layer it diffs: `podman build` of 16 instructions mounts ~45 times,
`podman run` once. fuse-overlayfs (C) is mounted in ~10 ms; a fresh `fuse-strata` spends
~0.3 s importing before it can mount (`strata bench podman`, bench/README.md).

How: `fuse-strata` (this module's `main`, which imports only the standard library's `os`,
`_socket`, `struct` and `sys`: not even the `unionfs` package, whose `__init__` costs
as much as the rest) connects to a server at an abstract unix socket named after its
user and its code (`server_address`: the interpreter, the `unionfs` package's path and its files' mtimes,
so an edited or other checkout never uses a stale server). The server, a fork of a first
`fuse-strata` that has imported the mount machinery, forks a worker per request; the worker
takes over the client's stdin, stdout, stderr, working directory, umask and environment and
runs the very code a `fuse-strata` process runs (`cli.fuse_strata_main`: validate, fork the
daemon, wait until it serves), then sends back its exit status, which the client exits with.
The client's own output is the worker's, on the same fds.

When the client mounts itself instead (the previous behaviour, exactly):
- no server answers: it mounts itself and starts a server in the background for the next
  mounts; the server exits after `IDLE_SECONDS` without a request;
- `STRATA_MOUNT_SERVER=0`; foreground or debug mounts (`-f`, `-d`, `-o debug`: the mount is
  the caller's process), `--help` and `--version`;
- the server is another user's (SO_PEERCRED), or the client process (checked by the worker
  through its SO_PEERCRED pid before doing anything) lives in another mount, user or PID
  namespace, under another root directory or with other capabilities than the server: a mount
  made there would not be the client's, or would be made with privileges it does not hold.

What differs from a `fuse-strata` process of one's own: the daemon's parent chain, cgroup,
resource limits and capabilities are the server's, inherited from the `fuse-strata` that
started it (for a container engine: the engine's), not those of each caller.
"""

from __future__ import annotations

import _socket  # the client's sockets: socket.py costs it ~5 ms of enum and selectors imports
import contextlib
import os
import struct
import sys

TYPE_CHECKING = False  # typing costs the client ~5 ms to import: annotations only
if TYPE_CHECKING:
    import socket
    from collections.abc import Sequence
    from typing import Final

ENV_SWITCH: Final = "STRATA_MOUNT_SERVER"
IDLE_SECONDS: Final = 60.0
_LOCAL_FLAGS: Final = frozenset({"-f", "-d", "-h", "--help", "-V", "--version", "--foreground"})
_STOP: Final = b"stop"
_FALLBACK: Final = b"fallback"
_MAX_MESSAGE: Final = 1 << 20
_FDS: Final = 4  # stdin, stdout, stderr, the working directory


def main() -> int:
    """The `fuse-strata` console script: through the server when one takes the request, else
    the mount is made here (`cli.fuse_strata_main`) and a server is started for later."""
    argv = sys.argv[1:]
    if _server_wanted(argv):
        status = request_mount(argv)
        if status is not None and status != REFUSED:
            # nothing of ours to tear down (no atexit work, stdio unbuffered or flushed): the
            # interpreter's own teardown would add ~10 ms to every mount
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
        if status is None:  # no server at all (one that turned us away keeps its name)
            start_server()
    from unionfs.cli import fuse_strata_main

    return fuse_strata_main(argv)


def _server_wanted(argv: Sequence[str]) -> bool:
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return False
    return not any(a in _LOCAL_FLAGS or "debug" in a for a in argv)


def server_address(euid: int | None = None) -> bytes:
    """The abstract socket of this user's server for this very code: the interpreter, the
    `unionfs` package's path and the newest mtime of its files and of this module (an edit of
    either means another server; an old one exits when idle)."""
    mine = os.path.abspath(__file__)
    here = os.path.join(os.path.dirname(os.path.dirname(mine)), "unionfs")
    newest = os.stat(mine).st_mtime_ns
    with os.scandir(here) as entries:
        for entry in entries:
            if entry.name.endswith(".py"):
                newest = max(newest, entry.stat(follow_symlinks=False).st_mtime_ns)
    key = f"{sys.executable}\0{here}\0{newest}".encode()
    digest = 0xCBF29CE484222325  # FNV-1a: hashlib would cost the client an import
    for byte in key:
        digest = ((digest ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    uid = os.geteuid() if euid is None else euid
    return f"\0strata-mountd-{uid}-{digest:016x}".encode()


def _connect(address: bytes) -> _socket.socket | None:
    """A connection to the server at `address` run by our own user, or None."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET | _socket.SOCK_CLOEXEC)
    try:
        sock.connect(address)
        creds = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, struct.calcsize("3i"))
        _, uid, _ = struct.unpack("3i", creds)
    except OSError:
        sock.close()
        return None
    if uid != os.geteuid():  # somebody else holds the name: never hand them our fds
        sock.close()
        return None
    return sock


def _encode(items: Sequence[bytes]) -> bytes:
    return b"".join(struct.pack("I", len(item)) + item for item in items)


def _decode(data: bytes) -> list[bytes]:
    items, at = [], 0
    while at < len(data):
        (size,) = struct.unpack_from("I", data, at)
        at += 4
        items.append(data[at : at + size])
        at += size
    return items


REFUSED = -1  # request_mount: a server runs but cannot act for us (see _peer_may_use_us)


def request_mount(argv: Sequence[str]) -> int | None:
    """Have the server run `fuse-strata argv` for us: its exit status, None when no server
    runs, REFUSED when the one that runs cannot act for us: either way we mount ourselves."""
    try:
        address = server_address()
    except OSError:
        return None
    sock = _connect(address)
    if sock is None:
        return None
    try:
        umask = os.umask(0)
        os.umask(umask)
        env = [os.fsencode(f"{k}={v}") for k, v in os.environ.items()]
        header = [str(umask).encode(), str(len(argv)).encode()]
        message = _encode([*header, *(os.fsencode(a) for a in argv), *env])
        cwd = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fds = struct.pack(f"{_FDS}i", 0, 1, 2, cwd)
            sock.sendmsg([message], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
        except OSError:
            return None
        finally:
            os.close(cwd)
        try:
            reply = sock.recv(64)
        except OSError:
            reply = b""
    finally:
        sock.close()
    if reply == _FALLBACK:
        return REFUSED
    if reply.startswith(b"exit "):
        return int(reply[5:])
    # The worker died after taking the request: it may have got as far as mounting, so
    # mounting here could mount twice. Say so and fail, as a crashed fuse-strata would.
    print("fuse-strata: the mount server's worker died", file=sys.stderr)
    return 1


def stop_server(euid: int | None = None) -> bool:
    """Ask this code's server (if any) to exit after its current requests; True if one was
    asked. For tests and for `strata` commands that want no process left behind."""
    sock = _connect(server_address(euid))
    if sock is None:
        return False
    try:
        sock.send(_STOP)
        with contextlib.suppress(OSError):
            sock.recv(1)  # the server closes the connection once it stopped listening
    finally:
        sock.close()
    return True


# ---------------------------------------------------------------------------------------------
# the server


def start_server() -> None:
    """Start a server in the background, detached from us (its own session, stdio on
    /dev/null, none of our other fds): the caller goes on mounting itself meanwhile. Several
    clients may race: the first to bind the address serves, the others exit."""
    try:
        address = server_address()
        pid = os.fork()
    except OSError:
        return
    if pid != 0:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)  # the intermediate child exits at once
        return
    status = 0
    try:
        os.setsid()
        if os.fork() != 0:
            os._exit(0)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # null too: it is above 2
        os.chdir("/")
        # exec, not serve() here: the server's command line is its own (a process listing
        # must not show it as the daemon of the mount this client makes)
        command = [sys.executable, "-P", "-m", "strata.mountd", address[1:].decode()]
        os.execv(sys.executable, command)
    except BaseException:
        status = 1
    finally:
        os._exit(status)


def serve(address: bytes, idle: float = IDLE_SECONDS) -> None:
    """Listen at `address` until `idle` seconds pass without a request (or a stop request),
    forking a worker per mount request. Imports the mount machinery first, which is the point:
    the workers are born with it."""
    import signal
    import socket

    from unionfs import cli, mount  # noqa: F401  (imported for the workers)

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # workers are reaped by the kernel

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        listener.bind(address)
    except OSError:  # another client's server was quicker
        listener.close()
        return
    listener.listen(64)
    listener.settimeout(idle)
    with listener:
        while True:
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                return
            with conn:
                creds = conn.getsockopt(
                    _socket.SOL_SOCKET, _socket.SO_PEERCRED, struct.calcsize("3i")
                )
                peer, uid, _ = struct.unpack("3i", creds)
                if uid != os.geteuid():
                    continue
                if _fork_worker(listener, conn, peer):
                    return


def _fork_worker(listener: socket.socket, conn: socket.socket, peer: int) -> bool:
    """Receive one request on `conn` and fork its worker; True for a stop request."""
    conn.settimeout(5.0)
    try:
        data, ancdata, _, _ = conn.recvmsg(_MAX_MESSAGE, _socket.CMSG_SPACE(_FDS * 4))
    except OSError:
        return False
    fds = [
        fd
        for level, kind, payload in ancdata
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS
        for fd in struct.unpack(f"{len(payload) // 4}i", payload[: len(payload) // 4 * 4])
    ]
    if data == _STOP or len(fds) != _FDS:
        for fd in fds:
            os.close(fd)
        return data == _STOP
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    pid = os.fork()
    if pid == 0:
        listener.close()
        _work(conn, data, fds, peer)
    for fd in fds:
        os.close(fd)
    return False


def _work(conn: socket.socket, data: bytes, fds: list[int], peer: int) -> None:
    """The worker: become the client (fds, cwd, umask, environment), run fuse-strata's code,
    send the exit status. Never returns."""
    import signal

    status = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the worker waits for its daemon
        items = _decode(data)
        umask, count = int(items[0]), int(items[1])
        if not _peer_may_use_us(peer):
            conn.send(_FALLBACK)
            os._exit(0)
        argv = [os.fsdecode(a) for a in items[2 : 2 + count]]
        env = dict(os.fsdecode(e).partition("=")[::2] for e in items[2 + count :])
        os.setsid()
        for target, fd in zip((0, 1, 2), fds[:3], strict=True):
            os.dup2(fd, target)
        os.fchdir(fds[3])
        for fd in fds:
            os.close(fd)
        os.umask(umask)
        os.environ.clear()
        os.environ.update(env)
        _close_in_forked_children(conn.fileno())
        from unionfs.cli import fuse_strata_main

        status = fuse_strata_main(argv)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        conn.send(b"exit %d" % status)
    finally:
        os._exit(status)


def _peer_may_use_us(pid: int) -> bool:
    """Whether the client process `pid` (SO_PEERCRED's, checked by the server, not what the
    client says) sees what we see, the same mount, user and PID namespaces and root directory,
    and holds the capabilities we hold. A worker acts with the server's privileges, inherited
    from the `fuse-strata` that started it: a client of the same uid in a container that
    shares our network namespace (where abstract sockets live), or one with other
    capabilities, must mount by itself with its own."""
    from unionfs.mount import effective_capabilities  # the worker has it imported already

    try:
        for ns in ("mnt", "user", "pid"):
            if os.readlink(f"/proc/{pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}"):
                return False
        theirs, ours = os.stat(f"/proc/{pid}/root"), os.stat("/")
        if (theirs.st_dev, theirs.st_ino) != (ours.st_dev, ours.st_ino):
            return False
        return effective_capabilities(pid) == effective_capabilities()
    except (OSError, ValueError):
        return False


def _close_in_forked_children(fd: int) -> None:
    """The daemon the worker forks must not keep the connection to the client (nor any
    process it forks later): close `fd` in the first child, once."""
    done = False

    def close_once() -> None:
        nonlocal done
        if not done:
            done = True
            with contextlib.suppress(OSError):
                os.close(fd)

    os.register_at_fork(after_in_child=close_once)


if __name__ == "__main__":  # how start_server runs the server: python -m strata.mountd NAME
    serve(b"\0" + sys.argv[1].encode())
