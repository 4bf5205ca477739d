"""Where the replica list comes from: ``--backend`` URLs, a ``--backends-file``, a Kubernetes service.

Each source answers ``await source.urls()`` with its current list, or raises :class:`DiscoveryError`
(the router then keeps the list it had: a flaky API server must not empty the pool). The router polls
the sources every ``--health-check-interval`` and at once on SIGHUP.

* ``--backends-file``: YAML or JSON, a list of URLs (or of ``{"url": ...}``), or ``{"backends": [...]}``;
  re-read when its modification time changes.
* ``--k8s-service NAME``: the ready addresses of the service's EndpointSlices
  (``discovery.k8s.io/v1``, label ``kubernetes.io/service-name=NAME``), read from the in-cluster API
  server with the pod's service-account token, as plain HTTPS calls.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx

logger = logging.getLogger("pagoda.router")

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class DiscoveryError(RuntimeError):
    pass


class StaticSource:
    def __init__(self, urls: list[str]) -> None:
        self._urls = list(urls)

    async def urls(self) -> list[str]:
        return list(self._urls)


def parse_backends_document(doc: Any, where: str) -> list[str]:
    """The URLs a backends file lists (see the module docstring for the accepted shapes)."""
    if isinstance(doc, dict):
        doc = doc.get("backends")
    if not isinstance(doc, list):
        raise DiscoveryError(f"{where}: expected a list of backend URLs (or {{'backends': [...]}})")
    out = []
    for item in doc:
        url = item.get("url") if isinstance(item, dict) else item
        if not isinstance(url, str) or not url.strip():
            raise DiscoveryError(f"{where}: each backend must be a URL string or {{'url': URL}}, got {item!r}")
        out.append(url)
    return out


class FileSource:
    """A YAML/JSON file of backend URLs, re-read when its modification time changes (or ``force``)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self._mtime: float | None = None
        self._urls: list[str] = []

    def load(self) -> list[str]:
        import yaml  # YAML is a superset of JSON: one parser reads both

        try:
            text = self.path.read_text()
            doc = yaml.safe_load(text)
        except (OSError, yaml.YAMLError) as e:
            raise DiscoveryError(f"cannot read --backends-file {self.path}: {e}") from None
        return parse_backends_document(doc, str(self.path))

    async def urls(self, force: bool = False) -> list[str]:
        try:
            mtime = self.path.stat().st_mtime
        except OSError as e:
            raise DiscoveryError(f"cannot read --backends-file {self.path}: {e}") from None
        if force or mtime != self._mtime:
            self._urls = self.load()
            self._mtime = mtime
            logger.info("backends file %s: %d backend(s)", self.path, len(self._urls))
        return list(self._urls)


def endpoint_slice_urls(slices: dict[str, Any], port: int | None, port_name: str | None,
                        scheme: str = "http") -> list[str]:
    """Ready endpoint addresses of an EndpointSliceList as URLs, on ``port`` (a number), else the port
    named ``port_name``, else each slice's first port."""
    urls: list[str] = []
    for sl in slices.get("items") or []:
        ports = sl.get("ports") or []
        chosen = port
        if chosen is None:
            named = [p for p in ports if port_name is None or p.get("name") == port_name]
            if not named:
                continue
            chosen = named[0].get("port")
        if chosen is None:
            continue
        for ep in sl.get("endpoints") or []:
            if (ep.get("conditions") or {}).get("ready") is False:  # absent means ready (the API's rule)
                continue
            for addr in ep.get("addresses") or []:
                host = f"[{addr}]" if ":" in addr else addr
                urls.append(f"{scheme}://{host}:{chosen}")
    return sorted(set(urls))


class KubernetesSource:
    """The ready endpoints of a service, from the API server's EndpointSlices."""

    def __init__(self, service: str, namespace: str | None, api_server: str | None, port: int | None = None,
                 port_name: str | None = None, token_file: Path | None = None, ca_file: Path | None = None,
                 client: httpx.AsyncClient | None = None) -> None:
        if not api_server:
            raise ValueError("--k8s-service needs the API server: run inside a pod (KUBERNETES_SERVICE_HOST is "
                             "set there) or pass --k8s-api-server URL")
        self.service = service
        sa = SERVICE_ACCOUNT_DIR
        self.namespace = namespace or self._pod_namespace(sa / "namespace")
        self.api_server = api_server.rstrip("/")
        self.port, self.port_name = port, port_name
        self.token_file = token_file if token_file is not None else sa / "token"
        ca = ca_file if ca_file is not None else sa / "ca.crt"
        self.client = client or httpx.AsyncClient(verify=str(ca) if ca.exists() else True, timeout=10.0)

    @staticmethod
    def _pod_namespace(path: Path) -> str:
        try:
            return path.read_text().strip() or "default"
        except OSError:
            return "default"

    def _headers(self) -> dict[str, str]:
        try:  # re-read every time: projected tokens rotate
            token = self.token_file.read_text().strip()
        except OSError:
            return {}
        return {"Authorization": f"Bearer {token}"} if token else {}

    async def urls(self) -> list[str]:
        url = (f"{self.api_server}/apis/discovery.k8s.io/v1/namespaces/{self.namespace}/endpointslices")
        try:
            r = await self.client.get(url, params={"labelSelector": f"kubernetes.io/service-name={self.service}"},
                                      headers=self._headers())
        except httpx.HTTPError as e:
            raise DiscoveryError(f"Kubernetes API {self.api_server}: {e!r}") from None
        if r.status_code != 200:
            raise DiscoveryError(f"Kubernetes API {url}: HTTP {r.status_code}: {r.text[:200]}")
        try:
            return endpoint_slice_urls(r.json(), self.port, self.port_name)
        except (ValueError, AttributeError) as e:
            raise DiscoveryError(f"Kubernetes API {url}: unexpected answer: {e}") from None

    async def aclose(self) -> None:
        await self.client.aclose()
