//! The API's OpenAPI 3.1 document, built from one table of the routes (served at
//! `/api/v1/openapi.json`, committed as `schemas/openapi.json`; a test fails when the committed
//! file is stale or a route of the router is missing from the table).

use serde_json::{Map, Value, json};

/// One operation: method, path under `/api/v1`, summary, the least role, query parameters,
/// request body schema, response schema.
struct Op {
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    role: &'static str,
    query: &'static [(&'static str, &'static str, &'static str)],
    body: Option<&'static str>,
    response: &'static str,
}

const PAGE: [(&str, &str, &str); 4] = [
    ("limit", "integer", "Items per page, 1 to 500 (default 50)."),
    ("offset", "integer", "Items skipped (default 0)."),
    (
        "sort",
        "string",
        "A column to sort by (the list names the allowed ones).",
    ),
    ("order", "string", "asc or desc (default desc)."),
];

const KEY_FILTERS: [(&str, &str, &str); 7] = [
    ("cloud", "string", "aws, alibaba or tencent."),
    ("account", "string", "Account id."),
    ("kind", "string", "permanent, temporary or root."),
    (
        "status",
        "string",
        "The key's status by the credential reports: active, inactive, at_risk, not_in_report or unknown (each item carries it too).",
    ),
    (
        "has_alarms",
        "integer",
        "1: keys with pending alarms; 0: keys without.",
    ),
    ("since", "integer", "Last used at or after (Unix seconds)."),
    ("until", "integer", "Last used at or before (Unix seconds)."),
];

const IP_FILTERS: [(&str, &str, &str); 4] = [
    (
        "class",
        "string",
        "One of the IP's classes: own, private, service, tor, threat, hosting, cloud, public or unknown.",
    ),
    (
        "country",
        "string",
        "The country as the GeoIP database names it (e.g. JP).",
    ),
    (
        "has_alarms",
        "integer",
        "1: IPs an alarm names among its sources; 0: the others.",
    ),
    (
        "q",
        "string",
        "A part of the address or of the AS organisation's name (any case), at most 200 bytes.",
    ),
];

const DRY_RUN: [(&str, &str, &str); 1] = [(
    "dry_run",
    "boolean",
    "true: check the entry and preview what it would have matched in the last 7 days of invocation records and stored alarms; store nothing.",
)];

const ALARM_FILTERS: [(&str, &str, &str); 8] = [
    (
        "status",
        "string",
        "pending, handled, ignored or allowlisted.",
    ),
    ("severity", "string", "info, low, medium, high or critical."),
    ("rule", "string", "Rule id."),
    ("cloud", "string", "aws, alibaba or tencent."),
    ("account", "string", "Account id."),
    ("key", "string", "Access key id."),
    ("since", "integer", "Last seen at or after (Unix seconds)."),
    (
        "until",
        "integer",
        "First seen at or before (Unix seconds).",
    ),
];

const RISK_FILTERS: [(&str, &str, &str); 7] = [
    ("status", "string", "pending, handled or ignored."),
    ("severity", "string", "info, low, medium, high or critical."),
    ("rule", "string", "Risk id (for example ak.unused_key)."),
    ("cloud", "string", "aws, alibaba or tencent."),
    ("account", "string", "Account id."),
    ("key", "string", "Access key id."),
    (
        "present",
        "integer",
        "1: shown by the newest reports; 0: fixed.",
    ),
];

impl Op {
    fn with_query(mut self, query: &'static [(&'static str, &'static str, &'static str)]) -> Op {
        self.query = query;
        self
    }
}

