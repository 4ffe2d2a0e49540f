//! `attune-packs-server`: parse flags, load configuration, hand over to the library.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context;
use attune_packs_server::{
    auth::{Authenticator, MissingSecret, SecretError, resolve_secret, secret_source},
    banner,
    config::{Config, ENV_CONFIG_FILE, Overrides},
    grants::{Grant, GrantSet},
    server, state, store, telemetry, users,
};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "attune-packs-server",
    version,
    about = "The attune-packs gRPC service"
)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// Flags shared by every command. Environment variables are read by the config
/// loader (ATTUNE_PACKS_<KEY>), so only the config file path has an `env` here.
#[derive(Args)]
struct GlobalArgs {
    /// YAML configuration file.
    #[arg(long, global = true, env = ENV_CONFIG_FILE, value_name = "FILE")]
    config: Option<PathBuf>,
    /// State directory (database, generated secret). Default ./attune-packs-data.
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// sqlite://… or postgres://… Default: SQLite in the data dir.
    #[arg(long, global = true, value_name = "URL")]
    database_url: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        /// Listen address. Default 127.0.0.1:50051.
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
        /// Serve the sample packs of a checkout: DIR/index.json as the registry
        /// `examples` and DIR as an allowed root. DIR defaults to ./examples.
        #[arg(long, value_name = "DIR", num_args = 0..=1, default_missing_value = "examples", require_equals = true)]
        examples: Option<PathBuf>,
    },
    /// Create or upgrade the database schema, then exit.
    Migrate,
    /// Users who may log in through the REST gateway.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Bearer tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a user; the password is read from stdin (asked twice on a terminal).
    Add {
        #[arg(long)]
        email: String,
        /// What the user's login tokens allow: packs:read, packs:install, packs:delete,
        /// packs:configure. Repeat for several. Default: all four.
        #[arg(long = "grant", value_name = "GRANT", value_parser = parse_grant)]
        grants: Vec<Grant>,
    },
    /// Replace what a user's login tokens allow (tokens already issued keep theirs until
    /// they expire, at most an hour).
    Grants {
        #[arg(long)]
        email: String,
        /// The user's grants from now on; repeat for several.
        #[arg(long = "grant", value_name = "GRANT", value_parser = parse_grant, required = true)]
        grants: Vec<Grant>,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print a token signed with the configured secret (last line of stdout).
    Issue {
        /// Who the token speaks for (the `sub` claim).
        #[arg(long)]
        subject: String,
        /// Lifetime, e.g. 30m, 12h, 7d.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// What the token allows: packs:read, packs:install, packs:delete,
        /// packs:configure. Repeat for several (`--grant packs:read` mints a read-only
        /// token). Default: all four, as tokens had before grants existed.
        #[arg(long = "grant", value_name = "GRANT", value_parser = parse_grant)]
        grants: Vec<Grant>,
    },
}

fn parse_grant(text: &str) -> Result<Grant, String> {
    text.parse()
        .map_err(|e: attune_packs_server::grants::GrantError| e.to_string())
}

/// The grants named on the command line, or all of them when none is.
fn chosen_grants(named: Vec<Grant>) -> GrantSet {
    if named.is_empty() {
        GrantSet::all()
    } else {
        named.into_iter().collect()
    }
}

