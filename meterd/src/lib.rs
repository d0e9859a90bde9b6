//! meterd: a postage and certificate meter on a TPM 2.0.
//!
//! Floors, lowest first (a module imports from its own floor, one way, or
//! from floors below it; never from above, and there is no import cycle):
//!
//! 1. the doors and plain values: [`housing`] (the TPM), [`ledger`]
//!    (SQLite), [`clock`], [`config`], [`money`], [`service`];
//! 2. [`error`], [`digest`], [`intake`] (messages read from descriptors,
//!    bounded in size and time, cancellable), [`outlet`] (streams written to
//!    them, likewise bounded), [`identity`], [`tariff`], [`timecheck`],
//!    [`regime`] (locks, account, inspection state: one owned machine),
//!    [`semantic`] (the signed objects of the ledger's rows verified again);
//! 3. [`meter`]: the doors and what every sale needs;
//! 4. [`sale`]: the one pipeline every recorded operation takes;
//! 5. the services, one module each ([`postmark`], [`validate`], [`sign`],
//!    [`postage`], [`certs`], [`agent`], [`credit`], [`revoke`],
//!    [`recharge`], [`report`], [`segment`], [`rates`], [`anchor`], [`provision`],
//!    [`attest`], [`lock`], [`account`], [`inspection`], [`audit`]) and the
//!    [`watchdog`]; they know none of tss-esapi, rusqlite or zbus;
//! 6. [`app`]: the meter and each feature's own state, composed;
//! 7. [`bus`]: the D-Bus door on top.

pub mod account;
pub mod agent;
pub mod anchor;
pub mod app;
pub mod attest;
pub mod audit;
pub mod bus;
pub mod certs;
pub mod clock;
pub mod config;
pub mod credit;
pub mod decrypt;
pub mod digest;
pub mod error;
pub mod funds;
pub mod housing;
pub mod identity;
pub mod inspection;
pub mod intake;
pub mod ledger;
pub mod lock;
pub mod meter;
pub mod money;
pub mod outlet;
pub mod postage;
pub mod postal_key;
pub mod postmark;
pub mod product_seal;
pub mod provision;
pub mod rates;
pub mod recharge;
pub mod regime;
pub mod report;
pub mod revoke;
pub mod sale;
pub mod segment;
pub mod semantic;
pub mod service;
pub mod sign;
pub mod spool;
pub mod tariff;
pub mod timecheck;
pub mod timestamp;
pub mod validate;
pub mod watchdog;
