"""The three kinds of configuration object an admin edits (local AEs, allowed sources, result
destinations), described once for the REST API and the pages.

Everything a kind does is :mod:`dicom_node.configuration`'s: its input schemas (the same
validators as the command line), its add/update functions, its serialiser. This module only
names them and adds the output schema for the OpenAPI document.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from dicom_node import configuration as c
from dicom_node.db.models import Destination, LocalAE, Source
from dicom_node.settings import Settings


class LocalAEOut(c.LocalAEIn):
    model_config = ConfigDict(extra="forbid")

    id: int


class SourceOut(c.SourceIn):
    model_config = ConfigDict(extra="forbid")

    id: int


class DestinationOut(c.DestinationIn):
    model_config = ConfigDict(extra="forbid")

    id: int
    # Written, never read back.
    password: None = Field(default=None, exclude=True)
    token: None = Field(default=None, exclude=True)


@dataclass(frozen=True)
class ConfigKind:
    """One kind of configuration object and the functions that handle it."""

    slug: str  # in URLs: /api/<slug>, /<slug>
    name: str  # audit target_type
    label: str  # one, for people
    plural: str
    model: type[Any]
    create_schema: type[BaseModel]
    patch_schema: type[BaseModel]
    out_schema: type[BaseModel]
    # (session, parsed input, the node's settings) -> the new row
    add: Callable[[Session, Any, Settings], Any]
    update: Callable[[Session, Any, Any], Any]
    to_dict: Callable[[Any], dict[str, Any]]
    # What a new item's form shows beyond the create schema's defaults (values the settings decide).
    form_defaults: Callable[[Settings], dict[str, Any]] = lambda settings: {}

    @property
    def heading(self) -> str:
        """The label at the start of a sentence ("Local AE", not "Local ae")."""
        return self.label[:1].upper() + self.label[1:]


LOCAL_AES = ConfigKind(
    slug="local-aes",
    name="local_ae",
    label="local AE",
    plural="Local AE titles",
    model=LocalAE,
    create_schema=c.LocalAEIn,
    patch_schema=c.LocalAEPatch,
    out_schema=LocalAEOut,
    add=lambda s, data, settings: c.add_local_ae(s, data, settings.completion),
    update=c.update_local_ae,
    to_dict=c.local_ae_dict,
    form_defaults=lambda settings: {
        "quiet_seconds": settings.completion.default_quiet_seconds,
        "max_wait_seconds": settings.completion.default_max_wait_seconds,
    },
)

SOURCES = ConfigKind(
    slug="sources",
    name="source",
    label="source",
    plural="Allowed sources",
    model=Source,
    create_schema=c.SourceIn,
    patch_schema=c.SourcePatch,
    out_schema=SourceOut,
    add=lambda s, data, settings: c.add_source(s, data),
    update=c.update_source,
    to_dict=c.source_dict,
)

DESTINATIONS = ConfigKind(
    slug="destinations",
    name="destination",
    label="destination",
    plural="Destinations",
    model=Destination,
    create_schema=c.DestinationIn,
    patch_schema=c.DestinationPatch,
    out_schema=DestinationOut,
    add=lambda s, data, settings: c.add_destination(s, data, settings.export),
    update=c.update_destination,
    to_dict=c.destination_dict,
    form_defaults=lambda settings: {"outputs": list(settings.export.default_outputs)},
)

KINDS: tuple[ConfigKind, ...] = (LOCAL_AES, SOURCES, DESTINATIONS)
