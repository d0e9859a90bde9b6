//! meterd: a postage and certificate meter on a TPM 2.0.
//!
//! The TPM ([`housing`]), the ledger ([`ledger`]) and D-Bus ([`bus`]) each
//! sit behind one door; the services between them ([`postmark`],
//! [`validate`], [`recharge`], [`rates`], [`provision`], [`lock`],
//! [`anchor`], [`audit`], [`agent`], [`certs`], [`sign`], [`credit`],
//! [`postage`], [`report`], [`inspection`], [`timecheck`]) know none of
//! tss-esapi, rusqlite or zbus. Every chargeable
//! service goes through [`sale::sell`]; messages passed as descriptors are
//! read by [`intake`] (bounded in size and time, cancellable).

pub mod account;
pub mod agent;
pub mod anchor;
pub mod audit;
pub mod bus;
pub mod certs;
pub mod clock;
pub mod config;
pub mod credit;
pub mod digest;
pub mod error;
pub mod housing;
pub mod identity;
pub mod inspection;
pub mod intake;
pub mod ledger;
pub mod lock;
pub mod meter;
pub mod money;
pub mod postage;
pub mod postmark;
pub mod provision;
pub mod rates;
pub mod recharge;
pub mod report;
pub mod revoke;
pub mod sale;
pub mod service;
pub mod sign;
pub mod timecheck;
pub mod validate;
