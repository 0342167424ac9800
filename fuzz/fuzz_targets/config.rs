//! The service configuration (`Config::parse`, what `Config::load` does after reading the
//! file), with an environment that knows a few `${NAME}`s.
use akwatch::config::Config;

fn env(name: &str) -> Option<String> {
    match name {
        "KAFKA_PASSWORD" => Some("secret".to_owned()),
        "EMPTY" => Some(String::new()),
        "BIG" => Some("x".repeat(4096)),
        _ => None,
    }
}

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Ok(text) = std::str::from_utf8(data) else {
            return; // Config::load reads the file as UTF-8 and rejects the rest
        };
        let _ = Config::parse("fuzz.yaml", text, &env);
    });
}
