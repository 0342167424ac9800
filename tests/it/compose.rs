//! Docker cannot run on the project's machines, so this checks the deployment kit against the
//! repository statically: `docker-compose.yml` (services, ports on loopback only, healthchecks
//! and restart policies, Kafka's listeners for containers and for the host, Prometheus loading
//! the alert rules, Grafana provisioned with the dashboard), the `Dockerfile` (non-root user,
//! `HEALTHCHECK` through `akwatch probe`), `.dockerignore`, and that every mounted or copied path
//! exists and fits. `scripts/ops-check.sh` checks the rules and the dashboard with promtool.

use std::collections::BTreeMap;

use serde_json::Value;
use wildmatch::WildMatch;

use crate::repo;

fn text(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml(path: &str) -> Value {
    serde_saphyr::from_str(&text(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn compose() -> Value {
    yaml("docker-compose.yml")
}

fn config() -> akwatch::config::Config {
    akwatch::config::Config::parse(
        "deploy/akwatch.compose.yaml",
        &text("deploy/akwatch.compose.yaml"),
        &|_| None,
    )
    .unwrap()
}

/// The port of the service's ops endpoint (`ops_addr`).
fn ops_port(config: &akwatch::config::Config) -> String {
    config
        .ops_addr
        .as_deref()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned()
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|s| s.as_str().unwrap())
        .collect()
}

/// A service's bind mounts: host path (without `./`) → path in the container.
fn bind_mounts(svc: &Value) -> BTreeMap<String, String> {
    strings(&svc["volumes"])
        .into_iter()
        .filter(|v| v.starts_with("./"))
        .map(|v| {
            let mut parts = v.split(':');
            let host = parts.next().unwrap().trim_start_matches("./").to_owned();
            (host, parts.next().unwrap().to_owned())
        })
        .collect()
}

/// The `Dockerfile`'s instructions (continuation lines joined, comments dropped), each split into
/// its keyword and the rest, and the index of the last `FROM` (the image's stage).
fn dockerfile() -> (Vec<(String, String)>, usize) {
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text("Dockerfile").lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(line);
                let (keyword, rest) = current.split_once(' ').unwrap_or((&current, ""));
                instructions.push((keyword.to_uppercase(), rest.trim().to_owned()));
                current.clear();
            }
        }
    }
    let last_from = instructions.iter().rposition(|(k, _)| k == "FROM").unwrap();
    (instructions, last_from)
}

#[test]
fn docker_compose_matches_the_repository() {
    let compose = compose();
    let services = compose["services"].as_object().unwrap();
    for name in ["kafka", "akwatch", "prometheus", "grafana", "loader"] {
        assert!(services.contains_key(name), "service {name}");
    }
    // akwatch is built from this repository's Dockerfile, which copies paths that exist.
    let build = &services["akwatch"]["build"];
    assert!(
        build == "." || build["context"] == ".",
        "akwatch is built from {build}"
    );
    let (instructions, _) = dockerfile();
    for (_, rest) in instructions
        .iter()
        .filter(|(k, rest)| k == "COPY" && !rest.contains("--from"))
    {
        let src = rest.split_whitespace().next().unwrap();
        assert!(
            repo().join(src).exists(),
            "Dockerfile copies {src}, which is missing"
        );
    }
    // Every bind mount's host path exists; every named volume is declared.
    let declared = compose["volumes"].as_object().cloned().unwrap_or_default();
    for (name, svc) in services {
        for v in strings(&svc["volumes"]) {
            let host = v.split(':').next().unwrap();
            if host.starts_with("./") {
                assert!(
                    repo().join(host).exists(),
                    "{name} mounts {host}, which is missing"
                );
            } else {
                assert!(
                    declared.contains_key(host),
                    "{name} mounts the volume {host}, which is not declared"
                );
            }
        }
    }
    // Every image is pinned to a version.
    for (name, svc) in services {
        if let Some(image) = svc["image"].as_str() {
            let tag = image.rsplit_once(':').map(|(_, t)| t);
            assert!(
                tag.is_some_and(|t| t != "latest" && t.chars().any(|c| c.is_ascii_digit())),
                "{name} runs {image}: pin a version"
            );
        }
    }
    // The service's configuration parses, and its ops port is the published one Prometheus scrapes.
    let config = config();
    let ops_port = ops_port(&config);
    let ports = strings(&services["akwatch"]["ports"]);
    assert!(
        ports.contains(&format!("127.0.0.1:{ops_port}:{ops_port}").as_str()),
        "{ports:?}"
    );
    // Every published port listens on the host's loopback only, unless the operator opens it.
    for (name, svc) in services {
        for p in strings(&svc["ports"]) {
            assert!(
                p.starts_with("127.0.0.1:"),
                "{name} publishes {p} on every interface"
            );
        }
    }
    let prometheus = text("deploy/prometheus/prometheus.yml");
    assert!(prometheus.contains(&format!("akwatch:{ops_port}")));
    // The loader feeds exactly the service's input topics.
    let loader = text("deploy/load-examples.sh");
    for input in &config.inputs {
        assert!(
            loader.contains(&format!("produce {}", input.topic)),
            "loader does not feed {}",
            input.topic
        );
    }
    // Paths in the container config point at what the Dockerfile copies.
    for p in config
        .policies
        .iter()
        .chain(&config.lists)
        .chain(&config.geoip)
        .chain(&config.reports)
        .chain(&config.leaks)
    {
        let p = p.display().to_string();
        let local = p
            .replace("/etc/akwatch/rules", "rules")
            .replace("/usr/share/akwatch/examples", "examples");
        assert!(
            repo().join(&local).exists(),
            "{p} ({local}) is not in the image"
        );
    }
}

