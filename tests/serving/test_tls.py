"""TLS on the gRPC port: real handshakes over loopback with certificates made by openssl for
the test (a CA, a server certificate for 127.0.0.1, a client certificate, and a second CA that
signed nothing the server trusts), the config's checks, and `shoprec query` over mutual TLS."""
from __future__ import annotations

import shutil
from types import SimpleNamespace

import grpc
import pytest

from feature_repo.errors import ConfigError
from serving.config import load_config

INSTALL_HINT = "install it with `sudo apt-get install openssl` (Debian/Ubuntu); .ci/run does"


@pytest.fixture(scope="module")
def pki(tmp_path_factory, require_command) -> SimpleNamespace:
    """Ours (a CA, a server certificate for 127.0.0.1, a client certificate) and a stranger's:
    another CA's client certificate, which our server must refuse."""
    from serving.tls import make_certificates

    require_command("openssl", INSTALL_HINT, " (it makes the test certificates)")
    import subprocess

    d = tmp_path_factory.mktemp("tls")
    ours, theirs = make_certificates(d), make_certificates(d / "other")
    elsewhere = make_certificates(d / "elsewhere", hosts=("recommender.elsewhere",))  # not 127.0.0.1
    subprocess.run(["openssl", "pkey", "-in", str(ours["server_key"]), "-aes256", "-passout", "pass:secret",
                    "-out", str(d / "server-key-encrypted.pem")], check=True, capture_output=True)
    return SimpleNamespace(dir=d, **ours, other_ca=theirs["ca"], stranger=theirs["client"],
                           stranger_key=theirs["client_key"], elsewhere=elsewhere)


