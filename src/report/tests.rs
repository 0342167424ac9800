//! Unit tests for report helpers; whole-file behaviour is in `tests/it/reports.rs`.

use super::*;

#[test]
fn account_ids_come_from_arns() {
    assert_eq!(
        account_from_arn("arn:aws:iam::123456789012:user/a").as_deref(),
        Some("123456789012")
    );
    assert_eq!(
        account_from_arn("arn:aws:iam::123456789012:root").as_deref(),
        Some("123456789012")
    );
    assert_eq!(account_from_arn("not-an-arn"), None);
    assert_eq!(account_from_arn("arn:aws:iam:::user/a"), None);
}

#[test]
fn markers_serialise_as_null_or_their_name() {
    let cells: Vec<Cell<bool>> = vec![
        Cell::Value(true),
        Cell::NotApplicable,
        Cell::NotSupported,
        Cell::NoInformation,
    ];
    assert_eq!(
        serde_json::to_string(&cells).unwrap(),
        r#"[true,null,"not_supported","no_information"]"#
    );
}

#[test]
fn header_spelling_does_not_matter_and_a_bom_is_ignored() {
    let csv = "\u{feff}User,ARN,User_Creation_Time,Password_Enabled,MFA_Active,Access_Key_1_Active,Access_Key_1_Last_Rotated,Access_Key_1_Last_Used_Date,Access_Key_2_Active\n\
               u,arn:aws:iam::1:user/u,2020-01-01T00:00:00Z,TRUE,false,true,2020-01-01T00:00:00Z,N/A,false\n";
    let parsed = parse_report("r.csv", csv.as_bytes()).unwrap();
    assert_eq!(parsed.snapshot.cloud, Cloud::Aws);
    assert!(parsed.row_errors.is_empty(), "{:?}", parsed.row_errors);
    assert_eq!(parsed.snapshot.principals[0].keys.len(), 1);
}

#[test]
fn a_known_format_without_its_required_columns_is_rejected() {
    let e = parse_report("r.csv", b"user,arn,password_enabled\nu,a,TRUE\n").unwrap_err();
    assert!(e.message.contains("without column(s)"), "{e}");
    assert!(e.message.contains("access_key_1_active"), "{e}");
}

#[test]
fn empty_input_is_an_error() {
    assert!(parse_report("r.csv", b"").is_err());
}
