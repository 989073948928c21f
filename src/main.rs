#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    latchkey::cli::main()
}
