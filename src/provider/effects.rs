//! What a call's request parameters *do*, for the few calls whose name alone does not say:
//! `PutEventSelectors` that enables every management event is housekeeping, one that drops
//! write events is an attacker turning off the lights. Rules read the result as `effect:`.
//!
//! Only the calls below are looked at (their parameters parsed into a `Value`: rare calls, so
//! the cost does not matter); every other call has no effects. Parameter names are those of
//! the clouds' logs: AWS CloudTrail's camelCase request parameters, Alibaba ActionTrail's and
//! Tencent CloudAudit's PascalCase ones.

use serde_json::Value;

use crate::event::Effect;

/// The calls whose parameters are read (by action name, any cloud).
const CANDIDATES: &[&str] = &[
    "PutEventSelectors",
    "UpdateTrail",
    "UpdateAudit",
    "ModifyAuditTrack",
    "PutBucketLogging",
    "PutBucketVersioning",
    "AuthorizeSecurityGroupIngress",
    "CreateNetworkAclEntry",
    "ModifyInstanceAttribute",
    "UpdateFunctionConfiguration",
    "UpdateFunctionConfiguration20150331",
    "UpdateFunctionConfiguration20150331v2",
    "ModifyDBInstance",
    "ModifyDBCluster",
    "RegisterTaskDefinition",
    "AuthorizeSecurityGroup",
    "CreateSecurityGroupPolicies",
];

/// Whether `action`'s parameters are worth parsing.
pub fn is_candidate(action: &str) -> bool {
    CANDIDATES.contains(&action)
}

/// Member `key` of an object, whatever the first letter's case (`isMultiRegionTrail`,
/// `IsMultiRegionTrail`).
fn get<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    let o = v.as_object()?;
    o.get(key).or_else(|| {
        let mut c = key.chars();
        let first = c.next()?;
        let flipped: String = if first.is_ascii_lowercase() {
            first.to_ascii_uppercase().to_string() + c.as_str()
        } else {
            first.to_ascii_lowercase().to_string() + c.as_str()
        };
        o.get(&flipped)
    })
}

/// A boolean the log may write as `false`, `"false"` or `0`.
fn is_false(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => !b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("false"),
        Some(Value::Number(n)) => n.as_i64() == Some(0),
        _ => false,
    }
}

fn text(v: Option<&Value>) -> Option<&str> {
    v.and_then(Value::as_str)
}

/// A list member, or a single object standing for a list of one.
fn items(v: Option<&Value>) -> Vec<&Value> {
    match v {
        Some(Value::Array(a)) => a.iter().collect(),
        Some(o @ Value::Object(_)) => vec![o],
        _ => Vec::new(),
    }
}

