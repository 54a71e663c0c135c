//! The command line: local server, test deliveries, operations. See `intercom-webhooks --help`.

fn main() -> std::process::ExitCode {
    intercom_webhooks::cli::main()
}
