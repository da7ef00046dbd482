"""Resumable teacher collection into a directory of checksummed chunks, and reading it back."""
from olss_jax._src.store import (
    CollectInfo,
    ConfigMismatchError,
    StoreProgress,
    collect_to_directory,
    load_store,
    read_manifest,
    stats_from_store,
)
from olss_jax._src.shipped_models import collect_embedded_to_directory
from olss_jax._src.store_model import model_record, schedule_metadata, store_denoiser

__all__ = ["CollectInfo", "ConfigMismatchError", "StoreProgress", "collect_to_directory",
           "load_store", "read_manifest", "stats_from_store", "store_denoiser",
           "collect_embedded_to_directory", "model_record", "schedule_metadata"]
