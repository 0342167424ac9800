//! Credential reports of the three clouds (AWS IAM, Alibaba RAM, Tencent CAM), parsed into
//! one per-account [`ReportSnapshot`] with typed values.
//!
//! The format is detected from the header. Cell markers keep their meaning rather than being
//! flattened: `N/A` / `-` / empty become [`Cell::NotApplicable`] (null in JSON),
//! `not_supported` and `no_information` stay distinguishable from a value.

mod columns;
pub mod live;

use std::fmt;
use std::path::Path;

use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Serialize, Serializer};

use crate::event::{AccessKeyId, AccountId, Cloud};
use crate::provider::time::parse_report_time;
use columns::{Columns, Row};

/// A report value: the value itself, or one of the markers the clouds write instead.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Cell<T> {
    Value(T),
    /// `N/A`, `-` or empty: there is nothing (no key, never used, no password).
    #[default]
    NotApplicable,
    /// `not_supported`: the field does not apply to this kind of principal.
    NotSupported,
    /// `no_information`: the cloud has no record (AWS: password never used since tracking began).
    NoInformation,
}

impl<T> Cell<T> {
    pub fn value(&self) -> Option<&T> {
        match self {
            Cell::Value(v) => Some(v),
            _ => None,
        }
    }
}

impl<T: Serialize> Serialize for Cell<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Cell::Value(v) => v.serialize(s),
            Cell::NotApplicable => s.serialize_none(),
            Cell::NotSupported => s.serialize_str("not_supported"),
            Cell::NoInformation => s.serialize_str("no_information"),
        }
    }
}

/// One parsed credential report: the principals of one account and their keys.
#[derive(Debug, Clone, Serialize)]
pub struct ReportSnapshot {
    pub cloud: Cloud,
    /// AWS: from the ARNs. Alibaba and Tencent reports do not carry it (null unless given).
    pub account_id: Option<AccountId>,
    /// Alibaba: the account alias from the users' UPN (`user@alias.onaliyun.com`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_alias: Option<String>,
    /// AWS `get-credential-report` JSON: when AWS generated the report.
    pub generated_at: Option<DateTime<Utc>>,
    /// The file it was read from.
    pub source: String,
    pub principals: Vec<ReportPrincipal>,
}

/// A user (or the root account) in a credential report.
#[derive(Debug, Clone, Serialize)]
pub struct ReportPrincipal {
    pub name: String,
    pub root: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arn: Option<String>,
    /// Tencent: the sub-account UIN (`AccountID` column).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Tencent: `sub-user`, `collaborator`, `WeWork-Sub-user`, `Message-receiver`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_type: Option<String>,
    pub created: Cell<DateTime<Utc>>,
    pub password: Password,
    pub mfa_active: Cell<bool>,
    /// Alibaba `user_last_logon`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_login: Option<Cell<DateTime<Utc>>>,
    /// Tencent `LoginConsoleActive`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub console_login_active: Option<Cell<bool>>,
    /// Tencent `LoginProtectionActive`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub login_protection: Option<Cell<bool>>,
    /// Tencent `OperationProtectionActive`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation_protection: Option<Cell<bool>>,
    /// Tencent `Abnormal LoginsNumWithin30Days`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abnormal_logins_30d: Option<Cell<bool>>,
    pub keys: Vec<ReportKey>,
    /// AWS X.509 signing certificates.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<ReportCert>,
    /// The line of the report the principal was read from.
    pub line: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Password {
    /// AWS `password_enabled`, Alibaba `password_exist`, Tencent `PasswordEnabled`.
    pub enabled: Cell<bool>,
    /// Alibaba `password_active`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active: Option<Cell<bool>>,
    pub last_used: Cell<DateTime<Utc>>,
    pub last_changed: Cell<DateTime<Utc>>,
    pub next_rotation: Cell<DateTime<Utc>>,
}

/// An access key slot that holds a key.
#[derive(Debug, Clone, Serialize)]
pub struct ReportKey {
    /// 1 and 2; Alibaba's `additional_access_key_N_*` are slots 3, 4, ...
    pub slot: u32,
    /// Tencent reports name the key (`AccessKeyNSecretId`); AWS and Alibaba do not.
    pub id: Option<AccessKeyId>,
    pub active: bool,
    pub created: Cell<DateTime<Utc>>,
    pub last_rotated: Cell<DateTime<Utc>>,
    pub last_used: Cell<DateTime<Utc>>,
    pub last_used_region: Cell<String>,
    pub last_used_service: Cell<String>,
    /// Tencent `AccessKeyNMayBeAtRisk`.
    pub at_risk: Cell<bool>,
    /// Tencent `AccessKeyNCreatedOver90Days` / `...30Days`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_over_90_days: Option<Cell<bool>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_over_30_days: Option<Cell<bool>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReportCert {
    pub slot: u32,
    pub active: bool,
    pub last_rotated: Cell<DateTime<Utc>>,
}

/// A problem in a report, naming the file, the line and (for a cell) the column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportError {
    pub file: String,
    pub line: u64,
    /// `name (column N)`, 1-based, when the problem is in one cell.
    pub column: Option<String>,
    pub message: String,
}

