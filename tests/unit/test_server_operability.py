"""Pieces of the server's operability that need no running engine: request ids, --port
validation, binding before the model loads, the log format, the ipc socket directory."""

from __future__ import annotations

import argparse
import logging
import os
import re
import socket
import stat
import subprocess
import sys

import pytest

from pagellm.engine.core_client import remove_stale_socket_dirs
from pagellm.entrypoints.cli.serve import bind_socket, port_number
from pagellm.entrypoints.openai.api_server import request_id_from
from pagellm.errors import ClientError
from pagellm.logger import formatter


def test_request_id_from_header():
    assert request_id_from([(b"x-request-id", b"abc.DEF_1:2-3")]) == ("abc.DEF_1:2-3", True)
    for bad in (b"", b"has space", b"x" * 129, b"new\nline", "é".encode()):
        request_id, from_client = request_id_from([(b"x-request-id", bad)])
        assert not from_client and re.fullmatch(r"[0-9a-f]{32}", request_id)
    assert request_id_from([])[1] is False


def test_port_number_range():
    assert port_number("0") == 0 and port_number("65535") == 65535
    for bad in ("99999", "-1", "http"):
        with pytest.raises(argparse.ArgumentTypeError, match="invalid port"):
            port_number(bad)


def test_bind_socket_names_the_busy_port_and_does_not_listen():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ClientError, match=f"--port {port} on --host 127.0.0.1 is already "
                                              "in use"):
            bind_socket("127.0.0.1", port)
    sock = bind_socket("127.0.0.1", 0)
    try:
        with pytest.raises(ConnectionRefusedError):      # bound, not yet listening
            socket.create_connection(sock.getsockname(), timeout=5).close()
    finally:
        sock.close()
    with pytest.raises(ClientError, match="cannot be resolved"):
        bind_socket("no-such-host.invalid", 0)


def test_log_format_has_timestamp_and_process():
    record = logging.LogRecord("pagellm.x", logging.WARNING, __file__, 1, "hello %s", ("you",),
                               None)
    line = formatter("engine-core").format(record)
    assert re.fullmatch(r"WARNING \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} engine-core pagellm\.x: "
                        r"hello you", line)


def test_stale_socket_dirs_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale, live, other = (tmp_path / f"ipc-{dead.pid}-a", tmp_path / f"ipc-{os.getpid()}-b",
                          tmp_path / "unrelated")
    for path in (stale, live, other):
        path.mkdir(mode=0o700)
    assert remove_stale_socket_dirs(tmp_path) == [stale]
    assert not stale.exists() and live.exists() and other.exists()
    assert stat.S_IMODE(live.stat().st_mode) == 0o700


@pytest.mark.parametrize("argv, first_line", [
    (["serve", "--port", "99999"],
     "pagellm serve: error: argument --port: invalid port 99999: must be in 0..65535"),
    (["serve", "--max-num-seqs", "many"], "pagellm serve: error: argument --max-num-seqs: "),
    ([], "pagellm: error: the following arguments are required: COMMAND"),
])
def test_argument_errors_are_one_line_and_a_pointer_to_help(argv, first_line, capsys):
    from pagellm.entrypoints.cli.main import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and lines[0].startswith(first_line), lines
    assert lines[1] == f"(run '{first_line.split(':')[0]} --help' for the options)"