fn ops() -> Vec<Op> {
    let list = |path, summary, query: &'static [(&'static str, &'static str, &'static str)]| Op {
        method: "get",
        path,
        summary,
        role: "viewer",
        query,
        body: None,
        response: "Page",
    };
    let read = |path, summary, response| Op {
        method: "get",
        path,
        summary,
        role: "viewer",
        query: &[],
        body: None,
        response,
    };
    let write = |method, path, summary, role, body, response| Op {
        method,
        path,
        summary,
        role,
        query: &[],
        body: Some(body),
        response,
    };
    vec![
        read(
            "/overview",
            "Counts for the dashboard: keys by kind and by report status, keys needing attention, pending alarms and risks by severity, alarms per day (30 days), top keys and IPs, recent changes.",
            "Object",
        ),
        list(
            "/keys",
            "Access keys seen in the logs, each with its report status (filters: cloud, account, kind, status, has_alarms, since, until; sort: last_seen, calls, first_seen, key_id, pending_alarms).",
            &KEY_FILTERS,
        ),
        read(
            "/keys/{key}",
            "A key: its counts, source IPs, APIs, calls per day, alarms and risks.",
            "Object",
        ),
        list(
            "/ips",
            "Source IPs, each with its count of keys and of alarms naming it (IP-hidden keys' IPs never appear; filters: class, country, has_alarms, q; sort: last_seen, calls, first_seen, ip, keys).",
            &IP_FILTERS,
        ),
        read(
            "/ips/{ip}",
            "A source IP: place, ASN, classes, the keys that used it, alarms, the operator's note.",
            "Object",
        ),
        write(
            "put",
            "/ips/{ip}/note",
            "Sets the operator's note on an IP (audited).",
            "operator",
            "Note",
            "Object",
        ),
        list(
            "/accounts",
            "Accounts (filter: cloud; sort: last_seen, calls, account).",
            &[],
        ),
        read(
            "/accounts/{cloud}/{account}",
            "An account: its keys, whether a root key is used, pending alarms by severity, risks.",
            "Object",
        ),
        list(
            "/alarms",
            "Alarms with their triage status (sort: last_seen, severity_rank, first_seen, count).",
            &ALARM_FILTERS,
        ),
        read(
            "/alarms/{id}",
            "An alarm as delivered, with its triage status and history.",
            "Object",
        ),
        write(
            "post",
            "/alarms/{id}/status",
            "Triage: handled, ignored or pending, with a comment (audited).",
            "operator",
            "Status",
            "Object",
        ),
        write(
            "post",
            "/alarms/{id}/allowlist",
            "An allowlist entry scoped from the alarm (key, rule, and its IPs / APIs when asked); the alarm becomes allowlisted; a running service applies the entry to the next event.",
            "operator",
            "AllowFromAlarm",
            "Object",
        ),
        list(
            "/risks",
            "Configuration risks of the credential reports (sort: severity_rank, last_seen, first_seen).",
            &RISK_FILTERS,
        ),
        read(
            "/risks/{id}",
            "A risk with its evidence, advice, triage status and history.",
            "Object",
        ),
        write(
            "post",
            "/risks/{id}/status",
            "Triage of a risk: handled, ignored or pending, with a comment (audited).",
            "operator",
            "Status",
            "Object",
        ),
        read(
            "/policies/{kind}",
            "The policy entries of a kind (allowlist, ip-hiding, alarm): those made through the API (editable) and those of the policy files (read-only).",
            "Object",
        ),
        write(
            "post",
            "/policies/{kind}",
            "Creates an entry (its id in the body): checked by the policy loader (its file:line messages on refusal), stored, written to the kind's api-*.yaml file, applied live. With dry_run: checked and previewed only.",
            "admin",
            "PolicyEntry",
            "Object",
        )
        .with_query(&DRY_RUN),
        read("/policies/{kind}/{id}", "One policy entry.", "Object"),
        write(
            "put",
            "/policies/{kind}/{id}",
            "Creates or replaces an entry (checked, stored, written, applied live). With dry_run: checked and previewed only.",
            "admin",
            "PolicyEntry",
            "Object",
        )
        .with_query(&DRY_RUN),
        Op {
            method: "delete",
            path: "/policies/{kind}/{id}",
            summary: "Deletes an entry made through the API.",
            role: "admin",
            query: &[],
            body: None,
            response: "Object",
        },
        list(
            "/audit",
            "Every change: who, when, what, before and after.",
            &[],
        ),
        read("/openapi.json", "This document.", "Object"),
    ]
}

