//! Alibaba Cloud ActionTrail events.

use crate::event::{AccessKeyId, Cloud, Event, KeyKind, Principal, PrincipalType, Request};

use super::raw::{RawEvent, RawIdentity, Scalar, with_session_context};
use super::{Common, account_of, is_error_code, non_empty, outcome_of, parse_ip};

pub(super) fn map(raw: &RawEvent<'_>, identity: &RawIdentity<'_>, common: Common) -> Event {
    let kind = principal_type(identity.kind.as_deref());
    let user_name = non_empty(identity.user_name.as_ref());
    // Role sessions are written `role:session` (userName) or `role/session`.
    let (name, role) = match (kind, user_name) {
        (PrincipalType::AssumedRole, Some(n)) => match n.split_once([':', '/']) {
            Some((role, session)) => (Some(format!("{role}/{session}")), Some(role.to_owned())),
            None => (Some(n.clone()), Some(n)),
        },
        (PrincipalType::Root, None) => (Some("root".to_owned()), None),
        (_, n) => (n, None),
    };
    let access_key_id = non_empty(identity.access_key_id.as_ref()).map(AccessKeyId);
    // `STS.` is a session key, and role sessions hold nothing else; `LTAI…` is long-term.
    let key_kind = match access_key_id.as_ref().map(AccessKeyId::as_str) {
        None => KeyKind::None,
        Some(k) if k.starts_with("STS.") => KeyKind::Temporary,
        Some(_) if matches!(kind, PrincipalType::AssumedRole | PrincipalType::Federated) => {
            KeyKind::Temporary
        }
        Some(_) => KeyKind::Permanent,
    };
    let mfa = with_session_context(identity.session_context, |sc| {
        sc.and_then(|sc| sc.attributes.as_ref())
            .and_then(|a| a.mfa_authenticated.as_ref())
            .and_then(Scalar::as_bool)
    });
    let source_address = non_empty(raw.source_ip_address_alt.as_ref())
        .or_else(|| non_empty(raw.source_ip_address.as_ref()));
    let user_agent = non_empty(raw.user_agent.as_ref());
    let console = matches!(
        raw.event_type.as_deref(),
        Some("ConsoleOperation" | "ConsoleSignin" | "ConsoleSignout" | "ConsoleCall")
    );
    let error_code = raw
        .error_code
        .as_ref()
        .filter(|c| is_error_code(c))
        .and_then(Scalar::non_empty);
    let read_only = match raw.event_rw.as_deref() {
        Some(rw) if rw.eq_ignore_ascii_case("read") => Some(true),
        Some(rw) if rw.eq_ignore_ascii_case("write") => Some(false),
        _ => raw.read_only.as_ref().and_then(Scalar::as_bool),
    };
    Event {
        cloud: Cloud::Alibaba,
        event_id: common.event_id,
        event_time: common.event_time,
        account_id: account_of(raw, identity),
        principal: Principal {
            kind,
            name,
            id: identity.principal_id.as_ref().and_then(Scalar::non_empty),
            arn: non_empty(identity.arn.as_ref()),
            role,
            invoked_by: None,
            mfa,
            instance_id: None,
        },
        access_key_id,
        key_kind,
        source_ip: parse_ip(source_address.as_deref()),
        source_address,
        user_agent,
        region: non_empty(raw.acs_region.as_ref()),
        service: service_name(raw.service_name.as_deref(), raw.event_source.as_deref()),
        action: common.action,
        read_only,
        console,
        outcome: outcome_of(error_code.as_ref()),
        error_code,
        request_id: raw
            .request_id_alt
            .as_ref()
            .or(raw.request_id.as_ref())
            .and_then(Scalar::non_empty),
        request: Request::default(),
        origin: common.origin,
    }
}

fn principal_type(kind: Option<&str>) -> PrincipalType {
    match kind.map(str::to_ascii_lowercase).as_deref() {
        Some("root-account" | "alibaba-cloud-account" | "aliyun-account") => PrincipalType::Root,
        Some("ram-user") => PrincipalType::User,
        Some("assumed-role") => PrincipalType::AssumedRole,
        Some("federated" | "federated-user" | "saml-user" | "sso-user" | "cloudsso-user") => {
            PrincipalType::Federated
        }
        Some("system" | "aliyun-service" | "service") => PrincipalType::Service,
        _ => PrincipalType::Unknown,
    }
}

/// `Ecs` → `ecs`; without `serviceName`, the first label of `eventSource`
/// (`ecs.cn-hangzhou.aliyuncs.com`, `ecs-cn-hangzhou.aliyuncs.com` → `ecs`).
fn service_name(service: Option<&str>, event_source: Option<&str>) -> String {
    if let Some(s) = service.map(str::trim).filter(|s| !s.is_empty()) {
        return s.to_ascii_lowercase();
    }
    let Some(source) = event_source.map(str::trim).filter(|s| !s.is_empty()) else {
        return "unknown".to_owned();
    };
    let label = source.split('.').next().unwrap_or(source);
    let label = match label
        .find("-cn-")
        .or_else(|| label.find("-ap-"))
        .or_else(|| label.find("-us-"))
        .or_else(|| label.find("-eu-"))
    {
        Some(i) => &label[..i],
        None => label,
    };
    label.to_ascii_lowercase()
}
