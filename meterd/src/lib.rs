//! meterd: a postage and certificate meter on a TPM 2.0.
//!
//! The TPM ([`housing`]), the ledger ([`ledger`]) and D-Bus (`bus`) each sit
//! behind one door; the services between them know none of tss-esapi,
//! rusqlite or zbus.

pub mod housing;
pub mod ledger;
pub mod money;
pub mod service;
