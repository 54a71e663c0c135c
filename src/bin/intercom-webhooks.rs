//! The command line: local server, test deliveries, operations. See `intercom-webhooks --help`.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    intercom_webhooks::cli::main()
}
