//! Tencent Cloud CloudAudit events (v1 2017 format and v2).

use crate::event::{
    AccessKeyId, AccountId, Cloud, Event, KeyKind, Principal, PrincipalType, Request,
};

use super::raw::{RawEvent, RawIdentity, RawSessionContext, Scalar, with_session_context};
use super::{Common, is_error_code, non_empty, outcome_of, parse_ip};

/// What `sessionContext` (an object, or a JSON string holding one) tells.
#[derive(Default)]
struct Session {
    token: bool,
    uin: Option<String>,
    owner_uin: Option<String>,
    mfa: Option<bool>,
}

impl Session {
    fn from(sc: Option<&RawSessionContext<'_>>) -> Self {
        let Some(sc) = sc else {
            return Session::default();
        };
        Session {
            token: sc.token.as_ref().and_then(Scalar::non_empty_str).is_some(),
            uin: sc.uin.as_ref().and_then(Scalar::non_empty),
            owner_uin: sc.owner_uin.as_ref().and_then(Scalar::non_empty),
            mfa: sc.mfa.as_ref().and_then(Scalar::as_bool),
        }
    }
}

pub(super) fn map(raw: &RawEvent<'_>, identity: &RawIdentity<'_>, common: Common) -> Event {
    let session = with_session_context(identity.session_context, Session::from);
    let principal_id = identity.principal_id.as_ref().and_then(Scalar::non_empty);
    let account_id = identity
        .account_id
        .as_ref()
        .and_then(Scalar::non_empty)
        .or_else(|| session.owner_uin.clone());
    let kind = principal_type(
        identity.kind.as_deref(),
        principal_id.as_deref(),
        account_id.as_deref(),
        &session,
    );
    let access_key_id = non_empty(identity.secret_id.as_ref())
        .or_else(|| non_empty(identity.access_key_id.as_ref()))
        .map(AccessKeyId);
    // Tencent's temporary credentials are `AKID…` too; a session token marks them.
    let key_kind = match (&access_key_id, session.token) {
        (None, _) => KeyKind::None,
        (Some(_), true) => KeyKind::Temporary,
        (Some(_), false) => match kind {
            PrincipalType::AssumedRole | PrincipalType::Federated => KeyKind::Temporary,
            _ => KeyKind::Permanent,
        },
    };
    let source_address = non_empty(raw.source_ip_address.as_ref())
        .or_else(|| non_empty(raw.source_ip_address_alt.as_ref()));
    let failed_code = raw
        .error_code
        .as_ref()
        .filter(|c| is_error_code(c))
        .and_then(Scalar::non_empty);
    let failed_api_code = raw
        .api_error_code
        .as_ref()
        .filter(|c| is_error_code(c))
        .and_then(Scalar::non_empty);
    let error_code = failed_code.or(failed_api_code);
    let read_only = match raw.action_type.as_deref() {
        Some(t) if t.eq_ignore_ascii_case("read") => Some(true),
        Some(t) if t.eq_ignore_ascii_case("write") => Some(false),
        _ => None,
    };
    Event {
        cloud: Cloud::Tencent,
        event_id: common.event_id,
        event_time: common.event_time,
        account_id: account_id.map(AccountId),
        principal: Principal {
            kind,
            name: non_empty(identity.user_name.as_ref()),
            id: principal_id.or(session.uin),
            arn: non_empty(identity.arn.as_ref()),
            role: None,
            invoked_by: None,
            mfa: session.mfa,
            instance_id: None,
        },
        access_key_id,
        key_kind,
        source_ip: parse_ip(source_address.as_deref()),
        source_address,
        user_agent: non_empty(raw.user_agent.as_ref()),
        region: non_empty(raw.event_region.as_ref()).map(|r| long_region(&r)),
        service: service_name(raw.event_source.as_deref(), raw.resource_type.as_deref()),
        action: common.action,
        read_only,
        console: raw.event_type.as_deref() == Some("ConsoleCall"),
        outcome: outcome_of(error_code.as_ref()),
        error_code,
        request_id: raw
            .request_id
            .as_ref()
            .or(raw.request_id_alt.as_ref())
            .and_then(Scalar::non_empty),
        request: Request::default(),
        origin: common.origin,
    }
}

fn principal_type(
    kind: Option<&str>,
    principal_id: Option<&str>,
    account_id: Option<&str>,
    session: &Session,
) -> PrincipalType {
    match kind.map(str::to_ascii_lowercase).as_deref() {
        Some("root" | "owner" | "rootaccount") => PrincipalType::Root,
        Some(
            "camuser" | "subaccount" | "sub-account" | "subuser" | "sub-user" | "collaborator"
            | "user",
        ) => PrincipalType::User,
        Some("assumedrole" | "assumed-role" | "role" | "camrole") => PrincipalType::AssumedRole,
        Some("federateduser" | "federated" | "federated-user" | "idpuser") => {
            PrincipalType::Federated
        }
        Some("service" | "qcloudservice" | "cloudservice") => PrincipalType::Service,
        _ => {
            // Without a known type: the owner UIN calling as itself is the root account.
            let caller = principal_id.or(session.uin.as_deref());
            let owner = account_id.or(session.owner_uin.as_deref());
            match (caller, owner) {
                (Some(c), Some(o)) if c == o => PrincipalType::Root,
                (Some(_), Some(_)) => PrincipalType::User,
                _ => PrincipalType::Unknown,
            }
        }
    }
}

/// `cvm.tencentcloudapi.com` → `cvm`; `cloudaudit.api.tencentyun.com/v2/index.php` →
/// `cloudaudit`; else `resourceType`.
fn service_name(event_source: Option<&str>, resource_type: Option<&str>) -> String {
    if let Some(source) = event_source.map(str::trim).filter(|s| !s.is_empty()) {
        let host = source.split('/').next().unwrap_or(source);
        if let Some(label) = host.split('.').next().filter(|l| !l.is_empty()) {
            return label.to_ascii_lowercase();
        }
    }
    resource_type
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map_or_else(|| "unknown".to_owned(), str::to_ascii_lowercase)
}

/// The 2017 format writes short region codes (`gz`); later ones the API names.
fn long_region(region: &str) -> String {
    match region {
        "gz" => "ap-guangzhou",
        "sh" => "ap-shanghai",
        "bj" => "ap-beijing",
        "cd" => "ap-chengdu",
        "cq" => "ap-chongqing",
        "nj" => "ap-nanjing",
        "hk" => "ap-hongkong",
        "sg" => "ap-singapore",
        "th" => "ap-bangkok",
        "in" => "ap-mumbai",
        "kr" => "ap-seoul",
        "jp" => "ap-tokyo",
        "ca" => "na-toronto",
        "usw" => "na-siliconvalley",
        "use" => "na-ashburn",
        "de" => "eu-frankfurt",
        "ru" => "eu-moscow",
        "szjr" => "ap-shenzhen-fsi",
        "shjr" => "ap-shanghai-fsi",
        other => other,
    }
    .to_owned()
}
