"""connect() to a server that requires TLS and a user and password: the
right credentials and CA work (sends from other threads too, which use
connections of their own); wrong ones give a clear Unavailable within the
connect timeout; credentials never show in messages or repr.

The server is a lone nats-server with a certificate made here by openssl
(a throwaway CA); it listens on a free loopback port."""

import os
import shutil
import socket
import ssl
import subprocess
import threading
import time

import pytest

import pyqueue

from conformance.support import nats_missing

pytestmark = [
    pytest.mark.skipif(nats_missing() is not None, reason=f"jetstream backend: {nats_missing()}"),
    pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not on PATH (makes the certificates)"),
]

USER, PASSWORD = "pq", "s3cret-Pw"


def _openssl(*args: str, cwd: str) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _certificates(d: str) -> None:
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=pyqueue test CA", cwd=d)
    _openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1", cwd=d)
    with open(os.path.join(d, "san.ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.pem", "-days", "2", "-extfile", "san.ext", cwd=d)


@pytest.fixture(scope="module")
def secure_server(tmp_path_factory):
    """(url without credentials, CA file) of a TLS + password nats-server."""
    d = str(tmp_path_factory.mktemp("secure-nats"))
    _certificates(d)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    conf = os.path.join(d, "server.conf")
    with open(conf, "w") as f:
        f.write(f'listen: 127.0.0.1:{port}\n'
                f'jetstream {{ store_dir: "{d}/js"\n max_file_store: 256M\n max_memory_store: 16M }}\n'
                f'tls {{ cert_file: "{d}/server.pem"\n key_file: "{d}/server.key" }}\n'
                f'authorization {{ user: {USER}\n password: "{PASSWORD}" }}\n')
    log_path = os.path.join(d, "server.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([shutil.which("nats-server"), "-c", conf], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while b"Server is ready" not in open(log_path, "rb").read():
            assert proc.poll() is None, open(log_path).read()
            assert time.monotonic() < deadline, "nats-server did not start: " + open(log_path).read()
            time.sleep(0.05)   # bounded: the server's log line is the only readiness signal here
        yield f"tls://127.0.0.1:{port}", os.path.join(d, "ca.pem")
    finally:
        proc.terminate()
        proc.wait(10)


def trusting(ca: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=ca)


def test_user_password_and_tls_work_for_every_connection(secure_server):
    url, ca = secure_server
    with pyqueue.connect(url, user=USER, password=PASSWORD, tls=trusting(ca), replicas=1,
                         namespace="auth1", connect_timeout=10) as b:
        t = b.topic("t")
        t.send(b"from the main thread")
        errors = []

        def send_from_thread() -> None:       # a direct send: the thread's own connection
            try:
                t.send(b"from a thread")
            except Exception as e:            # reported below
                errors.append(e)

        th = threading.Thread(target=send_from_thread)
        th.start()
        th.join(30)
        assert not errors
        c = t.consumer("g", mode="queue")
        got = {c.poll(timeout=10).value, c.poll(timeout=10).value}
        assert got == {b"from the main thread", b"from a thread"}


def test_credentials_in_the_url_are_never_shown(secure_server):
    url, ca = secure_server
    secret_url = url.replace("tls://", f"tls://{USER}:{PASSWORD}@")
    with pyqueue.connect(secret_url, tls=trusting(ca), replicas=1, namespace="auth2", connect_timeout=10) as b:
        b.topic("t").send(b"x")
        assert PASSWORD not in repr(b) and PASSWORD not in b.url and "***@" in b.url
        with pytest.raises(pyqueue.UnknownTopic) as info:
            b.topic("missing", create=False)
        assert PASSWORD not in str(info.value)


def test_wrong_password_is_unavailable_naming_authorization(secure_server):
    url, ca = secure_server
    start = time.monotonic()
    with pytest.raises(pyqueue.PyQueueError) as info:
        pyqueue.connect(url, user=USER, password="wrong", tls=trusting(ca), connect_timeout=3)
    assert time.monotonic() - start < 10
    assert "authorization" in str(info.value).lower(), info.value
    assert "wrong" not in str(info.value)


def test_untrusted_certificate_is_unavailable_naming_it(secure_server):
    url, _ca = secure_server
    start = time.monotonic()
    with pytest.raises(pyqueue.PyQueueError) as info:
        pyqueue.connect(url, user=USER, password=PASSWORD, connect_timeout=3)
    assert time.monotonic() - start < 10
    assert "certificate" in str(info.value).lower()


def test_bad_credential_options():
    url = "nats://127.0.0.1:4222"
    with pytest.raises(pyqueue.ConfigError, match="together"):
        pyqueue.connect(url, user="u")
    with pytest.raises(pyqueue.ConfigError, match="not both"):
        pyqueue.connect(url, user="u", password="p", token="t")
    with pytest.raises(pyqueue.ConfigError, match="once"):
        pyqueue.connect("nats://u:p@127.0.0.1:4222", user="u", password="p")
    with pytest.raises(TypeError, match="SSLContext"):
        pyqueue.connect(url, tls="/etc/ssl/ca.pem")
    with pytest.raises(TypeError, match="token"):
        pyqueue.connect(url, token=b"t")
