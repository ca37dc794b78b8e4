"""What goes back to PACS: DICOM objects built from a SeriesResult and its source series.

Entry point: :func:`dicom_node.outputs.build.build_outputs`. The kinds are listed once in
:mod:`.kinds` (how to add one is said there); one writer module per kind, each named after it
(``sr``, ``sc``, ``seg``, ``kos``); :mod:`.render` draws the heatmap overlay (also used as PNG by
the admin preview); :mod:`.common` holds what they share (options, source series, UIDs);
:mod:`.codes` the coded concepts.

Every object is deterministic: its UIDs derive from the source series UID, the model version and
the output kind, and with ``OutputOptions.created`` set (the job's creation time) the bytes are
identical too.

Multi-frame sources (one Enhanced CT instance, ``SourceSeries.frame_numbers``): the SR and KOS
reference the instance with Referenced Frame Number, the SEG's frames derive from the source
frames, and there is one SC per shown frame (Source Image Sequence with the frame number). A
series made of several multi-frame instances is refused for the SEG. Not for clinical use.
"""
