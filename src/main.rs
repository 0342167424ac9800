use std::process::ExitCode;

use clap::Parser;

/// mimalloc: frees of memory another thread allocated (events decoded on one thread, dropped on
/// the engine shard's) stay cheap, where glibc's arenas lock; and small allocations are faster
/// (benches/README.md, "Every core").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = akwatch::cli::Cli::parse();
    match akwatch::cli::run(cli) {
        Ok(code) => code,
        // A runtime failure exits 1; clap exits 2 on a usage error before we get here.
        Err(e) => {
            eprintln!("akwatch: {e:#}");
            ExitCode::FAILURE
        }
    }
}