def _refused(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as error:
        call()
    return error.value.code()


def test_a_tls_port_answers_clients_that_trust_its_certificate_and_no_others(recommender, pki):
    from serving.client import RecommenderClient
    from serving.server import start
    from serving.tls import channel_credentials, server_credentials

    running = start(recommender, port=0, credentials=server_credentials(pki.server, pki.server_key))
    try:
        trusted = channel_credentials(pki.ca)
        for balance in (False, True):  # one channel, and one per process found through GetInfo
            with RecommenderClient(running.address, timeout=10, balance=balance, credentials=trusted) as client:
                page = client.recommend("u000001", k=5)
                assert len(page.items) == 5
                assert client.info().index_version == recommender.models.versions["index"]
        with RecommenderClient(running.address, timeout=3) as plaintext:
            assert _refused(plaintext.info) == grpc.StatusCode.UNAVAILABLE
        with RecommenderClient(running.address, timeout=3, credentials=channel_credentials(pki.other_ca)) as wary:
            assert _refused(wary.info) == grpc.StatusCode.UNAVAILABLE  # the server's certificate is not one it trusts
    finally:
        running.stop()


def test_a_certificate_for_another_host_is_refused_by_the_client(recommender, pki):
    """Signed by a CA the client trusts, but for recommender.elsewhere, dialled as 127.0.0.1."""
    from serving.client import RecommenderClient
    from serving.server import start
    from serving.tls import channel_credentials, server_credentials

    certs = pki.elsewhere
    running = start(recommender, port=0, credentials=server_credentials(certs["server"], certs["server_key"]))
    try:
        with RecommenderClient(running.address, timeout=3, credentials=channel_credentials(certs["ca"])) as client:
            assert _refused(client.info) == grpc.StatusCode.UNAVAILABLE
    finally:
        running.stop()


def test_mutual_tls_admits_only_clients_with_a_certificate_the_client_ca_signed(recommender, pki):
    from serving.client import RecommenderClient
    from serving.server import start
    from serving.tls import channel_credentials, server_credentials

    running = start(recommender, port=0, credentials=server_credentials(pki.server, pki.server_key, pki.ca))
    try:
        def info(**client_cert):
            with RecommenderClient(running.address, timeout=3,
                                   credentials=channel_credentials(pki.ca, **client_cert)) as client:
                return client.info()

        assert info(cert=pki.client, key=pki.client_key).index_version == recommender.models.versions["index"]
        assert _refused(info) == grpc.StatusCode.UNAVAILABLE  # no client certificate
        assert _refused(lambda: info(cert=pki.stranger, key=pki.stranger_key)) == grpc.StatusCode.UNAVAILABLE
    finally:
        running.stop()


@pytest.mark.parametrize("settings, expected", [
    ({"TLS_CERT": "server.pem"}, ["tls_key (default)", "only tls_cert is set (SHOPREC_SERVE_TLS_CERT)",
                                  "set tls_key too"]),
    ({"TLS_KEY": "server-key.pem"}, ["tls_cert (default)", "only tls_key is set (SHOPREC_SERVE_TLS_KEY)"]),
    ({"TLS_CERT": "missing.pem", "TLS_KEY": "server-key.pem"}, ["SHOPREC_SERVE_TLS_CERT", "cannot read",
                                                                "missing.pem"]),
    ({"TLS_CERT": "server-key.pem", "TLS_KEY": "server-key.pem"}, ["SHOPREC_SERVE_TLS_CERT",
                                                                   "holds no PEM certificate"]),
    ({"TLS_CERT": "server.pem", "TLS_KEY": "server.pem"}, ["SHOPREC_SERVE_TLS_KEY", "holds no PEM private key"]),
    ({"TLS_CERT": "server.pem", "TLS_KEY": "client-key.pem"}, ["SHOPREC_SERVE_TLS_KEY", "is not the private key",
                                                               "server.pem"]),
    ({"TLS_CERT": "server.pem", "TLS_KEY": "server-key-encrypted.pem"}, ["SHOPREC_SERVE_TLS_KEY", "passphrase",
                                                                         "openssl pkey"]),
    ({"TLS_CLIENT_CA": "ca.pem"}, ["SHOPREC_SERVE_TLS_CLIENT_CA", "need TLS", "set tls_cert and tls_key"]),
    ({"TLS_CERT": "server.pem", "TLS_KEY": "server-key.pem", "TLS_CLIENT_CA": "server-key.pem"},
     ["SHOPREC_SERVE_TLS_CLIENT_CA", "holds no PEM certificate"]),
])
def test_tls_settings_are_checked_at_load_naming_the_setting_and_the_fix(pki, settings, expected):
    env = {f"SHOPREC_SERVE_{name}": str(pki.dir / file) for name, file in settings.items()}
    with pytest.raises(ConfigError) as error:
        load_config(env=env)
    assert all(part in str(error.value) for part in expected), str(error.value)


def test_tls_files_in_the_config_file_are_relative_to_it(pki, tmp_path):
    shutil.copytree(pki.dir, tmp_path / "tls")
    path = tmp_path / "serve.toml"
    path.write_text('tls_cert = "tls/server.pem"\ntls_key = "tls/server-key.pem"\ntls_client_ca = "tls/ca.pem"\n')
    cfg = load_config(path, env={})
    assert (cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca) == (tmp_path / "tls/server.pem",
                                                               tmp_path / "tls/server-key.pem", tmp_path / "tls/ca.pem")


@pytest.mark.timeout(180)
def test_a_server_started_from_its_config_serves_mutual_tls_to_shoprec_query(trained_workspace, pki, capsys):
    """The path `shoprec serve` takes (settings from the environment, loaded and started as a
    process of the command does), queried by the real `shoprec query` command."""
    from serving.launcher import _load_and_start
    from shoprec.cli import main

    cfg = load_config(env={"SHOPREC_SERVE_PORT": "0", "SHOPREC_SERVE_TLS_CERT": str(pki.server),
                           "SHOPREC_SERVE_TLS_KEY": str(pki.server_key), "SHOPREC_SERVE_TLS_CLIENT_CA": str(pki.ca)})
    running = _load_and_start(cfg, trained_workspace.root, reuse_port=False)
    try:
        tls = ["--tls-ca", str(pki.ca), "--tls-cert", str(pki.client), "--tls-key", str(pki.client_key)]
        assert main(["query", "--address", running.address, *tls, "--user", "u000001", "--k", "3"]) == 0
        out = capsys.readouterr().out
        assert out.count("\n") >= 4 and "rank" in out  # the table's header and 3 items
        assert main(["query", "info", "--address", running.address, "--tls-ca", str(pki.ca), "--timeout", "3"]) == 2
        assert "UNAVAILABLE" in capsys.readouterr().err  # no client certificate: refused
        assert main(["query", "info", "--address", running.address, "--tls-cert", str(pki.client)]) == 2
        assert "--tls-key" in capsys.readouterr().err
    finally:
        running.stop()


def test_shoprec_tls_certs_makes_a_usable_set_and_never_overwrites_one(pki, tmp_path, capsys):
    import ssl
    import subprocess

    from shoprec.cli import main

    out = tmp_path / "tls"
    assert main(["tls-certs", "--out", str(out), "--host", "recommender.internal", "--host", "10.1.2.3"]) == 0
    assert "SHOPREC_SERVE_TLS_CERT=" in capsys.readouterr().out
    made = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(made) == {"ca.pem", "ca-key.pem", "server.pem", "server-key.pem", "client.pem", "client-key.pem"}
    assert all((out / name).stat().st_mode & 0o077 == 0 for name in made if name.endswith("-key.pem"))
    # The server certificate names the hosts asked for and chains to the CA made with it.
    verified = subprocess.run(["openssl", "verify", "-CAfile", str(out / "ca.pem"), str(out / "server.pem"),
                               str(out / "client.pem")], capture_output=True, text=True)
    assert verified.returncode == 0, verified.stdout + verified.stderr  # both chain to the CA made with them
    context = ssl.create_default_context(cafile=str(out / "ca.pem"))
    context.load_cert_chain(out / "client.pem", out / "client-key.pem")  # the client's pair belongs together
    names = subprocess.run(["openssl", "x509", "-in", str(out / "server.pem"), "-noout", "-ext", "subjectAltName"],
                           capture_output=True, text=True, check=True).stdout
    assert "DNS:recommender.internal" in names and "IP Address:10.1.2.3" in names, names
    load_config(env={"SHOPREC_SERVE_TLS_CERT": str(out / "server.pem"), "SHOPREC_SERVE_TLS_KEY": str(out / "server-key.pem"),
                     "SHOPREC_SERVE_TLS_CLIENT_CA": str(out / "ca.pem")})  # accepted as a server's files

    assert main(["tls-certs", "--out", str(out)]) == 2
    assert "already holds" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == made  # nothing overwritten
