"""Renders the colony chart with Helm's own SDK, lints it, and validates every manifest
against the Kubernetes schemas (kubernetes-validate, offline); then checks what the chart
promises: NATS with sync_interval always and file storage on volumes, the replica rule,
nodes that drain within their grace period and answer /readyz, a control plane that asks
for tokens, KEDA on the scaling leader's decision (or the consumer's backlog), no root, and
an admission policy (its CEL run here on sample patches) that lets a node change its own
pod's deletion cost and nothing else.

Usage: python check.py CHART_DIR   (exit 0 when every check holds; each failure printed)
Needs: pip install helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 cel-python==0.5.0
(.ci/run does).
"""

import copy
import sys

import celpy
import helm_python as helm
import kubernetes_validate
import yaml

KUBERNETES = "1.33"
failures = []


def check(holds, problem):
    if not holds:
        failures.append(problem)


def render(chart_dir, values, name="demo", namespace="swarm"):
    with helm.Chart.load(chart_dir) as chart:
        chart.validate_schema(values)
        files = chart.render(values, name=name, namespace=namespace)
    docs = []
    for path, text in sorted(files.items()):
        if not path.endswith(".yaml"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append((path, doc))
    return docs


def refused(chart_dir, values, why):
    try:
        render(chart_dir, values)
    except Exception as e:  # the SDK raises its own errors for schema and template failures
        return str(e)
    failures.append(f"values {values} were accepted: {why}")
    return ""


def validate(docs, label):
    kinds = []
    for path, doc in docs:
        kinds.append(doc["kind"])
        if doc["apiVersion"].startswith("keda.sh/"):
            # KEDA's kinds are not in the Kubernetes schemas: their fields are checked here.
            spec = doc.get("spec", {})
            if doc["kind"] == "ScaledObject":
                trigger = (spec.get("triggers") or [{}])[0]
                check(spec.get("scaleTargetRef", {}).get("name"), f"{label}: {path}: no scale target")
                if trigger.get("type") == "nats-jetstream":
                    check(trigger.get("metadata", {}).get("stream") == "COLONY_TASKS", f"{label}: {path}: not the tasks stream")
                else:
                    check(trigger.get("type") == "metrics-api", f"{label}: {path}: trigger {trigger.get('type')}")
                    check(trigger.get("metadata", {}).get("authMode") == "bearer", f"{label}: {path}: the scaling endpoint asks for a token")
                    check(trigger.get("authenticationRef", {}).get("name"), f"{label}: {path}: no authentication")
            else:
                check(doc["kind"] == "TriggerAuthentication", f"{label}: {path}: KEDA kind {doc['kind']}")
                refs = spec.get("secretTargetRef") or []
                check(len(refs) == 1 and refs[0].get("parameter") == "token" and refs[0].get("key") == "read-token",
                      f"{label}: {path}: the read token from the Secret: {refs}")
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES, strict=True)
        except kubernetes_validate.ValidationError as e:
            failures.append(f"{label}: {path}: {doc['kind']} {doc['metadata']['name']}: {e.message} at {list(e.path)}")
    return kinds


def by_kind(docs, kind, component=None):
    out = []
    for _, doc in docs:
        labels = doc.get("metadata", {}).get("labels", {})
        if doc["kind"] == kind and (component is None or labels.get("app.kubernetes.io/component") == component):
            out.append(doc)
    return out


def denials(policy, username, pod_name, old, new):
    """What the admission policy says of `username` (its bound token issued for `pod_name`)
    updating pod `old` to `new`: None when the policy does not apply, else the messages of
    the validations that fail (empty: allowed)."""
    env = celpy.Environment()

    def run(expression, activation):
        return env.program(env.compile(expression)).evaluate(activation)

    request = {"userInfo": {"username": username, "extra": {"authentication.kubernetes.io/pod-name": [pod_name]}}}
    activation = {"request": celpy.json_to_cel(request), "object": celpy.json_to_cel(new),
                  "oldObject": celpy.json_to_cel(old)}
    spec = policy["spec"]
    if not all(run(c["expression"], activation) for c in spec.get("matchConditions", [])):
        return None
    variables = {}
    for v in spec.get("variables", []):
        activation["variables"] = celpy.celtypes.MapType(variables)
        variables[celpy.celtypes.StringType(v["name"])] = run(v["expression"], activation)
    activation["variables"] = celpy.celtypes.MapType(variables)
    return [v["message"] for v in spec["validations"] if not run(v["expression"], activation)]


