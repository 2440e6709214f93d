"""The ``crypton`` command: run the broker, provision topics, start the dataflow and the API.

Every failure the user can cause (a bad setting, a busy port, an unreachable
cluster) ends as one ``crypton: error: ...`` line on stderr and exit code 2;
a traceback means a bug in Crypton.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path
from types import FrameType

from confluent_kafka import KafkaException

from crypton.broker import (
    KAFKA_VERSION,
    BrokerError,
    EmbeddedBroker,
    ensure_kafka_jars,
    port_in_use,
)
from crypton.config import ConfigError, Settings
from crypton.kafka import KafkaUnavailableError, wait_for_kafka
from crypton.monitor import DATAFLOW_METRICS_PORT, wait_http
from crypton.process import Child, free_ports, settings_env
from crypton.supervisor import Managed, Supervisor, Together
from crypton.topics import TOPICS, TopicError, ensure_topics

__all__ = [
    "api_command",
    "cluster_arguments",
    "dataflow_children",
    "dataflow_command",
    "ensure_admin_token",
    "ensure_recovery_store",
    "main",
]

EXIT_ERROR = 2
DESCRIPTION = "Crypton, a crypto exchange whose only database is the Kafka log."
DATAFLOW = "dataflows.exchange:flow"
API_FACTORY = "api.app:create_app"
# One partition is enough: Bytewax maps any number of workers onto it, and
# the store is only read after a crash.
RECOVERY_PARTITIONS = 1
# Bytewax commits each epoch in about five SQLite transactions per partition, each
# writing its B-tree pages again to the WAL and syncing it, whatever changed: 4 KiB
# pages cost the dataflow 4.7 MB/min at 10 orders/s, 1 KiB pages 3.2 MB/min
# (`bench_scale`'s build at 50,000 users, /proc write_bytes over 60 s).
RECOVERY_PAGE_SIZE = 1024


class CliError(RuntimeError):
    """An error already phrased for the user."""


def say(line: str) -> None:
    """Progress on stdout, flushed at once so it interleaves with children's output."""
    print(line, flush=True)


# --- what the processes are -----------------------------------------------------------


def set_page_size(path: Path, size: int = RECOVERY_PAGE_SIZE) -> None:
    """Rewrite a (new, nearly empty) SQLite file with pages of ``size`` bytes; the page
    size of a WAL database changes only through a vacuum outside WAL mode. Recovery
    partitions made by ``python -m bytewax.recovery`` get ``RECOVERY_PAGE_SIZE`` this
    way (k8s/dataflow.yaml's init container calls it too)."""
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("PRAGMA journal_mode = DELETE")
        db.execute(f"PRAGMA page_size = {int(size)}")
        db.execute("VACUUM")
        db.execute("PRAGMA journal_mode = WAL")


