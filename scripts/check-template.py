#!/usr/bin/env python3
"""Checks template.yaml for the invariants cfn-lint cannot know about.

Usage: scripts/check-template.py [TEMPLATE]   (default: template.yaml next to scripts/)

Run by scripts/lint-template after cfn-lint and `sam validate --lint`. Needs cfn-lint's Python package (it
reads the template with cfn-lint's own YAML loader, which turns !Ref, !If, !Sub ... into their long forms);
scripts/test installs it into .venv. Offline; no AWS account needed.

It proves, by reading the template and by evaluating its conditions and rules for sample parameter values:
- the receiver's ReservedConcurrentExecutions is ReceiverReservedConcurrency, left out when it is 0;
- the receiver throttles, signature mismatch, nothing-enqueued and (conditional) silence alarms watch the
  metrics and dimensions the functions publish, and notify AlarmTopic on ALARM and OK;
- the client secret and the notify webhook URL reach the functions either as a value or as the name of a
  Parameter Store parameter, each environment variable set only when its template parameter is given, and
  the Rules allow exactly one client secret source and at most one webhook URL source;
- the function that reads a parameter may call exactly ssm:GetParameter on exactly that parameter's ARN, in a
  statement that exists only when the parameter is given; no other statement anywhere grants ssm actions;
- the mirror table exists exactly when EnableMirror is "true", is on-demand, encrypted and point-in-time
  recoverable, and has the key src/aws/mirror.rs uses, and the index by_type exactly when MirrorIndex is
  "true"; the worker gets MIRROR_TABLE from it and may call exactly PutItem, GetItem and UpdateItem on
  exactly that table, in a statement that exists only with it; no other statement anywhere names the table
  or grants dynamodb actions on every resource;
- with an EventBus (none, default, create), the worker alone may call exactly events:PutEvents on exactly that
  bus, EVENT_BUS_NAME names it, the example rule and its queue exist only with it, a failed-entries alarm;
- the reconciler exists exactly when ReconcileSchedule is given (a rule then requires the token parameter),
  runs on that schedule, and may call exactly sqs:SendMessage on the queue, GetItem / UpdateItem on the
  idempotency table and ssm:GetParameter on the token parameter, nothing else.

Prints one line per check and a last line `N passed, M failed`; exits 1 when any check failed.
"""

import os
import re
import sys

try:
    from cfnlint.decode import decode
except ImportError:  # pragma: no cover - depends on the environment
    sys.exit("check-template: cfn-lint's Python package is not importable; run through scripts/lint-template "
             "(it needs .venv/bin on PATH, as scripts/test sets it)")

NO_VALUE = {"Ref": "AWS::NoValue"}
ALARM_TOPIC = {"Ref": "AlarmTopic"}


class CheckFailed(Exception):
    pass


def expect(ok, message):
    if not ok:
        raise CheckFailed(message)


def plain(x):
    """cfn-lint's nodes (dict_node, str_node, ...) as plain Python values."""
    if isinstance(x, dict):
        return {str(k): plain(v) for k, v in x.items()}
    if isinstance(x, list):
        return [plain(v) for v in x]
    if isinstance(x, str):
        return str(x)
    return x


class Template:
    def __init__(self, data):
        self.data = data
        self.params = data.get("Parameters", {})
        self.conditions = data.get("Conditions", {})
        self.rules = data.get("Rules", {})
        self.resources = data.get("Resources", {})

    def resource(self, name, type_=None):
        expect(name in self.resources, f"resource {name} is missing")
        r = self.resources[name]
        if type_:
            expect(r.get("Type") == type_, f"{name} is {r.get('Type')}, not {type_}")
        return r

    def props(self, name, type_=None):
        return self.resource(name, type_).get("Properties", {})

    def param(self, name):
        expect(name in self.params, f"parameter {name} is missing")
        return self.params[name]

    def defaults(self, **overrides):
        values = {k: str(v.get("Default", "")) for k, v in self.params.items()}
        for k, v in overrides.items():
            expect(k in self.params, f"parameter {k} is missing")
            values[k] = str(v)
        return values

    # A small evaluator for the condition functions CloudFormation allows in Conditions and Rules.
    def ev(self, expr, values):
        if isinstance(expr, (str, int, float)) and not isinstance(expr, bool):
            return str(expr)
        if isinstance(expr, bool):
            return expr
        expect(isinstance(expr, dict) and len(expr) == 1, f"cannot evaluate {expr!r}")
        (fn, arg), = expr.items()
        if fn == "Ref":
            expect(arg in values, f"Ref to unknown parameter {arg}")
            return values[arg]
        if fn == "Condition":
            expect(arg in self.conditions, f"condition {arg} is missing")
            return self.ev(self.conditions[arg], values)
        if fn == "Fn::Equals":
            a, b = (self.ev(x, values) for x in arg)
            return str(a) == str(b)
        if fn == "Fn::Not":
            (x,) = arg
            return not self.ev(x, values)
        if fn == "Fn::And":
            return all(self.ev(x, values) for x in arg)
        if fn == "Fn::Or":
            return any(self.ev(x, values) for x in arg)
        raise CheckFailed(f"cannot evaluate {fn}")

    def cond(self, name, **overrides):
        expect(name in self.conditions, f"condition {name} is missing")
        return bool(self.ev(self.conditions[name], self.defaults(**overrides)))

    def rules_hold(self, **overrides):
        values = self.defaults(**overrides)
        for rule in self.rules.values():
            if "RuleCondition" in rule and not self.ev(rule["RuleCondition"], values):
                continue
            for assertion in rule.get("Assertions", []):
                if not self.ev(assertion["Assert"], values):
                    return False
        return True


def if_parts(x):
    """(condition, when true, when false) of an Fn::If, or None."""
    if isinstance(x, dict) and list(x) == ["Fn::If"] and isinstance(x["Fn::If"], list) and len(x["Fn::If"]) == 3:
        return tuple(x["Fn::If"])
    return None


def tied_to(t, cond, param, on_values, off_values):
    """The condition is true for every value in on_values of param and false for every one in off_values."""
    for v in on_values:
        expect(t.cond(cond, **{param: v}), f"condition {cond} is false when {param}={v!r}")
    for v in off_values:
        expect(not t.cond(cond, **{param: v}), f"condition {cond} is true when {param}={v!r}")


