"""The user's code misbehaving (issue 23): a factory or callback that exits, raises or returns the wrong thing is
one `error:` line naming the key, never a silent exit 0 or a raw traceback."""

from __future__ import annotations

import importlib.util
import socket
import time
from pathlib import Path

import pytest

from kronsearch.errors import BadInput
from tests.test_hostile_artifacts import error_line

pytestmark = pytest.mark.xdist_group("ray")  # starts Ray: one worker runs every Ray file (tests/conftest.py)

CODE = '''
import sys

from ray import tune


def exits(**kwargs):
    sys.exit(0)


def forty_two():
    return 42


def raises():
    raise RuntimeError("no callback today")


def callback():
    return tune.Callback()
'''


@pytest.fixture
def code(workdir: Path) -> None:
    (workdir / "hostile_code.py").write_text(CODE, encoding="utf-8")
    (workdir / "exits_on_import.py").write_text("import sys\nsys.exit(3)\n", encoding="utf-8")


@pytest.mark.parametrize("changes, words", [
    ({"model": {"name": None, "factory": "hostile_code:exits", "options": None, "include": ["*"]}},
     "model.factory: 'hostile_code:exits' failed: SystemExit: 0"),
    ({"data": {"name": None, "limit": None, "factory": "hostile_code:exits"}},
     "data.factory: 'hostile_code:exits' failed: SystemExit: 0"),
    ({"model": {"name": None, "factory": "exits_on_import:build", "options": None, "include": ["*"]}},
     "cannot import module 'exits_on_import': SystemExit: 3"),
], ids=["model-factory", "data-factory", "module-import"])
def test_a_factory_that_calls_sys_exit_is_an_error_not_a_silent_success(write_space, cli, code, changes, words):
    result = cli("run", write_space(**changes), "--quiet")
    assert result.exit_code == 2
    assert words in error_line(result)
    assert not Path("studies").exists()


@pytest.mark.parametrize("reference, words", [
    ("hostile_code:forty_two",
     r"backend.callbacks\[1\] 'hostile_code:forty_two' returned a int, not a ray.tune.Callback"),
    ("hostile_code:raises", r"backend.callbacks\[1\] 'hostile_code:raises' failed: RuntimeError: no callback today"),
    ("hostile_code:exits", r"backend.callbacks\[1\] 'hostile_code:exits' failed: SystemExit: 0"),
])
def test_backend_callbacks_are_checked_and_named(code, reference, words):
    from ray import tune

    from kronsearch.backends.ray import user_callbacks

    (made,) = user_callbacks(["hostile_code:callback"])
    assert isinstance(made, tune.Callback)
    with pytest.raises(BadInput, match=words):
        user_callbacks(["hostile_code:callback", reference])


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_ray_address_nothing_listens_on_fails_within_the_stated_timeout(write_space, cli):
    from kronsearch.backends.ray import ADDRESS_TIMEOUT

    port = closed_port()
    started = time.monotonic()
    result = cli("run", write_space(), "--backend", "ray", "--address", f"127.0.0.1:{port}", "--quiet")
    assert time.monotonic() - started < ADDRESS_TIMEOUT + 20  # the Ray import included
    assert result.exit_code == 1
    line = error_line(result)
    assert f"backend.address '127.0.0.1:{port}': nothing answers at 127.0.0.1:{port} within 10 s" in line


def test_a_ray_address_where_another_server_listens_is_refused_at_once(write_space, cli):
    import threading

    with socket.socket() as server:  # an HTTP/1 server, as a web server on a mistyped port
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]

        def answer() -> None:
            connection, _ = server.accept()
            with connection:
                connection.recv(100)
                connection.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")

        threading.Thread(target=answer, daemon=True).start()
        started = time.monotonic()
        result = cli("run", write_space(), "--backend", "ray", "--address", f"127.0.0.1:{port}", "--quiet")
    assert time.monotonic() - started < 30  # the Ray import included; ray.init retried for minutes
    assert result.exit_code == 1
    assert f"127.0.0.1:{port} answers but is not a Ray cluster (no gRPC server" in error_line(result)


def test_a_ray_client_address_without_ray_client_says_what_to_install():
    from kronsearch.backends.ray import check_address

    if importlib.util.find_spec("grpc") is not None:
        pytest.skip("ray[client] is installed here")
    with pytest.raises(BadInput,
                       match=r"backend.address 'ray://h:10001': Ray Client \(ray://\) needs the ray\[client\]"):
        check_address("ray://h:10001")
