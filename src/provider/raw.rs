//! Borrowed, typed views of the raw log records of all three clouds.
//!
//! One superset struct ([`RawEvent`]) covers the top-level members that AWS CloudTrail,
//! Alibaba ActionTrail and Tencent CloudAudit use (they share most names), so a record is
//! parsed once, strings are borrowed from the input where they carry no escapes, and every
//! member we do not need is skipped without being built. Members whose JSON type varies
//! between clouds and versions (`eventTime`, `requestID`, `errorCode`, ...) are [`Scalar`]s;
//! members that Tencent may ship as a JSON string holding JSON are [`MaybeJson`].

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// A JSON value of any scalar type; objects and arrays are skipped as [`Scalar::Other`].
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar<'a> {
    Str(Cow<'a, str>),
    Int(i64),
    UInt(u64),
    Float(f64),
    Bool(bool),
    Null,
    Other,
}

impl<'a> Scalar<'a> {
    /// The value as text (numbers and booleans formatted), `None` for null / containers.
    pub fn text(&self) -> Option<Cow<'_, str>> {
        match self {
            Scalar::Str(s) => Some(Cow::Borrowed(s.as_ref())),
            Scalar::Int(i) => Some(Cow::Owned(i.to_string())),
            Scalar::UInt(u) => Some(Cow::Owned(u.to_string())),
            Scalar::Float(f) => Some(Cow::Owned(f.to_string())),
            Scalar::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
            Scalar::Null | Scalar::Other => None,
        }
    }

    /// The value as an owned string, `None` for null, containers and empty strings.
    pub fn non_empty(&self) -> Option<String> {
        self.text().filter(|s| !s.is_empty()).map(Cow::into_owned)
    }

    /// `true`/`false` from a boolean, `"true"`/`"false"`, `1`/`0` or `"1"`/`"0"`.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Scalar::Bool(b) => Some(*b),
            Scalar::Int(i) => Some(*i != 0),
            Scalar::UInt(u) => Some(*u != 0),
            Scalar::Str(s) => match s.trim() {
                t if t.eq_ignore_ascii_case("true") || t == "1" => Some(true),
                t if t.eq_ignore_ascii_case("false") || t == "0" => Some(false),
                _ => None,
            },
            _ => None,
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Scalar<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for ScalarVisitor<'a> {
            type Value = Scalar<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Owned(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Scalar::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Scalar::UInt(v))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Scalar::Float(v))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(Scalar::Bool(v))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Scalar::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Scalar::Null)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                Scalar::deserialize(d)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other)
            }
        }
        deserializer.deserialize_any(ScalarVisitor(PhantomData))
    }
}

/// A member that is either the object `T` itself or a JSON string holding it (Tencent).
#[derive(Debug)]
pub enum MaybeJson<'a, T> {
    Object(T),
    Text(Cow<'a, str>),
    Null,
}

impl<'de: 'a, 'a, T: Deserialize<'de>> Deserialize<'de> for MaybeJson<'a, T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V<'a, T>(PhantomData<(&'a (), T)>);
        impl<'de: 'a, 'a, T: Deserialize<'de>> Visitor<'de> for V<'a, T> {
            type Value = MaybeJson<'a, T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object or a JSON string holding one")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(MaybeJson::Object)
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(MaybeJson::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(MaybeJson::Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(MaybeJson::Text(Cow::Owned(v)))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(MaybeJson::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(MaybeJson::Null)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                MaybeJson::deserialize(d)
            }
            // Numbers, booleans and arrays where an object was expected carry nothing we use.
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(MaybeJson::Null)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(MaybeJson::Null)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(MaybeJson::Null)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(MaybeJson::Null)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(MaybeJson::Null)
            }
        }
        deserializer.deserialize_any(V(PhantomData))
    }
}

impl<'a, T> MaybeJson<'a, T> {
    /// Calls `f` with the object, parsing it first when it came as a JSON string.
    /// A string that does not hold a valid object is treated as absent.
    pub fn with<R>(&self, f: impl FnOnce(Option<&T>) -> R) -> R
    where
        T: for<'x> Deserialize<'x>,
    {
        match self {
            MaybeJson::Object(t) => f(Some(t)),
            MaybeJson::Text(s) => {
                let parsed: Option<T> = serde_json::from_str(s).ok();
                f(parsed.as_ref())
            }
            MaybeJson::Null => f(None),
        }
    }
}

