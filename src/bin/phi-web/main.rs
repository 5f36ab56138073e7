//! The native `phi-web` command. The CLI is native only; on wasm32 (built by
//! `cargo test --target wasm32`) the binary is empty.

#[cfg(not(target_arch = "wasm32"))]
mod bench_gpu;
#[cfg(not(target_arch = "wasm32"))]
mod cli;
#[cfg(not(target_arch = "wasm32"))]
mod embed;
#[cfg(not(target_arch = "wasm32"))]
mod inspect;
#[cfg(not(target_arch = "wasm32"))]
mod run;
#[cfg(not(target_arch = "wasm32"))]
mod serve;

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    // Bad usage exits with 2 inside cli::run (clap); a failed command with 1.
    match cli::run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("phi-web: {failure}");
            std::process::ExitCode::FAILURE
        }
    }
}