def check_pod_patch_policy(docs):
    policies = by_kind(docs, "ValidatingAdmissionPolicy")
    bindings = by_kind(docs, "ValidatingAdmissionPolicyBinding")
    check(len(policies) == 1 and len(bindings) == 1, "one pod patch policy, bound")
    if len(policies) != 1 or len(bindings) != 1:
        return
    policy = policies[0]
    binding = bindings[0]["spec"]
    check(binding["policyName"] == policy["metadata"]["name"] and binding["validationActions"] == ["Deny"],
          f"the binding denies what the policy refuses: {binding}")
    check(binding["matchResources"]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "swarm"},
          "in the release's namespace only")
    node = "system:serviceaccount:swarm:demo-colony-node"
    pod = {"metadata": {"name": "node-a", "labels": {"app": "colony"}, "annotations": {"note": "x"},
                        "ownerReferences": [{"kind": "ReplicaSet", "name": "rs"}]},
           "spec": {"containers": [{"name": "colony", "image": "colony:1"}]}}
    costed = copy.deepcopy(pod)
    costed["metadata"]["annotations"]["controller.kubernetes.io/pod-deletion-cost"] = "4"
    check(denials(policy, node, "node-a", pod, costed) == [], "a node sets its own pod's deletion cost")
    check(denials(policy, node, "node-a", costed, pod) == [], "and removes it")
    check(denials(policy, node, "node-b", pod, costed) == ["a colony node may patch only its own pod"],
          "not another pod's")
    swapped = copy.deepcopy(costed)
    swapped["spec"]["containers"][0]["image"] = "evil:1"
    check(denials(policy, node, "node-a", pod, swapped) == ["a colony node may not change a pod's spec"],
          "nor an image, even its own")
    relabelled = copy.deepcopy(pod)
    relabelled["metadata"]["labels"]["app"] = "other"
    check(denials(policy, node, "node-a", pod, relabelled) == ["a colony node may not change a pod's labels"],
          "nor a label (which would move the pod out of its Deployment)")
    annotated = copy.deepcopy(pod)
    annotated["metadata"]["annotations"]["note"] = "y"
    check(denials(policy, node, "node-a", pod, annotated) == ["a colony node may change only its pod's deletion cost annotation"],
          "nor another annotation")
    bare = {"metadata": {"name": "node-a"}, "spec": pod["spec"]}
    bare_costed = {"metadata": {"name": "node-a", "annotations": {"controller.kubernetes.io/pod-deletion-cost": "1"}},
                   "spec": pod["spec"]}
    check(denials(policy, node, "node-a", bare, bare_costed) == [], "a pod with no annotations yet")
    check(denials(policy, "system:serviceaccount:swarm:other", "node-b", pod, swapped) is None,
          "other accounts are not this policy's business")


