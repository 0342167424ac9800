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

    /// The value as text without allocating, `None` for null, containers and empty strings.
    pub fn non_empty_str(&self) -> Option<Cow<'_, str>> {
        self.text().filter(|s| !s.is_empty())
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

/// A string borrowed from the input when it has no escapes. (serde's own `Cow<str>` does not
/// borrow inside an `Option`, which made every string member an allocation.)
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Text<'a>(pub Cow<'a, str>);

impl std::ops::Deref for Text<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(V(PhantomData))
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

/// Declares a struct of optional members and a hand-written `Deserialize` for it: one pass
/// over the object, each known key parsed straight into its slot, every other key skipped.
/// (serde's derive keeps one `Option<Option<T>>` local per member and moves the whole struct
/// at the end; with ~40 members that cost more than the parse itself.) Later duplicates of a
/// key win, as in most JSON readers.
macro_rules! raw_members {
    ($(#[$meta:meta])* pub struct $name:ident<$lt:lifetime> {
        $($(#[doc = $doc:literal])* $key:literal => $field:ident : $ty:ty,)*
    }) => {
        $(#[$meta])*
        #[derive(Debug, Default)]
        pub struct $name<$lt> {
            $($(#[doc = $doc])* pub $field: Option<$ty>,)*
        }

        // Deserialised into a `Box`: the structs are large, and moving them through serde's
        // `Result`s and `Option`s cost more than one allocation.
        impl<'de: $lt, $lt> Deserialize<'de> for Box<$name<$lt>> {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct V<$lt>(PhantomData<&$lt ()>);
                impl<'de: $lt, $lt> Visitor<'de> for V<$lt> {
                    type Value = Box<$name<$lt>>;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str(concat!("a JSON object (", stringify!($name), ")"))
                    }
                    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                        let mut out = Box::<$name<$lt>>::default();
                        while let Some(key) = map.next_key::<Text<'de>>()? {
                            match &*key {
                                $($key => out.$field = map.next_value()?,)*
                                _ => {
                                    map.next_value::<IgnoredAny>()?;
                                }
                            }
                        }
                        Ok(out)
                    }
                }
                deserializer.deserialize_map(V(PhantomData))
            }
        }
    };
}

raw_members! {
    /// The members of a log record that akwatch reads, for all three clouds and their wrappers.
    pub struct RawEvent<'a> {
        // --- the event itself (shared names first, then per-cloud spellings) ---
        "eventVersion" => event_version: Scalar<'a>,
        "userIdentity" => user_identity: MaybeJson<'a, Box<RawIdentity<'a>>>,
        "eventTime" => event_time: Scalar<'a>,
        "eventSource" => event_source: Text<'a>,
        "eventName" => event_name: Text<'a>,
        "eventType" => event_type: Text<'a>,
        "awsRegion" => aws_region: Text<'a>,
        "acsRegion" => acs_region: Text<'a>,
        "eventRegion" => event_region: Text<'a>,
        /// AWS and Tencent spelling.
        "sourceIPAddress" => source_ip_address: Text<'a>,
        /// Alibaba spelling.
        "sourceIpAddress" => source_ip_address_alt: Text<'a>,
        "userAgent" => user_agent: Text<'a>,
        "requestID" => request_id: Scalar<'a>,
        "requestId" => request_id_alt: Scalar<'a>,
        "eventID" => event_id: Scalar<'a>,
        "eventId" => event_id_alt: Scalar<'a>,
        "errorCode" => error_code: Scalar<'a>,
        "errorMessage" => error_message: Scalar<'a>,
        /// Tencent v2: numeric API error code beside the string `errorCode`.
        "apiErrorCode" => api_error_code: Scalar<'a>,
        "readOnly" => read_only: Scalar<'a>,
        /// Alibaba: `Read` / `Write`.
        "eventRW" => event_rw: Text<'a>,
        /// Tencent v2: `Read` / `Write`.
        "actionType" => action_type: Text<'a>,
        "sessionCredentialFromConsole" => session_credential_from_console: Scalar<'a>,
        "recipientAccountId" => recipient_account_id: Scalar<'a>,
        /// Alibaba: `Ecs`, `Ram`, ...
        "serviceName" => service_name: Text<'a>,
        /// Tencent: `cvm`, `cam`, ...
        "resourceType" => resource_type: Text<'a>,
        /// Kept raw and parsed only when read (AWS `ConsoleLogin`): Tencent ships it as a
        /// JSON string that would otherwise be unescaped for nothing.
        "responseElements" => response_elements: &'a RawValue,
        /// Kept raw and parsed when read (see [`with_request`]).
        "requestParameters" => request_parameters: &'a RawValue,

        // --- wrappers: when one of these is present the event is inside it ---
        /// CloudTrail log file: `{"Records":[...]}`.
        "Records" => records: &'a RawValue,
        /// EventBridge: `detail-type` and the event under `detail`.
        "detail-type" => detail_type: Text<'a>,
        "detail" => detail: &'a RawValue,
        /// CloudEvents (Tencent / Alibaba EventBridge): the event under `data`.
        "specversion" => specversion: Text<'a>,
        "data" => data: &'a RawValue,
        /// EventBridge / CloudEvents envelope time (RFC 3339, or epoch milliseconds).
        "time" => time: Scalar<'a>,
        /// Alibaba SLS: the event under `event` (an object or a JSON string).
        "event" => event: &'a RawValue,
        "__time__" => sls_time: Scalar<'a>,
        /// Tencent `DescribeEvents` / `LookUpEvents` API response.
        "Response" => response: &'a RawValue,
        /// Tencent API list item: the event as a JSON string.
        "CloudAuditEvent" => cloud_audit_event: &'a RawValue,
        "EventTime" => outer_event_time: Scalar<'a>,
        /// Logstash / Filebeat: `@timestamp` (used when `eventTime` is missing) and the raw
        /// log line in `message` when the shipper did not parse it.
        "@timestamp" => at_timestamp: Scalar<'a>,
        "message" => message: Text<'a>,
    }
}