/// The effects of `action` with request parameters `params`.
pub fn of(action: &str, params: &Value) -> Vec<Effect> {
    let mut out = Vec::new();
    let logging = matches!(
        action,
        "PutEventSelectors"
            | "UpdateTrail"
            | "UpdateAudit"
            | "ModifyAuditTrack"
            | "PutBucketLogging"
    );
    let weakened = match action {
        // A change to what is logged whose parameters the log does not show: it cannot be told
        // harmless (fail closed).
        _ if logging && !params.is_object() => true,
        "PutEventSelectors" => event_selectors_narrow(params),
        "UpdateTrail" => trail_weakened(params),
        "UpdateAudit" => audit_weakened(params),
        "ModifyAuditTrack" => audit_track_weakened(params),
        "PutBucketLogging" => bucket_logging_off(params),
        _ => false,
    };
    if weakened {
        out.push(Effect::LoggingWeakened);
    }
    let found = match action {
        "PutBucketVersioning" => {
            let status = get(params, "VersioningConfiguration").and_then(|c| get(c, "Status"));
            text(status)
                .is_some_and(|s| s.eq_ignore_ascii_case("suspended"))
                .then_some(Effect::VersioningSuspended)
        }
        "AuthorizeSecurityGroupIngress"
        | "AuthorizeSecurityGroup"
        | "CreateSecurityGroupPolicies" => {
            opens_to_internet(params).then_some(Effect::OpenedToInternet)
        }
        "CreateNetworkAclEntry" => {
            let egress = get(params, "egress").is_some_and(|e| !is_false(Some(e)));
            let allow =
                text(get(params, "ruleAction")).is_some_and(|a| a.eq_ignore_ascii_case("allow"));
            let cidr = text(get(params, "cidrBlock")).or(text(get(params, "ipv6CidrBlock")));
            (!egress && allow && cidr.is_some_and(is_anywhere)).then_some(Effect::OpenedToInternet)
        }
        "ModifyInstanceAttribute" => {
            let named = text(get(params, "attribute")).is_some_and(|a| a == "userData");
            (named || get(params, "userData").is_some()).then_some(Effect::UserDataChanged)
        }
        a if a.starts_with("UpdateFunctionConfiguration") => {
            (!items(get(params, "layers")).is_empty()).then_some(Effect::LayerAdded)
        }
        "ModifyDBInstance" | "ModifyDBCluster" => get(params, "masterUserPassword")
            .is_some()
            .then_some(Effect::PasswordReset),
        "RegisterTaskDefinition" => params
            .to_string()
            .contains("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
            .then_some(Effect::ContainerCredentialsRead),
        _ => None,
    };
    out.extend(found);
    out
}

/// `0.0.0.0/0` or `::/0`.
/// A range that opens to (nearly) everyone: any way of writing a /0 (`0.0.0.0/0`, `::/0`,
/// `0::/0`, or a host address with `/0` as a real Stratus record has), or a very short prefix
/// (IPv4 /8 or shorter, IPv6 /16 or shorter: two /1s open everything just as well).
fn is_anywhere(cidr: &str) -> bool {
    let Some((addr, len)) = cidr.trim().split_once('/') else {
        return false;
    };
    let Ok(len) = len.trim().parse::<u8>() else {
        return false;
    };
    match addr.trim().parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => len <= 8,
        Ok(std::net::IpAddr::V6(_)) => len <= 16,
        Err(_) => false,
    }
}

/// An ingress permission from anywhere: AWS `ipPermissions.items[].ipRanges.items[].cidrIp`
/// (and `ipv6Ranges ... cidrIpv6`), Alibaba `SourceCidrIp`, Tencent `SecurityGroupPolicySet
/// .Ingress[].CidrBlock` with `Action: ACCEPT`.
fn opens_to_internet(params: &Value) -> bool {
    if text(get(params, "SourceCidrIp")).is_some_and(is_anywhere)
        || text(get(params, "Ipv6SourceCidrIp")).is_some_and(is_anywhere)
        || text(get(params, "cidrIp")).is_some_and(is_anywhere)
    {
        return true;
    }
    let perms = get(params, "ipPermissions").map(|p| get(p, "items").unwrap_or(p));
    for perm in items(perms) {
        for (ranges, field) in [("ipRanges", "cidrIp"), ("ipv6Ranges", "cidrIpv6")] {
            let list = get(perm, ranges).map(|r| get(r, "items").unwrap_or(r));
            if items(list)
                .iter()
                .any(|r| text(get(r, field)).is_some_and(is_anywhere))
            {
                return true;
            }
        }
    }
    let set = get(params, "SecurityGroupPolicySet").and_then(|s| get(s, "Ingress"));
    items(set).iter().any(|p| {
        let accept = text(get(p, "Action")).is_none_or(|a| a.eq_ignore_ascii_case("accept"));
        accept
            && (text(get(p, "CidrBlock")).is_some_and(is_anywhere)
                || text(get(p, "Ipv6CidrBlock")).is_some_and(is_anywhere))
    })
}

