//! Header lookup and typed cell parsing for credential-report CSVs.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use csv::StringRecord;

use super::Cell;
use crate::event::Cloud;
use crate::provider::time::parse_report_time;

/// Column names normalised to lower-case letters and digits, so `access_key_1_active`,
/// `AccessKey1Active` and `Abnormal LoginsNumWithin30Days` are found whatever the spelling.
fn norm(name: &str) -> String {
    name.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

const AWS_REQUIRED: &[&str] = &[
    "user",
    "arn",
    "user_creation_time",
    "password_enabled",
    "mfa_active",
    "access_key_1_active",
    "access_key_1_last_rotated",
    "access_key_1_last_used_date",
    "access_key_2_active",
];
const ALIBABA_REQUIRED: &[&str] = &[
    "user",
    "user_creation_time",
    "password_exist",
    "mfa_active",
    "access_key_1_exist",
    "access_key_1_active",
    "access_key_1_last_rotated",
    "access_key_1_last_used",
];
const TENCENT_REQUIRED: &[&str] = &[
    "AccountID",
    "Username",
    "UserType",
    "PasswordEnabled",
    "MFADeviceActive",
    "AccessKey1SecretId",
    "AccessKey1Status",
];

pub struct Columns {
    names: Vec<String>,
    index: HashMap<String, usize>,
}

impl Columns {
    pub fn new(header: &StringRecord) -> Self {
        let names: Vec<String> = header
            .iter()
            .map(|h| h.trim().trim_start_matches('\u{feff}').to_owned())
            .collect();
        let mut index = HashMap::new();
        for (i, n) in names.iter().enumerate() {
            index.entry(norm(n)).or_insert(i);
        }
        Columns { names, index }
    }

    fn get(&self, name: &str) -> Option<usize> {
        self.index.get(&norm(name)).copied()
    }

    fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    pub fn detect(&self) -> Option<Cloud> {
        if self.has("AccessKey1SecretId") || (self.has("UserType") && self.has("AccountID")) {
            Some(Cloud::Tencent)
        } else if self.has("access_key_1_exist") || self.has("password_exist") {
            Some(Cloud::Alibaba)
        } else if self.has("arn") && self.has("password_enabled") {
            Some(Cloud::Aws)
        } else {
            None
        }
    }

    pub fn check_required(&self, cloud: Cloud) -> Result<(), String> {
        let required = match cloud {
            Cloud::Aws => AWS_REQUIRED,
            Cloud::Alibaba => ALIBABA_REQUIRED,
            Cloud::Tencent => TENCENT_REQUIRED,
        };
        let missing: Vec<&str> = required.iter().copied().filter(|c| !self.has(c)).collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(missing.join(", "))
        }
    }

    /// The `N` of every `additional_access_key_N_exist` column (Alibaba, more than 2 keys).
    pub fn additional_key_slots(&self) -> Vec<u32> {
        let mut slots: Vec<u32> = self
            .names
            .iter()
            .filter_map(|n| {
                n.strip_prefix("additional_access_key_")?
                    .strip_suffix("_exist")?
                    .parse()
                    .ok()
            })
            .collect();
        slots.sort_unstable();
        slots.dedup();
        slots
    }

    fn label(&self, i: usize) -> String {
        format!("{} (column {})", self.names[i], i + 1)
    }
}

/// One data row, read cell by cell; bad cells are collected, not fatal.
pub struct Row<'a> {
    columns: &'a Columns,
    record: &'a StringRecord,
    errors: Vec<(String, String)>,
}

impl<'a> Row<'a> {
    pub fn new(columns: &'a Columns, record: &'a StringRecord) -> Self {
        Row {
            columns,
            record,
            errors: Vec::new(),
        }
    }

    pub fn columns(&self) -> &'a Columns {
        self.columns
    }

    pub fn into_errors(self) -> Vec<(String, String)> {
        self.errors
    }

    fn raw(&self, name: &str) -> Option<(usize, &'a str)> {
        let i = self.columns.get(name)?;
        Some((i, self.record.get(i).unwrap_or("").trim()))
    }

    pub fn error(&mut self, name: &str, message: String) {
        let label = self
            .columns
            .get(name)
            .map_or_else(|| name.to_owned(), |i| self.columns.label(i));
        self.errors.push((label, message));
    }

    /// The cell as text ("" when the column is absent).
    pub fn text(&self, name: &str) -> String {
        self.raw(name)
            .map(|(_, v)| v.to_owned())
            .unwrap_or_default()
    }

    pub fn string(&mut self, name: &str) -> Cell<String> {
        match self.raw(name) {
            None => Cell::NotApplicable,
            Some((_, v)) => marker(v).unwrap_or_else(|| Cell::Value(v.to_owned())),
        }
    }

    pub fn bool(&mut self, name: &str) -> Cell<bool> {
        let Some((i, v)) = self.raw(name) else {
            return Cell::NotApplicable;
        };
        if let Some(m) = marker(v) {
            return m;
        }
        if v.eq_ignore_ascii_case("true") {
            Cell::Value(true)
        } else if v.eq_ignore_ascii_case("false") {
            Cell::Value(false)
        } else {
            self.errors.push((
                self.columns.label(i),
                format!(
                    "expected TRUE or FALSE, found {}",
                    crate::provider::time::excerpt(v)
                ),
            ));
            Cell::NotApplicable
        }
    }

    pub fn time(&mut self, name: &str) -> Cell<DateTime<Utc>> {
        let Some((i, v)) = self.raw(name) else {
            return Cell::NotApplicable;
        };
        if let Some(m) = marker(v) {
            return m;
        }
        match parse_report_time(v) {
            Ok(t) => Cell::Value(t),
            Err(e) => {
                self.errors
                    .push((self.columns.label(i), format!("expected a time: {e}")));
                Cell::NotApplicable
            }
        }
    }

    /// A time column where `FALSE` means "none" (Tencent `PasswordLastRotation`).
    pub fn time_or_false(&mut self, name: &str) -> Cell<DateTime<Utc>> {
        match self.raw(name) {
            Some((_, v)) if v.eq_ignore_ascii_case("false") => Cell::NotApplicable,
            _ => self.time(name),
        }
    }
}

/// The markers the clouds write instead of a value.
fn marker<T>(v: &str) -> Option<Cell<T>> {
    match v {
        "" | "-" => Some(Cell::NotApplicable),
        _ if v.eq_ignore_ascii_case("n/a") => Some(Cell::NotApplicable),
        _ if v.eq_ignore_ascii_case("not_supported") => Some(Cell::NotSupported),
        _ if v.eq_ignore_ascii_case("no_information") => Some(Cell::NoInformation),
        _ => None,
    }
}
