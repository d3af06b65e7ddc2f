"""The OpenAPI description: every request body has an example, and the JSON ones are valid."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest

from livedata.gateway.app import create_app
from livedata.runtime import Runtime
from livedata.settings import load_settings


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    data: Path = tmp_path_factory.mktemp("openapi")
    return create_app(Runtime(load_settings({"data_dir": str(data)}))).openapi()


def bodies(spec: dict[str, Any]) -> list[tuple[str, str, str, dict[str, Any]]]:
    out = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for content_type, media in operation.get("requestBody", {}).get("content", {}).items():
                out.append((method, path, content_type, media))
    return out


def test_every_request_body_has_an_example(spec: dict[str, Any]) -> None:
    """Each content type of each operation's request body carries an example for /docs."""
    found = bodies(spec)
    assert len(found) > 20
    missing = [f"{m.upper()} {p} {ct}" for m, p, ct, media in found if "example" not in media]
    assert not missing, missing


def test_json_examples_match_their_schemas(spec: dict[str, Any]) -> None:
    """A JSON example is valid against the body's own schema (it would be accepted)."""
    checked = 0
    for method, path, content_type, media in bodies(spec):
        if content_type != "application/json":
            continue
        schema = {**media["schema"], "components": spec["components"]}
        refs = jsonschema.validators.Draft202012Validator(schema, format_checker=None).iter_errors(
            media["example"]
        )
        errors = [e.message for e in refs]
        assert not errors, (method, path, errors)
        checked += 1
    assert checked > 15
