//! `fielding-server`: serve the fielding-run API, or mint a bearer token.
//!
//! Run `fielding-server --help` (or see `docs/server.md`).

use std::error::Error;
use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use fielding_server::cli::{Cli, Command, SecretSource, ServeArgs, ServerConfig, TokenArgs};
use fielding_server::{mint_token, shutdown_signal, Server};
use tracing_subscriber::EnvFilter;

// mimalloc rather than the system allocator: a request allocates about a
// hundred small, short-lived blocks (mostly in axum, hyper and tower), and
// glibc's malloc/free pair was the largest single cost of a request in the
// server's profile (docs/benchmarks.md, "Round two"). Only the binary
// chooses: the library crates leave the allocator to the application that
// links them. `bare-http`, the bench's ceiling, uses the same allocator so
// the comparison stays like for like.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A run path to show in the start-up hints, relative to the base path.
const EXAMPLE_LIST: &str =
    "/demand/accounts/101/projects/01BTGNYV6HRNK8K8VKZASZCFP0/target-groups/01BTGNYV6HRNK8K8VKZASZCFP1/fielding-runs";

// `fielding-server token ...` on its own: the server's settings (and their
// environment variables) are not read, so a `FIELDING_DATABASE` the token
// does not need cannot make minting fail.
#[derive(Debug, Parser)]
#[command(
    name = "token",
    bin_name = "fielding-server token",
    about = "Print a bearer token (HS256 JWT) for the given accounts, and nothing else, so `TOKEN=$(fielding-server token ...)` works"
)]
struct TokenOnly {
    #[command(flatten)]
    args: TokenArgs,
}

fn main() -> ExitCode {
    let outcome = if std::env::args_os().nth(1).is_some_and(|arg| arg == "token") {
        let parsed = TokenOnly::parse_from(std::env::args_os().skip(1));
        token(&parsed.args)
    } else {
        let cli = Cli::parse();
        match cli.command {
            Some(Command::Token(args)) => token(&args),
            None => serve(cli.serve),
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("fielding-server: error: {}", chain(error.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// `error: cause: cause ...`, skipping causes already in the message.
fn chain(error: &(dyn Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}

fn token(args: &TokenArgs) -> Result<(), Box<dyn Error>> {
    let user = args.user.unwrap_or_else(uuid::Uuid::new_v4);
    let token = mint_token(&args.secret, user, &args.accounts, args.ttl())?;
    println!("{token}");
    Ok(())
}

fn init_logs() {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal();
    tracing_subscriber::registry()
        .with(filter)
        // Every span `INFO` takes has its fields formatted when it opens,
        // logged in or not: sized once, and written for less than by the
        // default formatter (the same text).
        .with((!ansi).then_some(fielding_server::log_fields::SpanFieldsRoom))
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(ansi)
                .fmt_fields(fielding_server::log_fields::LeanFields),
        )
        .init();
}

fn serve(args: ServeArgs) -> Result<(), Box<dyn Error>> {
    init_logs();
    // Before the connection cap is derived from it.
    let open_files = fielding_server::limits::raise_open_file_limit();
    let config = args.into_config()?;
    tracing::info!(
        open_files,
        max_connections = config.connections.max_connections,
        "connection cap"
    );
    let fits = fielding_server::limits::RESERVED_FILE_DESCRIPTORS;
    if open_files.is_some_and(|files| config.connections.max_connections as u64 > files.saturating_sub(fits)) {
        tracing::warn!(
            open_files,
            max_connections = config.connections.max_connections,
            "--max-connections is more than the open-file limit allows (less {fits} for the store and logs): \
             past it, accepting fails instead of new connections waiting their turn"
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        // Before anything is counted: what is recorded before a recorder
        // is installed is lost.
        if config.metrics {
            fielding_server::prometheus::install()?;
        }
        let server = Server::bind(&config).await?;
        announce(&config, &server);
        server.serve(shutdown_signal()).await?;
        tracing::info!("stopped");
        Ok(())
    })
}

/// Where the server listens, on which store, and how to get a token: on
/// stdout (the first line is `fielding-server listening on http://ADDR`),
/// and in the logs without the secret.
fn announce(config: &ServerConfig, server: &Server) {
    let addr = server.local_addr();
    let store = config.database.redacted();
    let base_path = &config.base_path;
    tracing::info!(%addr, %base_path, store = server.store_kind(), database = %store, "listening");
    println!("fielding-server listening on http://{addr}");
    println!("api: http://{addr}{}", base_path.prefix());
    println!("store: {} ({store})", server.store_kind());
    println!("health: curl http://{addr}/health");
    if config.jwt_secret.is_short() && config.secret_source == SecretSource::Given {
        tracing::warn!(
            "the JWT secret is shorter than {} bytes; use a longer random one",
            fielding_server::JwtSecret::RECOMMENDED_LEN
        );
    }
    let mint = match config.secret_source {
        SecretSource::Generated => {
            tracing::warn!(
                "no JWT secret given (--jwt-secret / FIELDING_JWT_SECRET): generated a random one for this run, \
                 printed on stdout; tokens stop working at the next restart"
            );
            let secret = config.jwt_secret.expose();
            println!(
                "no JWT secret given (--jwt-secret or FIELDING_JWT_SECRET): generated a random one for this run: {secret}"
            );
            format!("fielding-server token --secret {secret} --account 101")
        }
        // The secret is not repeated on stdout; the caller knows it.
        SecretSource::Given => "fielding-server token --secret <the server's JWT secret> --account 101".to_owned(),
    };
    println!("development token: TOKEN=$({mint})   (or: cargo run -q -p fielding-server -- token ...)");
    println!(
        "try: curl -H \"Authorization: Bearer $TOKEN\" -H \"Cint-API-Version: 2025-12-18\" http://{addr}{}",
        base_path.join(EXAMPLE_LIST)
    );
}
