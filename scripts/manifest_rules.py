"""Rules of scripts/check-manifests that need no cluster: what the Kubernetes
API server and Istio's validating webhook would reject although the schemas
accept it, what Envoy does with a retry policy, and which connections a set
of NetworkPolicies lets through.

Each rule is a function from objects to a list of problems (strings), so that
`self_test()` can feed it bad examples and show that it rejects them:

    python3 scripts/manifest_rules.py      # runs the self-test alone

scripts/check-manifests imports this module and runs the self-test before
checking the real manifests.
"""
from decimal import Decimal, InvalidOperation
import ipaddress
import re

# ------------------------------------------------------------ Kubernetes names

# IANA_SVC_NAME (container port names, named targetPorts and probe ports):
# 1-15 characters of [a-z0-9-], at least one letter, no leading or trailing
# '-', no '--' (k8s.io/apimachinery validation.IsValidPortName).
IANA_SVC_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
CONFIGMAP_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


def port_name_problems(name):
    """Why `name` is no IANA_SVC_NAME, or []."""
    out = []
    if not isinstance(name, str) or not name:
        return ["is empty"]
    if len(name) > 15:
        out.append(f"{name!r} is longer than 15 characters")
    if not IANA_SVC_NAME.match(name):
        out.append(f"{name!r} may hold only a-z, 0-9 and '-', not at either end")
    if "--" in name:
        out.append(f"{name!r} holds '--'")
    if not re.search(r"[a-z]", name):
        out.append(f"{name!r} holds no letter")
    return out


def dns_label_problems(name, rfc1035=False):
    if not isinstance(name, str) or len(name) > 63 or not (DNS1035_LABEL if rfc1035 else DNS1123_LABEL).match(name):
        kind = "a DNS-1035 label (a-z first, then a-z, 0-9, '-'; at most 63)" if rfc1035 else "a DNS-1123 label"
        return [f"{name!r} is not {kind}"]
    return []


def dns_subdomain_problems(name):
    if not isinstance(name, str) or len(name) > 253 or not DNS1123_SUBDOMAIN.match(name):
        return [f"{name!r} is not a DNS-1123 subdomain"]
    return []


def label_value_problems(value):
    if not isinstance(value, str):
        return [f"label value {value!r} is not a string"]
    if len(value) > 63:
        return [f"label value {value!r} is longer than 63 characters"]
    if not LABEL_VALUE.match(value):
        return [f"label value {value!r} must be alphanumerics, '-', '_' or '.', starting and ending alphanumeric"]
    return []


def qualified_name_problems(key):
    """Label and annotation keys: [prefix/]name."""
    if not isinstance(key, str) or not key:
        return [f"key {key!r} is empty"]
    prefix, _, name = key.rpartition("/")
    out = []
    if "/" in key and (not prefix or dns_subdomain_problems(prefix)):
        out.append(f"key {key!r}: prefix {prefix!r} is not a DNS-1123 subdomain")
    if len(name) > 63 or not QUALIFIED_NAME.match(name):
        out.append(f"key {key!r}: name part must be at most 63 alphanumerics, '-', '_' or '.', alphanumeric at both ends")
    return out


# ------------------------------------------------------------ quantities

