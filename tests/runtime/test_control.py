"""runtime.control: the messages between a container's monitor and its PID 1."""

from __future__ import annotations

import os
import socket

import pytest

from runtime.control import START_FAILED, StartError, check_error, recv, send, send_error


def test_messages_carry_fds_and_end_of_file_is_none() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    read_fd, write_fd = os.pipe()
    try:
        send(theirs, "ready", [write_fd])
        send(theirs, "go")
        msg, fds = recv(ours)
        assert (msg, len(fds)) == ("ready", 1)
        os.write(fds[0], b"x")
        os.close(fds[0])
        assert os.read(read_fd, 1) == b"x"
        assert recv(ours) == ("go", [])
        theirs.close()
        assert recv(ours) == (None, [])
        send(ours, "to nobody")  # a peer that is gone is no error here
    finally:
        ours.close()
        theirs.close()
        os.close(read_fd)
        os.close(write_fd)


def test_an_error_message_becomes_a_start_error_with_its_code() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, theirs:
        send_error(theirs, 127, "exec: nosuch: not found")
        msg, _ = recv(ours)
    assert msg is not None
    with pytest.raises(StartError) as info:
        check_error(msg)
    assert (str(info.value), info.value.exit_code) == ("exec: nosuch: not found", 127)
    check_error("ready")  # not an error
    with pytest.raises(StartError) as info:
        check_error("error garbled")
    assert info.value.exit_code == START_FAILED
