//! The meter's integration tests, as ONE test binary: each file beside this one is a
//! module (`meterd/tests/e2e_report.rs` is `suite::e2e_report`). One binary instead of
//! one per file saves CI minutes of linking tss-esapi, SQLite and zbus ~60 times, and
//! compiles the shared sandbox code once. Run one file's tests with
//! `cargo nextest run --release --workspace -E 'binary_id(meterd::suite) & test(/^e2e_report::/)'`
//! (`--workspace`, not `-p`: the features of the whole workspace, so the dependencies
//! are not compiled again).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/attack_client.rs"]
mod attack_client;
#[path = "support/attacker.rs"]
mod attacker;
#[path = "support/inproc.rs"]
mod inproc;
mod ledger_support;
#[path = "../../meter-authority/tests/serve_support/postgres.rs"]
mod postgres;
#[path = "support/rewrite.rs"]
mod rewrite;
#[path = "support/root_tools.rs"]
mod root_tools;
#[path = "support/sandbox.rs"]
mod sandbox;
#[path = "../../meter-authority/tests/serve_support/server.rs"]
mod serve_server;
#[path = "support/swtpm.rs"]
mod swtpm;

mod attack_access;
mod attack_clock;
mod attack_error_kinds;
mod attack_funds;
mod attack_internal_ids;
mod attack_request_ids;
mod attack_rewrite;
mod attack_rewrite_tpm;
mod attack_tpm;
mod attack_wedge;
mod config_man;
mod e2e_account;
mod e2e_admin;
mod e2e_agent;
mod e2e_anchor;
mod e2e_attest;
mod e2e_certs;
mod e2e_credit;
mod e2e_decrypt;
mod e2e_forged_token;
mod e2e_funds;
mod e2e_inspection;
mod e2e_journal;
mod e2e_lock_order_row;
mod e2e_mail_client;
mod e2e_nv_wear;
mod e2e_owner_auth;
mod e2e_postage;
mod e2e_postage_rewrite;
mod e2e_postal_key;
mod e2e_postmark;
mod e2e_reconcile;
mod e2e_report;
mod e2e_report_attest;
mod e2e_revoke;
mod e2e_revoke_order_row;
mod e2e_rollback;
mod e2e_sale_rewrite;
mod e2e_segment_fd;
mod e2e_shared_tpm;
mod e2e_signals;
mod e2e_sync;
mod e2e_sync_orders;
mod e2e_tsa;
mod e2e_tsa_status;
mod e2e_tsa_stop;
mod fuzz_args;
mod housing;
mod housing_attest;
mod housing_auth;
mod inproc_services;
mod ledger_account;
mod ledger_checkpoint;
mod ledger_commit;
mod ledger_epochs;
mod ledger_finisher;
mod ledger_funds;
mod ledger_query;
mod ledger_tamper;
mod package_deb;
