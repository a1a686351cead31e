"""Built-in imaging networks: MONAI classifiers a study selects by name (``builtin:imaging``).

A study picks a network from an allow-list, with parameters validated against it::

    [model]
    network = "monai:densenet121"       # or "monai:resnet10", "monai:resnet18"
    network_params = { init_features = 16, growth_rate = 16 }
    fedbn = true                        # every batch-norm layer stays at its site

``spatial_dims`` comes from the imaging contract's ``ndim`` (2 for slices, 3 for volumes), the
input channels from the site's images; the network returns one logit per image, so Cordiale's
trainer, DP, secure aggregation and evaluation run around it as around any plan. These networks
are part of the built-in plan ``builtin:imaging`` (:mod:`cordiale.governance.plans`): a node runs
them only once its custodian approved that plan's hash, as for the tabular models.

MONAI loads on first build (the ``imaging`` extra); naming and validating a network does not
need it, so a hub validates imaging studies without it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from cordiale.core.errors import ConfigError, UnknownNameError
from cordiale.core.records import ConfigRecord
from cordiale.data.imaging.transforms import monai_module

__all__ = ["NETWORKS", "NetworkSpec", "OneLogit", "batchnorm_prefixes", "build_network"]


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DenseNetParams(_Params):
    init_features: int = Field(default=64, ge=1, le=256)
    growth_rate: int = Field(default=32, ge=1, le=128)
    bn_size: int = Field(default=4, ge=1, le=8)
    dropout_prob: float = Field(default=0.0, ge=0, lt=1)


class ResNetParams(_Params):
    widen_factor: float = Field(default=1.0, gt=0, le=4)
    conv1_t_size: int = Field(default=7, ge=1, le=11)
    conv1_t_stride: int = Field(default=1, ge=1, le=4)
    no_max_pool: bool = False


def _densenet121(dims: int, channels: int, p: dict[str, Any]) -> nn.Module:
    nets = monai_module("monai.networks.nets")
    return nets.DenseNet121(spatial_dims=dims, in_channels=channels, out_channels=1, **p)


def _resnet(depth: int) -> Callable[[int, int, dict[str, Any]], nn.Module]:
    def build(dims: int, channels: int, p: dict[str, Any]) -> nn.Module:
        nets = monai_module("monai.networks.nets")
        factory = getattr(nets, f"resnet{depth}")
        return factory(spatial_dims=dims, n_input_channels=channels, num_classes=1, **p)

    return build


@dataclass(frozen=True)
class _Network:
    params: type[_Params]
    build: Callable[[int, int, dict[str, Any]], nn.Module]
    #: The smallest image side (each spatial axis) the network's downsampling allows.
    min_side: int


#: The networks a study may name, with their parameters and the smallest image side they take.
NETWORKS: dict[str, _Network] = {
    "monai:densenet121": _Network(DenseNetParams, _densenet121, 32),
    "monai:resnet10": _Network(ResNetParams, _resnet(10), 8),
    "monai:resnet18": _Network(ResNetParams, _resnet(18), 8),
}


@dataclass(frozen=True)
class NetworkSpec:
    """A built-in network: its name, spatial dimensions and validated parameters."""

    name: str
    spatial_dims: int = 2
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        entry = NETWORKS.get(self.name)
        if entry is None:
            raise UnknownNameError("network", self.name, NETWORKS)
        if self.spatial_dims not in (2, 3):
            raise ConfigError(f"spatial_dims must be 2 or 3; got {self.spatial_dims}")
        try:
            entry.params.model_validate(self.params)
        except ValidationError as e:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()
            )
            valid = ", ".join(entry.params.model_fields)
            raise ConfigError(
                f"model.network_params for {self.name}: {problems} (its parameters are: {valid})"
            ) from None

    @property
    def min_side(self) -> int:
        return NETWORKS[self.name].min_side

    def resolved_params(self) -> dict[str, Any]:
        """Every parameter, defaults filled in."""
        return NETWORKS[self.name].params.model_validate(self.params).model_dump()

    def to_config(self) -> ConfigRecord:
        return ConfigRecord(
            {
                "model.network": self.name,
                "model.spatial_dims": self.spatial_dims,
                "model.network_params": json.dumps(self.params, sort_keys=True),
            }
        )

    @classmethod
    def from_config(cls, config: ConfigRecord) -> NetworkSpec | None:
        """The network a task names, or None when it names none."""
        name = config.get_str("model.network", "")
        if not name:
            return None
        try:
            params = json.loads(config.get_str("model.network_params", "{}"))
        except json.JSONDecodeError as e:
            raise ConfigError(f"model.network_params is not JSON: {e}") from None
        if not isinstance(params, dict):
            raise ConfigError("model.network_params must be a table")
        return cls(name, config.get_int("model.spatial_dims", 2), params)

    def describe(self) -> str:
        params = ", ".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return f"{self.name} ({self.spatial_dims}D{', ' + params if params else ''})"


class OneLogit(nn.Module):
    """A classifier with one output unit, returning one logit per image (``(n,)``)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).reshape(x.shape[0])


def build_network(spec: NetworkSpec, channels: int) -> nn.Module:
    """The network for images with ``channels`` channels (use through ``build_with`` to seed)."""
    entry = NETWORKS[spec.name]
    return OneLogit(entry.build(spec.spatial_dims, channels, spec.resolved_params()))


def batchnorm_prefixes(weight_names: Iterable[str]) -> tuple[str, ...]:
    """The module prefixes (``net.features.norm0.``) of every batch-norm layer among a model's
    weight names: the layers FedBN keeps at each site, whatever the network calls them."""
    suffix = "running_mean"
    return tuple(sorted({k[: -len(suffix)] for k in weight_names if k.endswith("." + suffix)}))