# resource.Quantity: <sign><digits>[.<digits>][<binarySI>|<decimalSI>|e<int>]
QUANTITY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E|[eE][+-]?\d+)?$")
_SUFFIX = {None: 1, "m": Decimal("0.001"), "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
           "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def quantity(q):
    """The value of a Kubernetes quantity, or None when the API server would refuse it."""
    if isinstance(q, bool):
        return None
    if isinstance(q, (int, float)):
        return Decimal(str(q))
    if not isinstance(q, str):
        return None
    m = QUANTITY.match(q)
    if not m:
        return None
    try:
        num = Decimal(m.group(1))
    except InvalidOperation:
        return None
    suf = m.group(2)
    if suf and suf[0] in "eE" and suf not in _SUFFIX:
        return num * (Decimal(10) ** int(suf[1:]))
    return num * Decimal(_SUFFIX[suf])


def quantity_problems(q, what):
    v = quantity(q)
    if v is None:
        return [f"{what}: {q!r} is not a Kubernetes quantity (like 100m, 128Mi, 1Gi, 0.5)"]
    if v < 0:
        return [f"{what}: {q!r} is negative"]
    return []


# ------------------------------------------------------------ durations

# Go's time.ParseDuration, which Istio's duration fields (and NATS's
# configuration) use: a sequence of <number><unit>, units ns us µs ms s m h.
GO_DURATION = re.compile(r"^[-+]?(?:(?:\d+\.?\d*|\.\d+)(?:ns|us|µs|μs|ms|s|m|h))+$")
_UNIT = {"ns": Decimal("1e-9"), "us": Decimal("1e-6"), "µs": Decimal("1e-6"), "μs": Decimal("1e-6"),
         "ms": Decimal("0.001"), "s": Decimal(1), "m": Decimal(60), "h": Decimal(3600)}


def go_duration(s):
    """Seconds, or None when Go's time.ParseDuration would fail."""
    if not isinstance(s, str):
        return None
    if s in ("0", "+0", "-0"):
        return Decimal(0)
    if not GO_DURATION.match(s):
        return None
    sign = -1 if s.startswith("-") else 1
    total = Decimal(0)
    for num, unit in re.findall(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)", s):
        total += Decimal(num) * _UNIT[unit]
    return sign * total


# rentalbook's own durations (PolicyDuration, plumbing/src/config.rs):
# 14d, 72h, 30s, 250ms.
RENTALBOOK_DURATION = re.compile(r"^(\d+(ns|us|ms|s|m|h|d|w))+$")

# Istio duration fields (protobuf Duration, written as Go durations). The
# webhook wants at least 1ms and whole milliseconds (agent.ValidateDuration).
ISTIO_DURATION_FIELDS = {"timeout", "perTryTimeout", "connectTimeout", "idleTimeout", "maxConnectionDuration",
                         "interval", "baseEjectionTime", "time", "ttl", "fixedDelay", "backoff", "duration",
                         "maxStreamDuration", "drainDuration", "requestTimeout"}
# Fields where 0s means "off" and is accepted.
ISTIO_ZERO_OK = {("tcp", "idleTimeout")}


def istio_duration_problems(value, where, zero_ok=False):
    d = go_duration(value)
    if d is None:
        return [f"{where}: {value!r} is not a duration (Go syntax: 300ms, 2s, 1m30s, 1h)"]
    if zero_ok and d == 0:
        return []
    if d < Decimal("0.001"):
        return [f"{where}: {value!r}: Istio wants at least 1ms"]
    if (d * 1000) % 1 != 0:
        return [f"{where}: {value!r}: Istio takes whole milliseconds only"]
    return []


def istio_durations(obj):
    """Problems with every duration field under an Istio object's spec."""
    out = []

    def walk(v, path, parent):
        if isinstance(v, dict):
            for k, x in v.items():
                p = f"{path}.{k}"
                if k in ISTIO_DURATION_FIELDS and not isinstance(x, (dict, list)):
                    out.extend(istio_duration_problems(x, p, zero_ok=(parent, k) in ISTIO_ZERO_OK))
                else:
                    walk(x, p, k)
        elif isinstance(v, list):
            for i, x in enumerate(v):
                walk(x, f"{path}[{i}]", parent)

    walk(obj.get("spec") or {}, "spec", None)
    return out


# ------------------------------------------------------------ retries

# Envoy's retry conditions for HTTP (x-envoy-retry-on) and gRPC
# (x-envoy-retry-grpc-on), which Istio's webhook accepts in retryOn; it also
# takes an HTTP status code (Go's http.StatusText knows it).
RETRY_ON = {"5xx", "gateway-error", "reset", "reset-before-request", "connect-failure", "envoy-ratelimited",
            "retriable-4xx", "refused-stream", "retriable-status-codes", "retriable-headers",
            "http3-post-connect-failure", "cancelled", "deadline-exceeded", "internal", "resource-exhausted",
            "unavailable"}
GO_HTTP_STATUS = {100, 101, 102, 103, 200, 201, 202, 203, 204, 205, 206, 207, 208, 226, 300, 301, 302, 303, 304, 305,
                  307, 308, 400, 401, 402, 403, 404, 405, 406, 407, 408, 409, 410, 411, 412, 413, 414, 415, 416, 417,
                  418, 421, 422, 423, 424, 425, 426, 428, 429, 431, 451, 500, 501, 502, 503, 504, 505, 506, 507, 508,
                  510, 511}
# The request never reached the service: always safe to send again.
BEFORE_REQUEST = {"connect-failure", "refused-stream", "reset-before-request"}
# Conditions under which Envoy also retries a per-try timeout
# (RetryStateImpl::wouldRetryFromReset: the timeout is a local reset after
# the request started).
RETRIES_PER_TRY_TIMEOUT = {"reset", "5xx", "gateway-error"}
# "Come back later" answers: an immediate retry adds load where there is too
# much (SPEC §5).
NEVER_RETRY = {"resource-exhausted", "retriable-4xx", "envoy-ratelimited"}


def retry_tokens(retries):
    r = (retries or {}).get("retryOn") or ""
    return [t for t in r.split(",")] if r else []


def retry_syntax_problems(retries, where):
    """What Istio's webhook refuses in an HTTPRetry (validateHTTPRetry)."""
    out = []
    if retries is None:
        return out
    attempts = retries.get("attempts", 0)
    if not isinstance(attempts, int) or attempts < 0:
        out.append(f"{where}: retries.attempts {attempts!r} must be a non-negative integer")
    elif attempts == 0 and any(k in retries for k in ("perTryTimeout", "retryOn", "retryRemoteLocalities")):
        out.append(f"{where}: retries with attempts 0 (off) may not set perTryTimeout, retryOn or retryRemoteLocalities")
    for t in retry_tokens(retries):
        if t not in RETRY_ON and not (t.isdigit() and int(t) in GO_HTTP_STATUS):
            out.append(f"{where}: retryOn {t!r} is no Envoy retry condition (nor an HTTP status)")
    return out


def route_retry_problems(route, kind, at_gateway=False):
    """What a route's timeout and retries make Envoy do, against what the
    route is for.

    kind: read (idempotent), internal (idempotent on an id), write (safe to
    repeat with the same request_id), stream, default (catch-all: anything
    else). At the gateway a retry is a second HTTP request to the edge, which
    would call the services again, retries of its own included.
    """
    name = route.get("name")
    out = []
    if "retries" not in route:
        return [f"route {name} does not say its retries (Istio retries every route by default)"]
    retries = route.get("retries") or {}
    attempts = retries.get("attempts", 0)
    tokens = set(retry_tokens(retries))
    timeout = route.get("timeout")
    per_try = retries.get("perTryTimeout")
    if kind in ("stream", "default"):
        if attempts:
            out.append(f"route {name} retries {'a streaming call' if kind == 'stream' else 'calls it knows nothing of'}")
        if kind == "stream" and timeout is not None:
            out.append(f"route {name} puts a timeout on a streaming call (a live stream would be cut)")
        return out
    if attempts < 1:
        out.append(f"route {name} ({kind}) does not retry even what never reached the service "
                   f"({', '.join(sorted(BEFORE_REQUEST))})")
    elif not BEFORE_REQUEST <= tokens:
        out.append(f"route {name} ({kind}) does not retry all of {', '.join(sorted(BEFORE_REQUEST))}, "
                   f"which are always safe (the request never reached the service)")
    if timeout is None:
        out.append(f"route {name} ({kind}) has no timeout")
    for t in sorted(tokens & NEVER_RETRY):
        out.append(f"route {name} retries {t}: a shedding or rate-limited service asked its caller to come back later")
    if attempts and per_try is not None and not tokens & RETRIES_PER_TRY_TIMEOUT:
        out.append(f"route {name}: perTryTimeout {per_try} is final, not retried: Envoy retries a per-try timeout "
                   f"only when retryOn has reset, 5xx or gateway-error")
    if per_try is not None and timeout is not None:
        pt, to = go_duration(per_try), go_duration(timeout)
        if pt is not None and to is not None and pt >= to:
            out.append(f"route {name}: perTryTimeout {per_try} leaves no time for a retry within timeout {timeout}")
    if at_gateway:
        if tokens - BEFORE_REQUEST:
            out.append(f"route {name} at the gateway retries {', '.join(sorted(tokens - BEFORE_REQUEST))}: a request "
                       f"the edge received would be served again, its calls into the mesh retried there once more")
        if per_try is not None:
            out.append(f"route {name} at the gateway has a perTryTimeout: a slow answer would be asked for again")
    elif kind == "write":
        extra = tokens - BEFORE_REQUEST - {"reset"}
        if extra:
            out.append(f"route {name} retries a change on {', '.join(sorted(extra))}: an answer the service chose "
                       f"(such as UNAVAILABLE, 'the desk is busy') is final for a change")
        if per_try is not None:
            out.append(f"route {name} has a perTryTimeout on a change: a slow change would be sent again while it runs")
    return out


# ------------------------------------------------------------ Istio policies

AUTHZ_ATTRIBUTES = re.compile(
    r"^(request\.headers\[.+\]|request\.experimental\.inline\.headers\[.+\]|source\.ip|remote\.ip|source\.namespace|"
    r"source\.serviceAccount|source\.principal|request\.auth\.principal|request\.auth\.audiences|"
    r"request\.auth\.presenter|request\.auth\.claims\[.+\]|destination\.ip|destination\.port|connection\.sni|"
    r"experimental\.envoy\.filters\..+\[.+\])$")
SOURCE_FIELDS = ("principals", "notPrincipals", "requestPrincipals", "notRequestPrincipals", "namespaces",
                 "notNamespaces", "ipBlocks", "notIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks",
                 "serviceAccounts", "notServiceAccounts")
OPERATION_FIELDS = ("hosts", "notHosts", "ports", "notPorts", "methods", "notMethods", "paths", "notPaths")
# What check-manifests' evaluator (authz_allows below) models; a policy using
# anything else would make the computed permissions wrong.
MODELED_SOURCE = {"principals", "notPrincipals", "namespaces", "notNamespaces", "serviceAccounts",
                  "notServiceAccounts"}
MODELED_OPERATION = {"ports", "notPorts", "methods", "notMethods", "paths", "notPaths"}


def _ips_problems(values, what):
    out = []
    for v in values or []:
        try:
            ipaddress.ip_network(v, strict=True) if "/" in v else ipaddress.ip_address(v)
        except ValueError:
            out.append(f"{what}: {v!r} is not an IP address or CIDR range")
    return out


def _path_template_problems(paths, what):
    out = []
    for p in paths or []:
        has_template = "{*}" in p or "{**}" in p
        seen_any = False
        for glob in p.strip("/").split("/"):
            if glob in ("{*}", "{**}"):
                if seen_any:
                    out.append(f"{what}: {p!r}: {{**}} must be the last operator")
                seen_any = seen_any or glob == "{**}"
                continue
            if "{" in glob or "}" in glob:
                out.append(f"{what}: {p!r} holds '{{' or '}}' outside {{*}} and {{**}}")
            elif has_template and not re.match(r"^[a-zA-Z0-9-._~%!$&'()+,;:@=]+$", glob):
                out.append(f"{what}: {p!r}: segment {glob!r} is not a valid literal")
    return out


def authz_problems(o):
    """What Istio's webhook refuses in an AuthorizationPolicy
    (ValidateAuthorizationPolicy), and what check-manifests' evaluator does
    not model."""
    spec = o.get("spec") or {}
    out = []
    action = spec.get("action", "ALLOW")
    if action not in ("ALLOW", "DENY", "AUDIT", "CUSTOM"):
        out.append(f"action {action!r} is none of ALLOW, DENY, AUDIT, CUSTOM")
    sel = spec.get("selector")
    if sum(1 for k in ("selector", "targetRef", "targetRefs") if spec.get(k)) > 1:
        out.append("only one of selector, targetRef and targetRefs may be set")
    for k, v in ((sel or {}).get("matchLabels") or {}).items():
        if not k or "*" in k or "*" in str(v):
            out.append(f"selector {k}={v}: empty keys and wildcards are refused")
    rules = spec.get("rules")
    if action == "CUSTOM":
        if rules is None:
            out.append("CUSTOM without rules is never triggered (Istio refuses it)")
        elif not (spec.get("provider") or {}).get("name"):
            out.append("CUSTOM needs provider.name")
    elif spec.get("provider") is not None:
        out.append(f"provider is only for CUSTOM, not {action}")
    if action == "DENY" and rules is None:
        out.append("DENY without rules is never triggered (Istio refuses it)")
    for i, rule in enumerate(rules or []):
        if rule is None:
            out.append(f"rule {i} is null")
            continue
        if "from" in rule and not rule["from"]:
            out.append(f"rule {i}: `from` is empty")
        for f in rule.get("from") or []:
            src = (f or {}).get("source")
            if not src:
                out.append(f"rule {i}: from.source is missing or empty")
                continue
            for k in SOURCE_FIELDS:
                if k in src and any(v == "" for v in src[k] or []):
                    out.append(f"rule {i}: source.{k} holds an empty value")
            if (any(src.get(k) for k in ("principals", "notPrincipals", "namespaces", "notNamespaces"))
                    and any(src.get(k) for k in ("serviceAccounts", "notServiceAccounts"))):
                out.append(f"rule {i}: serviceAccounts cannot be set with namespaces or principals")
            for k in ("serviceAccounts", "notServiceAccounts"):
                vals = src.get(k) or []
                if len(vals) > 16:
                    out.append(f"rule {i}: source.{k} may hold at most 16 values")
                for v in vals:
                    if "*" in v or v.count("/") > 1 or any(part == "" for part in v.split("/")):
                        out.append(f"rule {i}: source.{k} {v!r} is not 'serviceAccount' or 'namespace/serviceAccount'")
            for k in ("ipBlocks", "notIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks"):
                out.extend(_ips_problems(src.get(k), f"rule {i}: source.{k}"))
            if action == "CUSTOM":
                for k in SOURCE_FIELDS:
                    if src.get(k) and k not in ("ipBlocks", "notIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks"):
                        out.append(f"rule {i}: source.{k} is not supported with CUSTOM")
            for k in src:
                if k not in MODELED_SOURCE:
                    out.append(f"rule {i}: source.{k} is not evaluated by check-manifests, whose permission checks "
                               f"would then be wrong")
        if "to" in rule and not rule["to"]:
            out.append(f"rule {i}: `to` is empty")
        for t in rule.get("to") or []:
            op = (t or {}).get("operation")
            if not op:
                out.append(f"rule {i}: to.operation is missing or empty")
                continue
            for k in OPERATION_FIELDS:
                if k in op and any(v == "" for v in op[k] or []):
                    out.append(f"rule {i}: operation.{k} holds an empty value")
            for k in ("ports", "notPorts"):
                for p in op.get(k) or []:
                    if not (isinstance(p, str) and p.isdigit() and int(p) <= 65535):
                        out.append(f"rule {i}: operation.{k} {p!r} is not a port number (as a string)")
            out.extend(_path_template_problems(op.get("paths"), f"rule {i}: operation.paths"))
            out.extend(_path_template_problems(op.get("notPaths"), f"rule {i}: operation.notPaths"))
            for k in op:
                if k not in MODELED_OPERATION:
                    out.append(f"rule {i}: operation.{k} is not evaluated by check-manifests, whose permission "
                               f"checks would then be wrong")
            for k in ("paths", "notPaths"):
                for p in op.get(k) or []:
                    if "{*}" in p or "{**}" in p or ("*" in p.strip("*")):
                        out.append(f"rule {i}: operation.{k} {p!r}: only exact, prefix* , *suffix and * are "
                                   f"evaluated by check-manifests")
        for c in rule.get("when") or []:
            key = (c or {}).get("key")
            if not key:
                out.append(f"rule {i}: when.key is empty")
            elif not c.get("values") and not c.get("notValues"):
                out.append(f"rule {i}: when {key}: values or notValues must be set")
            elif not AUTHZ_ATTRIBUTES.match(key):
                out.append(f"rule {i}: when {key}: unknown attribute")
        if rule.get("when"):
            out.append(f"rule {i}: `when` is not evaluated by check-manifests, whose permission checks would then "
                       f"be wrong")
    for k in ("targetRef", "targetRefs"):
        if spec.get(k):
            out.append(f"{k} is not evaluated by check-manifests (it models selector only)")
    if action == "CUSTOM":
        out.append("CUSTOM (external authorization) is not evaluated by check-manifests")
    return out


def _istio_value_matches(pattern, value):
    if pattern == "*":
        return True
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    if pattern.startswith("*"):
        return value.endswith(pattern[1:])
    return value == pattern


def _principal_sa(principal):
    m = re.match(r"^[^/]+/ns/([^/]+)/sa/([^/]+)$", principal)
    return (m.group(1), m.group(2)) if m else (None, None)


def _rule_matches(rule, principal, port, path, method, policy_ns=None):
    froms = rule.get("from")
    if froms:
        ok = False
        ns, sa = _principal_sa(principal)

        def sa_listed(values):
            # 'namespace/serviceAccount', or 'serviceAccount' of the policy's namespace
            return any(v == f"{ns}/{sa}" or ("/" not in v and v == sa and ns == policy_ns) for v in values)

        for f in froms:
            src = f.get("source", {})
            if "principals" in src and not any(_istio_value_matches(p, principal) for p in src["principals"]):
                continue
            if "notPrincipals" in src and any(_istio_value_matches(p, principal) for p in src["notPrincipals"]):
                continue
            if "namespaces" in src and not any(_istio_value_matches(p, ns or "") for p in src["namespaces"]):
                continue
            if "notNamespaces" in src and any(_istio_value_matches(p, ns or "") for p in src["notNamespaces"]):
                continue
            if "serviceAccounts" in src and not sa_listed(src["serviceAccounts"]):
                continue
            if "notServiceAccounts" in src and sa_listed(src["notServiceAccounts"]):
                continue
            ok = True
        if not ok:
            return False
    tos = rule.get("to")
    if not tos:
        return True
    for t in tos:
        op = t.get("operation", {})
        if "ports" in op and str(port) not in op["ports"]:
            continue
        if "notPorts" in op and str(port) in op["notPorts"]:
            continue
        if "methods" in op and not any(_istio_value_matches(m, method) for m in op["methods"]):
            continue
        if "notMethods" in op and any(_istio_value_matches(m, method) for m in op["notMethods"]):
            continue
        if "paths" in op and not any(_istio_value_matches(x, path) for x in op["paths"]):
            continue
        if "notPaths" in op and any(_istio_value_matches(x, path) for x in op["notPaths"]):
            continue
        return True
    return False


def authz_allows(policies, workload_labels, principal, port, path, method="POST"):
    """Whether Istio lets `principal` call `method path` on `port` of a
    workload with these labels: a DENY that matches refuses; else, if any
    ALLOW policy selects the workload, one of its rules must match; else the
    request passes. (AUDIT does not decide; CUSTOM is refused by
    authz_problems.) gRPC calls are POSTs."""
    def selects(spec):
        sel = (spec.get("selector") or {}).get("matchLabels")
        return not sel or all(workload_labels.get(k) == v for k, v in sel.items())

    specs = [(o.get("spec") or {}, (o.get("metadata") or {}).get("namespace")) for o in policies]
    for spec, ns in specs:
        if spec.get("action") == "DENY" and selects(spec) and any(
                _rule_matches(r, principal, port, path, method, ns) for r in spec.get("rules") or []):
            return False
    allows = [(s, ns) for s, ns in specs if s.get("action", "ALLOW") == "ALLOW" and selects(s)]
    if not allows:
        return True
    return any(_rule_matches(r, principal, port, path, method, ns) for s, ns in allows for r in s.get("rules") or [])


def istio_traffic_problems(o):
    """What Istio's webhook refuses in DestinationRule traffic policies and
    VirtualService retries, beyond the schema."""
    out = []
    spec = o.get("spec") or {}
    if o.get("kind") == "DestinationRule":
        policies = [spec.get("trafficPolicy") or {}] + [p for p in (spec.get("trafficPolicy") or {}).get(
            "portLevelSettings") or []]
        for tp in policies:
            od = tp.get("outlierDetection") or {}
            if od.get("consecutiveLocalOriginFailures", 0) and not od.get("splitExternalLocalOriginErrors"):
                out.append("outlierDetection.consecutiveLocalOriginFailures needs splitExternalLocalOriginErrors: true")
            for k in ("maxEjectionPercent", "minHealthPercent"):
                if k in od and not 0 <= od[k] <= 100:
                    out.append(f"outlierDetection.{k} {od[k]} is not 0..100")
            http = (tp.get("connectionPool") or {}).get("http") or {}
            for k in ("http1MaxPendingRequests", "http2MaxRequests", "maxRequestsPerConnection", "maxRetries",
                      "maxConcurrentStreams"):
                if http.get(k, 0) < 0:
                    out.append(f"connectionPool.http.{k} is negative")
            if http.get("h2UpgradePolicy") == "UPGRADE" and http.get("useClientProtocol"):
                out.append("connectionPool.http: useClientProtocol must not be true with h2UpgradePolicy UPGRADE")
            tcp = (tp.get("connectionPool") or {}).get("tcp") or {}
            if tcp.get("maxConnections", 0) < 0:
                out.append("connectionPool.tcp.maxConnections is negative")
    if o.get("kind") == "VirtualService":
        for r in spec.get("http") or []:
            out.extend(retry_syntax_problems(r.get("retries"), f"route {r.get('name')}"))
    return out


# ------------------------------------------------------------ ServiceEntry

# Protocols whose server speaks first: Istio's protocol sniffing waits for
# the client to speak, so on these a port declared as HTTP, HTTP2, GRPC (or
# left to sniffing) stalls every connection. Declared TCP (or TLS when the
# client starts with TLS, as smtps:// does), the sidecar passes bytes through.
SERVER_FIRST_PORTS = {25: "SMTP", 465: "SMTP over TLS", 587: "SMTP submission", 4222: "NATS", 5432: "PostgreSQL",
                      3306: "MySQL"}
SERVICE_ENTRY_PROTOCOLS = {"HTTP", "HTTPS", "GRPC", "HTTP2", "MONGO", "TCP", "TLS"}
SERVICE_ENTRY_RESOLUTIONS = {"NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN"}


def service_entry_problems(o):
    """What Istio's webhook refuses in a ServiceEntry beyond the schema
    (validateServiceEntry), and ports that would stall a server-first
    protocol."""
    spec = o.get("spec") or {}
    out = []
    hosts = spec.get("hosts") or []
    resolution = spec.get("resolution", "NONE")
    if not hosts:
        out.append("ServiceEntry: no hosts")
    for h in hosts:
        bare = h[2:] if h.startswith("*.") else h
        if h == "*" or not DNS1123_SUBDOMAIN.match(bare) or len(h) > 253:
            out.append(f"ServiceEntry: host {h!r} is not a fully qualified domain name")
        if h.startswith("*") and resolution in ("DNS", "DNS_ROUND_ROBIN") and not spec.get("endpoints"):
            out.append(f"ServiceEntry: wildcard host {h!r} with resolution {resolution} and no endpoints")
    if resolution not in SERVICE_ENTRY_RESOLUTIONS:
        out.append(f"ServiceEntry: resolution {resolution!r} is none of {', '.join(sorted(SERVICE_ENTRY_RESOLUTIONS))}")
    if spec.get("location", "MESH_EXTERNAL") not in ("MESH_EXTERNAL", "MESH_INTERNAL"):
        out.append(f"ServiceEntry: location {spec.get('location')!r}")
    ports = spec.get("ports") or []
    if not ports:
        out.append("ServiceEntry: no ports")
    names, numbers = set(), set()
    for p in ports:
        num, name, proto = p.get("number"), p.get("name", ""), str(p.get("protocol", "")).upper()
        if not isinstance(num, int) or not 0 < num < 65536:
            out.append(f"ServiceEntry: port number {num!r} is not 1..65535")
        if name in names:
            out.append(f"ServiceEntry: port name {name!r} is used twice")
        if num in numbers:
            out.append(f"ServiceEntry: port {num} is listed twice")
        names.add(name)
        numbers.add(num)
        out += [f"ServiceEntry: port name: {x}" for x in dns_label_problems(name)] if name else [
            "ServiceEntry: a port without a name"]
        if proto not in SERVICE_ENTRY_PROTOCOLS:
            out.append(f"ServiceEntry: port {num} protocol {p.get('protocol')!r} is none of "
                       f"{', '.join(sorted(SERVICE_ENTRY_PROTOCOLS))}")
        elif num in SERVER_FIRST_PORTS and proto not in ("TCP", "TLS"):
            out.append(f"ServiceEntry: port {num} ({SERVER_FIRST_PORTS[num]}, whose server speaks first) is "
                       f"declared {proto}: the sidecar would wait for the client to speak; declare TCP (or TLS)")
    for e in spec.get("exportTo") or []:
        if e not in (".", "*") and dns_label_problems(e):
            out.append(f"ServiceEntry: exportTo {e!r} is neither '.', '*' nor a namespace")
    return out


# ------------------------------------------------------------ settings

def setting_form_problems(name, default, value):
    """A setting given in a ConfigMap has the form of the flag's default as
    `--help` shows it: a rentalbook duration (14d, 30s) where the default is
    one, a whole number where the default is one. Anything else would stop
    the service at its start (a crash loop after a ConfigMap change)."""
    if default is None or value is None:
        return []
    v = str(value).strip()
    if RENTALBOOK_DURATION.match(default) and not RENTALBOOK_DURATION.match(v):
        return [f"{name}={value!r} is not a duration like its default {default} (14d, 72h, 30s, 250ms)"]
    if re.fullmatch(r"\d+", default) and not re.fullmatch(r"\d+", v):
        return [f"{name}={value!r} is not a whole number like its default {default}"]
    return []


# ------------------------------------------------------------ Kubernetes objects

def _selector_problems(sel, what):
    out = []
    for k, v in ((sel or {}).get("matchLabels") or {}).items():
        out += [f"{what}: {p}" for p in qualified_name_problems(k) + label_value_problems(v)]
    for e in (sel or {}).get("matchExpressions") or []:
        out += [f"{what}: {p}" for p in qualified_name_problems(e.get("key"))]
        op = e.get("operator")
        if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            out.append(f"{what}: operator {op!r} is none of In, NotIn, Exists, DoesNotExist")
        vals = e.get("values") or []
        if op in ("In", "NotIn") and not vals:
            out.append(f"{what}: {op} needs values")
        if op in ("Exists", "DoesNotExist") and vals:
            out.append(f"{what}: {op} takes no values")
        for v in vals:
            out += [f"{what}: {p}" for p in label_value_problems(v)]
    return out


def _meta_problems(meta, what):
    out = []
    for k, v in (meta.get("labels") or {}).items():
        out += [f"{what} label: {p}" for p in qualified_name_problems(k) + label_value_problems(v)]
    for k in (meta.get("annotations") or {}):
        out += [f"{what} annotation: {p}" for p in qualified_name_problems(k)]
    return out


def _port_ref_problems(port, what):
    if isinstance(port, bool):
        return [f"{what}: {port!r} is no port"]
    if isinstance(port, int):
        return [] if 1 <= port <= 65535 else [f"{what}: {port} is not 1..65535"]
    if isinstance(port, str):
        return [f"{what}: port name {p}" for p in port_name_problems(port)]
    return [f"{what}: {port!r} is no port"]


def _resources_problems(res, what):
    out = []
    vals = {}
    for part in ("requests", "limits"):
        for name, q in ((res or {}).get(part) or {}).items():
            out.extend(quantity_problems(q, f"{what} resources.{part}.{name}"))
            vals[(part, name)] = quantity(q)
    for (part, name), v in vals.items():
        lim = vals.get(("limits", name))
        if part == "requests" and v is not None and lim is not None and v > lim:
            out.append(f"{what}: resources.requests.{name} is more than its limit")
    return out


def pod_spec_problems(pod, what, claim_templates=()):
    out = []
    vols = set(claim_templates)
    for v in pod.get("volumes") or []:
        out += [f"{what} volume: {p}" for p in dns_label_problems(v.get("name"))]
        vols.add(v.get("name"))
        if "emptyDir" in v and "sizeLimit" in (v["emptyDir"] or {}):
            out.extend(quantity_problems(v["emptyDir"]["sizeLimit"], f"{what} volume {v['name']} sizeLimit"))
    for c in (pod.get("initContainers") or []) + (pod.get("containers") or []):
        cw = f"{what} container {c.get('name')}"
        out += [f"{cw}: name {p}" for p in dns_label_problems(c.get("name"))]
        names = set()
        for p in c.get("ports") or []:
            if "name" in p:
                out += [f"{cw} port {p['name']!r}: {x}" for x in port_name_problems(p["name"])]
                if p["name"] in names:
                    out.append(f"{cw}: port name {p['name']!r} is used twice")
                names.add(p["name"])
            out.extend(_port_ref_problems(p.get("containerPort"), f"{cw} containerPort"))
        for e in c.get("env") or []:
            if not ENV_NAME.match(e.get("name", "")):
                out.append(f"{cw}: env name {e.get('name')!r} is not a valid environment variable name")
        out.extend(_resources_problems(c.get("resources"), cw))
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            pr = c.get(probe) or {}
            for h in ("httpGet", "tcpSocket", "grpc"):
                if h in pr:
                    port = pr[h].get("port")
                    if h == "grpc" and not isinstance(port, int):
                        out.append(f"{cw} {probe}: grpc.port must be a number")
                    out.extend(_port_ref_problems(port, f"{cw} {probe}.{h}.port"))
                    if isinstance(port, str) and port not in names:
                        out.append(f"{cw} {probe}: port {port!r} is no port name of the container")
        for m in c.get("volumeMounts") or []:
            if m.get("name") not in vols:
                out.append(f"{cw}: volumeMount {m.get('name')!r} names no volume")
    for k, v in (pod.get("nodeSelector") or {}).items():
        out += [f"{what} nodeSelector: {p}" for p in qualified_name_problems(k) + label_value_problems(v)]
    return out


def object_problems(o):
    """What the API server refuses in an object although its JSON schema
    accepts it: names, labels, annotation keys, port names, quantities."""
    kind = o.get("kind")
    meta = o.get("metadata") or {}
    name = meta.get("name")
    what = f"{kind}/{name}"
    out = []
    if kind in ("Service",):
        out += [f"{what}: name {p}" for p in dns_label_problems(name, rfc1035=True)]
    elif kind in ("Namespace",):
        out += [f"{what}: name {p}" for p in dns_label_problems(name)]
    else:
        out += [f"{what}: name {p}" for p in dns_subdomain_problems(name)]
    out += _meta_problems(meta, what)
    spec = o.get("spec") or {}
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"):
        out += _selector_problems(spec.get("selector"), f"{what} selector")
        tmpl = spec.get("template") or {}
        out += _meta_problems(tmpl.get("metadata") or {}, f"{what} pod")
        out += pod_spec_problems(tmpl.get("spec") or {}, what,
                                 [t["metadata"]["name"] for t in spec.get("volumeClaimTemplates") or []])
        for t in spec.get("volumeClaimTemplates") or []:
            st = (((t.get("spec") or {}).get("resources") or {}).get("requests") or {}).get("storage")
            if st is not None:
                out.extend(quantity_problems(st, f"{what} volumeClaimTemplate {t['metadata']['name']} storage"))
    if kind == "Service":
        ports = spec.get("ports") or []
        seen = set()
        for p in ports:
            pn = p.get("name")
            if pn is None:
                if len(ports) > 1:
                    out.append(f"{what}: a Service with several ports must name each")
            else:
                out += [f"{what} port: {x}" for x in dns_label_problems(pn)]
                if pn in seen:
                    out.append(f"{what}: port name {pn!r} is used twice")
                seen.add(pn)
            out.extend(_port_ref_problems(p.get("port"), f"{what} port {pn}"))
            if "targetPort" in p:
                out.extend(_port_ref_problems(p["targetPort"], f"{what} port {pn} targetPort"))
        for k, v in (spec.get("selector") or {}).items():
            out += [f"{what} selector: {x}" for x in qualified_name_problems(k) + label_value_problems(v)]
    if kind in ("ConfigMap", "Secret"):
        for k in list((o.get("data") or {})) + list((o.get("stringData") or {})) + list((o.get("binaryData") or {})):
            if len(k) > 253 or not CONFIGMAP_KEY.match(k):
                out.append(f"{what}: key {k!r} is not a valid key (alphanumerics, '-', '_', '.')")
    if kind == "PodDisruptionBudget":
        out += _selector_problems(spec.get("selector"), f"{what} selector")
        for k in ("minAvailable", "maxUnavailable"):
            v = spec.get(k)
            if isinstance(v, str) and not re.fullmatch(r"\d+%", v):
                out.append(f"{what}: {k} {v!r} is neither a number nor a percentage")
    if kind == "HorizontalPodAutoscaler":
        for m in spec.get("metrics") or []:
            for part in m.values():
                if isinstance(part, dict):
                    tgt = part.get("target") or {}
                    for k in ("averageValue", "value"):
                        if k in tgt:
                            out.extend(quantity_problems(tgt[k], f"{what} target.{k}"))
        if spec.get("minReplicas", 1) < 1:
            out.append(f"{what}: minReplicas must be at least 1")
    if kind == "NetworkPolicy":
        out += _selector_problems(spec.get("podSelector"), f"{what} podSelector")
        for t in spec.get("policyTypes") or []:
            if t not in ("Ingress", "Egress"):
                out.append(f"{what}: policyType {t!r} is neither Ingress nor Egress")
        for direction, peers_key in (("ingress", "from"), ("egress", "to")):
            for i, rule in enumerate(spec.get(direction) or []):
                for peer in rule.get(peers_key) or []:
                    out += _selector_problems(peer.get("podSelector"), f"{what} {direction}[{i}] podSelector")
                    out += _selector_problems(peer.get("namespaceSelector"),
                                              f"{what} {direction}[{i}] namespaceSelector")
                    if "ipBlock" in peer:
                        if len(peer) > 1:
                            out.append(f"{what} {direction}[{i}]: ipBlock cannot be combined with selectors")
                        out.extend(_ips_problems([peer["ipBlock"].get("cidr")], f"{what} {direction}[{i}] ipBlock"))
                        out.extend(_ips_problems(peer["ipBlock"].get("except"), f"{what} {direction}[{i}] except"))
                for p in rule.get("ports") or []:
                    if p.get("protocol", "TCP") not in ("TCP", "UDP", "SCTP"):
                        out.append(f"{what} {direction}[{i}]: protocol {p.get('protocol')!r}")
                    if "port" in p:
                        out.extend(_port_ref_problems(p["port"], f"{what} {direction}[{i}] port"))
                    if "endPort" in p and (not isinstance(p.get("port"), int) or p["endPort"] < p["port"]):
                        out.append(f"{what} {direction}[{i}]: endPort needs a numeric port no greater than it")
    return out


# ------------------------------------------------------------ NetworkPolicy

class Peer:
    """A pod (in the checked namespace or elsewhere) or an address outside
    the cluster, with the ports it listens on: (name, number, protocol)."""

    def __init__(self, name, namespace=None, ns_labels=None, labels=None, ports=(), ip=None):
        self.name = name
        self.namespace = namespace
        self.ns_labels = dict(ns_labels or {})
        if namespace:
            self.ns_labels.setdefault("kubernetes.io/metadata.name", namespace)
        self.labels = dict(labels or {})
        self.ports = list(ports)
        self.ip = ip

    @property
    def is_pod(self):
        return self.namespace is not None

    def __repr__(self):
        return self.name


def selector_matches(sel, labels):
    """LabelSelector semantics: {} (or an empty selector) matches everything."""
    sel = sel or {}
    for k, v in (sel.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in sel.get("matchExpressions") or []:
        k, op, vals = e["key"], e["operator"], e.get("values") or []
        if op == "In" and labels.get(k) not in vals:
            return False
        if op == "NotIn" and k in labels and labels[k] in vals:
            return False
        if op == "Exists" and k not in labels:
            return False
        if op == "DoesNotExist" and k in labels:
            return False
    return True


def _policy_types(spec):
    t = spec.get("policyTypes")
    if t:
        return set(t)
    return {"Ingress"} | ({"Egress"} if "egress" in spec else set())


def _peer_matches(peer, policy_ns, other):
    if "ipBlock" in peer:
        if other.is_pod or other.ip is None:
            return False
        ip = ipaddress.ip_address(other.ip)
        if ip not in ipaddress.ip_network(peer["ipBlock"]["cidr"], strict=False):
            return False
        return not any(ip in ipaddress.ip_network(x, strict=False) for x in peer["ipBlock"].get("except") or [])
    if not other.is_pod:
        return False
    if "namespaceSelector" in peer:
        if not selector_matches(peer["namespaceSelector"], other.ns_labels):
            return False
    elif other.namespace != policy_ns:
        return False
    return selector_matches(peer.get("podSelector"), other.labels) if "podSelector" in peer else True


def _ports_match(rule_ports, target, port, protocol):
    if not rule_ports:
        return True
    for p in rule_ports:
        if p.get("protocol", "TCP") != protocol:
            continue
        want = p.get("port")
        if want is None:
            return True
        if isinstance(want, int):
            if want <= port <= p.get("endPort", want):
                return True
        elif any(n == want and num == port and proto == protocol for n, num, proto in target.ports):
            return True
    return False


def np_allows(policies, src, dst, port, protocol="TCP"):
    """Whether a connection from src to dst:port passes the NetworkPolicies
    (all of one namespace): the sender's egress and the receiver's ingress
    must both allow it; a pod no policy isolates in a direction is open in
    that direction. Policies of other namespaces are not known here: their
    pods count as open."""
    def side(owner, direction, key, other):
        if not owner.is_pod:
            return True
        selecting = [o for o in policies if o["metadata"].get("namespace", owner.namespace) == owner.namespace
                     and direction.capitalize() in _policy_types(o.get("spec") or {})
                     and selector_matches((o.get("spec") or {}).get("podSelector"), owner.labels)]
        if not selecting:
            return True
        for o in selecting:
            ns = o["metadata"].get("namespace", owner.namespace)
            for rule in (o.get("spec") or {}).get(direction) or []:
                peers = rule.get(key)
                if peers and not any(_peer_matches(p, ns, other) for p in peers):
                    continue
                if _ports_match(rule.get("ports"), dst, port, protocol):
                    return True
        return False

    in_ns = {o["metadata"].get("namespace") for o in policies}
    src_governed = src.is_pod and src.namespace in in_ns
    dst_governed = dst.is_pod and dst.namespace in in_ns
    return ((not src_governed or side(src, "egress", "to", dst))
            and (not dst_governed or side(dst, "ingress", "from", src)))


def flow_problems(policies, peers, expected):
    """Compares every connection the policies allow between the peers (to
    each port a destination listens on) with the expected set of
    (source name, destination name, port, protocol)."""
    out = []
    governed = {o["metadata"].get("namespace") for o in policies} - {None}
    for src in peers:
        for dst in peers:
            if src is dst or not (src.namespace in governed or dst.namespace in governed):
                continue  # neither end is a pod these policies govern
            for _, port, proto in dst.ports:
                allowed = np_allows(policies, src, dst, port, proto)
                want = (src.name, dst.name, port, proto) in expected
                if allowed and not want:
                    out.append(f"NetworkPolicies let {src.name} reach {dst.name}:{port}/{proto}, which is not in the "
                               f"call graph")
                elif want and not allowed:
                    out.append(f"NetworkPolicies block {src.name} -> {dst.name}:{port}/{proto}, which the call graph "
                               f"needs")
    return out


# ------------------------------------------------------------ autoscaling

def hpa_problems(hpa, target_containers):
    """An HPA that scales on CPU utilisation of requests that are set and
    not so small that background work alone reaches the target at idle."""
    name = hpa["metadata"]["name"]
    out = []
    metrics = hpa["spec"].get("metrics") or []
    if not metrics:
        out.append(f"HorizontalPodAutoscaler/{name}: no metrics (autoscaling/v2 then uses 80% CPU by default)")
    for m in metrics:
        res = m.get("resource") or m.get("containerResource") or {}
        if m.get("type") not in ("Resource", "ContainerResource") or res.get("name") != "cpu":
            out.append(f"HorizontalPodAutoscaler/{name}: scales on {m.get('type')} {res.get('name')}: memory and "
                       f"custom metrics of an idle service do not fall with its load")
            continue
        tgt = res.get("target") or {}
        if tgt.get("type") != "Utilization":
            out.append(f"HorizontalPodAutoscaler/{name}: target type {tgt.get('type')}, not Utilization of the request")
        elif not 50 <= tgt.get("averageUtilization", 0) <= 90:
            out.append(f"HorizontalPodAutoscaler/{name}: averageUtilization {tgt.get('averageUtilization')}% is "
                       f"outside 50..90: a low target scales out on background work")
    for c in target_containers:
        req = quantity(((c.get("resources") or {}).get("requests") or {}).get("cpu"))
        if req is None:
            out.append(f"HorizontalPodAutoscaler/{name}: container {c.get('name')} has no cpu request, so there is "
                       f"no utilisation to scale on")
        elif req < Decimal("0.05"):
            out.append(f"HorizontalPodAutoscaler/{name}: container {c.get('name')} requests {int(req * 1000)}m CPU: "
                       f"idle background work alone would count as load")
    if hpa["spec"].get("minReplicas", 1) > hpa["spec"].get("maxReplicas", 0):
        out.append(f"HorizontalPodAutoscaler/{name}: minReplicas > maxReplicas")
    return out


# ------------------------------------------------------------ NATS

NATS_SIZE = re.compile(r"^(\d+)\s*([a-zA-Z]*)$")
_NATS_UNITS = {"": 1, "k": 10**3, "kb": 2**10, "ki": 2**10, "kib": 2**10, "m": 10**6, "mb": 2**20, "mi": 2**20,
               "mib": 2**20, "g": 10**9, "gb": 2**30, "gi": 2**30, "gib": 2**30, "t": 10**12, "tb": 2**40,
               "ti": 2**40, "tib": 2**40}


def nats_size(s):
    """Bytes of a NATS configuration size (8GB = 8 GiB, 8G = 8e9), or None."""
    m = NATS_SIZE.match(str(s).strip())
    if not m or m.group(2).lower() not in _NATS_UNITS:
        return None
    return int(m.group(1)) * _NATS_UNITS[m.group(2).lower()]


def nats_storage_problems(max_file_store, volume, max_memory_store=None, memory_limit=None, share=Decimal("0.8")):
    out = []
    fs = nats_size(max_file_store)
    vol = quantity(volume)
    if fs is None:
        out.append(f"max_file_store {max_file_store!r} is not a NATS size (like 8GB)")
    if vol is None:
        out.append(f"volume {volume!r} is not a quantity")
    if fs is not None and vol is not None and fs > vol * share:
        out.append(f"max_file_store {max_file_store} is more than {int(share * 100)}% of the {volume} volume: the "
                   f"disk fills before JetStream's limit refuses new events")
    if max_memory_store is not None:
        ms = nats_size(max_memory_store)
        lim = quantity(memory_limit) if memory_limit is not None else None
        if ms is None:
            out.append(f"max_memory_store {max_memory_store!r} is not a NATS size")
        elif lim is not None and ms >= lim:
            out.append(f"max_memory_store {max_memory_store} does not fit in the container's memory limit "
                       f"{memory_limit}")
    return out


# ------------------------------------------------------------ OpenTelemetry

def otel_problems(deployment_name, container, want_endpoint, services):
    """OTEL_SERVICE_NAME names the Deployment; OTEL_EXPORTER_OTLP_ENDPOINT,
    when set (it must be when want_endpoint), is http(s)://<Service>:<port>
    of a gRPC port (the services export with OTLP/gRPC, tonic). services:
    {name: {port: port name}}."""
    env = {e["name"]: e for e in container.get("env") or []}
    where = f"Deployment/{deployment_name}"
    out = []
    sn = env.get("OTEL_SERVICE_NAME", {}).get("value")
    if sn is None:
        out.append(f"{where}: no OTEL_SERVICE_NAME: its spans would say unknown_service")
    elif sn != deployment_name:
        out.append(f"{where}: OTEL_SERVICE_NAME is {sn!r}, not its own name")
    ep = env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if ep is None:
        if want_endpoint:
            out.append(f"{where}: no OTEL_EXPORTER_OTLP_ENDPOINT, so its spans stay in the process")
        return out
    v = ep.get("value", "")
    m = re.match(r"^(https?)://([a-z0-9.-]+):(\d+)/?$", v)
    if not m:
        out.append(f"{where}: OTEL_EXPORTER_OTLP_ENDPOINT {v!r} is not http(s)://<host>:<port>")
        return out
    host, port = m.group(2), int(m.group(3))
    svc = host.split(".")[0]
    if svc not in services or port not in services[svc]:
        out.append(f"{where}: OTEL_EXPORTER_OTLP_ENDPOINT {v} names no Service port")
    elif not services[svc][port].startswith("grpc"):
        out.append(f"{where}: OTEL_EXPORTER_OTLP_ENDPOINT {v} is not a gRPC port (the exporter speaks OTLP/gRPC)")
    return out


# ------------------------------------------------------------ self-test

def _vs(route):
    return {"kind": "VirtualService", "metadata": {"name": "x"}, "spec": {"http": [route]}}


def _deploy(**container):
    c = {"name": "app", "image": "rentalbook:1"}
    c.update(container)
    return {"kind": "Deployment", "metadata": {"name": "app"},
            "spec": {"selector": {"matchLabels": {"app": "app"}},
                     "template": {"metadata": {"labels": {"app": "app"}}, "spec": {"containers": [c]}}}}


def _authz(spec):
    return {"kind": "AuthorizationPolicy", "metadata": {"name": "p"}, "spec": spec}


GOOD_READ = {"name": "reads", "timeout": "5s", "retries": {
    "attempts": 2, "perTryTimeout": "2s",
    "retryOn": "connect-failure,refused-stream,reset-before-request,reset,unavailable,cancelled"}}
GOOD_WRITE = {"name": "writes", "timeout": "10s", "retries": {
    "attempts": 2, "retryOn": "connect-failure,refused-stream,reset-before-request,reset"}}
GOOD_GATEWAY = {"name": "reads", "timeout": "12s", "retries": {
    "attempts": 2, "retryOn": "connect-failure,refused-stream,reset-before-request"}}


def _np(name, spec):
    return {"kind": "NetworkPolicy", "metadata": {"name": name, "namespace": "ns"}, "spec": spec}


def _np_world():
    a = Peer("a", "ns", labels={"app": "a"}, ports=[("grpc", 8080, "TCP")])
    b = Peer("b", "ns", labels={"app": "b"}, ports=[("grpc", 8081, "TCP")])
    out = Peer("outside", "other", labels={"app": "a"}, ports=[("grpc", 8080, "TCP")])
    deny = _np("deny", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]})
    a_to_b = _np("a", {"podSelector": {"matchLabels": {"app": "a"}}, "policyTypes": ["Egress"],
                       "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "b"}}}],
                                   "ports": [{"port": 8081}]}]})
    b_from_a = _np("b", {"podSelector": {"matchLabels": {"app": "b"}}, "policyTypes": ["Ingress"],
                         "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "a"}}}],
                                      "ports": [{"port": "grpc"}]}]})
    return [a, b, out], deny, a_to_b, b_from_a


