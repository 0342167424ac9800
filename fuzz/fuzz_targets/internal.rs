//! The service's internal records, as another instance (or an older version) may have written
//! them: a repartition topic record (`kafka::repartition::decode`) and a changelog snapshot
//! (`kafka::changelog::decode`, gzip JSON). A bad one is an error, never a panic.
use akwatch::kafka::{changelog, repartition};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let _ = repartition::decode(data);
        let _ = changelog::decode(data);
    });
}