fn load_config(global: &GlobalArgs, listen: Option<SocketAddr>) -> anyhow::Result<Config> {
    let overrides = Overrides {
        listen,
        data_dir: global.data_dir.clone(),
        database_url: global.database_url.clone(),
    };
    Ok(Config::load(
        global.config.as_deref(),
        std::env::vars(),
        &overrides,
    )?)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each cause once: the fix is in the first
/// sentence, not in a "Caused by" list, and many messages already quote their source.
fn one_line(error: &anyhow::Error) -> String {
    let mut line = error.to_string();
    for cause in error.chain().skip(1) {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { listen, examples } => {
            let mut config = load_config(&cli.global, listen)?;
            if let Some(dir) = &examples {
                config.serve_examples(dir)?;
            }
            telemetry::init(config.log_format);
            if config.auth.legacy_tokens_full_access {
                tracing::warn!(
                    "auth.legacy_tokens_full_access is true: tokens without a `grants` claim \
                     may do everything; reissue them with `token issue --grant …`, then set it \
                     to false"
                );
            }
            // SAFETY: no thread has used libgit2 yet.
            unsafe { attune_packs_server::git::init() }.context("cannot set up git")?;
            let listen = config.listen;
            let state = state::open(config).await?;
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|e| listen_error(listen, e))?;
            let listening = listener.local_addr().unwrap_or(listen);
            banner::log(&state.config, listening, &secret_source(&state.config));
            let (signalled, first_signal) = tokio::sync::oneshot::channel();
            server::on_signals(signalled).context("cannot install signal handlers")?;
            server::run(listener, state, async {
                let _ = first_signal.await;
            })
            .await?;
            tracing::info!("stopped");
            // Blocking work that outlived its call (stuck in the kernel) must not hold
            // the exit, nor pack code outlive the server.
            attune_packs_server::process::kill_all_groups();
            std::process::exit(0);
        }
        Command::Migrate => {
            let config = load_config(&cli.global, None)?;
            telemetry::init(config.log_format);
            let db = store::Db::connect_with_timeout(
                &config.database_url(),
                config.database_connect_timeout,
            )
            .await?;
            let report = db.migrate().await?;
            db.close().await;
            println!("database {}", config.database_url_shown());
            println!("{report}");
        }
        Command::User {
            command: UserCommand::Add { email, grants },
        } => {
            let grants = chosen_grants(grants);
            let config = load_config(&cli.global, None)?;
            let password = read_new_password()?;
            let db = open_database(&config).await?;
            // Login tokens are signed by the server: say which secret that will be.
            match resolve_secret(&config, MissingSecret::Fail) {
                Ok(secret) => eprintln!(
                    "login tokens are signed with the secret from {}",
                    secret.source
                ),
                Err(SecretError::Missing { path }) => eprintln!(
                    "no JWT secret yet: `attune-packs-server serve` generates {} on its first \
                     start and signs login tokens with it",
                    path.display()
                ),
                Err(e) => eprintln!("warning: {e}"),
            }
            users::add_user_with_grants(&db, &email, &password, &grants).await?;
            db.close().await;
            println!(
                "user {} added with grants {grants}",
                email.trim().to_lowercase()
            );
        }
        Command::User {
            command: UserCommand::Grants { email, grants },
        } => {
            let grants = chosen_grants(grants);
            let config = load_config(&cli.global, None)?;
            let db = open_database(&config).await?;
            users::set_grants(&db, &email, &grants).await?;
            db.close().await;
            println!(
                "user {} now has grants {grants}",
                email.trim().to_lowercase()
            );
        }
        Command::Token {
            command:
                TokenCommand::Issue {
                    subject,
                    ttl,
                    grants,
                },
        } => {
            let grants = chosen_grants(grants);
            anyhow::ensure!(!subject.trim().is_empty(), "--subject must not be empty");
            let config = load_config(&cli.global, None)?;
            // Only `serve` creates a secret: one made here would sign tokens the server
            // refuses.
            let secret = resolve_secret(&config, MissingSecret::Fail)?;
            // On stderr: scripts take the token from stdout's last line.
            eprintln!("signed with the secret from {}", secret.source);
            eprintln!(
                "token for {} with grants {grants}",
                attune_packs_server::auth::escape_for_log(&subject)
            );
            println!(
                "{}",
                Authenticator::new(&secret.secret).issue_with_grants(&subject, ttl, &grants)
            );
        }
    }
    Ok(())
}

/// The database `serve` would use, migrated; says on stderr which it is, and when its
/// schema was just created (a new database may be the wrong one: check --data-dir).
async fn open_database(config: &Config) -> anyhow::Result<store::Db> {
    let db =
        store::Db::connect_with_timeout(&config.database_url(), config.database_connect_timeout)
            .await?;
    let report = db.migrate().await?;
    eprintln!("database {}", config.database_url_shown());
    if report.already_applied == 0 {
        eprintln!(
            "the database was new: created its schema ({} migrations)",
            report.applied.len()
        );
    }
    Ok(db)
}

/// A listener that cannot be opened, with the fix for the usual cause.
fn listen_error(listen: SocketAddr, error: std::io::Error) -> anyhow::Error {
    if error.kind() == std::io::ErrorKind::AddrInUse {
        anyhow::anyhow!(
            "cannot listen on {listen}: the address is already in use (is another \
             attune-packs-server running?); stop it, or pass --listen <addr> \
             (ATTUNE_PACKS_LISTEN) with a free port"
        )
    } else {
        anyhow::anyhow!("cannot listen on {listen}: {error}")
    }
}

/// On a terminal: asked twice without echo. Otherwise: the first line of stdin.
fn read_new_password() -> anyhow::Result<String> {
    use std::io::{BufRead, IsTerminal};
    if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ")?;
        let second = rpassword::prompt_password("Repeat password: ")?;
        anyhow::ensure!(first == second, "the passwords differ");
        return Ok(first);
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let password = line.trim_end_matches(['\n', '\r']).to_string();
    anyhow::ensure!(!password.is_empty(), "no password on stdin");
    Ok(password)
}