raw_members! {
    /// `userIdentity` of all three clouds.
    pub struct RawIdentity<'a> {
        "type" => kind: Text<'a>,
        "principalId" => principal_id: Scalar<'a>,
        "arn" => arn: Text<'a>,
        "accountId" => account_id: Scalar<'a>,
        "accessKeyId" => access_key_id: Text<'a>,
        /// Tencent's name for the access key id.
        "secretId" => secret_id: Text<'a>,
        "userName" => user_name: Text<'a>,
        "invokedBy" => invoked_by: Text<'a>,
        /// Kept raw and parsed when read: an object, or (Tencent) a JSON string holding one.
        "sessionContext" => session_context: &'a RawValue,
    }
}

raw_members! {
    /// `userIdentity.sessionContext`: AWS / Alibaba (`sessionIssuer`, `attributes`) and
    /// Tencent (`token`, `uin`, `ownerUin`, `mfa`; often shipped as a JSON string).
    pub struct RawSessionContext<'a> {
        "sessionIssuer" => session_issuer: Box<RawSessionIssuer<'a>>,
        "attributes" => attributes: Box<RawSessionAttributes<'a>>,
        "token" => token: Scalar<'a>,
        "uin" => uin: Scalar<'a>,
        "ownerUin" => owner_uin: Scalar<'a>,
        "mfa" => mfa: Scalar<'a>,
    }
}

raw_members! {
    pub struct RawSessionIssuer<'a> {
        "type" => kind: Text<'a>,
        "arn" => arn: Text<'a>,
        "userName" => user_name: Text<'a>,
    }
}

raw_members! {
    pub struct RawSessionAttributes<'a> {
        "mfaAuthenticated" => mfa_authenticated: Scalar<'a>,
    }
}

