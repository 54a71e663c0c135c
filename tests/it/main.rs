//! The integration tests, one binary with a module per suite. Shared helpers live in `support`.

mod support;

mod bad_input;
mod batch_completion;
mod cli;
mod contract;
mod dlq;
mod eventbridge;
mod events_bulk;
mod events_cli;
mod events_client;
mod faults;
mod forward;
mod handlers;
mod intake;
mod intercom_api_mock;
mod lambda_e2e;
mod mirror;
mod properties;
mod readme;
mod reconcile;
mod sample_events;
mod secret_parameters;
mod serve;
mod sqs_intake;
mod tls;
mod worker;
mod worker_logic;
