"""Code approval: a node runs only training plans whose SHA-256 its custodian approved.

A *training plan* is the code that touches a site's rows. The built-in plan ``tabular`` is the
source of the modules that build, train and evaluate Cordiale's tabular models at a node (model
definitions, local trainer, node-side tasks, DP and secure-aggregation node steps); its identity is
the SHA-256 of those sources, concatenated in a fixed order with their names. Any change to any of
them - an upgrade of the package, a one-byte edit - is a new plan that needs a new approval. The
built-in plan ``imaging`` adds the MONAI networks, the transforms and the patch sampling of
imaging studies (:mod:`cordiale.learn.imaging_plans`) and the installed MONAI version: upgrading
MONAI at a node is a new plan too.

Every task names the plan it expects (``plan.name``, ``plan.sha256``, computed by the hub from its
own copy); the node computes the hash of the code it would run itself, refuses a task whose hash
differs (hub and node disagree on the code), and refuses code its custodian has not approved,
saying how to review and approve it. Approvals live in ``approved-plans.json`` in the node's state
directory (``cordiale node plans list|show|approve|revoke``).

A *custom plan* is researcher-written Python submitted with a study: a file that defines
``build_model(num_features: int) -> torch.nn.Module`` whose forward pass returns one logit per row
(Cordiale's trainer, DP and secure aggregation run around it). Its identity is the SHA-256 of its
text. The hub never executes it: the researcher's own machine builds the initial weights at
submission. A node keeps every custom plan it is asked to run in ``plans/<sha256>.py`` of its state
directory for review (as text, never executed). Approving it writes the reviewed text to
``plans/approved/<sha256>.py``, the only place plans are imported from, and the hash is checked
again at import: nothing received over the wire is executed as such.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cordiale.core.errors import ConfigError, PolicyRefusal, UnknownNameError

__all__ = [
    "BUILTIN_PLANS",
    "Plan",
    "PlanApprovals",
    "builtin_plan",
    "custom_plan",
    "load_plan",
    "own_plan_builder",
]

_TABULAR = (
    "cordiale.learn.models",
    "cordiale.learn.trainer",
    "cordiale.learn.tasks",
    "cordiale.learn.dp",
    "cordiale.learn.secure_aggregation",
    "cordiale.learn.subgroups",
    "cordiale.data.features",
    "cordiale.data.local",
)
#: Built-in plans: the modules whose source is the code a node runs on its data, in hash order.
BUILTIN_PLANS: dict[str, tuple[str, ...]] = {
    "tabular": _TABULAR,
    # MONAI networks, transforms and patch sampling, around the same trainer and tasks
    "imaging": (
        *_TABULAR,
        "cordiale.learn.imaging_plans",
        "cordiale.data.imaging.transforms",
        "cordiale.data.imaging.dataset",
        "cordiale.data.imaging.patch_dataset",
        "cordiale.data.imaging.patches",
    ),
}
#: Third-party packages whose installed version is part of a built-in plan's identity.
BUILTIN_PLAN_PACKAGES: dict[str, tuple[str, ...]] = {"imaging": ("monai",)}


@dataclass(frozen=True)
class Plan:
    name: str  # e.g. "builtin:tabular"
    sha256: str
    source: str  # what a custodian reviews


@functools.cache
def builtin_plan(name: str) -> Plan:
    """The built-in plan ``name`` as installed here (its hash is of this installation's code)."""
    modules = BUILTIN_PLANS.get(name.removeprefix("builtin:"))
    if modules is None:
        raise UnknownNameError("plan", name, [f"builtin:{n}" for n in BUILTIN_PLANS])
    root = Path(__file__).resolve().parents[1]  # the installed cordiale package (no imports)
    parts = []
    for module in modules:
        path = root.joinpath(*module.split(".")[1:]).with_suffix(".py")
        if not path.is_file():
            raise ConfigError(f"plan {name}: module {module} is not installed ({path})")
        parts.append(f"# ==== {module} ====\n{path.read_text(encoding='utf-8')}")
    for package in BUILTIN_PLAN_PACKAGES.get(name.removeprefix("builtin:"), ()):
        parts.append(f"# ==== {package} (third-party) ====\n# version {_version(package)}\n")
    source = "\n".join(parts)
    digest = hashlib.sha256(source.encode("utf-8")).hexdigest()
    return Plan(f"builtin:{name.removeprefix('builtin:')}", digest, source)


def _version(package: str) -> str:
    """The installed version of ``package`` (from its metadata, without importing it)."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def custom_plan(source: str, *, name: str = "custom") -> Plan:
    """A researcher's plan, identified by the SHA-256 of its text."""
    if not isinstance(source, str) or "def build_model" not in source:
        raise ConfigError("a custom plan is Python source that defines build_model(num_features)")
    digest = hashlib.sha256(source.encode("utf-8")).hexdigest()
    return Plan(f"custom:{name}", digest, source)


_LOADED: dict[str, Callable[[int], Any]] = {}
_OWN_STORE: Path | None = None  # this process's store for the researcher's own plans


def load_plan(path: Path, sha256: str) -> Callable[[int], Any]:
    """The ``build_model`` of the approved plan file ``path``, imported once per process.

    Nothing that arrives over the wire is ever executed: a node imports only files of its own
    approved store, and the file's SHA-256 is checked again at import time, so a file edited
    after its approval is refused.
    """
    builder = _LOADED.get(sha256)
    if builder is not None:
        return builder
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PolicyRefusal(f"plan {sha256[:16]}... has no approved file at this node") from None
    if hashlib.sha256(data).hexdigest() != sha256:
        raise PolicyRefusal(f"the approved file of plan {sha256[:16]}... changed since approval")
    spec = importlib.util.spec_from_file_location(f"cordiale_plan_{sha256[:16]}", path)
    if spec is None or spec.loader is None:  # pragma: no cover - a .py path always has one
        raise ConfigError(f"plan {sha256[:16]}... cannot be imported")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # the researcher's code: report, never crash the node
        raise ConfigError(f"plan {sha256[:16]}... does not load: {type(e).__name__}: {e}") from None
    builder = getattr(module, "build_model", None)
    if not callable(builder):
        raise ConfigError(f"plan {sha256[:16]}... defines no callable build_model")
    _LOADED[sha256] = builder
    return builder


def own_plan_builder(plan: Plan, store: Path | None = None) -> Callable[[int], Any]:
    """A researcher's ``build_model`` on the researcher's own machine (initial weights,
    simulation): their plan goes through an approval store of theirs like any node's."""
    global _OWN_STORE
    if store is None:
        _OWN_STORE = _OWN_STORE or Path(tempfile.mkdtemp(prefix="cordiale-own-plans-"))
        store = _OWN_STORE
    approvals = PlanApprovals(store / "approved-plans.json")
    approvals.approve(plan, by="the researcher (own machine)")
    return approvals.builder(plan.sha256)


class PlanApprovals:
    """The custodian's approvals: plan hashes, with who approved them and when."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pending_dir = path.parent / "plans"  # custom plans seen, kept for review (text)
        self.approved_dir = self.pending_dir / "approved"  # the only plan files ever imported

    def pending(self, sha256: str) -> Plan | None:
        """A custom plan this node was asked to run (for ``plans show``/``approve``)."""
        path = self.pending_dir / f"{sha256}.py"
        if not path.is_file():
            return None
        return custom_plan(path.read_text(encoding="utf-8"), name=sha256[:12])

    def _read(self) -> dict[str, dict[str, str]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except json.JSONDecodeError as e:
            raise ConfigError(f"approved plans file {self.path} is corrupt: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"approved plans file {self.path} is not a JSON object")
        return data

    def _write(self, data: dict[str, dict[str, str]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")
        os.replace(tmp, self.path)

    def approved(self) -> dict[str, dict[str, str]]:
        """sha256 -> {name, approved_at, by}."""
        return self._read()

    def approve(self, plan: Plan, *, by: str) -> None:
        if plan.name.startswith("custom:"):  # the reviewed text becomes the file that runs
            self.approved_dir.mkdir(parents=True, exist_ok=True)
            target = self.approved_dir / f"{plan.sha256}.py"
            fd, tmp = tempfile.mkstemp(dir=self.approved_dir, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(plan.source.encode("utf-8"))
            os.replace(tmp, target)
        data = self._read()
        data[plan.sha256] = {
            "name": plan.name,
            "approved_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "by": by,
        }
        self._write(data)

    def revoke(self, sha256: str) -> bool:
        data = self._read()
        found = data.pop(sha256, None) is not None
        self._write(data)
        (self.approved_dir / f"{sha256}.py").unlink(missing_ok=True)
        _LOADED.pop(sha256, None)
        return found

    def builder(self, sha256: str) -> Callable[[int], Any]:
        """The approved custom plan's ``build_model`` (imported from the approved file)."""
        if sha256 not in self._read():
            raise PolicyRefusal(f"custom plan {sha256[:16]}... is not approved here")
        return load_plan(self.approved_dir / f"{sha256}.py", sha256)

    def check(self, expected_name: str, expected_sha: str, source: str | None = None) -> Plan:
        """The plan this node would run for a task, if the task's and the custodian's agree."""
        if source is not None:
            plan = custom_plan(source, name=expected_name.removeprefix("custom:") or "custom")
            if plan.sha256 != expected_sha:
                raise PolicyRefusal("the task's plan source does not match its SHA-256")
            if plan.sha256 not in self._read():
                self.pending_dir.mkdir(parents=True, exist_ok=True)
                (self.pending_dir / f"{plan.sha256}.py").write_text(source, encoding="utf-8")
                raise PolicyRefusal(
                    f"custom plan {plan.sha256[:16]}... is not approved by this site's custodian "
                    f"(kept for review: cordiale node plans show/approve {plan.sha256})"
                )
            return plan
        local = builtin_plan(expected_name or "builtin:tabular")
        if expected_sha and expected_sha != local.sha256:
            raise PolicyRefusal(
                f"the task expects plan {local.name} with hash {expected_sha[:16]}..., this node "
                f"runs {local.sha256[:16]}... (hub and node run different code versions)"
            )
        if local.sha256 not in self._read():
            raise PolicyRefusal(
                f"plan {local.name} ({local.sha256[:16]}...) is not approved by this site's "
                f"custodian (cordiale node plans show/approve {local.name})"
            )
        return local
