//! The one normalized [`Event`] that every stage after `provider` sees.
//!
//! Nothing in this module knows a cloud's raw field names; the provider decoders fill it in.

use std::fmt;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// For `#[schemars(required)]` on an `Option`: the member is always present, and may be null
/// (schemars gives such a member the inner type's schema alone).
fn nullable(schema: &mut schemars::Schema) {
    let Some(obj) = schema.as_object_mut() else {
        return;
    };
    match obj.get_mut("type") {
        Some(serde_json::Value::String(t)) => {
            let t = std::mem::take(t);
            obj.insert("type".to_owned(), serde_json::json!([t, "null"]));
        }
        Some(serde_json::Value::Array(types)) => {
            if !types.iter().any(|t| t == "null") {
                types.push(serde_json::json!("null"));
            }
        }
        _ => {
            let inner = serde_json::Value::Object(std::mem::take(obj));
            obj.insert(
                "anyOf".to_owned(),
                serde_json::json!([inner, {"type": "null"}]),
            );
        }
    }
}

/// The cloud an event or a credential report comes from.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Cloud {
    Aws,
    Alibaba,
    Tencent,
}

impl Cloud {
    pub const ALL: [Cloud; 3] = [Cloud::Aws, Cloud::Alibaba, Cloud::Tencent];

    pub fn as_str(self) -> &'static str {
        match self {
            Cloud::Aws => "aws",
            Cloud::Alibaba => "alibaba",
            Cloud::Tencent => "tencent",
        }
    }
}

impl fmt::Display for Cloud {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Cloud {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "aws" | "cloudtrail" => Ok(Cloud::Aws),
            "alibaba" | "aliyun" | "actiontrail" => Ok(Cloud::Alibaba),
            "tencent" | "qcloud" | "cloudaudit" => Ok(Cloud::Tencent),
            other => Err(format!(
                "unknown provider {other:?} (expected aws, alibaba or tencent)"
            )),
        }
    }
}

/// An access key id (AWS `AKIA…`/`ASIA…`, Alibaba `LTAI…`/`STS.…`, Tencent `AKID…`).
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(transparent)]
pub struct AccessKeyId(pub String);

impl AccessKeyId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AccessKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A cloud account id (AWS 12 digits, Alibaba UID, Tencent owner UIN).
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(transparent)]
pub struct AccountId(pub String);

impl AccountId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What kind of identity made the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalType {
    /// The root / main account itself.
    Root,
    /// An IAM / RAM / CAM user (sub-user).
    User,
    /// A role session (AssumeRole, instance role, SSO permission set).
    AssumedRole,
    /// A federated user (GetFederationToken, SAML / web identity, IdP user).
    Federated,
    /// A cloud service acting on its own (AWSService, Alibaba `system`).
    Service,
    Unknown,
}

/// The identity that made a call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Principal {
    #[serde(rename = "type")]
    pub kind: PrincipalType,
    /// User name; for role sessions `role/session`.
    #[schemars(required, transform = nullable)]
    pub name: Option<String>,
    /// The cloud's principal id (AWS `AIDA…`/`AROA…:session`, Alibaba / Tencent UIN).
    #[schemars(required, transform = nullable)]
    pub id: Option<String>,
    /// ARN where the cloud has one (AWS always; Alibaba and Tencent when the log carries it).
    #[schemars(required, transform = nullable)]
    pub arn: Option<String>,
    /// For role sessions: the role (session issuer) name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// A cloud service that made the call on the principal's behalf (`invokedBy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invoked_by: Option<String>,
    /// Whether the session was MFA-authenticated, where the log says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mfa: Option<bool>,
    /// For a role session held by a VM (EC2 instance profile, CVM / ECS instance role): the
    /// instance id in its session name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
}

