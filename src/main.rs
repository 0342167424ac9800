use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = akwatch::cli::Cli::parse();
    match akwatch::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("akwatch: {e:#}");
            ExitCode::from(2)
        }
    }
}
