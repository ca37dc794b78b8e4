"""Building the outputs of one analysed series: every requested kind's writer over one shared
:class:`~dicom_node.outputs.common.BuildContext` (one time stamp, one set of derived UIDs).

The writers are found by the registry's rule (dicom_node.outputs.kinds): the kind ``NAME`` is
written by ``build_NAME`` in ``dicom_node.outputs.NAME``; nothing here lists the kinds again.
"""

from __future__ import annotations

import datetime
import importlib
from typing import Callable, Iterable, cast

from pydicom.dataset import Dataset

from dicom_node.outputs.common import BuildContext, OutputOptions, SourceSeries, resolve_slices
from dicom_node.outputs.kinds import KINDS, OUTPUT_KINDS
from dicom_node.validation import check_output_kinds, require
from model.contract.result import SeriesResult

Writer = Callable[[BuildContext], list[Dataset]]


def writer(kind: str) -> Writer:
    """The writer of an output kind of the registry: ``build_<kind>`` of ``dicom_node.outputs.<kind>``."""
    name = KINDS[kind].name
    return cast(Writer, getattr(importlib.import_module(f"{__package__}.{name}"), f"build_{name}"))


def build_outputs(
    result: SeriesResult,
    sources: SourceSeries,
    *,
    kinds: Iterable[str] = OUTPUT_KINDS,
    options: OutputOptions | None = None,
) -> dict[str, list[Dataset]]:
    """Build the requested output kinds for one analysed series.

    Returns ``{kind: [datasets]}`` for every requested kind, in the order of ``kinds``. A list is
    empty when the kind has nothing to say for this result: no SC without a heatmap
    (``no_decision``) or, with ``sc_slices="key"``, without key slices; no SEG without suspected
    infection regions; no KOS without key slices. The SR is always built (a ``no_decision`` SR says
    so and why). Raises ValueError when the result and the source series do not match.
    """
    kinds = list(kinds)
    require("kinds", check_output_kinds, kinds)
    options = options or OutputOptions()
    # One time stamp for the whole build, to the second (the DA/TM/DT values written).
    created = (options.created or datetime.datetime.now()).replace(microsecond=0)
    ctx = BuildContext(
        result=result, sources=sources, slices=resolve_slices(result, sources), options=options, created=created
    )
    return {kind: writer(kind)(ctx) for kind in kinds}
