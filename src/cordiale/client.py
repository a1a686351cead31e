"""The researcher's Python client for the hub's REST API (the CLI's ``study`` commands use it).

::

    from cordiale.client import Credentials, ResearcherClient

    client = ResearcherClient(Credentials.read("alice.credentials.toml"))
    study_id = client.submit(StudySpec.load("study.toml"))
    client.wait(study_id)
    client.fetch(study_id, Path("results"))

A credentials file (written by ``cordiale researcher add``, mode 0600) holds the hub URL, the
consortium CA certificate that authenticates the hub, and the researcher's bearer token.
"""

from __future__ import annotations

import json
import os
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import tomli_w

from cordiale.core.errors import (
    AuthenticationError,
    ConfigError,
    NotFoundError,
    PermissionDenied,
    TransportError,
)

if TYPE_CHECKING:
    from cordiale.learn.study import StudySpec

__all__ = ["Credentials", "ResearcherClient"]


@dataclass(frozen=True)
class Credentials:
    name: str
    hub_url: str
    ca_cert_pem: str
    token: str = field(repr=False)

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            tomli_w.dump(self.__dict__, f)

    @classmethod
    def read(cls, path: Path) -> Credentials:
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
            return cls(**{k: str(raw[k]) for k in ("name", "hub_url", "ca_cert_pem", "token")})
        except FileNotFoundError:
            raise ConfigError(
                f"no researcher credentials at {path} (cordiale researcher add writes them)"
            ) from None
        except (tomllib.TOMLDecodeError, KeyError) as e:
            raise ConfigError(f"researcher credentials {path} are invalid: {e}") from None


class ResearcherClient:
    def __init__(self, credentials: Credentials, *, timeout: float = 30.0) -> None:
        import ssl

        context = ssl.create_default_context(cadata=credentials.ca_cert_pem)
        self.credentials = credentials
        self._http = httpx.Client(
            base_url=credentials.hub_url,
            verify=context,
            timeout=timeout,
            headers={"authorization": f"Bearer {credentials.token}"},
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ResearcherClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            r = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as e:
            raise TransportError(
                f"cannot reach the hub at {self.credentials.hub_url}: {e}"
            ) from None
        if r.status_code < 400:
            return r
        try:
            detail = r.json().get("detail", r.text)
        except (json.JSONDecodeError, AttributeError):
            detail = r.text
        if not isinstance(detail, str):
            detail = json.dumps(detail)
        errors = {401: AuthenticationError, 403: PermissionDenied, 404: NotFoundError}
        raise errors.get(r.status_code, ConfigError)(f"hub: {detail}")

    def submit(self, spec: StudySpec) -> str:
        spec = spec.prepared_for_submission()  # a custom plan's initial weights, built here
        return str(self._call("POST", "/v1/studies", json=spec.to_json()).json()["id"])

    def studies(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/v1/studies").json())

    def status(self, study_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/v1/studies/{study_id}").json())

    def grant(self, study_id: str, researcher: str) -> None:
        """Let another researcher read this study (owners only)."""
        self._call("POST", f"/v1/studies/{study_id}/grants", json={"researcher": researcher})

    def results(self, study_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/v1/studies/{study_id}/results").json())

    def model(self, study_id: str) -> bytes:
        return self._call("GET", f"/v1/studies/{study_id}/model").content

    def wait(self, study_id: str, *, timeout: float = 3600.0, every: float = 0.5) -> dict[str, Any]:
        """Poll until the study has finished or failed; returns the last status."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status(study_id)
            if status["state"] in ("finished", "failed") or time.monotonic() > deadline:
                return status
            time.sleep(every)

    def fetch(self, study_id: str, out: Path) -> dict[str, Path]:
        """Write the global model (safetensors), the results JSON and the learning curve."""
        from cordiale.report.curves import plot_learning_curve

        out.mkdir(parents=True, exist_ok=True)
        paths = {"model": out / "model.safetensors", "results": out / "results.json"}
        paths["model"].write_bytes(self.model(study_id))
        results = self.results(study_id)
        paths["results"].write_text(json.dumps(results, indent=2))
        if any(r.get("auc") is not None for r in results["rounds"]):
            paths["curve"] = plot_learning_curve(results, out / "learning_curve.png")
        return paths
