"""Flower baseline with secure aggregation: seconds per FedAvg round, SecAgg+ on or off.

Runs inside ``.venv-flower`` like ``flower_round.py``, whose task, data, model, training,
watchdog and timing it reuses (imported from it, nothing copied). Example::

    .venv-flower/bin/python bench/flower_secagg.py --sites 4 --rounds 5             # plain
    .venv-flower/bin/python bench/flower_secagg.py --sites 4 --rounds 5 --secagg    # SecAgg+
    .venv-flower/bin/python bench/flower_secagg.py --sites 100 --rounds 3 --secagg --num-shares 11

Flower 1.41's secure aggregation (``SecAggPlusWorkflow`` on the server, ``secaggplus_mod`` on
the clients) exists only on the legacy path: the workflow reads a ``LegacyContext`` (a
``flwr.server.strategy`` Strategy and a client manager) and parses the clients' replies as
``FitRes``. So both modes here use that path, and the plain mode differs from ``--secagg`` in
one thing only, the fit workflow:

* server: ``ServerApp`` whose main runs ``DefaultWorkflow(fit_workflow=...)`` on a
  ``LegacyContext`` holding a legacy ``FedAvg`` (weighted by example count, every site every
  round, no evaluation, initial weights from the seeded model as in ``flower_round.py``); the
  fit workflow is ``SecAggPlusWorkflow(num_shares, reconstruction_threshold)`` with
  ``--secagg`` and Flower's default fit workflow without it;
* clients: ``ClientApp(client_fn=...)`` of a ``NumPyClient`` that trains exactly as
  ``flower_round.py`` does (same seeds), with ``mods=[secaggplus_mod]`` under ``--secagg``.

SecAgg+ parameters: ``--num-shares`` is how many shares each client's secrets are split into,
one kept and one to each neighbour (so ``k`` neighbours is ``k + 1`` shares; Cordiale's SecAgg+
with 10 neighbours corresponds to 11); the default is every site (the complete graph).
``--threshold`` is how many shares rebuild a secret; the default is a strict majority of the
shares, as Cordiale's default threshold is a strict majority of each closed neighbourhood.
Flower's own quantisation defaults are kept (clipping range 8, 2^22 levels, modulus 2^32).

Timing is ``flower_round.py``'s: a round starts when the strategy's ``configure_fit`` is entered
(SecAgg+ calls it at the start of its setup stage) and ends when ``aggregate_fit`` returns (after
the unmask stage under SecAgg+); ``seconds_per_round`` leaves round 1 out. One JSON line on
stdout; the run is bounded by ``--timeout`` (per message exchange and overall, watchdog).
"""

from __future__ import annotations

import time

T0 = time.perf_counter()

# First: importing flower_round sets Flower's and Ray's environment (no telemetry, no update
# check) before flwr is imported.
from flower_round import (  # noqa: E402
    INIT_SEED,
    RoundClock,
    arg_parser,
    build_model,
    check_args,
    report,
    run_bounded,
    site_data,
    train_one_epoch,
)

# isort: split

import sys  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from typing import Any  # noqa: E402

import flwr  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from flwr.client import Client, NumPyClient  # noqa: E402
from flwr.client.mod import secaggplus_mod  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.common import (  # noqa: E402
    Context,
    FitIns,
    FitRes,
    Metrics,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
)
from flwr.server import LegacyContext, ServerConfig  # noqa: E402
from flwr.server.client_manager import ClientManager  # noqa: E402
from flwr.server.client_proxy import ClientProxy  # noqa: E402
from flwr.server.strategy import FedAvg  # noqa: E402
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402


def model_arrays(model: torch.nn.Module) -> list[np.ndarray]:
    """The model's weights as NumPy arrays, in ``state_dict`` order."""
    return [v.detach().cpu().numpy() for v in model.state_dict().values()]


class PimaClient(NumPyClient):
    """One site: loads the global weights, trains one epoch as ``flower_round.py`` does."""

    def __init__(self, partition_id: int, num_sites: int) -> None:
        self.partition_id = partition_id
        self.num_sites = num_sites

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Scalar]
    ) -> tuple[list[np.ndarray], int, dict[str, Scalar]]:
        torch.set_num_threads(1)
        x, y = site_data(self.partition_id, self.num_sites)
        model = build_model()
        keys = list(model.state_dict())
        model.load_state_dict(
            {k: torch.from_numpy(np.asarray(a)) for k, a in zip(keys, parameters, strict=True)}
        )
        server_round = int(config.get("server-round", 0))
        loss, n = train_one_epoch(model, x, y, seed=server_round * 100_003 + self.partition_id)
        return model_arrays(model), n, {"train_loss": loss}