impl fmt::Display for ReportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Line 0: the file as a whole (it cannot be read, it is no report).
        if self.line == 0 {
            write!(f, "{}", self.file)?;
        } else {
            write!(f, "{}:{}", self.file, self.line)?;
        }
        if let Some(c) = &self.column {
            write!(f, ": column {c}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ReportError {}

/// A parsed report and the rows that could not be read.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub snapshot: ReportSnapshot,
    /// Rows with bad cells are left out of the snapshot and listed here, every bad cell named.
    pub row_errors: Vec<ReportError>,
}

/// The most row errors reported per report file; the rest are counted in one.
pub const MAX_ROW_ERRORS: usize = 100;

/// Reads a credential report file of any of the three clouds.
pub fn read_report(path: &Path) -> Result<Parsed, ReportError> {
    let name = path.display().to_string();
    let bytes =
        std::fs::read(path).map_err(|e| file_error(&name, 0, format!("cannot read: {e}")))?;
    parse_report(&name, &bytes)
}

/// Parses report bytes: CSV (any cloud) or the JSON that `aws iam get-credential-report`
/// prints (base64 CSV in `Content`).
///
/// Isolated: a failure inside (a panic included) is an error naming the file, never the
/// caller's end; a failure on one row leaves that row out with its line.
pub fn parse_report(name: &str, bytes: &[u8]) -> Result<Parsed, ReportError> {
    crate::isolate::guard(|| parse_any(name, bytes))
        .unwrap_or_else(|reason| Err(file_error(name, 0, reason)))
}

fn parse_any(name: &str, bytes: &[u8]) -> Result<Parsed, ReportError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    if bytes.trim_ascii_start().first() == Some(&b'{') {
        return parse_aws_json(name, bytes);
    }
    parse_csv(name, bytes, None)
}

fn parse_aws_json(name: &str, bytes: &[u8]) -> Result<Parsed, ReportError> {
    #[derive(serde::Deserialize)]
    struct Envelope {
        #[serde(rename = "Content")]
        content: String,
        #[serde(rename = "GeneratedTime")]
        generated_time: Option<String>,
        #[serde(rename = "ReportFormat")]
        report_format: Option<String>,
    }
    let env: Envelope = serde_json::from_slice(bytes).map_err(|e| {
        file_error(
            name,
            e.line() as u64,
            format!("not a get-credential-report JSON document: {e}"),
        )
    })?;
    if let Some(fmt) = env.report_format.as_deref()
        && fmt != "text/csv"
    {
        return Err(file_error(
            name,
            1,
            format!("ReportFormat {fmt:?} is not text/csv"),
        ));
    }
    let csv = base64::engine::general_purpose::STANDARD
        .decode(env.content.trim())
        .map_err(|e| file_error(name, 1, format!("Content is not base64: {e}")))?;
    let generated = match env.generated_time.as_deref() {
        Some(t) => Some(
            parse_report_time(t).map_err(|e| file_error(name, 1, format!("GeneratedTime: {e}")))?,
        ),
        None => None,
    };
    parse_csv(name, &csv, generated)
}