/// What the request did, from its parameters and response: the facts rules read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Request {
    /// The user a credential, policy or login call targets (`userName`, `UserName`,
    /// `TargetUin`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_user: Option<String>,
    /// The policy attached or written: ARN, name, `policy-id:N`, or `inline:full-access` for an
    /// inline document that allows `*` on `*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The access key a `CreateAccessKey` call created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_key_id: Option<AccessKeyId>,
    /// The main resource read or changed (secret, parameter, trail, instance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// What the parameters do, for the calls whose name alone does not say
    /// (`provider::effects`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub effects: Vec<Effect>,
}

/// What a call's parameters do (read by rules as `effect:`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    /// Audit logging narrowed, redirected or switched off: event selectors that drop
    /// management events or reads / writes, a trail limited to one region, validation off, logs
    /// sent elsewhere, bucket access logging off.
    LoggingWeakened,
    /// Bucket versioning suspended (objects can then be destroyed for good).
    VersioningSuspended,
    /// A security group / network ACL opened to `0.0.0.0/0` or `::/0`.
    OpenedToInternet,
    /// A VM's user data replaced (code run at its next boot).
    UserDataChanged,
    /// A Lambda layer added (code injected into a function).
    LayerAdded,
    /// A database's master password reset.
    PasswordReset,
    /// A container task defined to read its task role's credentials.
    ContainerCredentialsRead,
}

impl Effect {
    pub const ALL: [Effect; 7] = [
        Effect::LoggingWeakened,
        Effect::VersioningSuspended,
        Effect::OpenedToInternet,
        Effect::UserDataChanged,
        Effect::LayerAdded,
        Effect::PasswordReset,
        Effect::ContainerCredentialsRead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Effect::LoggingWeakened => "logging_weakened",
            Effect::VersioningSuspended => "versioning_suspended",
            Effect::OpenedToInternet => "opened_to_internet",
            Effect::UserDataChanged => "user_data_changed",
            Effect::LayerAdded => "layer_added",
            Effect::PasswordReset => "password_reset",
            Effect::ContainerCredentialsRead => "container_credentials_read",
        }
    }

    pub fn parse(s: &str) -> Option<Effect> {
        Effect::ALL.into_iter().find(|e| e.as_str() == s)
    }
}

impl Request {
    pub fn is_empty(&self) -> bool {
        self.target_user.is_none()
            && self.policy.is_none()
            && self.created_key_id.is_none()
            && self.resource.is_none()
            && self.effects.is_empty()
    }
}

/// The shape of the credential used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyKind {
    /// A long-term key (AWS `AKIA`, Alibaba `LTAI`, Tencent `AKID` without a session token).
    Permanent,
    /// A session credential (AWS `ASIA`, Alibaba `STS.`, Tencent key with a session token).
    Temporary,
    /// No access key was used (console password sign-in, service event).
    None,
}

/// Whether the call succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    Failure,
}

/// Where a record came from: a file (path, record index, line) or a Kafka message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Origin {
    /// File path, or `-` for standard input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// 0-based index of the record within the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<u64>,
    /// 1-based line where the record starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<i64>,
    /// 0-based index of the event inside a batch record (`Records[]`, an array, `Events[]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
}

impl Origin {
    pub fn file(path: impl Into<String>, record: u64, line: u64) -> Self {
        Origin {
            file: Some(path.into()),
            record: Some(record),
            line: Some(line),
            ..Origin::default()
        }
    }

    pub fn kafka(topic: impl Into<String>, partition: i32, offset: i64) -> Self {
        Origin {
            topic: Some(topic.into()),
            partition: Some(partition),
            offset: Some(offset),
            ..Origin::default()
        }
    }

    /// The same origin, pointing at event `index` inside a batch record.
    pub fn at_index(&self, index: usize) -> Self {
        Origin {
            index: Some(u32::try_from(index).unwrap_or(u32::MAX)),
            ..self.clone()
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{file}")?;
            if let Some(line) = self.line {
                write!(f, " line {line}")?;
            }
            if let Some(record) = self.record {
                write!(f, " record {record}")?;
            }
        } else if let Some(topic) = &self.topic {
            write!(
                f,
                "{topic}[{}]@{}",
                self.partition.unwrap_or(-1),
                self.offset.unwrap_or(-1)
            )?;
        } else {
            f.write_str("<unknown origin>")?;
        }
        if let Some(index) = self.index {
            write!(f, " event {index}")?;
        }
        Ok(())
    }
}

