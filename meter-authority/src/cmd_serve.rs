//! `meter-authority serve` of the command line (see the library's `serve`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use meter_authority::serve::{self, Service};
use meter_authority::store::{files::FileStore, marker, pg::PgStore, Store, StoreError};
use meter_authority::{read_bounded, AuthorityError, Result};
use sha2::{Digest, Sha256};

/// The arguments of `serve`.
pub struct ServeArgs {
    pub dir: PathBuf,
    pub listen: SocketAddr,
    pub database: Option<String>,
    pub connections: usize,
    pub max_upload: usize,
    pub operator_token_file: Option<PathBuf>,
}

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
enum ServeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// `meter-authority serve`.
pub fn serve(args: ServeArgs) -> Result<ExitCode> {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init();
    let token = match &args.operator_token_file {
        Some(p) => {
            let text = String::from_utf8(read_bounded(p)?)
                .map_err(|_| AuthorityError::Invalid(format!("{}: not UTF-8", p.display())))?;
            let text = text.trim();
            if text.len() < 16 {
                return Err(AuthorityError::Invalid(format!(
                    "{}: an operator token is at least 16 characters",
                    p.display()
                )));
            }
            Some(Sha256::digest(text.as_bytes()).into())
        }
        None => None,
    };
    if args.database.is_none() {
        // A directory whose meters live in a database must not be served
        // from its own files: see `store::marker`.
        marker::refuse_files(&args.dir, "serve")?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| AuthorityError::io(&args.dir, e))?;
    match runtime.block_on(run(args, token)) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("meter-authority serve: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

async fn run(args: ServeArgs, token: Option<[u8; 32]>) -> std::result::Result<(), ServeError> {
    let store: Arc<dyn Store> = match &args.database {
        Some(url) => {
            // Binds the directory to this database (see `store::marker`).
            PgStore::connect_beside(url, args.connections, Some(&args.dir)).await?
        }
        None => Arc::new(FileStore::new(&args.dir)),
    };
    let service = Service::new(args.dir.clone(), store, args.max_upload, token).await?;
    let listener = serve::bind(args.listen).await?;
    let addr = listener.local_addr()?;
    println!(
        "listening on {addr} (state in {})",
        match args.database {
            Some(_) => "PostgreSQL",
            None => "the authority directory",
        }
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();
    serve::serve(listener, Arc::new(service)).await?;
    Ok(())
}