/// `PutEventSelectors` that logs less than every management event, read and write: no basic
/// selector with management events on (`includeManagementEvents`, default true), read / write
/// `All` (the default) and no excluded sources; no advanced selector that takes
/// `eventCategory = Management` with no `readOnly` or `eventSource` restriction.
fn event_selectors_narrow(params: &Value) -> bool {
    let basic = items(get(params, "eventSelectors"));
    let advanced = items(get(params, "advancedEventSelectors"));
    if basic.is_empty() && advanced.is_empty() {
        // No selectors given at all: nothing is logged any more.
        return get(params, "eventSelectors").is_some()
            || get(params, "advancedEventSelectors").is_some();
    }
    let basic_all = basic.iter().any(|s| {
        let mgmt = !is_false(get(s, "includeManagementEvents"));
        let rw = text(get(s, "readWriteType")).is_none_or(|t| t.eq_ignore_ascii_case("all"));
        let excluded = !items(get(s, "excludeManagementEventSources")).is_empty();
        mgmt && rw && !excluded
    });
    let advanced_all = advanced.iter().any(|s| {
        let fields = items(get(s, "fieldSelectors"));
        let management = fields.iter().any(|f| {
            text(get(f, "field")).is_some_and(|n| n == "eventCategory")
                && items(get(f, "equals"))
                    .iter()
                    .any(|v| v.as_str() == Some("Management"))
        });
        // Any field beside the category restricts it (read-only, event source, event name,
        // resources, and whatever CloudTrail adds later: fail closed).
        let restricted = fields
            .iter()
            .any(|f| text(get(f, "field")).is_none_or(|n| n != "eventCategory"));
        management && !restricted
    });
    !(basic_all || advanced_all)
}

/// `UpdateTrail` that stops logging other regions or global services, turns off log file
/// validation, or sends the logs somewhere else (AWS `s3BucketName`, Alibaba `OssBucketName`,
/// `SlsProjectArn`), or logs only reads or writes (Alibaba `EventRW`, `TrailRegion`).
fn trail_weakened(params: &Value) -> bool {
    let emptied = |k: &str| text(get(params, k)).is_some_and(|v| v.trim().is_empty());
    is_false(get(params, "isMultiRegionTrail"))
        || is_false(get(params, "includeGlobalServiceEvents"))
        || is_false(get(params, "enableLogFileValidation"))
        || is_false(get(params, "isOrganizationTrail"))
        // CloudWatch Logs delivery removed: the metric-filter alarms on the trail go blind.
        || emptied("cloudWatchLogsLogGroupArn")
        || emptied("cloudWatchLogsRoleArn")
        || get(params, "s3BucketName").is_some()
        || get(params, "s3KeyPrefix").is_some()
        || get(params, "OssBucketName").is_some()
        || get(params, "SlsProjectArn").is_some()
        || text(get(params, "EventRW")).is_some_and(|rw| !rw.eq_ignore_ascii_case("all"))
        || text(get(params, "TrailRegion")).is_some_and(|r| !r.eq_ignore_ascii_case("all"))
}

/// Tencent `UpdateAudit`: read / write attribute other than 3 (all), multi-region off, or the
/// logs sent to another bucket.
fn audit_weakened(params: &Value) -> bool {
    let rw = get(params, "ReadWriteAttribute").and_then(|v| {
        v.as_i64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
    });
    rw.is_some_and(|rw| rw != 3)
        || get(params, "IsMultiRegion").is_some_and(|v| is_false(Some(v)))
        || get(params, "CosBucketName").is_some()
}

/// Tencent `ModifyAuditTrack`: the track switched off (`Status: 0`), or limited to reads or
/// writes (`ActionType`), some resource types (`ResourceType`) or some events (`EventNames`).
/// (`Storage` is sent with every full update: not judged.)
fn audit_track_weakened(params: &Value) -> bool {
    let names = items(get(params, "EventNames"));
    is_false(get(params, "Status"))
        || text(get(params, "ActionType")).is_some_and(|a| a != "*")
        || text(get(params, "ResourceType")).is_some_and(|r| r != "*")
        || (!names.is_empty() && !names.iter().any(|n| n.as_str() == Some("*")))
}