/// One cloud API call, normalized across AWS CloudTrail, Alibaba ActionTrail and Tencent
/// CloudAudit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Event {
    pub cloud: Cloud,
    /// The log's event id; when the log has none, `akw-` and a hash of the record.
    pub event_id: String,
    /// When the call happened, UTC.
    pub event_time: DateTime<Utc>,
    #[schemars(required, transform = nullable)]
    pub account_id: Option<AccountId>,
    pub principal: Principal,
    /// The access key that signed the call; null when none was used.
    #[schemars(required, transform = nullable)]
    pub access_key_id: Option<AccessKeyId>,
    pub key_kind: KeyKind,
    /// The caller's IP when the log holds a valid one.
    #[schemars(required, transform = nullable)]
    pub source_ip: Option<IpAddr>,
    /// What the log said the source was: an IP, a service (`ec2.amazonaws.com`,
    /// `AWS Internal`), a masked (`10.10.**.**`) or invalid address.
    #[schemars(required, transform = nullable)]
    pub source_address: Option<String>,
    #[schemars(required, transform = nullable)]
    pub user_agent: Option<String>,
    #[schemars(required, transform = nullable)]
    pub region: Option<String>,
    /// Normalized short service name (`iam`, `sts`, `ec2`, `ram`, `cam`, ...).
    pub service: String,
    /// The API name (`CreateAccessKey`, `DescribeInstances`, ...).
    pub action: String,
    /// Whether the call only reads, where the log says.
    #[schemars(required, transform = nullable)]
    pub read_only: Option<bool>,
    /// A console session rather than an API / SDK call.
    pub console: bool,
    pub outcome: Outcome,
    #[schemars(required, transform = nullable)]
    pub error_code: Option<String>,
    #[schemars(required, transform = nullable)]
    pub request_id: Option<String>,
    /// Facts from the request parameters and response.
    #[serde(default, skip_serializing_if = "Request::is_empty")]
    pub request: Request,
    pub origin: Origin,
}

impl Event {
    /// `service:action`, the form allowlists and catalogs match against.
    pub fn api(&self) -> String {
        let mut s = String::new();
        self.write_api(&mut s);
        s
    }

    /// [`Event::api`] into `out` (cleared first), reusing its buffer.
    pub fn write_api(&self, out: &mut String) {
        out.clear();
        out.reserve(self.service.len() + 1 + self.action.len());
        out.push_str(&self.service);
        out.push(':');
        out.push_str(&self.action);
    }
}

/// An IP address's text (as `Display` writes it) into `out`, cleared first. IPv4, nearly every
/// address in the logs, is written digit by digit, without the formatting machinery.
pub fn write_ip(ip: std::net::IpAddr, out: &mut String) {
    out.clear();
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                if octet >= 100 {
                    out.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    out.push(char::from(b'0' + octet / 10 % 10));
                }
                out.push(char::from(b'0' + octet % 10));
            }
        }
        std::net::IpAddr::V6(_) => {
            use std::fmt::Write;
            let _ = write!(out, "{ip}");
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        /// The digit-by-digit IPv4 text is `Display`'s, for every octet (and IPv6 goes through
        /// `Display`); the buffer's earlier contents never show.
        #[test]
        fn an_ip_is_written_as_display_writes_it(
            v4 in any::<[u8; 4]>(),
            v6 in any::<[u16; 8]>(),
            before in ".{0,20}",
        ) {
            for ip in [
                std::net::IpAddr::from(v4),
                std::net::IpAddr::from(v6),
                std::net::IpAddr::from([0u8, 9, 10, 99]),
                std::net::IpAddr::from([100u8, 199, 200, 255]),
            ] {
                let mut out = before.clone();
                super::write_ip(ip, &mut out);
                prop_assert_eq!(out, ip.to_string());
            }
        }
    }
}
