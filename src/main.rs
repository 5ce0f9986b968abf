//! The `weir` binary: the CLI with the example jobs in its catalog.

/// mimalloc rather than glibc's malloc: keyed state allocates and frees many small keys and
/// values per record, and on this workload mimalloc made checkpointed RocksDB jobs ~75 % faster
/// (README, "What it costs").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    weir::cli::main(weir::jobs::catalog())
}
