"""The machine registry API (admin): create, change, disable, delete, import, provision.

::

    POST   /api/resources/{orgId}/machines                      create (+ secret, once)
    PUT    /api/resources/{orgId}/machines/{chassisId}          change some fields
    DELETE /api/resources/{orgId}/machines/{chassisId}?data=keep|delete
    GET    /api/resources/{orgId}/machines/{chassisId}/data     how much is stored
    POST   /api/resources/{orgId}/machines/{chassisId}/provision  new secret + bundle
    POST   /api/resources/{orgId}/machines/import               CSV: per-row report

Reads need a viewer, writes an admin (:mod:`livedata.auth.policy`).  Creating or
provisioning a machine returns its new secret once with everything a technician
needs (:func:`livedata.provision.agent_bundle`), and every change that affects who
may connect rewrites the broker's files when configured
(:class:`livedata.provision.BrokerFiles`); the answer says how that went in
``broker``.  Every change is in the organisation's audit log.

Uploads (the CSV here, DBC files in :mod:`livedata.gateway.api`) come as
``multipart/form-data`` (one file), as the plain text (``text/csv``,
``text/plain``, ``application/octet-stream``) or in JSON; each is bounded
(:func:`livedata.gateway.uploads.upload_text`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from livedata.errors import InputError
from livedata.gateway.security import client_address, principal_of
from livedata.gateway.state import gateway_of
from livedata.gateway.uploads import json_body, upload_text
from livedata.metadata.registry import (
    MAX_GRACE_S,
    MAX_IMPORT_BYTES,
    MIN_GRACE_S,
    MachineSpec,
    Registry,
    machine_dict,
    org_dict,
    parse_csv,
    update_org,
)
from livedata.provision import agent_bundle, public_mqtt_url

router = APIRouter(prefix="/api", tags=["machines"])

CSV_EXAMPLE = "chassis,name,model,tags,location\nWL-0101,Loader 101,WL900,north;rental,Yard 3\n"


class MachineBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    chassisId: str = Field(min_length=1, max_length=64, examples=["WL-0101"])
    name: str = Field(min_length=1, max_length=200, examples=["Loader 101"])
    model: str = Field(min_length=1, max_length=64, examples=["WL900"])
    tags: list[str] = Field(default_factory=list, max_length=20, examples=[["north", "rental"]])
    location: str = Field("", max_length=200, examples=["Yard 3"])
    disabled: bool = False
    provision: bool = Field(
        True, description="issue the machine's secret now and return the provisioning bundle"
    )


class MachineChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, min_length=1, max_length=200)
    model: str | None = Field(None, min_length=1, max_length=64)
    tags: list[str] | None = Field(None, max_length=20)
    location: str | None = Field(None, max_length=200)
    disabled: bool | None = None


class CsvBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    csv: str = Field(max_length=MAX_IMPORT_BYTES, examples=[CSV_EXAMPLE])


async def _audit(request: Request, action: str, target: str, details: Any = None) -> None:
    p = principal_of(request)
    sec = gateway_of(request).security
    await sec.audit(p.org, p.username, action, target, client_address(request.scope), details)


async def _provision(request: Request, org: str, chassis: str) -> dict[str, Any]:
    gw = gateway_of(request)
    secret = await gw.security.accounts.set_device_secret(org, chassis)
    base = gw.settings.public_url or str(request.base_url)
    bundle = agent_bundle(org, chassis, secret, public_mqtt_url(gw.settings), base)
    bundle["broker"] = (await gw.broker.update()).to_dict()
    return bundle


class OrgBody(BaseModel):
    """Some of the organisation's settings; the ones left out stay as they are."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, min_length=1, max_length=200, examples=["ACME Earthworks"])
    timezone: str | None = Field(
        None,
        max_length=64,
        description="IANA time zone offered on the Live Data page; empty string: none",
        examples=["Europe/Berlin"],
    )
    followViewers: bool | None = Field(
        None, description="start real-time when someone watches a machine, stop it after"
    )
    viewerGraceSeconds: int | None = Field(
        None,
        ge=MIN_GRACE_S,
        le=MAX_GRACE_S,
        description="seconds after the last viewer left before real-time is stopped",
        examples=[300],
    )


@router.put("/resources/{orgId}", summary="Rename one's own organisation or change its settings")
async def update_organisation(request: Request, orgId: str, body: OrgBody) -> dict[str, Any]:
    gw = gateway_of(request)
    before = org_dict(await gw.meta.require_org(orgId))
    org = await update_org(
        gw.meta,
        orgId,
        name=body.name,
        timezone=body.timezone,
        clear_timezone=body.timezone == "",
        follow_viewers=body.followViewers,
        viewer_grace_s=body.viewerGraceSeconds,
    )
    gw.viewers.reconfigure(orgId)
    after = org_dict(org)
    if after["name"] != before["name"]:
        await _audit(request, "org_renamed", org.name)
    changed = {k: v for k, v in after.items() if k != "name" and v != before[k]}
    if changed:
        await _audit(request, "org_settings", org.name, changed)
    return after


