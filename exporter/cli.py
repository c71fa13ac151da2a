"""Command line in node_exporter's style: `--web.listen-address`, `--path.sysfs`, ..."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import gc
import math
import os
import resource
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import NoReturn

from exporter import __version__, carbon, intensity, logs
from exporter.config import COMPONENTS, CarbonSettings, ConfigError, Settings, load_file_config
from exporter.reading import Kubernetes, read_cpu_model
from exporter.sampler import Sampler
from exporter.server import (
    ExporterState,
    ServerLimits,
    parse_listen_address,
    serve,
    stall_threshold,
)
from exporter.sources import registry
from exporter.sources.base import EnergySource, Probed, SourceContext, Status
from exporter.watchdog import PROBE_TIMEOUT_SECONDS, call_within, read_timeout_for
from exporter.webconfig import load_web_config

DEFAULT_LISTEN_ADDRESS = ":9835"
"""Not node_exporter's 9100, dcgm-exporter's 9400, nor Kepler's 9102 or 28282."""

COLLECTORS = {
    **{spec.flag: spec.help for spec in registry.SOURCES},
    "kubernetes": "pods of this node from the Kubernetes API, CPU time from cgroups",
}
"""Every `--[no-]collector.<name>` flag: the energy sources of the registry, then the pods."""