def conditional_on(t, value, param, what, on_value):
    """value is !If [C, then, AWS::NoValue] with C true exactly when param is non-empty; returns `then`."""
    parts = if_parts(value)
    expect(parts is not None, f"{what} is not conditional (!If [..., ..., !Ref AWS::NoValue]): {value!r}")
    cond, then, otherwise = parts
    expect(otherwise == NO_VALUE, f"{what}: the false branch of !If is {otherwise!r}, not !Ref AWS::NoValue")
    tied_to(t, cond, param, [on_value], [""])
    return then


def notifies_alarm_topic(props, name):
    for key in ("AlarmActions", "OKActions"):
        expect(ALARM_TOPIC in (props.get(key) or []), f"{name}: {key} does not include !Ref AlarmTopic")


def dims(d):
    return {x["Name"]: x["Value"] for x in d or []}


def check_alarm(props, name, want):
    for key, value in want.items():
        got = props.get(key)
        if key == "Dimensions":
            expect(len(got or []) == len(value) and dims(got) == value,
                   f"{name}: Dimensions are {dims(got)}, expected exactly {value}")
        else:
            expect(str(got) == str(value) if not isinstance(value, dict) else got == value,
                   f"{name}: {key} is {got!r}, expected {value!r}")
    notifies_alarm_topic(props, name)


def json_text(x):
    """A node as text, for checks that only need to know what it mentions."""
    import json
    return json.dumps(x, sort_keys=True, default=str)


def pattern_accepts(t, param, good, bad):
    p = t.param(param).get("AllowedPattern")
    expect(p is not None, f"{param} has no AllowedPattern")
    for v in good:
        expect(re.fullmatch(p, v), f"{param}'s AllowedPattern {p!r} refuses {v!r}")
    for v in bad:
        expect(not re.fullmatch(p, v), f"{param}'s AllowedPattern {p!r} accepts {v!r}")


def function_env(t, fn):
    return t.props(fn, "AWS::Serverless::Function").get("Environment", {}).get("Variables", {})


PARAMETER_ARN = "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter${%s}"


def grants_ssm(action):
    actions = action if isinstance(action, list) else [action]
    return any(isinstance(a, str) and (a == "*" or a.lower().startswith("ssm:")) for a in actions)


def ssm_statements(node, path, found, under_if=None):
    """Every IAM statement under node whose Action (or NotAction) can grant an ssm action."""
    if isinstance(node, list):
        for i, x in enumerate(node):
            ssm_statements(x, f"{path}[{i}]", found, under_if)
    elif isinstance(node, dict):
        parts = if_parts(node)
        if parts is not None:
            cond, a, b = parts
            ssm_statements(a, f"{path}(if {cond})", found, (cond, True, b))
            ssm_statements(b, f"{path}(unless {cond})", found, (cond, False, a))
            return
        if "Effect" in node and ("Action" in node or "NotAction" in node):
            if grants_ssm(node.get("Action")) or "NotAction" in node:
                found.append((path, node, under_if))
            return
        for k, v in node.items():
            ssm_statements(v, f"{path}.{k}", found, under_if)


def iam_statements(node, path, found, under_if=None):
    """Every IAM statement under node: (path, statement, (condition, branch taken, other branch) or None)."""
    if isinstance(node, list):
        for i, x in enumerate(node):
            iam_statements(x, f"{path}[{i}]", found, under_if)
    elif isinstance(node, dict):
        parts = if_parts(node)
        if parts is not None:
            cond, a, b = parts
            iam_statements(a, f"{path}(if {cond})", found, (cond, True, b))
            iam_statements(b, f"{path}(unless {cond})", found, (cond, False, a))
            return
        if "Effect" in node and ("Action" in node or "NotAction" in node):
            found.append((path, node, under_if))
            return
        for k, v in node.items():
            iam_statements(v, f"{path}.{k}", found, under_if)


def names_resource(node, name):
    """Whether node refers to resource `name` (Ref, GetAtt in either form, or ${name...} in a Sub)."""
    if isinstance(node, list):
        return any(names_resource(x, name) for x in node)
    if isinstance(node, dict):
        if node.get("Ref") == name:
            return True
        att = node.get("Fn::GetAtt")
        if (isinstance(att, list) and att and att[0] == name) or (isinstance(att, str) and att.split(".")[0] == name):
            return True
        sub = node.get("Fn::Sub")
        text = sub[0] if isinstance(sub, list) and sub else sub
        if isinstance(text, str) and re.search(r"\$\{%s[.}]" % re.escape(name), text):
            return True
        return any(names_resource(v, name) for v in node.values())
    return False


def arn_of(value, name):
    return value in ({"Fn::GetAtt": [name, "Arn"]}, {"Fn::GetAtt": f"{name}.Arn"})


def same_condition(t, cond, other, param, values):
    """Conditions cond and other agree for every value of param in values."""
    for v in values:
        a, b = t.cond(cond, **{param: v}), t.cond(other, **{param: v})
        expect(a == b, f"condition {cond} is {a} but {other} is {b} when {param}={v!r}")


def check_ssm_grant(t, found, role, function, param, sid_hint):
    expect(t.props(function).get("Role") == {"Fn::GetAtt": [role, "Arn"]} or
           t.props(function).get("Role") == {"Fn::GetAtt": f"{role}.Arn"},
           f"{function} does not run as {role}")
    mine = [f for f in found if f[0].startswith(f"{role}.") and "${%s}" % param in json_text(f[1].get("Resource"))]
    expect(len(mine) == 1, f"{role} has {len(mine)} statements granting ssm actions on {param}, expected exactly 1 "
                           f"({sid_hint})")
    path, stmt, under_if = mine[0]
    expect(under_if is not None and under_if[1] and under_if[2] == NO_VALUE,
           f"{path}: the ssm statement is not inside !If [condition, statement, !Ref AWS::NoValue]")
    tied_to(t, under_if[0], param, ["/intercom-webhooks/example"], [""])
    expect(stmt.get("Effect") == "Allow", f"{path}: Effect is {stmt.get('Effect')!r}")
    action = stmt.get("Action")
    expect(action in ("ssm:GetParameter", ["ssm:GetParameter"]),
           f"{path}: Action is {action!r}, expected exactly ssm:GetParameter")
    resource = stmt.get("Resource")
    if isinstance(resource, list):
        expect(len(resource) == 1, f"{path}: Resource lists {len(resource)} resources, expected exactly 1")
        (resource,) = resource
    expect(resource == {"Fn::Sub": PARAMETER_ARN % param},
           f"{path}: Resource is {resource!r}, expected !Sub \"{PARAMETER_ARN % param}\"")
    extra = set(stmt) - {"Sid", "Effect", "Action", "Resource"}
    expect(not extra, f"{path}: unexpected keys {sorted(extra)}")


