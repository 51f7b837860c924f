"""Throwaway TLS certificates for a private server and its clients (made with ``trustme``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["TlsFiles"]


@dataclass(frozen=True)
class TlsFiles:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files.

    Made with ``trustme`` (a test dependency) in *directory*.
    """

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    @classmethod
    def create(cls, directory: Path | str) -> TlsFiles:
        import trustme

        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA()
        server = ca.issue_cert("127.0.0.1", "localhost")
        client = ca.issue_cert("fleche-redis-client")
        files = cls(
            path / "ca.pem",
            path / "server.pem",
            path / "server.key",
            path / "client.pem",
            path / "client.key",
        )
        ca.cert_pem.write_to_path(str(files.ca_cert))
        server.cert_chain_pems[0].write_to_path(str(files.server_cert))
        server.private_key_pem.write_to_path(str(files.server_key))
        client.cert_chain_pems[0].write_to_path(str(files.client_cert))
        client.private_key_pem.write_to_path(str(files.client_key))
        return files

    def client_options(self) -> dict[str, str | bool]:
        return {
            "ssl": True,
            "ssl_ca_certs": str(self.ca_cert),
            "ssl_certfile": str(self.client_cert),
            "ssl_keyfile": str(self.client_key),
        }

    def url_query(self) -> str:
        """The same options as URL query parameters (for ``rediss://`` URLs)."""
        return f"ssl_ca_certs={self.ca_cert}&ssl_certfile={self.client_cert}&ssl_keyfile={self.client_key}"

    def client_context(self):
        import ssl

        context = ssl.create_default_context(cafile=str(self.ca_cert))
        context.load_cert_chain(str(self.client_cert), str(self.client_key))
        return context