log = logs.get("main")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line, exit 2, as for a bad config file."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _seconds(low: float, high: float) -> Callable[[str], float]:
    """An argparse type: seconds between `low` and `high`, fractions allowed."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text!r}") from None
        if not math.isfinite(value) or not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"expected seconds between {low:g} and {high:g}, got {text!r}")
        return value

    return parse


_interval = _seconds(0.05, 3600)
_header_timeout = _seconds(0.05, 600)


def _max_connections(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a number between 1 and 65535, got {text!r}")
    return value


def _listen_address(text: str) -> str:
    try:
        parse_listen_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="footprint-exporter",
                description="Energy and CO2e of a Kubernetes node's workloads, for Prometheus.",
                epilog="commands:\n  report    a life-cycle table per model, training run, "
                       "namespace or team (pod label) from\n            Prometheus: "
                       "footprint-exporter report --help (docs/report.md)",
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--web.listen-address", dest="listen_address", type=_listen_address,
                   default=DEFAULT_LISTEN_ADDRESS,
                   help=f"address to serve metrics on (default {DEFAULT_LISTEN_ADDRESS})")
    p.add_argument("--web.telemetry-path", dest="telemetry_path", default="/metrics",
                   help="path under which to expose metrics (default /metrics)")
    p.add_argument("--path.sysfs", dest="sysfs", type=Path, default=Path("/sys"),
                   help="sysfs mount point (default /sys)")
    p.add_argument("--path.procfs", dest="procfs", type=Path, default=Path("/proc"),
                   help="procfs mount point (default /proc)")
    p.add_argument("--collector.interval", dest="interval", type=_interval, default=5.0,
                   help="seconds between ticks; fractions allowed (default 5)")
    p.add_argument("--config.file", dest="config_file", type=Path, default=None,
                   help="YAML config file (docs/configuration.md); default: built-in defaults")
    p.add_argument("--web.config.file", dest="web_config_file", type=Path, default=None,
                   help="exporter-toolkit web config: TLS, basic auth, headers "
                        "(docs/web-config.md); default: plain HTTP")
    p.add_argument("--web.max-connections", dest="max_connections", type=_max_connections,
                   default=ServerLimits.max_connections,
                   help="open connections at once, counted from their accept; at the cap a "
                        "new one closes the longest-idle one, and only when none is idle is "
                        "it answered 503 (default "
                        f"{ServerLimits.max_connections}; docs/web-config.md)")
    p.add_argument("--web.read-header-timeout", dest="read_header_timeout",
                   type=_header_timeout, default=ServerLimits.read_header_timeout,
                   help="seconds a connection has to send its request headers (with TLS, "
                        "as long again for the handshake; default "
                        f"{ServerLimits.read_header_timeout:g})")
    p.add_argument("--log.level", dest="log_level", choices=logs.LEVELS, default="info",
                   help="only log messages at this level or above (default info)")
    p.add_argument("--log.format", dest="log_format", choices=logs.FORMATS, default="logfmt",
                   help="log lines as logfmt or one JSON object each (default logfmt)")
    for name, what in COLLECTORS.items():
        p.add_argument(f"--collector.{name}", dest=f"collector_{name}", default=True,
                       action=argparse.BooleanOptionalAction,
                       help=f"{what} (default enabled)")
    p.add_argument("--version", action="version", version=f"footprint-exporter {__version__}")
    return p


def parse_settings(argv: Sequence[str] | None = None) -> Settings:
    """Flags and `--config.file` as one Settings; ConfigError names a bad key."""
    args = build_parser().parse_args(argv)
    if not args.telemetry_path.startswith("/"):
        raise ConfigError(f"--web.telemetry-path: expected a path starting with '/', "
                          f"got {args.telemetry_path!r}")
    return Settings(
        listen_address=args.listen_address,
        telemetry_path=args.telemetry_path,
        sysfs=args.sysfs,
        procfs=args.procfs,
        interval_seconds=args.interval,
        collectors={name: getattr(args, f"collector_{name}") for name in COLLECTORS},
        node_name=os.environ.get("NODE_NAME") or socket.gethostname(),
        log_level=args.log_level,
        log_format=args.log_format,
        config_file=args.config_file,
        file=load_file_config(args.config_file),
        web_config_file=args.web_config_file,
        max_connections=args.max_connections,
        read_header_timeout_seconds=args.read_header_timeout,
    )


def _log_status(name: str, status: Status) -> None:
    if status.enabled:
        log.info(f"source {name}: on, {status.detail}")
    elif status.present:
        log.warning(f"source {name}: off, {status.detail}")
    else:
        log.info(f"source {name}: off, {status.detail}")


def probe(name: str, source: EnergySource, timeout_seconds: float) -> Status:
    """The source's probe, bounded like its reads (exporter.watchdog): a hung driver or a FIFO
    where a sysfs file should be leaves the source off instead of hanging the start-up."""
    outcome = call_within(name, source.probe, timeout_seconds)
    if outcome.hung:
        return Status(False, f"its probe did not return within {timeout_seconds:g} s (a hung "
                             "driver, or a FIFO or device where a sysfs file should be): off "
                             "until the exporter restarts", present=True)
    if outcome.error is not None:
        raise outcome.error
    assert outcome.value is not None
    return outcome.value


def build_sampler(settings: Settings, *, process_metrics: bool = True,
                  clock: Callable[[], float] = time.monotonic,
                  timer: Callable[[], float] = time.perf_counter,
                  nvml_module: ModuleType | None = None,
                  probe_timeout_seconds: float = PROBE_TIMEOUT_SECONDS) -> Sampler:
    """Make and probe each source of the registry once, in its order; each owns the
    components it reports that no source before it took (exporter/sources/registry.py). A
    probe that does not return within `probe_timeout_seconds` leaves its source off."""
    probed: list[Probed] = []
    uncovered = frozenset(COMPONENTS)
    for spec in registry.SOURCES:
        source = spec.create(SourceContext(
            sysfs=settings.sysfs, procfs=settings.procfs,
            settings=settings.file.sources.get(spec.flag), uncovered=uncovered,
            nvml_module=nvml_module))  # tests hand in a fake NVML
        if not settings.collectors[spec.flag]:
            status = Status(False, f"disabled by --no-collector.{spec.flag}", present=False)
        else:
            status = probe(spec.label, source, probe_timeout_seconds)
            if status.enabled:
                owned = status.components & spec.components & uncovered
                if owned != status.components:
                    taken = ", ".join(sorted(status.components - owned))
                    status = dataclasses.replace(
                        status, enabled=bool(owned), components=owned,
                        detail=f"{status.detail}; {taken} left to the source before it")
                uncovered -= owned
        probed.append(Probed(spec.label, source, status))
    for p in probed:
        _log_status(p.name, p.status)
    statuses = [p.status for p in probed]
    covered = frozenset().union(*(s.components for s in statuses if s.enabled))
    if not covered:
        log.warning("no energy source is on: node energy stays 0 until one is enabled")
    gpus_on = any(s.enabled and "gpu" in s.components for s in statuses)
    kubernetes = (connect_kubernetes(settings, gpus=gpus_on)
                  if settings.collectors["kubernetes"] else None)
    chain = build_intensity(settings.file.carbon)
    current = chain.current()
    live = f", live from {chain.live.name} for {chain.live.zone}" if chain.live else ""
    log.info(f"grid intensity {current.grams_per_kwh:g} gCO2e/kWh for zone {current.zone} "
             f"({current.provider}){live}")
    return Sampler.assemble(sources=probed, intensity=chain,
                            attribution=settings.file.attribution, node=settings.node_name,
                            cpu_model=read_cpu_model(settings.procfs), kubernetes=kubernetes,
                            embodied=settings.file.embodied, pue=settings.file.pue,
                            water=settings.file.water,
                            process_metrics=process_metrics, clock=clock, timer=timer,
                            read_timeout_seconds=read_timeout_for(settings.interval_seconds))


def build_intensity(settings: CarbonSettings) -> intensity.FallbackChain:
    """Live provider (if configured) -> static -> world average; ConfigError for a bad secret."""
    zone = settings.zone or "unknown"
    static = (carbon.Intensity(settings.intensity_grams_per_kwh, zone, "static")
              if settings.intensity_grams_per_kwh is not None else None)
    live: intensity.LiveSource | None = None
    if settings.provider == "electricitymaps":
        em = settings.electricitymaps
        live = intensity.ElectricityMaps(
            zone=settings.zone, base_url=em.base_url, timeout_seconds=em.timeout_seconds,
            refresh_seconds=em.refresh_seconds, forecast=True,
            token=intensity.Secret.load(file=em.token_file, env=em.token_env,
                                        key="carbon.electricitymaps.token_file"))
    elif settings.provider == "watttime":
        wt = settings.watttime
        live = intensity.WattTime(
            region=wt.region, username=wt.username, base_url=wt.base_url,
            timeout_seconds=wt.timeout_seconds, refresh_seconds=wt.refresh_seconds,
            forecast=True,
            password=intensity.Secret.load(file=wt.password_file, env=wt.password_env,
                                           key="carbon.watttime.password_file"))
    return intensity.FallbackChain(live, static, intensity.world_average(zone),
                                   max_age_seconds=settings.max_age_seconds,
                                   zone=settings.zone)


def connect_kubernetes(settings: Settings, *, gpus: bool) -> Kubernetes | None:
    """The pod watch for this node (and, with GPUs, the kubelet's device allocations), or None
    (logged once) when no cluster is configured."""
    from exporter.kube.client import connect
    from exporter.kube.pods import PodWatcher, slim_pod
    from exporter.metrics import CHARGEBACK_ENERGY, CONTAINER_INFO
    from exporter.podlabels import PodLabelAllowlist, label_name
    from exporter.usage.cgroups import CgroupReader
    from exporter.workloads import WorkloadTracker

    k = settings.file.kubernetes
    cluster = connect(Path(k.kubeconfig) if k.kubeconfig else None)
    if cluster.api is None:
        log.info(f"source kubernetes: off, {cluster.detail}")
        return None
    if not os.environ.get("NODE_NAME"):
        log.warning(f"NODE_NAME is not set: watching pods of node {settings.node_name!r} (the "
                    "host name); set NODE_NAME from the downward API (spec.nodeName)")
    cgroups = CgroupReader(settings.sysfs)
    log.info(f"source kubernetes: on, {cluster.detail}, pods of node {settings.node_name}; "
             f"container CPU time from {cgroups.describe()}")
    rules = settings.file.models.effective_rules
    # published on footprint_container_info; the charged ones too (exporter.chargeback)
    labels = PodLabelAllowlist((*k.pod_label_allowlist, *k.chargeback_labels))
    if labels:
        log.info(f"pod labels {', '.join(labels.patterns)} published on "
                 f"{CONTAINER_INFO.name} as label_<key> (docs/chargeback.md)")
    charged = tuple(dict.fromkeys(map(label_name, k.chargeback_labels)))
    if charged:
        log.info(f"pod labels {', '.join(k.chargeback_labels)} charged per value on "
                 f"{CHARGEBACK_ENERGY.name} and the other chargeback families")
    watcher = PodWatcher(cluster.api, settings.node_name,
                         slim=functools.partial(slim_pod, rules=rules, labels=labels),
                         watch_timeout_seconds=k.watch_timeout_seconds,
                         backoff_max_seconds=k.backoff_max_seconds)
    tracker = WorkloadTracker(procfs=settings.procfs, cgroups=cgroups, rules=rules,
                              labels=labels)
    podresources = slices = None
    if gpus:
        from exporter.kube.podresources import PodResourcesClient

        podresources = PodResourcesClient(Path(k.pod_resources_socket),
                                          resource_prefixes=k.gpu_resources,
                                          dra_drivers=k.dra_drivers)
        log.info(f"source podresources: on, {podresources.describe()}")
    if gpus and k.dra_drivers:
        from exporter.kube.slices import SliceWatcher

        slices = SliceWatcher(cluster.resource_api, settings.node_name, k.dra_drivers,
                              watch_timeout_seconds=k.watch_timeout_seconds,
                              backoff_max_seconds=k.backoff_max_seconds)
        log.info(f"source resourceslices: on, DRA devices of {', '.join(k.dra_drivers)} on "
                 f"node {settings.node_name} resolved by their uuid attribute "
                 "(resource.k8s.io/v1, Kubernetes 1.34+)")
    elif gpus:
        log.info("source resourceslices: off (kubernetes.dra_drivers is empty): GPUs claimed "
                 "through DRA stay unattributed")
    return Kubernetes(pods=watcher, tracker=tracker, grace_seconds=k.grace_period_seconds,
                      podresources=podresources, slices=slices,
                      chargeback_labels=charged)


def settle_memory() -> None:
    """Once start-up is done: move every object made so far (the imported modules, the
    kubernetes and gRPC clients, ~70,000 objects) out of the cyclic collector's sight. A full
    collection otherwise walks them all, ~25 ms on a 2-core VM, inside whichever tick it lands
    in (docs/performance.md). They live as long as the process anyway."""
    gc.collect()
    gc.freeze()
    # A tick makes and drops tens of thousands of small containers; with the default 700,
    # the young generation is collected dozens of times a tick, scanning objects that die
    # by reference counting anyway. 10,000 leaves most of them unscanned.
    gc.set_threshold(10_000, 10, 10)


def raise_open_file_limit() -> None:
    """The soft RLIMIT_NOFILE up to the hard one, as the Go runtime does for node_exporter and
    dcgm-exporter since Go 1.19: a container runtime's soft limit of 1,024 (containerd 2,
    Docker 25) would otherwise cap the cpu.stat files kept open (exporter.usage.cgroups)."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard != resource.RLIM_INFINITY and soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError) as exc:  # a seccomp or a limit the kernel refuses: keep it
        log.info(f"open-file limit left as it is: {exc}")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["report"]:
        from exporter import report  # a life-cycle table from Prometheus (docs/report.md)

        return report.main(args[1:])
    try:
        settings = parse_settings(args)
        web_config = load_web_config(settings.web_config_file)
    except ConfigError as exc:
        print(f"footprint-exporter: error: {exc}", file=sys.stderr)
        return 2
    logs.setup(settings.log_level, settings.log_format)
    raise_open_file_limit()
    log.info(f"starting footprint-exporter {__version__} on node {settings.node_name}, "
             f"tick every {settings.interval_seconds:g} s")
    if settings.web_config_file is not None:
        log.info(f"web config {settings.web_config_file}: {web_config.describe()}")
    try:
        sampler = build_sampler(settings)
    except ConfigError as exc:
        print(f"footprint-exporter: error: {exc}", file=sys.stderr)
        return 2
    state = ExporterState(sampler=sampler, telemetry_path=settings.telemetry_path)
    sampler.start()
    settle_memory()
    try:
        return asyncio.run(serve(state, listen_address=settings.listen_address,
                                 interval_seconds=settings.interval_seconds,
                                 ssl_context=web_config.rotating_tls(),
                                 middlewares=web_config.middlewares(),
                                 limits=ServerLimits(
                                     max_connections=settings.max_connections,
                                     read_header_timeout=settings.read_header_timeout_seconds),
                                 stall_seconds=stall_threshold(settings.interval_seconds)))
    finally:
        sampler.close()
