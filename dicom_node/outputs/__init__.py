"""What goes back to PACS: DICOM objects built from a SeriesResult and its source series.

Entry point: :func:`build_outputs`. One writer module per output kind, each named after the kind
(``sr``, ``sc``, ``seg``, ``kos``); :mod:`.render` draws the heatmap overlay (also used as PNG by
the admin preview); :mod:`.common` holds what they share (options, source series, UIDs).

Every object is deterministic: its UIDs derive from the source series UID, the model version and
the output kind, and with ``OutputOptions.created`` set (the job's creation time) the bytes are
identical too.

Multi-frame sources (one Enhanced CT instance, ``SourceSeries.frame_numbers``): the SR and KOS
reference the instance with Referenced Frame Number, the SEG's frames derive from the source
frames, and there is one SC per shown frame (Source Image Sequence with the frame number). A
series made of several multi-frame instances is refused for the SEG. Not for clinical use.
"""

from __future__ import annotations

import datetime
from typing import Callable, Iterable

from pydicom.dataset import Dataset

from dicom_node.outputs.common import BuildContext, OutputOptions, SourceSeries, resolve_slices
from dicom_node.outputs.render import label_lines, overlay_png, preview_png, render_overlay
from dicom_node.validation import OUTPUT_KINDS, check_output_kinds, require
from model.contract.result import SeriesResult

__all__ = [
    "OutputOptions",
    "SourceSeries",
    "build_outputs",
    "label_lines",
    "overlay_png",
    "preview_png",
    "render_overlay",
]


def _writers() -> dict[str, Callable[[BuildContext], list[Dataset]]]:
    from dicom_node.outputs.kos import build_kos
    from dicom_node.outputs.sc import build_sc
    from dicom_node.outputs.seg import build_seg
    from dicom_node.outputs.sr import build_sr

    return {
        "sr": lambda ctx: [build_sr(ctx)],
        "sc": build_sc,
        "seg": build_seg,
        "kos": build_kos,
    }


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
    ctx = BuildContext(result=result, sources=sources, slices=resolve_slices(result, sources), options=options, created=created)
    writers = _writers()
    return {kind: writers[kind](ctx) for kind in kinds}
