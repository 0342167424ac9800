//! Credential-report parsing for the three clouds, including malformed rows.

use akwatch::event::Cloud;
use akwatch::report::{Cell, read_report};

use crate::fixture;

#[test]
fn aws_csv_typed_values_and_bad_rows() {
    let parsed = read_report(&fixture("reports/aws_iam.csv")).unwrap();
    let s = &parsed.snapshot;
    assert_eq!(s.cloud, Cloud::Aws);
    assert_eq!(s.account_id.as_ref().unwrap().as_str(), "210987654321");
    let names: Vec<_> = s.principals.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["<root_account>", "ci-deployer", "analyst"]);

    let root = &s.principals[0];
    assert!(root.root);
    assert_eq!(root.password.enabled, Cell::NotSupported);
    assert_eq!(root.keys.len(), 1, "the root account has an active key");
    assert!(root.keys[0].active);

    let ci = &s.principals[1];
    assert_eq!(ci.password.enabled, Cell::Value(false));
    assert_eq!(ci.keys.len(), 2);
    assert_eq!(
        ci.keys[1].last_used,
        Cell::NotApplicable,
        "key 2 never used"
    );
    assert_eq!(
        ci.keys[0].last_used.value().unwrap().to_rfc3339(),
        "2025-03-13T22:10:00+00:00"
    );

    let analyst = &s.principals[2];
    assert_eq!(analyst.password.last_used, Cell::NoInformation);
    assert_eq!(
        analyst.keys.len(),
        1,
        "an inactive key that exists is still listed"
    );
    assert!(!analyst.keys[0].active);
    assert_eq!(analyst.certificates.len(), 1);
    assert_eq!(analyst.line, 4);

    // Row `broken` (line 5): both bad cells are named; row `short` (line 6): field count.
    let errs: Vec<String> = parsed.row_errors.iter().map(ToString::to_string).collect();
    assert_eq!(errs.len(), 3, "{errs:#?}");
    assert!(
        errs[0].contains("aws_iam.csv:5: column user_creation_time (column 3)"),
        "{}",
        errs[0]
    );
    assert!(
        errs[1].contains(
            "column password_enabled (column 4): expected TRUE or FALSE, found \"maybe\""
        ),
        "{}",
        errs[1]
    );
    assert!(
        errs[2].contains("aws_iam.csv:6: row has 3 fields, the header has 22"),
        "{}",
        errs[2]
    );
}

#[test]
fn aws_get_credential_report_json() {
    let parsed = read_report(&fixture("reports/aws_iam_get_credential_report.json")).unwrap();
    assert!(parsed.row_errors.is_empty());
    let s = &parsed.snapshot;
    assert_eq!(s.principals.len(), 3);
    assert_eq!(
        s.generated_at.unwrap().to_rfc3339(),
        "2025-03-14T10:00:00+00:00"
    );
}

#[test]
fn alibaba_ram_with_additional_keys() {
    let parsed = read_report(&fixture("reports/alibaba_ram.csv")).unwrap();
    let s = &parsed.snapshot;
    assert_eq!(s.cloud, Cloud::Alibaba);
    assert_eq!(s.account_alias.as_deref(), Some("corp"));
    assert!(s.principals[0].root);
    let bot = &s.principals[1];
    let slots: Vec<_> = bot.keys.iter().map(|k| (k.slot, k.active)).collect();
    assert_eq!(
        slots,
        [(1, true), (2, false), (3, true)],
        "additional_access_key_1 is slot 3"
    );
    assert_eq!(
        bot.last_login,
        Some(Cell::NotApplicable),
        "`-` means never logged on"
    );
    assert_eq!(bot.keys[1].last_used, Cell::NotApplicable);
    let auditor = &s.principals[2];
    assert!(auditor.keys.is_empty());
    assert_eq!(auditor.mfa_active, Cell::Value(true));
    let errs: Vec<String> = parsed.row_errors.iter().map(ToString::to_string).collect();
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert!(errs.iter().all(|e| e.contains("alibaba_ram.csv:5")));
    assert!(
        errs.iter()
            .any(|e| e.contains("password_last_changed (column 6)"))
    );
    assert!(
        errs.iter()
            .any(|e| e.contains("access_key_1_exist (column 9)"))
    );
}

