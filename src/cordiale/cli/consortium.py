"""``cordiale ca``, ``cordiale site``, ``cordiale researcher``: the administrator's commands.

They act on the hub's home directory (``--home``, or ``$CORDIALE_HOME``; default
``./cordiale-hub``): the consortium CA in ``ca/`` and the hub database (``--db``; default SQLite
in the home directory).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from cordiale.client import Credentials
from cordiale.core.errors import ConfigError
from cordiale.crypto.pki import CertificateAuthority
from cordiale.hub.admin import (
    add_researcher,
    add_site,
    init_consortium,
    revoke_researcher,
    revoke_site,
)
from cordiale.hub.settings import HubSettings

__all__ = ["Db", "Home", "ca_app", "hub_settings", "researcher_app", "site_app"]

Home = Annotated[
    Path,
    typer.Option(envvar="CORDIALE_HOME", help="The hub's home: CA, database, checkpoints."),
]
Db = Annotated[
    str | None,
    typer.Option(
        envvar="CORDIALE_DB", help="Database URL (default: sqlite:///HOME/hub.db), or postgresql://"
    ),
]
DEFAULT_HOME = Path("cordiale-hub")
HUB_FILE = "hub.json"  # the hub's public URL, recorded at `ca init` for enrolment kits

ca_app = typer.Typer(help="The consortium certificate authority.", no_args_is_help=True)
site_app = typer.Typer(help="Admit and revoke sites.", no_args_is_help=True)
researcher_app = typer.Typer(help="Admit researchers.", no_args_is_help=True)


def hub_settings(home: Path, db: str | None) -> HubSettings:
    return HubSettings(home=home, db_url=db)


def hub_url_of(home: Path) -> str:
    try:
        return str(json.loads((home / HUB_FILE).read_text())["url"])
    except (FileNotFoundError, KeyError, json.JSONDecodeError):
        raise ConfigError(
            f"no hub URL recorded in {home / HUB_FILE}; pass --hub-url (or run `cordiale ca init`)"
        ) from None


@ca_app.command("init")
def ca_init(
    consortium: Annotated[str, typer.Option(help="The consortium's name, e.g. uk-fr-alliance.")],
    hub_url: Annotated[str, typer.Option(help="The URL sites dial.")] = "https://127.0.0.1:8443",
    hub_host: Annotated[
        list[str] | None,
        typer.Option(help="Host names/IPs in the hub's TLS certificate (repeatable)."),
    ] = None,
    hub_country: Annotated[
        str, typer.Option(help="ISO 3166 country the hub runs in (site policies check it).")
    ] = "ZZ",
    home: Home = DEFAULT_HOME,
    db: Db = None,
) -> None:
    """Create the consortium CA, the hub's TLS certificate and the hub database."""
    hosts = hub_host or ["127.0.0.1", "localhost"]
    ca_dir = init_consortium(hub_settings(home, db), consortium, hosts, hub_country=hub_country)
    (home / HUB_FILE).write_text(json.dumps({"url": hub_url}))
    Console().print(f"consortium [bold]{consortium}[/]: CA in {ca_dir}, hub URL {hub_url}")


@site_app.command("add")
def site_add(
    site_id: Annotated[str, typer.Argument(help="Site id, e.g. oxford.")],
    country: Annotated[str, typer.Option(help="ISO 3166 country code, e.g. GB.")],
    out: Annotated[Path | None, typer.Option(help="Enrolment kit to write.")] = None,
    hub_url: Annotated[str | None, typer.Option(help="Override the recorded hub URL.")] = None,
    home: Home = DEFAULT_HOME,
    db: Db = None,
) -> None:
    """Admit a site: issue its node certificate and write its enrolment kit (keep it secret)."""
    out = out or Path(f"{site_id}.kit")
    kit = add_site(hub_settings(home, db), site_id, country, hub_url or hub_url_of(home), out)
    Console().print(f"site [bold]{site_id}[/] ({country}) admitted; kit: {out} (hub {kit.hub_url})")


@site_app.command("revoke")
def site_revoke(
    site_id: Annotated[str, typer.Argument(help="Site id.")],
    home: Home = DEFAULT_HOME,
    db: Db = None,
) -> None:
    """Revoke a site's certificate: the hub refuses it from the next request on."""
    revoke_site(hub_settings(home, db), site_id)
    Console().print(f"site [bold]{site_id}[/] revoked")


@researcher_app.command("add")
def researcher_add(
    name: Annotated[str, typer.Argument(help="Researcher name, e.g. alice.")],
    org: Annotated[str, typer.Option(help="Organisation, e.g. oxford.")],
    days: Annotated[int, typer.Option(help="Token validity in days.")] = 90,
    out: Annotated[Path | None, typer.Option(help="Credentials file to write.")] = None,
    hub_url: Annotated[str | None, typer.Option(help="Override the recorded hub URL.")] = None,
    home: Home = DEFAULT_HOME,
    db: Db = None,
) -> None:
    """Admit a researcher: writes a credentials file (hub URL, CA, token; mode 0600)."""
    settings = hub_settings(home, db)
    token = add_researcher(settings, name, org, days=days)
    out = out or Path(f"{name}.credentials.toml")
    ca = CertificateAuthority.load(settings.ca_dir)
    Credentials(name, hub_url or hub_url_of(home), ca.ca_cert_pem.decode(), token).write(out)
    Console().print(
        f"researcher [bold]{name}[/] ({org}) admitted for {days} days; credentials: {out} "
        "(the hub keeps only a hash of the token)"
    )


@researcher_app.command("revoke")
def researcher_revoke(
    name: Annotated[str, typer.Argument(help="Researcher name.")],
    home: Home = DEFAULT_HOME,
    db: Db = None,
) -> None:
    """Revoke a researcher's token: the hub refuses it from the next request on."""
    revoke_researcher(hub_settings(home, db), name)
    Console().print(f"researcher [bold]{name}[/] revoked")