def main(chart_dir):
    lint = helm.lint(chart_dir)
    # Severity 1 is information ("icon is recommended"); 2 a warning, 3 an error.
    serious = [m for m in lint.get("messages", []) if m.get("severity", 3) >= 2]
    check(not lint.get("errors") and not serious, f"helm lint: {lint}")

    with helm.Chart.load(chart_dir) as chart:
        defaults = chart.values

    docs = render(chart_dir, {})
    kinds = validate(docs, "defaults")
    check(sorted(set(kinds)) == ["ConfigMap", "Deployment", "PodDisruptionBudget", "Role", "RoleBinding", "Service",
                                 "ServiceAccount", "StatefulSet", "ValidatingAdmissionPolicy",
                                 "ValidatingAdmissionPolicyBinding"], f"defaults render {kinds}")

    conf = [d for d in by_kind(docs, "ConfigMap") if "nats.conf" in d.get("data", {})]
    check(len(conf) == 1, "one NATS config")
    conf = conf[0]["data"]["nats.conf"] if conf else ""
    check("sync_interval: always" in conf, "NATS fsyncs every acknowledged write")
    check(conf.count("nats-route://") == 3, "three routes")

    nats = by_kind(docs, "StatefulSet")[0]
    check(nats["spec"]["replicas"] == 3, "three NATS servers")
    check(nats["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "10Gi", "a volume per server")

    node = by_kind(docs, "Deployment", "node")[0]
    pod = node["spec"]["template"]["spec"]
    container = pod["containers"][0]
    args = container["args"]
    check(args[0] == "node", f"nodes run `colony node`: {args}")
    check(args[args.index("--replicas") + 1] == "3", "the stream's replicas are 3")
    urls = args[args.index("--nats") + 1].split(",")
    check(len(urls) == 3 and all(u.startswith("nats://demo-colony-nats-") for u in urls), f"nodes know every server: {urls}")
    check(args[args.index("--drain-timeout") + 1] == "30s", "drain timeout")
    check(pod["terminationGracePeriodSeconds"] == 45, f"grace = drain + 15: {pod['terminationGracePeriodSeconds']}")
    check(container["readinessProbe"]["httpGet"]["path"] == "/readyz", "readiness is /readyz")
    check(pod["securityContext"]["runAsNonRoot"] is True, "no root")
    check(pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", "the restricted Pod Security level")
    check(any(m["mountPath"] == "/tmp" for m in container["volumeMounts"]), "a writable /tmp beside the read-only root")
    check(node["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0, "a rolling update keeps every node until its replacement is ready")
    check("--pod-deletion-cost" in args, "nodes keep their pod's deletion cost")
    account = pod.get("serviceAccountName")
    role = by_kind(docs, "Role")
    binding = by_kind(docs, "RoleBinding")
    check(len(role) == 1 and role[0]["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["patch"]}],
          f"the nodes may patch pods, nothing more: {role}")
    check(len(binding) == 1 and binding[0]["subjects"][0]["name"] == account and binding[0]["roleRef"]["name"] == role[0]["metadata"]["name"],
          f"the nodes' service account {account} is bound to that role")
    check_pod_patch_policy(docs)

    control = by_kind(docs, "Deployment", "control")
    check(len(control) == 1, "one control plane Deployment")
    control = control[0]
    pod = control["spec"]["template"]["spec"]
    container = pod["containers"][0]
    args = container["args"]
    check(args[:3] == ["serve", "--nats", ",".join(urls)], f"the control plane serves the same cluster: {args[:3]}")
    check(control["spec"]["replicas"] == 2, "two control servers: one leads the scaling, one stands by")
    check(args[args.index("--addr") + 1] == "0.0.0.0:7070", "listens beyond loopback")
    check(args[args.index("--tokens") + 1] == "/etc/colony-tokens/tokens", "so asks for tokens")
    secret = [v for v in pod["volumes"] if v["name"] == "tokens"][0]["secret"]
    check(secret["secretName"] == "colony-tokens", f"tokens from the Secret: {secret}")
    check(container["readinessProbe"]["httpGet"]["path"] == "/readyz", "control readiness is /readyz")
    check(pod["securityContext"]["runAsNonRoot"] is True, "control: no root")
    check("--memory" not in args, f"no memory unless asked: {args}")
    services = [s for s in by_kind(docs, "Service", "control")]
    check(len(services) == 1 and services[0]["spec"]["ports"][0]["port"] == 7070, "a Service in front of the control plane")

    # A memory in the chart's NATS, served by every control server.
    docs = render(chart_dir, {"control": {"memory": "notes"}})
    validate(docs, "memory")
    args = by_kind(docs, "Deployment", "control")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    check(args[args.index("--memory") + 1] == ",".join(urls) + "/notes?replicas=3",
          f"the memory in the same NATS: {args}")
    refused(chart_dir, {"control": {"memory": "a.b"}}, "a memory name NATS cannot take")

    # KEDA on the scaling leader's decision: the control plane's scaling endpoint, with a
    # read token, and the leader bounded as KEDA is.
    docs = render(chart_dir, {"keda": {"enabled": True, "role": "coder", "minReplicas": 2, "maxReplicas": 9}})
    kinds = validate(docs, "keda-scaling")
    check("ScaledObject" in kinds and "TriggerAuthentication" in kinds, f"keda on the scaling endpoint renders {kinds}")
    node = by_kind(docs, "Deployment", "node")[0]
    check("replicas" not in node["spec"], "KEDA owns the replica count")
    trigger = by_kind(docs, "ScaledObject")[0]["spec"]["triggers"][0]
    check(trigger["metadata"]["url"] == "http://demo-colony-control.swarm.svc:7070/v1/scaling/coder",
          f"the role's scaling endpoint: {trigger['metadata']['url']}")
    check(trigger["metadata"]["valueLocation"] == "desired" and trigger["metadata"]["targetValue"] == "1",
          "one node per desired node")
    args = by_kind(docs, "Deployment", "control")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    check(args[args.index("--scaling-min") + 1] == "2" and args[args.index("--scaling-max") + 1] == "9",
          "the scaling leader is bounded as KEDA is")

    # KEDA on the consumer's backlog, an external NATS, no control plane: no servers
    # rendered, the scaler reads the given endpoint.
    docs = render(chart_dir, {"nats": {"enabled": False, "url": "nats://a:4222,nats://b:4222,nats://c:4222"},
                              "control": {"enabled": False},
                              "keda": {"enabled": True, "trigger": "jetstream", "role": "coder", "monitoringEndpoint": "a:8222"}})
    kinds = validate(docs, "keda-jetstream")
    check("StatefulSet" not in kinds and "ScaledObject" in kinds, f"keda with external NATS renders {kinds}")
    check(not by_kind(docs, "Deployment", "control"), "no control plane when it is off")
    scaled = by_kind(docs, "ScaledObject")[0]
    consumers = [t["metadata"]["consumer"] for t in scaled["spec"]["triggers"]]
    check(consumers == [f"p{p}-role-coder" for p in range(9, -1, -1)], f"the role's consumers, one a priority: {consumers}")
    check(all(t["metadata"]["natsServerMonitoringEndpoint"] == "a:8222" for t in scaled["spec"]["triggers"]), "each trigger reads the endpoint")

    # A single development server, R1, a grace period in minutes, no deletion cost.
    docs = render(chart_dir, {"replicas": 1, "nats": {"servers": 1}, "nodes": {"drainTimeout": "2m", "podDeletionCost": False}})
    kinds = validate(docs, "single")
    node = by_kind(docs, "Deployment", "node")[0]
    check("Role" not in kinds and "ValidatingAdmissionPolicy" not in kinds and "--pod-deletion-cost" not in node["spec"]["template"]["spec"]["containers"][0]["args"],
          "no deletion cost, no role")
    check(node["spec"]["template"]["spec"].get("automountServiceAccountToken") is False, "and no API token in the pod")
    check(node["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 135, "2m + 15 s")
    conf = [d for d in by_kind(docs, "ConfigMap") if "nats.conf" in d.get("data", {})][0]["data"]["nats.conf"]
    check("cluster {" not in conf, "one server has no cluster block")

    # Settings that would lose tasks are refused.
    refused(chart_dir, {"replicas": 2}, "R2 tolerates no more faults than R1")
    refused(chart_dir, {"replicas": 5}, "five copies on three servers")
    refused(chart_dir, {"nats": {"enabled": False}}, "no NATS at all")
    refused(chart_dir, {"keda": {"enabled": True, "role": "a.b"}}, "a role that is no subject token")
    refused(chart_dir, {"nodes": {"ackWait": "2h"}}, "colony node takes an ack wait of at most 1h")
    refused(chart_dir, {"nodes": {"ackWait": "500ms"}}, "colony node takes an ack wait of at least 1s")
    refused(chart_dir, {"nodes": {"ackWait": "9999s"}}, "colony node takes an ack wait of at most 1h")
    refused(chart_dir, {"nodes": {"drainTimeout": "61m"}}, "colony node takes a drain of at most 1h")
    refused(chart_dir, {"control": {"enabled": False}, "keda": {"enabled": True}}, "the scaling trigger without a control plane")
    refused(chart_dir, {"control": {"tokensSecret": ""}}, "a control plane beyond loopback without tokens")
    refused(chart_dir, {"control": {"scalingLease": "1s"}}, "colony serve takes a lease of at least 2s")
    refused(chart_dir, {"control": {"scalingPeriod": "50ms"}}, "colony serve takes a period of at least 100ms")
    refused(chart_dir, {"keda": {"enabled": True, "trigger": "cpu"}}, "an unknown trigger")

    if failures:
        for f in failures:
            print("FAIL:", f)
        return 1
    print(f"chart ok: lint clean, manifests valid against Kubernetes {KUBERNETES}, every check held")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
