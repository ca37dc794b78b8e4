"""Pages for local AEs, sources and destinations: list, add, change (with the item's audit
history), delete after a confirmation, and the C-ECHO test of a destination.

Forms are validated by the kind's schema from dicom_node.configuration; every error is shown at
its field. Creating and changing are one path: the full form is checked with the create schema,
then applied (as a patch, for a change) by the configuration functions, with the audit hook on.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import RedirectResponse
from sqlalchemy import select
from starlette.datastructures import FormData
from starlette.responses import Response

from dicom_node.admin import audit
from dicom_node.admin.api.config import echo_saved_destination
from dicom_node.admin.config_kinds import DESTINATIONS, KINDS, LOCAL_AES, SOURCES, ConfigKind
from dicom_node.admin.deps import admin, client_addr, ctx, form, principal, render
from dicom_node.admin.health import check_listeners
from dicom_node.admin.pages.forms import GENERAL, FormField, form_to_data, shown_values, validate
from dicom_node.db.models import Destination
from dicom_node.errors import Refused
from dicom_node.outputs.kinds import OUTPUT_KINDS
from dicom_node.settings import Settings
from dicom_node.validation import DESTINATION_KINDS, WEB_AUTHS

router = APIRouter()

TITLE_HELP = "1-16 characters, no backslash, no leading or trailing spaces"

FIELDS: dict[str, list[FormField]] = {
    LOCAL_AES.slug: [
        FormField("title", "AE title", help=TITLE_HELP),
        FormField("port", "Port", "number", help="TCP port this AE listens on (1-65535)"),
        FormField("enabled", "Enabled", "checkbox"),
        FormField(
            "quiet_seconds",
            "Quiet period (s)",
            "number",
            help="a series is complete after this long without a new image",
        ),
        FormField(
            "max_wait_seconds", "Maximum wait (s)", "number", help="a series is complete after this long, images or not"
        ),
        FormField(
            "keep_images_days",
            "Keep images (days)",
            "number",
            optional=True,
            help="once a series' analysis and exports are finished; empty: the node's retention.images_days",
        ),
        FormField("send_results_to", "Send results to", "choices", choices="destinations"),
        FormField("return_to_caller", "Also send results back to the calling AE (needs its return port)", "checkbox"),
        FormField("require_known_source", "Accept only allowed sources", "checkbox"),
        FormField("filters.modalities", "Rule: modalities", "csv", help="comma separated, e.g. CT"),
        FormField("filters.body_parts", "Rule: body parts", "csv", help="comma separated; empty: any"),
        FormField(
            "filters.series_description_pattern",
            "Rule: series description matches",
            optional=True,
            help="a regular expression; empty: any",
        ),
        FormField("filters.min_slices", "Rule: at least this many images", "number"),
        FormField(
            "filters.image_type_required", "Rule: image type must contain", "csv", help="comma separated, e.g. AXIAL"
        ),
        FormField(
            "filters.image_type_excluded",
            "Rule: image type must not contain",
            "csv",
            help="comma separated, e.g. LOCALIZER",
        ),
        FormField(
            "extra_sop_classes",
            "Extra storage SOP classes",
            "csv",
            help="UIDs accepted besides CT and Enhanced CT; * for all",
        ),
        FormField("description", "Description"),
    ],
    SOURCES.slug: [
        FormField("title", "Calling AE title", help=TITLE_HELP),
        FormField("host", "Host", optional=True, help="IP address or host name it must come from; empty: any host"),
        FormField(
            "port",
            "Return port",
            "number",
            optional=True,
            help="its own storage SCP port, for results sent back to it; empty: none",
        ),
        FormField("enabled", "Enabled", "checkbox"),
        FormField("description", "Description"),
    ],
    DESTINATIONS.slug: [
        FormField("title", "Called AE title", help=TITLE_HELP + "; a DICOMweb destination: its name"),
        FormField(
            "kind", "Kind", "select", choices="destination_kinds", help="dimse: C-STORE; dicomweb: STOW-RS over HTTP"
        ),
        FormField("host", "Host", optional=True, help="DIMSE: IP address or host name"),
        FormField("port", "Port", "number", optional=True, help="DIMSE: the storage SCP's port"),
        FormField("tls", "TLS (DIMSE)", "checkbox"),
        FormField(
            "url",
            "DICOMweb URL",
            optional=True,
            help="DICOMweb: the base URL, e.g. https://pacs.example.org/dicom-web (STOW-RS posts to URL/studies)",
        ),
        FormField("auth", "DICOMweb authentication", "select", choices="web_auths"),
        FormField("username", "DICOMweb user", help="basic authentication"),
        FormField("password", "DICOMweb password", "password", optional=True, help="basic; empty: keep the saved one"),
        FormField("token", "DICOMweb token", "password", optional=True, help="bearer; empty: keep the saved one"),
        FormField("verify_tls", "Verify the https server's certificate", "checkbox"),
        FormField(
            "ca_file", "CA file (PEM)", help="https: an absolute path of the CA(s) to trust; empty: the system's CAs"
        ),
        FormField("outputs", "Outputs it receives", "choices", choices="outputs"),
        FormField("enabled", "Enabled", "checkbox"),
        FormField("description", "Description"),
    ],
}

# Columns of each list page: (heading, key of the kind's dict).
COLUMNS: dict[str, list[tuple[str, str]]] = {
    LOCAL_AES.slug: [
        ("Port", "port"),
        ("Quiet (s)", "quiet_seconds"),
        ("Sends to", "send_results_to"),
        ("Only allowed sources", "require_known_source"),
    ],
    SOURCES.slug: [("Host", "host"), ("Return port", "port")],
    DESTINATIONS.slug: [
        ("Kind", "kind"),
        ("Host", "host"),
        ("Port", "port"),
        ("TLS", "tls"),
        ("URL", "url"),
        ("Outputs", "outputs"),
    ],
}


def _choices(request: Request) -> dict[str, list[str]]:
    with ctx(request).db.session() as s:
        destinations = [d for d in s.scalars(select(Destination.title).order_by(Destination.title))]
    return {
        "destinations": destinations,
        "outputs": list(OUTPUT_KINDS),
        "destination_kinds": list(DESTINATION_KINDS),
        "web_auths": list(WEB_AUTHS),
    }


def _defaults(kind: ConfigKind, settings: Settings) -> dict[str, Any]:
    """A new item's form: the create schema's defaults (required fields empty), and the values
    the settings decide (a local AE's quiet period and maximum wait)."""
    data: dict[str, Any] = {}
    for name, info in kind.create_schema.model_fields.items():
        if info.is_required():
            continue
        default = info.get_default(call_default_factory=True)
        data[name] = default.model_dump() if hasattr(default, "model_dump") else default
    data.update(kind.form_defaults(settings))
    return data


def _page(
    request: Request,
    kind: ConfigKind,
    *,
    item: dict[str, Any] | None,
    values: dict[str, Any],
    errors: dict[str, str] | None = None,
    status_code: int = 200,
    echo: dict[str, Any] | None = None,
) -> Response:
    history: list[dict[str, Any]] = []
    if item is not None:
        with ctx(request).db.session() as s:
            history = audit.entries(s, target_type=kind.name, target_id=str(item["id"]), limit=20)
    return render(
        request,
        "config_form.html",
        {
            "kind": kind,
            "kinds": KINDS,
            "item": item,
            "fields": FIELDS[kind.slug],
            "values": values,
            "errors": errors or {},
            "general_error": (errors or {}).get(GENERAL, ""),
            "choices": _choices(request),
            "history": history,
            "echo": echo,
        },
        status_code=status_code,
    )


def _load(request: Request, kind: ConfigKind, item_id: int) -> dict[str, Any]:
    with ctx(request).db.session() as s:
        row = s.get(kind.model, item_id)
        if row is None:
            raise HTTPException(404, f"no {kind.label} with id {item_id}")
        return kind.to_dict(row)


def _list(request: Request, kind: ConfigKind) -> Response:
    context = ctx(request)
    with context.db.session() as s:
        items = [kind.to_dict(r) for r in s.scalars(select(kind.model).order_by(kind.model.title, kind.model.id))]
    listening: dict[int, bool | str] = {}
    if kind is LOCAL_AES:
        report = check_listeners(context.settings, context.db)
        listening = {a["port"]: True if a["ok"] else a.get("error", "") for a in report["aes"]}
    flash = request.session.pop("flash", "")
    return render(
        request,
        "config_list.html",
        {
            "kind": kind,
            "kinds": KINDS,
            "items": items,
            "columns": COLUMNS[kind.slug],
            "listening": listening,
            "flash": flash,
        },
    )


def _save(request: Request, kind: ConfigKind, data: FormData, item_id: int | None) -> Response:
    """Create (item_id None) or change an item from its form; errors go back to the form."""
    who = admin(request)
    fields = FIELDS[kind.slug]
    raw = form_to_data(fields, data)
    item = _load(request, kind, item_id) if item_id is not None else None
    parsed, errors = validate(kind.create_schema, fields, raw)
    if parsed is None:
        return _page(request, kind, item=item, values=shown_values(fields, raw), errors=errors, status_code=422)
    try:
        with ctx(request).db.session() as s:
            audit.watch(s, who, client_addr(request))
            if item_id is None:
                row = kind.add(s, parsed, ctx(request).settings)
            else:
                row = s.get(kind.model, item_id)
                if row is None:
                    raise HTTPException(404, f"no {kind.label} with id {item_id}")
                row = kind.update(s, row, kind.patch_schema.model_validate(parsed.model_dump()))
            title = row.title
    except Refused as exc:
        where = exc.field if exc.field is not None and any(f.name == exc.field for f in fields) else GENERAL
        errors = {where: exc.reason}
        return _page(request, kind, item=item, values=shown_values(fields, raw), errors=errors, status_code=422)
    request.session["flash"] = f"{kind.heading} {title} {'added' if item_id is None else 'saved'}."
    return RedirectResponse(f"/{kind.slug}", status_code=303)


def _register(kind: ConfigKind) -> None:
    slug = kind.slug

    def list_page(request: Request) -> Response:
        principal(request)
        return _list(request, kind)

    def new_page(request: Request) -> Response:
        admin(request)
        fields = FIELDS[slug]
        return _page(request, kind, item=None, values=shown_values(fields, _defaults(kind, ctx(request).settings)))

    def create(request: Request, data: FormData = Depends(form)) -> Response:
        return _save(request, kind, data, None)

    def item_page(item_id: int, request: Request) -> Response:
        principal(request)
        item = _load(request, kind, item_id)
        return _page(request, kind, item=item, values=shown_values(FIELDS[slug], item))

    def update(item_id: int, request: Request, data: FormData = Depends(form)) -> Response:
        return _save(request, kind, data, item_id)

    def confirm_delete(item_id: int, request: Request) -> Response:
        admin(request)
        return render(
            request, "confirm_delete.html", {"kind": kind, "kinds": KINDS, "item": _load(request, kind, item_id)}
        )

    def delete(item_id: int, request: Request, data: FormData = Depends(form)) -> Response:
        who = admin(request)
        with ctx(request).db.session() as s:
            row = s.get(kind.model, item_id)
            if row is None:
                raise HTTPException(404, f"no {kind.label} with id {item_id}")
            title = row.title
            audit.watch(s, who, client_addr(request))
            s.delete(row)
        request.session["flash"] = f"{kind.heading} {title} removed."
        return RedirectResponse(f"/{slug}", status_code=303)

    router.add_api_route(f"/{slug}", list_page, methods=["GET"])
    router.add_api_route(f"/{slug}/new", new_page, methods=["GET"])
    router.add_api_route(f"/{slug}/new", create, methods=["POST"])
    router.add_api_route(f"/{slug}/{{item_id}}", item_page, methods=["GET"])
    router.add_api_route(f"/{slug}/{{item_id}}", update, methods=["POST"])
    router.add_api_route(f"/{slug}/{{item_id}}/delete", confirm_delete, methods=["GET"])
    router.add_api_route(f"/{slug}/{{item_id}}/delete", delete, methods=["POST"])


for _kind in KINDS:
    _register(_kind)


@router.post("/destinations/{item_id}/echo")
def echo(item_id: int, request: Request, data: FormData = Depends(form)) -> Response:
    """Test the destination as saved (C-ECHO; a DICOMweb one: a QIDO-RS search); show the answer
    on its page."""
    principal(request)
    item = _load(request, DESTINATIONS, item_id)
    result = echo_saved_destination(request, item_id)
    return _page(
        request, DESTINATIONS, item=item, values=shown_values(FIELDS[DESTINATIONS.slug], item), echo=result.to_json()
    )
