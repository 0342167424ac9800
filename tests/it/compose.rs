//! Docker cannot run on the project's machines, so this checks `docker-compose.yml` against the
//! repository: the services, the ports (published on loopback only), and that every mounted or copied path exists and fits.

use serde_json::Value;

use crate::repo;

fn yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(repo().join(path)).unwrap();
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn docker_compose_matches_the_repository() {
    let compose = yaml("docker-compose.yml");
    let services = compose["services"].as_object().unwrap();
    for name in ["kafka", "akwatch", "prometheus", "loader"] {
        assert!(services.contains_key(name), "service {name}");
    }
    // akwatch is built from this repository's Dockerfile, which copies paths that exist.
    assert_eq!(services["akwatch"]["build"], ".");
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    for line in dockerfile
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let src = line.split_whitespace().nth(1).unwrap();
        assert!(
            repo().join(src).exists(),
            "Dockerfile copies {src}, which is missing"
        );
    }
    // Every bind mount's host path exists.
    for (name, svc) in services {
        for v in svc["volumes"].as_array().into_iter().flatten() {
            let host = v.as_str().unwrap().split(':').next().unwrap();
            if host.starts_with("./") {
                assert!(
                    repo().join(host).exists(),
                    "{name} mounts {host}, which is missing"
                );
            }
        }
    }
    // The service's configuration parses, and its ops port is the published one Prometheus scrapes.
    let config_text = std::fs::read_to_string(repo().join("deploy/akwatch.compose.yaml")).unwrap();
    let config =
        akwatch::config::Config::parse("deploy/akwatch.compose.yaml", &config_text, &|_| None)
            .unwrap();
    let ops_port = config
        .ops_addr
        .as_deref()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();
    let ports: Vec<&str> = services["akwatch"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(
        ports.contains(&format!("127.0.0.1:{ops_port}:{ops_port}").as_str()),
        "{ports:?}"
    );
    // Every published port listens on the host's loopback only, unless the operator opens it.
    for (name, svc) in services {
        for p in svc["ports"].as_array().into_iter().flatten() {
            let p = p.as_str().unwrap();
            assert!(
                p.starts_with("127.0.0.1:"),
                "{name} publishes {p} on every interface"
            );
        }
    }
    let prometheus = std::fs::read_to_string(repo().join("deploy/prometheus.yml")).unwrap();
    assert!(prometheus.contains(&format!("akwatch:{ops_port}")));
    assert_eq!(config.brokers, "kafka:9092");
    // The loader feeds exactly the service's input topics.
    let loader = std::fs::read_to_string(repo().join("deploy/load-examples.sh")).unwrap();
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
