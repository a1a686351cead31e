"""A real consortium on loopback for tests: CA, hub over HTTPS with mutual TLS, node agents.

The hub runs in a thread of the test process (uvicorn, real TLS); each node agent runs in a thread
with its own enrolment kit and its own CSV file. Nothing is mocked: every task and reply crosses
TLS as wire bytes. Site data comes from the bundled Pima table, split iid with a fixed seed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx

from cordiale.client import Credentials, ResearcherClient
from cordiale.crypto.pki import CertificateAuthority, EnrolmentKit
from cordiale.data.catalog import get_dataset
from cordiale.data.local import LocalDataset
from cordiale.hub.admin import add_researcher, add_site, init_consortium
from cordiale.hub.server import HubServer, bind
from cordiale.hub.service import Hub, HubSettings
from cordiale.learn.study import StudySpec
from cordiale.node.agent import NodeAgent
from cordiale.node.config import NodeConfig
from cordiale.sim.sitefiles import site_datasets, write_site_files

SITES = {"oxford": "GB", "paris-cite": "FR", "pasteur": "FR"}


def study_spec(sites: list[str], **study: Any) -> dict[str, Any]:
    return {
        "study": {
            "name": "test study",
            "purpose": "testing",
            "sites": sites,
            "rounds": 3,
            "min_sites": 2,
            "round_timeout": 20.0,
            "seed": 0,
            **study,
        },
        "data": {
            "dataset": "pima",
            "contract": get_dataset("pima").contract.model_dump(mode="json", exclude_none=True),
        },
        "model": {"kind": "logreg"},
        "train": {"lr": 0.1},
    }


class LocalConsortium:
    def __init__(
        self,
        root: Path,
        *,
        db_url: str | None = None,
        sites: dict[str, str] = SITES,
        hub_country: str = "FR",
        **settings: Any,
    ) -> None:
        self.root = root
        self.settings = HubSettings(home=root / "hub", db_url=db_url, **settings)
        init_consortium(
            self.settings, "uk-fr-alliance", ["127.0.0.1", "localhost"], hub_country=hub_country
        )
        self.ca = CertificateAuthority.load(self.settings.ca_dir)
        self.sock = bind("127.0.0.1", 0)
        self.url = f"https://127.0.0.1:{self.sock.getsockname()[1]}"
        self.configs = write_site_files(root, list(sites))
        self.kits = {}
        for site, country in sites.items():
            path = root / "sites" / site / "kit.toml"
            add_site(self.settings, site, country, self.url, path)
            self.kits[site] = EnrolmentKit.read(path)
        self.credentials = {
            name: Credentials(
                name,
                self.url,
                self.ca.ca_cert_pem.decode(),
                add_researcher(self.settings, name, "oxford"),
            )
            for name in ("alice", "bob")
        }
        self.server: HubServer | None = None
        self.agents: dict[str, tuple[NodeAgent, threading.Thread]] = {}

    # -- processes ---------------------------------------------------------------------------
    def start_hub(self) -> HubServer:
        self.server = HubServer(Hub(self.settings), self.sock)
        self.server.start()
        return self.server

    def stop_hub(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def start_node(self, site: str, config: Path | None = None) -> NodeAgent:
        agent = NodeAgent(
            self.kits[site],
            NodeConfig.load(config or self.configs[site]),
            hub_url=self.url,
            poll_wait=2.0,
            heartbeat_every=1.0,
            max_backoff=0.5,
        )
        thread = threading.Thread(target=agent.run, name=f"node-{site}", daemon=True)
        thread.start()
        self.agents[site] = (agent, thread)
        return agent

    def stop_node(self, site: str) -> None:
        agent, thread = self.agents.pop(site)
        agent.stop()
        thread.join(timeout=10)

    def start(self, sites: Iterable[str] = SITES) -> LocalConsortium:
        """Start the hub and a node agent per site; use as ``with c.start(): ...``."""
        self.start_hub()
        for site in sites:
            self.start_node(site)
        return self

    def __enter__(self) -> LocalConsortium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for site in list(self.agents):
            self.stop_node(site)
        self.stop_hub()

    # -- clients -----------------------------------------------------------------------------
    def client(self, name: str = "alice") -> ResearcherClient:
        return ResearcherClient(self.credentials[name])

    def node_http(self, site: str | None, *, kit: EnrolmentKit | None = None) -> httpx.Client:
        """An HTTPS client presenting ``site``'s certificate (None: no client certificate)."""
        from cordiale.crypto.tls import client_ssl_context

        d = self.root / "tls" / (site or "anonymous")
        d.mkdir(parents=True, exist_ok=True)
        if site is None and kit is None:
            ctx = client_ssl_context(self.settings.ca_dir / "ca.pem")
        else:
            _ca, cert, key = (kit or self.kits[site]).materialise(d)  # type: ignore[index]
            ctx = client_ssl_context(self.settings.ca_dir / "ca.pem", cert, key)
        return httpx.Client(base_url=self.url, verify=ctx, timeout=10.0)

    def run_study(self, spec: dict[str, Any], researcher: str = "alice") -> dict[str, Any]:
        with self.client(researcher) as c:
            study_id = c.submit(StudySpec.parse(spec))
            status = c.wait(study_id, timeout=120)
        status["id"] = study_id
        return status

    def site_datasets(self, spec: dict[str, Any]) -> dict[str, LocalDataset]:
        """What each node builds from its file for ``spec`` (for the simulation reference)."""
        tables = {site: cfg.parent / "data.csv" for site, cfg in self.configs.items()}
        return site_datasets(StudySpec.parse(spec), tables)


def wait_until(predicate: Any, timeout: float = 30.0, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(every)


__all__ = ["SITES", "LocalConsortium", "study_spec", "wait_until"]
