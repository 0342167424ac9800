//! One poisoned record in the middle of a stream, one of each class the "never falls over"
//! issue names: every command keeps going, the record is rejected with a short reason naming
//! it, and the good records around it are all there.

use std::io::Write;
use std::process::{Command, Output, Stdio};

const BAD_YEAR: &str = "-262143-01-01 00:00:00";

fn aws(time: &str, n: u32) -> String {
    serde_json::json!({
        "eventVersion": "1.08", "eventTime": time, "eventSource": "s3.amazonaws.com",
        "eventName": "ListBuckets", "awsRegion": "us-east-1", "sourceIPAddress": "198.51.100.7",
        "eventID": format!("poison-{n}"),
        "userIdentity": {"type": "IAMUser", "accessKeyId": "AKIAPOISONTEST000001", "userName": "p",
            "arn": "arn:aws:iam::111122223333:user/p", "accountId": "111122223333"}
    })
    .to_string()
}

/// Records whose event time comes from every place a time can come from, each with an
/// extreme year, a far-future date or a date before 2006.
fn poisoned_records() -> Vec<(&'static str, String)> {
    let mut body: serde_json::Value = serde_json::from_str(&aws("x", 0)).unwrap();
    body.as_object_mut().unwrap().remove("eventTime");
    let tencent_raw = serde_json::json!({
        "userIdentity": {"principalId": "100011112222", "accountId": "100011110000",
            "secretId": "AKIDPoisonTest000000000000000000001", "type": "CAMUser", "userName": "p"},
        "eventRegion": "ap-shanghai", "eventVersion": 2, "eventName": "DescribeInstances",
        "eventSource": "cvm.tencentcloudapi.com", "sourceIPAddress": "119.28.1.9",
        "eventTime": BAD_YEAR
    });
    let mut tencent_inner = tencent_raw.clone();
    tencent_inner.as_object_mut().unwrap().remove("eventTime");
    vec![
        ("eventTime", aws(BAD_YEAR, 1)),
        ("eventTime (far future)", aws("2099-01-01T00:00:00Z", 2)),
        ("eventTime (before 2006)", aws("1999-12-31T00:00:00Z", 3)),
        ("eventTime (epoch, future)", aws("4102444800", 4)),
        ("eventTime (8 MB)", aws(&"9".repeat(8 << 20), 5)),
        ("@timestamp", {
            let mut v = body.clone();
            v["@timestamp"] = BAD_YEAR.into();
            v.to_string()
        }),
        (
            "CloudEvents time",
            serde_json::json!({"specversion": "1.0", "id": "ce-p", "source": "tat.cloud.tencent",
                "type": "tat:CloudEvent:ApiCall", "time": BAD_YEAR, "data": tencent_inner})
            .to_string(),
        ),
        (
            "SLS __time__",
            serde_json::json!({"__topic__": "actiontrail_audit_event", "__time__": BAD_YEAR,
                "event": {"eventId": "sls-p", "eventSource": "ecs.aliyuncs.com",
                    "eventName": "DescribeInstances", "acsRegion": "cn-hangzhou",
                    "sourceIpAddress": "47.1.2.3",
                    "userIdentity": {"type": "ram-user", "accessKeyId": "LTAIPoisonTest000001",
                        "userName": "p", "accountId": "1234567890123456"}}})
            .to_string(),
        ),
        ("Tencent eventTime", tencent_raw.to_string()),
        (
            "Tencent EventTime",
            serde_json::json!({"Response": {"Events": [{
                "CloudAuditEvent": tencent_inner.to_string(), "EventTime": BAD_YEAR}]}})
            .to_string(),
        ),
    ]
}

fn run(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_akwatch"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.unwrap_or_default().to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

#[test]
fn no_poisoned_time_crashes_normalize_or_replay_and_the_good_records_stay() {
    let dir = tempfile::tempdir().unwrap();
    let poisoned = poisoned_records();
    let mut lines = Vec::new();
    for (i, (_, record)) in poisoned.iter().enumerate() {
        lines.push(aws("2025-03-01T10:00:00Z", 100 + i as u32));
        lines.push(record.clone());
    }
    lines.push(aws("2025-03-01T10:00:01Z", 99));
    let file = dir.path().join("poison.jsonl");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let dlq = dir.path().join("dlq.jsonl");

    let o = run(
        &[
            "normalize",
            "--dlq",
            dlq.to_str().unwrap(),
            file.to_str().unwrap(),
        ],
        None,
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    let good = poisoned.len() + 1;
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), good);
    assert!(
        stderr.ends_with(&format!(
            "decoded {good} records, rejected {}\n",
            poisoned.len()
        )),
        "{stderr}"
    );
    // Each poisoned record is a dead letter naming its line, with a short reason.
    let letters: Vec<serde_json::Value> = std::fs::read_to_string(&dlq)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(letters.len(), poisoned.len());
    for (i, (letter, (what, record))) in letters.iter().zip(&poisoned).enumerate() {
        assert_eq!(letter["origin"]["line"], 2 * i as u64 + 2, "{what}");
        let reason = letter["reason"].as_str().unwrap();
        assert!(
            reason.len() <= 310,
            "{what}: reason of {} bytes",
            reason.len()
        );
        assert!(
            ["bad_field", "missing_field"].contains(&letter["kind"].as_str().unwrap()),
            "{what}: {letter}"
        );
        // The record is kept unchanged.
        assert_eq!(letter["raw"].as_str().unwrap(), record, "{what}");
    }

    // replay: the same file, from stdin; no crash, the good records all processed.
    let o = run(
        &["replay", "--rules", "rules", "-"],
        Some((lines.join("\n") + "\n").as_bytes()),
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.len() < 20_000, "stderr of {} bytes", stderr.len());
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_flood_of_bad_lines_is_capped_on_stderr_and_in_the_dead_letter_file() {
    use flate2::Compression;
    use flate2::write::GzEncoder;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flood.jsonl.gz");
    let mut gz = GzEncoder::new(std::fs::File::create(&file).unwrap(), Compression::best());
    let n = 200_000;
    for _ in 0..n {
        gz.write_all(b"{}\n").unwrap();
    }
    gz.finish().unwrap();
    assert!(std::fs::metadata(&file).unwrap().len() < 10_000);

    // Without --dlq: a few lines on stderr and a count, not one line per record.
    let o = run(&["normalize", file.to_str().unwrap()], None);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stderr.lines().count() <= 25,
        "{} lines",
        stderr.lines().count()
    );
    assert!(
        stderr.contains(&format!(
            "and {} more rejected record(s) not listed",
            n - 20
        )),
        "{stderr}"
    );
    assert!(stderr.ends_with(&format!("decoded 0 records, rejected {n}\n")));

    // With --dlq and a cap: the file stops at the cap and the rest is counted.
    let dlq = dir.path().join("dlq.jsonl");
    let o = run(
        &[
            "normalize",
            "--dlq",
            dlq.to_str().unwrap(),
            "--dlq-max-bytes",
            "1M",
            file.to_str().unwrap(),
        ],
        None,
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    let written = std::fs::metadata(&dlq).unwrap().len();
    assert!(written <= 1 << 20 && written > 900_000, "{written} bytes");
    assert!(
        stderr.contains("reached its limit of 1048576 bytes"),
        "{stderr}"
    );
}