/// The probe URL of a healthcheck command `["akwatch", "probe", URL]` (with or without `CMD`).
fn probe_url(command: &[&str]) -> String {
    let command: Vec<&str> = command
        .iter()
        .copied()
        .skip_while(|c| *c == "CMD")
        .collect();
    assert_eq!(
        command.get(..2),
        Some(&["akwatch", "probe"][..]),
        "healthcheck {command:?} is not `akwatch probe URL`"
    );
    command
        .get(2)
        .expect("akwatch probe without a URL")
        .to_string()
}

#[test]
fn the_image_runs_unprivileged_and_checks_its_health() {
    let (instructions, last_from) = dockerfile();
    let image = &instructions[last_from..];
    // A fixed, non-root user, set before the entry point.
    let users: Vec<&str> = image
        .iter()
        .filter(|(k, _)| k == "USER")
        .map(|(_, u)| u.as_str())
        .collect();
    let user = *users
        .last()
        .expect("the image sets no USER: it runs as root");
    let uid = user.split(':').next().unwrap();
    assert!(
        uid.parse::<u32>().is_ok_and(|u| u != 0),
        "USER {user}: want a fixed non-zero numeric uid (Kubernetes' runAsNonRoot checks it)"
    );
    // That user owns the state directory the compose configuration uses.
    let config = config();
    let state_dir = config.state_dir.as_ref().unwrap().display().to_string();
    assert!(
        image.iter().any(|(k, rest)| k == "RUN"
            && rest.contains(&state_dir)
            && (rest.contains(&format!("-o {uid}")) || rest.contains(&format!("chown {uid}")))),
        "no RUN makes uid {uid} the owner of {state_dir}"
    );
    let akwatch = &compose()["services"]["akwatch"];
    assert!(
        strings(&akwatch["volumes"])
            .iter()
            .any(|v| v.split(':').nth(1) == Some(state_dir.as_str())),
        "the state directory {state_dir} is not on a volume"
    );
    // HEALTHCHECK through the binary itself, on the ops endpoint's /healthz.
    let healthchecks: Vec<&str> = image
        .iter()
        .filter(|(k, _)| k == "HEALTHCHECK")
        .map(|(_, rest)| rest.as_str())
        .collect();
    assert_eq!(healthchecks.len(), 1, "{healthchecks:?}");
    let (options, command) = healthchecks[0].split_once("CMD ").expect("HEALTHCHECK CMD");
    for option in ["--interval=", "--timeout=", "--start-period=", "--retries="] {
        assert!(options.contains(option), "HEALTHCHECK without {option}");
    }
    let command: Vec<String> = serde_json::from_str(command.trim())
        .unwrap_or_else(|e| panic!("HEALTHCHECK CMD {command}: not the exec form: {e}"));
    let command: Vec<&str> = command.iter().map(String::as_str).collect();
    let url = probe_url(&command);
    let ops_port = ops_port(&config);
    assert_eq!(url, format!("http://127.0.0.1:{ops_port}/healthz"));
    let ops_host = config
        .ops_addr
        .as_deref()
        .unwrap()
        .rsplit_once(':')
        .unwrap()
        .0;
    assert!(
        ["0.0.0.0", "127.0.0.1", "[::]"].contains(&ops_host),
        "ops_addr {ops_host} is not reachable on 127.0.0.1 inside the container"
    );
    // The revision build.rs reads comes in as a build argument, declared before the build.
    let revision_arg = instructions
        .iter()
        .position(|(k, rest)| k == "ARG" && rest.starts_with("AKWATCH_REVISION"))
        .expect("ARG AKWATCH_REVISION");
    let cargo_build = instructions
        .iter()
        .position(|(k, rest)| k == "RUN" && rest.contains("cargo build"))
        .unwrap();
    assert!(revision_arg < cargo_build && cargo_build < last_from);
    assert!(akwatch["build"]["args"]["AKWATCH_REVISION"].is_string());
}

