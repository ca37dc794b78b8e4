"""The output kinds: the one list that validation, the settings, the command line, the admin pages,
exports and the builder read.

Adding a kind (an RT Structure Set, say): write its writer module beside the others, named after
the kind (``dicom_node/outputs/<kind>.py``), with a function ``build_<kind>(ctx: BuildContext) ->
list[Dataset]`` (dicom_node.outputs.common holds what writers share), and add one
:class:`OutputKind` line below: dicom_node.outputs.build finds the writer by that rule. Destinations
may then name it in their ``outputs``; it is built for every job and sent to the destinations that
take it. One exception: the worker leaves the Parametric Map (``pm``) out of a series over
``worker.parametric_map_max_slices`` (dicom_node.outputs.pm.left_out); destinations that take it
then get the other kinds.

This module imports nothing heavy: the settings and validators read it at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OutputKind:
    name: str  # in settings, destinations' outputs, Job.outputs and the result folders
    title: str  # for people (admin pages, help)
    series_number: int  # the Series Number of its objects (OutputOptions.series_numbers overrides it)
    picture: bool = False  # its objects are the pictures the admin preview shows


KINDS: dict[str, OutputKind] = {
    kind.name: kind
    for kind in (
        OutputKind("sr", "Comprehensive 3D SR (TID 1500)", 9001),
        OutputKind("sc", "secondary-capture heatmap overlays", 9002, picture=True),
        OutputKind("seg", "segmentation of the suspected infection", 9003),
        OutputKind("kos", "key object selection of the key slices", 9004),
        OutputKind("pm", "parametric map of the heatmap (viewers fuse it on the CT)", 9005),
    )
}
OUTPUT_KINDS: tuple[str, ...] = tuple(KINDS)
# The kind whose objects the admin app shows as pictures.
PREVIEW_KIND: str = next(kind.name for kind in KINDS.values() if kind.picture)
