#!/usr/bin/env python3
"""Consistency checks of the deployment material that no off-the-shelf tool
makes; called by scripts/check-deploy with the repo venv's python (PyYAML comes
with kubernetes-validate).

    check_deploy.py RENDERED_DIR [SUBSET_DIR]

RENDERED_DIR holds one `<name>.yaml` per rendered kustomization (base, dev,
prod). SUBSET_DIR, when given, holds scripts/kustomize_subset.py's renderings
of the same directories, which must match the real tool's. Prints one line per problem and exits 1 if there is any.

Checks:
* deploy/gateway.toml parses, and k8s/base/gateway.toml is identical to it;
* Dockerfile rules (also covered by hadolint where it runs): pinned base image
  tags, no ADD of URLs, `cargo build --locked`, a non-root USER in the final
  stage, EXPOSE 8000 9000, STOPSIGNAL SIGTERM, no build tools installed in the
  final stage;
* docker-compose.yml: services, build context, mounted files exist,
  depends_on conditions have healthchecks, `$` escaping, Redis not published
  on the host, Python pins equal tests/py/requirements.txt;
* rendered manifests: probes and ports by name, security context, grace
  period longer than preStop sleep + server.shutdown_timeout, ServiceMonitor
  and PrometheusRule shape (CRDs the schema validator skips);
* every metric named in the rules and the dashboard exists in
  gateway/src/ops/metrics.rs; every alert has a runbook section in
  docs/operations.md; the dashboard is JSON with a datasource variable;
* every PromQL expression (rules, dashboard) parses (promql-parser).
"""

import json
import re
import sys
import tomllib
from pathlib import Path

import promql_parser
import yaml

REPO = Path(__file__).resolve().parents[1]
problems: list[str] = []

REQUIRED_ALERTS = {
    "GatewayNotReady",
    "GatewayRedisReconnecting",
    "GatewayDropsHigh",
    "GatewayPublishLagHigh",
    "GatewaySocketsNearLimit",
    "GatewayMembershipWriteFailures",
}
DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")


def problem(where: str, what: str) -> None:
    problems.append(f"{where}: {what}")


def humantime_seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+)\s*(ms|s|m|h)", text):
        total += int(number) * units[unit]
    return total


def check_config() -> dict:
    deploy = REPO / "deploy" / "gateway.toml"
    base = REPO / "k8s" / "base" / "gateway.toml"
    try:
        config = tomllib.loads(deploy.read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        problem("deploy/gateway.toml", f"does not parse: {err}")
        return {}
    if not base.exists() or base.read_bytes() != deploy.read_bytes():
        problem("k8s/base/gateway.toml", "differs from deploy/gateway.toml (copy it over)")
    if config.get("auth", {}).get("jwt_secret"):
        problem("deploy/gateway.toml", "auth.jwt_secret must stay empty (secrets come from the environment)")
    return config


def check_dockerfile() -> None:
    where = "deploy/Dockerfile"
    text = (REPO / "deploy" / "Dockerfile").read_text()
    lines = [line.strip() for line in text.replace("\\\n", " ").splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    args = {}
    stages: list[list[str]] = []
    for line in lines:
        word = line.split()[0].upper()
        if word == "ARG" and not stages:
            name, _, default = line.split(None, 1)[1].partition("=")
            args[name] = default
        if word == "FROM":
            image = line.split()[1]
            image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), ""), image)
            name = image.split("@")[0].rsplit("/", 1)[-1]
            if "@sha256:" not in image and (":" not in name or name.endswith(":latest")):
                problem(where, f"base image `{image}` has no pinned tag")
            stages.append([])
        if stages:
            stages[-1].append(line)
    if len(stages) < 2:
        problem(where, "must be multi-stage (builder + runtime)")
        return
    if re.search(r"^ADD\s+\S*https?://", text, re.MULTILINE | re.IGNORECASE):
        problem(where, "ADD of a URL (download in a RUN step with a checksum instead)")
    if not re.search(r"cargo build[^\n]*--locked", text):
        problem(where, "`cargo build` must use --locked")
    final = stages[-1]
    users = [line.split()[1] for line in final if line.upper().startswith("USER ")]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problem(where, "the final stage must end with a non-root USER")
    exposed = {p for line in final if line.upper().startswith("EXPOSE ") for p in line.split()[1:]}
    if not {"8000", "9000"} <= exposed:
        problem(where, "final stage must EXPOSE 8000 9000")
    if not any(line.upper() == "STOPSIGNAL SIGTERM" for line in final):
        problem(where, "final stage must set STOPSIGNAL SIGTERM")
    final_text = "\n".join(final)
    for tool in ("cargo", "rustc", "gcc", "build-essential", "make", "curl", "wget"):
        if re.search(rf"apt-get install[^\n]*\b{tool}\b", final_text):
            problem(where, f"final stage installs build/download tool `{tool}`")
    if "deploy/gateway.toml" not in final_text:
        problem(where, "final stage must copy deploy/gateway.toml")