/// Whether `.dockerignore` leaves `path` out of the build context (a pattern matching the path or
/// one of its parent directories; `**/` at any depth).
fn ignored(patterns: &[WildMatch], anywhere: &[WildMatch], path: &str) -> bool {
    let parts: Vec<&str> = path.split('/').collect();
    (1..=parts.len()).any(|n| {
        let prefix = parts[..n].join("/");
        patterns.iter().any(|p| p.matches(&prefix))
            || (0..n).any(|start| {
                let tail = parts[start..n].join("/");
                anywhere.iter().any(|p| p.matches(&tail))
            })
    })
}

#[test]
fn the_build_context_leaves_out_target_and_keeps_what_the_build_needs() {
    let lines: Vec<String> = text(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_matches('/').to_owned())
        .collect();
    assert!(
        lines.iter().all(|l| !l.starts_with('!')),
        "exceptions (!) are not modelled here: extend this test"
    );
    let patterns: Vec<WildMatch> = lines.iter().map(|l| WildMatch::new(l)).collect();
    let anywhere: Vec<WildMatch> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("**/"))
        .map(WildMatch::new)
        .collect();
    for gone in [
        "target",
        "target/release/akwatch",
        "fuzz/target/debug/x",
        ".git",
        ".git/HEAD",
    ] {
        assert!(
            ignored(&patterns, &anywhere, gone),
            "{gone} is sent to the builder"
        );
    }
    // What `cargo build --release --locked --bin akwatch` reads (the manifest's targets
    // included), and what the Dockerfile copies.
    let mut needed = vec![
        "Cargo.toml".to_owned(),
        "Cargo.lock".to_owned(),
        "src/main.rs".to_owned(),
        "src/lib.rs".to_owned(),
        "migrations/0001_inventory.sql".to_owned(),
        "tests/it/main.rs".to_owned(),
        "benches/decode.rs".to_owned(),
        "benches/engine.rs".to_owned(),
        "rules/README.md".to_owned(),
        "examples/geo.mmdb".to_owned(),
    ];
    if repo().join("build.rs").exists() {
        needed.push("build.rs".to_owned());
    }
    let (instructions, _) = dockerfile();
    for (_, rest) in instructions
        .iter()
        .filter(|(k, rest)| k == "COPY" && !rest.contains("--from"))
    {
        let src = rest.split_whitespace().next().unwrap();
        if src != "." {
            needed.push(src.to_owned());
        }
    }
    for path in &needed {
        assert!(repo().join(path).exists(), "{path} is missing");
        assert!(
            !ignored(&patterns, &anywhere, path),
            ".dockerignore leaves out {path}, which the build needs"
        );
    }
}

