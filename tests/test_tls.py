"""aiohttp imported without reading the CA store; https still verified (`_base/_tls.py`).

Each case runs in a fresh interpreter (aiohttp builds its contexts once, at its
import), against a real TLS server on loopback whose certificate the
interpreter trusts only through `SSL_CERT_FILE`, the store the deferred
contexts read.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def _python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


def _self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (its own CA) and its key."""
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={name}",
         "-addext", "subjectAltName=IP:127.0.0.1",
         "-addext", "basicConstraints=critical,CA:TRUE"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def test_importing_the_http_client_reads_no_ca_store() -> None:
    """After the import, aiohttp's default contexts wait for their store, and
    `ssl.SSLContext` is as it was (contexts made later read theirs at once)."""
    r = _python("""
        import ssl
        from conveyor.openai import _http
        from conveyor._base import _tls
        import aiohttp.connector as c
        print(_tls.pending(), "set_default_verify_paths" in ssl.SSLContext.__dict__)
        v, u = c._SSL_CONTEXT_VERIFIED, c._SSL_CONTEXT_UNVERIFIED
        print("wrap_bio" in v.__dict__, "wrap_bio" in u.__dict__)
        c._SSL_CONTEXT_VERIFIED.get_ca_certs()  # a look at the store reads it first
        print("wrap_bio" not in v.__dict__)
        plain = ssl.create_default_context()
        print("wrap_bio" in plain.__dict__)
    """)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "False", "True", "True", "True", "False"]


_CLIENT = """
    import asyncio, ssl, sys
    from conveyor.openai._http import Endpoint, OpenAIClient  # first: it imports aiohttp
    from conveyor._base import _tls
    import aiohttp
    from aiohttp import web

    async def main(way):
        app = web.Application()
        async def models(request):
            return web.json_response({"object": "list", "data": []})
        app.router.add_get("/v1/models", models)
        runner = web.AppRunner(app)
        await runner.setup()
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ctx.load_cert_chain(sys.argv[1], sys.argv[2])
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        url = f"https://127.0.0.1:{port}/v1"
        print("pending", _tls.pending())
        try:
            if way == "client":  # the run's client: the store read before the session
                async with OpenAIClient(Endpoint(url), concurrency=2) as client:
                    print("status", (await client.get("/models"))[0])
            else:  # a plain session: the store read at the first handshake
                async with aiohttp.ClientSession() as session:
                    async with session.get(url + "/models") as resp:
                        print("status", resp.status)
        except Exception as exc:
            print("error", type(exc).__name__, exc)
        finally:
            await runner.cleanup()

    asyncio.run(main(sys.argv[3]))
"""


@needs_openssl
@pytest.mark.parametrize("way", ["client", "session"])
def test_https_is_verified_against_the_store_read_on_first_use(tmp_path: Path, way: str) -> None:
    """A server the store trusts is reached; one it does not is refused: the
    deferred store is read before any handshake, and verification stays on."""
    trusted, trusted_key = _self_signed(tmp_path, "trusted")
    stranger, stranger_key = _self_signed(tmp_path, "stranger")
    script = tmp_path / "client.py"
    script.write_text(textwrap.dedent(_CLIENT))
    env = {**os.environ, "SSL_CERT_FILE": str(trusted), "SSL_CERT_DIR": str(tmp_path / "none")}
    for cert, key, expected in (
        (trusted, trusted_key, "status 200"),
        (stranger, stranger_key, "certificate verify failed"),
    ):
        r = subprocess.run(
            [sys.executable, str(script), str(cert), str(key), way],
            capture_output=True, text=True, timeout=60, env=env, check=False,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert "pending True" in r.stdout
        assert expected in r.stdout, r.stdout