def client_fn(context: Context) -> Client:
    """The site of this SuperNode (``partition-id`` of ``num-partitions``)."""
    return PimaClient(
        int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    ).to_client()


plain_client_app = ClientApp(client_fn=client_fn)
secagg_client_app = ClientApp(client_fn=client_fn, mods=[secaggplus_mod])


def fit_config(server_round: int) -> dict[str, Scalar]:
    """Tell the sites the round (their training seed depends on it)."""
    return {"server-round": server_round}


def weighted_loss(metrics: list[tuple[int, Metrics]]) -> Metrics:
    """Mean training loss weighted by example count."""
    total = sum(n for n, _ in metrics)
    return {"train_loss": sum(n * float(m["train_loss"]) for n, m in metrics) / max(total, 1)}


class TimedLegacyFedAvg(RoundClock, FedAvg):
    """Legacy FedAvg that stamps the start and end of every round on the driver's clock."""

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        self.round_started(server_round)
        return super().configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: Sequence[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        out = super().aggregate_fit(server_round, results, list(failures))
        self.round_ended(server_round, len(results), len(failures))
        return out


def make_server_app(
    num_sites: int,
    num_rounds: int,
    secagg: tuple[int, int] | None,
    timeout: float,
    sink: dict[str, Any],
) -> ServerApp:
    """ServerApp running the legacy DefaultWorkflow; SecAgg+ when ``secagg`` = (shares, t)."""
    server_app = ServerApp()

    @server_app.main()
    def server_main(grid: Grid, context: Context) -> None:
        torch.manual_seed(INIT_SEED)
        strategy = TimedLegacyFedAvg(
            fraction_fit=1.0,
            fraction_evaluate=0.0,
            min_fit_clients=num_sites,
            min_evaluate_clients=0,
            min_available_clients=num_sites,
            on_fit_config_fn=fit_config,
            initial_parameters=ndarrays_to_parameters(model_arrays(build_model())),
            fit_metrics_aggregation_fn=weighted_loss,
        )
        sink["strategy"] = strategy
        legacy = LegacyContext(
            context=context,
            config=ServerConfig(num_rounds=num_rounds, round_timeout=timeout),
            strategy=strategy,
        )
        fit_workflow = None
        if secagg is not None:
            shares, threshold = secagg
            fit_workflow = SecAggPlusWorkflow(
                num_shares=shares, reconstruction_threshold=threshold, timeout=timeout
            )
        DefaultWorkflow(fit_workflow=fit_workflow)(grid, legacy)
        sink["history"] = legacy.history

    return server_app


def main(argv: list[str] | None = None, t0: float = T0) -> int:
    """Run the simulation and print one JSON line (``t0``: when the script started)."""
    p = arg_parser(__doc__.splitlines()[0])
    p.add_argument("--secagg", action="store_true", help="Flower's SecAgg+ (else plain)")
    p.add_argument("--num-shares", type=int, default=None, help="default: every site")
    p.add_argument("--threshold", type=int, default=None, help="default: majority of shares")
    args = p.parse_args(argv)
    check_args(args)
    shares = min(args.num_shares or args.sites, args.sites)
    threshold = args.threshold or shares // 2 + 1
    info: dict[str, Any] = {
        "flwr_version": flwr.__version__,
        "sites": args.sites,
        "rounds": args.rounds,
        "secagg": args.secagg,
        "num_shares": shares if args.secagg else None,
        "threshold": threshold if args.secagg else None,
    }
    sink: dict[str, Any] = {}
    server_app = make_server_app(
        args.sites,
        args.rounds,
        (shares, threshold) if args.secagg else None,
        args.timeout,
        sink,
    )
    client_app = secagg_client_app if args.secagg else plain_client_app
    backend_config = run_bounded(server_app, client_app, args, info)

    def final_loss(r: int) -> float | None:
        losses = dict(sink["history"].metrics_distributed_fit.get("train_loss", []))
        return float(losses[r]) if r in losses else None

    return report(info, sink.get("strategy"), args, backend_config, t0, final_loss)


def _main_by_reference() -> int:
    """Run ``main`` from this file imported as ``flower_secagg`` (see ``flower_round.py``: the
    ClientApp's functions are then pickled by reference and imported once per Ray actor)."""
    try:
        import flower_secagg
    except ImportError:
        return main()
    return flower_secagg.main(t0=T0)


if __name__ == "__main__":
    sys.exit(_main_by_reference())