#[test]
fn compose_services_restart_and_report_their_health() {
    let compose = compose();
    let services = &compose["services"];
    let config = config();
    let akwatch = &services["akwatch"];
    let test = strings(&akwatch["healthcheck"]["test"]);
    assert_eq!(test.first(), Some(&"CMD"), "{test:?}");
    assert_eq!(
        probe_url(&test),
        format!("http://127.0.0.1:{}/healthz", ops_port(&config))
    );
    for service in ["kafka", "akwatch", "prometheus", "grafana"] {
        assert_eq!(
            services[service]["restart"], "unless-stopped",
            "{service} restart policy"
        );
    }
    assert_eq!(services["loader"]["restart"], "no", "the loader runs once");
    for service in ["kafka", "akwatch"] {
        assert!(
            services[service]["healthcheck"]["test"].is_array(),
            "{service} has no healthcheck"
        );
    }
    assert_eq!(
        akwatch["depends_on"]["kafka"]["condition"], "service_healthy",
        "akwatch starts before Kafka answers"
    );
    // A stop leaves akwatch its shutdown grace before Docker kills it (Docker waits 10 s).
    let grace = akwatch["stop_grace_period"]
        .as_str()
        .and_then(|s| s.strip_suffix('s'))
        .and_then(|s| s.parse::<u64>().ok())
        .expect("akwatch stop_grace_period: N s");
    assert!(
        grace > config.shutdown_grace.as_secs(),
        "stop_grace_period {grace}s is not longer than shutdown_grace ({:?})",
        config.shutdown_grace
    );
}

/// Kafka's listeners `NAME://host:port,...` by name.
fn listeners(v: &Value) -> BTreeMap<String, (String, u16)> {
    v.as_str()
        .unwrap()
        .split(',')
        .map(|l| {
            let (name, addr) = l.trim().split_once("://").unwrap();
            let (host, port) = addr.rsplit_once(':').unwrap();
            (name.to_owned(), (host.to_owned(), port.parse().unwrap()))
        })
        .collect()
}

#[test]
fn kafka_advertises_one_listener_to_containers_and_one_to_the_host() {
    let compose = compose();
    let kafka = &compose["services"]["kafka"];
    let env = &kafka["environment"];
    let bound = listeners(&env["KAFKA_LISTENERS"]);
    let advertised = listeners(&env["KAFKA_ADVERTISED_LISTENERS"]);
    let protocols: BTreeMap<&str, &str> = env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"]
        .as_str()
        .unwrap()
        .split(',')
        .map(|p| p.split_once(':').unwrap())
        .collect();
    let controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"].as_str().unwrap();
    assert!(!advertised.contains_key(controller));
    for (name, (_, port)) in &advertised {
        assert_eq!(
            bound.get(name).map(|(_, p)| p),
            Some(port),
            "advertised listener {name} is not bound on its port"
        );
        assert!(
            protocols.contains_key(name.as_str()),
            "{name} has no protocol"
        );
    }
    for name in bound.keys() {
        assert!(
            protocols.contains_key(name.as_str()),
            "{name} has no protocol"
        );
    }
    // The host's: advertised on the loopback, on a port published there.
    let ports = strings(&kafka["ports"]);
    let host = advertised
        .iter()
        .find(|(_, (h, _))| h == "127.0.0.1" || h == "localhost")
        .expect("no listener advertised to the host (127.0.0.1 / localhost)");
    let host_port = host.1.1;
    assert!(
        ports.contains(&format!("127.0.0.1:{host_port}:{host_port}").as_str()),
        "the host's listener {} ({host_port}) is not published on 127.0.0.1:{host_port}: {ports:?}",
        host.0
    );
    // The containers': advertised under the service's name; inter-broker traffic, akwatch, the
    // loader and the healthcheck use it.
    let (inner, (inner_host, inner_port)) = advertised
        .iter()
        .find(|(_, (h, _))| h == "kafka")
        .expect("no listener advertised to containers (kafka:PORT)");
    assert_ne!(inner, host.0);
    assert_eq!(
        env["KAFKA_INTER_BROKER_LISTENER_NAME"].as_str(),
        Some(inner.as_str())
    );
    let inner_addr = format!("{inner_host}:{inner_port}");
    assert_eq!(config().brokers, inner_addr, "akwatch's kafka.brokers");
    assert!(
        text("deploy/load-examples.sh").contains(&format!("--bootstrap-server {inner_addr}")),
        "the loader does not use {inner_addr}"
    );
    assert!(strings(&kafka["healthcheck"]["test"]).contains(&inner_addr.as_str()));
    assert!(
        text("docker-compose.yml").contains(&format!("--bootstrap-server {inner_addr}")),
        "the consumer example in docker-compose.yml does not use {inner_addr}"
    );
    // Its data survives a re-creation of the container.
    let log_dirs = env["KAFKA_LOG_DIRS"].as_str().unwrap();
    assert!(
        strings(&kafka["volumes"])
            .iter()
            .any(|v| v.split(':').nth(1) == Some(log_dirs)),
        "KAFKA_LOG_DIRS {log_dirs} is not on a volume"
    );
}