/// `PutBucketLogging` with no `LoggingEnabled`: access logging switched off.
fn bucket_logging_off(params: &Value) -> bool {
    match get(params, "BucketLoggingStatus") {
        Some(status) => get(status, "LoggingEnabled").is_none(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn event_selectors_that_enable_everything_are_not_narrowing() {
        let all = json!({"trailName": "t", "eventSelectors": [
            {"readWriteType": "All", "includeManagementEvents": true, "dataResources": [], "excludeManagementEventSources": []}
        ]});
        assert!(of("PutEventSelectors", &all).is_empty());
        // Data events added beside all management events: still everything.
        let data = json!({"trailName": "t", "eventSelectors": [
            {"readWriteType": "All", "includeManagementEvents": true,
             "dataResources": [{"type": "AWS::S3::Object", "values": ["arn:aws:s3"]}]}
        ]});
        assert!(of("PutEventSelectors", &data).is_empty());
        let advanced = json!({"trailName": "t", "advancedEventSelectors": [
            {"name": "Management events", "fieldSelectors": [{"field": "eventCategory", "equals": ["Management"]}]}
        ]});
        assert!(of("PutEventSelectors", &advanced).is_empty());
    }

    #[test]
    fn event_selectors_that_drop_events_are_narrowing() {
        // Stratus Red Team's cloudtrail-event-selectors: management events off.
        let stratus = json!({"trailName": "t", "eventSelectors": [
            {"readWriteType": "ReadOnly", "includeManagementEvents": false, "dataResources": []}
        ]});
        assert_eq!(
            of("PutEventSelectors", &stratus),
            vec![Effect::LoggingWeakened]
        );
        let read_only = json!({"eventSelectors": [{"readWriteType": "ReadOnly"}]});
        assert_eq!(
            of("PutEventSelectors", &read_only),
            vec![Effect::LoggingWeakened]
        );
        let excluded =
            json!({"eventSelectors": [{"excludeManagementEventSources": ["kms.amazonaws.com"]}]});
        assert_eq!(
            of("PutEventSelectors", &excluded),
            vec![Effect::LoggingWeakened]
        );
        let advanced_reads = json!({"advancedEventSelectors": [
            {"fieldSelectors": [{"field": "eventCategory", "equals": ["Management"]},
                                {"field": "readOnly", "equals": ["true"]}]}
        ]});
        assert_eq!(
            of("PutEventSelectors", &advanced_reads),
            vec![Effect::LoggingWeakened]
        );
        let advanced_data_only = json!({"advancedEventSelectors": [
            {"fieldSelectors": [{"field": "eventCategory", "equals": ["Data"]}]}
        ]});
        assert_eq!(
            of("PutEventSelectors", &advanced_data_only),
            vec![Effect::LoggingWeakened]
        );
        let none = json!({"eventSelectors": []});
        assert_eq!(
            of("PutEventSelectors", &none),
            vec![Effect::LoggingWeakened]
        );
    }

    #[test]
    fn trail_updates_weaken_only_when_they_log_less_or_elsewhere() {
        let kms = json!({"name": "t", "kmsKeyId": "arn:aws:kms:us-east-1:1:key/x"});
        assert!(of("UpdateTrail", &kms).is_empty());
        let on =
            json!({"name": "t", "isMultiRegionTrail": true, "includeGlobalServiceEvents": true});
        assert!(of("UpdateTrail", &on).is_empty());
        for weak in [
            json!({"name": "t", "isMultiRegionTrail": false}),
            json!({"name": "t", "includeGlobalServiceEvents": false}),
            json!({"name": "t", "enableLogFileValidation": false}),
            json!({"name": "t", "s3BucketName": "attacker-bucket"}),
            json!({"Name": "t", "EventRW": "Read"}),
            json!({"Name": "t", "OssBucketName": "elsewhere"}),
        ] {
            assert_eq!(
                of("UpdateTrail", &weak),
                vec![Effect::LoggingWeakened],
                "{weak}"
            );
        }
        assert_eq!(
            of("ModifyAuditTrack", &json!({"TrackId": 1, "Status": 0})),
            vec![Effect::LoggingWeakened]
        );
        assert!(
            of(
                "ModifyAuditTrack",
                &json!({"TrackId": 1, "Status": 1, "ActionType": "*"})
            )
            .is_empty()
        );
        assert_eq!(
            of(
                "UpdateAudit",
                &json!({"AuditName": "a", "ReadWriteAttribute": 1})
            ),
            vec![Effect::LoggingWeakened]
        );
        assert!(
            of(
                "UpdateAudit",
                &json!({"AuditName": "a", "ReadWriteAttribute": 3})
            )
            .is_empty()
        );
    }

    #[test]
    fn bucket_logging_and_versioning() {
        let off = json!({"bucketName": "b", "BucketLoggingStatus": {"xmlns": "http://s3.amazonaws.com/doc/2006-03-01/"}});
        assert_eq!(of("PutBucketLogging", &off), vec![Effect::LoggingWeakened]);
        let on = json!({"bucketName": "b", "BucketLoggingStatus": {"LoggingEnabled": {"TargetBucket": "logs", "TargetPrefix": "b/"}}});
        assert!(of("PutBucketLogging", &on).is_empty());
        let suspended =
            json!({"bucketName": "b", "VersioningConfiguration": {"Status": "Suspended"}});
        assert_eq!(
            of("PutBucketVersioning", &suspended),
            vec![Effect::VersioningSuspended]
        );
        let enabled = json!({"bucketName": "b", "VersioningConfiguration": {"Status": "Enabled"}});
        assert!(of("PutBucketVersioning", &enabled).is_empty());
    }

    #[test]
    fn exposure_and_takeover_effects() {
        let open = json!({"groupId": "sg-1", "ipPermissions": {"items": [
            {"ipProtocol": "tcp", "fromPort": 22, "toPort": 22, "ipRanges": {"items": [{"cidrIp": "0.0.0.0/0"}]}}
        ]}});
        assert_eq!(
            of("AuthorizeSecurityGroupIngress", &open),
            vec![Effect::OpenedToInternet]
        );
        let office = json!({"groupId": "sg-1", "ipPermissions": {"items": [
            {"ipProtocol": "tcp", "fromPort": 22, "toPort": 22, "ipRanges": {"items": [{"cidrIp": "203.0.113.0/24"}]}}
        ]}});
        assert!(of("AuthorizeSecurityGroupIngress", &office).is_empty());
        let alibaba =
            json!({"SecurityGroupId": "sg-1", "SourceCidrIp": "0.0.0.0/0", "PortRange": "22/22"});
        assert_eq!(
            of("AuthorizeSecurityGroup", &alibaba),
            vec![Effect::OpenedToInternet]
        );
        let tencent = json!({"SecurityGroupId": "sg-1", "SecurityGroupPolicySet": {"Ingress": [{"CidrBlock": "0.0.0.0/0", "Action": "ACCEPT", "Port": "22"}]}});
        assert_eq!(
            of("CreateSecurityGroupPolicies", &tencent),
            vec![Effect::OpenedToInternet]
        );
        let acl = json!({"networkAclId": "acl-1", "ruleNumber": 100, "egress": false, "ruleAction": "allow", "cidrBlock": "0.0.0.0/0"});
        assert_eq!(
            of("CreateNetworkAclEntry", &acl),
            vec![Effect::OpenedToInternet]
        );
        let user_data = json!({"instanceId": "i-1", "userData": "<sensitiveDataRemoved>"});
        assert_eq!(
            of("ModifyInstanceAttribute", &user_data),
            vec![Effect::UserDataChanged]
        );
        let layers =
            json!({"functionName": "f", "layers": ["arn:aws:lambda:us-east-1:1:layer:evil:1"]});
        assert_eq!(
            of("UpdateFunctionConfiguration20150331v2", &layers),
            vec![Effect::LayerAdded]
        );
        let password = json!({"dBInstanceIdentifier": "db", "masterUserPassword": "HIDDEN_DUE_TO_SECURITY_REASONS"});
        assert_eq!(
            of("ModifyDBInstance", &password),
            vec![Effect::PasswordReset]
        );
        let task = json!({"family": "f", "containerDefinitions": [{"command": ["sh", "-c", "curl 169.254.170.2$AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"]}]});
        assert_eq!(
            of("RegisterTaskDefinition", &task),
            vec![Effect::ContainerCredentialsRead]
        );
        assert!(of("DescribeInstances", &user_data).is_empty());
    }
}
