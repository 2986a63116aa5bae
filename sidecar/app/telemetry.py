"""Wiring the telemetry pipeline (sidecar.telemetry) into `fader serve` from its settings."""

from __future__ import annotations

import logging

from sidecar.app.errors import StartupError
from sidecar.config import Settings, collector_target, sidecar_id
from sidecar.telemetry.impressions import Mode
from sidecar.telemetry.pipeline import Pipeline, PipelineSettings
from sidecar.telemetry.uploader import Uploader

log = logging.getLogger(__name__)

SPOOL_SUBDIR = "spool"
UPLOAD_TIMEOUT = 10.0


def build_pipeline(settings: Settings) -> Pipeline | None:
    """The pipeline, or None (with a warning) when there is nowhere to upload to."""
    try:
        target = collector_target(settings)
    except OSError as exc:
        raise StartupError(f"cannot read {exc.filename}: {exc.strerror}") from None
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
    address, security = target
    return Pipeline(pipeline_settings, Uploader(address, UPLOAD_TIMEOUT, security))