#[test]
fn tencent_cam_every_column() {
    let parsed = read_report(&fixture("reports/tencent_cam.csv")).unwrap();
    let s = &parsed.snapshot;
    assert_eq!(s.cloud, Cloud::Tencent);
    assert_eq!(s.principals.len(), 4);
    let ops = &s.principals[0];
    assert_eq!(ops.id.as_deref(), Some("100011112222"));
    assert_eq!(ops.user_type.as_deref(), Some("sub-user"));
    assert_eq!(
        ops.created.value().unwrap().to_rfc3339(),
        "2019-08-16T01:25:56+00:00",
        "UTC+8 local time"
    );
    assert_eq!(ops.login_protection, Some(Cell::Value(true)));
    assert_eq!(ops.operation_protection, Some(Cell::Value(false)));
    assert_eq!(ops.abnormal_logins_30d, Some(Cell::Value(false)));
    assert_eq!(ops.keys.len(), 2);
    let (k1, k2) = (&ops.keys[0], &ops.keys[1]);
    assert_eq!(
        k1.id.as_ref().unwrap().as_str(),
        "AKIDTestSubUserKey0000000000000001"
    );
    assert!(k1.active);
    assert_eq!(k1.at_risk, Cell::Value(false));
    assert_eq!(k1.created_over_90_days, Some(Cell::Value(true)));
    assert!(!k2.active, "Disable");
    assert_eq!(k2.at_risk, Cell::Value(true), "AccessKey2MayBeAtRisk");
    assert_eq!(
        k2.last_used.value().unwrap().to_rfc3339(),
        "2018-06-01T04:00:00+00:00"
    );

    let wecom = &s.principals[1];
    assert_eq!(wecom.password.enabled, Cell::NotSupported);
    assert!(wecom.keys.is_empty());
    let receiver = &s.principals[2];
    assert_eq!(receiver.console_login_active, Some(Cell::NotSupported));
    let console = &s.principals[3];
    assert_eq!(
        console.password.last_changed,
        Cell::NotApplicable,
        "PasswordLastRotation FALSE"
    );
    assert_eq!(console.abnormal_logins_30d, Some(Cell::Value(true)));

    let errs: Vec<String> = parsed.row_errors.iter().map(ToString::to_string).collect();
    assert_eq!(errs.len(), 3, "{errs:#?}");
    assert!(errs.iter().all(|e| e.contains("tencent_cam.csv:6")));
    assert!(errs.iter().any(|e| e.contains("CreationTime (column 4)")));
    assert!(
        errs.iter()
            .any(|e| e.contains("AccessKey1MayBeAtRisk (column 13)"))
    );
    assert!(errs.iter().any(|e| e.contains("AccessKey1Status")));
}

#[test]
fn unknown_and_missing_files_are_clear_errors() {
    let e = read_report(&fixture("reports/unknown.csv"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("unknown.csv:1") && e.contains("unknown credential report format"),
        "{e}"
    );
    let e = read_report(&fixture("reports/nope.csv"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope.csv") && e.contains("cannot read"), "{e}");
}

/// A date cell with an extreme year (chrono parses ±262143) used to panic in the UTC+8 shift:
/// now that row is left out with its line and column, and the other rows are kept — also when
/// the report arrives as a message (same parser).
#[test]
fn an_extreme_date_cell_is_a_row_error_not_a_panic() {
    let text = std::fs::read_to_string(fixture("reports/tencent_cam.csv")).unwrap();
    let before = akwatch::report::parse_report("cam.csv", text.as_bytes()).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines[1] = lines[1].replacen("2019/8/16 9:25:56", "-262143/1/1 0:00:00", 1);
    let poisoned = lines.join("\n") + "\n";
    let parsed = akwatch::report::parse_report("cam.csv", poisoned.as_bytes()).unwrap();
    assert_eq!(
        parsed.snapshot.principals.len(),
        before.snapshot.principals.len() - 1
    );
    assert_eq!(parsed.row_errors.len(), before.row_errors.len() + 1);
    let e = parsed
        .row_errors
        .iter()
        .map(ToString::to_string)
        .find(|e| e.starts_with("cam.csv:2:"))
        .unwrap();
    assert!(
        e.contains("CreationTime") && e.contains("out of range"),
        "{e}"
    );
}