/// The members of a log record that akwatch reads, for all three clouds and their wrappers.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawEvent<'a> {
    // --- the event itself (shared names first, then per-cloud spellings) ---
    #[serde(rename = "eventVersion", borrow)]
    pub event_version: Option<Scalar<'a>>,
    #[serde(rename = "userIdentity", borrow)]
    pub user_identity: Option<MaybeJson<'a, RawIdentity<'a>>>,
    #[serde(rename = "eventTime", borrow)]
    pub event_time: Option<Scalar<'a>>,
    #[serde(rename = "eventSource", borrow)]
    pub event_source: Option<Cow<'a, str>>,
    #[serde(rename = "eventName", borrow)]
    pub event_name: Option<Cow<'a, str>>,
    #[serde(rename = "eventType", borrow)]
    pub event_type: Option<Cow<'a, str>>,
    #[serde(rename = "awsRegion", borrow)]
    pub aws_region: Option<Cow<'a, str>>,
    #[serde(rename = "acsRegion", borrow)]
    pub acs_region: Option<Cow<'a, str>>,
    #[serde(rename = "eventRegion", borrow)]
    pub event_region: Option<Cow<'a, str>>,
    /// AWS and Tencent spelling.
    #[serde(rename = "sourceIPAddress", borrow)]
    pub source_ip_address: Option<Cow<'a, str>>,
    /// Alibaba spelling.
    #[serde(rename = "sourceIpAddress", borrow)]
    pub source_ip_address_alt: Option<Cow<'a, str>>,
    #[serde(rename = "userAgent", borrow)]
    pub user_agent: Option<Cow<'a, str>>,
    #[serde(rename = "requestID", borrow)]
    pub request_id: Option<Scalar<'a>>,
    #[serde(rename = "requestId", borrow)]
    pub request_id_alt: Option<Scalar<'a>>,
    #[serde(rename = "eventID", borrow)]
    pub event_id: Option<Scalar<'a>>,
    #[serde(rename = "eventId", borrow)]
    pub event_id_alt: Option<Scalar<'a>>,
    #[serde(rename = "errorCode", borrow)]
    pub error_code: Option<Scalar<'a>>,
    #[serde(rename = "errorMessage", borrow)]
    pub error_message: Option<Scalar<'a>>,
    /// Tencent v2: numeric API error code beside the string `errorCode`.
    #[serde(rename = "apiErrorCode", borrow)]
    pub api_error_code: Option<Scalar<'a>>,
    #[serde(rename = "readOnly", borrow)]
    pub read_only: Option<Scalar<'a>>,
    /// Alibaba: `Read` / `Write`.
    #[serde(rename = "eventRW", borrow)]
    pub event_rw: Option<Cow<'a, str>>,
    /// Tencent v2: `Read` / `Write`.
    #[serde(rename = "actionType", borrow)]
    pub action_type: Option<Cow<'a, str>>,
    #[serde(rename = "sessionCredentialFromConsole", borrow)]
    pub session_credential_from_console: Option<Scalar<'a>>,
    #[serde(rename = "recipientAccountId", borrow)]
    pub recipient_account_id: Option<Scalar<'a>>,
    /// Alibaba: `Ecs`, `Ram`, ...
    #[serde(rename = "serviceName", borrow)]
    pub service_name: Option<Cow<'a, str>>,
    /// Tencent: `cvm`, `cam`, ...
    #[serde(rename = "resourceType", borrow)]
    pub resource_type: Option<Cow<'a, str>>,
    #[serde(rename = "responseElements", borrow)]
    pub response_elements: Option<MaybeJson<'a, RawResponse<'a>>>,

    // --- wrappers: when one of these is present the event is inside it ---
    /// CloudTrail log file: `{"Records":[...]}`.
    #[serde(rename = "Records", borrow)]
    pub records: Option<&'a RawValue>,
    /// EventBridge: `detail-type` and the event under `detail`.
    #[serde(rename = "detail-type", borrow)]
    pub detail_type: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub detail: Option<&'a RawValue>,
    /// CloudEvents (Tencent / Alibaba EventBridge): the event under `data`.
    #[serde(borrow)]
    pub specversion: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub data: Option<&'a RawValue>,
    /// EventBridge / CloudEvents envelope time (RFC 3339, or epoch milliseconds).
    #[serde(borrow)]
    pub time: Option<Scalar<'a>>,
    /// Alibaba SLS: the event under `event` (an object or a JSON string).
    #[serde(borrow)]
    pub event: Option<&'a RawValue>,
    #[serde(rename = "__time__", borrow)]
    pub sls_time: Option<Scalar<'a>>,
    /// Tencent `DescribeEvents` / `LookUpEvents` API response.
    #[serde(rename = "Response", borrow)]
    pub response: Option<&'a RawValue>,
    /// Tencent API list item: the event as a JSON string.
    #[serde(rename = "CloudAuditEvent", borrow)]
    pub cloud_audit_event: Option<&'a RawValue>,
    #[serde(rename = "EventTime", borrow)]
    pub outer_event_time: Option<Scalar<'a>>,
    /// Logstash / Filebeat: `@timestamp` (used when `eventTime` is missing) and the raw log
    /// line in `message` when the shipper did not parse it.
    #[serde(rename = "@timestamp", borrow)]
    pub at_timestamp: Option<Scalar<'a>>,
    #[serde(borrow)]
    pub message: Option<Cow<'a, str>>,
}

