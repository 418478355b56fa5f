//! The `weir` command line, built inside the test package so that tests
//! always run the current code (`CARGO_BIN_EXE_weir-under-test`).

fn main() -> std::process::ExitCode {
    weir::cli::main()
}