fn schemas() -> Value {
    json!({
        "Page": {
            "type": "object",
            "required": ["items", "total", "limit", "offset"],
            "properties": {
                "items": {"type": "array", "items": {"type": "object"}},
                "total": {"type": "integer"},
                "limit": {"type": "integer"},
                "offset": {"type": "integer"}
            }
        },
        "Object": {"type": "object"},
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {"type": "string", "description": "What was wrong; policy refusals give the loader's file:line messages, one per line."}}
        },
        "Note": {
            "type": "object", "required": ["note"], "additionalProperties": false,
            "properties": {"note": {"type": "string", "maxLength": 4096}}
        },
        "Status": {
            "type": "object", "required": ["status"], "additionalProperties": false,
            "properties": {
                "status": {"enum": ["handled", "ignored", "pending"]},
                "comment": {"type": "string", "maxLength": 4096}
            }
        },
        "AllowFromAlarm": {
            "type": "object", "required": ["comment"], "additionalProperties": false,
            "properties": {
                "comment": {"type": "string", "minLength": 1, "maxLength": 4096},
                "owner": {"type": "string"},
                "expires": {"type": "string", "description": "2026-12-31 or an RFC 3339 time."},
                "dry_run": {"type": "boolean", "description": "Check the entry and preview what it would have matched (the last 7 days); store nothing."},
                "scope": {"type": "array", "items": {"enum": ["ip", "api"]}}
            }
        },
        "PolicyEntry": {
            "type": "object",
            "description": "An entry as in the policy files (rules/policies/README, src/policy.rs): allowlist {id, ips, method, user_agent, keys, key_class, apis, outcome, rules, expires, owner, comment}; ip-hiding {id, keys, comment}; alarm {enabled, severity, thresholds, aggregation, renotify} for the rule named by the id.",
            "properties": {"id": {"type": "string", "pattern": "^[A-Za-z0-9._:@-]{1,128}$"}}
        }
    })
}

/// The document.
pub fn document() -> Value {
    let mut paths: Map<String, Value> = Map::new();
    for op in ops() {
        let mut params: Vec<Value> = op
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let query: Vec<(&str, &str, &str)> = if op.response == "Page" {
            PAGE.iter().chain(op.query.iter()).copied().collect()
        } else {
            op.query.to_vec()
        };
        params.extend(query.into_iter().map(|(name, ty, description)| {
            json!({"name": name, "in": "query", "required": false, "description": description, "schema": {"type": ty}})
        }));
        let error = json!({"description": "Error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
        let mut responses = Map::new();
        responses.insert(
            "200".into(),
            json!({"description": "OK", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{}", op.response)}}}}),
        );
        for code in ["400", "401", "403", "404"] {
            responses.insert(code.into(), error.clone());
        }
        if op.method != "get" {
            responses.insert("409".into(), error.clone());
        }
        let mut operation = json!({
            "summary": op.summary,
            "description": format!("Needs the {} role (or higher).", op.role),
            "operationId": format!("{}{}", op.method, op.path.replace(['/', '{', '}', '.'], "_")),
            "parameters": params,
            "responses": responses,
            "x-akwatch-role": op.role,
        });
        if let Some(body) = op.body {
            operation["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{body}")}}}});
        }
        paths
            .entry(op.path.to_owned())
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .map(|o| o.insert(op.method.to_owned(), operation));
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "akwatch inventory API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The CSC views: access keys, source IPs, accounts, alarms and configuration risks with their triage, policies, audit log. Bearer tokens with a role each (viewer < operator < admin); bodies at most 64 KiB; pages at most 500 items."
        },
        "servers": [{"url": "/api/v1"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas()
        }
    })
}