fn parse_csv(
    name: &str,
    bytes: &[u8],
    generated_at: Option<DateTime<Utc>>,
) -> Result<Parsed, ReportError> {
    let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(bytes);
    let header = reader
        .headers()
        .map_err(|e| file_error(name, 1, format!("cannot read the header: {e}")))?
        .clone();
    if header.iter().all(|h| h.trim().is_empty()) {
        return Err(file_error(name, 1, "empty file: no header".to_owned()));
    }
    let columns = Columns::new(&header);
    let cloud = columns.detect().ok_or_else(|| {
        file_error(
            name,
            1,
            format!(
                "unknown credential report format: the header ({}) is not AWS IAM, Alibaba RAM or Tencent CAM",
                truncate_list(header.iter())
            ),
        )
    })?;
    columns.check_required(cloud).map_err(|missing| {
        file_error(
            name,
            1,
            format!("{cloud} credential report without column(s) {missing}"),
        )
    })?;
    let mut principals = Vec::new();
    let mut row_errors = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map_or(i as u64 + 2, csv::Position::line);
                row_errors.push(file_error(name, line, format!("unreadable row: {e}")));
                continue;
            }
        };
        let line = record.position().map_or(i as u64 + 2, csv::Position::line);
        if record.iter().all(|c| c.trim().is_empty()) {
            continue;
        }
        if record.len() != header.len() {
            row_errors.push(file_error(
                name,
                line,
                format!(
                    "row has {} fields, the header has {}",
                    record.len(),
                    header.len()
                ),
            ));
            continue;
        }
        let parsed = crate::isolate::guard(|| {
            let mut row = Row::new(&columns, &record);
            let principal = match cloud {
                Cloud::Aws => aws_principal(&mut row, line),
                Cloud::Alibaba => alibaba_principal(&mut row, line),
                Cloud::Tencent => tencent_principal(&mut row, line),
            };
            (principal, row.into_errors())
        });
        let (principal, errors) = match parsed {
            Ok(p) => p,
            Err(reason) => {
                row_errors.push(file_error(name, line, reason));
                continue;
            }
        };
        if errors.is_empty() {
            principals.push(principal);
        } else {
            row_errors.extend(errors.into_iter().map(|(column, message)| ReportError {
                file: name.to_owned(),
                line,
                column: Some(column),
                message,
            }));
        }
    }
    // A report of a million bad rows is a hundred lines of errors and a count.
    if row_errors.len() > MAX_ROW_ERRORS {
        let more = row_errors.len() - MAX_ROW_ERRORS;
        let line = row_errors[MAX_ROW_ERRORS].line;
        row_errors.truncate(MAX_ROW_ERRORS);
        row_errors.push(file_error(
            name,
            line,
            format!("and {more} more row error(s) from here on"),
        ));
    }
    let account_id = principals
        .iter()
        .filter_map(|p| p.arn.as_deref())
        .find_map(account_from_arn)
        .map(AccountId);
    let account_alias = match cloud {
        Cloud::Alibaba => principals.iter().filter(|p| !p.root).find_map(|p| {
            p.name
                .split_once('@')
                .map(|(_, d)| d.split('.').next().unwrap_or(d).to_owned())
        }),
        _ => None,
    };
    Ok(Parsed {
        snapshot: ReportSnapshot {
            cloud,
            account_id,
            account_alias,
            generated_at,
            source: name.to_owned(),
            principals,
        },
        row_errors,
    })
}

