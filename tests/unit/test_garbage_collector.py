"""The server's collector settings: fewer young collections, startup objects frozen."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from services.server import (
    GC_OLDER_THRESHOLDS,
    GC_YOUNG_THRESHOLD,
    SERVING_GC_YOUNG_THRESHOLD,
    tune_garbage_collector,
)


@pytest.fixture
def restored_collector() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored_collector")
def test_fewer_collections_and_none_of_what_lives_from_startup() -> None:
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    tune_garbage_collector()
    assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *GC_OLDER_THRESHOLDS)
    assert GC_YOUNG_THRESHOLD > 700  # CPython's default, which cost a fifth of appends
    assert gc.get_freeze_count() > 0  # what was alive is out of every collection


@pytest.mark.usefixtures("restored_collector")
def test_a_server_collects_young_objects_more_often_than_a_projector() -> None:
    """gRPC leaves a few objects in cycles per call: collected in smaller, shorter
    pauses than a projector's, whose batches reference counting frees."""
    tune_garbage_collector(SERVING_GC_YOUNG_THRESHOLD)
    assert gc.get_threshold() == (SERVING_GC_YOUNG_THRESHOLD, *GC_OLDER_THRESHOLDS)
    assert 700 < SERVING_GC_YOUNG_THRESHOLD < GC_YOUNG_THRESHOLD
