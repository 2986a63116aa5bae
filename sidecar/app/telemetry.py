"""Wiring the telemetry pipeline (sidecar.telemetry) into `fader serve` from its settings."""

from __future__ import annotations

import logging

from sidecar.config import Settings, sidecar_id
from sidecar.telemetry.impressions import Mode
from sidecar.telemetry.pipeline import Pipeline, PipelineSettings
from sidecar.telemetry.uploader import CollectorTarget, Uploader

log = logging.getLogger(__name__)

SPOOL_SUBDIR = "spool"
UPLOAD_TIMEOUT = 10.0


def collector_target(settings: Settings) -> CollectorTarget | None:
    """--collector with its own TLS and token, else the control plane with its own: the
    reference control plane hosts the collector, so one address is enough by default."""
    if settings.collector is not None:
        address, ca, token = (
            settings.collector,
            settings.collector_ca,
            settings.collector_token_file,
        )
    elif settings.control_plane is not None:
        address, ca, token = (
            settings.control_plane,
            settings.control_plane_ca,
            settings.control_plane_token_file,
        )
    else:
        return None
    return CollectorTarget(address, ca.read_bytes() if ca else None, token)


def build_pipeline(settings: Settings) -> Pipeline | None:
    """The pipeline, or None (with a warning) when there is nowhere to upload to."""
    target = collector_target(settings)
    if target is None:
        log.warning(
            "impressions and track events are not recorded: no --collector or --control-plane"
        )
        return None
    spool_dir = settings.spool_dir
    if spool_dir is None and settings.cache_dir is not None:
        spool_dir = settings.cache_dir / SPOOL_SUBDIR
    if spool_dir is None:
        log.warning(
            "no --spool-dir (or --cache-dir): telemetry that cannot be uploaded is kept in "
            "memory only, and dropped (counted) when memory is full or the process stops"
        )
    pipeline_settings = PipelineSettings(
        mode=Mode(settings.impressions_mode),
        sidecar_id=sidecar_id(settings),
        batch_records=settings.telemetry_batch_records,
        batch_bytes=settings.telemetry_batch_bytes,
        flush_interval=settings.telemetry_flush_interval,
        memory_bytes=settings.telemetry_memory_bytes,
        spool_dir=spool_dir,
        spool_bytes=settings.spool_max_bytes,
        observer_size=settings.impressions_observer_size,
    )
    return Pipeline(pipeline_settings, Uploader(target, UPLOAD_TIMEOUT))
