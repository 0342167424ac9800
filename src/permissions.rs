//! Permission snapshots (CSC: "check if an AK has high-permission policies"): who holds which
//! policies, read like credential reports (files or directories, the newest per account wins),
//! and the high-risk permissions in them.
//!
//! Formats:
//! - AWS: `aws iam get-account-authorization-details` JSON as the CLI prints it (users, groups,
//!   roles, their attached and inline policies, and the managed policies with their versions'
//!   documents; a document may be URL-encoded JSON, as the API returns it).
//! - Alibaba RAM and Tencent CAM: their CLIs print per-user attachments and per-policy
//!   documents, neither naming the account or the user; a snapshot gathers them in one JSON
//!   envelope: `{"cloud": "alibaba", "account": "…", "generated_at": "…", "users": {"<user>":
//!   <aliyun ram ListPoliciesForUser output>}, "policies": {"<policy name>": <aliyun ram
//!   GetPolicy output>}}`, and for Tencent `users` maps the user to `tccli cam
//!   ListAttachedUserAllPolicies` output and `policies` a policy id to `tccli cam GetPolicy`.
//!
//! A statement is high-risk when it allows (`Effect`/`effect` allow): every action on every
//! resource (admin); any wildcard action on an identity, audit or security service; or a
//! credential API (create / update access keys and console passwords, attach policies) on any
//! resource. Each finding names the policy and the statement.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use crate::event::{AccountId, Cloud};
use crate::risk::Risk;
use crate::rule::Severity;

/// What makes a permission high-risk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Finding {
    Admin,
    IdentityWildcard,
    AuditWildcard,
    SecurityWildcard,
    CredentialAnyResource,
}

impl Finding {
    pub fn risk_id(self) -> &'static str {
        match self {
            Finding::Admin => "ak.admin_permissions",
            Finding::IdentityWildcard => "ak.identity_wildcard_permissions",
            Finding::AuditWildcard => "ak.audit_wildcard_permissions",
            Finding::SecurityWildcard => "ak.security_wildcard_permissions",
            Finding::CredentialAnyResource => "ak.credential_api_any_resource",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Finding::Admin => "principal holds administrator (all actions on all resources)",
            Finding::IdentityWildcard => "wildcard actions on the identity service",
            Finding::AuditWildcard => "wildcard actions on the audit-log service",
            Finding::SecurityWildcard => "wildcard actions on a security service",
            Finding::CredentialAnyResource => "credential APIs allowed on any resource",
        }
    }

    fn severity(self) -> Severity {
        match self {
            Finding::Admin => Severity::High,
            _ => Severity::Medium,
        }
    }

    fn advice(self) -> &'static str {
        match self {
            Finding::Admin => {
                "Least privilege: replace the administrator policy of a key-bearing principal by policies granting only the actions and resources its workload uses (AWS IAM Access Analyzer policy generation, Alibaba RAM / Tencent CAM access records help); keep administrators to console users with MFA."
            }
            Finding::IdentityWildcard => {
                "Least privilege: grant the identity actions the workload needs by name, scoped to its own resources; a key that may manage users, keys and policies can make itself administrator."
            }
            Finding::AuditWildcard => {
                "Least privilege: no workload key needs to stop, delete or change audit trails; remove the wildcard on the audit-log service."
            }
            Finding::SecurityWildcard => {
                "Least privilege: a workload key that can change security services can disable detection; grant read-only actions if any."
            }
            Finding::CredentialAnyResource => {
                "Least privilege: scope credential APIs to the principal itself (for example arn:aws:iam::ACCOUNT:user/${aws:username}) or remove them from workload keys."
            }
        }
    }
}

/// One high-risk grant: the finding, the policy and the statement that grant it.
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    pub finding: Finding,
    pub policy: String,
    pub statement: Value,
}

/// One account's snapshot.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub cloud: Cloud,
    pub account: String,
    pub file: String,
    pub generated_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Per principal (user name), its high-risk grants.
    pub principals: BTreeMap<String, Vec<Grant>>,
}