def ensure_recovery_store(settings: Settings, partitions: int = RECOVERY_PARTITIONS) -> Path:
    """The Bytewax recovery directory, initialised with ``partitions`` empty partitions
    on first use (an existing store keeps the count it was made with).

    Processes of one dataflow on one machine share the directory: Bytewax makes one
    worker the primary writer of each partition among all the workers that see it, so
    one partition per process spreads the snapshot writes.
    """
    store = (settings.data_dir / "recovery").absolute()
    if store.is_dir() and any(store.iterdir()):
        return store
    # Made aside, then renamed into place: processes of one cluster started together
    # (`crypton dataflow -i 0` and `-i 1`) must not both fill the same directory.
    store.parent.mkdir(parents=True, exist_ok=True)
    made = Path(tempfile.mkdtemp(prefix=".recovery-", dir=store.parent))
    argv = [sys.executable, "-m", "bytewax.recovery", str(made), str(partitions)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        shutil.rmtree(made, ignore_errors=True)
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise CliError(f"cannot create the recovery store in {store}: {last}")
    for part in made.glob("*.sqlite3"):
        set_page_size(part)
    try:
        if store.is_dir():
            store.rmdir()  # empty, or another process filled it first
        made.rename(store)
    except OSError:
        shutil.rmtree(made, ignore_errors=True)
        if store.is_dir() and any(store.iterdir()):
            return store
        raise
    say(f"created recovery store {store} ({partitions} partition{'s' * (partitions > 1)})")
    return store


def cluster_arguments(process_id: int, addresses: Sequence[str]) -> list[str]:
    """``bytewax.run``'s ``-i ID -a "host:port;host:port"`` for one process of a cluster."""
    return ["-i", str(process_id), "-a", ";".join(addresses)]


def dataflow_children(
    settings: Settings,
    env: dict[str, str],
    logs: Path,
    *,
    processes: int = 1,
    workers: Sequence[str] = (),
) -> list[Child]:
    """The dataflow as ``processes`` Bytewax processes on 127.0.0.1 (one: no cluster).

    Process ``i`` serves its metrics on ``CRYPTON_DATAFLOW_METRICS_PORT`` + ``i`` (when
    set) and talks to its peers on free loopback ports picked here.
    """
    if processes == 1:
        return [Child("dataflow", dataflow_command(settings, workers), logs / "dataflow.log", env)]
    peers = free_ports(processes)
    addresses = [f"127.0.0.1:{peers + i}" for i in range(processes)]
    metrics = env.get("CRYPTON_DATAFLOW_METRICS_PORT")
    children = []
    for i in range(processes):
        own = dict(env)
        if metrics:
            own["CRYPTON_DATAFLOW_METRICS_PORT"] = str(int(metrics) + i)
        argv = dataflow_command(settings, [*workers, *cluster_arguments(i, addresses)])
        children.append(Child(f"dataflow-{i}", argv, logs / f"dataflow-{i}.log", own))
    return children


def dataflow_command(settings: Settings, extra: Sequence[str] = ()) -> list[str]:
    """``python -m bytewax.run dataflows.exchange:flow -r DIR -s N -b 0 [extra]``."""
    store = (settings.data_dir / "recovery").absolute()
    return [
        sys.executable, "-m", "bytewax.run", DATAFLOW,
        "-r", str(store), "-s", str(settings.snapshot_seconds), "-b", "0", *extra,
    ]  # fmt: skip


def api_command(settings: Settings, extra: Sequence[str] = ()) -> list[str]:
    """``python -m uvicorn api.app:create_app --factory --host H --port P [extra]``."""
    return [
        sys.executable, "-m", "uvicorn", API_FACTORY, "--factory",
        "--http", "api._server:HeaderTimeoutH11Protocol",  # bounds the time to send headers
        "--host", settings.api_host, "--port", str(settings.api_port),
        # The app closes its streams on shutdown; this bounds it should a client linger.
        "--timeout-graceful-shutdown", "3", *extra,
    ]  # fmt: skip


def ensure_admin_token(settings: Settings) -> str:
    """``CRYPTON_ADMIN_TOKEN``, or the token kept in ``data_dir/admin-token`` (created once)."""
    if token := os.environ.get("CRYPTON_ADMIN_TOKEN"):
        return token
    path = settings.data_dir / "admin-token"
    if path.exists():
        token = path.read_text("utf-8").strip()
        if token:
            os.chmod(path, 0o600)
            return token
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    # Created with mode 0600 from the start: the token grants credit and debit.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")
    return token


# --- subcommands -----------------------------------------------------------------------


def _wait_external(settings: Settings, timeout: float) -> None:
    wait_for_kafka(settings, timeout)
    say(f"Kafka cluster at {settings.bootstrap_servers} answers (CRYPTON_KAFKA_BOOTSTRAP)")


def _provision(settings: Settings) -> None:
    created = ensure_topics(settings)
    prefix = f" (prefix {settings.topic_prefix!r})" if settings.topic_prefix else ""
    say(f"{len(TOPICS)} topics present, {len(created)} created{prefix}")
    for name in created:
        say(f"  created {name} ({settings.partitions} partitions)")


class _Stop:
    """SIGINT/SIGTERM turned into an event the start-up waits on, then handed over."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.supervisor: Supervisor | None = None
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._set)

    def _set(self, signum: int, frame: FrameType | None) -> None:
        self.event.set()
        if self.supervisor is not None:
            self.supervisor.request_stop(f"received {signal.Signals(signum).name}")

    def hand_over(self, supervisor: Supervisor) -> None:
        """From now on a signal stops ``supervisor``, and one that came already does.
        Checking the event and then calling ``supervisor.run()`` would lose a signal
        that arrives in between, before ``run`` installs its own handlers: the
        supervisor would then run until the next one."""
        self.supervisor = supervisor
        if self.event.is_set():
            supervisor.request_stop("interrupted during start-up")


def cmd_broker(settings: Settings, args: argparse.Namespace) -> int:
    """Run the embedded broker in the foreground until Ctrl-C or SIGTERM."""
    if args.fetch:
        if settings.broker == "kafka":
            say(f"Apache Kafka {KAFKA_VERSION} jars in {ensure_kafka_jars(say)}")
        return 0
    if settings.bootstrap:
        _wait_external(settings, args.kafka_timeout)
        say("an external cluster is configured; no embedded broker to start")
        return 0
    stop = _Stop()
    broker = EmbeddedBroker(settings, say=say)
    try:
        broker.start().wait_ready(args.kafka_timeout)
        say(broker.ready_line())
        logs = ", ".join(str(node.log_path) for node in broker.nodes)
        say(f"broker log: {logs}; Ctrl-C stops it")
        if len(broker.nodes) > 1:
            # A cluster outlives one node: restart a node that dies, as `crypton up` does.
            supervisor = Supervisor([broker.nodes], grace=args.grace, say=say)
            supervisor.start()
            stop.hand_over(supervisor)
            supervisor.run()
            return 0
        while not stop.event.wait(0.5):
            code = broker.poll()
            if code is not None:
                raise BrokerError(f"broker exited with code {code} (log: {broker.log_path})")
    finally:
        if broker.running:
            say("stopping broker")
            broker.stop()
    say("broker stopped")
    return 0


def cmd_topics(settings: Settings, args: argparse.Namespace) -> int:
    """Create the missing topics; a second run creates none."""
    wait_for_kafka(settings, args.kafka_timeout)
    _provision(settings)
    return 0


def cmd_dataflow(settings: Settings, args: argparse.Namespace) -> int:
    """Replace this process by the Bytewax dataflow, so signals reach it directly."""
    wait_for_kafka(settings, args.kafka_timeout)
    _provision(settings)
    ensure_recovery_store(settings, max(RECOVERY_PARTITIONS, len(_addresses(args.extra))))
    argv = dataflow_command(settings, args.extra)
    say("exec " + " ".join(argv[1:]))
    os.execve(sys.executable, argv, settings_env(settings))


def _addresses(extra: Sequence[str]) -> list[str]:
    """The peers given to Bytewax with ``-a``/``--addresses`` among the passed-through
    options (``-a "h:p;h:p"``, ``--addresses "h:p;h:p"``, ``--addresses=h:p;h:p``)."""
    for i, word in enumerate(extra):
        if word in ("-a", "--addresses") and i + 1 < len(extra):
            return extra[i + 1].split(";")
        if word.startswith("--addresses="):
            return word.removeprefix("--addresses=").split(";")
    return []


def cmd_api(settings: Settings, args: argparse.Namespace) -> int:
    """Replace this process by the uvicorn server of the API."""
    env = settings_env(settings)
    env["CRYPTON_ADMIN_TOKEN"] = ensure_admin_token(settings)
    argv = api_command(settings, args.extra)
    say(f"API at http://{settings.api_host}:{settings.api_port}")
    os.execve(sys.executable, argv, env)


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    """Broker, topics, dataflow and API under one supervisor; Ctrl-C stops them all."""
    if settings.partitions < args.total_workers:
        # A worker without an inbox partition holds no wallet and no book: it only adds
        # coordination (CRYPTON_PARTITIONS is fixed for the life of a log, see operations.md).
        raise CliError(
            f"{args.total_workers} dataflow workers need at least as many partitions;"
            f" CRYPTON_PARTITIONS is {settings.partitions}"
        )
    api_ports = [settings.api_port + i for i in range(args.api_replicas)]
    for port in api_ports:
        if port_in_use(settings.api_host, port):
            # Checked before anything starts: the API would otherwise exit at once and be
            # restarted for ever, with the reason only in its log.
            raise CliError(
                f"port {port} on {settings.api_host} is already in use"
                " (another `crypton up`? set CRYPTON_API_PORT to a free port)"
            )
    data_dir = settings.data_dir.absolute()
    logs = data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    processes: list[Managed] = []
    broker: EmbeddedBroker | None = None
    stop = _Stop()  # until the supervisor takes over, a signal stops the start-up
    try:
        if settings.bootstrap:
            _wait_external(settings, args.kafka_timeout)
        else:
            broker = EmbeddedBroker(settings, log_path=logs / "broker.log", say=say)
            broker.start().wait_ready(args.kafka_timeout)
            say(broker.ready_line())
            # Each node on its own: a node that dies is restarted while the others serve.
            processes.extend(broker.nodes)
        _provision(settings)
        ensure_recovery_store(settings, args.dataflow_processes)
        token = ensure_admin_token(settings)
        env = settings_env(settings)
        # `crypton monitor` scrapes the dataflow there; a busy port costs only the metrics.
        metrics_port = env.setdefault("CRYPTON_DATAFLOW_METRICS_PORT", str(DATAFLOW_METRICS_PORT))
        if args.dataflow_processes > 1:
            # One sink partition (one producer) per process: Bytewax spreads them over
            # the workers, so not all output travels to the process holding the only one.
            env.setdefault("CRYPTON_SINK_PARTS", str(args.dataflow_processes))
        # Process i serves its metrics on the port after process i - 1's.
        metrics_ports = [int(metrics_port) + i for i in range(args.dataflow_processes)]
        busy_metrics = {port for port in metrics_ports if port_in_use("127.0.0.1", port)}
        flows = dataflow_children(
            settings, env, logs, processes=args.dataflow_processes, workers=args.workers
        )
        # A Timely cluster lives and dies as one: restarted together from the snapshot.
        dataflow: Managed = flows[0] if len(flows) == 1 else Together("dataflow", flows)
        apis = [
            Child(
                "api" if args.api_replicas == 1 else f"api-{i}",
                api_command(dataclasses.replace(settings, api_port=settings.api_port + i)),
                logs / ("api.log" if args.api_replicas == 1 else f"api-{i}.log"),
                {**env, "CRYPTON_ADMIN_TOKEN": token},
            )
            for i in range(args.api_replicas)
        ]
        processes += [*flows, *apis]
        # The nodes form one group: restarted one by one, stopped together (a cluster
        # stopped node by node loses its quorum and hangs until the grace runs out).
        nodes: list[Managed] = list(broker.nodes) if broker is not None else []
        supervised: list[Managed | list[Managed]] = [nodes] if nodes else []
        supervisor = Supervisor([*supervised, dataflow, *apis], grace=args.grace)
        supervisor.start()
        if stop.event.is_set():
            supervisor.stop_all()
            return 0
        urls = [f"http://{settings.api_host}:{settings.api_port + i}" for i in range(len(apis))]
        url = urls[0]
        # "Up" means every part answered: each API caught up with the log and reached
        # the broker (/ready), and each dataflow process serves its metrics.
        probes = [(api, f"{u}/ready") for api, u in zip(apis, urls, strict=True)]
        for flow, port in zip(flows, metrics_ports, strict=True):
            if port in busy_metrics:  # what answers there is not this flow: do not ask it
                say(
                    f"port {port} is already in use: the {flow.name} serves no metrics"
                    " (set CRYPTON_DATAFLOW_METRICS_PORT to a free port)"
                )
            else:
                probes.append((flow, f"http://127.0.0.1:{port}/metrics"))
        silent = [c for c, probe in probes if not wait_http(probe, 60, c, stop.event)]
        if silent:
            for child in silent:
                say(f"the {child.name} did not answer yet (log: {child.log_path})")
            say(f"Crypton started, not every part answered. API {url} (docs at {url}/schema)")
        else:
            say(f"Crypton is up. API {url} (docs at {url}/schema), market page at {url}/")
        for other in urls[1:]:
            say(f"  API replica:  {other}")
        say(f"  Kafka:        {settings.bootstrap_servers}")
        say(f"  data dir:     {data_dir}")
        # Never the token itself: this output ends up in logs and CI output.
        env_token = os.environ.get("CRYPTON_ADMIN_TOKEN")
        say(f"  admin token:  {'$CRYPTON_ADMIN_TOKEN' if env_token else data_dir / 'admin-token'}")
        for process in processes:
            say(f"  {process.name + ' log:':14}{process.log_path}")
        say("Ctrl-C stops everything")
        stop.hand_over(supervisor)
        supervisor.run()
    except BaseException:
        for process in reversed(processes):
            if broker is not None and process in broker.nodes:
                broker.stop(args.grace)  # every node at once, for the same reason
                break
            process.stop(args.grace)
        raise
    say("stopped")
    return 0


def cmd_lead_module(settings: Settings, args: argparse.Namespace) -> int:
    """``crypton demo`` and ``crypton audit``: ``crypton.<name>.main(settings, args)``."""
    name = f"crypton.{args.command}"
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise
        raise CliError(f"'crypton {args.command}' is not available in this build") from None
    code = module.main(settings, list(args.extra))
    return int(code or 0)


# --- parsing ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``crypton`` (subcommands and their options)."""
    parser = argparse.ArgumentParser(prog="crypton", description=DESCRIPTION)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--kafka-timeout", type=float, default=60.0, metavar="S",
        help="seconds to wait for Kafka to answer (default 60)",
    )  # fmt: skip
    embedded = argparse.ArgumentParser(add_help=False)
    embedded.add_argument(
        "--broker", choices=["kafka", "tansu"], help="embedded broker (default kafka)"
    )
    embedded.add_argument("--kafka-port", type=int, metavar="P", help="embedded broker port")
    embedded.add_argument(
        "--nodes", type=int, metavar="N", help="Kafka nodes (3: a replicated local cluster)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    broker = sub.add_parser(
        "broker", parents=[common, embedded], help="run the embedded Kafka broker (foreground)"
    )
    broker.add_argument(
        "--fetch", action="store_true", help="only fetch Apache Kafka's jars with Maven, then exit"
    )
    broker.add_argument("--grace", type=float, default=20.0, help="seconds before SIGKILL")
    sub.add_parser("topics", parents=[common], help="create the exchange's topics (idempotent)")
    for name, what in (("dataflow", "the Bytewax dataflow"), ("api", "the HTTP API")):
        sub.add_parser(name, parents=[common], help=f"run {what}; other options pass through")
    up = sub.add_parser("up", parents=[common, embedded], help="run everything, supervised")
    up.add_argument(
        "-w", "--workers", type=int, default=None, help="dataflow workers (per process)"
    )
    up.add_argument(
        "--dataflow-processes", type=int, default=1, metavar="N",
        help="Bytewax processes of the dataflow, one Timely cluster on 127.0.0.1 (default 1)",
    )  # fmt: skip
    up.add_argument(
        "--api-replicas", type=int, default=1, metavar="N",
        help="API processes on consecutive ports from CRYPTON_API_PORT (default 1)",
    )  # fmt: skip
    # A 3-node Kafka cluster takes 6-8 s to shut down cleanly on a small machine.
    up.add_argument("--grace", type=float, default=20.0, help="seconds before SIGKILL")
    for name, what in (
        ("demo", "a scripted trading session"),
        ("audit", "check invariants"),
        ("monitor", "Prometheus with the dashboards, scraping a running exchange"),
    ):
        # No -h of ours: `crypton audit --help` must reach the audit's own parser.
        sub.add_parser(name, help=f"{what}; its options pass through", add_help=False)
    return parser


