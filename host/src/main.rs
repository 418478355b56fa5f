//! The `weir` binary.

// mimalloc: 5–11 % less CPU per proxied request than glibc's malloc, and a
// p99 at 200 connections of 8–10 ms instead of 16–54 ms (ARCHITECTURE.md,
// Decisions; docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    weir::cli::main()
}
