//! `meterctl agent-ca request|install` and `meterctl agent issue`: agent certificates
//! (Fig. 3A), a business meter certifying its employees.
//!
//! The agent CA is set up once: `request` has the meter create its agent key and writes the
//! request for `meter-authority certify-agent-ca`; `install` sends the certificate back.
//! `agent issue` then buys one employee certificate: the meter makes the key pair and
//! returns the certificate and the private key encrypted to the receiver's P-384 key
//! (`openssl cms -decrypt -inform DER -in KEY.cms -inkey receiver.key` opens it). As for
//! every charged call, a request id printed before the call makes a retry free.

use std::collections::HashMap;
use std::path::PathBuf;

use serde_json::json;
use zbus::zvariant::Value;

use super::postmark::random_request_id;
use super::{read_input, Ctx, Sink, MAX_OBJECT};
use crate::error::CtlError;
use crate::output::Output;

/// Subcommands of `meterctl agent-ca`.
#[derive(Debug, clap::Subcommand)]
pub enum AgentCaCommand {
    /// Create the agent-CA key (if needed) and write its request for the authority.
    Request {
        /// Where to write the request (PEM, label CMS).
        #[arg(short = 'o', long = "out", value_name = "FILE")]
        out: PathBuf,
    },
    /// Install the agent-CA certificate the authority issued (PEM or DER).
    Install {
        /// The agent-CA certificate.
        #[arg(value_name = "CERT")]
        certificate: PathBuf,
    },
}

/// Subcommands of `meterctl agent`.
#[derive(Debug, clap::Subcommand)]
pub enum AgentCommand {
    /// Issue an employee certificate (charged as agent-certificate).
    Issue(IssueArgs),
}

/// Arguments of `meterctl agent issue`.
#[derive(Debug, clap::Args)]
pub struct IssueArgs {
    /// Employee's common name.
    #[arg(long, value_name = "NAME")]
    pub cn: String,
    /// Organization (O).
    #[arg(long, value_name = "NAME")]
    pub org: Option<String>,
    /// Organizational unit (OU).
    #[arg(long, value_name = "NAME")]
    pub unit: Option<String>,
    /// E-mail address (put in subjectAltName).
    #[arg(long, value_name = "ADDR")]
    pub email: Option<String>,
    /// The receiver's P-384 certificate or public key (PEM, DER or SEC1); the private key
    /// is encrypted to it.
    #[arg(long, value_name = "FILE")]
    pub receiver: PathBuf,
    /// Where to write the employee certificate (PEM).
    #[arg(long, value_name = "FILE")]
    pub out_cert: PathBuf,
    /// Where to write the encrypted private key (CMS EnvelopedData, DER).
    #[arg(long, value_name = "FILE")]
    pub out_key: PathBuf,
    /// Where to write the agent-CA certificate (PEM), for `openssl verify -untrusted`.
    #[arg(long, value_name = "FILE")]
    pub out_chain: Option<PathBuf>,
    /// Idempotency key: reuse it to retry without a second charge (default: random).
    #[arg(long, value_name = "ID")]
    pub request_id: Option<String>,
}

fn pem(label: &str, der: &[u8]) -> Result<String, CtlError> {
    pem_rfc7468::encode_string(label, pem_rfc7468::LineEnding::LF, der)
        .map_err(|e| CtlError::Reply(format!("cannot PEM-encode the reply: {e}")))
}

/// Runs `meterctl agent-ca ...`.
pub async fn run_ca(ctx: &Ctx, args: AgentCaCommand) -> Result<Output, CtlError> {
    match args {
        AgentCaCommand::Request { out } => {
            let sink = Sink::open(&out)?;
            let meter = ctx.meter().await?;
            let request = meter.request_agent_ca().await?;
            sink.commit(pem("CMS", &request)?.as_bytes())?;
            Ok(Output::new(
                format!(
                    "agent-CA request written to {}; have the authority certify it (meter-authority certify-agent-ca {} --out agentca.pem)\n",
                    out.display(),
                    out.display()
                ),
                json!({"request": out.display().to_string()}),
            ))
        }
        AgentCaCommand::Install { certificate } => {
            let der = read_input(&certificate, MAX_OBJECT)?;
            let meter = ctx.meter().await?;
            let serial = meter.install_agent_ca(&der).await?;
            Ok(Output::new(
                format!("agent-CA certificate {serial} installed\n"),
                json!({"installed": true, "serial": serial}),
            ))
        }
    }
}

/// Runs `meterctl agent ...`.
pub async fn run(ctx: &Ctx, args: AgentCommand) -> Result<Output, CtlError> {
    let AgentCommand::Issue(a) = args;
    let receiver = read_input(&a.receiver, MAX_OBJECT)?;
    let cert_sink = Sink::open(&a.out_cert)?;
    let key_sink = Sink::open(&a.out_key)?;
    let chain_sink = a.out_chain.as_deref().map(Sink::open).transpose()?;
    let mut subject: HashMap<&str, Value<'_>> = HashMap::new();
    subject.insert("cn", Value::from(a.cn.as_str()));
    for (k, v) in [("o", &a.org), ("ou", &a.unit), ("email", &a.email)] {
        if let Some(v) = v {
            subject.insert(k, Value::from(v.as_str()));
        }
    }
    let request_id = match a.request_id {
        Some(id) => id,
        None => {
            let id = random_request_id()?;
            eprintln!("request id: {id} (retry with --request-id {id} to avoid a second charge)");
            id
        }
    };
    let meter = ctx.meter().await?;
    let (certificate, envelope, agent_ca) = meter
        .issue_agent_certificate(subject, &receiver, &request_id)
        .await?;
    if certificate.is_empty() || envelope.is_empty() {
        return Err(CtlError::Reply(
            "IssueAgentCertificate returned an empty object".into(),
        ));
    }
    cert_sink.commit(pem("CERTIFICATE", &certificate)?.as_bytes())?;
    key_sink.commit(&envelope)?;
    if let Some(sink) = chain_sink {
        sink.commit(pem("CERTIFICATE", &agent_ca)?.as_bytes())?;
    }
    Ok(Output::new(
        format!(
            "employee certificate written to {}, its private key (encrypted to the receiver) to {}\n",
            a.out_cert.display(),
            a.out_key.display()
        ),
        json!({
            "certificate": a.out_cert.display().to_string(),
            "key": a.out_key.display().to_string(),
            "chain": a.out_chain.as_ref().map(|p| p.display().to_string()),
            "request_id": request_id,
        }),
    ))
}