PASS_THROUGH = frozenset({"dataflow", "api", "demo", "audit", "monitor"})
COMMANDS = {
    "broker": cmd_broker,
    "topics": cmd_topics,
    "dataflow": cmd_dataflow,
    "api": cmd_api,
    "up": cmd_up,
    "demo": cmd_lead_module,
    "audit": cmd_lead_module,
    "monitor": cmd_lead_module,
}


def _settings(args: argparse.Namespace) -> Settings:
    settings = Settings.from_env()
    if getattr(args, "broker", None):
        settings = dataclasses.replace(settings, broker=args.broker)
    nodes = getattr(args, "nodes", None)
    if nodes is not None:
        if not 1 <= nodes <= 9:
            raise ConfigError(f"--nodes {nodes} must be between 1 and 9")
        settings = dataclasses.replace(settings, nodes=nodes)
    port = getattr(args, "kafka_port", None)
    if port is not None:
        if not 1 <= port <= 65535:
            raise ConfigError(f"--kafka-port {port} must be between 1 and 65535")
        settings = dataclasses.replace(settings, kafka_port=port)
    return settings


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``crypton`` console script; returns the exit code."""
    parser = build_parser()
    # Options we do not know are the child's (``crypton dataflow -w 2``): argparse's
    # REMAINDER would miss those that come first, so collect the unknown ones.
    args, extra = parser.parse_known_args(argv)
    if extra and args.command not in PASS_THROUGH:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    if args.command == "up":
        for option in ("workers", "dataflow_processes", "api_replicas"):
            value = getattr(args, option)
            if value is not None and not 1 <= value <= 64:
                flag = "--" + option.replace("_", "-")
                parser.error(f"{flag} {value} must be between 1 and 64")
        args.total_workers = (args.workers or 1) * args.dataflow_processes
        args.workers = ["-w", str(args.workers)] if args.workers else []
    try:
        return COMMANDS[args.command](_settings(args), args)
    except KafkaException as exc:
        error = exc.args[0] if exc.args else exc
        message = error.str() if hasattr(error, "str") else str(error)
        # Some client errors (a timed-out admin request) carry no text, only a name.
        if not message and hasattr(error, "name"):
            message = error.name()
        return _fail(f"Kafka: {message or type(exc).__name__}")
    except (ConfigError, BrokerError, KafkaUnavailableError, TopicError, CliError) as exc:
        return _fail(str(exc))
    except TimeoutError:
        return _fail("timed out waiting for Kafka to answer")
    except OSError as exc:
        return _fail(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc))
    except KeyboardInterrupt:
        return 130


def _fail(message: str) -> int:
    print(f"crypton: error: {message}", file=sys.stderr, flush=True)
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
