"""The ``driftline`` command.

::

    driftline up         the whole system: broker, Redis, worker, API and simulated sensors
    driftline reset      delete everything this deployment keeps in Redis (start clean)
    driftline worker     the stream worker (ingest + learn agents)
    driftline api        the HTTP API (predictions, models, health)
    driftline simulate   publish simulated sensor readings
    driftline replay     publish a CSV / JSON-lines file or a River dataset as events
    driftline backtest   run a file through the stream's code offline: metrics, drifts, promotions
    driftline mqtt-bridge  forward MQTT sensor topics into Kafka
    driftline models     the model registry: list | show | diff | promote | rollback
    driftline alerts     drift alerts: list | show | tail | ack
    driftline config     what the settings make the worker do (models, features, catalog)

Every command reads its settings from ``DRIFTLINE_*`` variables and ``.env``; flags override them.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from driftline.core.errors import DriftlineError
from driftline.running import STACK_FILE, last_stack_mode, running_stack
from driftline.settings import Settings, get_settings


def _settings(beside_stack: bool = True, **overrides: Any) -> Settings:
    """The settings, with the command's flags over them; beside a running ``driftline up``, its
    broker and Redis unless the environment names others."""
    values = {k: v for k, v in overrides.items() if v is not None}
    if beside_stack:
        _dev_beside_a_dev_stack()
    base = get_settings()
    if beside_stack:
        values = {**_running_stack_addresses(base), **values}
    return Settings(**{**base.model_dump(), **values}) if values else base


def _dev_beside_a_dev_stack() -> None:
    """A command run beside a ``driftline up`` in dev mode (``make run``), running or stopped,
    is in dev mode too, unless ``DRIFTLINE_ENV`` says otherwise: its snapshots are signed with the
    dev secret, and ``driftline models``, ``replay`` or ``reset`` (which the README says to run
    with the stack stopped) must not ask for secrets it does not have."""
    if "DRIFTLINE_ENV" in os.environ:
        return
    data_dir = Path(os.environ.get("DRIFTLINE_DATA_DIR") or ".driftline")
    stack = running_stack(data_dir)
    mode = stack.get("env") if stack is not None else last_stack_mode(data_dir)
    if mode == "dev":
        os.environ["DRIFTLINE_ENV"] = "dev"
        get_settings.cache_clear()


def _running_stack_addresses(base: Settings) -> dict[str, str]:
    unset = {"kafka_url", "redis_url"} - base.model_fields_set
    stack = running_stack(base.data_dir) if unset else None
    if stack is None:
        return {}
    found = {name: str(stack[name]) for name in sorted(unset) if stack.get(name)}
    if found:
        logging.getLogger("driftline").info(
            "using the running 'driftline up' (%s): %s", base.data_dir / STACK_FILE, ", ".join(found.values())
        )
    return found


def cmd_up(args: argparse.Namespace) -> int:
    from driftline.supervisor import dev_mode_unless_set, run_up

    dev_mode_unless_set()  # before the settings are read: `up` is the development stack
    settings = _settings(beside_stack=False, api_port=args.port, data_dir=args.data_dir)
    return run_up(settings, Path(settings.data_dir), simulate=not args.no_simulator)


def cmd_reset(args: argparse.Namespace) -> int:
    import redis

    from driftline.core.errors import ServiceUnavailable
    from driftline.core.urls import safe_url
    from driftline.state import read_state, reset_state, state_contents, where

    settings = _settings()
    place = where(settings)
    stack = running_stack(settings.data_dir)
    if stack is not None:
        raise DriftlineError(
            f"'driftline up' (pid {stack.get('pid')}) is running from "
            f"{settings.data_dir}: stop it first, then reset"
        )
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=5, socket_timeout=30)
    try:
        state = read_state(client, settings.namespace)
        if not state["keys"]:
            print(f"reset: nothing to remove in {place}")
            return 0
        print(f"{place} holds: {state_contents(state)}", file=sys.stderr)
        if not args.yes:
            if not sys.stdin.isatty():
                raise DriftlineError(
                    f"not deleting the state in {place} without confirmation: "
                    "pass --yes (stdin is not a terminal)"
                )
            answer = input(f"delete every key of {place}? [y/N] ")
            if answer.strip().lower() not in {"y", "yes"}:
                print("reset: nothing deleted", file=sys.stderr)
                return 1
        removed = reset_state(client, settings.namespace)
    except redis.RedisError as exc:
        raise ServiceUnavailable("Redis", safe_url(settings.redis_url), str(exc)) from exc
    finally:
        client.close()
    print(f"reset: removed {removed} key{'' if removed == 1 else 's'} of {place}")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from driftline.worker import run_worker

    settings = _settings()
    _require_kafka(settings)
    run_worker(settings, loglevel=args.loglevel)
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from driftline.api.main import create_app

    settings = _settings(api_host=args.host, api_port=args.port)
    settings.check_api_bind()  # the published development secrets never leave this machine
    # The app is built from these settings (flags and a running stack's addresses included),
    # not read again from the environment.
    if settings.api_workers == 1:
        uvicorn.run(
            create_app(settings), host=settings.api_host, port=settings.api_port, log_level=args.loglevel
        )
        return 0
    # Several processes: uvicorn starts each from the factory, which reads the settings from the
    # environment; these settings (flags and a running stack's addresses included) go there first.
    os.environ.update(settings.as_env())
    get_settings.cache_clear()
    uvicorn.run(
        "driftline.api.main:create_app",
        factory=True,
        workers=settings.api_workers,
        host=settings.api_host,
        port=settings.api_port,
        log_level=args.loglevel,
    )
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from driftline.simulator import run_simulator

    settings = _settings(
        sim_devices=args.devices, sim_rate=args.rate, sim_drift_after=args.drift_after, sim_seed=args.seed
    )
    _require_kafka(settings)
    try:
        run_simulator(settings, count=args.count, rate=settings.sim_rate)
    except KeyboardInterrupt:
        pass
    return 0


def replay_mapping(args: argparse.Namespace) -> Any:
    """The :class:`~driftline.replay.ColumnMapping` that ``driftline replay``'s flags describe."""
    from driftline.replay import ColumnMapping

    target = args.target_column or ("y" if args.source.startswith("river:") else None)
    return ColumnMapping(
        args.source,
        device_column=args.device_column,
        device=args.device,
        time_column=args.time_column,
        target_column=target,
        id_column=args.id_column,
        start=args.start,
        step=args.step,
    )