/// The newest snapshot per account, looked up by principal.
#[derive(Debug, Clone, Default)]
pub struct PermissionIndex {
    snapshots: Vec<Arc<Snapshot>>,
    by_principal: HashMap<(Cloud, String, String), Arc<Vec<Grant>>>,
    by_name: HashMap<(Cloud, String), Option<Arc<Vec<Grant>>>>,
}

impl PermissionIndex {
    pub fn new(snapshots: Vec<Snapshot>) -> PermissionIndex {
        // The newest per account (generated time, else the order given).
        let mut newest: BTreeMap<(Cloud, String), Snapshot> = BTreeMap::new();
        for s in snapshots {
            let key = (s.cloud, s.account.clone());
            match newest.get(&key) {
                Some(old) if old.generated_at > s.generated_at => {}
                _ => {
                    newest.insert(key, s);
                }
            }
        }
        let mut index = PermissionIndex::default();
        for s in newest.into_values() {
            for (p, grants) in &s.principals {
                if grants.is_empty() {
                    continue;
                }
                let g = Arc::new(grants.clone());
                index
                    .by_principal
                    .insert((s.cloud, s.account.clone(), p.clone()), g.clone());
                // By name alone only while one account has the name (events without an
                // account must not borrow another account's admin).
                match index.by_name.entry((s.cloud, p.clone())) {
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(Some(g));
                    }
                    std::collections::hash_map::Entry::Occupied(mut o) => {
                        o.insert(None);
                    }
                }
            }
            index.snapshots.push(Arc::new(s));
        }
        index
    }

    pub fn is_empty(&self) -> bool {
        self.snapshots.is_empty()
    }

    /// The high-risk grants of a principal (its account when known).
    pub fn grants(
        &self,
        cloud: Cloud,
        account: Option<&str>,
        principal: &str,
    ) -> Option<&Arc<Vec<Grant>>> {
        if self.by_principal.is_empty() {
            return None;
        }
        match account {
            Some(a) => self
                .by_principal
                .get(&(cloud, a.to_owned(), principal.to_owned())),
            None => self
                .by_name
                .get(&(cloud, principal.to_owned()))
                .and_then(Option::as_ref),
        }
    }

    /// The policy that makes the principal an administrator, if one does.
    pub fn admin_via(&self, cloud: Cloud, account: Option<&str>, principal: &str) -> Option<&str> {
        self.grants(cloud, account, principal)?
            .iter()
            .find(|g| g.finding == Finding::Admin)
            .map(|g| g.policy.as_str())
    }

    /// The configuration risks: one per principal and finding, naming every policy and
    /// statement that grants it.
    pub fn risks(&self) -> Vec<Risk> {
        let mut out = Vec::new();
        for s in &self.snapshots {
            for (principal, grants) in &s.principals {
                let mut by: BTreeMap<Finding, Vec<&Grant>> = BTreeMap::new();
                for g in grants {
                    by.entry(g.finding).or_default().push(g);
                }
                for (finding, gs) in by {
                    let detail = gs
                        .iter()
                        .map(|g| format!("policy {} grants {}", g.policy, g.statement))
                        .collect::<Vec<_>>()
                        .join("; ");
                    out.push(Risk {
                        risk_id: finding.risk_id(),
                        name: finding.name(),
                        severity: finding.severity(),
                        cloud: s.cloud,
                        account_id: Some(AccountId(s.account.clone())),
                        principal: principal.clone(),
                        key_slot: None,
                        key_id: None,
                        detail: crate::alarm::bound(&detail, 4096, &mut 0),
                        advice: finding.advice(),
                        source: s.file.clone(),
                    });
                }
            }
        }
        out
    }
}

