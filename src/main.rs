//! The `nnc-agent` program; everything lives in the library (`src/lib.rs`).

fn main() -> std::process::ExitCode {
    nnc_agent::run()
}