def cmd_replay(args: argparse.Namespace) -> int:
    from driftline.replay import replay

    if args.time_column and args.start is not None:
        raise DriftlineError(
            "--start sets the times of a file without a time column; "
            "with --time-column the file's own times are used"
        )
    settings = _settings()
    _require_kafka(settings)
    mapping = replay_mapping(args)
    sent = replay(settings, args.source, mapping, rate=args.rate, limit=args.limit, batch=args.batch)
    print(f"replay: {sent} events published to {settings.events_topic}", file=sys.stderr)
    return 0


def cmd_backtest(args: argparse.Namespace) -> int:
    from driftline.backtest import choose_specs, format_report, run_backtest, source_events, write_outputs
    from driftline.replay import Progress

    if args.time_column and args.start is not None:
        raise DriftlineError(
            "--start sets the times of a file without a time column; "
            "with --time-column the file's own times are used"
        )
    settings = _settings(beside_stack=False)  # no broker, no Redis
    specs = choose_specs(settings, args.model or (), args.spec or ())
    events, total = source_events(args.source, replay_mapping(args), args.limit)
    bar = Progress(total, "backtest")
    handled = 0

    def progress(done: int) -> None:
        nonlocal handled
        handled = done
        bar.update(done)

    # About a thousand points on the plot, whatever the length.
    every = max(1, (total or 100_000) // 1000)
    try:
        result = run_backtest(events, specs, settings, source=args.source, progress=progress, every=every)
    finally:
        bar.update(handled, force=True)  # the bar's last state, and its line ended
    print(format_report(result))
    json_path, png_path = write_outputs(result, Path(args.out) if args.out else settings.data_dir)
    print(f"\nwrote {json_path} and {png_path}")
    return 0


def cmd_mqtt_bridge(args: argparse.Namespace) -> int:
    import signal
    import threading

    from driftline.kafka import ensure_topics
    from driftline.mqtt_bridge import run_bridge

    settings = _settings(mqtt_url=args.mqtt_url, mqtt_client_id=args.client_id)
    _require_kafka(settings)
    ensure_topics(settings)  # before any record: auto-created topics would get the wrong partitions
    stop = threading.Event()
    # A supervisor's SIGTERM: forward and acknowledge what arrived, then leave the session.
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    # BridgeFailed (its MQTT loop ended, Kafka kept failing) exits non-zero, through main().
    run_bridge(
        settings, settings.mqtt_url, topics=tuple(args.topic or ["sensors/#"]), qos=args.qos, stop=stop
    )
    return 0


def cmd_alerts(args: argparse.Namespace) -> int:
    from driftline import model_commands

    settings = _settings()
    if args.action == "list":
        print(model_commands.alerts_list(settings, args.model, args.limit, as_json=args.json))
    elif args.action == "tail":
        try:
            model_commands.alerts_tail(settings, args.model, write=lambda line: print(line, flush=True))
        except KeyboardInterrupt:
            pass
    elif args.action == "ack":
        print(model_commands.alerts_ack(settings, args.id, args.by))
    else:
        print(model_commands.alerts_show(settings, args.id))
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """Print what a worker would do with these settings (the lines it logs at startup)."""
    print("\n".join(_settings().describe()))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from driftline import model_commands

    settings = _settings()
    if args.action == "list":
        print(model_commands.models_list(settings))
    elif args.action == "show":
        print(model_commands.models_show(settings, args.name, as_json=args.json))
    elif args.action == "diff":
        print(model_commands.models_diff(settings, args.name, args.a, args.b))
    elif args.action == "promote":
        print(model_commands.models_promote(settings, args.name, args.version, args.to, args.reason))
    else:
        print(model_commands.models_rollback(settings, args.name, args.reason))
    return 0


def _replay_time(text: str) -> Any:
    from driftline.replay import parse_time

    try:
        return parse_time(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 time or epoch seconds: {text!r}") from None


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"a number of seconds above 0, not {text!r}")
    return value


def _add_mapping_arguments(parser: argparse.ArgumentParser) -> None:
    """How a file's columns make events: the same options as ``driftline replay``'s."""
    parser.add_argument("--device-column", help="column holding the device id")
    parser.add_argument("--device", default="replay", help="device id when there is no device column")
    parser.add_argument(
        "--time-column",
        help="column holding the event time (ISO or epoch seconds), "
        "kept as it is (default: rows --step seconds apart, the last one now)",
    )
    parser.add_argument(
        "--start",
        type=_replay_time,
        metavar="TIME",
        help="time of the first row when there is no time column (ISO-8601 or epoch "
        "seconds; default: so that the last row is now)",
    )
    parser.add_argument(
        "--step",
        type=_positive_seconds,
        default=1.0,
        metavar="SECONDS",
        help="seconds between rows when there is no time column (default: 1)",
    )
    parser.add_argument("--target-column", help="column holding the target (river datasets: y)")
    parser.add_argument("--id-column", help="column holding the event id (default: source + row number)")
    parser.add_argument("--limit", type=int, help="read at most this many rows")


def _require_kafka(settings: Settings) -> None:
    if not settings.kafka_url:
        raise DriftlineError(
            "DRIFTLINE_KAFKA_URL is not set: point it at a broker (e.g. kafka://127.0.0.1:9092), "
            "or run 'driftline up', which starts an embedded one"
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="driftline", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser(
        "up",
        help="run the whole system on this machine (embedded broker and Redis "
        "when none answers); Ctrl-C stops everything",
    )
    up.add_argument("--port", type=int, help="API port (default: DRIFTLINE_API_PORT or 8000)")
    up.add_argument(
        "--data-dir", help="where logs and runtime files go (default: DRIFTLINE_DATA_DIR or .driftline)"
    )
    up.add_argument("--no-simulator", action="store_true", help="do not publish simulated readings")
    up.set_defaults(func=cmd_up)

    reset = sub.add_parser(
        "reset",
        help="delete every Redis key of DRIFTLINE_NAMESPACE (models, device "
        "states, offsets, counters): the next run starts clean; stop the stack first",
    )
    reset.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    reset.set_defaults(func=cmd_reset)

    worker = sub.add_parser(
        "worker",
        help="run the stream worker: validate, featurize, learn, "
        "snapshot (needs DRIFTLINE_KAFKA_URL and Redis)",
    )
    worker.add_argument("--loglevel", default="info", choices=["debug", "info", "warn", "error"])
    worker.set_defaults(func=cmd_worker)

    api = sub.add_parser("api", help="serve predictions, models and health over HTTP")
    api.add_argument("--host", help="bind address (default: DRIFTLINE_API_HOST or 127.0.0.1)")
    api.add_argument("--port", type=int, help="port (default: DRIFTLINE_API_PORT or 8000)")
    api.add_argument("--loglevel", default="info", choices=["debug", "info", "warning", "error"])
    api.set_defaults(func=cmd_api)

    sim = sub.add_parser("simulate", help="publish simulated multi-sensor readings to Kafka")
    sim.add_argument("--count", type=int, help="events to send (default: until Ctrl-C)")
    sim.add_argument("--rate", type=float, help="events per second, all devices together")
    sim.add_argument("--devices", type=int, help="number of simulated devices")
    sim.add_argument("--drift-after", type=int, help="change the concept after this many events")
    sim.add_argument("--seed", type=int, help="random seed (same seed, same readings)")
    sim.set_defaults(func=cmd_simulate)

    rep = sub.add_parser(
        "replay", help="publish a CSV / JSON-lines file (or river:<Dataset>) as events, with a progress bar"
    )
    rep.add_argument("source", help="a .csv or .jsonl file, or river:<Dataset> (e.g. river:TrumpApproval)")
    rep.add_argument("--rate", type=float, help="events per second (default: as fast as possible)")
    rep.add_argument("--device-column", help="column holding the device id")
    rep.add_argument("--device", default="replay", help="device id when there is no device column")
    rep.add_argument(
        "--time-column",
        help="column holding the event time (ISO or epoch seconds), "
        "kept as it is (default: rows --step seconds apart, the last one now)",
    )
    rep.add_argument(
        "--start",
        type=_replay_time,
        metavar="TIME",
        help="time of the first row when there is no time column (ISO-8601 or epoch "
        "seconds; default: so that the last row is now)",
    )
    rep.add_argument(
        "--step",
        type=_positive_seconds,
        default=1.0,
        metavar="SECONDS",
        help="seconds between rows when there is no time column (default: 1)",
    )
    rep.add_argument("--target-column", help="column holding the target (river datasets: y)")
    rep.add_argument("--id-column", help="column holding the event id (default: source + row number)")
    rep.add_argument("--limit", type=int, help="publish at most this many rows")
    rep.add_argument(
        "--batch",
        type=int,
        default=1,
        help="send up to this many consecutive rows of a device as one message",
    )
    rep.set_defaults(func=cmd_replay)

    back = sub.add_parser(
        "backtest",
        help="run a CSV / JSON-lines file (or river:<Dataset>) through the stream's own cleaning, "
        "features, learning, drift detection and retraining, offline (no broker, no Redis)",
    )
    back.add_argument("source", help="a .csv or .jsonl file, or river:<Dataset> (e.g. river:Phishing)")
    back.add_argument(
        "--model",
        action="append",
        metavar="NAME",
        help="a configured model (DRIFTLINE_MODELS), repeatable (default: every configured model)",
    )
    back.add_argument(
        "--spec",
        action="append",
        metavar="JSON",
        help='a model spec, e.g. \'{"name": "m", "task": "classification", "estimator": '
        '"hoeffding_tree_classifier"}\' (or a JSON list of them), repeatable',
    )
    back.add_argument(
        "--out", metavar="DIR", help="where the JSON and PNG go (default: DRIFTLINE_DATA_DIR or .driftline)"
    )
    _add_mapping_arguments(back)
    back.set_defaults(func=cmd_backtest)

    bridge = sub.add_parser("mqtt-bridge", help="forward MQTT topics sensors/<device>[/<sensor>] to Kafka")
    bridge.add_argument("--mqtt-url", help="MQTT broker (default: DRIFTLINE_MQTT_URL, mqtt://127.0.0.1:1883)")
    bridge.add_argument("--topic", action="append", help="topic filter, repeatable (default: sensors/#)")
    bridge.add_argument(
        "--client-id",
        help="MQTT client id of the persistent session (default: DRIFTLINE_MQTT_CLIENT_ID, driftline-bridge)",
    )
    bridge.add_argument(
        "--qos",
        type=int,
        default=1,
        choices=[0, 1],
        help="1 (default): at least once, acknowledged once Kafka has it; 0: at most once",
    )
    bridge.set_defaults(func=cmd_mqtt_bridge)

    alerts = sub.add_parser("alerts", help="drift alerts: list, show, tail, ack")
    alert_actions = alerts.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = alert_actions.add_parser("list", help="the newest alerts, newest first")
    listing.add_argument("--model", help="one model's alerts only")
    listing.add_argument("--limit", type=int, default=20)
    listing.add_argument("--json", action="store_true", help="everything, as JSON")
    shown = alert_actions.add_parser("show", help="one alert, as JSON")
    shown.add_argument("id")
    tail = alert_actions.add_parser("tail", help="follow new alerts, one line each, until Ctrl-C")
    tail.add_argument("--model", help="one model's alerts only")
    ack = alert_actions.add_parser("ack", help="acknowledge an alert (who and when, in its record)")
    ack.add_argument("id")
    ack.add_argument("--by", help="who acknowledges (default: your user name)")
    alerts.set_defaults(func=cmd_alerts)

    config = sub.add_parser(
        "config",
        help="say what the settings make the worker do: each model's "
        "task, target, estimator and features, the features preset, the catalog",
    )
    config.set_defaults(func=cmd_config)

    models = sub.add_parser("models", help="the model registry: list, show, diff, promote, rollback")
    actions = models.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("list", help="every model: aliases, events learned, headline metric")
    show = actions.add_parser("show", help="one model's versions and audit log")
    show.add_argument("name")
    show.add_argument("--json", action="store_true", help="everything, as JSON")
    diff = actions.add_parser("diff", help="two versions side by side: parameters and metrics")
    diff.add_argument("name")
    diff.add_argument("a", help="a version number, or an alias: latest, champion, challenger")
    diff.add_argument("b", help="the version to compare it with (same forms)")
    promote = actions.add_parser("promote", help="pin the champion (or challenger) to a version")
    promote.add_argument("name")
    promote.add_argument("version", type=int, nargs="?", help="default: the latest")
    promote.add_argument("--to", default="champion", choices=["champion", "challenger"])
    promote.add_argument("--reason", default="", help="recorded in the audit log")
    rollback = actions.add_parser("rollback", help="return the champion to the one before")
    rollback.add_argument("name")
    rollback.add_argument("--reason", default="", help="recorded in the audit log")
    models.set_defaults(func=cmd_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)  # connection chatter, not news
    try:
        return int(args.func(args))
    except DriftlineError as exc:
        print(f"driftline: error: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:  # settings that cannot be read: say which and why, no traceback
        print(f"driftline: configuration error: {settings_errors(exc)}", file=sys.stderr)
        return 2


def settings_errors(exc: ValidationError) -> str:
    """A settings validation error as ``DRIFTLINE_X: reason`` lines."""
    lines = []
    for error in exc.errors():
        where = "DRIFTLINE_" + str(error["loc"][0]).upper() if error["loc"] else "settings"
        lines.append(f"\n  {where}: {error['msg'].removeprefix('Value error, ')}")
    return "".join(lines)


if __name__ == "__main__":
    sys.exit(main())
