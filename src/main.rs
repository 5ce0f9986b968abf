//! The `weir` binary: the CLI with the example jobs in its catalog.

fn main() -> std::process::ExitCode {
    weir::cli::main(weir::jobs::catalog())
}
