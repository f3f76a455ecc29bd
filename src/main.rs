fn main() -> std::process::ExitCode {
    stamp_relay::cli::main()
}