/// `userIdentity` of all three clouds.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawIdentity<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Option<Cow<'a, str>>,
    #[serde(rename = "principalId", borrow)]
    pub principal_id: Option<Scalar<'a>>,
    #[serde(borrow)]
    pub arn: Option<Cow<'a, str>>,
    #[serde(rename = "accountId", borrow)]
    pub account_id: Option<Scalar<'a>>,
    #[serde(rename = "accessKeyId", borrow)]
    pub access_key_id: Option<Cow<'a, str>>,
    /// Tencent's name for the access key id.
    #[serde(rename = "secretId", borrow)]
    pub secret_id: Option<Cow<'a, str>>,
    #[serde(rename = "userName", borrow)]
    pub user_name: Option<Cow<'a, str>>,
    #[serde(rename = "invokedBy", borrow)]
    pub invoked_by: Option<Cow<'a, str>>,
    #[serde(rename = "sessionContext", borrow)]
    pub session_context: Option<MaybeJson<'a, RawSessionContext>>,
}

/// `userIdentity.sessionContext`: AWS / Alibaba (`sessionIssuer`, `attributes`) and Tencent
/// (`token`, `uin`, `ownerUin`, `mfa`). Owned, because Tencent ships it as a JSON string; its
/// few loosely typed members are read with [`value_text`] and [`value_bool`].
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawSessionContext {
    #[serde(rename = "sessionIssuer")]
    pub session_issuer: Option<RawSessionIssuer>,
    pub attributes: Option<RawSessionAttributes>,
    #[serde(rename = "ec2RoleDelivery")]
    pub ec2_role_delivery: Option<String>,
    pub token: Option<serde_json::Value>,
    pub uin: Option<serde_json::Value>,
    #[serde(rename = "ownerUin")]
    pub owner_uin: Option<serde_json::Value>,
    pub mfa: Option<serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawSessionIssuer {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub arn: Option<String>,
    #[serde(rename = "userName")]
    pub user_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawSessionAttributes {
    #[serde(rename = "mfaAuthenticated")]
    pub mfa_authenticated: Option<serde_json::Value>,
}

/// The parts of `responseElements` the decoders read.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawResponse<'a> {
    /// AWS console sign-in result: `Success` / `Failure`.
    #[serde(rename = "ConsoleLogin", borrow)]
    pub console_login: Option<Cow<'a, str>>,
}

/// Tencent `{"Response": {"Events": [...]}}`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawTencentResponse<'a> {
    #[serde(rename = "Events", borrow)]
    pub events: Option<Vec<&'a RawValue>>,
    #[serde(rename = "Error", borrow)]
    pub error: Option<&'a RawValue>,
}

/// A JSON scalar as text (`"x"` → `x`, `12` → `12`); `None` for null, containers and `""`.
pub fn value_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A JSON scalar as a boolean: `true`, `"true"`, `1`, `"1"` (and their negatives).
pub fn value_bool(v: &serde_json::Value) -> Option<bool> {
    match v {
        serde_json::Value::Bool(b) => Some(*b),
        serde_json::Value::Number(n) => n.as_i64().map(|i| i != 0),
        serde_json::Value::String(s) => Scalar::Str(Cow::Borrowed(s)).as_bool(),
        _ => None,
    }
}