fn aws_principal(row: &mut Row<'_>, line: u64) -> ReportPrincipal {
    let name = row.text("user");
    let root = name == "<root_account>";
    let keys = (1..=2)
        .filter_map(|n| {
            let active = row.bool(&format!("access_key_{n}_active"));
            let last_rotated = row.time(&format!("access_key_{n}_last_rotated"));
            let last_used = row.time(&format!("access_key_{n}_last_used_date"));
            let region = row.string(&format!("access_key_{n}_last_used_region"));
            let service = row.string(&format!("access_key_{n}_last_used_service"));
            let active = active.value().copied().unwrap_or(false);
            let exists = active || last_rotated.value().is_some() || last_used.value().is_some();
            exists.then_some(ReportKey {
                slot: n,
                id: None,
                active,
                created: Cell::NotApplicable,
                last_rotated,
                last_used,
                last_used_region: region,
                last_used_service: service,
                at_risk: Cell::NotApplicable,
                created_over_90_days: None,
                created_over_30_days: None,
            })
        })
        .collect();
    let certificates = (1..=2)
        .filter_map(|n| {
            let active = row
                .bool(&format!("cert_{n}_active"))
                .value()
                .copied()
                .unwrap_or(false);
            let last_rotated = row.time(&format!("cert_{n}_last_rotated"));
            (active || last_rotated.value().is_some()).then_some(ReportCert {
                slot: n,
                active,
                last_rotated,
            })
        })
        .collect();
    ReportPrincipal {
        root,
        arn: Some(row.text("arn")).filter(|a| !a.is_empty()),
        id: None,
        user_type: None,
        created: row.time("user_creation_time"),
        password: Password {
            enabled: row.bool("password_enabled"),
            active: None,
            last_used: row.time("password_last_used"),
            last_changed: row.time("password_last_changed"),
            next_rotation: row.time("password_next_rotation"),
        },
        mfa_active: row.bool("mfa_active"),
        last_login: None,
        console_login_active: None,
        login_protection: None,
        operation_protection: None,
        abnormal_logins_30d: None,
        keys,
        certificates,
        line,
        name,
    }
}

fn alibaba_principal(row: &mut Row<'_>, line: u64) -> ReportPrincipal {
    let name = row.text("user");
    let root = name == "<root>";
    let mut keys = Vec::new();
    let mut slot_columns: Vec<(u32, String)> =
        (1..=2).map(|n| (n, format!("access_key_{n}"))).collect();
    slot_columns.extend(
        row.columns()
            .additional_key_slots()
            .into_iter()
            .map(|n| (n + 2, format!("additional_access_key_{n}"))),
    );
    for (slot, prefix) in slot_columns {
        let exists = row.bool(&format!("{prefix}_exist"));
        let active = row.bool(&format!("{prefix}_active"));
        let last_rotated = row.time(&format!("{prefix}_last_rotated"));
        let last_used = row.time(&format!("{prefix}_last_used"));
        if exists.value() == Some(&true) {
            keys.push(ReportKey {
                slot,
                id: None,
                active: active.value().copied().unwrap_or(false),
                created: Cell::NotApplicable,
                last_rotated,
                last_used,
                last_used_region: Cell::NotApplicable,
                last_used_service: Cell::NotApplicable,
                at_risk: Cell::NotApplicable,
                created_over_90_days: None,
                created_over_30_days: None,
            });
        }
    }
    ReportPrincipal {
        root,
        arn: None,
        id: None,
        user_type: None,
        created: row.time("user_creation_time"),
        password: Password {
            enabled: row.bool("password_exist"),
            active: Some(row.bool("password_active")),
            last_used: Cell::NotApplicable,
            last_changed: row.time("password_last_changed"),
            next_rotation: row.time("password_next_rotation"),
        },
        mfa_active: row.bool("mfa_active"),
        last_login: Some(row.time("user_last_logon")),
        console_login_active: None,
        login_protection: None,
        operation_protection: None,
        abnormal_logins_30d: None,
        keys,
        certificates: Vec::new(),
        line,
        name,
    }
}