def checks(t):
    # ---------------------------------------------------------------- 4. receiver concurrency

    def reserved_concurrency():
        p = t.param("ReceiverReservedConcurrency")
        expect(p.get("Type") == "Number", "ReceiverReservedConcurrency is not a Number")
        expect(str(p.get("Default")) == "25", f"ReceiverReservedConcurrency defaults to {p.get('Default')!r}, not 25")
        expect(str(p.get("MinValue")) == "0", "ReceiverReservedConcurrency does not allow 0 (MinValue 0)")
        value = t.props("ReceiverFunction", "AWS::Serverless::Function").get("ReservedConcurrentExecutions")
        parts = if_parts(value)
        expect(parts is not None, f"ReceiverFunction's ReservedConcurrentExecutions is {value!r}, expected "
                                  "!If [condition, !Ref ReceiverReservedConcurrency, !Ref AWS::NoValue]")
        cond, then, otherwise = parts
        expect(then == {"Ref": "ReceiverReservedConcurrency"}, f"ReservedConcurrentExecutions is {then!r} when set")
        expect(otherwise == NO_VALUE, "ReservedConcurrentExecutions is not left out when the condition is false")
        tied_to(t, cond, "ReceiverReservedConcurrency", ["25", "1", "1000"], ["0"])

    yield ("receiver ReservedConcurrentExecutions is ReceiverReservedConcurrency (default 25), left out at 0",
           reserved_concurrency)

    def throttles_alarm():
        matches = [n for n, r in t.resources.items()
                   if r.get("Type") == "AWS::CloudWatch::Alarm"
                   and r.get("Properties", {}).get("Namespace") == "AWS/Lambda"
                   and r.get("Properties", {}).get("MetricName") == "Throttles"
                   and dims(r.get("Properties", {}).get("Dimensions")) == {"FunctionName": {"Ref": "ReceiverFunction"}}]
        expect(matches, "no alarm on AWS/Lambda Throttles with FunctionName = !Ref ReceiverFunction")
        for name in matches:
            expect("Condition" not in t.resources[name], f"{name} is conditional")
            check_alarm(t.props(name), name, {
                "Statistic": "Sum", "Period": 300, "EvaluationPeriods": 1, "Threshold": 0,
                "ComparisonOperator": "GreaterThanThreshold", "TreatMissingData": "notBreaching"})

    yield "receiver throttles alarm: AWS/Lambda Throttles, Sum over 5 minutes > 0, notifies AlarmTopic", throttles_alarm

    # ---------------------------------------------------------------- 5. alarms

    def signature_mismatch_alarm():
        p = t.param("SignatureMismatchAlarmThreshold")
        expect(p.get("Type") == "Number", "SignatureMismatchAlarmThreshold is not a Number")
        expect(str(p.get("Default")) == "10", f"SignatureMismatchAlarmThreshold defaults to {p.get('Default')!r}")
        # Intercom pauses after 1,000 consecutive errors in 15 minutes, about 333 per 5-minute period: the
        # alarm must fire well before, at under a third of that pace.
        ceiling = float(p.get("MaxValue", p.get("Default")))
        expect(ceiling <= 100, f"SignatureMismatchAlarmThreshold may be {ceiling:g}: would fire too close to "
                               "Intercom's pause (1,000 errors in 15 minutes)")
        check_alarm(t.props("SignatureMismatchAlarm", "AWS::CloudWatch::Alarm"), "SignatureMismatchAlarm", {
            "Namespace": "IntercomWebhooks", "MetricName": "Rejected",
            "Dimensions": {"Service": "receiver", "Reason": "signature_mismatch"},
            "Statistic": "Sum", "Period": 300, "EvaluationPeriods": 1,
            "Threshold": {"Ref": "SignatureMismatchAlarmThreshold"},
            "ComparisonOperator": "GreaterThanOrEqualToThreshold", "TreatMissingData": "notBreaching"})
        expect("Condition" not in t.resources["SignatureMismatchAlarm"], "SignatureMismatchAlarm is conditional")

    yield ("SignatureMismatchAlarm: IntercomWebhooks Rejected {Service=receiver, Reason=signature_mismatch}, "
           "Sum over 5 minutes >= SignatureMismatchAlarmThreshold (10)", signature_mismatch_alarm)

    def nothing_enqueued_alarm():
        name = "NothingEnqueuedAlarm"
        props = t.props(name, "AWS::CloudWatch::Alarm")
        expect("Condition" not in t.resources[name], f"{name} is conditional")
        metrics = props.get("Metrics") or []
        ids = {}
        expressions = []
        for m in metrics:
            if "MetricStat" in m:
                ms = m["MetricStat"]
                metric = ms.get("Metric", {})
                expect(metric.get("Namespace") == "IntercomWebhooks", f"{name}: {m.get('Id')} is not in IntercomWebhooks")
                expect(dims(metric.get("Dimensions")) == {"Service": "receiver"} and len(metric.get("Dimensions")) == 1,
                       f"{name}: {m.get('Id')} dimensions are not exactly Service=receiver")
                expect(ms.get("Stat") == "Sum" and str(ms.get("Period")) == "300",
                       f"{name}: {m.get('Id')} is not Sum over 300 s")
                expect(m.get("ReturnData") is False, f"{name}: {m.get('Id')} must have ReturnData false")
                ids[metric.get("MetricName")] = m["Id"]
            elif "Expression" in m:
                if m.get("ReturnData", True):
                    expressions.append(m["Expression"])
        expect(set(ids) == {"Received", "Pings", "Enqueued"},
               f"{name}: metrics are {sorted(ids)}, expected Received, Pings, Enqueued")
        expect(len(expressions) == 1, f"{name}: {len(expressions)} expressions return data, expected 1")
        (expr,) = expressions
        for metric, id_ in ids.items():
            expect(re.search(r"FILL\(\s*%s\s*,\s*0\s*\)" % re.escape(id_), expr),
                   f"{name}: {metric} ({id_}) is not read through FILL({id_}, 0)")
        expect("IF(" in expr, f"{name}: the expression does not use IF(...)")

        def value(received, pings, enqueued):
            py = expr.replace("&&", " and ").replace("||", " or ")
            py = re.sub(r"\bAND\b", " and ", py)
            py = re.sub(r"\bOR\b", " or ", py)
            py = re.sub(r"\bNOT\b", " not ", py)
            env = {"FILL": lambda v, d: d if v is None else v, "IF": lambda c, a, b: a if c else b,
                   ids["Received"]: received, ids["Pings"]: pings, ids["Enqueued"]: enqueued}
            return eval(py, {"__builtins__": {}}, env)  # the template's own expression, nothing else

        # (Received, Pings, Enqueued) in a period -> does the alarm's threshold count it as breaching?
        cases = [((5, 0, 0), True), ((10, 0, None), True), ((7, 2, None), True), ((5, None, None), True),
                 ((4, 0, 0), False), ((6, 2, 0), False), ((10, 0, 1), False), ((50, 0, 49), False),
                 ((None, None, None), False), ((3, 3, 0), False)]
        threshold = float(props.get("Threshold"))
        op = props.get("ComparisonOperator")
        cmp = {"GreaterThanOrEqualToThreshold": lambda v: v >= threshold,
               "GreaterThanThreshold": lambda v: v > threshold}.get(op)
        expect(cmp is not None, f"{name}: unexpected ComparisonOperator {op}")
        for (r, p, e), breaching in cases:
            got = cmp(value(r, p, e))
            expect(got == breaching, f"{name}: Received={r} Pings={p} Enqueued={e} gives "
                                     f"{'ALARM' if got else 'OK'}, expected {'ALARM' if breaching else 'OK'}")
        expect(str(props.get("EvaluationPeriods")) == "1", f"{name}: EvaluationPeriods is not 1")
        expect(props.get("TreatMissingData") == "notBreaching", f"{name}: TreatMissingData is not notBreaching")
        notifies_alarm_topic(props, name)

    yield ("NothingEnqueuedAlarm: (Received - Pings) >= 5 and Enqueued = 0 in 5 minutes, missing data as 0, "
           "notifies AlarmTopic", nothing_enqueued_alarm)

    def silence_alarm():
        name = "SilenceAlarm"
        p = t.param("SilenceAlarmHours")
        expect(p.get("Type") == "Number", "SilenceAlarmHours is not a Number")
        expect(str(p.get("Default")) == "0", f"SilenceAlarmHours defaults to {p.get('Default')!r}, not 0 (off)")
        expect(str(p.get("MinValue")) == "0" and str(p.get("MaxValue")) == "24",
               "SilenceAlarmHours is not limited to 0-24 (EvaluationPeriods x Period may not exceed a day)")
        r = t.resource(name, "AWS::CloudWatch::Alarm")
        expect("Condition" in r, f"{name} is not conditional")
        tied_to(t, r["Condition"], "SilenceAlarmHours", ["1", "6", "24"], ["0"])
        check_alarm(r["Properties"], name, {
            "Namespace": "IntercomWebhooks", "MetricName": "Enqueued", "Dimensions": {"Service": "receiver"},
            "Statistic": "Sum", "Period": 3600, "EvaluationPeriods": {"Ref": "SilenceAlarmHours"},
            "Threshold": 1, "ComparisonOperator": "LessThanThreshold", "TreatMissingData": "breaching"})

    yield ("SilenceAlarm (only when SilenceAlarmHours > 0): no Enqueued for SilenceAlarmHours hours, missing data "
           "breaching", silence_alarm)

    # ---------------------------------------------------------------- 6. secrets

    def client_secret_parameters():
        p = t.param("IntercomClientSecret")
        expect(str(p.get("NoEcho")).lower() == "true", "IntercomClientSecret is not NoEcho")
        expect(p.get("Default") == "", "IntercomClientSecret has no empty Default")
        expect(str(p.get("MinLength", 0)) == "0", "IntercomClientSecret has a MinLength")
        pattern_accepts(t, "IntercomClientSecret", ["", "s3cr3t", "new,old"], ["a,,b", ",a", "a,", "a b"])
        for name in ("IntercomClientSecretParameter", "NotifyWebhookUrlParameter"):
            q = t.param(name)
            expect(q.get("Type") == "String" and q.get("Default") == "", f"{name} is not a String defaulting to \"\"")
            pattern_accepts(t, name, ["", "/intercom-webhooks/client-secret", "/aws/reference/secretsmanager/iw/x"],
                            ["intercom-webhooks/client-secret", "/a b", "/a,/b", "arn:aws:ssm:x"])
        expect(str(t.param("NotifyWebhookUrl").get("NoEcho")).lower() == "true", "NotifyWebhookUrl is not NoEcho")

    yield ("IntercomClientSecret optional and NoEcho; IntercomClientSecretParameter and NotifyWebhookUrlParameter "
           "take an empty value or a parameter name starting with /", client_secret_parameters)

    def rules():
        secret, name = "s3cr3t", "/intercom-webhooks/client-secret"
        for given_secret, given_param, ok in [(secret, "", True), ("", name, True), ("", "", False),
                                              (secret, name, False)]:
            got = t.rules_hold(IntercomClientSecret=given_secret, IntercomClientSecretParameter=given_param)
            expect(got == ok, f"Rules {'accept' if got else 'refuse'} IntercomClientSecret={given_secret!r} with "
                              f"IntercomClientSecretParameter={given_param!r}")
        url, url_param = "https://hooks.example.com/x", "/intercom-webhooks/notify-webhook-url"
        for given_url, given_param, ok in [("", "", True), (url, "", True), ("", url_param, True),
                                           (url, url_param, False)]:
            got = t.rules_hold(IntercomClientSecret=secret, NotifyWebhookUrl=given_url,
                               NotifyWebhookUrlParameter=given_param)
            expect(got == ok, f"Rules {'accept' if got else 'refuse'} NotifyWebhookUrl={given_url!r} with "
                              f"NotifyWebhookUrlParameter={given_param!r}")

    yield "Rules: exactly one client secret source, at most one notify webhook URL source", rules

    def receiver_env():
        env = function_env(t, "ReceiverFunction")
        expect("INTERCOM_CLIENT_SECRET" in env, "receiver has no INTERCOM_CLIENT_SECRET")
        expect("INTERCOM_CLIENT_SECRET_PARAMETER" in env, "receiver has no INTERCOM_CLIENT_SECRET_PARAMETER")
        then = conditional_on(t, env["INTERCOM_CLIENT_SECRET"], "IntercomClientSecret",
                              "receiver INTERCOM_CLIENT_SECRET", "s3cr3t")
        expect(then == {"Ref": "IntercomClientSecret"}, f"INTERCOM_CLIENT_SECRET is {then!r} when set")
        then = conditional_on(t, env["INTERCOM_CLIENT_SECRET_PARAMETER"], "IntercomClientSecretParameter",
                              "receiver INTERCOM_CLIENT_SECRET_PARAMETER", "/intercom-webhooks/client-secret")
        expect(then == {"Ref": "IntercomClientSecretParameter"}, f"INTERCOM_CLIENT_SECRET_PARAMETER is {then!r}")
        worker = function_env(t, "WorkerFunction")
        leaked = [k for k in worker if k.startswith("INTERCOM_CLIENT_SECRET")]
        expect(not leaked, f"the worker gets {leaked}")

    yield ("receiver: INTERCOM_CLIENT_SECRET and INTERCOM_CLIENT_SECRET_PARAMETER each set only when given",
           receiver_env)

    def worker_env():
        env = function_env(t, "WorkerFunction")
        expect("NOTIFY_WEBHOOK_URL" in env, "worker has no NOTIFY_WEBHOOK_URL")
        expect("NOTIFY_WEBHOOK_URL_PARAMETER" in env, "worker has no NOTIFY_WEBHOOK_URL_PARAMETER")
        then = conditional_on(t, env["NOTIFY_WEBHOOK_URL"], "NotifyWebhookUrl", "worker NOTIFY_WEBHOOK_URL",
                              "https://hooks.example.com/x")
        expect(then == {"Ref": "NotifyWebhookUrl"}, f"NOTIFY_WEBHOOK_URL is {then!r} when set")
        then = conditional_on(t, env["NOTIFY_WEBHOOK_URL_PARAMETER"], "NotifyWebhookUrlParameter",
                              "worker NOTIFY_WEBHOOK_URL_PARAMETER", "/intercom-webhooks/notify-webhook-url")
        expect(then == {"Ref": "NotifyWebhookUrlParameter"}, f"NOTIFY_WEBHOOK_URL_PARAMETER is {then!r}")
        receiver = function_env(t, "ReceiverFunction")
        leaked = [k for k in receiver if k.startswith("NOTIFY_WEBHOOK_URL")]
        expect(not leaked, f"the receiver gets {leaked}")
        # NOTIFY_TOPICS follows the notify handler, whichever way its URL arrives.
        parts = if_parts(env.get("NOTIFY_TOPICS"))
        expect(parts is not None and parts[2] == NO_VALUE, "NOTIFY_TOPICS is not conditional")
        cond = parts[0]
        base = dict(IntercomClientSecret="s", NotifyTopics="contact.*")
        expect(t.cond(cond, **base, NotifyWebhookUrlParameter="/p"), "NOTIFY_TOPICS is left out with only the parameter")
        expect(t.cond(cond, **base, NotifyWebhookUrl="https://h/x"), "NOTIFY_TOPICS is left out with only the URL")
        expect(not t.cond(cond, **base), "NOTIFY_TOPICS is set without a notify webhook")

    yield ("worker: NOTIFY_WEBHOOK_URL and NOTIFY_WEBHOOK_URL_PARAMETER each set only when given; NOTIFY_TOPICS "
           "when either is", worker_env)

    found = []
    for name, r in t.resources.items():
        props = r.get("Properties", {})
        if r.get("Type") in ("AWS::IAM::Role", "AWS::IAM::Policy", "AWS::IAM::ManagedPolicy", "AWS::IAM::User",
                             "AWS::IAM::Group", "AWS::Serverless::Function", "AWS::Lambda::Function"):
            ssm_statements(props, name, found)

    def receiver_ssm():
        check_ssm_grant(t, found, "ReceiverFunctionRole", "ReceiverFunction", "IntercomClientSecretParameter",
                        "ssm:GetParameter on the client secret parameter")

    yield ("ReceiverFunctionRole: exactly ssm:GetParameter on exactly the IntercomClientSecretParameter ARN, "
           "only when it is given", receiver_ssm)

    def worker_ssm():
        check_ssm_grant(t, found, "WorkerFunctionRole", "WorkerFunction", "NotifyWebhookUrlParameter",
                        "ssm:GetParameter on the notify webhook URL parameter")

    yield ("WorkerFunctionRole: exactly ssm:GetParameter on exactly the NotifyWebhookUrlParameter ARN, only when "
           "it is given", worker_ssm)

    def forward_ssm():
        check_ssm_grant(t, found, "WorkerFunctionRole", "WorkerFunction", "ForwardSecretParameter",
                        "ssm:GetParameter on the forward target's secret parameter")
        # The worker's ssm statements are exactly these two.
        worker = [f for f in found if f[0].startswith("WorkerFunctionRole.")]
        expect(len(worker) == 2, f"WorkerFunctionRole has {len(worker)} ssm statements, expected 2")
        env = function_env(t, "WorkerFunction")
        for name, value in [("FORWARD_1_URL", "ForwardUrl"), ("FORWARD_1_SECRET_PARAMETER", "ForwardSecretParameter")]:
            parts = if_parts(env.get(name))
            expect(parts is not None and parts[1] == {"Ref": value} and parts[2] == NO_VALUE,
                   f"worker {name} is {env.get(name)!r}, expected !If [condition, !Ref {value}, !Ref AWS::NoValue]")
            tied_to(t, parts[0], "ForwardSecretParameter", ["/intercom-webhooks/example"], [""])
        expect("FORWARD_1_SECRET" not in env, "the forward secret itself is in the worker's environment")
        rule = json_text(t.data.get("Rules", {}).get("ForwardUrlNeedsASecret"))
        expect("ForwardUrl" in rule and "ForwardSecretParameter" in rule,
               "no rule requires ForwardUrl and ForwardSecretParameter together")

    yield ("WorkerFunctionRole: exactly ssm:GetParameter on exactly the ForwardSecretParameter ARN, only with a "
           "forward target; FORWARD_1_URL and FORWARD_1_SECRET_PARAMETER set only then", forward_ssm)

    def no_other_ssm():
        others = [path for path, _, _ in found
                  if not path.startswith(("ReceiverFunctionRole.", "WorkerFunctionRole.", "ReconcilerFunctionRole."))]
        expect(not others, f"other statements grant ssm actions: {others}")
        for name, r in t.resources.items():
            props = r.get("Properties", {})
            if r.get("Type") == "AWS::Serverless::Function":
                expect("Policies" not in props, f"{name} has SAM Policies (the template uses explicit roles)")
            for arn in props.get("ManagedPolicyArns", []) or []:
                expect("SSM" not in str(arn) and "AdministratorAccess" not in str(arn),
                       f"{name} attaches {arn}")

    yield "no other function, role or policy is granted any ssm action", no_other_ssm

    # ---------------------------------------------------------------- EventBridge

    def eventbridge():
        for value, publish, create in [("none", False, False), ("default", True, False), ("create", True, True)]:
            expect(t.cond("PublishToBus", EventBus=value) == publish, f"PublishToBus is wrong for EventBus={value}")
            expect(t.cond("CreateBus", EventBus=value) == create, f"CreateBus is wrong for EventBus={value}")
        expect(t.param("EventBus").get("Default") == "none", "EventBus is not off by default")
        expect(t.resources["IntercomEventBus"].get("Condition") == "CreateBus", "the bus is not created only with create")
        statements = []
        for name, r in t.resources.items():
            iam_statements(r.get("Properties", {}), name, statements)
        granting = []
        for path, stmt, under_if in statements:
            acts = stmt.get("Action", stmt.get("NotAction"))
            acts = acts if isinstance(acts, list) else [acts]
            if "NotAction" in stmt or any(isinstance(a, str) and (a == "*" or a.lower().startswith("events:"))
                                          for a in acts):
                granting.append((path, stmt, under_if))
        expect(len(granting) == 1, f"{len(granting)} statements grant events actions, expected exactly 1: "
                                   f"{[g[0] for g in granting]}")
        path, stmt, under_if = granting[0]
        expect(path.startswith("WorkerFunctionRole."), f"{path}: events actions granted outside the worker's role")
        expect(under_if is not None and under_if[1] and under_if[2] == NO_VALUE,
               f"{path}: the statement is not inside !If [condition, statement, !Ref AWS::NoValue]")
        same_condition(t, under_if[0], "PublishToBus", "EventBus", ["none", "default", "create"])
        expect(stmt.get("Action") in ("events:PutEvents", ["events:PutEvents"]),
               f"{path}: Action is {stmt.get('Action')!r}, expected exactly events:PutEvents")
        resource = stmt.get("Resource")
        parts = if_parts(resource)
        expect(parts is not None, f"{path}: Resource is {resource!r}, expected !If [CreateBus, the bus, default]")
        cond, created, default = parts
        expect(cond == "CreateBus" and arn_of(created, "IntercomEventBus"),
               f"{path}: with a created bus the Resource is {created!r}, not its ARN")
        expect(default == {"Fn::Sub": "arn:${AWS::Partition}:events:${AWS::Region}:${AWS::AccountId}:event-bus/default"},
               f"{path}: without it the Resource is {default!r}, not the default bus's ARN")
        env = function_env(t, "WorkerFunction")
        bus = if_parts(env.get("EVENT_BUS_NAME"))
        expect(bus is not None and bus[2] == NO_VALUE, "EVENT_BUS_NAME is not set only with a bus")
        same_condition(t, bus[0], "PublishToBus", "EventBus", ["none", "default", "create"])
        expect(bus[1] == {"Fn::If": ["CreateBus", {"Ref": "IntercomEventBus"}, "default"]},
               f"EVENT_BUS_NAME is {bus[1]!r}, expected the created bus or default")
        for name in ["ExampleRule", "ExampleRuleQueue", "ExampleRuleQueuePolicy"]:
            expect(t.resources[name].get("Condition") == "ExampleRuleOn", f"{name} is not conditional on ExampleRuleOn")
        expect(not t.cond("ExampleRuleOn", EventBus="none", EventBridgeExampleRule="true"),
               "the example rule exists without a bus")
        policy = json_text(t.props("ExampleRuleQueuePolicy"))
        expect("aws:SourceArn" in policy and "ExampleRule" in policy,
               "the example queue accepts messages from any rule, not only the example rule")
        alarm = t.resources.get("EventBridgeFailedEntriesAlarm", {})
        expect(alarm.get("Condition") == "PublishToBus", "no EventBridgeFailedEntriesAlarm with the bus")
        expect("EventBridgeEntries" in json_text(alarm), "the failed-entries alarm does not watch EventBridgeEntries")

    yield ("EventBridge (EventBus none, default or create): the worker alone may call exactly events:PutEvents on "
           "exactly that bus, EVENT_BUS_NAME names it, the example rule and its queue only with it, a failed-entries "
           "alarm", eventbridge)

    # ---------------------------------------------------------------- the scheduled reconciler

    def reconciler():
        names = ["ReconcilerLogGroup", "ReconcilerFunctionRole", "ReconcilerFunction", "ReconcilerErrorsAlarm"]
        for name in names:
            cond = t.resources.get(name, {}).get("Condition")
            expect(cond is not None, f"{name} is missing or not conditional")
            expect(t.cond(cond, ReconcileSchedule="rate(1 hour)") and not t.cond(cond, ReconcileSchedule=""),
                   f"{name} does not exist exactly when ReconcileSchedule is given")
        expect(t.param("ReconcileSchedule").get("Default") == "", "ReconcileSchedule is not off by default")
        pattern_accepts(t, "ReconcileSchedule", ["", "rate(1 hour)", "cron(0 * * * ? *)"], ["hourly", "rate 1h"])
        rule = json_text(t.data.get("Rules", {}).get("ReconcilerNeedsAToken"))
        expect("IntercomAccessTokenParameter" in rule and "ReconcileSchedule" in rule,
               "no rule requires IntercomAccessTokenParameter with a ReconcileSchedule")
        fn = t.props("ReconcilerFunction", "AWS::Serverless::Function")
        expect(arn_of(fn.get("Role"), "ReconcilerFunctionRole"), "ReconcilerFunction does not run as its role")
        events = fn.get("Events") or {}
        expect(len(events) == 1, f"ReconcilerFunction has events {list(events)}, expected one schedule")
        (event,) = events.values()
        expect(event.get("Type") in ("ScheduleV2", "Schedule"), f"the reconciler's event is {event.get('Type')}")
        expect(event.get("Properties", {}).get("ScheduleExpression") == {"Ref": "ReconcileSchedule"},
               "the schedule is not ReconcileSchedule")
        env = function_env(t, "ReconcilerFunction")
        expect(env.get("INTERCOM_ACCESS_TOKEN_PARAMETER") == {"Ref": "IntercomAccessTokenParameter"},
               "the reconciler does not get INTERCOM_ACCESS_TOKEN_PARAMETER")
        expect("INTERCOM_ACCESS_TOKEN" not in env, "the token itself is in the reconciler's environment")
        expect(env.get("QUEUE_URL") == {"Ref": "NotificationsQueue"}, "QUEUE_URL is not the notifications queue")
        expect(env.get("IDEMPOTENCY_TABLE") == {"Ref": "IdempotencyTable"}, "IDEMPOTENCY_TABLE is not the table")
        statements = []
        iam_statements(t.resources["ReconcilerFunctionRole"].get("Properties", {}).get("Policies", []),
                       "ReconcilerFunctionRole.Policies", statements)
        want = {
            ("sqs:SendMessage",): ("NotificationsQueue", "Arn"),
            ("dynamodb:GetItem", "dynamodb:UpdateItem"): ("IdempotencyTable", "Arn"),
            ("ssm:GetParameter",): ("Sub", PARAMETER_ARN % "IntercomAccessTokenParameter"),
            ("logs:CreateLogStream", "logs:PutLogEvents"): ("ReconcilerLogGroup", "Arn"),
        }
        seen = set()
        for path, stmt, under_if in statements:
            expect(under_if is None, f"{path}: conditional statement in the reconciler's role")
            expect(stmt.get("Effect") == "Allow" and "NotAction" not in stmt and "NotResource" not in stmt,
                   f"{path}: not a plain Allow")
            action = stmt.get("Action")
            actions = tuple(sorted(action if isinstance(action, list) else [action]))
            expect(actions in want, f"{path}: Action {action!r} is not one the reconciler needs")
            expect(actions not in seen, f"{path}: {actions} granted twice")
            seen.add(actions)
            resource = stmt.get("Resource")
            resource = resource[0] if isinstance(resource, list) and len(resource) == 1 else resource
            kind, target = want[actions]
            if kind == "Sub":
                expect(resource == {"Fn::Sub": target}, f"{path}: Resource is {resource!r}, expected !Sub {target}")
            else:
                expect(arn_of(resource, kind), f"{path}: Resource is {resource!r}, expected !GetAtt {kind}.Arn")
        expect(seen == set(want), f"the reconciler's role lacks {sorted(set(want) - seen)}")

    yield ("reconciler (only with a ReconcileSchedule, which needs IntercomAccessTokenParameter): scheduled, "
           "exactly sqs:SendMessage on the queue, GetItem/UpdateItem on the idempotency table (watermarks), "
           "ssm:GetParameter on exactly the token parameter", reconciler)

    # ---------------------------------------------------------------- 7. mirror

    MIRROR_ACTIONS = {"dynamodb:PutItem", "dynamodb:GetItem", "dynamodb:UpdateItem"}

    def mirror_condition():
        p = t.param("EnableMirror")
        expect(p.get("Type") == "String", "EnableMirror is not a String")
        expect(str(p.get("Default")) == "true", f"EnableMirror defaults to {p.get('Default')!r}, not \"true\"")
        expect(sorted(str(v) for v in p.get("AllowedValues") or []) == ["false", "true"],
               f"EnableMirror allows {p.get('AllowedValues')!r}, expected exactly \"true\" and \"false\"")
        r = t.resource("MirrorTable", "AWS::DynamoDB::Table")
        expect("Condition" in r, "MirrorTable is not conditional")
        tied_to(t, r["Condition"], "EnableMirror", ["true"], ["false"])
        return r["Condition"]

    def mirror_table():
        mirror_condition()
        props = t.props("MirrorTable")
        expect(props.get("BillingMode") == "PAY_PER_REQUEST",
               f"MirrorTable's BillingMode is {props.get('BillingMode')!r}, not PAY_PER_REQUEST (on demand)")
        expect("ProvisionedThroughput" not in props, "MirrorTable has ProvisionedThroughput")
        sse = props.get("SSESpecification") or {}
        expect(str(sse.get("SSEEnabled")).lower() == "true", "MirrorTable's SSESpecification.SSEEnabled is not true")
        pitr = props.get("PointInTimeRecoverySpecification") or {}
        expect(str(pitr.get("PointInTimeRecoveryEnabled")).lower() == "true",
               "MirrorTable's PointInTimeRecoverySpecification.PointInTimeRecoveryEnabled is not true")
        # The shape src/aws/mirror.rs reads and writes (and tests/it/support creates on the emulator).
        keys = lambda schema: [(k.get("AttributeName"), k.get("KeyType")) for k in schema or []]
        expect(keys(props.get("KeySchema")) == [("pk", "HASH"), ("app_id", "RANGE")],
               f"MirrorTable's KeySchema is {keys(props.get('KeySchema'))}, expected pk HASH, app_id RANGE")
        # The index exactly when MirrorIndex is "true" (default "false"); DynamoDB takes definitions only of
        # attributes some key uses, so those follow the same condition.
        p = t.param("MirrorIndex")
        expect(str(p.get("Default")) == "false", f"MirrorIndex defaults to {p.get('Default')!r}, not \"false\"")
        expect(sorted(str(v) for v in p.get("AllowedValues") or []) == ["false", "true"],
               f"MirrorIndex allows {p.get('AllowedValues')!r}, expected exactly \"true\" and \"false\"")
        definitions = if_parts(props.get("AttributeDefinitions"))
        expect(definitions is not None, "MirrorTable's AttributeDefinitions are not !If [MirrorIndex's condition, …]")
        cond, with_index, without_index = definitions
        tied_to(t, cond, "MirrorIndex", ["true"], ["false"])
        shape = lambda defs: {a.get("AttributeName"): a.get("AttributeType") for a in defs or []}
        expect(shape(with_index) == {"pk": "S", "app_id": "S", "type": "S", "version_ms": "N"},
               f"MirrorTable's AttributeDefinitions with the index are {shape(with_index)}, "
               "expected pk S, app_id S, type S, version_ms N")
        expect(shape(without_index) == {"pk": "S", "app_id": "S"},
               f"MirrorTable's AttributeDefinitions without the index are {shape(without_index)}, expected pk S, app_id S")
        index_parts = if_parts(props.get("GlobalSecondaryIndexes"))
        expect(index_parts is not None and index_parts[2] == NO_VALUE,
               "MirrorTable's GlobalSecondaryIndexes are not !If [MirrorIndex's condition, …, !Ref AWS::NoValue]")
        tied_to(t, index_parts[0], "MirrorIndex", ["true"], ["false"])
        indexes = index_parts[1] or []
        expect([i.get("IndexName") for i in indexes] == ["by_type"],
               f"MirrorTable's indexes are {[i.get('IndexName') for i in indexes]}, expected exactly by_type")
        (index,) = indexes
        expect(keys(index.get("KeySchema")) == [("type", "HASH"), ("version_ms", "RANGE")],
               f"by_type's KeySchema is {keys(index.get('KeySchema'))}, expected type HASH, version_ms RANGE")
        expect((index.get("Projection") or {}).get("ProjectionType") == "KEYS_ONLY", "by_type is not KEYS_ONLY")
        expect("ProvisionedThroughput" not in index, "by_type has ProvisionedThroughput")

    yield ("MirrorTable (only when EnableMirror is \"true\", the default): on demand, SSE, point-in-time recovery, "
           "key pk + app_id; the keys-only index by_type on type + version_ms only when MirrorIndex is \"true\" "
           "(default \"false\")", mirror_table)

    def mirror_grant():
        table_cond = mirror_condition()
        worker_role = t.props("WorkerFunction").get("Role")
        expect(arn_of(worker_role, "WorkerFunctionRole"), "WorkerFunction does not run as WorkerFunctionRole")
        statements = []
        for name, r in t.resources.items():
            iam_statements(r.get("Properties", {}), name, statements)
        naming = [s for s in statements if names_resource(s[1], "MirrorTable")]
        expect(len(naming) == 1, f"{len(naming)} IAM statements name MirrorTable, expected exactly 1 (the worker's): "
                                 f"{[s[0] for s in naming]}")
        path, stmt, under_if = naming[0]
        expect(path.startswith("WorkerFunctionRole."), f"{path}: the MirrorTable statement is not the worker role's")
        expect(under_if is not None and under_if[1] and under_if[2] == NO_VALUE,
               f"{path}: the statement is not inside !If [condition, statement, !Ref AWS::NoValue]")
        same_condition(t, under_if[0], table_cond, "EnableMirror", ["true", "false"])
        expect(stmt.get("Effect") == "Allow", f"{path}: Effect is {stmt.get('Effect')!r}")
        action = stmt.get("Action")
        actions = action if isinstance(action, list) else [action]
        expect(len(actions) == len(set(actions)) and set(actions) == MIRROR_ACTIONS,
               f"{path}: Action is {action!r}, expected exactly {sorted(MIRROR_ACTIONS)}")
        resource = stmt.get("Resource")
        resources = resource if isinstance(resource, list) else [resource]
        expect(len(resources) == 1 and arn_of(resources[0], "MirrorTable"),
               f"{path}: Resource is {resource!r}, expected exactly !GetAtt MirrorTable.Arn")
        extra = set(stmt) - {"Sid", "Effect", "Action", "Resource"}
        expect(not extra, f"{path}: unexpected keys {sorted(extra)}")
        # Nothing reaches the table another way: no dynamodb grant on every resource, no NotResource.
        for p, s, _ in statements:
            acts = s.get("Action", s.get("NotAction"))
            acts = acts if isinstance(acts, list) else [acts]
            dynamo = "NotAction" in s or any(isinstance(a, str) and (a == "*" or a.lower().startswith("dynamodb:"))
                                             for a in acts)
            if not dynamo:
                continue
            res = s.get("Resource", s.get("NotResource"))
            res = res if isinstance(res, list) else [res]
            expect("NotResource" not in s and not any(isinstance(x, str) and "*" in x for x in res),
                   f"{p}: grants dynamodb actions on {res!r}")

    yield ("WorkerFunctionRole: exactly dynamodb:PutItem, GetItem and UpdateItem on exactly MirrorTable, only with "
           "the table; no other statement names it or grants dynamodb actions on every resource", mirror_grant)

    def mirror_env():
        table_cond = mirror_condition()
        env = function_env(t, "WorkerFunction")
        parts = if_parts(env.get("MIRROR_TABLE"))
        expect(parts is not None, f"worker MIRROR_TABLE is {env.get('MIRROR_TABLE')!r}, expected "
                                  "!If [condition, !Ref MirrorTable, !Ref AWS::NoValue]")
        cond, then, otherwise = parts
        expect(then == {"Ref": "MirrorTable"}, f"MIRROR_TABLE is {then!r} when set, not !Ref MirrorTable")
        expect(otherwise == NO_VALUE, f"MIRROR_TABLE is {otherwise!r} without the mirror, not !Ref AWS::NoValue")
        same_condition(t, cond, table_cond, "EnableMirror", ["true", "false"])
        expect("MIRROR_TABLE" not in function_env(t, "ReceiverFunction"), "the receiver gets MIRROR_TABLE")
        output = (t.data.get("Outputs") or {}).get("MirrorTableName")
        expect(output is not None, "no output MirrorTableName")
        expect(output.get("Value") == {"Ref": "MirrorTable"}, f"MirrorTableName is {output.get('Value')!r}")
        expect("Condition" in output, "output MirrorTableName is not conditional")
        same_condition(t, output["Condition"], table_cond, "EnableMirror", ["true", "false"])

    yield ("worker: MIRROR_TABLE is !Ref MirrorTable exactly when the table exists (the receiver gets none); output "
           "MirrorTableName with it", mirror_env)

    # ---------------------------------------------------------------- idempotency completion

    def completion():
        p = t.param("IdempotencyCompletion")
        expect(p.get("Type") == "String", "IdempotencyCompletion is not a String")
        expect(p.get("Default") == "batch", f"IdempotencyCompletion defaults to {p.get('Default')!r}, not batch")
        expect(sorted(p.get("AllowedValues") or []) == ["batch", "record"],
               f"IdempotencyCompletion allows {p.get('AllowedValues')!r}, not exactly batch and record")
        env = function_env(t, "WorkerFunction")
        expect(env.get("IDEMPOTENCY_COMPLETION") == {"Ref": "IdempotencyCompletion"},
               f"worker IDEMPOTENCY_COMPLETION is {env.get('IDEMPOTENCY_COMPLETION')!r}, not !Ref IdempotencyCompletion")
        for other in ("ReceiverFunction", "ReconcilerFunction"):
            if other in t.resources:
                expect("IDEMPOTENCY_COMPLETION" not in function_env(t, other), f"{other} gets IDEMPOTENCY_COMPLETION")

    yield ("worker: IDEMPOTENCY_COMPLETION is !Ref IdempotencyCompletion (batch by default, or record); no other "
           "function gets it", completion)


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "template.yaml")
    data, matches = decode(path)
    if data is None or matches:
        for m in matches:
            print(f"cannot read {path}: {m}")
        sys.exit(1)
    t = Template(plain(data))
    passed = failed = 0
    for title, check in checks(t):
        try:
            check()
        except CheckFailed as e:
            failed += 1
            print(f"FAIL {title}\n     {e}")
        except Exception as e:  # a template shaped so differently that the check cannot even look
            failed += 1
            print(f"FAIL {title}\n     {type(e).__name__}: {e}")
        else:
            passed += 1
            print(f"ok   {title}")
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
