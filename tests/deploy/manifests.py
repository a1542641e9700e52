"""Offline checks of the Kubernetes manifests: render with ``kubectl kustomize`` (needs no
cluster), validate core kinds with kubernetes-validate's bundled strict schemas and the CRD kinds
(KServe, Prometheus operator) with the schemas kept in ``deploy/kubernetes/schemas``, which refer
to the same bundled core definitions for their containers, volumes and probes."""

from __future__ import annotations

import json
import shutil
import subprocess
from functools import cache
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml
from kubernetes_validate.utils import schema_contents
from referencing import Registry, Resource

KUBERNETES = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
VERSION = "1.30.0"


def render(overlay: str) -> list[dict]:
    """``kubectl kustomize deploy/kubernetes/OVERLAY`` as a list of objects."""
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is not installed (.ci/run installs Debian's kubernetes-client)"
    result = subprocess.run([kubectl, "kustomize", str(KUBERNETES / overlay)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def validate(doc: dict) -> str:
    """Raise ``jsonschema.ValidationError`` unless ``doc`` is valid; say which schema judged."""
    try:
        kubernetes_validate.validate(doc, VERSION, strict=True)
        return "kubernetes"
    except kubernetes_validate.SchemaNotFoundError:  # a custom resource: our schema
        pass
    name = f"{doc['kind'].lower()}-{doc['apiVersion'].split('.')[0].split('/')[0]}-" \
           f"{doc['apiVersion'].split('/')[-1]}"
    path = KUBERNETES / "schemas" / f"{name}.json"
    assert path.exists(), f"no schema for {doc['apiVersion']} {doc['kind']} ({path.name})"
    validator = jsonschema.Draft202012Validator(json.loads(path.read_text()),
                                                registry=_core_definitions())
    validator.validate(doc)
    return path.name


@cache
def _core_definitions() -> Registry:
    schema_dir = f"kubernetes-json-schema/v{VERSION}-local-strict"
    definitions = schema_contents(f"{schema_dir}/_definitions.json", VERSION)
    return Resource.from_contents(definitions) @ Registry()