/// Reads every snapshot file under `paths` (directories: their `*.json`); the problems, each
/// naming its file.
pub fn load(paths: &[PathBuf]) -> (PermissionIndex, Vec<String>) {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = walkdir::WalkDir::new(p)
                .sort_by_file_name()
                .into_iter()
                .filter_map(Result::ok)
                .filter(|e| {
                    e.file_type().is_file() && e.path().extension().is_some_and(|x| x == "json")
                })
                .map(walkdir::DirEntry::into_path)
                .collect();
            files.append(&mut found);
        } else {
            files.push(p.clone());
        }
    }
    let mut snapshots = Vec::new();
    let mut errors = Vec::new();
    for f in files {
        match read_file(&f) {
            Ok(s) => snapshots.push(s),
            Err(e) => errors.push(e),
        }
    }
    (PermissionIndex::new(snapshots), errors)
}

/// Reads one snapshot file (its format detected from its members).
pub fn read_file(path: &Path) -> Result<Snapshot, String> {
    let name = path.display().to_string();
    let text = std::fs::read(path).map_err(|e| format!("{name}: cannot read: {e}"))?;
    let doc: Value = serde_json::from_slice(&text).map_err(|e| format!("{name}: not JSON: {e}"))?;
    let generated_at = doc["generated_at"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
        .or_else(|| {
            std::fs::metadata(path)
                .and_then(|m| m.modified())
                .ok()
                .map(chrono::DateTime::<chrono::Utc>::from)
        });
    if doc.get("UserDetailList").is_some() {
        return aws(&doc, &name, generated_at);
    }
    match doc["cloud"].as_str() {
        Some("alibaba") => envelope(&doc, Cloud::Alibaba, &name, generated_at),
        Some("tencent") => envelope(&doc, Cloud::Tencent, &name, generated_at),
        Some(other) => Err(format!(
            "{name}: cloud: {other:?} is not alibaba or tencent (AWS snapshots are get-account-authorization-details output)"
        )),
        None => Err(format!(
            "{name}: neither get-account-authorization-details output (UserDetailList) nor an alibaba / tencent envelope (cloud, account, users, policies)"
        )),
    }
}

/// A policy document: an object, a JSON string, or URL-encoded JSON (the IAM API's form).
fn document(v: &Value) -> Option<Value> {
    match v {
        Value::Object(_) => Some(v.clone()),
        Value::String(s) => serde_json::from_str(s).ok().or_else(|| {
            let decoded = percent_decode(s)?;
            serde_json::from_str(&decoded).ok()
        }),
        _ => None,
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// A statement member's values, lowercased; Tencent's `name/cam:*` form without its prefix.
fn strings(v: &Value) -> Vec<String> {
    let norm = |s: &str| {
        let s = s.to_ascii_lowercase();
        match s.strip_prefix("name/") {
            Some(rest) => rest.to_owned(),
            None => s,
        }
    };
    match v {
        Value::String(s) => vec![norm(s)],
        Value::Array(a) => a.iter().filter_map(|x| x.as_str().map(norm)).collect(),
        _ => Vec::new(),
    }
}

const IDENTITY: [&str; 4] = ["iam", "ram", "cam", "sts"];
const AUDIT: [&str; 3] = ["cloudtrail", "actiontrail", "cloudaudit"];
const SECURITY: [&str; 12] = [
    "guardduty",
    "securityhub",
    "config",
    "access-analyzer",
    "inspector2",
    "macie2",
    "sas",
    "yundun-sas",
    "cfw",
    "cwp",
    "csc",
    "ssa",
];
/// Action name prefixes that only read.
const READ_PREFIXES: [&str; 6] = ["get", "list", "describe", "lookup", "query", "check"];

const CREDENTIAL_APIS: [&str; 17] = [
    "iam:attachrolepolicy",
    "iam:putrolepolicy",
    "iam:createpolicyversion",
    "iam:passrole",
    "iam:createaccesskey",
    "iam:updateaccesskey",
    "iam:createloginprofile",
    "iam:updateloginprofile",
    "iam:attachuserpolicy",
    "iam:putuserpolicy",
    "ram:createaccesskey",
    "ram:updateaccesskey",
    "ram:createloginprofile",
    "ram:attachpolicytouser",
    "cam:createaccesskey",
    "cam:updateaccesskey",
    "cam:attachuserpolicy",
];

/// The high-risk findings of one statement.
fn classify(statement: &Value) -> Vec<Finding> {
    let effect = statement
        .get("Effect")
        .or_else(|| statement.get("effect"))
        .and_then(Value::as_str)
        .unwrap_or("");
    if !effect.eq_ignore_ascii_case("allow") {
        return Vec::new();
    }
    let actions = strings(
        statement
            .get("Action")
            .or_else(|| statement.get("action"))
            .unwrap_or(&Value::Null),
    );
    let resources = strings(
        statement
            .get("Resource")
            .or_else(|| statement.get("resource"))
            .unwrap_or(&Value::Null),
    );
    let any_resource = resources.iter().any(|r| r == "*");
    let mut out = Vec::new();
    // Allow everything except a few actions, everywhere: as good as admin.
    let not_action = statement
        .get("NotAction")
        .or_else(|| statement.get("not_action"))
        .is_some();
    if not_action && any_resource {
        out.push(Finding::Admin);
        return out;
    }
    if any_resource && actions.iter().any(|a| a == "*" || a == "*:*") {
        out.push(Finding::Admin);
        return out;
    }
    // A wildcard that can reach a write action (`iam:*`, `iam:*AccessKey*`, `iam:Put*`); read
    // families (`iam:Get*`, `iam:List*`, `cloudtrail:Describe*`) are not high-risk.
    let wildcard_on = |services: &[&str]| {
        actions.iter().any(|a| {
            a.split_once(':').is_some_and(|(svc, act)| {
                services.contains(&svc)
                    && act.contains('*')
                    && !READ_PREFIXES.iter().any(|p| act.starts_with(p))
            })
        })
    };
    if wildcard_on(&IDENTITY) {
        out.push(Finding::IdentityWildcard);
    }
    if wildcard_on(&AUDIT) {
        out.push(Finding::AuditWildcard);
    }
    if wildcard_on(&SECURITY) {
        out.push(Finding::SecurityWildcard);
    }
    if any_resource
        && !out.contains(&Finding::IdentityWildcard)
        && actions
            .iter()
            .any(|a| CREDENTIAL_APIS.contains(&a.as_str()))
    {
        out.push(Finding::CredentialAnyResource);
    }
    out
}

/// The most grants kept per principal (a crafted snapshot cannot multiply them).
const MAX_GRANTS: usize = 64;

/// A principal's grants without repeats (same finding through the same policy), at most
/// [`MAX_GRANTS`].
fn dedup(mut grants: Vec<Grant>) -> Vec<Grant> {
    let mut seen = std::collections::HashSet::new();
    grants.retain(|g| seen.insert((g.finding, g.policy.clone())));
    grants.truncate(MAX_GRANTS);
    grants
}

/// The grants of one policy document.
fn grants(policy: &str, doc: &Value) -> Vec<Grant> {
    let statements = doc
        .get("Statement")
        .or_else(|| doc.get("statement"))
        .cloned()
        .unwrap_or(Value::Null);
    let list = match statements {
        Value::Array(a) => a,
        Value::Object(_) => vec![statements],
        _ => Vec::new(),
    };
    let mut out = Vec::new();
    for s in list {
        for finding in classify(&s) {
            out.push(Grant {
                finding,
                policy: policy.to_owned(),
                statement: s.clone(),
            });
        }
    }
    out
}

fn aws(
    doc: &Value,
    name: &str,
    generated_at: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<Snapshot, String> {
    // Managed policies: their default version's document, by ARN.
    let mut managed: HashMap<String, (String, Value)> = HashMap::new();
    for p in doc["Policies"].as_array().into_iter().flatten() {
        let arn = p["Arn"].as_str().unwrap_or_default().to_owned();
        let pname = p["PolicyName"].as_str().unwrap_or(&arn).to_owned();
        let version = p["PolicyVersionList"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["IsDefaultVersion"].as_bool() == Some(true))
            .and_then(|v| document(&v["Document"]));
        if let Some(d) = version {
            managed.insert(arn, (pname, d));
        }
    }
    let attached = |entity: &Value, out: &mut Vec<Grant>| {
        for a in entity["AttachedManagedPolicies"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let arn = a["PolicyArn"].as_str().unwrap_or_default();
            let pname = a["PolicyName"].as_str().unwrap_or(arn);
            match managed.get(arn) {
                Some((n, d)) => out.extend(grants(n, d)),
                // An AWS managed policy the snapshot omitted: known by name.
                None if pname == "AdministratorAccess" => out.push(Grant {
                    finding: Finding::Admin,
                    policy: pname.to_owned(),
                    statement: serde_json::json!({"Effect": "Allow", "Action": "*", "Resource": "*"}),
                }),
                None => {}
            }
        }
    };
    let inline = |entity: &Value, member: &str, out: &mut Vec<Grant>| {
        for p in entity[member].as_array().into_iter().flatten() {
            let pname = p["PolicyName"].as_str().unwrap_or("inline");
            if let Some(d) = document(&p["PolicyDocument"]) {
                out.extend(grants(&format!("{pname} (inline)"), &d));
            }
        }
    };
    let mut groups: HashMap<String, Vec<Grant>> = HashMap::new();
    for g in doc["GroupDetailList"].as_array().into_iter().flatten() {
        let mut out = Vec::new();
        attached(g, &mut out);
        inline(g, "GroupPolicyList", &mut out);
        groups.insert(
            g["GroupName"].as_str().unwrap_or_default().to_owned(),
            dedup(out),
        );
    }
    let mut account = String::new();
    let mut principals = BTreeMap::new();
    let users = doc["UserDetailList"]
        .as_array()
        .ok_or_else(|| format!("{name}: UserDetailList is not a list"))?;
    for u in users {
        let Some(user) = u["UserName"].as_str() else {
            continue;
        };
        if account.is_empty()
            && let Some(a) = u["Arn"].as_str().and_then(|arn| arn.split(':').nth(4))
        {
            account = a.to_owned();
        }
        let mut out = Vec::new();
        attached(u, &mut out);
        inline(u, "UserPolicyList", &mut out);
        let mut member_of: Vec<&str> = u["GroupList"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        member_of.sort_unstable();
        member_of.dedup();
        for g in member_of {
            if let Some(gs) = groups.get(g) {
                out.extend(gs.iter().take(MAX_GRANTS).map(|x| Grant {
                    policy: format!("{} (group {g})", x.policy),
                    ..x.clone()
                }));
            }
            if out.len() > 4 * MAX_GRANTS {
                out = dedup(out);
            }
        }
        principals.insert(user.to_owned(), dedup(out));
    }
    for r in doc["RoleDetailList"].as_array().into_iter().flatten() {
        let Some(role) = r["RoleName"].as_str() else {
            continue;
        };
        if account.is_empty()
            && let Some(a) = r["Arn"].as_str().and_then(|arn| arn.split(':').nth(4))
        {
            account = a.to_owned();
        }
        let mut out = Vec::new();
        attached(r, &mut out);
        inline(r, "RolePolicyList", &mut out);
        // A role named like a user adds to it rather than hiding the user's grants.
        let entry: &mut Vec<Grant> = principals.entry(role.to_owned()).or_default();
        entry.append(&mut out);
        let merged = dedup(std::mem::take(entry));
        *entry = merged;
    }
    if account.is_empty() {
        return Err(format!("{name}: no ARN names the account"));
    }
    Ok(Snapshot {
        cloud: Cloud::Aws,
        account,
        file: name.to_owned(),
        generated_at,
        principals,
    })
}

fn envelope(
    doc: &Value,
    cloud: Cloud,
    name: &str,
    generated_at: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<Snapshot, String> {
    let account = match &doc["account"] {
        Value::String(s) if !s.is_empty() => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return Err(format!("{name}: account is missing")),
    };
    let users = doc["users"]
        .as_object()
        .ok_or_else(|| format!("{name}: users is not an object of user name to attachments"))?;
    let policies = doc["policies"].as_object().cloned().unwrap_or_default();
    // A policy's document: GetPolicy's `DefaultPolicyVersion.PolicyDocument` (Alibaba) or
    // `PolicyDocument` (Tencent), a JSON string.
    let policy_doc = |key: &str| -> Option<Value> {
        let p = policies.get(key)?;
        document(&p["DefaultPolicyVersion"]["PolicyDocument"])
            .or_else(|| document(&p["PolicyDocument"]))
    };
    let mut principals = BTreeMap::new();
    for (user, attachments) in users {
        let list: Vec<&Value> = match cloud {
            Cloud::Alibaba => attachments["Policies"]["Policy"]
                .as_array()
                .map(|a| a.iter().collect())
                .unwrap_or_default(),
            _ => attachments["PolicyList"]
                .as_array()
                .map(|a| a.iter().collect())
                .unwrap_or_default(),
        };
        let mut out = Vec::new();
        for a in list {
            let pname = a["PolicyName"].as_str().unwrap_or_default();
            let key = match cloud {
                Cloud::Tencent => match &a["PolicyId"] {
                    Value::Number(n) => n.to_string(),
                    Value::String(s) => s.clone(),
                    _ => pname.to_owned(),
                },
                _ => pname.to_owned(),
            };
            match policy_doc(&key).or_else(|| policy_doc(pname)) {
                Some(d) => out.extend(grants(pname, &d)),
                // The clouds' system administrator policies, known by name.
                None if pname == "AdministratorAccess" => out.push(Grant {
                    finding: Finding::Admin,
                    policy: pname.to_owned(),
                    statement: serde_json::json!({"effect": "allow", "action": "*", "resource": "*"}),
                }),
                None => {}
            }
        }
        principals.insert(user.clone(), dedup(out));
    }
    Ok(Snapshot {
        cloud,
        account,
        file: name.to_owned(),
        generated_at,
        principals,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn statements_are_classified() {
        let f = |s: Value| classify(&s);
        assert_eq!(
            f(json!({"Effect": "Allow", "Action": "*", "Resource": "*"})),
            vec![Finding::Admin]
        );
        assert_eq!(
            f(json!({"effect": "allow", "action": ["*"], "resource": ["*"]})),
            vec![Finding::Admin]
        );
        assert!(f(json!({"Effect": "Deny", "Action": "*", "Resource": "*"})).is_empty());
        assert_eq!(
            f(json!({"Effect": "Allow", "Action": ["iam:*", "cloudtrail:Stop*"], "Resource": "*"})),
            vec![Finding::IdentityWildcard, Finding::AuditWildcard]
        );
        assert_eq!(
            f(json!({"Effect": "Allow", "Action": "iam:CreateAccessKey", "Resource": "*"})),
            vec![Finding::CredentialAnyResource]
        );
        assert!(
            f(json!({"Effect": "Allow", "Action": "iam:CreateAccessKey", "Resource": "arn:aws:iam::1:user/${aws:username}"}))
                .is_empty()
        );
        assert!(f(json!({"Effect": "Allow", "Action": "s3:*", "Resource": "*"})).is_empty());
        assert_eq!(
            f(json!({"Effect": "Allow", "NotAction": "iam:*", "Resource": "*"})),
            vec![Finding::Admin]
        );
        assert_eq!(
            f(json!({"effect": "allow", "action": ["name/cam:*"], "resource": ["*"]})),
            vec![Finding::IdentityWildcard]
        );
        assert!(
            f(json!({"Effect": "Allow", "Action": ["iam:Get*", "iam:List*", "cloudtrail:Describe*"], "Resource": "*"}))
                .is_empty()
        );
        assert_eq!(
            f(json!({"Effect": "Allow", "Action": "iam:*AccessKey*", "Resource": "*"})),
            vec![Finding::IdentityWildcard]
        );
    }

    #[test]
    fn url_encoded_documents_are_read() {
        let d = document(&json!(
            "%7B%22Version%22%3A%222012-10-17%22%2C%22Statement%22%3A%5B%7B%22Effect%22%3A%22Allow%22%2C%22Action%22%3A%22*%22%2C%22Resource%22%3A%22*%22%7D%5D%7D"
        ))
        .unwrap();
        assert_eq!(grants("p", &d)[0].finding, Finding::Admin);
    }
}
