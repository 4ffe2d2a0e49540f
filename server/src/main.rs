//! `attune-packs-server`: parse flags, load configuration, hand over to the library.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context;
use attune_packs_server::{
    auth::{Authenticator, load_or_create_secret},
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
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
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
                .with_context(|| format!("cannot listen on {listen}"))?;
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
            db.migrate().await?;
            db.close().await;
            println!("database is up to date");
        }
        Command::User {
            command: UserCommand::Add { email, grants },
        } => {
            let grants = chosen_grants(grants);
            let config = load_config(&cli.global, None)?;
            let password = read_new_password()?;
            let db = store::Db::connect_with_timeout(
                &config.database_url(),
                config.database_connect_timeout,
            )
            .await?;
            db.migrate().await?;
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
            let db = store::Db::connect_with_timeout(
                &config.database_url(),
                config.database_connect_timeout,
            )
            .await?;
            db.migrate().await?;
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
            let config = load_config(&cli.global, None)?;
            let data_dir = config.data_dir_absolute();
            std::fs::create_dir_all(&data_dir)
                .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
            let secret = load_or_create_secret(config.jwt_secret.as_ref(), &data_dir)?;
            anyhow::ensure!(!subject.trim().is_empty(), "--subject must not be empty");
            // On stderr: scripts take the token from stdout's last line.
            eprintln!(
                "token for {} with grants {grants}",
                attune_packs_server::auth::escape_for_log(&subject)
            );
            println!(
                "{}",
                Authenticator::new(&secret).issue_with_grants(&subject, ttl, &grants)
            );
        }
    }
    Ok(())
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