def requirement_pins() -> dict:
    pins = {}
    for line in (REPO / "tests" / "py" / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def check_compose() -> None:
    where = "deploy/docker-compose.yml"
    path = REPO / "deploy" / "docker-compose.yml"
    raw = path.read_text()
    try:
        compose = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        problem(where, f"YAML does not parse: {err}")
        return
    # Compose interpolates `$NAME` / `${NAME}`; a shell `$` must be written `$$`.
    for match in re.finditer(r"\$(?!\$)(?!\{)", re.sub(r"\$\$", "", raw)):
        line = raw.count("\n", 0, match.start()) + 1
        problem(where, f"bare `$` (use `$$` or `${{VAR}}`) near line {line}")
        break
    services = compose.get("services") if isinstance(compose, dict) else None
    if not isinstance(services, dict):
        problem(where, "no services mapping")
        return
    for name in ("redis", "gateway", "backend"):
        if name not in services:
            problem(where, f"service `{name}` missing")
    base = path.parent
    for name, service in services.items():
        if not isinstance(service, dict):
            problem(where, f"service `{name}` is not a mapping")
            continue
        if "image" not in service and "build" not in service:
            problem(where, f"service `{name}` has neither image nor build")
        build = service.get("build")
        if isinstance(build, dict):
            context = (base / build.get("context", ".")).resolve()
            dockerfile = context / build.get("dockerfile", "Dockerfile")
            if not dockerfile.is_file():
                problem(where, f"service `{name}`: dockerfile {dockerfile} not found")
        for volume in service.get("volumes", []) or []:
            source = str(volume).split(":", 1)[0]
            if source.startswith((".", "/")) and not (base / source).exists():
                problem(where, f"service `{name}`: mounted path {source} does not exist")
        for port in service.get("ports", []) or []:
            if re.search(r"(^|:)6379:", str(port)):
                problem(where, f"service `{name}` publishes 6379 on the host")
        depends = service.get("depends_on", {}) or {}
        if isinstance(depends, list):
            problem(where, f"service `{name}`: depends_on must use conditions")
            depends = {}
        for target, spec in depends.items():
            if target not in services:
                problem(where, f"service `{name}` depends on unknown `{target}`")
                continue
            condition = (spec or {}).get("condition")
            if condition not in ("service_started", "service_healthy", "service_completed_successfully"):
                problem(where, f"service `{name}` depends on `{target}` without a valid condition")
            if condition == "service_healthy" and "healthcheck" not in services[target]:
                problem(where, f"`{name}` waits for `{target}` healthy but it has no healthcheck")
        check = service.get("healthcheck")
        if check is not None and not check.get("test"):
            problem(where, f"service `{name}`: healthcheck without test")
    for name in ("redis", "gateway"):
        if name in services and "healthcheck" not in services[name]:
            problem(where, f"service `{name}` needs a healthcheck")
    pins = requirement_pins()
    backend = json.dumps(services.get("backend", {}))
    found = re.findall(r"([A-Za-z0-9_.-]+)==([0-9][A-Za-z0-9.]*)", backend)
    if not found:
        problem(where, "backend installs no pinned packages")
    for name, version in found:
        key = name.lower().replace("_", "-")
        if key in pins and pins[key] != version:
            problem(where, f"backend pins {name}=={version}, tests/py/requirements.txt has {pins[key]}")
        if key not in pins:
            problem(where, f"backend pins {name}, which tests/py/requirements.txt does not")


def load_rendered(rendered: Path) -> dict:
    out = {}
    for file in sorted(rendered.glob("*.yaml")):
        try:
            out[file.stem] = [doc for doc in yaml.safe_load_all(file.read_text()) if doc]
        except yaml.YAMLError as err:
            problem(f"rendered {file.stem}", f"YAML does not parse: {err}")
    return out


def by_kind(docs: list, kind: str) -> list:
    return [doc for doc in docs if doc.get("kind") == kind]


def check_rendered(name: str, docs: list, config: dict) -> None:
    where = f"k8s {name}"
    kinds = {doc.get("kind") for doc in docs}
    wanted = {
        "Deployment", "Service", "Ingress", "HorizontalPodAutoscaler", "PodDisruptionBudget",
        "ConfigMap", "ServiceMonitor", "NetworkPolicy", "PrometheusRule", "ServiceAccount",
    }
    for kind in sorted(wanted - kinds):
        problem(where, f"no {kind}")
    services = by_kind(docs, "Service")
    service_ports = {p.get("name") for s in services for p in s["spec"].get("ports", [])}
    for deployment in by_kind(docs, "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        if not pod.get("securityContext", {}).get("runAsNonRoot"):
            problem(where, "pod securityContext.runAsNonRoot must be true")
        if pod.get("securityContext", {}).get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problem(where, "pod seccompProfile must be RuntimeDefault")
        if not pod.get("affinity", {}).get("podAntiAffinity"):
            problem(where, "no pod anti-affinity")
        if not pod.get("topologySpreadConstraints"):
            problem(where, "no topologySpreadConstraints")
        grace = pod.get("terminationGracePeriodSeconds", 30)
        for container in pod["containers"]:
            cname = f"container {container['name']}"
            ports = {p.get("name") for p in container.get("ports", [])}
            sc = container.get("securityContext", {})
            if not sc.get("readOnlyRootFilesystem"):
                problem(where, f"{cname}: readOnlyRootFilesystem must be true")
            if sc.get("allowPrivilegeEscalation") is not False:
                problem(where, f"{cname}: allowPrivilegeEscalation must be false")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                problem(where, f"{cname}: must drop ALL capabilities")
            if not container.get("resources", {}).get("requests"):
                problem(where, f"{cname}: no resource requests")
            for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
                http = container.get(probe, {}).get("httpGet", {})
                if http.get("path") != path:
                    problem(where, f"{cname}: {probe} must GET {path}")
                port = http.get("port")
                if port not in ports and port != 9000:
                    problem(where, f"{cname}: {probe} port {port} is not a container port")
            pre_stop = container.get("lifecycle", {}).get("preStop", {})
            sleep = pre_stop.get("sleep", {}).get("seconds", 0)
            if not sleep:
                problem(where, f"{cname}: preStop sleep missing")
            shutdown = humantime_seconds(config.get("server", {}).get("shutdown_timeout", "10s"))
            if grace <= sleep + shutdown:
                problem(
                    where,
                    f"terminationGracePeriodSeconds {grace} must exceed preStop {sleep}s + shutdown_timeout {shutdown:g}s",
                )
    for ingress in by_kind(docs, "Ingress"):
        notes = ingress["metadata"].get("annotations", {})
        for key in ("proxy-read-timeout", "proxy-send-timeout"):
            value = notes.get(f"nginx.ingress.kubernetes.io/{key}", "60")
            if int(value) <= humantime_seconds(config.get("server", {}).get("ping_interval", "25s")):
                problem(where, f"ingress {key} {value}s must exceed the ping interval")
    for monitor in by_kind(docs, "ServiceMonitor"):
        endpoints = monitor.get("spec", {}).get("endpoints", [])
        if not endpoints or not monitor["spec"].get("selector"):
            problem(where, "ServiceMonitor needs a selector and endpoints")
        for endpoint in endpoints:
            if endpoint.get("port") not in service_ports:
                problem(where, f"ServiceMonitor port {endpoint.get('port')} is not a Service port name")
    for rule in by_kind(docs, "PrometheusRule"):
        check_rules(where, rule)


def check_rules(where: str, rule: dict) -> None:
    alerts = set()
    for group in rule.get("spec", {}).get("groups", []):
        if not group.get("name") or not group.get("rules"):
            problem(where, "PrometheusRule group needs a name and rules")
        for item in group.get("rules", []):
            label = item.get("alert") or item.get("record")
            if bool(item.get("alert")) == bool(item.get("record")):
                problem(where, f"rule {label}: exactly one of alert / record")
            if not str(item.get("expr", "")).strip():
                problem(where, f"rule {label}: empty expr")
            else:
                check_promql(str(item["expr"]), f"{where} rule {label}")
            if "for" in item and not DURATION.match(str(item["for"])):
                problem(where, f"rule {label}: bad `for` {item['for']}")
            extra = set(item) - {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}
            if extra:
                problem(where, f"rule {label}: unknown fields {sorted(extra)}")
            if item.get("alert"):
                alerts.add(item["alert"])
                if not item.get("annotations", {}).get("runbook_url"):
                    problem(where, f"alert {label}: no runbook_url")
    for missing in sorted(REQUIRED_ALERTS - alerts):
        problem(where, f"alert {missing} missing")


def exported_metrics() -> set:
    source = (REPO / "gateway" / "src" / "ops" / "metrics.rs").read_text()
    names = set(re.findall(r'"(gateway_[a-z0-9_]+)"', source))
    for name in list(names):
        names |= {name + "_bucket", name + "_sum", name + "_count"}
    return names


def check_promql(expr: str, where: str) -> None:
    """Syntax only (no server); Grafana's variables get sample values first."""
    for variable, value in (("$__rate_interval", "5m"), ("$namespace", "ns"), ("$pod", "pod")):
        expr = expr.replace(variable, value)
    try:
        promql_parser.parse(expr)
    except Exception as err:  # the parser raises plain exceptions
        problem(where, f"PromQL does not parse ({err}): {expr.strip()[:120]}")


def check_metric_names(text: str, where: str, known: set) -> None:
    used = set(re.findall(r"\b(gateway_[a-z0-9_]+)\b", text))
    for name in sorted(used - known):
        problem(where, f"metric {name} is not exported by gateway/src/ops/metrics.rs")


def check_dashboard(known: set) -> None:
    where = "deploy/grafana-dashboard.json"
    try:
        dashboard = json.loads((REPO / "deploy" / "grafana-dashboard.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        problem(where, f"not valid JSON: {err}")
        return
    variables = dashboard.get("templating", {}).get("list", [])
    if not any(v.get("type") == "datasource" and v.get("name") == "datasource" for v in variables):
        problem(where, "needs a `datasource` template variable")
    exprs = []
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            continue
        if panel.get("datasource", {}).get("uid") != "${datasource}":
            problem(where, f"panel {panel.get('title')!r} does not use the $datasource variable")
        exprs += [t.get("expr", "") for t in panel.get("targets", [])]
        for target in panel.get("targets", []):
            check_promql(target.get("expr", ""), f"{where} panel {panel.get('title')!r}")
        if not panel.get("targets"):
            problem(where, f"panel {panel.get('title')!r} has no targets")
    check_metric_names("\n".join(exprs), where, known)


def check_runbooks(docs: dict) -> None:
    ops = REPO / "docs" / "operations.md"
    if not ops.exists():
        problem("docs/operations.md", "missing")
        return
    text = ops.read_text()
    headings = set(re.findall(r"^#+\s+(\w+)\s*$", text, re.MULTILINE))
    alerts = {
        item["alert"]
        for rendered in docs.values()
        for rule in by_kind(rendered, "PrometheusRule")
        for group in rule["spec"]["groups"]
        for item in group["rules"]
        if item.get("alert")
    }
    for alert in sorted(alerts - headings):
        problem("docs/operations.md", f"no runbook heading `### {alert}`")
    if "docs/operations.md" not in (REPO / "README.md").read_text():
        problem("README.md", "does not link docs/operations.md")


def normalized(docs: list) -> dict:
    """Documents by (kind, name) with generator hash suffixes blanked and
    lists sorted, so two renderers' outputs compare by content."""
    generated = re.compile(r"\b((?:[a-z0-9]+-)*[a-z0-9]+)-[a-z0-9]{10}\b")

    def canon(node):
        if isinstance(node, dict):
            return {key: canon(value) for key, value in node.items()}
        if isinstance(node, list):
            return sorted((canon(value) for value in node), key=lambda v: json.dumps(v, sort_keys=True))
        if isinstance(node, str):
            return generated.sub(r"\1-HASH", node)
        return node

    return {(doc["kind"], canon(doc["metadata"]["name"])): canon(doc) for doc in docs}


def compare_renderings(real: dict, subset: dict) -> None:
    """scripts/kustomize_subset.py must render what kustomize renders."""
    for name, docs in real.items():
        ours = normalized(subset.get(name, []))
        for key, doc in normalized(docs).items():
            if ours.get(key) != doc:
                problem("scripts/kustomize_subset.py", f"{name}: {key[0]}/{key[1]} differs from kustomize's rendering")
        for key in sorted(set(ours) - set(normalized(docs))):
            problem("scripts/kustomize_subset.py", f"{name}: renders {key[0]}/{key[1]} that kustomize does not")


def main() -> int:
    rendered = Path(sys.argv[1])
    config = check_config()
    check_dockerfile()
    check_compose()
    docs = load_rendered(rendered)
    if not docs:
        problem("check_deploy.py", f"no rendered manifests in {rendered}")
    known = exported_metrics()
    for name, rendered_docs in docs.items():
        check_rendered(name, rendered_docs, config)
        for rule in by_kind(rendered_docs, "PrometheusRule"):
            check_metric_names(yaml.safe_dump(rule), f"k8s {name} PrometheusRule", known)
        for hpa in by_kind(rendered_docs, "HorizontalPodAutoscaler"):
            check_metric_names(yaml.safe_dump(hpa), f"k8s {name} HPA", known)
    check_dashboard(known)
    check_runbooks(docs)
    if len(sys.argv) > 2:
        compare_renderings(docs, load_rendered(Path(sys.argv[2])))
    for line in problems:
        print(f"check-deploy: {line}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
