"""Building the outputs of one analysed series: every requested kind's writer over one shared
:class:`~dicom_node.outputs.common.BuildContext` (one time stamp, one set of derived UIDs)."""

from __future__ import annotations

import datetime
from typing import Callable, Iterable

from pydicom.dataset import Dataset

from dicom_node.outputs.common import BuildContext, OutputOptions, SourceSeries, resolve_slices
from dicom_node.outputs.kinds import OUTPUT_KINDS
from dicom_node.outputs.kos import build_kos
from dicom_node.outputs.pm import build_pm
from dicom_node.outputs.sc import build_sc
from dicom_node.outputs.seg import build_seg
from dicom_node.outputs.sr import build_sr
from dicom_node.validation import check_output_kinds, require
from model.contract.result import SeriesResult

Writer = Callable[[BuildContext], list[Dataset]]

# One writer per kind of dicom_node.outputs.kinds.
WRITERS: dict[str, Writer] = {
    "sr": lambda ctx: [build_sr(ctx)],
    "sc": build_sc,
    "seg": build_seg,
    "kos": build_kos,
    "pm": build_pm,
}
if set(WRITERS) != set(OUTPUT_KINDS):
    raise RuntimeError(f"output kinds {sorted(OUTPUT_KINDS)} and writers {sorted(WRITERS)} differ")


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
    return {kind: WRITERS[kind](ctx) for kind in kinds}