fn tencent_principal(row: &mut Row<'_>, line: u64) -> ReportPrincipal {
    let mut keys = Vec::new();
    for n in 1..=2u32 {
        let id = row.string(&format!("AccessKey{n}SecretId"));
        let status = row.string(&format!("AccessKey{n}Status"));
        let at_risk = row.bool(&format!("AccessKey{n}MayBeAtRisk"));
        let created = row.time(&format!("AccessKey{n}CreationTime"));
        let last_used = row.time(&format!("AccessKey{n}lastUsedDate"));
        let over_90 = row.bool(&format!("AccessKey{n}CreatedOver90Days"));
        let over_30 = row.bool(&format!("AccessKey{n}CreatedOver30Days"));
        let active = match status.value().map(String::as_str) {
            Some(s) if s.eq_ignore_ascii_case("active") || s.eq_ignore_ascii_case("enabled") => {
                Some(true)
            }
            Some(s)
                if s.eq_ignore_ascii_case("disable")
                    || s.eq_ignore_ascii_case("disabled")
                    || s.eq_ignore_ascii_case("inactive") =>
            {
                Some(false)
            }
            Some(other) => {
                row.error(
                    &format!("AccessKey{n}Status"),
                    format!(
                        "expected Active or Disable, found {}",
                        crate::provider::time::excerpt(other)
                    ),
                );
                None
            }
            None => None,
        };
        if id.value().is_some() || active.is_some() {
            keys.push(ReportKey {
                slot: n,
                id: id.value().cloned().map(AccessKeyId),
                active: active.unwrap_or(false),
                created: created.clone(),
                last_rotated: created,
                last_used,
                last_used_region: Cell::NotApplicable,
                last_used_service: Cell::NotApplicable,
                at_risk,
                created_over_90_days: Some(over_90),
                created_over_30_days: Some(over_30),
            });
        }
    }
    ReportPrincipal {
        name: row.text("Username"),
        root: false,
        arn: None,
        id: Some(row.text("AccountID")).filter(|s| !s.is_empty()),
        user_type: Some(row.text("UserType")).filter(|s| !s.is_empty()),
        created: row.time("CreationTime"),
        password: Password {
            enabled: row.bool("PasswordEnabled"),
            active: None,
            last_used: Cell::NotApplicable,
            // `FALSE` here means "no password", not a time.
            last_changed: row.time_or_false("PasswordLastRotation"),
            next_rotation: Cell::NotApplicable,
        },
        mfa_active: row.bool("MFADeviceActive"),
        last_login: None,
        console_login_active: Some(row.bool("LoginConsoleActive")),
        login_protection: Some(row.bool("LoginProtectionActive")),
        operation_protection: Some(row.bool("OperationProtectionActive")),
        abnormal_logins_30d: Some(row.bool("Abnormal LoginsNumWithin30Days")),
        keys,
        certificates: Vec::new(),
        line,
    }
}

/// `arn:aws:iam::123456789012:user/x` → `123456789012`.
fn account_from_arn(arn: &str) -> Option<String> {
    let mut parts = arn.splitn(6, ':');
    let (_, _, _, _, account) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    (!account.is_empty()).then(|| account.to_owned())
}

fn file_error(file: &str, line: u64, message: String) -> ReportError {
    ReportError {
        file: file.to_owned(),
        line,
        column: None,
        message,
    }
}

fn truncate_list<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let items: Vec<&str> = items.collect();
    let mut s = items.iter().take(6).copied().collect::<Vec<_>>().join(", ");
    if items.len() > 6 {
        s.push_str(", ...");
    }
    s
}

#[cfg(test)]
mod tests;
