//! AWS CloudTrail events.

use crate::event::{
    AccessKeyId, Cloud, Event, KeyKind, Outcome, Principal, PrincipalType, Request,
};

use super::raw::{
    RawEvent, RawIdentity, RawSessionContext, Scalar, with_response, with_session_context,
};
use super::{Common, account_of, is_error_code, non_empty, parse_ip};

pub(super) fn map(raw: &RawEvent<'_>, identity: &RawIdentity<'_>, common: Common) -> Event {
    let kind = principal_type(identity.kind.as_deref());
    let (role, session_mfa) = with_session_context(identity.session_context, session_facts);
    let arn = non_empty(identity.arn.as_ref());
    let user_name = non_empty(identity.user_name.as_ref());
    let invoked_by = non_empty(identity.invoked_by.as_ref());
    let name = match kind {
        PrincipalType::AssumedRole => {
            // arn:aws:sts::123456789012:assumed-role/Role/session → Role/session
            arn.as_deref()
                .and_then(|a| a.split_once(":assumed-role/"))
                .map(|(_, rest)| rest.to_owned())
                .or_else(|| role.clone())
        }
        PrincipalType::Root => user_name.or_else(|| Some("root".to_owned())),
        PrincipalType::Service => invoked_by.clone().or(user_name),
        PrincipalType::Federated => user_name.or_else(|| arn_tail(arn.as_deref())),
        _ => user_name.or_else(|| arn_tail(arn.as_deref())),
    };
    let access_key_id = non_empty(identity.access_key_id.as_ref()).map(AccessKeyId);
    let key_kind = key_kind(access_key_id.as_ref(), kind);
    let source_address = non_empty(raw.source_ip_address.as_ref());
    let user_agent = non_empty(raw.user_agent.as_ref());
    let console = raw
        .session_credential_from_console
        .as_ref()
        .and_then(Scalar::as_bool)
        .unwrap_or(false)
        || raw.event_type.as_deref() == Some("AwsConsoleSignIn")
        || is_console_marker(user_agent.as_deref())
        || is_console_marker(invoked_by.as_deref());
    let error_code = raw
        .error_code
        .as_ref()
        .filter(|c| is_error_code(c))
        .and_then(Scalar::non_empty);
    let console_login_failed = common.action == "ConsoleLogin"
        && with_response(raw.response_elements, |r| {
            r.and_then(|r| r.console_login.as_deref()) == Some("Failure")
        });
    let outcome = if error_code.is_some() || console_login_failed {
        Outcome::Failure
    } else {
        Outcome::Success
    };
    let error_code = error_code.or_else(|| {
        console_login_failed.then(|| {
            raw.error_message
                .as_ref()
                .and_then(Scalar::non_empty)
                .unwrap_or_else(|| "ConsoleLoginFailure".to_owned())
        })
    });
    Event {
        cloud: Cloud::Aws,
        event_id: common.event_id,
        event_time: common.event_time,
        account_id: account_of(raw, identity),
        principal: Principal {
            kind,
            name,
            id: identity.principal_id.as_ref().and_then(Scalar::non_empty),
            arn,
            role,
            invoked_by,
            mfa: session_mfa,
            instance_id: None,
        },
        access_key_id,
        key_kind,
        source_ip: parse_ip(source_address.as_deref()),
        source_address,
        user_agent,
        region: non_empty(raw.aws_region.as_ref()),
        service: service_name(raw.event_source.as_deref()),
        action: common.action,
        read_only: raw.read_only.as_ref().and_then(Scalar::as_bool),
        console,
        outcome,
        error_code,
        request_id: raw.request_id.as_ref().and_then(Scalar::non_empty),
        request: Request::default(),
        origin: common.origin,
    }
}

fn principal_type(kind: Option<&str>) -> PrincipalType {
    match kind {
        Some("Root") => PrincipalType::Root,
        Some("IAMUser") => PrincipalType::User,
        Some("AssumedRole" | "Role") => PrincipalType::AssumedRole,
        Some("FederatedUser" | "SAMLUser" | "WebIdentityUser" | "IdentityCenterUser") => {
            PrincipalType::Federated
        }
        Some("AWSService") => PrincipalType::Service,
        _ => PrincipalType::Unknown,
    }
}

/// `ASIA` is a session key, and role sessions and federated users hold nothing else (the
/// identity wins over an anonymised `AKIA…` id); otherwise a key is long-term (`AKIA`).
fn key_kind(key: Option<&AccessKeyId>, kind: PrincipalType) -> KeyKind {
    match key.map(AccessKeyId::as_str) {
        None => KeyKind::None,
        Some(k) if k.starts_with("ASIA") => KeyKind::Temporary,
        Some(_) if matches!(kind, PrincipalType::AssumedRole | PrincipalType::Federated) => {
            KeyKind::Temporary
        }
        Some(_) => KeyKind::Permanent,
    }
}

/// The role name and the MFA flag from `sessionContext`.
fn session_facts(sc: Option<&RawSessionContext<'_>>) -> (Option<String>, Option<bool>) {
    let Some(sc) = sc else { return (None, None) };
    let role = sc
        .session_issuer
        .as_ref()
        .filter(|i| i.kind.as_deref().is_none_or(|k| k == "Role"))
        .and_then(|i| {
            i.user_name
                .as_deref()
                .map(str::to_owned)
                .or_else(|| arn_tail(i.arn.as_deref()))
        });
    let mfa = sc
        .attributes
        .as_ref()
        .and_then(|a| a.mfa_authenticated.as_ref())
        .and_then(Scalar::as_bool);
    (role, mfa)
}

fn arn_tail(arn: Option<&str>) -> Option<String> {
    let tail = arn?.rsplit(['/', ':']).next()?;
    (!tail.is_empty()).then(|| tail.to_owned())
}

fn is_console_marker(value: Option<&str>) -> bool {
    matches!(
        value,
        Some(
            "signin.amazonaws.com"
                | "console.amazonaws.com"
                | "AWS Console"
                | "console.ec2.amazonaws.com"
        )
    )
}

/// `iam.amazonaws.com` → `iam`; the few event sources whose IAM namespace differs are mapped.
pub(super) fn service_name(event_source: Option<&str>) -> String {
    let Some(source) = event_source.map(str::trim).filter(|s| !s.is_empty()) else {
        return "unknown".to_owned();
    };
    let short = source.strip_suffix(".amazonaws.com").unwrap_or(source);
    match short {
        "monitoring" => "cloudwatch",
        "email" => "ses",
        "elasticfilesystem" => "elasticfilesystem",
        other => other,
    }
    .to_ascii_lowercase()
}