#[test]
fn prometheus_loads_the_alert_rules_and_grafana_the_dashboard() {
    let compose = compose();
    let services = &compose["services"];
    // Prometheus: its configuration and every rule file it names, mounted where it looks.
    let prometheus_mounts = bind_mounts(&services["prometheus"]);
    assert_eq!(
        prometheus_mounts
            .get("deploy/prometheus/prometheus.yml")
            .map(String::as_str),
        Some("/etc/prometheus/prometheus.yml")
    );
    let prometheus = yaml("deploy/prometheus/prometheus.yml");
    let rule_files = strings(&prometheus["rule_files"]);
    assert!(
        rule_files.contains(&"alerts.yml"),
        "prometheus.yml does not load alerts.yml: {rule_files:?}"
    );
    for file in rule_files {
        assert!(
            !file.contains('*'),
            "rule file {file}: globs are not checked here"
        );
        assert!(repo().join("deploy/prometheus").join(file).exists());
        assert_eq!(
            prometheus_mounts
                .get(&format!("deploy/prometheus/{file}"))
                .map(String::as_str),
            Some(format!("/etc/prometheus/{file}").as_str()),
            "Prometheus does not get {file}"
        );
    }
    // Every alert rule: a duration, a severity, a summary and a description.
    let alerts = yaml("deploy/prometheus/alerts.yml");
    let mut names = Vec::new();
    for group in alerts["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            let name = rule["alert"].as_str().expect("only alerting rules");
            names.push(name.to_owned());
            assert!(rule["for"].is_string(), "{name}: no `for`");
            assert!(
                ["critical", "warning", "info"]
                    .contains(&rule["labels"]["severity"].as_str().unwrap_or("")),
                "{name}: severity"
            );
            for annotation in ["summary", "description"] {
                assert!(
                    rule["annotations"][annotation].is_string(),
                    "{name}: no {annotation}"
                );
            }
        }
    }
    // Each alert has a unit test.
    let tests = text("deploy/prometheus/alerts.test.yml");
    for name in &names {
        assert!(
            tests.contains(&format!("alertname: {name}\n")),
            "{name} has no test in alerts.test.yml"
        );
    }
    // Grafana: provisioned with the compose Prometheus and the dashboard, at the paths Grafana
    // reads, on loopback.
    let grafana = &services["grafana"];
    assert_eq!(strings(&grafana["ports"]), ["127.0.0.1:3000:3000"]);
    let mounts = bind_mounts(grafana);
    let datasources = "deploy/grafana/provisioning/datasources/akwatch.yml";
    let providers = "deploy/grafana/provisioning/dashboards/akwatch.yml";
    let dashboard = "deploy/grafana/akwatch.json";
    assert!(mounts[datasources].starts_with("/etc/grafana/provisioning/datasources/"));
    assert!(mounts[providers].starts_with("/etc/grafana/provisioning/dashboards/"));
    let datasource = &yaml(datasources)["datasources"][0];
    assert_eq!(datasource["type"], "prometheus");
    let published = strings(&services["prometheus"]["ports"])[0]
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(
        datasource["url"].as_str(),
        Some(format!("http://prometheus:{published}").as_str())
    );
    let provider = &yaml(providers)["providers"][0];
    assert_eq!(provider["type"], "file");
    let path = provider["options"]["path"]
        .as_str()
        .unwrap()
        .trim_end_matches('/');
    assert!(
        mounts[dashboard].starts_with(&format!("{path}/")),
        "the dashboard is mounted at {}, outside the provider's path {path}",
        mounts[dashboard]
    );
    assert_eq!(
        grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"].as_str(),
        Some(mounts[dashboard].as_str())
    );
    let json: Value = serde_json::from_str(&text(dashboard)).unwrap();
    assert_eq!(json["uid"], "akwatch");
    assert!(json["panels"].as_array().is_some_and(|p| p.len() > 10));
    // Its default datasource is the provisioned one.
    let variables = json["templating"]["list"].as_array().unwrap();
    let ds = variables
        .iter()
        .find(|v| v["name"] == "datasource")
        .unwrap();
    assert_eq!(ds["current"]["value"], datasource["uid"]);
}
