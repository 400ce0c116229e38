#!/usr/bin/env python3
"""Renders a kustomization directory using only the kustomize features k8s/
uses, for machines without kubectl or kustomize (scripts/check-deploy prefers
the real tool). Output: the rendered YAML stream on stdout.

    kustomize_subset.py DIR

Supported: `resources` (files and directories holding a kustomization),
`namespace`, `labels` (pairs, includeSelectors, includeTemplates), `images`
(name, newName, newTag, digest), `configMapGenerator` / `secretGenerator`
(files, literals; name suffix from a content hash; references in pod specs
and HPA/ingress are renamed), `patches` with `path` (strategic-merge subset:
maps merge, `null` deletes, lists of maps with `name` merge by name, other
lists are replaced). Anything else is an error, so a new feature in k8s/
fails loudly here instead of rendering wrongly.
"""

import base64
import copy
import hashlib
import json
import sys
from pathlib import Path

import yaml

KNOWN_KEYS = {
    "apiVersion", "kind", "resources", "namespace", "labels", "images",
    "configMapGenerator", "secretGenerator", "patches",
}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}


def die(message: str) -> None:
    print(f"kustomize_subset: {message}", file=sys.stderr)
    sys.exit(1)


def merge(base, patch):
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            elif key in out:
                out[key] = merge(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
        return out
    if (
        isinstance(base, list)
        and isinstance(patch, list)
        and all(isinstance(x, dict) and "name" in x for x in base + patch)
    ):
        out = [copy.deepcopy(x) for x in base]
        index = {x["name"]: i for i, x in enumerate(out)}
        head = []
        for item in patch:
            if item["name"] in index:
                out[index[item["name"]]] = merge(out[index[item["name"]]], item)
            else:
                head.append(copy.deepcopy(item))
        return head + out
    return copy.deepcopy(patch)


def generated(kind: str, spec: dict, root: Path) -> dict:
    data = {}
    for literal in spec.get("literals", []):
        key, _, value = literal.partition("=")
        data[key] = value
    for file in spec.get("files", []):
        key, _, path = file.rpartition("=")
        path = path or file
        data[key or Path(path).name] = (root / path).read_text()
    unknown = set(spec) - {"name", "literals", "files"}
    if unknown:
        die(f"{kind} generator field(s) {sorted(unknown)} not supported")
    digest = hashlib.sha256(json.dumps([kind, spec["name"], data], sort_keys=True).encode()).hexdigest()
    doc = {"apiVersion": "v1", "kind": kind, "metadata": {"name": f"{spec['name']}-{digest[:10]}"}}
    if kind == "Secret":
        doc["type"] = "Opaque"
        doc["data"] = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    else:
        doc["data"] = data
    return doc


def walk(node, visit):
    if isinstance(node, dict):
        visit(node)
        for value in node.values():
            walk(value, visit)
    elif isinstance(node, list):
        for value in node:
            walk(value, visit)


def rename_refs(doc: dict, renames: dict) -> None:
    def visit(node):
        for key, kind in (("configMap", "ConfigMap"), ("secret", "Secret"),
                          ("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret"),
                          ("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
            ref = node.get(key)
            if isinstance(ref, dict):
                field = "secretName" if key == "secret" else "name"
                if (kind, ref.get(field)) in renames:
                    ref[field] = renames[(kind, ref[field])]
    walk(doc, visit)


def render(root: Path) -> list:
    file = root / "kustomization.yaml"
    if not file.exists():
        die(f"{root} has no kustomization.yaml")
    spec = yaml.safe_load(file.read_text()) or {}
    unknown = set(spec) - KNOWN_KEYS
    if unknown:
        die(f"{file}: field(s) {sorted(unknown)} not supported")
    docs = []
    for resource in spec.get("resources", []):
        path = root / resource
        if path.is_dir():
            docs += render(path)
        else:
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    renames = {}
    for kind, key in (("ConfigMap", "configMapGenerator"), ("Secret", "secretGenerator")):
        for gen in spec.get(key, []):
            doc = generated(kind, gen, root)
            renames[(kind, gen["name"])] = doc["metadata"]["name"]
            docs.append(doc)
    for patch in spec.get("patches", []):
        if set(patch) != {"path"}:
            die(f"{file}: only `patches: - path:` is supported")
        for p in yaml.safe_load_all((root / patch["path"]).read_text()):
            targets = [
                i for i, d in enumerate(docs)
                if d["kind"] == p["kind"] and d["metadata"]["name"] == p["metadata"]["name"]
            ]
            if not targets:
                die(f"{patch['path']}: no {p['kind']}/{p['metadata']['name']} to patch")
            for i in targets:
                docs[i] = merge(docs[i], p)
    for doc in docs:
        rename_refs(doc, renames)
    for entry in spec.get("labels", []):
        pairs = entry.get("pairs", {})
        for doc in docs:
            doc["metadata"].setdefault("labels", {}).update(pairs)
            if entry.get("includeTemplates") or entry.get("includeSelectors"):
                template = doc.get("spec", {}).get("template") if isinstance(doc.get("spec"), dict) else None
                if isinstance(template, dict):
                    template.setdefault("metadata", {}).setdefault("labels", {}).update(pairs)
            if entry.get("includeSelectors"):
                die("labels.includeSelectors: true is not supported")
    for image in spec.get("images", []):
        def visit(node, image=image):
            for container in node.get("containers", []) + node.get("initContainers", []):
                ref = container.get("image", "")
                name, tag = (ref.rsplit(":", 1) + [""])[:2] if ":" in ref.rsplit("/", 1)[-1] else (ref, "")
                if name != image["name"]:
                    continue
                name = image.get("newName", name)
                if "digest" in image:
                    container["image"] = f"{name}@{image['digest']}"
                else:
                    tag = image.get("newTag", tag)
                    container["image"] = f"{name}:{tag}" if tag else name
        for doc in docs:
            walk(doc, visit)
    if "namespace" in spec:
        for doc in docs:
            if doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = spec["namespace"]
    return docs


def main() -> int:
    if len(sys.argv) != 2:
        die("usage: kustomize_subset.py DIR")
    docs = render(Path(sys.argv[1]))
    sys.stdout.write(yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