/// Calls `f` with a member kept as a `RawValue` that holds an object `T`, or a JSON string
/// holding one (Tencent), parsed now. Anything else, or a string that is not such an object,
/// is absent. `T`'s strings borrow from the member or from the unescaped string.
macro_rules! with_object {
    ($raw:expr, $ty:ident, $f:expr) => {{
        let f = $f;
        match $raw {
            None => f(None),
            Some(raw) => {
                let text = raw.get();
                if text.starts_with('"') {
                    match serde_json::from_str::<Text<'_>>(text) {
                        Ok(inner) => match serde_json::from_str::<Box<$ty<'_>>>(&inner) {
                            Ok(t) => f(Some(&*t)),
                            Err(_) => f(None),
                        },
                        Err(_) => f(None),
                    }
                } else {
                    match serde_json::from_str::<Box<$ty<'_>>>(text) {
                        Ok(t) => f(Some(&*t)),
                        Err(_) => f(None),
                    }
                }
            }
        }
    }};
}

/// `sessionContext`, parsed (see [`with_object!`]).
pub fn with_session_context<R>(
    raw: Option<&RawValue>,
    f: impl for<'x> FnOnce(Option<&RawSessionContext<'x>>) -> R,
) -> R {
    with_object!(raw, RawSessionContext, f)
}

/// `responseElements`, parsed (see [`with_object!`]).
pub fn with_response<R>(
    raw: Option<&RawValue>,
    f: impl for<'x> FnOnce(Option<&RawResponse<'x>>) -> R,
) -> R {
    with_object!(raw, RawResponse, f)
}

raw_members! {
    /// The parts of `responseElements` the decoders read.
    pub struct RawResponse<'a> {
        /// AWS console sign-in result: `Success` / `Failure`.
        "ConsoleLogin" => console_login: Text<'a>,
        /// AWS `CreateAccessKey`: `{"accessKeyId": ...}`.
        "accessKey" => access_key: Box<RawCreatedKey<'a>>,
        /// Alibaba / Tencent `CreateAccessKey`: `{"AccessKeyId": ...}`.
        "AccessKey" => access_key_alt: Box<RawCreatedKey<'a>>,
    }
}

raw_members! {
    pub struct RawCreatedKey<'a> {
        "accessKeyId" => access_key_id: Text<'a>,
        "AccessKeyId" => access_key_id_alt: Text<'a>,
    }
}

raw_members! {
    /// The request parameters rules read, in the spellings of the three clouds.
    pub struct RawRequest<'a> {
        // The user a credential / policy / login call targets.
        "userName" => user_name: Scalar<'a>,
        "UserName" => user_name_alt: Scalar<'a>,
        "TargetUin" => target_uin: Scalar<'a>,
        "AttachUin" => attach_uin: Scalar<'a>,
        "Uin" => uin: Scalar<'a>,
        // The policy attached or written.
        "policyArn" => policy_arn: Text<'a>,
        "policyName" => policy_name: Text<'a>,
        "PolicyName" => policy_name_alt: Scalar<'a>,
        "PolicyId" => policy_id: Scalar<'a>,
        "policyDocument" => policy_document: Text<'a>,
        "PolicyDocument" => policy_document_alt: Text<'a>,
        // The main resource read or changed.
        "secretId" => secret_id: Text<'a>,
        "SecretName" => secret_name: Text<'a>,
        "name" => name: Scalar<'a>,
        "Name" => name_alt: Scalar<'a>,
        "ParameterName" => parameter_name: Text<'a>,
        "instanceId" => instance_id: Text<'a>,
        "InstanceId" => instance_id_alt: Text<'a>,
        "roleName" => role_name: Text<'a>,
    }
}

/// `requestParameters`, parsed (see [`with_object!`]).
pub fn with_request<R>(
    raw: Option<&RawValue>,
    f: impl for<'x> FnOnce(Option<&RawRequest<'x>>) -> R,
) -> R {
    with_object!(raw, RawRequest, f)
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
