"""The router's OpenAPI description and its `/docs` page (Swagger UI, served locally)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import web

ERROR = {
    "type": "object",
    "required": ["error_code", "message"],
    "properties": {"error_code": {"type": "string"}, "message": {"type": "string"}},
}
NUMBER_OR_LIST = {"oneOf": [{"type": "number"}, {"type": "array", "items": {"type": "number"}}]}
MODEL_INFO = {
    "type": "object",
    "nullable": True,
    "properties": {
        "name": {"type": "string"},
        "version": {"type": "string"},
        "loaded_at": {"type": "string", "nullable": True},
        "uri": {"type": "string"},
    },
}
ROW_EXAMPLE = {
    "hours_studied": 6.5,
    "sleep_hours": 7,
    "attendance_percent": 90,
    "previous_scores": 85,
}


LABEL = {
    "type": "object",
    "properties": {
        "request_id": {"type": "string", "minLength": 1},
        "label": {"oneOf": [{"type": "number"}, {"type": "string"}, {"type": "boolean"},
                            {"type": "array", "items": {}}]},
    },
    "required": ["request_id", "label"],
    "additionalProperties": False,
}  # fmt: skip


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(code): _json(ERROR, "An error in MLflow's body shape") for code in codes}


def _admin_post(summary: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    """Describe one of the original app's changing endpoints (forwarded to the controller)."""
    body: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        body["required"] = required
    return {
        "post": {
            "summary": summary,
            "description": "Needs `Authorization: Bearer <admin token>`; the controller decides.",
            "requestBody": {"content": {"application/json": {"schema": body}}},
            "responses": {
                "200": _json({"type": "object"}, "Done"),
                **_errors(400, 401, 403, 503),
            },
        }
    }


def openapi_document() -> dict[str, Any]:
    """Return the OpenAPI 3.0 description of the router's public surface.

    3.0, not 3.1: the packaged Swagger UI (4.x) renders nothing for a 3.1 document.
    """
    scoring = {
        "oneOf": [
            {"required": ["dataframe_split"]},
            {"required": ["dataframe_records"]},
            {"required": ["instances"]},
            {"required": ["inputs"]},
        ],
        "type": "object",
        "example": {"dataframe_records": [ROW_EXAMPLE]},
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "mlcanary router",
            "version": "1",
            "description": "Splits MLflow scoring traffic between the stable and the canary "
            "model version. Answers carry X-Model-Variant and X-Model-Version.",
        },
        "paths": {
            "/invocations": {
                "post": {
                    "summary": "Score with MLflow's protocol on the chosen variant",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": scoring},
                            "text/csv": {"schema": {"type": "string"}},
                        },
                    },
                    "responses": {
                        "200": _json(
                            {"type": "object", "properties": {"predictions": {"type": "array"}}},
                            "The model server's answer, unchanged",
                        ),
                        "default": _json(ERROR, "The model server's error, or the router's"),
                    },
                }
            },
            "/predict": {
                "post": {
                    "summary": "The original app's prediction endpoint",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["features"],
                                    "properties": {"features": {"type": "object"}},
                                    "example": {"features": ROW_EXAMPLE},
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["prediction", "model_used", "model_info"],
                                "properties": {
                                    "prediction": NUMBER_OR_LIST,
                                    "model_used": {"enum": ["current", "next"]},
                                    "model_info": MODEL_INFO,
                                    "prediction_time": {"type": "string"},
                                },
                            },
                            "The prediction and the model that made it",
                        ),
                        **_errors(400, 413, 503, 504),
                        "default": _json(ERROR, "The model server's error"),
                    },
                }
            },
            "/": {
                "get": {
                    "summary": "Status summary",
                    "responses": {"200": _json({"type": "object"}, "Status")},
                }
            },
            "/ping": {
                "get": {
                    "summary": "Router liveness",
                    "responses": {"200": {"description": "Alive"}},
                }
            },
            "/health": {
                "get": {
                    "summary": "Router and upstream health; 200 while stable can serve",
                    "responses": {
                        "200": _json({"type": "object"}, "Healthy"),
                        "503": _json({"type": "object"}, "Stable cannot serve"),
                    },
                }
            },
            "/predictions-profile": {
                "get": {
                    "summary": "Stable's recent predictions per output: deciles and label counts",
                    "responses": {"200": _json({"type": "object"}, "Profile")},
                }
            },
            "/canary-status": {
                "get": {
                    "summary": "The original app's canary status: both models, the probability",
                    "responses": {"200": _json({"type": "object"}, "Status")},
                }
            },
            "/model-info": {
                "get": {
                    "summary": "The original app's model info, with the registry's versions",
                    "responses": {"200": _json({"type": "object"}, "Models")},
                }
            },
            "/update-model": _admin_post(
                "Deploy a version as the next (canary) model (admin token)",
                {"model_name": {"type": "string"}, "model_version": {"type": "string"}},
                ["model_name"],
            ),
            "/accept-next-model": _admin_post(
                "Promote the next model to current (admin token)", {}, []
            ),
            "/canary-probability": _admin_post(
                "Set the next model's share of traffic, 0.0-1.0 (admin token)",
                {"probability": {"type": "number", "minimum": 0, "maximum": 1}},
                ["probability"],
            ),
            "/feedback": {
                "post": {
                    "summary": "Labels for logged requests, arriving late (admin token)",
                    "description": "One `{request_id, label}` or a list of them, kept whole or"
                    " not at all: 400 for a wrong shape or type, 404 for ids not in the"
                    " prediction log, 409 for ids already labelled. Needs `Authorization:"
                    " Bearer <admin token>`; the controller decides.",
                    "requestBody": {
                        "content": {
                            "application/json": {
                                "schema": {
                                    "oneOf": [
                                        LABEL,
                                        {
                                            "type": "array",
                                            "items": LABEL,
                                            "minItems": 1,
                                            "maxItems": 10000,
                                        },
                                    ],
                                }
                            }
                        }
                    },
                    "responses": {
                        "200": _json({"type": "object"}, "Taken: their count and the quality"),
                        **_errors(400, 401, 403, 404, 409, 503),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {"200": {"description": "Text format"}},
                }
            },
        },
    }


DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>mlcanary router API</title>
<link rel="stylesheet" href="/docs/static/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script>window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui"});</script>
</body></html>
"""


def swagger_assets() -> Path:
    """Return the folder of Swagger UI's packaged assets."""
    import swagger_ui_bundle

    return Path(swagger_ui_bundle.swagger_ui_path)


async def openapi_json(_request: web.Request) -> web.Response:
    """Serve the OpenAPI document."""
    return web.json_response(openapi_document())


async def docs(_request: web.Request) -> web.Response:
    """Serve the interactive API page, with its assets from this router."""
    return web.Response(text=DOCS_PAGE, content_type="text/html")


def add_routes(app: web.Application) -> None:
    """Add /openapi.json, /docs and /docs/static/ to the app."""
    app.router.add_get("/openapi.json", openapi_json)
    app.router.add_get("/docs", docs)
    app.router.add_static("/docs/static/", swagger_assets())
