"""The `kubernetes` scaler: a Deployment's replicas through the Kubernetes API.

    PATCH /apis/apps/v1/namespaces/{ns}/deployments/{name}/scale   {"spec": {"replicas": n}}
          (Content-Type: application/merge-patch+json, the `scale` subresource)
    GET   /apis/apps/v1/namespaces/{ns}/deployments/{name}         status.readyReplicas

Credentials: a kubeconfig file (its current context's server, CA and bearer token or token
file), or, inside a pod, the service account (KUBERNETES_SERVICE_HOST/PORT and the token and CA
under /var/run/secrets/kubernetes.io/serviceaccount). The pod's role needs `get` on
deployments and `patch` on deployments/scale. Client-certificate users are not supported: use a
token. Plain HTTP(S) with aiohttp, not the `kubernetes` client package: two calls do not justify
its size and its synchronous API.

The model's replicas sit behind one Service, so the router sees a single deployment
(`base_url`), usable once at least one pod is ready.
"""

from __future__ import annotations

import base64
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from loguru import logger

from services.capacity.scalers import ScalerStatus
from services.capacity.state import Replica
from services.config import ScalerSettings
from services.errors import KubernetesError

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@dataclass(frozen=True, slots=True)
class ClusterAccess:
    server: str
    token: str | None
    ssl: ssl.SSLContext | bool  # False: verification off (insecure-skip-tls-verify)


def access_from_kubeconfig(path: Path) -> ClusterAccess:
    """The current context's server, CA and token."""
    config = yaml.safe_load(path.read_text())
    by_name = {
        kind: {item["name"]: item.get(kind[:-1], {}) for item in config.get(kind) or []}
        for kind in ("clusters", "users", "contexts")
    }
    context = by_name["contexts"][config["current-context"]]
    cluster = by_name["clusters"][context["cluster"]]
    user = by_name["users"].get(context.get("user", ""), {})
    token = user.get("token")
    if token is None and user.get("tokenFile"):
        token = Path(user["tokenFile"]).read_text().strip()
    return ClusterAccess(cluster["server"].rstrip("/"), token, _ssl_context(cluster, path.parent))


def _ssl_context(cluster: dict[str, Any], base: Path) -> ssl.SSLContext | bool:
    if not cluster["server"].startswith("https"):
        return True  # plain HTTP (a local proxy such as `kubectl proxy`): nothing to verify
    if cluster.get("insecure-skip-tls-verify"):
        return False
    if cluster.get("certificate-authority-data"):
        pem = base64.b64decode(cluster["certificate-authority-data"]).decode()
        return ssl.create_default_context(cadata=pem)
    if cluster.get("certificate-authority"):
        return ssl.create_default_context(cafile=str(base / cluster["certificate-authority"]))
    return ssl.create_default_context()


def access_in_cluster(environ: dict[str, str] | None = None) -> ClusterAccess:
    """The pod's service account."""
    env = os.environ if environ is None else environ
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise KubernetesError("not in a cluster (no KUBERNETES_SERVICE_HOST) and no kubeconfig")
    token = (SERVICE_ACCOUNT / "token").read_text().strip()
    context = ssl.create_default_context(cafile=str(SERVICE_ACCOUNT / "ca.crt"))
    server = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
    return ClusterAccess(server, token, context)


class KubernetesScaler:
    """Scales one Deployment; its Service is the model's single routed endpoint."""

    def __init__(
        self,
        model: str,
        settings: ScalerSettings,
        http: aiohttp.ClientSession,
        access: ClusterAccess | None = None,
    ) -> None:
        if settings.deployment is None:
            raise ValueError(f"capacity scaler for {model}: kubernetes needs `deployment`")
        self._model = model
        self._settings = settings
        self._http = http
        self._access = access or (
            access_from_kubeconfig(Path(settings.kubeconfig).expanduser())
            if settings.kubeconfig
            else access_in_cluster()
        )
        base = f"{self._access.server}/apis/apps/v1/namespaces/{settings.namespace}/deployments"
        self._deployment_url = f"{base}/{settings.deployment}"
        self._wanted = 0

    async def scale_to(self, replicas: int) -> None:
        await self._call(
            "PATCH",
            self._deployment_url + "/scale",
            {"spec": {"replicas": replicas}},
            content_type="application/merge-patch+json",
        )
        self._wanted = replicas
        logger.info("asked Kubernetes for {} replicas of deployment {}/{}", replicas,
                    self._settings.namespace, self._settings.deployment)  # fmt: skip

    async def status(self) -> ScalerStatus:
        body = await self._call("GET", self._deployment_url)
        ready = int((body.get("status") or {}).get("readyReplicas") or 0)
        if self._wanted == 0:
            return ScalerStatus([], 0, ready)
        url = self._settings.base_url.format(model=self._model, port=0)
        replica = Replica(f"{self._model}:k8s-{self._settings.deployment}", url, ready >= 1)
        # One routed endpoint (the Service); the model is ready when every wanted pod is.
        return ScalerStatus([replica], self._wanted, ready)

    async def close(self) -> None:
        """Nothing to clean up: the replicas belong to the cluster (the planner's scale-down
        brings them to 0)."""

    async def _call(
        self, method: str, url: str, body: dict[str, Any] | None = None, *, content_type: str = ""
    ) -> dict[str, Any]:
        headers = {"Accept": "application/json"}
        if self._access.token:
            headers["Authorization"] = f"Bearer {self._access.token}"
        if content_type:
            headers["Content-Type"] = content_type
        try:
            async with self._http.request(
                method, url, json=body, headers=headers, ssl=self._access.ssl,
                timeout=aiohttp.ClientTimeout(total=10),
            ) as resp:  # fmt: skip
                data: dict[str, Any] = await resp.json(content_type=None)
                if resp.status >= 400:
                    raise KubernetesError(
                        f"{method} {url}: {resp.status} {data.get('message', data.get('reason'))}"
                    )
                return data
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise KubernetesError(f"{method} {url}: {type(exc).__name__}: {exc}") from None