def _cases():
    """(what, problems found for a bad example, problems found for a good one)."""
    peers, deny, a_to_b, b_from_a = _np_world()
    want = {("a", "b", 8081, "TCP")}
    too_open = _np("b", {"podSelector": {"matchLabels": {"app": "b"}}, "policyTypes": ["Ingress"],
                         "ingress": [{"from": [{"namespaceSelector": {}}]}]})
    cpu = lambda req: [{"name": "c", "resources": {"requests": {"cpu": req}}}]  # noqa: E731
    hpa = lambda metrics: {"metadata": {"name": "h"}, "spec": {"minReplicas": 2, "maxReplicas": 4,  # noqa: E731
                                                             "metrics": metrics}}
    cpu70 = [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization",
                                                                          "averageUtilization": 70}}}]
    svcs = {"otel-collector": {4317: "grpc-otlp"}}
    otel = lambda **env: {"env": [{"name": k, "value": v} for k, v in env.items()]}  # noqa: E731
    return [
        ("Istio duration '30 seconds'",
         istio_durations(_vs({"name": "r", "timeout": "30 seconds"})),
         istio_durations(_vs({"name": "r", "timeout": "30s"}))),
        ("Istio duration '1d' (Go has no days)",
         istio_durations(_vs({"name": "r", "retries": {"perTryTimeout": "1d"}})),
         istio_durations(_vs({"name": "r", "retries": {"perTryTimeout": "1h30m"}}))),
        ("Istio route timeout 0s (the webhook wants at least 1ms)",
         istio_durations(_vs({"name": "r", "timeout": "0s"})),
         istio_durations({"spec": {"trafficPolicy": {"connectionPool": {"tcp": {"idleTimeout": "0s"}}}}})),
        ("Istio duration finer than a millisecond",
         istio_durations({"spec": {"trafficPolicy": {"outlierDetection": {"interval": "1500us"}}}}),
         istio_durations({"spec": {"trafficPolicy": {"outlierDetection": {"interval": "1500ms"}}}})),
        ("unknown retryOn token",
         retry_syntax_problems({"attempts": 2, "retryOn": "5xx,retriable-5xx"}, "r"),
         retry_syntax_problems({"attempts": 2, "retryOn": "5xx,503,deadline-exceeded"}, "r")),
        ("retryOn with a space after the comma",
         retry_syntax_problems({"attempts": 2, "retryOn": "reset, unavailable"}, "r"),
         retry_syntax_problems({"attempts": 2, "retryOn": "reset,unavailable"}, "r")),
        ("retries off but retryOn set",
         retry_syntax_problems({"attempts": 0, "retryOn": "reset"}, "r"),
         retry_syntax_problems({"attempts": 0}, "r")),
        ("per-try timeout without reset/5xx/gateway-error",
         route_retry_problems({"name": "reads", "timeout": "5s", "retries": {
             "attempts": 2, "perTryTimeout": "2s",
             "retryOn": "connect-failure,refused-stream,reset-before-request,unavailable"}}, "read"),
         route_retry_problems(GOOD_READ, "read")),
        ("write without the always-safe retries",
         route_retry_problems({"name": "writes", "timeout": "10s", "retries": {"attempts": 0}}, "write"),
         route_retry_problems(GOOD_WRITE, "write")),
        ("write retried on UNAVAILABLE",
         route_retry_problems({"name": "writes", "timeout": "10s", "retries": {
             "attempts": 2, "retryOn": "connect-failure,refused-stream,reset-before-request,unavailable"}}, "write"),
         route_retry_problems(GOOD_WRITE, "write")),
        ("write with a per-try timeout",
         route_retry_problems({"name": "writes", "timeout": "10s", "retries": {
             "attempts": 2, "perTryTimeout": "2s",
             "retryOn": "connect-failure,refused-stream,reset-before-request,reset"}}, "write"),
         route_retry_problems(GOOD_WRITE, "write")),
        ("read retried on RESOURCE_EXHAUSTED",
         route_retry_problems({"name": "reads", "timeout": "5s", "retries": {
             "attempts": 2, "retryOn": "connect-failure,refused-stream,reset-before-request,resource-exhausted"}},
             "read"),
         route_retry_problems(GOOD_READ, "read")),
        ("GET retried at the gateway and again in the mesh",
         route_retry_problems({"name": "reads", "timeout": "12s", "retries": {
             "attempts": 2, "perTryTimeout": "4s",
             "retryOn": "gateway-error,connect-failure,refused-stream,reset-before-request"}}, "read", True),
         route_retry_problems(GOOD_GATEWAY, "read", True)),
        ("stream with a timeout",
         route_retry_problems({"name": "watch", "timeout": "30s", "retries": {"attempts": 0}}, "stream"),
         route_retry_problems({"name": "watch", "retries": {"attempts": 0}}, "stream")),
        ("container port name over 15 characters",
         object_problems(_deploy(ports=[{"name": "http-metrics-port", "containerPort": 9090}])),
         object_problems(_deploy(ports=[{"name": "http-metrics", "containerPort": 9090}]))),
        ("container port name with '--' and no letter",
         object_problems(_deploy(ports=[{"name": "a--b", "containerPort": 1}, {"name": "8080", "containerPort": 2}])),
         object_problems(_deploy(ports=[{"name": "a-b", "containerPort": 1}]))),
        ("Service port name that is no DNS label, targetPort name over 15",
         object_problems({"kind": "Service", "metadata": {"name": "s"}, "spec": {"ports": [
             {"name": "gRPC", "port": 80, "targetPort": "grpc-service-port"}, {"name": "http", "port": 81}]}}),
         object_problems({"kind": "Service", "metadata": {"name": "s"}, "spec": {"ports": [
             {"name": "grpc", "port": 80, "targetPort": "grpc"}, {"name": "http", "port": 81}]}})),
        ("probe on a port name the container does not have",
         object_problems(_deploy(ports=[{"name": "http", "containerPort": 80}],
                                 livenessProbe={"httpGet": {"path": "/", "port": "htp"}})),
         object_problems(_deploy(ports=[{"name": "http", "containerPort": 80}],
                                 livenessProbe={"httpGet": {"path": "/", "port": "http"}}))),
        ("resource quantities '100 m', '1GB', '-1'",
         object_problems(_deploy(resources={"requests": {"cpu": "100 m", "memory": "1GB"},
                                            "limits": {"cpu": "-1"}})),
         object_problems(_deploy(resources={"requests": {"cpu": "100m", "memory": "1G"},
                                            "limits": {"cpu": 1.5, "memory": "2Gi"}}))),
        ("request above its limit",
         object_problems(_deploy(resources={"requests": {"memory": "1Gi"}, "limits": {"memory": "512Mi"}})),
         object_problems(_deploy(resources={"requests": {"memory": "512Mi"}, "limits": {"memory": "1Gi"}}))),
        ("label values: too long, bad first character, space",
         object_problems({"kind": "ConfigMap", "metadata": {"name": "c", "labels": {
             "a": "x" * 64, "b": "-x", "c": "has space"}}}),
         object_problems({"kind": "ConfigMap", "metadata": {"name": "c", "labels": {
             "app.kubernetes.io/part-of": "rentalbook", "b": "x_y.z-1", "c": ""}}})),
        ("label key with a bad prefix, selector value too long",
         object_problems({"kind": "PodDisruptionBudget", "metadata": {"name": "p", "labels": {"Bad_Prefix/x": "y"}},
                          "spec": {"selector": {"matchLabels": {"app": "y" * 70}}}}),
         object_problems({"kind": "PodDisruptionBudget", "metadata": {"name": "p", "labels": {"example.org/x": "y"}},
                          "spec": {"selector": {"matchLabels": {"app": "y"}}}})),
        ("AuthorizationPolicy: DENY without rules, provider without CUSTOM",
         authz_problems(_authz({"action": "DENY", "provider": {"name": "x"}})),
         authz_problems(_authz({}))),
        ("AuthorizationPolicy: empty source, bad port, bad path template, unknown when key",
         authz_problems(_authz({"rules": [{"from": [{"source": {}}], "to": [{"operation": {
             "ports": ["80a"], "paths": ["/{**}/x/{*}"]}}], "when": [{"key": "request.colour", "values": ["x"]}]}]})),
         authz_problems(_authz({"rules": [{"from": [{"source": {"principals": ["cluster.local/ns/a/sa/b"]}}],
                                           "to": [{"operation": {"ports": ["80"], "paths": ["/x/*"]}}]}]}))),
        ("AuthorizationPolicy fields the evaluator does not model",
         authz_problems(_authz({"rules": [{"from": [{"source": {"requestPrincipals": ["*"], "ipBlocks": ["10.0.0.0/8"]}}],
                                           "to": [{"operation": {"hosts": ["a.example.org"]}}]}]})),
         authz_problems(_authz({"rules": [{"from": [{"source": {"namespaces": ["a"], "notPrincipals": ["x"]}}],
                                           "to": [{"operation": {"methods": ["GET"], "notPaths": ["/metrics"]}}]}]}))),
        ("AuthorizationPolicy: serviceAccounts with principals, bad CIDR",
         authz_problems(_authz({"rules": [{"from": [{"source": {"serviceAccounts": ["a/b"], "principals": ["x"]}},
                                                    {"source": {"notIpBlocks": ["10.0.0.300/8"]}}]}]})),
         authz_problems(_authz({"rules": [{"from": [{"source": {"serviceAccounts": ["a/b"]}}]}]}))),
        ("evaluator: a POST outside a GET-only rule, and a request a DENY matches, are refused",
         ["refused"] if not authz_allows([_authz({"rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]})],
                                         {}, "cluster.local/ns/a/sa/b", 80, "/x", "POST")
         and not authz_allows([_authz({"rules": [{}]}), _authz({"action": "DENY", "rules": [{}]})],
                              {}, "cluster.local/ns/a/sa/b", 80, "/x") else [],
         [] if authz_allows([_authz({"rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]})],
                            {}, "cluster.local/ns/a/sa/b", 80, "/x", "GET") else ["GET refused"]),
        ("DestinationRule: local-origin failures without the split",
         istio_traffic_problems({"kind": "DestinationRule", "spec": {"trafficPolicy": {"outlierDetection": {
             "consecutiveLocalOriginFailures": 5}}}}),
         istio_traffic_problems({"kind": "DestinationRule", "spec": {"trafficPolicy": {"outlierDetection": {
             "consecutiveLocalOriginFailures": 5, "splitExternalLocalOriginErrors": True}}}})),
        ("NetworkPolicy without the call's ingress side",
         flow_problems([deny, a_to_b], peers, want),
         flow_problems([deny, a_to_b, b_from_a], peers, want)),
        ("NetworkPolicy open to every namespace",
         flow_problems([deny, a_to_b, too_open], peers, want),
         flow_problems([deny, a_to_b, b_from_a], peers, want)),
        ("NetworkPolicy port name that is no IANA_SVC_NAME",
         object_problems(_np("x", {"podSelector": {}, "ingress": [{"ports": [{"port": "metrics-port-of-app"}]}]})),
         object_problems(_np("x", {"podSelector": {}, "ingress": [{"ports": [{"port": "http-metrics"}]}]}))),
        ("HPA on memory, and on a low CPU target",
         hpa_problems(hpa([{"type": "Resource", "resource": {"name": "memory", "target": {
             "type": "Utilization", "averageUtilization": 70}}}]), cpu("100m"))
         + hpa_problems(hpa([{"type": "Resource", "resource": {"name": "cpu", "target": {
             "type": "Utilization", "averageUtilization": 20}}}]), cpu("100m")),
         hpa_problems(hpa(cpu70), cpu("100m"))),
        ("HPA over a 10m CPU request",
         hpa_problems(hpa(cpu70), cpu("10m")),
         hpa_problems(hpa(cpu70), cpu("250m"))),
        ("NATS file store larger than 80% of its volume",
         nats_storage_problems("10GB", "10Gi", "2GB", "1Gi"),
         nats_storage_problems("8GB", "10Gi", "256MB", "1Gi")),
        ("ServiceEntry: SMTP declared HTTP, wildcard host resolved by DNS, a port twice",
         service_entry_problems({"kind": "ServiceEntry", "spec": {
             "hosts": ["*.example.org"], "location": "MESH_EXTERNAL", "resolution": "DNS",
             "ports": [{"number": 587, "name": "http-smtp", "protocol": "HTTP"},
                       {"number": 587, "name": "http-smtp", "protocol": "TCP"}]}}),
         service_entry_problems({"kind": "ServiceEntry", "spec": {
             "hosts": ["smtp.example.org"], "location": "MESH_EXTERNAL", "resolution": "DNS",
             "ports": [{"number": 587, "name": "tcp-smtp", "protocol": "TCP"}], "exportTo": ["."]}})),
        ("ServiceEntry: host that is no domain name, protocol Istio does not know",
         service_entry_problems({"kind": "ServiceEntry", "spec": {
             "hosts": ["SMTP server"], "resolution": "DNS",
             "ports": [{"number": 465, "name": "smtps", "protocol": "SMTPS"}]}}),
         service_entry_problems({"kind": "ServiceEntry", "spec": {
             "hosts": ["smtp.example.org"], "resolution": "DNS",
             "ports": [{"number": 465, "name": "tls-smtps", "protocol": "TLS"}]}})),
        ("a ConfigMap setting not in the form of its default",
         setting_form_problems("HISTORY_RETENTION", "90d", "90 days")
         + setting_form_problems("MAX_RENEWALS", "2", "two"),
         setting_form_problems("HISTORY_RETENTION", "90d", "30d")
         + setting_form_problems("MAX_RENEWALS", "2", "3")
         + setting_form_problems("LIBRARY_NAME", "The library", "Mapo Library")),
        ("OTEL_SERVICE_NAME missing, endpoint without a scheme",
         otel_problems("app", otel(OTEL_EXPORTER_OTLP_ENDPOINT="otel-collector:4317"), True, svcs),
         otel_problems("app", otel(OTEL_SERVICE_NAME="app", OTEL_EXPORTER_OTLP_ENDPOINT="http://otel-collector:4317"),
                       True, svcs)),
        ("OTEL_SERVICE_NAME of another Deployment, endpoint on no Service",
         otel_problems("app", otel(OTEL_SERVICE_NAME="edge", OTEL_EXPORTER_OTLP_ENDPOINT="http://jaeger:4317"),
                       False, svcs),
         otel_problems("app", otel(OTEL_SERVICE_NAME="app"), False, svcs)),
    ]


def self_test():
    """Failures of the rules on their own examples: each bad example must
    be rejected, each good one accepted."""
    failures = []
    for what, bad, good in _cases():
        if not bad:
            failures.append(f"self-test: accepted the bad example: {what}")
        if good:
            failures.append(f"self-test: rejected the good example of {what}: {good}")
    return failures, len(_cases())


if __name__ == "__main__":
    import sys
    fails, n = self_test()
    for f in fails:
        print(f)
    print(f"manifest_rules self-test: {n - len(fails)}/{n} cases hold")
    sys.exit(1 if fails else 0)