@router.post(
    "/resources/{orgId}/machines",
    status_code=201,
    summary="Register a machine (and issue its secret, shown once)",
)
async def create_machine(request: Request, orgId: str, body: MachineBody) -> dict[str, Any]:
    gw = gateway_of(request)
    await gw.meta.require_org(orgId)
    spec = MachineSpec(body.name, body.model, tuple(body.tags), body.location, body.disabled)
    machine = await Registry(gw.meta).create(orgId, body.chassisId, spec)
    gw.catalog.invalidate()
    await _audit(request, "machine_created", body.chassisId)
    provisioning = await _provision(request, orgId, body.chassisId) if body.provision else None
    if provisioning is not None:
        machine = await gw.meta.get_machine(orgId, body.chassisId)
    return {"machine": machine_dict(machine), "provisioning": provisioning}


@router.put("/resources/{orgId}/machines/{chassisId}", summary="Change a machine")
async def update_machine(
    request: Request, orgId: str, chassisId: str, body: MachineChange
) -> dict[str, Any]:
    gw = gateway_of(request)
    await gw.meta.require_org(orgId)
    changes = body.model_dump(exclude_none=True)
    if "tags" in changes:
        changes["tags"] = tuple(changes["tags"])
    registry = Registry(gw.meta)
    before = await gw.meta.get_machine(orgId, chassisId)
    machine = await registry.update(orgId, chassisId, changes)
    gw.catalog.invalidate()
    await _audit(request, "machine_changed", chassisId, changes or None)
    out: dict[str, Any] = {"machine": machine_dict(machine)}
    if before.disabled != machine.disabled:
        out["broker"] = (await gw.broker.update()).to_dict()
    return out


@router.get(
    "/resources/{orgId}/machines/{chassisId}/data",
    summary="How much telemetry of a machine is stored (asked before deleting it)",
)
async def machine_data(request: Request, orgId: str, chassisId: str) -> dict[str, Any]:
    gw = gateway_of(request)
    await gw.meta.require_org(orgId)
    await gw.meta.get_machine(orgId, chassisId)
    return {"chassisId": chassisId, "points": await gw.store.machine_points(orgId, chassisId)}


@router.delete(
    "/resources/{orgId}/machines/{chassisId}",
    summary="Delete a machine, keeping or deleting its stored telemetry",
)
async def delete_machine(
    request: Request,
    orgId: str,
    chassisId: str,
    data: Annotated[
        Literal["keep", "delete"] | None,
        Query(
            description="keep: its history stays (and shows again if the id is registered "
            "again); delete: its stored telemetry is deleted too. Required."
        ),
    ] = None,
) -> dict[str, Any]:
    gw = gateway_of(request)
    await gw.meta.require_org(orgId)
    await gw.meta.get_machine(orgId, chassisId)
    points = await gw.store.machine_points(orgId, chassisId)
    if data is None:
        raise InputError(
            f"machine {chassisId} has {points} stored values: say data=keep or data=delete"
        )
    await Registry(gw.meta).delete(orgId, chassisId)
    gw.catalog.invalidate()
    deleted = await gw.store.delete_machine(orgId, chassisId) if data == "delete" else 0
    await _audit(request, "machine_deleted", chassisId, {"data": data, "points": points})
    broker = await gw.broker.update()
    return {
        "chassisId": chassisId,
        "pointsDeleted": deleted,
        "pointsKept": points - deleted if data == "keep" else 0,
        "broker": broker.to_dict(),
    }


@router.post(
    "/resources/{orgId}/machines/{chassisId}/provision",
    summary="Issue a machine's secret again with everything a technician needs (shown once)",
)
async def provision_machine(request: Request, orgId: str, chassisId: str) -> dict[str, Any]:
    gw = gateway_of(request)
    await gw.meta.require_org(orgId)
    await gw.meta.get_machine(orgId, chassisId)
    bundle = await _provision(request, orgId, chassisId)
    await _audit(request, "device_secret", chassisId)
    return bundle


@router.post(
    "/resources/{orgId}/machines/import",
    summary="Create or update machines from CSV: chassis,name,model,tags[,location]",
    openapi_extra={
        "requestBody": {
            "content": {
                "text/csv": {"schema": {"type": "string"}, "example": CSV_EXAMPLE},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {"file": {"type": "string", "format": "binary"}},
                    }
                },
                "application/json": {"schema": CsvBody.model_json_schema()},
            }
        }
    },
)
async def import_machines(request: Request, orgId: str) -> dict[str, Any]:
    """Tags are separated by ``;`` or ``|``; a header row starting ``chassis`` is skipped.

    Bad rows are reported with their line and reason, good rows are created or updated,
    rows equal to the stored machine are ``unchanged`` (importing a file twice changes
    nothing).  Imported machines get no secret: provision them one by one."""
    gw = gateway_of(request)
    await gw.meta.require_org(orgId)
    upload = await upload_text(request, MAX_IMPORT_BYTES, "CSV")
    text = upload[1] if upload is not None else (await json_body(request, CsvBody)).csv
    rows, errors = parse_csv(text)
    report = await Registry(gw.meta).import_rows(orgId, rows, errors)
    gw.catalog.invalidate()
    await _audit(
        request,
        "machines_imported",
        f"{len(report.created)} created, {len(report.updated)} updated",
    )
    return report.to_dict()
